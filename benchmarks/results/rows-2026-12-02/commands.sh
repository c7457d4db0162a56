#!/bin/bash
# 10.5x with a row-split token embedding: rows of the training transcripts at 4 bits, the rest at 2, the bytes
# freed spent on the decoder (all 3-bit, 29 matrices 4-bit); encoder = the full-range plan's stage-1 encoder.
set -e
cd /work/main
O=runs/pipeline-w10-sel
N=teacher-qat-rows-10.5x
# The pipeline row's file names (this run first wrote them as plan-rows-10.5x.json and rows-start.safetensors).
P=$O/plan-$N.json
PY=.venv/bin/python
$PY benchmarks/row_split_plan.py --base $O/plan-guided-linear-23-10.5x-full.json \
  --calibration corpus/train-subset-ja570-en325.jsonl --out $P \
  --encoder-from $O/teacher-qat-guided-23-10.5x-full-encoder/model.safetensors --student-out $O/$N-start.safetensors
if [ ! -f $O/$N/model.safetensors ]; then
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N --freeze-encoder \
  --student $O/$N-start.safetensors --steps 300 --batch-size 8 --lr 1e-4 --warmup 75 --save-every 150 --device cpu \
  --teacher-cache $O/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $P \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --json > logs/rows-stage2.json
fi
echo "stage2 done $(date)"
$PY -m whisper_kdq evaluate --model $O/$N/model.safetensors --data corpus/manifest.jsonl --split test --json > logs/rows-test.json
echo "test done $(date)"
# The same model, the teacher and last session's full-range model decoded at a 10-s window (test split).
for m in $O/$N/model.safetensors base $O/teacher-qat-guided-23-10.5x-full/model.safetensors; do
  $PY -m whisper_kdq evaluate --model $m --data corpus/manifest.jsonl --split test --window 10 --json
done
# Diagnosis: the stage-1 encoder with the teacher's float decoder and embedding (encoder_float_decoder.py), at 30 s and 10 s.
$PY benchmarks/results/rows-2026-12-02/encoder_float_decoder.py
for w in 30 10; do
  $PY -m whisper_kdq evaluate --model $O/full-encoder-float-decoder.safetensors --data corpus/manifest.jsonl --split test --window $w --json
done
