"""Prediction throughput of an exported ONNX model in onnxruntime vs. eager PyTorch, on CPU, in one process.

Usage: python benchmarks/export_onnx.py [--model deepsets++] [--depth 50] [--dim 128] [--batch 64]
       [--set-size 1000] [--repeats 7] [--threads T]

The model (random weights, the paper's preset) runs on ``--batch`` sets of ``--set-size`` cells x 2 features in
three engines, interleaved (one forward of each per round, so that a change in machine load hits all alike):

- ``pytorch-cpu-backend``: eager PyTorch with the default backend (the C kernels of ``deepsets.backends.cpu``);
- ``pytorch-reference``: eager PyTorch, the reference layers of ``deepsets.nn`` (what is exported);
- ``onnxruntime``: the file ``deepsets.export.export_model`` writes, in an onnxruntime CPU session.

Prints one JSON line per engine (median seconds per forward and cells per second over the rounds, after one
warm-up forward each) and a summary line with the ratios to onnxruntime and the largest output difference.
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import deepsets
from deepsets.backends import reference
from deepsets.export import export_model, load_exported

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="deepsets++")
parser.add_argument("--depth", type=int, default=50)
parser.add_argument("--dim", type=int, default=128)
parser.add_argument("--batch", type=int, default=64)
parser.add_argument("--set-size", type=int, default=1000)
parser.add_argument("--repeats", type=int, default=7)
parser.add_argument("--threads", type=int, default=torch.get_num_threads())
args = parser.parse_args()

torch.set_num_threads(args.threads)
torch.manual_seed(0)
model = deepsets.create_model(args.model, 2, 1, depth=args.depth, dim=args.dim).eval()
ref_model = reference(model).eval()
x = torch.randn(args.batch, args.set_size, 2)
mask = torch.ones(args.batch, args.set_size, dtype=torch.bool)

with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    path = export_model(model, Path(tmp) / "model.onnx")
    export_s = time.perf_counter() - t0
    import onnxruntime as ort

    run_onnx = load_exported(path, threads=args.threads)  # as many intra-op threads as PyTorch's

    def eager(m):
        def run(x, mask):
            with torch.inference_mode():
                return m(x, mask)
        return run

    engines = {"pytorch-cpu-backend": eager(model), "pytorch-reference": eager(ref_model), "onnxruntime": run_onnx}
    outputs = {name: run(x, mask) for name, run in engines.items()}  # warm-up
    times = {name: [] for name in engines}
    for _ in range(args.repeats):
        for name, run in engines.items():
            t = time.perf_counter()
            run(x, mask)
            times[name].append(time.perf_counter() - t)

cells = args.batch * args.set_size
common = {"model": args.model, "depth": args.depth, "dim": args.dim, "sets": args.batch, "set_size": args.set_size,
          "threads": args.threads, "repeats": args.repeats}
median = {name: statistics.median(ts) for name, ts in times.items()}
for name, ts in times.items():
    print(json.dumps({"engine": name, **common, "median_s": round(median[name], 4),
                      "min_s": round(min(ts), 4), "max_s": round(max(ts), 4),
                      "cells_per_s": round(cells / median[name])}))
base = outputs["pytorch-cpu-backend"]
print(json.dumps({"summary": True, **common, "export_s": round(export_s, 1),
                  "onnxruntime_vs_cpu_backend": round(median["pytorch-cpu-backend"] / median["onnxruntime"], 3),
                  "onnxruntime_vs_reference": round(median["pytorch-reference"] / median["onnxruntime"], 3),
                  "max_abs_diff_onnx": float((outputs["onnxruntime"] - base).abs().max()),
                  "max_abs_diff_reference": float((outputs["pytorch-reference"] - base).abs().max()),
                  "max_abs_output": float(base.abs().max()),
                  "onnxruntime": ort.__version__, "torch": torch.__version__}))
