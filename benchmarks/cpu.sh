#!/usr/bin/env bash
# CPU benchmarks behind benchmarks/RESULTS.md (paper settings, batch 8, sets of 1000 elements x 2 features, fp32).
# Usage: bash benchmarks/cpu.sh [OUT.jsonl]      (about 5 minutes on 2 cores; keep the machine otherwise idle)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-benchmarks/cpu-results.jsonl}
: > "$OUT"
run() { "$PY" -m deepsets.cli bench --json --repeats 11 "$@" | tail -n 1 | tee -a "$OUT"; }
run --model deepsets++ --depth 50 --batch 8 --set-size 1000
run --model deepsets++ --depth 50 --batch 8 --set-size 1000 --masked
run --model settransformer++ --depth 16 --batch 8 --set-size 1000
run --model settransformer++ --depth 16 --batch 8 --set-size 1000 --masked
run --model deepsets --depth 50 --batch 8 --set-size 1000
run --model settransformer --depth 16 --batch 8 --set-size 1000
