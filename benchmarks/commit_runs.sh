#!/usr/bin/env bash
# Stage the finished runs of benchmarks/reproduce (those with a results.json: config, metrics, results; never
# checkpoints) and the tables written so far, so a reproduction continues from them in a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."
for done in benchmarks/reproduce/*/runs/*/results.json; do
    [ -e "$done" ] || continue
    d=$(dirname "$done")
    git add "$d/results.json" "$d/config.yaml" "$d/metrics.csv"
done
git add benchmarks/reproduce/*/results.md benchmarks/reproduce/*/results.json 2>/dev/null || true
git add -f benchmarks/reproduce/*/depth.png 2>/dev/null || true
