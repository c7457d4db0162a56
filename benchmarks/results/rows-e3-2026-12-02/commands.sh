#!/bin/bash
# 10.5x row-split plan with the encoder's 2-bit matrices at 3 bits: stage 1 (encoder regression QAT, 250 steps),
# the stage-1 encoder with the float decoder on test (diagnosis), stage 2 (decoder, 200 steps), test.
# 2026-12-02: run up to the diagnosis only (stage 2 was stopped for lack of session time).
set -e
cd /work/main
O=runs/pipeline-w10-sel
N=teacher-qat-rows-e3-10.5x
P=$O/plan-$N.json
PY=.venv/bin/python
[ -f $P ] || $PY benchmarks/row_split_plan.py --base $O/plan-guided-linear-23-10.5x-full.json \
  --calibration corpus/train-subset-ja570-en325.jsonl --out $P --encoder-bits 3
if [ ! -f $O/$N-encoder/model.safetensors ]; then
$PY -m whisper_kdq distill --encoder-only --teacher base --data corpus/train-subset-ja570-en325.jsonl \
  --eval-data corpus/manifest.jsonl --eval-split dev --out $O/$N-encoder --student-encoder-map 0,1,2,3,4,5 \
  --frozen-encoder-layers 0 --plan $P --qat-init gptq --steps 250 --batch-size 8 --lr 2e-4 --warmup 20 \
  --save-every 25 --eval-every 50 --teacher-cache $O/encoder-targets-front-w10.pt --window 10 --device cpu --json > logs/e3-stage1.json
fi
echo "stage1 done $(date)"
$PY benchmarks/results/rows-e3-2026-12-02/encoder_float_decoder.py $O/$N-encoder/model.safetensors $P $O/$N-encoder-float-decoder.safetensors
$PY -m whisper_kdq evaluate --model $O/$N-encoder-float-decoder.safetensors --data corpus/manifest.jsonl --split test --json > logs/e3-encf-test.json
echo "diagnosis done $(date)"
$PY benchmarks/row_split_plan.py --base $O/plan-guided-linear-23-10.5x-full.json \
  --calibration corpus/train-subset-ja570-en325.jsonl --out $P --encoder-bits 3 \
  --encoder-from $O/$N-encoder/model.safetensors --student-out $O/$N-start.safetensors
if [ ! -f $O/$N/model.safetensors ]; then
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N --freeze-encoder \
  --student $O/$N-start.safetensors --steps 200 --batch-size 8 --lr 1e-4 --warmup 50 --save-every 100 --device cpu \
  --teacher-cache $O/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $P \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --json > logs/e3-stage2.json
fi
echo "stage2 done $(date)"
$PY -m whisper_kdq evaluate --model $O/$N/model.safetensors --data corpus/manifest.jsonl --split test --json > logs/e3-test.json
echo "test done $(date)"
