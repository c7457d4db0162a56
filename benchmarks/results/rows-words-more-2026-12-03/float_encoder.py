"""The 10.53x model's decoder and embedding (dequantized) with the fp32 teacher's encoder, as a transformers directory."""
import sys
from pathlib import Path
sys.path.insert(0, ".")
from whisper_kdq.models.refs import load_model
student = load_model("runs/pipeline-w10-sel/teacher-qat-rows-words-10.5x-more-enc30.safetensors", device="cpu")
teacher = load_model("base", device="cpu")
student.model.model.encoder.load_state_dict(teacher.model.model.encoder.state_dict())
out = Path("runs/pipeline-w10-sel/more-float-encoder")
student.model.save_pretrained(out)
student.processor.save_pretrained(out)
print(type(student.model).__name__, out)
