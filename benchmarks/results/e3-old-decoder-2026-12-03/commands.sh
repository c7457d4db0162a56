#!/bin/bash
# 10.5x: the 3-bit encoder paid for by smaller scales, not by the decoder. The 2/3-bit chain's continued decoder
# (29 4-bit matrices, ../rows-words-more-2026-12-03/) is put on the 3-bit chain's encoder (../rows-e3-words-2026-12-03/)
# and its decoder stage continued 300 steps on it (the decoder's English is fitted to the encoder it trained on),
# then the 3-bit 30-s encoder swapped in. Resumable: each step is skipped when its output exists.
set -e
cd /work/main
PY=.venv/bin/python
W=runs/pipeline-w10-sel
E3=runs/e3-words
O=runs/e3-old-decoder
L=benchmarks/results/e3-old-decoder-2026-12-03
N=teacher-qat-e3-old-decoder-10.5x
P=$O/plan-$N.json
mkdir -p $O
stamp() { echo "$(date +%H:%M:%S) $*" >> $L/steps.log; }
stamp start
# The plan: the 2/3-bit chain's plan without its seven 2-bit encoder rules (the encoder then takes the default 3 bits,
# as in the 3-bit chain's plan; decoder and embedding rules unchanged).
[ -f $P ] || $PY - $W/plan-teacher-qat-rows-words-10.5x.json $P <<'PYEOF'
import json, sys
plan = json.load(open(sys.argv[1]))
plan["rules"] = [r for r in plan["rules"] if not (r["pattern"].startswith(r"^model\.encoder\.layers\.") and r.get("bits") == 2)]
json.dump(plan, open(sys.argv[2], "w"), indent=1)
PYEOF
[ -f $O/$N-start.safetensors ] || $PY benchmarks/swap_encoder.py --model $W/teacher-qat-rows-words-10.5x-more/model.safetensors \
  --encoder-from $E3/teacher-qat-rows-e3-words-10.5x-encoder/model.safetensors --plan $P --out $O/$N-start.safetensors
if [ ! -f $O/$N/model.safetensors ]; then stamp stage2
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N --freeze-encoder \
  --student $O/$N-start.safetensors --steps 300 --batch-size 8 --lr 5e-5 --warmup 20 --save-every 100 --device cpu \
  --teacher-cache $W/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $P \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --speed-perturb 0.9,1.1 --json > $L/stage2.json
fi
[ -f $O/$N-enc30.safetensors ] || $PY benchmarks/swap_encoder.py --model $O/$N/model.safetensors \
  --encoder-from $E3/teacher-qat-rows-e3-words-10.5x-encoder-w30/model.safetensors --plan $P --out $O/$N-enc30.safetensors
stamp trained
