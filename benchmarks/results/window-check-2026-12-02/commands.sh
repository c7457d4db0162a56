#!/bin/bash
cd /work/main
O=runs/pipeline-w10-sel
PY=.venv/bin/python
mkdir -p logs/preds
for fb in "" "--fallback"; do
  tag=${fb:+-fb}
  $PY -m whisper_kdq evaluate --model $O/teacher-qat-rows-10.5x/model.safetensors --data corpus/manifest.jsonl --split test --window 10 $fb --predictions logs/preds/rows-w10$tag.jsonl --force --json > logs/preds/rows-w10$tag.json
  echo "rows $fb $(date)"
  $PY -m whisper_kdq evaluate --model base --data corpus/manifest.jsonl --split test --window 10 $fb --predictions logs/preds/teacher-w10$tag.jsonl --force --json > logs/preds/teacher-w10$tag.json
  echo "teacher $fb $(date)"
done
