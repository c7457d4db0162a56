#!/bin/bash
# The decoder stage on the 30-s-continued stage-1 encoder (rows-words plan), then teacher and it side by side.
set -e
cd /work/main
PY=.venv/bin/python
O=runs/pipeline-w10-sel
E=teacher-qat-guided-23-10.5x-full
W=teacher-qat-rows-words-10.5x
N=teacher-qat-rows-words-enc30-10.5x
$PY -c "
import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path
from row_split_plan import compose_student
from whisper_kdq.models.refs import load_model
from whisper_kdq.quant.plan import load_plan
print(compose_student(load_model('base'), Path('$O/$E-encoder-w30/model.safetensors'), load_plan('$O/plan-$W.json'), Path('$O/$N-start.safetensors'))['file_bytes'])
"
$PY -m whisper_kdq distill --teacher base --data corpus/train-subset-ja570-en325.jsonl --out $O/$N --freeze-encoder \
  --student $O/$N-start.safetensors --steps 300 --batch-size 8 --lr 1e-4 --warmup 75 --save-every 100 --device cpu \
  --teacher-cache $O/teacher-cache-w10.pt --window 10 --ce 0.3 --kd 1 --hidden 1 --matching static --plan $O/plan-$W.json \
  --qat-init packed --eval-data corpus/manifest.jsonl --eval-split dev --eval-every 100 --speed-perturb 0.9,1.1 --json > logs/enc30-stage2.json
$PY -m whisper_kdq evaluate --model base --model $O/$N/model.safetensors --data corpus/manifest.jsonl --split test \
  --window 30 --predictions logs/preds/pair-enc30dec-w30.jsonl --force --json > logs/preds/pair-enc30dec-w30.json
# The JSON above holds both models and the model's "versus_first" (paired intervals against the teacher).
