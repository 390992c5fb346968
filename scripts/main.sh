#!/usr/bin/env bash
# Fresh machine -> the main job on the embedded default data set (no downloads, no ../shared).
#   SHARDS=DIR (default data/synth)   COUNT=N synthetic images (default 240)   OUT=DIR (default out)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
shards="${SHARDS:-data/synth}"
out="${OUT:-out}"
py=.venv/bin/python
[ -f "$shards/manifest.json" ] || $py -m shards.synth "$shards" --count "${COUNT:-240}"
$py -m shards.verify "$shards"
$py -m pipeline.preview --shards "$shards" --out "$out/preview.png"
echo "shards: $shards   degradation preview: $out/preview.png"
