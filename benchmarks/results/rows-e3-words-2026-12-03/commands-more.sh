#!/bin/bash
# After commands.sh's stage1-w30 (the decoder stage's dev error was still falling at step 300: 0.183 -> 0.171 -> 0.161),
# the decoder stage continued 300 steps (lr 5e-5, best on dev) as ../rows-words-more-2026-12-03/ did for the 2/3-bit
# encoder's model, then the 30-s encoder swapped in and the test split decoded greedy and with fallback.
# (commands.sh's own greedy evaluation of the model before the continuation was not run.)
set -e
cd /work/main
PY=.venv/bin/python
W=runs/pipeline-w10-sel
O=runs/e3-words
L=benchmarks/results/rows-e3-words-2026-12-03
N=teacher-qat-rows-e3-words-10.5x
E=$N-encoder
P=$O/plan-$N.json
C=$N-more
stamp() { echo "$(date +%H:%M:%S) $*" >> $L/steps.log; }
if [ ! -f $O/$C/model.safetensors ]; then stamp stage2-more
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$C --freeze-encoder \
  --student $O/$N/model.safetensors --steps 300 --batch-size 8 --lr 5e-5 --warmup 20 --save-every 100 --device cpu \
  --teacher-cache $W/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $P \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --speed-perturb 0.9,1.1 --json > $L/stage2-more.json
fi
[ -f $O/$C-enc30.safetensors ] || $PY benchmarks/swap_encoder.py --model $O/$C/model.safetensors \
  --encoder-from $O/$E-w30/model.safetensors --plan $P --out $O/$C-enc30.safetensors
R=benchmarks/results/wide-test-2026-12-02
T=benchmarks/results/rows-words-wide-2026-12-03
M=benchmarks/results/rows-words-more-2026-12-03
if [ ! -f $L/more-test-w30.json ]; then stamp eval-more
$PY -m whisper_kdq evaluate --model $O/$C-enc30.safetensors --data corpus/manifest.jsonl --split test --window 30 \
  --predictions $L/more-test-w30-predictions.jsonl --force --json > $L/more-test-w30.tmp && mv $L/more-test-w30.tmp $L/more-test-w30.json
fi
# against the teacher, beside the 2/3-bit encoder's continued model (same bytes):
$PY benchmarks/significance.py --base $R/teacher-predictions.jsonl $M/more-enc30-test-w30-predictions.jsonl \
  $L/more-test-w30-predictions.jsonl --json > $L/significance-more.json
stamp done-greedy
for lang in en ja; do
  if [ ! -f $L/more-$lang-fallback.json ]; then stamp fallback-$lang
  $PY -m whisper_kdq evaluate --model $O/$C-enc30.safetensors --data corpus/manifest.jsonl --split test --language $lang \
    --window 30 --fallback --predictions $L/more-$lang-fallback-predictions.jsonl --force --json > $L/more-$lang-fallback.tmp \
    && mv $L/more-$lang-fallback.tmp $L/more-$lang-fallback.json
  fi
  $PY benchmarks/significance.py --base $T/teacher-$lang-fallback-predictions.jsonl $L/more-$lang-fallback-predictions.jsonl --json > $L/significance-more-$lang-fallback.json
done
stamp done
# Diagnosis (after the runs above): the 2/3-bit chain's continued decoder with this chain's 3-bit 30-s encoder, greedy.
M=benchmarks/results/rows-words-more-2026-12-03
$PY $L/old_decoder.py
for lang in ja en; do
  $PY -m whisper_kdq evaluate --model $O/old-decoder-e3-encoder --data corpus/manifest.jsonl --split test --language $lang \
    --window 30 --predictions $L/old-decoder-$lang-predictions.jsonl --force --json > $L/old-decoder-$lang.json
done
cat $L/old-decoder-ja-predictions.jsonl $L/old-decoder-en-predictions.jsonl > $L/old-decoder-predictions.jsonl
$PY benchmarks/significance.py --base $R/teacher-predictions.jsonl $M/more-enc30-test-w30-predictions.jsonl \
  $L/more-test-w30-predictions.jsonl $L/old-decoder-predictions.jsonl --json > $L/significance-old-decoder.json
