#!/bin/bash
# Training cost at a 10-s and a 30-s window: the 5.3x recipe on 16 clips (2 steps per epoch), 12 steps.
cd "$(dirname "$0")/../../.."
# 16 training clips (10 ja + 6 en): 2 steps of 8 per epoch, so steps 3-12 are steady state.
(grep '"ja"' corpus/train.jsonl | head -10; grep '"en"' corpus/train.jsonl | head -6) > corpus/probe-train16.jsonl
# The plan: pipeline.py's 5.3x row (quantize --model base --bits 5 --encoder-bits 8 --embedding-bits 4 --dry-run --save-plan).
mkdir -p runs/probe
for w in 10 30; do
  .venv/bin/whisper-kdq distill --teacher base --data corpus/probe-train16.jsonl --out runs/probe/e8d5-w$w --freeze-encoder \
    --student-decoder-layers 6 --steps 12 --batch-size 8 --lr 5e-05 --warmup 3 --window $w --ce 0.3 --kd 1 --hidden 1 \
    --matching static --plan benchmarks/results/window-2026-12-01/plan-e8d5-emb4.json --force --json > runs/probe/e8d5-w$w.json
done
.venv/bin/python - <<'PY'
import json
for w in (10, 30):
    rows = [json.loads(l) for l in open(f"runs/probe/e8d5-w{w}/metrics.jsonl") if "step_s" in l]
    first = sum(r["step_s"] for r in rows if r["step"] <= 2)
    later = [r["step_s"] for r in rows if r["step"] > 2]
    print(json.dumps({"window_s": w, "first_epoch_s": round(first, 1), "teacher_s": round(rows[-1]["teacher_s"], 1),
                      "later_step_s": round(sum(later) / len(later), 2)}))
PY
