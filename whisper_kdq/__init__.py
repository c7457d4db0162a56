"""whisper-kdq: make Whisper small and fast with guided distillation and quantization."""

__version__ = "0.1.0"
