#!/usr/bin/env bash
# Create or update ./.venv with everything the project's commands and tests use.
#   ML_RESTORATION_EXTRAS   pip extras to install (default: dev,dali,wandb,bench; bench brings bm3d, non-commercial licence)
#   ML_RESTORATION_PILLOW_SIMD=0  keep stock Pillow instead of building pillow-simd
# torch is pinned to 2.13.0: on this project's machines that is a CPU build on local disk; on a CUDA box install
# your CUDA build of torch into .venv first and this script keeps it (a satisfied requirement installs nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${ML_RESTORATION_EXTRAS:-dev,dali,wandb,bench}"
[ -x .venv/bin/python ] || python3 -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
.venv/bin/python -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
pip install -e ".[${extras}]"
.venv/bin/python -c "import torch" || { echo "torch failed to install" >&2; exit 1; }
if [ "${ML_RESTORATION_PILLOW_SIMD:-1}" = "1" ]; then
  # pillow-simd must come last: any later install of a package depending on `pillow` silently replaces it.
  # `pip install -e .` above puts stock Pillow back over it (pillow-simd does not satisfy `pillow`): swap again.
  if .venv/bin/python -m pip show pillow >/dev/null 2>&1 || ! .venv/bin/python -m pip show pillow-simd >/dev/null 2>&1; then
    pip uninstall -y pillow pillow-simd
    pip install --no-deps pillow-simd
  fi
  touch .venv/pillow-simd-requested  # tests/test_repo.py then asserts pillow-simd is the PIL that loads
fi
.venv/bin/python -c "import PIL, pipeline, shards" || { echo "the environment is broken" >&2; exit 1; }
