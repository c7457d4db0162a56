#!/bin/bash
# 10.5x guided 2/3-bit plan SELECTED on the full-range grid (select-layers --full-range: quantization losses
# measured on that grid), then the same two stages as fullrange-2026-12-01, then the test split.
set -e
cd /work/main
O=runs/pipeline-w10-sel
P=$O/plan-guided-linear-23-10.5x-fullsel.json
N=teacher-qat-guided-23-10.5x-fullsel
PY=.venv/bin/python
if [ ! -f $P ]; then
$PY -c "
import argparse, sys; from pathlib import Path; sys.path.insert(0, 'benchmarks')
from gpu_study import select_plan
select_plan(argparse.Namespace(teacher='base', corpus=Path('corpus'), out=Path('$O'), device='cpu'),
            {'ratio': 10.5, 'low_bits': 2, 'high_bits': 3, 'full_range': True})"
fi
echo "select done $(date)"
if [ ! -f $O/$N-encoder/model.safetensors ]; then
$PY -m whisper_kdq distill --encoder-only --teacher base --data corpus/train-subset-ja570-en325.jsonl \
  --eval-data corpus/manifest.jsonl --eval-split dev --out $O/$N-encoder --student-encoder-map 0,1,2,3,4,5 \
  --frozen-encoder-layers 0 --plan $P --qat-init gptq --steps 400 --batch-size 8 --lr 2e-4 --warmup 20 \
  --save-every 25 --eval-every 50 --teacher-cache $O/encoder-targets-front-w10.pt --window 10 --device cpu --json > logs/fullsel-stage1.json
fi
echo "stage1 done $(date)"
if [ ! -f $O/$N/model.safetensors ]; then
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N --freeze-encoder \
  --student $O/$N-encoder/model.safetensors --steps 300 --batch-size 8 --lr 1e-4 --warmup 75 --save-every 150 --device cpu \
  --teacher-cache $O/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $P \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --json > logs/fullsel-stage2.json
fi
echo "stage2 done $(date)"
$PY -m whisper_kdq evaluate --model $O/$N/model.safetensors --data corpus/manifest.jsonl --split test --json > logs/fullsel-test.json
echo "test done $(date)"
