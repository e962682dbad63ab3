#!/usr/bin/env bash
# CPU benchmarks behind benchmarks/RESULTS.md (paper settings, batch 8, sets of 1000 elements x 2 features, fp32).
# Usage: [RUNS=3] bash benchmarks/cpu.sh [OUT.jsonl]   (about 10 minutes per run on 2 cores; keep the machine
# otherwise idle). Each line of OUT is one `deepsets bench --json` object plus the environment it ran under
# ("env") and the run it belongs to ("run"); `python benchmarks/summarize.py OUT` gives medians and ranges.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-benchmarks/cpu-results.jsonl}
REPEATS=${REPEATS:-15}
RUNS=${RUNS:-1}
: > "$OUT"
run() {  # run ENV_ASSIGNMENT... -- BENCH_ARGS...
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" "$PY" -m deepsets.cli bench --json --repeats "$REPEATS" "$@" | tail -n 1 |
    "$PY" -c 'import json,sys; r=json.loads(sys.stdin.read()); r["env"]=sys.argv[1]; r["run"]=int(sys.argv[2]); print(json.dumps(r))' "${envs[*]}" "$RUN" |
    tee -a "$OUT"
}
for RUN in $(seq 1 "$RUNS"); do
  # Defaults: fused kernels on (set norm, Deep Sets++ blocks), allocator tuned (what `deepsets train` gets).
  run X=1 -- --model deepsets++ --depth 50 --batch 8 --set-size 1000
  run X=1 -- --model deepsets++ --depth 50 --batch 8 --set-size 1000 --masked
  run X=1 -- --model settransformer++ --depth 16 --batch 8 --set-size 1000
  run X=1 -- --model settransformer++ --depth 16 --batch 8 --set-size 1000 --masked
  run X=1 -- --model deepsets --depth 50 --batch 8 --set-size 1000
  run X=1 -- --model settransformer --depth 16 --batch 8 --set-size 1000
  # Ablations: what each of the process-level choices contributes.
  run DEEPSETS_KERNELS=norm -- --model deepsets++ --depth 50 --batch 8 --set-size 1000
  run DEEPSETS_KERNELS=0 -- --model deepsets++ --depth 50 --batch 8 --set-size 1000
  run DEEPSETS_TUNE_MALLOC=0 -- --model deepsets++ --depth 50 --batch 8 --set-size 1000
  run DEEPSETS_KERNELS=0 DEEPSETS_TUNE_MALLOC=0 -- --model deepsets++ --depth 50 --batch 8 --set-size 1000
  run DEEPSETS_KERNELS=0 -- --model settransformer++ --depth 16 --batch 8 --set-size 1000
done
