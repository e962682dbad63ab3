#!/usr/bin/env bash
# GPU benchmarks (about 5 minutes on one H100/H200): training-step speed of the paper's deep models in fp32,
# bf16-mixed and bf16-mixed + torch.compile, full and padded sets, plus exact chunked inference on 10^6 elements.
# Run from the repository root after `make install` (or with the package installed):  bash benchmarks/gpu.sh
# Writes benchmarks/gpu-results.jsonl (one JSON object per line) and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${OUT:-benchmarks/gpu-results.jsonl}
: > "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT.info"
bench() { timeout 240 "$PY" -m deepsets.cli bench --json --device cuda "$@" | tail -n 1 | tee -a "$OUT"; }
for model in "deepsets++ --depth 50" "settransformer++ --depth 16"; do
  for batch in 8 64; do
    # shellcheck disable=SC2086
    bench --model $model --batch $batch --set-size 1000 --precision 32
    # shellcheck disable=SC2086
    bench --model $model --batch $batch --set-size 1000 --precision bf16-mixed
    # shellcheck disable=SC2086
    bench --model $model --batch $batch --set-size 1000 --precision bf16-mixed --compile
    # shellcheck disable=SC2086
    bench --model $model --batch $batch --set-size 1000 --precision bf16-mixed --masked
  done
done
"$PY" - <<'PY' | tee -a "$OUT"
import json, time, torch, deepsets
from deepsets.models import chunked_forward
for name, depth in (("deepsets++", 50), ("settransformer++", 16)):
    model = deepsets.create_model(name, 2, 1, depth=depth).cuda().eval()
    x = torch.randn(1, 1_000_000, 2, device="cuda")
    torch.cuda.reset_peak_memory_stats(); torch.cuda.synchronize(); t0 = time.time()
    y = chunked_forward(model, x, chunk_size=262_144); torch.cuda.synchronize()
    print(json.dumps({"chunked_inference": name, "depth": depth, "elements": 1_000_000,
                      "seconds": round(time.time() - t0, 2),
                      "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}))
PY
