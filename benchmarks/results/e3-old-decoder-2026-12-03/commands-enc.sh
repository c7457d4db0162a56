#!/bin/bash
# After commands-eval.sh (English with fallback +3.2 %, Japanese +6.1 %: the Japanese gap is the encoder's), the 3-bit
# 30-s encoder trained 100 more steps at 30 s with the 8-bit scales it is stored with (its file first re-stored on its
# own grid: `quantize --method keep`), swapped into the v5 model, decoded on the test split.
set -e
cd /work/main
PY=.venv/bin/python
W=runs/pipeline-w10-sel
E3=runs/e3-words
O=runs/e3-old-decoder
L=benchmarks/results/e3-old-decoder-2026-12-03
N=teacher-qat-e3-old-decoder-10.5x
R=benchmarks/results/wide-test-2026-12-02
T=benchmarks/results/rows-words-wide-2026-12-03
stamp() { echo "$(date +%H:%M:%S) $*" >> $L/steps.log; }
# The encoder-only file has a float decoder: the v5 plan with the decoder float, to re-store it.
[ -f $O/plan-v5-encoder.json ] || $PY - $O/plan-v5.json $O/plan-v5-encoder.json <<'PYEOF'
import json, sys
plan = json.load(open(sys.argv[1]))
plan["rules"].append({"pattern": r"^model\.decoder\.", "float": True, "note": "an encoder-only file"})
json.dump(plan, open(sys.argv[2], "w"), indent=1)
PYEOF
[ -f $O/encoder-w30-v5.safetensors ] || $PY -m whisper_kdq quantize --model $E3/teacher-qat-rows-e3-words-10.5x-encoder-w30/model.safetensors \
  --plan $O/plan-v5-encoder.json --method keep --out $O/encoder-w30-v5.safetensors --json > $L/repack-encoder.json
if [ ! -f $O/encoder-w30-more/model.safetensors ]; then stamp encoder-w30-more
$PY -m whisper_kdq distill --encoder-only --teacher base --data corpus/train-subset-ja570-en325.jsonl \
  --eval-data corpus/manifest.jsonl --eval-split dev --out $O/encoder-w30-more --student-encoder-map 0,1,2,3,4,5 \
  --frozen-encoder-layers 0 --plan $O/plan-v5.json --student $O/encoder-w30-v5.safetensors --qat-init packed --steps 100 \
  --batch-size 8 --lr 5e-5 --warmup 10 --save-every 25 --eval-every 25 \
  --teacher-cache $W/encoder-targets-front-w30.pt --device cpu --json > $L/encoder-w30-more.json
fi
[ -f $O/$N-enc30more-v5.safetensors ] || $PY benchmarks/swap_encoder.py --model $O/$N-enc30-v5.safetensors \
  --encoder-from $O/encoder-w30-more/model.safetensors --plan $O/plan-v5.json --out $O/$N-enc30more-v5.safetensors > $L/swap-more.json
stamp eval-more-ja
for lang in ja en; do
  fb=""; [ $lang = en ] && fb="--fallback"
  if [ ! -f $L/more-$lang.json ]; then
  $PY -m whisper_kdq evaluate --model $O/$N-enc30more-v5.safetensors --data corpus/manifest.jsonl --split test --language $lang \
    --window 30 $fb --predictions $L/more-$lang-predictions.jsonl --force --json > $L/more-$lang.tmp && mv $L/more-$lang.tmp $L/more-$lang.json
  fi
done
$PY benchmarks/significance.py --ids '^ja-' --base $R/teacher-predictions.jsonl $L/v5-test-w30-predictions.jsonl $L/more-ja-predictions.jsonl --json > $L/significance-more-ja.json
$PY benchmarks/significance.py --base $T/teacher-en-fallback-predictions.jsonl $L/v5-en-fallback-predictions.jsonl $L/more-en-predictions.jsonl --json > $L/significance-more-en-fallback.json
stamp done-more
# What the storage costs (run after the above, 14:45): the same trained model before re-storing (fp16 scales, f32
# floats: 28 287 016 bytes, 10.27x), Japanese greedy.
$PY -m whisper_kdq evaluate --model $O/$N-enc30.safetensors --data corpus/manifest.jsonl --split test --language ja \
  --window 30 --predictions $L/v4-ja-predictions.jsonl --force --json > $L/v4-ja.json
$PY benchmarks/significance.py --ids '^ja-' --base $R/teacher-predictions.jsonl $L/v4-ja-predictions.jsonl $L/v5-test-w30-predictions.jsonl --json > $L/significance-v4-ja.json
