#!/bin/bash
# After commands.sh (the all-4-bit decoder retrained at 10 s on the 4-bit 30-s encoder: worse on both languages), the
# 10.52x model's decoder and embedding as they are (codes unchanged, no training) with the 4-bit 30-s encoder, codes
# xz-compressed. Resumable.
set -e
cd /work/main
PY=.venv/bin/python
E3O=runs/e3-old-decoder
O=runs/e4
L=benchmarks/results/e4-compressed-2026-12-03
R=benchmarks/results/wide-test-2026-12-02
T=benchmarks/results/rows-words-wide-2026-12-03
P=$O/plan-e4-olddec.json   # plan-v5.json with only the default (the encoder and its conv stem) at 4 bits
N=olddec-enc4
stamp() { echo "$(date +%H:%M:%S) $*" >> $L/steps.log; }
[ -f $P ] || $PY - $E3O/plan-v5.json $P <<'PYEOF'
import json, sys
plan = json.load(open(sys.argv[1]))
plan["default"]["bits"] = 4
json.dump(plan, open(sys.argv[2], "w"), indent=1)
PYEOF
[ -f $O/$N.safetensors ] || $PY benchmarks/swap_encoder.py --model $E3O/teacher-qat-e3-old-decoder-10.5x-enc30-v5.safetensors \
  --encoder-from $O/encoder4-w30/model.safetensors --plan $P --out $O/$N.safetensors > $L/swap-$N.json
[ -f $O/$N-xz.safetensors ] || $PY -m whisper_kdq quantize --model $O/$N.safetensors --plan $P --method keep \
  --codec xz --out $O/$N-xz.safetensors --json > $L/xz-$N.json
for lang in ja en; do
  fb=""; [ $lang = en ] && fb="--fallback"
  if [ ! -f $L/$N-$lang.json ]; then stamp eval-$N-$lang
  $PY -m whisper_kdq evaluate --model $O/$N-xz.safetensors --data corpus/manifest.jsonl --split test --language $lang \
    --window 30 $fb --predictions $L/$N-$lang-predictions.jsonl --force --json > $L/$N-$lang.tmp && mv $L/$N-$lang.tmp $L/$N-$lang.json
  fi
  if [ $lang = ja ]; then
    $PY benchmarks/significance.py --ids '^ja-' --base $R/teacher-predictions.jsonl $L/$N-ja-predictions.jsonl --json > $L/significance-$N-ja.json
  else
    $PY benchmarks/significance.py --base $T/teacher-en-fallback-predictions.jsonl $L/$N-en-predictions.jsonl --json > $L/significance-$N-en-fallback.json
  fi
done
stamp done-$N
