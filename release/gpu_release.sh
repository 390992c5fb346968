#!/usr/bin/env bash
# Train the release model on a CUDA machine within a time budget and collect the results:
#   bash release/gpu_release.sh OUTDIR [--total-s S] [--train-s S] [--cal-steps N] [--shards DIR] [--set A.B=V ...]
#                               [--max-file-mib M] [--rehearse]
#
# Everything runs inside --total-s (default 570 s from the start), each step under its own `timeout`, so the script
# always ends and leaves in OUTDIR what it has:
#   1. setup      CUDA is checked first (without it: exit 3, nothing run); wheels in `.whl/` (for a machine without
#                 a package index) installed with pip --no-index into a scratch folder on PYTHONPATH, the
#                 repository on PYTHONPATH, W&B off; the imports and the shards (--shards, default data/cbsd432)
#                 are checked
#   2. calibrate  --cal-steps (default 60) steps of release/gpu.yaml measure the steady step rate and the fixed
#                 cost; `python -m release.gpu_plan plan` turns them into run.steps for --train-s (default 480 s)
#                 of training (the schedule needs the steps up front)
#   3. train      python train/run.py --shards SHARDS --config release/gpu.yaml --set run.steps=N (bf16
#                 autocast, the trainer's CUDA default; --set adds overrides), sent SIGTERM 30 s past its budget at
#                 the latest: the trainer then writes last.pt at the step it reached and exits
#   4. collect    into OUTDIR, a few files of at most --max-file-mib (default 16 MiB) each:
#                 model-fp16.pt   best.pt slimmed (EMA weights in fp16, python -m model.slim --fp16; last.pt when
#                                 no validation ran): the candidate release weights
#                 last.pt         the full checkpoint, for an exact --resume, when it is within the size limit; else
#                 last-fp32.pt    last.pt slimmed (fp32 EMA weights, no optimizer state), for a warm start with
#                                 --set model.init=last-fp32.pt. The release config's last.pt is ~47 MB (weights, EMA,
#                                 AdamW moments), so at 16 MiB it is this one: a later run continues with a new schedule.
#                 metrics.jsonl, config.yaml, sample-step_N.png (the last validation grid), train.log (both runs'
#                 output), gpu_release.log (this script's messages), summary.json (python -m release.gpu_plan)
# Exit 0 when a model came back (summary.json says whether training finished or was stopped at its limit); 1 when
# a step failed (the reason is in gpu_release.log and train.log); 2 on bad arguments; 3 without CUDA.
# --rehearse runs on the CPU (batch 2 of 64 px, 1 thread, 1 loader worker, small validation) and, unless given,
# 10 calibration steps and 40 s of training: to try the script before a GPU run.
#
# Third-party imports of `python train/run.py` on the torch-loader path (sys.modules after a real run): torch,
# numpy, PIL, yaml, tqdm, webdataset and its braceexpand; wandb only if present (off here). Where the machine's
# Python lacks webdataset and braceexpand, `.whl/` holds those two (81 kB), filled with:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
#       webdataset==1.0.2 braceexpand==0.1.7
# Environment: PYTHON (default .venv/bin/python if present, else python3); the run folders go to a new folder
# under TMPDIR (default /tmp), printed at the end.
set -uo pipefail

usage() { sed -n "3,4p" "$0" | sed "s/^# *//"; exit 2; }
out="" rehearse=0 total_s=570 train_s="" cal_steps="" shards=data/cbsd432 max_mib=16 extra_sets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rehearse) rehearse=1 ;;
    --total-s) total_s="${2:?--total-s needs seconds}"; shift ;;
    --train-s) train_s="${2:?--train-s needs seconds}"; shift ;;
    --cal-steps) cal_steps="${2:?--cal-steps needs a count}"; shift ;;
    --shards) shards="${2:?--shards needs a folder}"; shift ;;
    --set) extra_sets+=(--set "${2:?--set needs A.B=V}"); shift ;;
    --max-file-mib) max_mib="${2:?--max-file-mib needs a size}"; shift ;;
    -h | --help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) [ -z "$out" ] || usage; out="$1" ;;
  esac
  shift
done
[ -n "$out" ] || usage

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1
. "$repo/release/lib.sh"
py="$(repo_python "$repo")"
config=release/gpu.yaml
post_s=40  # kept free after training for slimming, copying and the summary
max_bytes=$((max_mib * 1024 * 1024))
if [ "$rehearse" = 1 ]; then
  train_s="${train_s:-40}" cal_steps="${cal_steps:-10}"
  device_sets=(--set run.device=cpu --set run.threads=1 --set loader.workers=1 --set loader.batch_size=2
    --set loader.patch_size=64 --set val.crop=64 --set val.variants=1 --set val.samples=2
    --set optim.warmup_steps=5 --set run.log_every=5)
else
  train_s="${train_s:-480}" cal_steps="${cal_steps:-60}"
  device_sets=(--set run.device=cuda)
fi
device_sets+=("${extra_sets[@]}")  # release/gpu.sh: the measured batch
deadline=$((SECONDS + total_s))
main_rc=1 main_wall=0

mkdir -p "$out" || exit 1
out="$(cd "$out" && pwd)"
say() { echo "[gpu_release] $*" | tee -a "$out/gpu_release.log"; }
die() { say "error: $2"; exit "$1"; }
last_line() { tr '\r' '\n' < "$out/train.log" | grep -v '^\s*$' | tail -n 1 | cut -c1-300; }

limit() {  # limit SECONDS COMMAND...: COMMAND under `timeout` (SIGTERM, SIGKILL 20 s later), cut to the deadline
  local seconds=$1 left=$((deadline - SECONDS))
  shift
  [ "$seconds" -gt "$left" ] && seconds=$left
  [ "$seconds" -lt 10 ] && seconds=10
  timeout --kill-after=20 "$seconds" "$@"
}

setup() {  # CUDA, the wheels in .whl/, PYTHONPATH, and the imports and shards the runs need
  command -v timeout >/dev/null || die 1 "the coreutils 'timeout' command is missing"
  if [ "$rehearse" = 0 ] && ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null
  then
    die 3 "CUDA is absent (torch.cuda.is_available() is False, or torch does not import in $py): this script trains \
on a CUDA GPU; --rehearse tries it on the CPU"
  fi
  work="$(mktemp -d "${TMPDIR:-/tmp}/gpu_release.XXXXXX")" || die 1 "cannot make a scratch folder"
  if compgen -G ".whl/*.whl" >/dev/null; then
    say "installing the wheels in .whl/: $(cd .whl && echo *.whl)"
    limit 120 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target \
      "$work/site" .whl/*.whl >> "$out/gpu_release.log" 2>&1 || die 1 "pip could not install .whl/*.whl"
    export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1 WANDB_MODE=disabled TQDM_MININTERVAL=5
  local missing
  missing="$("$py" -c "import importlib.util as u
print(' '.join(m for m in ('torch', 'numpy', 'PIL', 'yaml', 'tqdm', 'webdataset', 'braceexpand') if not u.find_spec(m)))")"
  [ -z "$missing" ] || die 1 "missing Python modules: $missing (put their wheels in .whl/: see this script's header)"
  [ -f "$shards/manifest.json" ] || die 1 "no shards at $shards (pack them with python -m shards.pack, or give --shards)"
}

train() {  # train RUN_DIR STEPS LIMIT_S [--set A=V ...]: one run of the release config, its output to train.log
  local run_dir=$1 steps=$2 limit_s=$3
  shift 3
  echo "=== $(basename "$run_dir"): $steps steps, stopped after ${limit_s} s at the latest ===" >> "$out/train.log"
  limit "$limit_s" "$py" train/run.py --shards "$shards" --config "$config" --out "$run_dir" --set run.steps="$steps" \
    --set log.wandb=off "${device_sets[@]}" "$@" >> "$out/train.log" 2>&1
}

calibrate() {  # sets `budget` (main-run seconds) and `steps` (its run.steps) from a short run of the same config
  local t0=$SECONDS rc wall_s left
  say "calibrating: $cal_steps steps of $config"
  train "$work/calibration" "$cal_steps" 240 --set run.log_every=$((cal_steps >= 12 ? cal_steps / 6 : 2)) \
    --set run.val_every="$cal_steps" --set run.ckpt_every="$cal_steps"
  rc=$?
  wall_s=$((SECONDS - t0))
  [ "$rc" = 0 ] || die 1 "the calibration run failed (rc $rc after ${wall_s} s): $(last_line)"
  left=$((deadline - SECONDS - post_s))
  budget=$((train_s < left ? train_s : left))
  steps="$(limit 60 "$py" -m release.gpu_plan plan "$work/calibration" --wall-s "$wall_s" --budget-s "$budget" \
    --out "$work/calibration.json" 2>> "$out/gpu_release.log")" || die 1 "planning from the calibration failed"
  say "calibration: $(tr -d ' \n' < "$work/calibration.json") -> run.steps=$steps"
  rm -rf "$work/calibration"
}

train_main() {  # sets main_rc and main_wall
  local limit_s=$((budget + 30)) left=$((deadline - SECONDS - post_s)) t0=$SECONDS
  [ "$limit_s" -gt "$left" ] && limit_s=$left
  say "training: $steps steps in about ${budget} s (stopped after ${limit_s} s at the latest)"
  train "$work/main" "$steps" "$limit_s"
  main_rc=$?
  main_wall=$((SECONDS - t0))
  say "training ended with rc $main_rc after ${main_wall} s: $(last_line)"
}

collect() {  # the run's results into OUTDIR: a few files, each within --max-file-mib
  local run="$work/main" src=best.pt grid
  [ -f "$run/best.pt" ] || src=last.pt
  if [ -f "$run/$src" ]; then
    limit 60 "$py" -m model.slim "$run/$src" "$out/model-fp16.pt" --fp16 >> "$out/gpu_release.log" 2>&1 \
      || say "slimming $src failed"
  fi
  if [ -f "$run/last.pt" ] && [ "$(stat -c %s "$run/last.pt")" -le "$max_bytes" ]; then
    cp "$run/last.pt" "$out/last.pt"
  elif [ -f "$run/last.pt" ]; then
    limit 60 "$py" -m model.slim "$run/last.pt" "$out/last-fp32.pt" >> "$out/gpu_release.log" 2>&1 \
      || say "slimming last.pt failed"
  fi
  for name in metrics.jsonl config.yaml; do
    [ -f "$run/$name" ] && cp "$run/$name" "$out/$name"
  done
  grid="$(ls "$run"/samples/step_*.png 2>/dev/null | tail -n 1)"
  [ -n "$grid" ] && cp "$grid" "$out/sample-$(basename "$grid")"
  limit 60 "$py" -m release.gpu_plan summary "$run" --calibration "$work/calibration.json" --wall-s "$main_wall" \
    --rc "$main_rc" --out "$out/summary.json" 2>> "$out/gpu_release.log" | tee -a "$out/gpu_release.log" \
    || say "the summary failed"
  local file
  for file in "$out"/*; do  # a log over the limit keeps its end; anything else over it is named
    [ "$(stat -c %s "$file")" -le "$max_bytes" ] && continue
    case "$file" in
      *.log) tail -c $((max_bytes - 65536)) "$file" > "$file.tmp" && mv "$file.tmp" "$file" ;;
      *) say "$(basename "$file") is over the size limit of ${max_mib} MiB" ;;
    esac
  done
}

start=$SECONDS
setup
calibrate
train_main
collect
if [ -f "$out/model-fp16.pt" ] && [ -f "$out/summary.json" ] && [[ "$main_rc" == 0 || "$main_rc" == 124 ]]; then
  say "done in $((SECONDS - start)) s: $(cd "$out" && echo *); the run folder is $work/main"
  exit 0
fi
say "error: no model came back (training rc $main_rc); see train.log; the run folder is $work/main"
exit 1
