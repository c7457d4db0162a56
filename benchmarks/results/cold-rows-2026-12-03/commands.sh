#!/bin/bash
# What 1-bit cold embedding rows would cost the fp32 teacher (float simulation; needs the 10.53x plan of
# ../rows-words-wide-2026-12-03/commands.sh in runs/pipeline-w10-sel). 2026-12-03, x86_64, 2 CPU cores, no GPU, commit 2826930.
set -e
cd /work/main
PY=.venv/bin/python
L=benchmarks/results/cold-rows-2026-12-03
$PY $L/cold_1bit.py
$PY -m whisper_kdq evaluate --model runs/e3-words/teacher-cold-1bit --data corpus/manifest.jsonl --split test --window 30 \
  --predictions $L/teacher-cold-1bit-predictions.jsonl --force --json > $L/teacher-cold-1bit.json
$PY benchmarks/significance.py --base benchmarks/results/wide-test-2026-12-02/teacher-predictions.jsonl \
  $L/teacher-cold-1bit-predictions.jsonl --json > $L/significance.json
# 2026-12-03: started 11:58 and stopped unfinished at 12:19 (the session's end): the teacher decodes the same 750
# clips in ~10.5 min, so the 1-bit rows made it more than twice as slow (loops, likely). Not measured yet.
