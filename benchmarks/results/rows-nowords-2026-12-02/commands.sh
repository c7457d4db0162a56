#!/bin/bash
# Ablation of rows-words-2026-12-02: the same chain without the common English words (hot rows from the
# repaired labels of the training transcripts only), the file filled to 1/10.522 of the fp32 teacher; the
# stage-1 encoder is rows-words' (run its commands.sh up to stage 1 first). Then the intervals against the
# teacher (benchmarks/significance.py) for both runs.
set -e
cd /work/main
PY=.venv/bin/python
O=runs/pipeline-w10-sel
P=$O/plan-guided-linear-23-10.5x-full.json
E=teacher-qat-guided-23-10.5x-full
N=teacher-qat-rows-nowords-10.5x
$PY benchmarks/row_split_plan.py --base $P --calibration corpus/train-subset-ja570-en325.jsonl \
  --ratio 10.522 --out $O/plan-$N.json \
  --encoder-from $O/$E-encoder/model.safetensors --student-out $O/$N-start.safetensors > logs/nowords-plan.json
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N --freeze-encoder \
  --student $O/$N-start.safetensors --steps 300 --batch-size 8 --lr 1e-4 --warmup 75 --save-every 100 --device cpu \
  --teacher-cache $O/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $O/plan-$N.json \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --speed-perturb 0.9,1.1 --json > logs/nowords-stage2.json
for w in 30 10; do
  $PY -m whisper_kdq evaluate --model $O/$N/model.safetensors --data corpus/manifest.jsonl --split test --window $w \
    --predictions logs/preds/nowords-w$w.jsonl --force --json > logs/preds/nowords-w$w.json
  $PY benchmarks/significance.py --base logs/preds/teacher-w$w.jsonl logs/preds/nowords-w$w.jsonl logs/preds/words-w$w.jsonl
done
