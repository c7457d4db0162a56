"""Diagnosis: the 2/3-bit chain's continued decoder and embedding (29 decoder matrices at 4 bits; dequantized) with
this chain's 3-bit 30-s encoder (dequantized), as a transformers directory. About 0.72 MB over the 10.5x budget
(~10.26x): a measurement of what the 3-bit encoder gives a decoder that kept its bytes, not a model to ship."""
import sys
from pathlib import Path

sys.path.insert(0, ".")
from whisper_kdq.models.refs import load_model

old = load_model("runs/pipeline-w10-sel/teacher-qat-rows-words-10.5x-more-enc30.safetensors", device="cpu")
new = load_model("runs/e3-words/teacher-qat-rows-e3-words-10.5x-more-enc30.safetensors", device="cpu")
old.model.model.encoder.load_state_dict(new.model.model.encoder.state_dict())
out = Path("runs/e3-words/old-decoder-e3-encoder")
old.model.save_pretrained(out)
old.processor.save_pretrained(out)
print(type(old.model).__name__, out)
