#!/bin/bash
# The best 10.5x chain (rows-words then rows-words-enc30), evaluated on the wide test split at 30 s.
# Run on the wide corpus (benchmarks/corpus.py --out corpus, then --wide-test); the teacher predictions are
# benchmarks/results/wide-test-2026-12-02/. 2026-12-03, x86_64, 2 CPU cores, no GPU, commit a032d85; 1 h 53 min.
# Resumable: each step is skipped when its output exists; distill resumes from its own checkpoints.
set -e
cd /work/main
PY=.venv/bin/python
O=runs/pipeline-w10-sel
L=benchmarks/results/rows-words-wide-2026-12-03
mkdir -p $O $L
stamp() { echo "$(date +%H:%M:%S) $*" >> $L/steps.log; }
stamp start
$PY -c "import sys; sys.path.insert(0,'benchmarks'); from distillation import subset; from pathlib import Path; print(subset(Path('corpus'),570,325,seed=0))"
P=$O/plan-guided-linear-23-10.5x-full.json
cp -n benchmarks/results/fullrange-2026-12-01/plan-guided-linear-23-10.5x-full.json $P
E=teacher-qat-guided-23-10.5x-full
if [ ! -f $O/$E-encoder/model.safetensors ]; then stamp stage1
$PY -m whisper_kdq distill --encoder-only --teacher base --data corpus/train-subset-ja570-en325.jsonl \
  --eval-data corpus/manifest.jsonl --eval-split dev --out $O/$E-encoder --student-encoder-map 0,1,2,3,4,5 \
  --frozen-encoder-layers 0 --plan $P --qat-init gptq --steps 400 --batch-size 8 --lr 2e-4 --warmup 20 \
  --save-every 25 --eval-every 50 --teacher-cache $O/encoder-targets-front-w10.pt --window 10 --device cpu --json > $L/stage1.json
fi
N=teacher-qat-rows-words-10.5x
if [ ! -f $O/$N-start.safetensors ]; then stamp plan
$PY benchmarks/row_split_plan.py --base $P --calibration corpus/train-subset-ja570-en325.jsonl \
  --common-words en:3000 --ratio 10.522 --out $O/plan-$N.json \
  --encoder-from $O/$E-encoder/model.safetensors --student-out $O/$N-start.safetensors > $L/plan.json
fi
if [ ! -f $O/$N/model.safetensors ]; then stamp stage2
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N --freeze-encoder \
  --student $O/$N-start.safetensors --steps 300 --batch-size 8 --lr 1e-4 --warmup 75 --save-every 100 --device cpu \
  --teacher-cache $O/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $O/plan-$N.json \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --speed-perturb 0.9,1.1 --json > $L/stage2.json
fi
if [ ! -f $O/$E-encoder-w30/model.safetensors ]; then stamp stage1-w30
$PY -m whisper_kdq distill --encoder-only --teacher base --data corpus/train-subset-ja570-en325.jsonl \
  --eval-data corpus/manifest.jsonl --eval-split dev --out $O/$E-encoder-w30 --student-encoder-map 0,1,2,3,4,5 \
  --frozen-encoder-layers 0 --plan $P --student $O/$E-encoder/model.safetensors --qat-init packed --steps 100 \
  --batch-size 8 --lr 1e-4 --warmup 10 --save-every 25 --eval-every 25 \
  --teacher-cache $O/encoder-targets-front-w30.pt --device cpu --json > $L/stage1-w30.json
fi
$PY benchmarks/swap_encoder.py --model $O/$N/model.safetensors --encoder-from $O/$E-encoder-w30/model.safetensors \
  --plan $O/plan-$N.json --out $O/$N-enc30.safetensors --force
if [ ! -f $L/enc30-test-w30.json ]; then stamp eval-enc30
$PY -m whisper_kdq evaluate --model $O/$N-enc30.safetensors --data corpus/manifest.jsonl --split test --window 30 \
  --predictions $L/enc30-test-w30-predictions.jsonl --force --json > $L/enc30-test-w30.tmp && mv $L/enc30-test-w30.tmp $L/enc30-test-w30.json
fi
R=benchmarks/results/wide-test-2026-12-02
$PY benchmarks/significance.py --base $R/teacher-predictions.jsonl $L/enc30-test-w30-predictions.jsonl --json > $L/significance-wide.json
$PY benchmarks/significance.py --base $R/teacher-predictions.jsonl $L/enc30-test-w30-predictions.jsonl --ids 'test-[0-9]' --json > $L/significance-original.json
stamp done-enc30
if [ ! -f $L/words-test-w30.json ]; then stamp eval-words
$PY -m whisper_kdq evaluate --model $O/$N/model.safetensors --data corpus/manifest.jsonl --split test --window 30 \
  --predictions $L/words-test-w30-predictions.jsonl --force --json > $L/words-test-w30.tmp && mv $L/words-test-w30.tmp $L/words-test-w30.json
$PY benchmarks/significance.py --base $R/teacher-predictions.jsonl $L/enc30-test-w30-predictions.jsonl $L/words-test-w30-predictions.jsonl --json > $L/significance-wide-both.json
fi
stamp done
# English only, with temperature fallback (evaluate --fallback), teacher and the 30-s-encoder model (4.5 min each):
grep '"split": "test"' corpus/manifest.jsonl | grep '"language": "en"' > corpus/test-en.jsonl
for m in base:teacher $O/$N-enc30.safetensors:enc30; do
  $PY -m whisper_kdq evaluate --model ${m%%:*} --data corpus/test-en.jsonl --window 30 --fallback \
    --predictions $L/${m##*:}-en-fallback-predictions.jsonl --force --json > $L/${m##*:}-en-fallback.json
done
$PY benchmarks/significance.py --base $L/teacher-en-fallback-predictions.jsonl $L/enc30-en-fallback-predictions.jsonl --json > $L/significance-en-fallback.json
# Japanese only, with temperature fallback (2026-12-03 morning, commit 73ebcda; 7.4 and 7.9 min). Run with a grep-filtered
# manifest (corpus/test-ja.jsonl, as for English above); `--split test --language ja` selects the same 450 clips in the
# same order (checked), so it is written that way here:
for m in base:teacher $O/$N-enc30.safetensors:enc30; do
  $PY -m whisper_kdq evaluate --model ${m%%:*} --data corpus/manifest.jsonl --split test --language ja --window 30 --fallback \
    --predictions $L/${m##*:}-ja-fallback-predictions.jsonl --force --json > $L/${m##*:}-ja-fallback.json
done
$PY benchmarks/significance.py --base $L/teacher-ja-fallback-predictions.jsonl $L/enc30-ja-fallback-predictions.jsonl --json > $L/significance-ja-fallback.json
