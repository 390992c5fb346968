#!/usr/bin/env bash
# Fresh machine -> test results: builds ./.venv (scripts/venv.sh), then runs the whole suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
