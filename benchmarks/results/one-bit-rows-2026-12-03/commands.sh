#!/bin/bash
# 10.5x with the ~44 000 cold embedding rows at 1 bit (two levels per group of 128, format version 6) instead of 2:
# the 2.4 MB saved pay for a decoder at 4 bits everywhere and 11 of its matrices at 5 bits (make_plan.py). Start:
# the e3-old-decoder decoder-stage model (10-s encoder) re-stored on 8-bit scales; its decoder stage continued
# 300 steps under the new plan (the decoder's new grids and the embedding's start from its floats), then the
# 3-bit 30-s encoder swapped in. Then the wide test split: Japanese greedy (fallback changes no Japanese clip),
# English with fallback, against the teacher and the 10.52x model of ../e3-old-decoder-2026-12-03.
# Resumable: each step is skipped when its output exists.
set -e
cd /work/main
PY=.venv/bin/python
W=runs/pipeline-w10-sel
E=runs/e3-old-decoder
O=runs/one-bit-rows
L=benchmarks/results/one-bit-rows-2026-12-03
B=benchmarks/results/e3-old-decoder-2026-12-03
T=benchmarks/results/rows-words-wide-2026-12-03
R=benchmarks/results/wide-test-2026-12-02
N=teacher-qat-one-bit-rows-10.5x
P=$O/plan-$N.json
mkdir -p $O
stamp() { echo "$(date +%H:%M:%S) $*" >> $L/steps.log; }
stamp start
[ -f $O/start.safetensors ] || $PY -m whisper_kdq quantize --model $E/teacher-qat-e3-old-decoder-10.5x/model.safetensors \
  --plan $E/plan-v5.json --method keep --out $O/start.safetensors --json > $L/start.json
[ -f $P ] || $PY $L/make_plan.py $E/plan-v5.json $O/start.safetensors $P > $L/plan.log
cp $P $L/plan.json
if [ ! -f $O/$N/model.safetensors ]; then stamp stage2
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N --freeze-encoder \
  --student $O/start.safetensors --steps 300 --batch-size 8 --lr 5e-5 --warmup 20 --save-every 100 --device cpu \
  --teacher-cache $W/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $P \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --speed-perturb 0.9,1.1 --json > $L/stage2.json
fi
[ -f $O/$N-enc30.safetensors ] || $PY benchmarks/swap_encoder.py --model $O/$N/model.safetensors \
  --encoder-from $E/encoder-w30-v5.safetensors --plan $P --out $O/$N-enc30.safetensors > $L/swap.json
stamp eval-ja
if [ ! -f $L/ja.json ]; then
$PY -m whisper_kdq evaluate --model $O/$N-enc30.safetensors --data corpus/manifest.jsonl --split test --language ja \
  --window 30 --predictions $L/ja-predictions.jsonl --force --json > $L/ja.tmp && mv $L/ja.tmp $L/ja.json
fi
$PY benchmarks/significance.py --base $R/teacher-predictions.jsonl $B/v5-test-w30-predictions.jsonl $L/ja-predictions.jsonl --ids '^ja-' --json > $L/significance-ja.json
stamp eval-en
if [ ! -f $L/en-fallback.json ]; then
$PY -m whisper_kdq evaluate --model $O/$N-enc30.safetensors --data corpus/manifest.jsonl --split test --language en \
  --window 30 --fallback --predictions $L/en-fallback-predictions.jsonl --force --json > $L/en-fallback.tmp \
  && mv $L/en-fallback.tmp $L/en-fallback.json
fi
$PY benchmarks/significance.py --base $T/teacher-en-fallback-predictions.jsonl $B/v5-en-fallback-predictions.jsonl \
  $L/en-fallback-predictions.jsonl --json > $L/significance-en-fallback.json
stamp done
