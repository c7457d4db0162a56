#!/bin/bash
set -e
cd /work/main
O=runs/pipeline-w10-sel
N=teacher-qat-rows-e3-10.5x
P=$O/plan-$N.json
PY=.venv/bin/python
echo "start $(date)"
[ -f $O/$N-start.safetensors ] || $PY benchmarks/row_split_plan.py --base $O/plan-guided-linear-23-10.5x-full.json \
  --calibration corpus/train-subset-ja570-en325.jsonl --out $P --encoder-bits 3 \
  --encoder-from $O/$N-encoder/model.safetensors --student-out $O/$N-start.safetensors
echo "composed $(date)"
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N --freeze-encoder \
  --student $O/$N-start.safetensors --steps 300 --batch-size 8 --lr 1e-4 --warmup 75 --save-every 100 --device cpu \
  --teacher-cache $O/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $P \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --json > logs/e3-stage2.json
echo "stage2 done $(date)"
for w in 10 30; do
$PY -m whisper_kdq evaluate --model $O/$N/model.safetensors --data corpus/manifest.jsonl --split test --window $w \
  --predictions logs/preds/e3-w$w.jsonl --force --json > logs/preds/e3-w$w.json
echo "test w$w done $(date)"
done
python benchmarks/encoder_distance.py --splits dev,test --window 10 runs/pipeline-w10-sel/teacher-qat-guided-23-10.5x-full-encoder/model.safetensors runs/pipeline-w10-sel/teacher-qat-rows-e3-10.5x-encoder/model.safetensors --json benchmarks/results/rows-e3-2026-12-02/encoder-distance-w10.json
