#!/usr/bin/env bash
# Check a CUDA machine and measure the project on it within a time budget:
#   bash release/gpu_check.sh OUTDIR [--budget-s S] [--skip PART,...] [--batches B,...] [--dry-run | --rehearse]
#
# On a CUDA machine it runs, each part under its own `timeout` and all inside --budget-s (default 470 s):
#   env          python -m bench env (what the machine offers; env.json)
#   tests_cuda   pytest -m cuda with TORCH_DEVICE=cuda (exit 5 = no test carries the marker)
#   tests_device the device-parametrised tests (degradation, loaders, model) with TORCH_DEVICE=cuda
#   dali_mixed   the DALI loader tests on CUDA, i.e. the `mixed` decoder (if DALI imports; else why not)
#   degrade_*    python -m bench degradation: the trainer's degradation call vs Pillow (eager codecs; then compiled,
#                whose cold compile may need most of its 100 s), ops per call
#   step         python -m bench step: the release training step per batch size (--batches, default
#                32,64,128,256), ops, kernel-busy share, chosen batch
#   degradation  python -m bench suite: device MPix/s vs Pillow/libjpeg on this machine's cores (degradation.json)
#   training     python -m bench suite: a short training per loader backend, data-wait share, loader ceiling
#   scaling      python -m bench suite: pipeline stages and the scaling curves (scaling.json, scaling.png)
#   infer        python -m bench infer --quick
# then `python -m release.gpu_summary OUTDIR` prints each part's status and the measurements against the targets
# (data-wait share <= 2%, degradation >= 10x the CPU pool) into OUTDIR/summary.md. Logs: OUTDIR/<part>.log.
# --skip leaves parts out (e.g. tests_cuda,tests_device when rerunning only the benchmarks).
# Without CUDA it writes env.json and a summary saying CUDA is absent, and exits 0. --dry-run prints the plan and runs
# nothing; --rehearse runs every part on the CPU (TORCH_DEVICE=cpu), to try the script before a GPU run.
#
# Environment: PYTHON (default .venv/bin/python if present, else python3); SHARDS (a packed shard folder; default
# data/cbsd432 if present, else 240 generated dead-leaves images). On a machine without a package index, wheels in
# `.whl/` at the repository root are installed first with pip --no-index into a scratch folder on PYTHONPATH; the
# repository itself goes on PYTHONPATH (no install needed).
set -uo pipefail

usage() { sed -n '3p' "$0" | sed 's/^#  */usage: /'; exit 2; }
out="" dry=0 device=cuda budget_s=470 skip_parts="" batches=32,64,128,256
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --rehearse) device=cpu ;;
    --budget-s) budget_s="${2:?--budget-s needs seconds}"; shift ;;
    --skip) skip_parts="${2:?--skip needs part names}"; shift ;;
    --batches) batches="${2:?--batches needs sizes}"; shift ;;
    -h | --help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) out="$1" ;;
  esac
  shift
done
[ -n "$out" ] || usage

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1
. "$repo/release/lib.sh"
py="$(repo_python "$repo")"
has_timeout=0
command -v timeout >/dev/null 2>&1 && has_timeout=1
start_s=$SECONDS

if [ "$dry" = 0 ]; then
  mkdir -p "$out" || exit 1
  out="$(cd "$out" && pwd)"
  : > "$out/parts.tsv"
fi

record() {  # part status rc seconds note
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$out/parts.tsv"
  printf '[gpu_check] %-12s %-8s rc=%-3s %5ss %s\n' "$1" "$2" "$3" "$4" "$5"
}

part() {  # part NAME BUDGET_S COMMAND...: run COMMAND under a timeout, log to OUTDIR/NAME.log, record the outcome
  local name=$1 limit=$2
  shift 2
  local left=$((budget_s - (SECONDS - start_s)))
  case " ${skip_parts//,/ } " in
    *" $name "*) skip "$name" "named in --skip"; return 0 ;;
  esac
  if [ "$dry" = 1 ]; then
    echo "[dry-run] $name (at most ${limit}s): $(printf '%q ' "$@")"
    return 0
  fi
  if [ "$left" -lt 20 ]; then
    record "$name" skipped - 0 "out of time (--budget-s $budget_s)"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS rc
  if [ "$has_timeout" = 1 ]; then
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  else
    "$@" > "$out/$name.log" 2>&1
  fi
  rc=$?
  local status=ok note=""
  case $rc in
    0) ;;
    124 | 137) status=timeout note="stopped after ${limit}s" ;;
    *) status=failed note="$(grep -v '^\s*$' "$out/$name.log" | tail -n 1 | tr '\t' ' ' | cut -c1-200)" ;;
  esac
  if [ "$name" = tests_cuda ] && [ $rc = 5 ]; then status=ok note="no test is marked cuda"; fi
  if [[ "$name" == tests_* || "$name" == dali_mixed ]] && [ $rc = 1 ] && [[ "$note" == *error* ]] \
    && [[ "$note" != *failed* ]]; then
    status=partial note="$note (test files that do not import here, e.g. a missing package: see $name.log)"
  fi
  record "$name" "$status" "$rc" $((SECONDS - t0)) "$note"
}

skip() {  # skip NAME REASON
  if [ "$dry" = 1 ]; then echo "[dry-run] $1: skipped ($2)"; else record "$1" skipped - 0 "$2"; fi
}

if compgen -G ".whl/*.whl" >/dev/null; then
  site="${TMPDIR:-/tmp}/gpu_check_site"
  part wheels 120 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled

part env 60 "$py" -m bench env --out "$out/env.json"
if [ "$dry" = 0 ] && [ "$device" = cuda ] && ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null; then
  echo "[gpu_check] CUDA is absent (torch.cuda.is_available() is False, or torch does not import): nothing to check"
  record cuda skipped - 0 "CUDA is absent"
  "$py" -m release.gpu_summary "$out"
  exit 0
fi

missing="" dali_why=""
if [ "$dry" = 0 ]; then
  missing="$("$py" -c "
import importlib.util as u
print(' '.join(m for m in ('webdataset', 'yaml', 'tqdm', 'matplotlib', 'PIL', 'pytest') if u.find_spec(m) is None))
" 2>&1)"
  dali_why="$("$py" -c "import nvidia.dali.plugin.pytorch" 2>&1 | tail -n 1)"
fi
shards="${SHARDS:-}"
if [ -z "$shards" ] && [ -f data/cbsd432/manifest.json ]; then shards="$repo/data/cbsd432"; fi
if [ -z "$shards" ]; then
  shards="${TMPDIR:-/tmp}/gpu_check_shards"
  if [ ! -f "$shards/manifest.json" ]; then
    part shards 90 "$py" -m shards.synth "$shards" --count 240 --min-shards 16 --workers "$(nproc 2>/dev/null || echo 4)"
  fi
fi
[ "$dry" = 1 ] && echo "[dry-run] python $py, shards $shards, budget ${budget_s}s (imports are checked on a real run)"

pytest_cuda=(env TORCH_DEVICE=$device "$py" -m pytest -q -p no:cacheprovider --continue-on-collection-errors)
part tests_cuda 45 "${pytest_cuda[@]}" -m cuda tests
part tests_device 100 "${pytest_cuda[@]}" -k "not dali" tests/test_degrade.py tests/test_loaders.py tests/test_model.py
if [ -z "$dali_why" ]; then
  part dali_mixed 45 "${pytest_cuda[@]}" -k dali tests/test_loaders.py
else
  skip dali_mixed "DALI does not import: ${dali_why:0:160}"
fi

if [ -n "$missing" ]; then
  for name in degradation training scaling infer; do
    skip "$name" "missing Python modules: $missing (carry their wheels in .whl/)"
  done
else
  suite=("$py" -m bench suite --quick --device "$device" --shards "$shards")
  degrade=("$py" -m bench degradation --device "$device" --batches 128 --threads "$(nproc 2>/dev/null || echo 1)")
  part degrade_eager 45 "${degrade[@]}" --codecs float64,int32 --out "$out/degrade_eager.json"
  part degrade_compiled 100 "${degrade[@]}" --codecs compiled --out "$out/degrade_compiled.json"
  part step 120 "$py" -m bench step --config release/gpu.yaml --batches "$batches" --steps 10 --device "$device" \
    --out "$out/step.json"
  part degradation 60 "${suite[@]}" --sections degradation --out "$out/degradation.json"
  part training 90 "${suite[@]}" --sections training --out "$out/training.json"
  part scaling 75 "${suite[@]}" --sections stages,scaling --out "$out/scaling.json"
  part infer 90 "$py" -m bench infer --quick --device "$device" --out "$out/infer.json"
fi

if [ "$dry" = 1 ]; then
  echo "[dry-run] nothing was run"
  exit 0
fi
"$py" -m release.gpu_summary "$out"
echo "[gpu_check] $((SECONDS - start_s)) s; results in $out"
awk -F '\t' '$2 == "failed" || $2 == "timeout" { bad = 1 } END { exit bad }' "$out/parts.tsv"
