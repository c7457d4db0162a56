#!/bin/bash
# e6: e5's model (benchmarks/results/e5-from-scratch-2026-12-03) trained 600 more decoder steps, with fewer hot
# embedding rows so that the trained, xz-stored codes fit 10.5x: e5 measured 27 878 332 B, 394 KB over its plan's
# size with RTN codes (trained codes compress worse); the 10.5x bound is 27 654 826 B. The plan keeps e5's (every
# matrix 4-bit, cold rows 2-bit) but the hot rows are the training transcripts' tokens, the special tokens and the
# 8 000 / 10 000 most frequent English / Japanese words: 15 550 rows (e5: 20 283), 27.02 MB with RTN codes.
# The dropped rows start from e5's trained rows quantized to 2 bits; every other weight from e5's codes
# (--qat-init packed). Seed 1: another order of the clips than e5's. Resumable as e5's commands.
set -e
cd "$(dirname "$0")/../../.."
PY=.venv/bin/python
E5=benchmarks/results/e5-from-scratch-2026-12-03
O=runs/e6
L=benchmarks/results/e6-longer-decoder-2026-12-04
P=$O/plan-e6.json
N=teacher-qat-e6
mkdir -p $O
stamp() { echo "$(date +%H:%M:%S) $*" >> $L/steps.log; }
stamp start
[ -f $P ] || $PY $E5/make_plan.py benchmarks/results/e3-old-decoder-2026-12-03/plan-v5.json $P 8000 10000 > $L/plan.json
cp $P $L/plan-e6.json
if [ ! -f $O/$N/model.safetensors ]; then stamp stage2
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N --freeze-encoder \
  --student runs/e5/teacher-qat-e5/model.safetensors --steps 600 --batch-size 8 --lr 8e-5 --warmup 20 --seed 1 \
  --save-every 100 --device cpu --teacher-cache runs/e5/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 \
  --matching static --plan $P --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 150 \
  --speed-perturb 0.9,1.1 --json > $L/stage2.json
fi
[ -f $O/$N-xz.safetensors ] || $PY -m whisper_kdq quantize --model $O/$N/model.safetensors --plan $P --method keep \
  --codec xz --out $O/$N-xz.safetensors --json > $L/xz.json
stamp trained
for lang in ja en; do
  fb=""; [ $lang = en ] && fb="--fallback"
  if [ ! -f $L/$lang.json ]; then stamp eval-$lang
  $PY -m whisper_kdq evaluate --model $O/$N-xz.safetensors --data corpus/manifest.jsonl --split test --language $lang \
    --window 30 $fb --predictions $L/$lang-predictions.jsonl --force --json > $L/$lang.tmp && mv $L/$lang.tmp $L/$lang.json
  fi
done
# Compared with the teacher decoded on this machine's synthesis (e5's).
$PY benchmarks/significance.py --base $E5/teacher-ja-predictions.jsonl $L/ja-predictions.jsonl --json > $L/significance-ja.json
$PY benchmarks/significance.py --base $E5/teacher-en-predictions.jsonl $L/en-predictions.jsonl --json > $L/significance-en-fallback.json
stamp done
# English greedy too (espeak-ng is deterministic: the teacher's greedy transcripts of wide-test-2026-12-02 apply).
[ -f $L/en-greedy.json ] || $PY -m whisper_kdq evaluate --model $O/$N-xz.safetensors --data corpus/manifest.jsonl \
  --split test --language en --window 30 --predictions $L/en-greedy-predictions.jsonl --force --json > $L/en-greedy.json
$PY benchmarks/significance.py --base benchmarks/results/wide-test-2026-12-02/teacher-predictions.jsonl --ids '^en-' \
  $L/en-greedy-predictions.jsonl --json > $L/significance-en-greedy.json
# Decoded at the 10-s window it was trained at (the teacher stays at 30 s).
[ -f $L/en-w10.json ] || $PY -m whisper_kdq evaluate --model $O/$N-xz.safetensors --data corpus/manifest.jsonl --split test \
  --language en --window 10 --fallback --predictions $L/en-w10-predictions.jsonl --force --json > $L/en-w10.json
[ -f $L/ja-w10.json ] || $PY -m whisper_kdq evaluate --model $O/$N-xz.safetensors --data corpus/manifest.jsonl --split test \
  --language ja --window 10 --predictions $L/ja-w10-predictions.jsonl --force --json > $L/ja-w10.json
$PY benchmarks/significance.py --base $E5/teacher-en-predictions.jsonl $L/en-w10-predictions.jsonl --json > $L/significance-en-w10-fallback.json
$PY benchmarks/significance.py --base $E5/teacher-ja-predictions.jsonl $L/ja-w10-predictions.jsonl --json > $L/significance-ja-w10.json
