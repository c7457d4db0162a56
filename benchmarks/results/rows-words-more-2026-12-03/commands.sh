#!/bin/bash
# The 10.5x rows-words decoder stage continued for 300 more steps (lr 5e-5, best on dev), its 30-s encoder swapped in,
# decoded on the wide test split at 30 s, greedy and (English) with temperature fallback.
# Needs the models of ../rows-words-wide-2026-12-03/commands.sh in runs/pipeline-w10-sel.
# 2026-12-03 morning, x86_64, 2 CPU cores, no GPU, commit 73ebcda; 22 min training, 10.8 + 4.3 min evaluation.
set -e
cd /work/main
PY=.venv/bin/python
O=runs/pipeline-w10-sel
N=teacher-qat-rows-words-10.5x
E=teacher-qat-guided-23-10.5x-full
L=benchmarks/results/rows-words-more-2026-12-03
R=benchmarks/results/wide-test-2026-12-02
W=benchmarks/results/rows-words-wide-2026-12-03
C=$N-more
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$C --freeze-encoder \
  --student $O/$N/model.safetensors --steps 300 --batch-size 8 --lr 5e-5 --warmup 20 --save-every 100 --device cpu \
  --teacher-cache $O/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $O/plan-$N.json \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --speed-perturb 0.9,1.1 --json > $L/stage2-more.json
$PY benchmarks/swap_encoder.py --model $O/$C/model.safetensors --encoder-from $O/$E-encoder-w30/model.safetensors \
  --plan $O/plan-$N.json --out $O/$C-enc30.safetensors --force
$PY -m whisper_kdq evaluate --model $O/$C-enc30.safetensors --data corpus/manifest.jsonl --split test --window 30 \
  --predictions $L/more-enc30-test-w30-predictions.jsonl --force --json > $L/more-enc30-test-w30.json
$PY benchmarks/significance.py --base $R/teacher-predictions.jsonl $W/enc30-test-w30-predictions.jsonl $L/more-enc30-test-w30-predictions.jsonl --json > $L/significance-more.json
$PY -m whisper_kdq evaluate --model $O/$C-enc30.safetensors --data corpus/manifest.jsonl --split test --language en --window 30 --fallback \
  --predictions $L/more-en-fallback-predictions.jsonl --force --json > $L/more-en-fallback.json
$PY benchmarks/significance.py --base $W/teacher-en-fallback-predictions.jsonl $L/more-en-fallback-predictions.jsonl --json > $L/significance-more-en-fallback.json
# Which part costs Japanese: the continued model's decoder and embedding (dequantized) with the fp32 teacher's
# encoder, as a transformers directory, Japanese clips greedy (08:42-08:59, 14.5 min, the machine partly shared).
$PY $L/float_encoder.py
$PY -m whisper_kdq evaluate --model $O/more-float-encoder --data corpus/manifest.jsonl --split test --language ja --window 30 \
  --predictions $L/float-encoder-ja-predictions.jsonl --force --json > $L/float-encoder-ja.json
$PY benchmarks/significance.py --ids '^ja-' --base $R/teacher-predictions.jsonl $L/more-enc30-test-w30-predictions.jsonl \
  $L/float-encoder-ja-predictions.jsonl --json > $L/significance-float-encoder-ja.json
# The same hybrid on the English clips (2026-12-03, 09:30-09:36, commit 876c05b), against the quantized pair:
$PY -m whisper_kdq evaluate --model $O/more-float-encoder --data corpus/manifest.jsonl --split test --language en --window 30 \
  --predictions $L/float-encoder-en-predictions.jsonl --force --json > $L/float-encoder-en.json
$PY benchmarks/significance.py --ids '^en-' --base $R/teacher-predictions.jsonl $L/more-enc30-test-w30-predictions.jsonl \
  $L/float-encoder-en-predictions.jsonl --json > $L/significance-float-encoder-en.json
