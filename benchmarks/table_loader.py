"""Loading a 10^7-row Parquet table: indexing time and memory, loader throughput vs a Deep Sets++ 50 training step.

Usage: python benchmarks/table_loader.py [--work /tmp/deepsets-table-bench] [--json OUT.json]
       [--sets 10000] [--per-set 1000] [--loader-sets 2000] [--steps 20] [--warmup 3]

One run, in this order (each measurement in its own child process, so its memory figures are its own):
  1. the table (written once, then reused from --work): SETS x PER_SET rows, features f0..f3 float32, a string
     set id column ``set`` ("s00042"), a float64 ``label`` (the set's mean of f0), rows grouped by set, written
     with pyarrow in row groups of 10^6 rows. Reported: file size, and the table's in-memory size as pandas holds
     it (measured on one row group, ``memory_usage(deep=True)``, scaled to all rows), and what ``pd.read_parquet``
     of the whole table actually adds to a process's RSS (its set-id strings are deduplicated, so below "deep").
  2. indexing: ``load_task("regression", data=TABLE, set_column="set", label_column="label", set_size=1000)`` in
     a fresh ``DEEPSETS_DATA`` folder (cold: builds the float32 memory map), once more cold in a process that
     imported ``deepsets.train`` (Lightning) first, as ``deepsets train`` has (building the index imports it for
     ``atomic_write_text``), and again in a new process (warm: reuses the index). Time, and resident memory: the process's baseline after importing deepsets/torch/pandas/pyarrow,
     its peak (``VmHWM``, and the max of ``VmRSS`` sampled every 5 ms by a thread, split into anonymous and
     file-backed pages).
  3. loader: one pass of ``DataLoader(batch_size=8, shuffle=True, collate_fn=collate_sets, num_workers=0)`` over
     LOADER_SETS random sets, no model: sets/s and resident memory while iterating.
  4. training: ``create_model("deepsets++", in_dim=4, out_dim=1, depth=50)``, Adam (lr 1e-4), MSE, forward +
     backward + step on batches of 8 sets x 1000 elements drawn from the same kind of loader, allocator tuned as
     the CLI does; WARMUP untimed steps, then STEPS timed ones: sets/s of the step alone and of load + step.
  5. a table, the ratio loader sets/s / training sets/s (target >= 1), and JSON with --json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROW_GROUP = 10**6
FEATURES = ["f0", "f1", "f2", "f3"]
SET_COLUMN, LABEL_COLUMN = "set", "label"
BATCH = 8
SET_SIZE = 1000


# ---------------------------------------------------------------------------------------------- memory
def proc_status() -> dict:
    """Memory fields of /proc/self/status in bytes (VmRSS, VmHWM, RssAnon, RssFile, RssShmem)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0]) * 1024
    return out


def reset_peak() -> bool:
    """Reset the kernel's peak RSS (VmHWM) of this process (Linux >= 4.0); True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """A background thread keeping the max of each /proc/self/status memory field, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        for k, v in proc_status().items():
            if v > self.peak.get(k, 0):
                self.peak[k] = v

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def mib(n) -> str:
    return f"{n / 2**20:,.0f} MiB"


# ---------------------------------------------------------------------------------------------- the table
def write_table(path: Path, n_sets: int, per_set: int, seed: int = 0) -> None:
    """SETS x PER_SET rows grouped by set; f0 = the set's offset + noise, so labels vary between sets."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    schema = pa.schema([(SET_COLUMN, pa.string())] + [(f, pa.float32()) for f in FEATURES]
                       + [(LABEL_COLUMN, pa.float64())])
    sets_per_group = max(1, ROW_GROUP // per_set)
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as w:
        for s0 in range(0, n_sets, sets_per_group):
            k = min(sets_per_group, n_sets - s0)
            n = k * per_set
            x = rng.standard_normal((n, len(FEATURES)), dtype=np.float32)
            x[:, 0] += np.repeat(rng.uniform(-2, 2, k).astype(np.float32), per_set)
            label = x[:, 0].astype(np.float64).reshape(k, per_set).mean(axis=1)
            ids = np.array([f"s{i:05d}" for i in range(s0, s0 + k)])
            cols = [pa.array(np.repeat(ids, per_set))] + [pa.array(x[:, j]) for j in range(len(FEATURES))]
            cols.append(pa.array(np.repeat(label, per_set)))
            w.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=ROW_GROUP)
    os.replace(tmp, path)


def table_info(path: Path) -> dict:
    """File size, rows, row groups and the in-memory size of the table as pandas holds it."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    md = f.metadata
    rg = f.read_row_group(0)
    df = rg.to_pandas()
    scale = md.num_rows / len(df)
    deep = int(df.memory_usage(index=False, deep=True).sum() * scale)
    shallow = int(df.memory_usage(index=False, deep=False).sum() * scale)
    return {"file_bytes": path.stat().st_size, "rows": md.num_rows, "row_groups": md.num_row_groups,
            "columns": f.schema_arrow.names, "dtypes": {c: str(t) for c, t in df.dtypes.items()},
            "pandas_bytes_deep": deep, "pandas_bytes_shallow": shallow, "arrow_bytes": int(rg.nbytes * scale),
            "float32_features_bytes": md.num_rows * len(FEATURES) * 4}


# ---------------------------------------------------------------------------------------------- children
def load(table: str, seed: int = 0):
    from deepsets.data import load_task

    return load_task("regression", data=table, set_column=SET_COLUMN, label_column=LABEL_COLUMN,
                     set_size=SET_SIZE, seed=seed)


def child_index(args) -> dict:
    import deepsets.data  # noqa: F401 - imports torch, numpy; pandas/pyarrow below, before the baseline
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    if args._preimport:  # as under `deepsets train`: the training package (Lightning) is already imported
        import deepsets.train  # noqa: F401
    base = proc_status()
    reset_peak()
    with RssSampler() as s:
        t0 = time.perf_counter()
        ds = load(args.table)
        dt = time.perf_counter() - t0
    end = proc_status()
    import resource

    folder = Path(os.environ["DEEPSETS_DATA"]) / "tables"
    return {"seconds": dt, "sets": len(ds), "in_dim": ds.in_dim, "baseline": base, "peak_sampled": s.peak,
            "VmHWM": end["VmHWM"], "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "index_files": {p.name: p.stat().st_size for p in sorted(folder.iterdir())}}


def child_pandas(args) -> dict:
    """What holding the whole table in pandas costs: RSS growth of ``pd.read_parquet`` (strings deduplicated)."""
    import pandas as pd
    import pyarrow.parquet  # noqa: F401

    base = proc_status()
    reset_peak()
    t0 = time.perf_counter()
    df = pd.read_parquet(args.table)
    dt = time.perf_counter() - t0
    held = proc_status()
    return {"seconds": dt, "baseline": base, "held": held, "VmHWM": held["VmHWM"],
            "memory_usage_deep": int(df.memory_usage(index=False, deep=True).sum()),
            "memory_usage_shallow": int(df.memory_usage(index=False, deep=False).sum())}


def child_train(args) -> dict:
    from deepsets.runtime import tune_allocator

    tuned = tune_allocator()
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Subset

    import deepsets
    from deepsets.data import collate_sets

    torch.manual_seed(0)
    t0 = time.perf_counter()
    ds = load(args.table)
    open_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    out = {"allocator_tuned": tuned, "torch_threads": torch.get_num_threads(), "open_seconds": open_s}

    # loader alone
    sub = Subset(ds, rng.permutation(len(ds))[: args.loader_sets].tolist())
    loader = DataLoader(sub, batch_size=BATCH, shuffle=True, collate_fn=collate_sets, num_workers=0)
    base = proc_status()
    reset_peak()
    n = 0
    with RssSampler() as s:
        t0 = time.perf_counter()
        for x, mask, y in loader:
            n += x.shape[0]
        dt = time.perf_counter() - t0
    assert tuple(x.shape[1:]) == (SET_SIZE, 4) and x.dtype == torch.float32, (x.shape, x.dtype)
    out["loader"] = {"sets": n, "seconds": dt, "sets_per_s": n / dt, "baseline": base, "peak_sampled": s.peak,
                     "VmHWM": proc_status()["VmHWM"]}
    # second pass (same sets, page cache and memory map now warm in this process)
    t0 = time.perf_counter()
    m = sum(b[0].shape[0] for b in loader)
    out["loader"]["second_pass_sets_per_s"] = m / (time.perf_counter() - t0)

    # training steps on batches from the same kind of loader
    model = deepsets.create_model("deepsets++", in_dim=4, out_dim=1, depth=50).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    n_batches = args.warmup + args.steps
    sub = Subset(ds, rng.permutation(len(ds))[: n_batches * BATCH].tolist())
    it = iter(DataLoader(sub, batch_size=BATCH, shuffle=True, collate_fn=collate_sets, num_workers=0))
    step_t, load_t = [], []
    reset_peak()
    with RssSampler(0.02) as s:
        for i in range(n_batches):
            t0 = time.perf_counter()
            x, mask, y = next(it)
            t1 = time.perf_counter()
            loss = torch.nn.functional.mse_loss(model(x, mask), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t2 = time.perf_counter()
            if i >= args.warmup:
                load_t.append(t1 - t0)
                step_t.append(t2 - t1)
    import statistics

    k = len(step_t) * BATCH
    out["train"] = {"steps": len(step_t), "warmup": args.warmup, "batch": BATCH, "set_size": int(x.shape[1]),
                    "step_seconds_total": sum(step_t), "step_seconds_median": statistics.median(step_t),
                    "sets_per_s": k / sum(step_t), "load_seconds_total": sum(load_t),
                    "load_plus_step_sets_per_s": k / (sum(step_t) + sum(load_t)), "final_loss": float(loss),
                    "peak_sampled": s.peak, "VmHWM": proc_status()["VmHWM"],
                    "parameters": sum(p.numel() for p in model.parameters())}
    return out


def run_child(kind: str, args, data_dir: Path, preimport: bool = False) -> dict:
    env = dict(os.environ, DEEPSETS_DATA=str(data_dir))
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", kind, "--_table", args.table,
           "--loader-sets", str(args.loader_sets), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--_preimport"] if preimport else []
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"child {kind!r} failed (exit {p.returncode})")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/deepsets-table-bench")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--sets", type=int, default=10_000)
    ap.add_argument("--per-set", type=int, default=1000)
    ap.add_argument("--loader-sets", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_table", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_preimport", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        args.table = args._table
        res = {"index": child_index, "pandas": child_pandas, "train": child_train}[args._child](args)
        print(json.dumps(res))
        return

    t_all = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    table = work / f"table_{args.sets}x{args.per_set}.parquet"
    args.table = str(table)
    written, write_s = False, None
    if not table.is_file():
        print(f"writing {table} ...", flush=True)
        t0 = time.perf_counter()
        write_table(table, args.sets, args.per_set)
        write_s, written = time.perf_counter() - t0, True
    info = table_info(table)
    print(f"table: {info['rows']:,} rows, {info['row_groups']} row groups, {info['file_bytes'] / 1e6:,.1f} MB "
          f"({'written in %.1f s' % write_s if written else 'cached'}); dtypes {info['dtypes']}", flush=True)

    print("whole table into pandas (pd.read_parquet), for comparison ...", flush=True)
    pdm = run_child("pandas", args, work / "unused")
    print(f"  {pdm['seconds']:.1f} s", flush=True)
    data_dir = work / "deepsets-data"
    shutil.rmtree(data_dir, ignore_errors=True)  # cold: no index yet
    print("indexing (cold) ...", flush=True)
    cold = run_child("index", args, data_dir)
    print(f"  {cold['seconds']:.1f} s", flush=True)
    print("indexing (cold, deepsets.train imported first, as under `deepsets train`) ...", flush=True)
    data_dir2 = work / "deepsets-data-preimported"
    shutil.rmtree(data_dir2, ignore_errors=True)
    cold2 = run_child("index", args, data_dir2, preimport=True)
    shutil.rmtree(data_dir2, ignore_errors=True)  # a second copy of the index, not needed
    print(f"  {cold2['seconds']:.1f} s", flush=True)
    print("indexing (warm) ...", flush=True)
    warm = run_child("index", args, data_dir)
    print(f"  {warm['seconds']:.2f} s", flush=True)
    print(f"loader ({args.loader_sets} sets) and training ({args.warmup} + {args.steps} steps) ...", flush=True)
    tr = run_child("train", args, data_dir)

    lo, t = tr["loader"], tr["train"]
    ratio = lo["sets_per_s"] / t["sets_per_s"]
    rows = [
        ("Parquet file", f"{info['file_bytes'] / 1e6:,.1f} MB ({info['rows']:,} rows, {info['row_groups']} row "
                         f"groups; f0..f3 float32, set str, label float64)"),
        ("table in memory (pandas, deep)", f"{info['pandas_bytes_deep'] / 1e6:,.1f} MB (shallow, without the "
                                           f"string objects: {info['pandas_bytes_shallow'] / 1e6:,.1f} MB)"),
        ("pd.read_parquet of the whole table: RSS held / peak above baseline",
         f"+{(pdm['held']['VmRSS'] - pdm['baseline']['VmRSS']) / 1e6:,.0f} / +{(pdm['VmHWM'] - pdm['baseline']['VmRSS']) / 1e6:,.0f} MB "
         f"(in {pdm['seconds']:.1f} s; its memory_usage deep {pdm['memory_usage_deep'] / 1e6:,.0f} MB, the string "
         f"objects are shared)"),
        ("index files", f"{sum(cold['index_files'].values()) / 1e6:,.1f} MB"),
        ("indexing, cold (builds the index)", f"{cold['seconds']:.1f} s"),
        ("indexing, cold, deepsets.train (Lightning) imported beforehand", f"{cold2['seconds']:.1f} s"),
        ("indexing, warm (reuses it)", f"{warm['seconds']:.2f} s"),
        ("RSS indexing cold: baseline -> peak",
         f"{cold['baseline']['VmRSS'] / 1e6:,.0f} -> {cold['VmHWM'] / 1e6:,.0f} MB (+{(cold['VmHWM'] - cold['baseline']['VmRSS']) / 1e6:,.0f} MB; "
         f"sampled peak anon {cold['peak_sampled'].get('RssAnon', 0) / 1e6:,.0f} MB, file "
         f"{cold['peak_sampled'].get('RssFile', 0) / 1e6:,.0f} MB)"),
        ("RSS indexing cold, deepsets.train imported beforehand: baseline -> peak",
         f"{cold2['baseline']['VmRSS'] / 1e6:,.0f} -> {cold2['VmHWM'] / 1e6:,.0f} MB (+{(cold2['VmHWM'] - cold2['baseline']['VmRSS']) / 1e6:,.0f} MB; "
         f"sampled peak anon {cold2['peak_sampled'].get('RssAnon', 0) / 1e6:,.0f} MB, file "
         f"{cold2['peak_sampled'].get('RssFile', 0) / 1e6:,.0f} MB)"),
        ("RSS indexing warm: baseline -> peak",
         f"{warm['baseline']['VmRSS'] / 1e6:,.0f} -> {warm['VmHWM'] / 1e6:,.0f} MB (+{(warm['VmHWM'] - warm['baseline']['VmRSS']) / 1e6:,.0f} MB)"),
        ("loader sets/s (batch 8, shuffle, 0 workers)",
         f"{lo['sets_per_s']:,.0f} ({lo['sets']} sets in {lo['seconds']:.2f} s; 2nd pass "
         f"{lo['second_pass_sets_per_s']:,.0f})"),
        ("RSS while iterating: baseline -> peak",
         f"{lo['baseline']['VmRSS'] / 1e6:,.0f} -> {lo['VmHWM'] / 1e6:,.0f} MB (+{(lo['VmHWM'] - lo['baseline']['VmRSS']) / 1e6:,.0f} MB)"),
        ("Deep Sets++ 50 training sets/s (step only)",
         f"{t['sets_per_s']:,.2f} ({t['steps']} steps, median {t['step_seconds_median']:.3f} s/step)"),
        ("training sets/s including loading", f"{t['load_plus_step_sets_per_s']:,.2f}"),
        ("RSS peak while training", f"{t['VmHWM'] / 1e6:,.0f} MB"),
        ("ratio loader / training sets/s (target >= 1)", f"{ratio:,.0f}"),
    ]
    print()
    print("| measure | value |")
    print("|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    total = time.perf_counter() - t_all
    print(f"\ntotal benchmark time {total:.0f} s; torch threads {tr['torch_threads']}, allocator tuned "
          f"{tr['allocator_tuned']}")
    if args.json:
        res = {"table": info, "table_path": str(table), "written_this_run": written, "write_seconds": write_s,
               "pandas_read_parquet": pdm, "index_cold": cold, "index_cold_train_preimported": cold2, "index_warm": warm, "loader_and_train": tr, "ratio_loader_over_train": ratio,
               "total_seconds": total, "cpus": os.cpu_count()}
        Path(args.json).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
