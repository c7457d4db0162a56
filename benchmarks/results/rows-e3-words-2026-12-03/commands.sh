#!/bin/bash
# 10.5x with the encoder at 3 bits everywhere (bytes moved from the decoder's 4-bit matrices), the repaired tokenizer,
# common English words among the 4-bit embedding rows, speed-perturbed decoder stage and a 30-s encoder stage:
# the chain of ../rows-words-wide-2026-12-03/commands.sh with `row_split_plan.py --encoder-bits 3`.
# Why: the 10.53x model's decoder and embedding with the fp32 encoder lose nothing on Japanese
# (../rows-words-more-2026-12-03/), so the 2/3-bit encoder is what costs.
# Resumable: each step is skipped when its output exists; distill resumes from its own checkpoints.
set -e
cd /work/main
PY=.venv/bin/python
W=runs/pipeline-w10-sel            # teacher caches of the earlier chain (rebuilt when missing)
O=runs/e3-words
L=benchmarks/results/rows-e3-words-2026-12-03
CW=${CW:-3000}
mkdir -p $O $L
stamp() { echo "$(date +%H:%M:%S) $*" >> $L/steps.log; }
stamp start
$PY -c "import sys; sys.path.insert(0,'benchmarks'); from distillation import subset; from pathlib import Path; print(subset(Path('corpus'),570,325,seed=0))"
B=benchmarks/results/fullrange-2026-12-01/plan-guided-linear-23-10.5x-full.json
N=teacher-qat-rows-e3-words-10.5x
P=$O/plan-$N.json
[ -f $P ] || $PY benchmarks/row_split_plan.py --base $B --calibration corpus/train-subset-ja570-en325.jsonl \
  --common-words en:$CW --ratio 10.522 --encoder-bits 3 --out $P > $L/plan.json
E=$N-encoder
if [ ! -f $O/$E/model.safetensors ]; then stamp stage1
$PY -m whisper_kdq distill --encoder-only --teacher base --data corpus/train-subset-ja570-en325.jsonl \
  --eval-data corpus/manifest.jsonl --eval-split dev --out $O/$E --student-encoder-map 0,1,2,3,4,5 \
  --frozen-encoder-layers 0 --plan $P --qat-init gptq --steps 300 --batch-size 8 --lr 2e-4 --warmup 20 \
  --save-every 25 --eval-every 50 --teacher-cache $W/encoder-targets-front-w10.pt --window 10 --device cpu --json > $L/stage1.json
fi
if [ ! -f $O/$N-start.safetensors ]; then stamp compose
$PY benchmarks/row_split_plan.py --base $B --calibration corpus/train-subset-ja570-en325.jsonl \
  --common-words en:$CW --ratio 10.522 --encoder-bits 3 --out $P \
  --encoder-from $O/$E/model.safetensors --student-out $O/$N-start.safetensors > $L/plan.json
fi
if [ ! -f $O/$N/model.safetensors ]; then stamp stage2
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N --freeze-encoder \
  --student $O/$N-start.safetensors --steps 300 --batch-size 8 --lr 1e-4 --warmup 75 --save-every 100 --device cpu \
  --teacher-cache $W/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $P \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --speed-perturb 0.9,1.1 --json > $L/stage2.json
fi
if [ ! -f $O/$E-w30/model.safetensors ]; then stamp stage1-w30
$PY -m whisper_kdq distill --encoder-only --teacher base --data corpus/train-subset-ja570-en325.jsonl \
  --eval-data corpus/manifest.jsonl --eval-split dev --out $O/$E-w30 --student-encoder-map 0,1,2,3,4,5 \
  --frozen-encoder-layers 0 --plan $P --student $O/$E/model.safetensors --qat-init packed --steps 100 \
  --batch-size 8 --lr 1e-4 --warmup 10 --save-every 25 --eval-every 25 \
  --teacher-cache $W/encoder-targets-front-w30.pt --device cpu --json > $L/stage1-w30.json
fi
[ -f $O/$N-enc30.safetensors ] || $PY benchmarks/swap_encoder.py --model $O/$N/model.safetensors \
  --encoder-from $O/$E-w30/model.safetensors --plan $P --out $O/$N-enc30.safetensors
R=benchmarks/results/wide-test-2026-12-02
if [ ! -f $L/enc30-test-w30.json ]; then stamp eval-enc30
$PY -m whisper_kdq evaluate --model $O/$N-enc30.safetensors --data corpus/manifest.jsonl --split test --window 30 \
  --predictions $L/enc30-test-w30-predictions.jsonl --force --json > $L/enc30-test-w30.tmp && mv $L/enc30-test-w30.tmp $L/enc30-test-w30.json
fi
$PY benchmarks/significance.py --base $R/teacher-predictions.jsonl $L/enc30-test-w30-predictions.jsonl --json > $L/significance-wide.json
stamp done-greedy
# With temperature fallback, each language (the teacher's fallback predictions are in ../rows-words-wide-2026-12-03/):
T=benchmarks/results/rows-words-wide-2026-12-03
for lang in ja en; do
  if [ ! -f $L/enc30-$lang-fallback.json ]; then stamp fallback-$lang
  $PY -m whisper_kdq evaluate --model $O/$N-enc30.safetensors --data corpus/manifest.jsonl --split test --language $lang \
    --window 30 --fallback --predictions $L/enc30-$lang-fallback-predictions.jsonl --force --json > $L/enc30-$lang-fallback.tmp \
    && mv $L/enc30-$lang-fallback.tmp $L/enc30-$lang-fallback.json
  fi
  $PY benchmarks/significance.py --base $T/teacher-$lang-fallback-predictions.jsonl $L/enc30-$lang-fallback-predictions.jsonl --json > $L/significance-$lang-fallback.json
done
stamp done
