#!/bin/bash
# The row-split 10.5x decoder stage again, its training clips with 0.9x and 1.1x copies (distill --speed-perturb).
set -e
cd /work/main
O=runs/pipeline-w10-sel
N=teacher-qat-rows-10.5x
P=$O/plan-$N.json
PY=.venv/bin/python
echo "start $(date)"
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N-sp --freeze-encoder \
  --student $O/$N-start.safetensors --steps 300 --batch-size 8 --lr 1e-4 --warmup 75 --save-every 100 --device cpu \
  --teacher-cache $O/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $P \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --speed-perturb 0.9,1.1 --json > logs/rows-sp-stage2.json
echo "stage2 done $(date)"
for w in 10 30; do
$PY -m whisper_kdq evaluate --model $O/$N-sp/model.safetensors --data corpus/manifest.jsonl --split test --window $w \
  --predictions logs/preds/rows-sp-w$w.jsonl --force --json > logs/preds/rows-sp-w$w.json
echo "test w$w done $(date)"
done
