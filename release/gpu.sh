#!/usr/bin/env bash
# Train and measure on a CUDA machine within a time budget:
#   bash release/gpu.sh OUTDIR [--budget-s S] [--check-s S] [--rehearse]
#
#   1. check    release/gpu_check.sh within --check-s (default 200 s): the CUDA tests, the device-parametrised
#               tests, `python -m bench degradation --ops` (compiled vs float64 codec against Pillow),
#               `python -m bench step` (the release step per batch size: img/s, ops per step, kernel-busy share, the
#               chosen batch), the degradation and training benchmarks; scaling and infer are left out (--skip)
#   2. release  release/gpu_release.sh with the rest of --budget-s (default 560 s, all parts together) and the
#               batch the step benchmark chose: calibrate, train, slim, collect
#   3. pack     OUTDIR gets few files: the release weights (model-fp16.pt, last.pt or last-fp32.pt) and
#               reports.tar.gz (every log, JSON, PNG and the metrics of both parts), plus gpu.log (these messages)
# --rehearse runs both parts on the CPU with small budgets (--budget-s default 300 s), to try it before a GPU run.
# Exit: gpu_release.sh's (0 when a model came back), or 3 without CUDA (the check's report is still packed).
set -uo pipefail

usage() { echo "usage: bash release/gpu.sh OUTDIR [--budget-s S] [--check-s S] [--rehearse]" >&2; exit 2; }
out="" rehearse=() total_s="" check_s=200
while [ $# -gt 0 ]; do
  case "$1" in
    --rehearse) rehearse=(--rehearse) ;;
    --budget-s) total_s="${2:?--budget-s needs seconds}"; shift ;;
    --check-s) check_s="${2:?--check-s needs seconds}"; shift ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) out="$1" ;;
  esac
  shift
done
[ -n "$out" ] || usage
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$out" && out="$(cd "$out" && pwd)" || exit 1
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu.XXXXXX")"
. "$repo/release/lib.sh"
py="$(repo_python "$repo")"
[ -n "$total_s" ] || total_s=$([ ${#rehearse[@]} = 1 ] && echo 300 || echo 560)
log() { echo "[gpu] $*" | tee -a "$out/gpu.log"; }

log "check: $(date -u +%H:%M:%S), budget ${check_s}s of ${total_s}s"
batches=()
if [ ${#rehearse[@]} = 1 ]; then batches=(--batches 2,4); fi
bash "$repo/release/gpu_check.sh" "$work/check" --budget-s "$check_s" --skip scaling,infer "${batches[@]}" \
  "${rehearse[@]}" > "$work/check.log" 2>&1
log "check done (rc $?) after ${SECONDS}s: $(tr '\n' ' ' < "$work/check/parts.tsv" 2>/dev/null | cut -c1-400)"

batch="$("$py" -c "import json, sys; print(json.load(open(sys.argv[1]))['chosen_batch'])" "$work/check/step.json" 2>/dev/null)"
sets=()
if [ -n "$batch" ] && [ ${#rehearse[@]} = 0 ]; then sets=(--set "loader.batch_size=$batch"); fi
left=$((total_s - SECONDS))
log "release: ${left}s left, ${sets[*]:-the batch of the config}"
rc=3
if [ "$left" -gt 120 ]; then
  bash "$repo/release/gpu_release.sh" "$work/release" --total-s $((left - 20)) --train-s $((left - 130)) \
    "${sets[@]}" "${rehearse[@]}" > "$work/release.log" 2>&1
  rc=$?
fi
log "release done (rc $rc) after ${SECONDS}s"
for weights in "$work"/release/*.pt; do [ -f "$weights" ] && mv "$weights" "$out/"; done
tar -czf "$out/reports.tar.gz" -C "$work" . && log "packed: $(ls "$out" | tr '\n' ' ')"
exit "$rc"
