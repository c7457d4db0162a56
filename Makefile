# Two entry points for a fresh machine; both create and reuse .venv (see scripts/setup.sh).
.PHONY: setup demo test test-fast

setup:
	bash scripts/setup.sh

# The main job on the embedded default: whisper-base teacher, a small synthesized corpus.
demo: setup
	.venv/bin/python benchmarks/demo.py

# Every test: fast unit tests and the integration tests on real whisper-base and real speech.
test: setup
	.venv/bin/python -m pytest -q

test-fast: setup
	.venv/bin/python -m pytest -q -m "not integration"
