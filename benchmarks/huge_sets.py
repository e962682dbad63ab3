"""Exact inference on one huge set vs one forward pass at the matrix-product rate (issue #17).

Usage: python benchmarks/huge_sets.py [--sizes 100000,1000000] [--models deepsets++:50,settransformer++:16]
                                      [--path fast|generic|both] [--folder-files 20 --folder-events 100000]

Each case runs in its own process (random weights from ``create_model``, dim 128, in_dim 2) and prints one JSON
line: wall seconds of ``chunked_forward``, the time of the model's ``[n, H] x [H, H]``-equivalent products at the
rate of ``torch.mm`` measured in the same process (before and after the run; the faster of the two), their
ratio, and the process's peak resident memory during the run (VmHWM, reset after the first matmul timing, read right after the
run).
``--folder-files K`` also scores a folder of K FCS files of ``--folder-events`` events each with
``predict_sets`` and reports cells per second next to the single-set rate.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

H = 128


def products(name: str, depth: int, heads_m: int = 32) -> float:
    """The model's [n, H] x [H, H]-equivalent products per element row (the forward's compute)."""
    if name.startswith("deepsets"):
        return 2 * (depth // 2) + 1  # two per block, the output layer
    # per ISAB: kv (2), q (1), ff (1), attention to the inducing points (2 m / H); the PMA's kv (2)
    return depth * (4 + 2 * heads_m / H) + 2


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset VmHWM to the current resident size (Linux: ``5`` to ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def mm_seconds(n: int) -> float:
    """torch.mm on [rows, H] x [H, H] (rows = min(n, 10^6), scaled to n), best of 2."""
    import torch

    rows = min(n, 1_000_000)
    a, w = torch.randn(rows, H), torch.randn(H, H)
    out = torch.empty(rows, H)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        torch.mm(a, w, out=out)
        best = min(best, time.perf_counter() - t0)
    return best * n / rows


def case(name: str, depth: int, n: int, path: str) -> dict:
    import torch

    import deepsets
    from deepsets.models import chunked_forward

    torch.manual_seed(0)
    model = deepsets.create_model(name, 2, 1, depth=depth, dim=H).eval()
    x = torch.randn(1, n, 2) * torch.tensor([15.0, 3.0]) + torch.tensor([90.0, 30.0])
    chunked_forward(model, x[:, :2000], path=path)  # kernels built, first-call costs paid
    mm_before = mm_seconds(n)
    reset_peak()  # the peak of the run itself, not of the matmul timing's buffers
    t0 = time.perf_counter()
    y = chunked_forward(model, x, path=path)
    wall = time.perf_counter() - t0
    peak = vm_hwm_mb()
    mm = min(mm_before, mm_seconds(n))
    p = products(name, depth)
    return {"model": name, "depth": depth, "elements": n, "path": path, "wall_s": round(wall, 2),
            "mm_s": round(mm, 4), "products": p, "matmul_rate_forward_s": round(p * mm, 2),
            "ratio": round(wall / (p * mm), 3), "peak_rss_mb": round(peak, 1),
            "activation_mb": round(n * H * 4 / 2**20, 1), "output": y.flatten().tolist()}


def folder(name: str, depth: int, files: int, events: int) -> dict:
    import flowio
    import numpy as np
    import torch

    import deepsets
    from deepsets.models import chunked_forward
    from deepsets.inference import predict_sets
    from deepsets.train.predict import open_input

    torch.manual_seed(0)
    model = deepsets.create_model(name, 2, 1, depth=depth, dim=H).eval()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(files):
            ev = np.column_stack([rng.normal(90, 15, events), rng.normal(30, 3, events)]).astype(np.float32)
            with open(Path(tmp) / f"sample{i:03d}.fcs", "wb") as fh:
                flowio.create_fcs(fh, ev.ravel().tolist(), ["RBC_Volume", "RBC_HC"])
        ds = open_input(Path(tmp), channels=["RBC_Volume", "RBC_HC"])
        small = torch.as_tensor(np.asarray(ds.get_set(0, subsample=False))[:2000]).unsqueeze(0)
        model(small), chunked_forward(model, small)  # kernels built, first-call costs paid (as in case())
        t0 = time.perf_counter()
        outs = predict_sets(model, ds)
        wall = time.perf_counter() - t0
    return {"model": name, "depth": depth, "folder_files": files, "events_per_file": events, "wall_s": round(wall, 2),
            "cells_per_s": round(files * events / wall), "sets": len(outs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--models", default="deepsets++:50,settransformer++:16")
    ap.add_argument("--path", default="both", choices=["fast", "generic", "auto", "both"])
    ap.add_argument("--generic-max", type=int, default=1_000_000, help="largest size run on the generic path")
    ap.add_argument("--folder-files", type=int, default=0)
    ap.add_argument("--folder-events", type=int, default=100_000)
    ap.add_argument("--case", nargs=4, metavar=("MODEL", "DEPTH", "N", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--folder", nargs=4, metavar=("MODEL", "DEPTH", "FILES", "EVENTS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        print(json.dumps(case(a.case[0], int(a.case[1]), int(a.case[2]), a.case[3])), flush=True)
        return
    if a.folder:
        print(json.dumps(folder(a.folder[0], int(a.folder[1]), int(a.folder[2]), int(a.folder[3]))), flush=True)
        return
    paths = ["generic", "fast"] if a.path == "both" else [a.path]
    single = {}
    for spec in a.models.split(","):
        name, depth = spec.split(":")
        for n in (int(float(s)) for s in a.sizes.split(",")):
            for path in paths:
                if path == "generic" and n > a.generic_max:
                    print(json.dumps({"model": name, "elements": n, "path": path, "skipped": "above --generic-max"}))
                    continue
                r = subprocess.run([sys.executable, __file__, "--case", name, depth, str(n), path],
                                   capture_output=True, text=True)
                line = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else json.dumps(
                    {"model": name, "elements": n, "path": path, "error": r.stderr.strip()[-500:]})
                print(line, flush=True)
                rec = json.loads(line)
                if path != "generic" and "wall_s" in rec:
                    single[name] = n / rec["wall_s"]
        if a.folder_files:
            r = subprocess.run([sys.executable, __file__, "--folder", name, depth, str(a.folder_files),
                                str(a.folder_events)], capture_output=True, text=True)
            rec = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"error": r.stderr[-500:]}
            if name in single and "cells_per_s" in rec:
                rec["single_set_cells_per_s"] = round(single[name])
                rec["folder_vs_single"] = round(rec["cells_per_s"] / single[name], 3)
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
