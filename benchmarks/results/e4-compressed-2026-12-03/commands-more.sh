#!/bin/bash
# After commands-w10.sh (dev error still falling at its last step, 300): the decoder stage continued 300 more steps,
# same data, losses, plan and lr 5e-5, the checkpoint kept on dev; codes xz-compressed; wide test split. Resumable.
set -e
cd /work/main
PY=.venv/bin/python
W=runs/pipeline-w10-sel
O=runs/e4
L=benchmarks/results/e4-compressed-2026-12-03
R=benchmarks/results/wide-test-2026-12-02
T=benchmarks/results/rows-words-wide-2026-12-03
P=$O/plan-e4-olddec.json
N=olddec-enc4-stage2-more
stamp() { echo "$(date +%H:%M:%S) $*" >> $L/steps.log; }
if [ ! -f $O/$N/model.safetensors ]; then stamp stage2-$N
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N --freeze-encoder \
  --student $O/olddec-enc4-stage2/model.safetensors --steps 300 --batch-size 8 --lr 5e-5 --warmup 20 --save-every 100 --device cpu \
  --teacher-cache $W/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $P \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --speed-perturb 0.9,1.1 --json > $L/stage2-$N.json
fi
[ -f $O/$N-xz.safetensors ] || $PY -m whisper_kdq quantize --model $O/$N/model.safetensors --plan $P --method keep \
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
