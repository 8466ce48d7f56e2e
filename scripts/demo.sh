#!/usr/bin/env bash
# Fresh machine -> phantom data, alignment, baseline and CIA-Net trained and evaluated, report written.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cianet demo "$@"
