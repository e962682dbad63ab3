#!/usr/bin/env bash
# Tables 1 and 2 at the cpu budget, 3 seeds, two single-threaded runs at a time. Finished runs are kept in
# benchmarks/reproduce/TABLE-cpu/runs/CELL-sSEED/results.json, so running this again continues where it stopped.
# Order: the columns where the findings show most first (Normal Var, then MNIST Var, then the rest).
set -euo pipefail
cd "$(dirname "$0")/.."
DS="${DEEPSETS:-.venv/bin/deepsets}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
run() { "$DS" reproduce "$1" --budget cpu --executor local --parallel "${PARALLEL:-2}" --out "benchmarks/reproduce/$1-cpu" --tasks "${@:2}"; }
run table1 normal-var
run table2 normal-var mnist-var
run table1 mnist-var
run table2 hematocrit point-cloud
# the whole tables from the finished runs (nothing is trained again)
run table1 normal-var mnist-var
run table2 hematocrit point-cloud mnist-var normal-var
