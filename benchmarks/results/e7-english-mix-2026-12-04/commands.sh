#!/bin/bash
# e7: e6's model (benchmarks/results/e6-longer-decoder-2026-12-04), its decoder trained 100 more steps on an
# English-heavier mix: the 325 English training clips and every third of the 570 Japanese (190), lr 5e-5, the same
# plan (every weight starts from e6's codes). Sized to what the session's last 40 minutes allowed.
set -e
cd "$(dirname "$0")/../../.."
PY=.venv/bin/python
E5=benchmarks/results/e5-from-scratch-2026-12-03
O=runs/e7
L=benchmarks/results/e7-english-mix-2026-12-04
P=runs/e6/plan-e6.json
N=teacher-qat-e7
mkdir -p $O
stamp() { echo "$(date +%H:%M:%S) $*" >> $L/steps.log; }
[ -f corpus/train-en325-ja190.jsonl ] || $PY -c "
import json
L=[json.loads(l) for l in open('corpus/train-subset-ja570-en325.jsonl')]
en=[x for x in L if x['language']=='en']; ja=[x for x in L if x['language']=='ja'][::3]
open('corpus/train-en325-ja190.jsonl','w').write(''.join(json.dumps(x)+'\n' for x in en+ja))"
if [ ! -f $O/$N/model.safetensors ]; then stamp stage2
$PY -m whisper_kdq distill --teacher base --data corpus/train-en325-ja190.jsonl --out $O/$N --freeze-encoder \
  --student runs/e6/teacher-qat-e6/model.safetensors --steps 100 --batch-size 8 --lr 5e-5 --warmup 10 --seed 2 \
  --save-every 50 --device cpu --teacher-cache runs/e5/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 \
  --matching static --plan $P --qat-init packed --speed-perturb 0.9,1.1 --json > $L/stage2.json
fi
[ -f $O/$N-xz.safetensors ] || $PY -m whisper_kdq quantize --model $O/$N/model.safetensors --plan $P --method keep \
  --codec xz --out $O/$N-xz.safetensors --json > $L/xz.json
stamp trained
for lang in en ja; do
  fb=""; [ $lang = en ] && fb="--fallback"
  if [ ! -f $L/$lang.json ]; then stamp eval-$lang
  $PY -m whisper_kdq evaluate --model $O/$N-xz.safetensors --data corpus/manifest.jsonl --split test --language $lang \
    --window 30 $fb --predictions $L/$lang-predictions.jsonl --force --json > $L/$lang.tmp && mv $L/$lang.tmp $L/$lang.json
  $PY benchmarks/significance.py --base $E5/teacher-$lang-predictions.jsonl $L/$lang-predictions.jsonl --json > $L/significance-$lang.json
  fi
done
stamp done
