#!/usr/bin/env bash
# Train the release model on the lent GPU and bring it back: `bash release/gpu_release.sh OUTDIR [--rehearse]`.
#
# Everything runs inside GPU_RELEASE_TOTAL_S (default 570 s from the start), each step under its own `timeout`, so
# the script always ends and leaves in OUTDIR what it has (docs/gpu_release.md: the device call that runs it):
#   1. setup      CUDA is checked first (without it: exit 3, nothing run); carried wheels `.whl/*.whl` installed with
#                 pip --no-index into a scratch folder on PYTHONPATH (no registry there), the repository on
#                 PYTHONPATH, W&B off; the imports and the shards are checked
#   2. calibrate  GPU_RELEASE_CAL_STEPS (default 60) steps of release/gpu.yaml measure the steady step rate and
#                 the fixed cost; `python -m release.gpu_plan plan` turns them into run.steps for
#                 GPU_RELEASE_TRAIN_S (default 480 s) of training (the cosine schedule needs the steps up front)
#   3. train      python train/run.py --shards SHARDS --config release/gpu.yaml --set run.steps=N (bf16
#                 autocast, the trainer's CUDA default), sent SIGTERM 30 s past its budget at the latest: the trainer
#                 then writes last.pt at the step it reached and exits
#   4. collect    into OUTDIR, at most 8 files of <= 16 MiB (what the device tool brings back):
#                 model-fp16.pt   best.pt slimmed (EMA weights in fp16, python -m model.slim --fp16; last.pt when
#                                 no validation ran): the candidate release weights
#                 last.pt         the full checkpoint, for an exact --resume, when it is <= 16 MiB; else
#                 last-fp32.pt    last.pt slimmed (fp32 EMA weights, no optimizer state), for a warm start with
#                                 --set model.init=last-fp32.pt. The release config's last.pt is ~47 MB (weights, EMA,
#                                 AdamW moments), so it is this one: a later session continues with a new schedule.
#                 metrics.jsonl, config.yaml, sample-step_N.png (the last validation grid), train.log (both runs'
#                 output), gpu_release.log (this script's messages), summary.json (python -m release.gpu_plan)
# Exit 0 when a model came back (summary.json says whether training finished or was stopped at its limit); 1 when
# a step failed (the reason is in gpu_release.log and train.log); 2 on bad arguments; 3 without CUDA.
# --rehearse runs on the CPU (batch 2 of 64 px, 1 thread, 1 loader worker, small validation) and, unless set,
# 10 calibration steps and 40 s of training: to try the script here before spending device time.
#
# Third-party imports of `python train/run.py` on the torch-loader path (sys.modules after a real run): torch,
# numpy, PIL, yaml, tqdm, webdataset and its braceexpand; wandb only if present (off here). The H200 image has all
# but webdataset and braceexpand, so `.whl/` holds those two (81 kB), filled with:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
#       webdataset==1.0.2 braceexpand==0.1.7
# Environment: GPU_RELEASE_SETS (extra trainer overrides, space-separated A.B=V), PYTHON (default .venv/bin/python if present, else python3), GPU_RELEASE_SHARDS (default
# data/cbsd432), GPU_RELEASE_TRAIN_S, GPU_RELEASE_CAL_STEPS, GPU_RELEASE_TOTAL_S; the run folders go to a new
# folder under TMPDIR (default /tmp), printed at the end.
set -uo pipefail

usage() { sed -n '2p' "$0" | sed 's/^# //'; exit 2; }
out="" rehearse=0
for arg in "$@"; do
  case "$arg" in
    --rehearse) rehearse=1 ;;
    -h | --help) usage ;;
    -*) echo "unknown option $arg" >&2; usage ;;
    *) [ -z "$out" ] || usage; out="$arg" ;;
  esac
done
[ -n "$out" ] || usage

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1
. "$repo/release/lib.sh"
py="$(repo_python "$repo")"
config=release/gpu.yaml
shards="${GPU_RELEASE_SHARDS:-data/cbsd432}"
total_s="${GPU_RELEASE_TOTAL_S:-570}"
post_s=40  # kept free after training for slimming, copying and the summary
max_bytes=$((16 * 1024 * 1024))
if [ "$rehearse" = 1 ]; then
  train_s="${GPU_RELEASE_TRAIN_S:-40}" cal_steps="${GPU_RELEASE_CAL_STEPS:-10}"
  device_sets=(--set run.device=cpu --set run.threads=1 --set loader.workers=1 --set loader.batch_size=2
    --set loader.patch_size=64 --set val.crop=64 --set val.variants=1 --set val.samples=2
    --set optim.warmup_steps=5 --set run.log_every=5)
else
  train_s="${GPU_RELEASE_TRAIN_S:-480}" cal_steps="${GPU_RELEASE_CAL_STEPS:-60}"
  device_sets=(--set run.device=cuda)
fi
if [ -n "${GPU_RELEASE_SETS:-}" ]; then  # extra A.B=V overrides, space-separated (release/gpu.sh: the measured batch)
  for item in $GPU_RELEASE_SETS; do device_sets+=(--set "$item"); done
fi
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

setup() {  # CUDA, the carried wheels, PYTHONPATH, and the imports and shards the runs need
  command -v timeout >/dev/null || die 1 "the coreutils 'timeout' command is missing"
  if [ "$rehearse" = 0 ] && ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null
  then
    die 3 "CUDA is absent (torch.cuda.is_available() is False, or torch does not import in $py): this script trains \
on the lent GPU; --rehearse tries it on the CPU"
  fi
  work="$(mktemp -d "${TMPDIR:-/tmp}/gpu_release.XXXXXX")" || die 1 "cannot make a scratch folder"
  if compgen -G ".whl/*.whl" >/dev/null; then
    say "installing the carried wheels: $(cd .whl && echo *.whl)"
    limit 120 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target \
      "$work/site" .whl/*.whl >> "$out/gpu_release.log" 2>&1 || die 1 "pip could not install .whl/*.whl"
    export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1 WANDB_MODE=disabled TQDM_MININTERVAL=5
  local missing
  missing="$("$py" -c "import importlib.util as u
print(' '.join(m for m in ('torch', 'numpy', 'PIL', 'yaml', 'tqdm', 'webdataset', 'braceexpand') if not u.find_spec(m)))")"
  [ -z "$missing" ] || die 1 "missing Python modules: $missing (carry their wheels in .whl/: see this script's header)"
  [ -f "$shards/manifest.json" ] || die 1 "no shards at $shards (carry data/cbsd432, or set GPU_RELEASE_SHARDS)"
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

collect() {  # the run's results into OUTDIR: at most 8 files, each <= 16 MiB
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
  for file in "$out"/*; do  # a log over the limit keeps its end; anything else over it would not come back
    [ "$(stat -c %s "$file")" -le "$max_bytes" ] && continue
    case "$file" in
      *.log) tail -c $((max_bytes - 65536)) "$file" > "$file.tmp" && mv "$file.tmp" "$file" ;;
      *) say "$(basename "$file") is over 16 MiB: the device tool will not bring it back" ;;
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
