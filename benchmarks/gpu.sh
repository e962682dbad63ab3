#!/usr/bin/env bash
# GPU checks and benchmarks (about 5 minutes on one H100 by the timings of 2026-11-28; --full: about 9), in one
# process (benchmarks/gpu.py):
# CUDA-vs-CPU float64 correctness of every model, exact chunked inference on 10^6 elements, and training-step
# speed of the paper's deep models in fp32, bf16-mixed (full and padded sets) and bf16-mixed + torch.compile.
# Run from the repository root with the package installed (`make install`), or with PYTHONPATH=src:
#   bash benchmarks/gpu.sh            # writes benchmarks/gpu-results.jsonl (one JSON object per line)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
RESULTS=${RESULTS:-benchmarks/gpu-results.jsonl}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu.py --out "$RESULTS" "$@"
