#!/usr/bin/env bash
# Copy a finished `traitloop reproduce` output's small files into the docs, so that its table can be checked
# without rerunning it:
#
#   scripts/publish_reproduction.sh reproduce/quick docs/reproduction/quick
#
# The tier's reproduction.md, reproduction.json, report.md and figures/*.png; per grid sweep.yaml and status.json,
# and per run config.yaml, manifest.json, scores.csv and each
# cycle's (and the base model's) eval.jsonl + metrics.json: every scored answer, which is what the per-run and
# replicated verdicts are computed from (`traitloop report DEST/<grid>` gives the same verdicts). Not copied:
# adapters, training data, sampled answers, the cycle0-cache, logs, report.html (megabytes of embedded figures).
set -euo pipefail
if [ $# -ne 2 ] || [ ! -f "$1/reproduction.json" ]; then
    echo "usage: $0 REPRODUCE_OUT DEST   (REPRODUCE_OUT holds reproduction.json: run traitloop reproduce first)" >&2
    exit 2
fi
src=$1
dest=$2
mkdir -p "$dest"
cp "$src/reproduction.md" "$src/reproduction.json" "$src/report.md" "$dest/"
rm -rf "$dest/figures"
mkdir -p "$dest/figures"
cp "$src"/figures/*.png "$dest/figures/"
for grid in "$src"/*/; do
    grid=${grid%/}
    [ -f "$grid/sweep.yaml" ] || continue
    name=$(basename "$grid")
    rm -rf "${dest:?}/$name"
    mkdir -p "$dest/$name"
    for f in sweep.yaml status.json; do
        [ -f "$grid/$f" ] && cp "$grid/$f" "$dest/$name/"
    done
    (
        cd "$grid"
        find runs -path runs/cycle0-cache -prune -o -type f \
            \( -name config.yaml -o -name manifest.json -o -name scores.csv -o -name eval.jsonl -o -name metrics.json \) -print
    ) | while read -r f; do
        mkdir -p "$dest/$name/$(dirname "$f")"
        cp -p "$grid/$f" "$dest/$name/$f"
    done
done
du -sh "$dest"
