#!/bin/bash
# The best 10.5x model (full-range grid, fullrange-2026-12-01) with its decoder stage continued 250 steps at
# lr 5e-5 from its packed codes, as the restricted run was continued (docs/BENCHMARKS.md), then the test split.
set -e
cd /work/main
O=runs/pipeline-w10-sel
N=teacher-qat-guided-23-10.5x-full
PY=.venv/bin/python
$PY -m whisper_kdq distill --teacher base --student $O/$N/model.safetensors --freeze-encoder \
  --data corpus/train-subset-ja570-en325.jsonl --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 125 \
  --plan $O/plan-guided-linear-23-10.5x-full.json --qat-init packed --ce 0.3 --kd 1 --hidden 1 --matching static \
  --steps 250 --batch-size 8 --lr 5e-5 --warmup 20 --save-every 125 --window 10 \
  --teacher-cache $O/teacher-cache-w10.pt --device cpu --out $O/$N-more --json > logs/fullmore-stage2.json
echo "stage2 done $(date)"
$PY -m whisper_kdq evaluate --model $O/$N-more/model.safetensors --data corpus/manifest.jsonl --split test --json > logs/fullmore-test.json
echo "test done $(date)"
