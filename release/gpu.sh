#!/usr/bin/env bash
# The one command for a lent GPU machine, under 10 minutes (one device call): `bash release/gpu.sh OUTDIR [--rehearse]`.
#
#   1. check    release/gpu_check.sh in GPU_CHECK_BUDGET_S (default 200 s): the CUDA tests, the device-parametrised
#               tests, bench.degrade_step (compiled vs float64 codec against Pillow), bench.step (the release step
#               per batch size: img/s, ops per step, kernel-busy share, the chosen batch), the degradation and
#               training benchmarks of bench.suite; the scaling and infer parts are left out (GPU_CHECK_SKIP)
#   2. release  release/gpu_release.sh with the rest of GPU_TOTAL_S (default 560 s: a device call runs 600 s at
#               most) and the batch bench.step chose: calibrate, train, slim, collect
#   3. pack     what comes back must be few files (the device tool brings back 8 of <= 16 MiB): OUTDIR gets the
#               release weights (model-fp16.pt, last.pt or last-fp32.pt) and reports.tar.gz (every log, JSON, PNG
#               and the metrics of both parts), plus gpu.log (this script's messages)
# --rehearse runs both parts on the CPU with small budgets (GPU_TOTAL_S default 300 s), to try it before device time.
# Exit: gpu_release.sh's (0 when a model came back), or 3 without CUDA (the check's report still comes back).
set -uo pipefail

out="" rehearse=()
for arg in "$@"; do
  case "$arg" in
    --rehearse) rehearse=(--rehearse) ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) out="$arg" ;;
  esac
done
[ -n "$out" ] || { echo "usage: bash release/gpu.sh OUTDIR [--rehearse]" >&2; exit 2; }
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$out" && out="$(cd "$out" && pwd)" || exit 1
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu.XXXXXX")"
. "$repo/release/lib.sh"
py="$(repo_python "$repo")"
total_s="${GPU_TOTAL_S:-560}"  # a device call may run 600 s at most
[ ${#rehearse[@]} = 1 ] && total_s="${GPU_TOTAL_S:-300}"
log() { echo "[gpu] $*" | tee -a "$out/gpu.log"; }

log "check: $(date -u +%H:%M:%S), budget ${GPU_CHECK_BUDGET_S:-200}s"
if [ ${#rehearse[@]} = 1 ]; then export GPU_CHECK_BATCHES="${GPU_CHECK_BATCHES:-2,4}"; fi
GPU_CHECK_BUDGET_S="${GPU_CHECK_BUDGET_S:-200}" GPU_CHECK_SKIP="${GPU_CHECK_SKIP:-scaling,infer}" \
  bash "$repo/release/gpu_check.sh" "$work/check" "${rehearse[@]}" > "$work/check.log" 2>&1
log "check done (rc $?) after ${SECONDS}s: $(tr '\n' ' ' < "$work/check/parts.tsv" 2>/dev/null | cut -c1-400)"

batch="$("$py" -c "import json, sys; print(json.load(open(sys.argv[1]))['chosen_batch'])" "$work/check/step.json" 2>/dev/null)"
sets=""
if [ -n "$batch" ] && [ ${#rehearse[@]} = 0 ]; then sets="loader.batch_size=$batch"; fi
left=$((total_s - SECONDS))
log "release: ${left}s left, ${sets:-the batch of the config}"
rc=3
if [ "$left" -gt 120 ]; then
  GPU_RELEASE_TOTAL_S=$((left - 20)) GPU_RELEASE_TRAIN_S=$((left - 130)) GPU_RELEASE_SETS="$sets" \
    bash "$repo/release/gpu_release.sh" "$work/release" "${rehearse[@]}" > "$work/release.log" 2>&1
  rc=$?
fi
log "release done (rc $rc) after ${SECONDS}s"
for weights in "$work"/release/*.pt; do [ -f "$weights" ] && mv "$weights" "$out/"; done
tar -czf "$out/reports.tar.gz" -C "$work" . && log "packed: $(ls "$out" | tr '\n' ' ')"
exit "$rc"
