#!/usr/bin/env bash
# Fresh machine -> the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Let Python keep the bytecode it compiles (an environment may switch that off): otherwise every test process,
# and every `python -m cianet` a test starts, compiles the package and pytest rewrites every test module again
# (about 6 s per process on the 2-core Xeon). The __pycache__ folders are ignored by git.
unset PYTHONDONTWRITEBYTECODE
exec .venv/bin/python -m pytest -q "$@"
