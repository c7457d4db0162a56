#!/bin/bash
# The 5.3x row ("no loss" target) re-run on the wide corpus (benchmarks/corpus.py --out corpus, then --wide-test):
# the reproduce command of docs/BENCHMARKS.md "Where the targets stand", unchanged; greedy, then with temperature
# fallback per language. 2026-12-03 morning, x86_64, 2 CPU cores, no GPU, code of commit 73ebcda (results.json
# records d9ff101, the HEAD when the row ended: docs only since). 45 min training (21 of them the teacher's 30-s
# outputs for the cache), 11 min greedy evaluation, ~8 + 5 min with fallback. Resumable (pipeline.py keeps finished rows).
set -e
cd /work/main
PY=.venv/bin/python
P=runs/wide-rows
L=benchmarks/results/wide-rows-2026-12-03
R=benchmarks/results/wide-test-2026-12-02
mkdir -p $P
$PY benchmarks/pipeline.py --out $P --steps 300 --ja 570 --en 325 --rows "teacher CE 0.3+KD+QAT enc 8-bit + dec 5-bit + emb 4-bit (best on dev)"
M=$P/teacher-qat-e8d5-emb4-ce03kd-dev
cp $P/results.json $P/results.md $M/metrics.jsonl $P/plan-uniform5-encoder-bits8-embedding-bits4.json $L/ && cp $M/summary.json $L/e8d5-summary.json
cp $P/predictions/runs_wide-rows_teacher-qat-e8d5-emb4-ce03kd-dev_model.safetensors-transformers.jsonl $L/e8d5-test-predictions.jsonl
# Against the teacher's and RTN 8-bit's predictions of the same wide split (wide-test-2026-12-02/commands.sh):
$PY benchmarks/significance.py --base $R/teacher-predictions.jsonl $R/u8-predictions.jsonl $L/e8d5-test-predictions.jsonl --json > $L/significance-wide.json
$PY benchmarks/significance.py --base $R/teacher-predictions.jsonl $L/e8d5-test-predictions.jsonl --ids 'test-[0-9]' --json > $L/significance-original.json
# With temperature fallback, against the teacher with it (rows-words-wide-2026-12-03/commands.sh):
W=benchmarks/results/rows-words-wide-2026-12-03
for lang in ja en; do
  $PY -m whisper_kdq evaluate --model $M/model.safetensors --data corpus/manifest.jsonl --split test --language $lang --window 30 \
    --fallback --predictions $L/e8d5-$lang-fallback-predictions.jsonl --force --json > $L/e8d5-$lang-fallback.json
  $PY benchmarks/significance.py --base $W/teacher-$lang-fallback-predictions.jsonl $L/e8d5-$lang-fallback-predictions.jsonl --json > $L/significance-$lang-fallback.json
done
# The q4_0-size row was started after this one and stopped twice for lack of session time; it ran whole on
# 2026-12-03 from 15:33 (code of commit 549e11c; 31.6 min training, 300 steps, ~7.5 s a step in its first epoch, which
# runs its own 4/6-bit encoder over every training clip, ~4 s after; then the greedy wide split):
$PY benchmarks/pipeline.py --out $P --steps 300 --ja 570 --en 325 --rows "teacher CE 0.3+KD+QAT guided per-matrix 4/6-bit (q4_0 size; best on dev)"
Q=$P/teacher-qat-guided-linear-q4_0-ce03kd-dev
cp $P/results.json $P/results.md $P/plan-teacher-guided-linear-q4_0.json $L/ && cp $Q/metrics.jsonl $L/q4_0-metrics.jsonl && cp $Q/summary.json $L/q4_0-summary.json
cp $P/predictions/runs_wide-rows_teacher-qat-guided-linear-q4_0-ce03kd-dev_model.safetensors-transformers.jsonl $L/q4_0-test-predictions.jsonl
# Against the teacher and RTN 4-bit group-32 (the q4_0 size, wide-test-2026-12-02/commands.sh), and against RTN g32 itself:
$PY benchmarks/significance.py --base $R/teacher-predictions.jsonl $R/u4g32-predictions.jsonl $L/q4_0-test-predictions.jsonl > $L/significance-q4_0.txt
$PY benchmarks/significance.py --base $R/u4g32-predictions.jsonl $L/q4_0-test-predictions.jsonl > $L/significance-q4_0-vs-rtn.txt
