#!/bin/bash
# After commands-olddec.sh (the 10.52x decoder with the 4-bit 30-s encoder, untrained: Japanese +2.3 %, English +14.5 %
# with fallback: the decoder's English is fitted to the 3-bit encoder). The 10.52x chain's recipe on the 4-bit
# encoder: a 10-s version of it (the 30-s encoder trained 60 steps at 10 s), the decoder stage continued 300 steps
# on that one (codes of the 10.52x decoder, lr 5e-5, as in ../e3-old-decoder-2026-12-03/commands.sh), then the 30-s
# encoder swapped in and the codes xz-compressed. (commands.sh trained the decoder at 10 s on the 30-s encoder: the
# decoder then fits what that encoder does at a window it was not trained for.) Resumable.
set -e
cd /work/main
PY=.venv/bin/python
W=runs/pipeline-w10-sel
E3O=runs/e3-old-decoder
O=runs/e4
L=benchmarks/results/e4-compressed-2026-12-03
R=benchmarks/results/wide-test-2026-12-02
T=benchmarks/results/rows-words-wide-2026-12-03
P=$O/plan-e4-olddec.json   # commands-olddec.sh
N=olddec-enc4-stage2
stamp() { echo "$(date +%H:%M:%S) $*" >> $L/steps.log; }
if [ ! -f $O/encoder4-w10/model.safetensors ]; then stamp encoder4-w10
$PY -m whisper_kdq distill --encoder-only --teacher base --data corpus/train-subset-ja570-en325.jsonl \
  --eval-data corpus/manifest.jsonl --eval-split dev --out $O/encoder4-w10 --student-encoder-map 0,1,2,3,4,5 \
  --frozen-encoder-layers 0 --plan $P --student $O/encoder4-w30/model.safetensors --qat-init packed --steps 60 \
  --batch-size 8 --lr 1e-4 --warmup 5 --save-every 20 --eval-every 20 \
  --teacher-cache $W/encoder-targets-front-w10.pt --window 10 --device cpu --json > $L/encoder4-w10.json
fi
[ -f $O/$N-start.safetensors ] || $PY benchmarks/swap_encoder.py --model $E3O/teacher-qat-e3-old-decoder-10.5x-enc30-v5.safetensors \
  --encoder-from $O/encoder4-w10/model.safetensors --plan $P --out $O/$N-start.safetensors > $L/swap-$N-start.json
if [ ! -f $O/$N/model.safetensors ]; then stamp stage2-$N
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N --freeze-encoder \
  --student $O/$N-start.safetensors --steps 300 --batch-size 8 --lr 5e-5 --warmup 20 --save-every 100 --device cpu \
  --teacher-cache $W/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $P \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --speed-perturb 0.9,1.1 --json > $L/stage2-$N.json
fi
[ -f $O/$N-enc30.safetensors ] || $PY benchmarks/swap_encoder.py --model $O/$N/model.safetensors \
  --encoder-from $O/encoder4-w30/model.safetensors --plan $P --out $O/$N-enc30.safetensors > $L/swap-$N.json
[ -f $O/$N-xz.safetensors ] || $PY -m whisper_kdq quantize --model $O/$N-enc30.safetensors --plan $P --method keep \
  --codec xz --out $O/$N-xz.safetensors --json > $L/xz-$N.json
for lang in ja en; do
  fb=""; [ $lang = en ] && fb="--fallback"
  if [ ! -f $L/$N-$lang.json ]; then stamp eval-$N-$lang
  $PY -m whisper_kdq evaluate --model $O/$N-xz.safetensors --data corpus/manifest.jsonl --split test --language $lang \
    --window 30 $fb --predictions $L/$N-$lang-predictions.jsonl --force --json > $L/$N-$lang.tmp && mv $L/$N-$lang.tmp $L/$N-$lang.json
  fi
  if [ $lang = ja ]; then
    $PY benchmarks/significance.py --ids '^ja-' --base $R/teacher-predictions.jsonl $L/$N-ja-predictions.jsonl --json > $L/significance-$N-ja.json
  else
    $PY benchmarks/significance.py --base $T/teacher-en-fallback-predictions.jsonl $L/$N-en-predictions.jsonl --json > $L/significance-$N-en-fallback.json
  fi
done
stamp done-$N
