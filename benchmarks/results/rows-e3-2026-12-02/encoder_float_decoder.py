"""A stage-1 encoder file with the teacher's float decoder and embedding, packed (the encoder's codes kept):
python encoder_float_decoder.py ENCODER.safetensors PLAN.json OUT.safetensors"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from row_split_plan import compose_student  # noqa: E402

from whisper_kdq.models.refs import load_model  # noqa: E402
from whisper_kdq.quant.plan import plan_from_dict  # noqa: E402

encoder, plan, out = map(Path, sys.argv[1:4])
data = json.loads(plan.read_text())
data.pop("rows", None)
data["rules"] += [{"pattern": r"^model\.decoder\.", "float": True}]
print(compose_student(load_model("base"), encoder, plan_from_dict(data), out)["file_bytes"])
