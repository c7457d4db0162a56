import json, sys
sys.path.insert(0, 'benchmarks'); sys.path.insert(0, '.')
from pathlib import Path
from row_split_plan import compose_student
from whisper_kdq.models.refs import load_model
from whisper_kdq.quant.plan import plan_from_dict
O = Path('runs/pipeline-w10-sel')
base = json.loads((O / 'plan-guided-linear-23-10.5x-full.json').read_text())
base['rules'] += [{"pattern": r"^model\.decoder\.", "float": True}]
teacher = load_model('base')
s = compose_student(teacher, O / 'teacher-qat-guided-23-10.5x-full-encoder/model.safetensors', plan_from_dict(base),
                    O / 'full-encoder-float-decoder.safetensors')
print(s['file_bytes'])
