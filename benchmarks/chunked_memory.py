"""Peak memory and time of exact chunked inference on one set of 10^6 elements x 2 features.

Usage: python benchmarks/chunked_memory.py MODEL DEPTH [N] [CHUNK]
Prints one JSON line: the model, the set size, seconds, and the process's peak resident memory (MB).
"""
import json
import resource
import sys
import time

import torch

import deepsets
from deepsets.models import chunked_forward

name, depth = sys.argv[1], int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000_000
chunk = int(sys.argv[4]) if len(sys.argv) > 4 else 65_536
torch.manual_seed(0)
model = deepsets.create_model(name, 2, 1, depth=depth).eval()
x = torch.randn(1, n, 2) * torch.tensor([15.0, 3.0]) + torch.tensor([90.0, 30.0])  # RBC-like volume, hemoglobin
t0 = time.time()
y = chunked_forward(model, x, chunk_size=chunk)
seconds = time.time() - t0
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
print(json.dumps({"model": name, "depth": depth, "elements": n, "chunk": chunk, "seconds": round(seconds, 1),
                  "peak_rss_mb": round(peak_mb, 1), "output": y.flatten().tolist()}))
