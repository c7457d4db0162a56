#!/bin/bash
# Row split with the tokenizer's first 5000 tokens among the 4-bit rows (rare English words), decoder stage on
# speed-perturbed clips (0.9x, 1.1x), the full-range stage-1 encoder.
set -e
cd /work/main
O=runs/pipeline-w10-sel
N=teacher-qat-rows-t5k-10.5x
P=$O/plan-$N.json
PY=.venv/bin/python
echo "start $(date)"
$PY benchmarks/row_split_plan.py --base $O/plan-guided-linear-23-10.5x-full.json \
  --calibration corpus/train-subset-ja570-en325.jsonl --out $P --first-tokens 5000 \
  --encoder-from $O/teacher-qat-guided-23-10.5x-full-encoder/model.safetensors --student-out $O/$N-start.safetensors
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N-sp --freeze-encoder \
  --student $O/$N-start.safetensors --steps 300 --batch-size 8 --lr 1e-4 --warmup 75 --save-every 100 --device cpu \
  --teacher-cache $O/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $P \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --speed-perturb 0.9,1.1 --json > logs/rows-t5k-stage2.json
echo "stage2 done $(date)"
for w in 10 30; do
$PY -m whisper_kdq evaluate --model $O/$N-sp/model.safetensors --data corpus/manifest.jsonl --split test --window $w \
  --predictions logs/preds/rows-t5k-w$w.jsonl --force --json > logs/preds/rows-t5k-w$w.json
echo "test w$w done $(date)"
done
