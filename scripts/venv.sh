#!/usr/bin/env bash
# Create or update ./.venv with everything the project's commands and tests use.
#   ML_RESTORATION_EXTRAS   pip extras (default: dev,wandb,bench,export,demo, plus dali on Linux; bench brings
#                           bm3d, whose licence is non-commercial)
#   ML_RESTORATION_PILLOW_SIMD=0  keep stock Pillow instead of building pillow-simd
# torch is pinned to 2.13.0: on this project's machines that is a CPU build on local disk; on a CUDA box install
# your CUDA build of torch into .venv first and this script keeps it (a satisfied requirement installs nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
default_extras="dev,wandb,bench,export,demo"
[ "$(uname -s)" = "Linux" ] && default_extras="$default_extras,dali"  # DALI ships Linux wheels only
extras="${ML_RESTORATION_EXTRAS:-$default_extras}"
[ -x .venv/bin/python ] || python3 -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
.venv/bin/python -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
pip install -e ".[${extras}]"
marker=.venv/pillow-simd-requested  # tests/test_repo.py then asserts pillow-simd is the PIL that loads
rm -f "$marker"
if [ "${ML_RESTORATION_PILLOW_SIMD:-1}" = "1" ]; then
  # pillow-simd must come last: `pip install -e .` above (like any package depending on `pillow`) puts stock
  # Pillow back over it, since pillow-simd does not satisfy a `pillow` requirement. Swap again.
  if .venv/bin/python -m pip show pillow >/dev/null 2>&1 || ! .venv/bin/python -m pip show pillow-simd >/dev/null 2>&1; then
    pip uninstall -y pillow pillow-simd
    if ! pip install --no-deps pillow-simd; then
      echo "WARNING: pillow-simd did not build here (C compiler, libjpeg/zlib headers?): using stock Pillow" >&2
      pip install pillow
    fi
  fi
  .venv/bin/python -m pip show pillow-simd >/dev/null 2>&1 && touch "$marker"
fi
.venv/bin/python -P -c "import PIL, pipeline, shards, model, train, evaluate" || { echo "the environment is broken" >&2; exit 1; }
