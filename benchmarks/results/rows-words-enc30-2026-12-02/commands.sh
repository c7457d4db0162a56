#!/bin/bash
# Stage 1 goes on at Whisper's 30-s window from the 10-s stage-1 encoder (its codes), 100 steps; then the
# rows-words student's encoder is swapped for it (its decoder trained on the 10-s encoder) and decoded at 30 s.
set -e
cd /work/main
PY=.venv/bin/python
O=runs/pipeline-w10-sel
# (after rows-words-2026-12-02/commands.sh)
P=$O/plan-guided-linear-23-10.5x-full.json
E=teacher-qat-guided-23-10.5x-full
$PY -m whisper_kdq distill --encoder-only --teacher base --data corpus/train-subset-ja570-en325.jsonl \
  --eval-data corpus/manifest.jsonl --eval-split dev --out $O/$E-encoder-w30 --student-encoder-map 0,1,2,3,4,5 \
  --frozen-encoder-layers 0 --plan $P --student $O/$E-encoder/model.safetensors --qat-init packed --steps 100 \
  --batch-size 8 --lr 1e-4 --warmup 10 --save-every 25 --eval-every 25 \
  --teacher-cache $O/encoder-targets-front-w30.pt --device cpu --json > logs/w30-stage1.json

N=teacher-qat-rows-words-10.5x
$PY benchmarks/swap_encoder.py --model $O/$N/model.safetensors --encoder-from $O/$E-encoder-w30/model.safetensors \
  --plan $O/plan-$N.json --out $O/$N-enc30.safetensors --force

$PY -m whisper_kdq evaluate --model $O/$N-enc30.safetensors --data corpus/manifest.jsonl --split test --window 30 \
  --predictions logs/preds/words-enc30-w30.jsonl --force --json > logs/preds/words-enc30-w30.json

$PY benchmarks/significance.py --base logs/preds/teacher-w30.jsonl logs/preds/words-enc30-w30.jsonl logs/preds/words-w30.jsonl
$PY benchmarks/significance.py --base logs/preds/words-w30.jsonl logs/preds/words-enc30-w30.jsonl
