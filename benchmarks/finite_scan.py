"""The NaN/inf scan before training on a Flow-RBC-sized HDF5 file, next to the time to just read the data.

Usage: python benchmarks/finite_scan.py [--path FILE.h5] [--sets 98240] [--cells 1000] [--repeats 3] [--contiguous]

Without ``--path`` the file is written to a temporary folder and removed afterwards; with ``--path`` an existing
file is used as it is (else written there and kept). The file has the Flow-RBC layout the loader expects
(:mod:`deepsets.data.flow_rbc`): ``train_data float32 [sets, cells, 2]``, chunked one set per chunk as the
simulator writes it (``--contiguous``: not chunked), and ``train_labels float32 [sets, 1]``; values are finite.
Each repeat times, in this order:

* ``read_s``: reading ``train_data`` whole, in the same slabs the scan reads (h5py into numpy, nothing else);
* ``scan_s``: ``check_finite(FlowRBCDataset(FILE))``: the scan of every set (reading included);
* ``walk_s``: the metadata walk done once per file when the data layer first opens it (a child process).

The file is read from the page cache after writing (or after the first repeat): the rates are those of memory,
not of a disk. Prints one JSON object with the medians: sets, elements, features, bytes, seconds (the scan),
gb_per_s, read_seconds, read_gb_per_s, walk_seconds, and every repeat's times.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def write(path: Path, sets: int, cells: int, contiguous: bool) -> None:
    rng = np.random.default_rng(0)
    block = rng.uniform(50, 120, (4096, cells, 2)).astype(np.float32)  # one block, written again and again
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("train_data", (sets, cells, 2), dtype=np.float32,
                              chunks=None if contiguous else (1, cells, 2))
        for a in range(0, sets, len(block)):
            b = min(a + len(block), sets)
            ds[a:b] = block[: b - a]
        f["train_labels"] = rng.uniform(30, 50, (sets, 1)).astype(np.float32)


def time_read(path: Path) -> float:
    from deepsets.data.finite import SLAB_BYTES

    t = time.perf_counter()
    with h5py.File(path, "r") as f:
        ds = f["train_data"]
        step = max(1, SLAB_BYTES // (ds.shape[1] * ds.shape[2] * 4))
        if ds.chunks:
            step = max(ds.chunks[0], step // ds.chunks[0] * ds.chunks[0])
        out = np.empty((step, *ds.shape[1:]), dtype=np.float32)
        for a in range(0, ds.shape[0], step):
            b = min(a + step, ds.shape[0])
            ds.read_direct(out, np.s_[a:b], np.s_[: b - a])
    return time.perf_counter() - t


def time_scan(path: Path) -> float:
    from deepsets.data import check_finite
    from deepsets.data.flow_rbc import FlowRBCDataset

    ds = FlowRBCDataset(path, "train")
    t = time.perf_counter()
    check_finite(ds)
    return time.perf_counter() - t


def time_walk(path: Path) -> float:
    from deepsets.data._base import h5_walk_command

    t = time.perf_counter()
    subprocess.run(h5_walk_command(path), check=True)
    return time.perf_counter() - t


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", type=Path)
    ap.add_argument("--sets", type=int, default=98_240)
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--contiguous", action="store_true")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = a.path or Path(tmp) / "flow_rbc_bench.h5"
        if not path.exists():
            write(path, a.sets, a.cells, a.contiguous)
        with h5py.File(path, "r") as f:
            shape, chunks = f["train_data"].shape, f["train_data"].chunks
        nbytes = int(np.prod(shape)) * 4
        runs = [{"read_s": time_read(path), "scan_s": time_scan(path), "walk_s": time_walk(path)}
                for _ in range(a.repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out = {"sets": shape[0], "elements": shape[1], "features": shape[2], "bytes": nbytes, "chunks": chunks,
           "seconds": round(med["scan_s"], 3), "gb_per_s": round(nbytes / med["scan_s"] / 1e9, 2),
           "read_seconds": round(med["read_s"], 3), "read_gb_per_s": round(nbytes / med["read_s"] / 1e9, 2),
           "walk_seconds": round(med["walk_s"], 3),
           "runs": [{k: round(v, 3) for k, v in r.items()} for r in runs]}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
