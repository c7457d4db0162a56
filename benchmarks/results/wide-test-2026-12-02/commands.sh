#!/bin/bash
# The wide test split (benchmarks/corpus.py --wide-test: 450 ja + 300 en test clips, five times the test split)
# on the teacher and two post-training rows whose changes on the 90/60-clip split were −1.8 % / −1.1 % (RTN 8-bit)
# and +7.6 % / +20.4 % (RTN 4-bit g32, q4_0 size): how much can the wide split resolve? Decoded at 30 s, one at a time.
set -e
cd /work/main
PY=.venv/bin/python
R=benchmarks/results/wide-test-2026-12-02
O=runs/wide
$PY benchmarks/corpus.py --out corpus --quiet                # the usual corpus (90 / 60 test clips) ...
$PY benchmarks/corpus.py --out corpus --wide-test --quiet    # ... grown in place to 450 / 300
$PY -m whisper_kdq quantize --model base --bits 8 --out $O/teacher-u8.safetensors --force --json > $O/u8.json
$PY -m whisper_kdq quantize --model base --bits 4 --group-size 32 --out $O/teacher-u4g32.safetensors --force --json > $O/u4g32.json
for m in base:teacher $O/teacher-u8.safetensors:u8 $O/teacher-u4g32.safetensors:u4g32; do
  $PY -m whisper_kdq evaluate --model ${m%%:*} --data corpus/manifest.jsonl --split test --window 30 \
    --predictions $R/${m##*:}-predictions.jsonl --force --json > $R/${m##*:}.json
done
# All 450 / 300 clips; then the original split alone (ids test-NNNN) and the added clips alone (test-wNNNN).
$PY benchmarks/significance.py --base $R/teacher-predictions.jsonl $R/u8-predictions.jsonl $R/u4g32-predictions.jsonl --json > $R/significance-wide.json
$PY benchmarks/significance.py --base $R/teacher-predictions.jsonl $R/u8-predictions.jsonl $R/u4g32-predictions.jsonl --ids 'test-[0-9]' --json > $R/significance-original.json
$PY benchmarks/significance.py --base $R/teacher-predictions.jsonl $R/u8-predictions.jsonl $R/u4g32-predictions.jsonl --ids 'test-w' --json > $R/significance-added.json
