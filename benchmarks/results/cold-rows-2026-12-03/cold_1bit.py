"""What 1-bit cold embedding rows would cost (a float simulation; the packed format has 2-8 bits): the fp32 teacher
with every token-embedding row outside the 10.53x plan's 4-bit rows replaced by sign(w) * mean|w| (the L2-best
1-bit code with one scale per row). The output projection is tied to the embedding, so this touches the logits too."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, ".")
from whisper_kdq.models.refs import load_model

plan = json.loads(Path("runs/pipeline-w10-sel/plan-teacher-qat-rows-words-10.5x.json").read_text())
hot = torch.tensor(plan["rows"][0]["rows"])
teacher = load_model("base", device="cpu")
w = teacher.model.model.decoder.embed_tokens.weight.data
cold = torch.ones(w.shape[0], dtype=torch.bool)
cold[hot] = False
rows = w[cold]
w[cold] = torch.sign(rows) * rows.abs().mean(dim=1, keepdim=True)
out = Path("runs/e3-words/teacher-cold-1bit")
teacher.model.save_pretrained(out)
teacher.processor.save_pretrained(out)
print(json.dumps({"hot_rows": int(hot.numel()), "cold_rows": int(cold.sum()), "out": str(out)}))
