#!/usr/bin/env bash
# Create or update ./.venv with everything the project's commands and tests use.
#   ML_RESTORATION_EXTRAS   pip extras (default: dev,wandb,bench,export,demo,heic, plus dali on Linux; bench brings
#                           bm3d, whose licence is non-commercial; heic brings pillow-heif, whose wheels bundle
#                           libde265 (LGPL) and x265 (GPL))
#   ML_RESTORATION_PILLOW_SIMD=0  keep stock Pillow instead of building pillow-simd
# torch is pinned to 2.13.0: on this project's machines that is a CPU build on local disk; on a CUDA box install
# your CUDA build of torch into .venv first and this script keeps it (a satisfied requirement installs nothing).
# Pillow must read every format users have: pillow-simd (faster resize) is kept only when it has every codec
# stock Pillow's wheels have (`python -m pipeline.codecs`); otherwise stock Pillow, with a warning saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
default_extras="dev,wandb,bench,export,demo,heic"
[ "$(uname -s)" = "Linux" ] && default_extras="$default_extras,dali"  # DALI ships Linux wheels only
extras="${ML_RESTORATION_EXTRAS:-$default_extras}"
[ -x .venv/bin/python ] || python3 -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
.venv/bin/python -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
pip install -e ".[${extras}]"
marker=.venv/pillow-simd-requested  # tests/test_repo.py then asserts pillow-simd is the PIL that loads
rm -f "$marker"
has_all_codecs() { .venv/bin/python -P -m pipeline.codecs >/dev/null 2>&1; }
installed() { .venv/bin/python -m pip show "$1" >/dev/null 2>&1; }
simd_is_loaded() { installed pillow-simd && ! installed pillow; }
stock_pillow() {  # a clean stock Pillow, whatever was there (both distributions own PIL/: remove both first)
  echo "WARNING: using stock Pillow, not pillow-simd: $1" >&2
  echo "WARNING: (decoding speed is the same; only resize is 5-7x slower. Install what is named above and rerun" \
    "scripts/venv.sh to get pillow-simd, or set ML_RESTORATION_PILLOW_SIMD=0 to silence this.)" >&2
  if installed pillow && ! installed pillow-simd && has_all_codecs; then
    return  # stock Pillow with every codec is already the one installed
  fi
  pip uninstall -y pillow pillow-simd >/dev/null 2>&1 || true
  pip install -e ".[${extras}]"  # resolves a Pillow that every installed package accepts (gradio: pillow<13)
}
if [ "${ML_RESTORATION_PILLOW_SIMD:-1}" = "1" ]; then
  if simd_is_loaded && has_all_codecs; then
    touch "$marker"  # an earlier run built it with every codec
  elif missing=$(bash scripts/pillow_headers.sh check); then
    # pillow-simd must come last: `pip install -e .` above (like any package depending on `pillow`) puts stock
    # Pillow back over it. --no-cache-dir: a wheel cached from a build without the headers would lack codecs.
    pip uninstall -y pillow pillow-simd >/dev/null 2>&1 || true
    if ! pip install --no-deps --no-cache-dir pillow-simd; then
      stock_pillow "pillow-simd did not build here (C compiler?)"
    elif ! has_all_codecs; then
      lacking=$(.venv/bin/python -P -m pipeline.codecs 2>&1 | awk '$1 == "MISSING" {print $2}' | xargs)
      stock_pillow "pillow-simd built without $lacking"
    else
      touch "$marker"
    fi
  else
    stock_pillow "pillow-simd would lack codecs on this machine: $missing"
  fi
fi
if ! has_all_codecs; then
  .venv/bin/python -P -m pipeline.codecs >&2 || true
  echo "the environment's Pillow lacks codecs (above): pip uninstall -y pillow pillow-simd && pip install pillow" >&2
  exit 1
fi
.venv/bin/python -P -c "import PIL, pipeline, shards, model, train, evaluate" || { echo "the environment is broken" >&2; exit 1; }
