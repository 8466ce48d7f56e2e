#!/usr/bin/env bash
# Create .venv (if missing) and install cianet with its test extras. Idempotent; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# Pinned here (not in the package): the versions this project is tested with.
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
    .venv/bin/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
fi
if ! .venv/bin/python -c "import cianet, pytest, xdist, torchxrayvision, onnxruntime" >/dev/null 2>&1; then
    .venv/bin/pip install --quiet -e ".[test]"
fi
# The linter CI runs before the tests (pyproject.toml [tool.ruff]), pinned like torch.
if ! .venv/bin/ruff --version 2>/dev/null | grep -qx "ruff 0.17.6"; then
    .venv/bin/pip install --quiet "ruff==0.17.6"
fi
