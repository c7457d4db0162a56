"""The 10.5x plan with the cold embedding rows at 1 bit (format version 6): from plan-v5.json of
../e3-old-decoder-2026-12-03, every decoder matrix 4-bit, then the decoder matrices with the largest quantization
loss (the selection table) at 5 bits while the file stays within 10.5x. Usage: make_plan.py PLAN MODEL OUT."""
import json, sys, time
from whisper_kdq.models.refs import load_model
from whisper_kdq.quant.checkpoint import predict_packed
from whisper_kdq.quant.plan import plan_from_dict
src, model_path, out = sys.argv[1:4]
LIMIT = 290375680 * 2 // 21  # 10.5x of the fp32 teacher (bytes, rounded down)
plan = json.load(open(src))
EMB = r"^model\.decoder\.embed_tokens\.weight$"
rules = [r for r in plan["rules"] if not (r["pattern"].startswith(r"^model\.decoder\.layers\.") or r["pattern"] == EMB)]
rules.append({"pattern": r"^model\.decoder\.layers\.", "bits": 4, "note": "every decoder matrix 4-bit (paid by the 1-bit cold rows)"})
rules.append({"pattern": EMB, "bits": 1, "symmetric": False, "note": "rows outside `rows`: 1 bit, two levels per group"})
plan["rules"] = rules
loaded = load_model(model_path)
t = time.time()
size = lambda p: predict_packed(loaded.model, plan_from_dict(p), loaded.processor)["file_bytes"]
base = size(plan); print("all-4-bit decoder:", base, "limit", LIMIT, "left", LIMIT - base, f"{time.time()-t:.1f}s", flush=True)
units = [u for u in plan["selection"]["units"] if u["unit"].startswith("decoder.")]
units.sort(key=lambda u: -u["quant_loss"])
raised = []
for u in units:
    trial = dict(plan, rules=plan["rules"] + [{"pattern": u["pattern"], "bits": 5}])
    s = size(trial)
    if s <= LIMIT:
        plan, base = trial, s
        raised.append(u["unit"])
print("5-bit:", raised, base, 290375680 / base)
json.dump(plan, open(out, "w"), indent=1)
