#!/bin/bash
# After commands.sh: the trained 10.27x file (fp16 scales, f32 floats) re-stored on its own grid with 8-bit scales
# and fp16 floats (`quantize --method keep`, format version 5) -> >= 10.5x; then the wide test split, greedy and with
# fallback, against the teacher; the dev split for both files (what the re-storing costs).
set -e
cd /work/main
PY=.venv/bin/python
O=runs/e3-old-decoder
L=benchmarks/results/e3-old-decoder-2026-12-03
N=teacher-qat-e3-old-decoder-10.5x
R=benchmarks/results/wide-test-2026-12-02
T=benchmarks/results/rows-words-wide-2026-12-03
M=benchmarks/results/rows-words-more-2026-12-03
stamp() { echo "$(date +%H:%M:%S) $*" >> $L/steps.log; }
# The plan of commands.sh with 8-bit scales on its default (every 2-4-bit tensor) and fp16 floats; the decoder's
# 8-bit position table keeps fp16 scales.
[ -f $O/plan-v5.json ] || $PY - $O/plan-$N.json $O/plan-v5.json <<'PYEOF'
import json, sys
plan = json.load(open(sys.argv[1]))
plan["default"]["scale_bits"] = 8
plan["floats"] = "f16"
plan["rules"].append({"pattern": r"\.embed_positions\.weight$", "scale_bits": 16,
                      "note": "8-bit tables keep fp16 scales (an 8-bit scale's error is a third of their step)"})
json.dump(plan, open(sys.argv[2], "w"), indent=1)
PYEOF
cp $O/plan-v5.json $L/plan-v5.json
[ -f $O/$N-enc30-v5.safetensors ] || $PY -m whisper_kdq quantize --model $O/$N-enc30.safetensors --plan $O/plan-v5.json \
  --method keep --out $O/$N-enc30-v5.safetensors --json > $L/repack.json
stamp eval-v5
if [ ! -f $L/v5-test-w30.json ]; then
$PY -m whisper_kdq evaluate --model $O/$N-enc30-v5.safetensors --data corpus/manifest.jsonl --split test --window 30 \
  --predictions $L/v5-test-w30-predictions.jsonl --force --json > $L/v5-test-w30.tmp && mv $L/v5-test-w30.tmp $L/v5-test-w30.json
fi
$PY benchmarks/significance.py --base $R/teacher-predictions.jsonl $M/more-enc30-test-w30-predictions.jsonl \
  $L/v5-test-w30-predictions.jsonl --json > $L/significance-v5.json
stamp done-greedy
for lang in en ja; do
  if [ ! -f $L/v5-$lang-fallback.json ]; then stamp fallback-$lang
  $PY -m whisper_kdq evaluate --model $O/$N-enc30-v5.safetensors --data corpus/manifest.jsonl --split test --language $lang \
    --window 30 --fallback --predictions $L/v5-$lang-fallback-predictions.jsonl --force --json > $L/v5-$lang-fallback.tmp \
    && mv $L/v5-$lang-fallback.tmp $L/v5-$lang-fallback.json
  fi
  $PY benchmarks/significance.py --base $T/teacher-$lang-fallback-predictions.jsonl $L/v5-$lang-fallback-predictions.jsonl --json > $L/significance-v5-$lang-fallback.json
done
stamp done
