#!/usr/bin/env bash
# Fresh machine -> the main job on the embedded default data set (no downloads, no ../shared):
# dead-leaves shards, a degradation preview, a few minutes of training on the CPU, then evaluation.
#   SHARDS=DIR (default data/synth)  COUNT=N images (default 240)  STEPS=N (default 600)  OUT=DIR (default out/main)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
shards="${SHARDS:-data/synth}"
out="${OUT:-out/main}"
py=.venv/bin/python
[ -f "$shards/manifest.json" ] || $py -m shards.synth "$shards" --count "${COUNT:-240}"
$py -m shards.verify "$shards"
$py -m pipeline.preview --shards "$shards" --out "$out/preview.png"
$py train/run.py --shards "$shards" --out "$out/run" --resume auto --set run.steps="${STEPS:-600}" \
  --set run.val_every=200 --set run.ckpt_every=200 --set run.sanity_steps=400 --set optim.warmup_steps=50
[ -d "$out/test_images" ] || $py -m shards.synth "$out/test_images" --count 8 --seed 12345 --png-only
$py -m evaluate --model "$out/run/best.pt" --data "$out/test_images" --out "$out/eval" --quiet
grep "^|" "$out/eval/results.md"
echo
echo "preview: $out/preview.png   run: $out/run (metrics.jsonl, samples/, best.pt)   evaluation: $out/eval"
