#!/bin/bash
# 10.5x with compressed codes (format version 7): the 4-bit encoder the 3-bit one could not afford. Codes stored
# xz-compressed free ~4 MB of the 10.52x model's 27.6 MB (the same weights in 23.6 MB); spent on a 4-bit encoder
# (trained at 30 s from GPTQ, 100 steps) and an all-4-bit decoder (the 10.52x model's decoder and embedding, its
# decoder stage continued 300 steps on the new encoder). Resumable: each step is skipped when its output exists.
set -e
cd /work/main
PY=.venv/bin/python
W=runs/pipeline-w10-sel                  # teacher caches (benchmarks/results/rows-words-wide-2026-12-03/commands.sh makes them)
E3O=runs/e3-old-decoder                  # the 10.52x model (benchmarks/results/e3-old-decoder-2026-12-03/commands.sh)
O=runs/e4
L=benchmarks/results/e4-compressed-2026-12-03
R=benchmarks/results/wide-test-2026-12-02          # teacher greedy predictions, wide test split
T=benchmarks/results/rows-words-wide-2026-12-03    # teacher English predictions with fallback
P=$O/plan-e4.json
N=teacher-qat-e4
mkdir -p $O
stamp() { echo "$(date +%H:%M:%S) $*" >> $L/steps.log; }
stamp start
# The plan: plan-v5.json with the default (the encoder and its conv stem) at 4 bits and every decoder matrix at 4 bits.
[ -f $P ] || $PY - $E3O/plan-v5.json $P <<'PYEOF'
import json, sys
plan = json.load(open(sys.argv[1]))
plan["default"]["bits"] = 4
rules = []
for r in plan["rules"]:
    if r["pattern"].startswith(r"^model\.decoder\.layers\.") and set(r) == {"pattern", "bits"} and r["pattern"] != r"^model\.decoder\.layers\.":
        continue  # the 29 per-matrix 4-bit rules: every decoder matrix is 4-bit now
    rules.append(dict(r, bits=4) if r["pattern"] == r"^model\.decoder\.layers\." else r)
plan["rules"] = rules
json.dump(plan, open(sys.argv[2], "w"), indent=1)
PYEOF
# Stage 1: the encoder at 4 bits, trained at 30 s from GPTQ's codes against the teacher's encoder outputs.
if [ ! -f $O/encoder4-w30/model.safetensors ]; then stamp encoder4-w30
$PY -m whisper_kdq distill --encoder-only --teacher base --data corpus/train-subset-ja570-en325.jsonl \
  --eval-data corpus/manifest.jsonl --eval-split dev --out $O/encoder4-w30 --student-encoder-map 0,1,2,3,4,5 \
  --frozen-encoder-layers 0 --plan $P --qat-init gptq --steps 100 --batch-size 8 --lr 1e-4 --warmup 10 \
  --save-every 25 --eval-every 25 --teacher-cache $W/encoder-targets-front-w30.pt --device cpu --json > $L/encoder4-w30.json
fi
stamp encoder-done
# The 10.52x model's decoder and embedding with the new encoder; its 31 3-bit decoder matrices re-quantized at 4 bits.
[ -f $O/$N-start.safetensors ] || $PY benchmarks/swap_encoder.py --model $E3O/teacher-qat-e3-old-decoder-10.5x-enc30-v5.safetensors \
  --encoder-from $O/encoder4-w30/model.safetensors --plan $P --out $O/$N-start.safetensors > $L/swap.json
# Stage 2: the decoder stage continued on the frozen 4-bit encoder (at 10 s, as before; the dev checkpoint is kept).
if [ ! -f $O/$N/model.safetensors ]; then stamp stage2
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N --freeze-encoder \
  --student $O/$N-start.safetensors --steps 300 --batch-size 8 --lr 1e-4 --warmup 20 --save-every 100 --device cpu \
  --teacher-cache $W/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $P \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --speed-perturb 0.9,1.1 --json > $L/stage2.json
fi
# Stored with xz-compressed codes (the same weights: `--method keep` on the file's own grid).
[ -f $O/$N-xz.safetensors ] || $PY -m whisper_kdq quantize --model $O/$N/model.safetensors --plan $P --method keep \
  --codec xz --out $O/$N-xz.safetensors --json > $L/xz.json
stamp trained
for lang in ja en; do
  fb=""; [ $lang = en ] && fb="--fallback"
  if [ ! -f $L/$lang.json ]; then stamp eval-$lang
  $PY -m whisper_kdq evaluate --model $O/$N-xz.safetensors --data corpus/manifest.jsonl --split test --language $lang \
    --window 30 $fb --predictions $L/$lang-predictions.jsonl --force --json > $L/$lang.tmp && mv $L/$lang.tmp $L/$lang.json
  fi
done
$PY benchmarks/significance.py --ids '^ja-' --base $R/teacher-predictions.jsonl $L/ja-predictions.jsonl --json > $L/significance-ja.json
$PY benchmarks/significance.py --base $T/teacher-en-fallback-predictions.jsonl $L/en-predictions.jsonl --json > $L/significance-en-fallback.json
stamp done
