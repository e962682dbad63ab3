"""``deepsets data list|build|info``: what each task needs, builders from the public files, file inspection.

The main command calls :func:`add_data_commands` with its subparsers; every handler is ``func(args) -> int``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._base import DataError, data_dir

__all__ = ["add_data_commands", "cmd_build", "cmd_info", "cmd_list", "main"]

def add_data_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``data`` with the subcommands ``list``, ``build`` and ``info`` to an argparse subparsers object."""
    p = subparsers.add_parser("data", help="tasks and data sets: list, build from public files, inspect files",
                              description="Tasks and their data: list them, build files from the original public "
                              "releases, inspect a file.")
    sub = p.add_subparsers(dest="data_command", metavar="{list,build,info}")
    sub.required = True

    pl = sub.add_parser("list", help="tasks, their sources and sizes, and where files go")
    pl.set_defaults(func=cmd_list)

    pb = sub.add_parser("build", help="build a task's file from the original public files (or simulate)")
    from .tasks import TASKS

    pb.add_argument("task", choices=[n for n, t in TASKS.items() if t.build is not None])
    pb.add_argument("--source", help="the original files: MNIST IDX folder, ModelNet40 ply_data folder, CelebA folder")
    pb.add_argument("--out", help="output HDF5 (default: a file in the data folder)")
    pb.add_argument("--simulate", action="store_true", help="hematocrit/anemia: write the simulator's file")
    pb.add_argument("--n-train", type=int, default=None, help="number of training sets (generated/built tasks)")
    pb.add_argument("--n-test", type=int, default=None, help="number of test sets")
    pb.add_argument("--cells", type=int, default=1000, help="cells per set (simulator)")
    pb.add_argument("--seed", type=int, default=0)
    pb.add_argument("--no-verify", action="store_true", help="skip the MNIST MD5 checks")
    pb.set_defaults(func=cmd_build)

    pi = sub.add_parser("info", help="keys, shapes, dtypes, number of sets and detected task of a data file")
    pi.add_argument("path")
    pi.set_defaults(func=cmd_info)
    return p


# ---------------------------------------------------------------------------------------------------------------
def cmd_list(args) -> int:
    from .tasks import TASKS

    print(f"data folder: {data_dir()}  (set $DEEPSETS_DATA to change; default ~/.cache/deepsets)")
    print()
    for t in TASKS.values():
        print(f"{t.name}")
        print(f"  {t.description}")
        dims = f"in_dim={t.in_dim} out_dim={t.out_dim} " if t.in_dim is not None else ""
        print(f"  {dims}target={t.target} metric={t.metric} pool={t.pool} output={t.output} "
              f"set_size={t.set_size} epochs={t.epochs}")
        print(f"  real data:       {t.real_source}")
        sizes = f"; {t.offline_sizes}" if t.offline_sizes else ""
        print(f"  offline default: {t.offline_default}{sizes}")
        if t.built_file:
            print(f"  built file:      {data_dir() / t.built_file}")
    return 0


def _fail(msg: str, command: str) -> int:
    """A data error: one line on standard error and exit code 1, as every other command (2 is for usage errors)."""
    text = " ".join(str(msg).split())
    print(f"deepsets data {command}: error: {text}", file=sys.stderr)
    return 1


def cmd_build(args) -> int:
    from .tasks import get_task

    task = get_task(args.task)
    out = Path(args.out) if args.out else data_dir() / (task.built_file or f"{task.name}.h5")
    options = {"source": args.source, "out": out, "n_train": args.n_train, "n_test": args.n_test,
               "cells": args.cells, "seed": args.seed, "verify": not args.no_verify, "simulate": args.simulate}
    try:
        path = task.build(options)
    except (DataError, FileNotFoundError, ImportError, ValueError) as e:
        return _fail(str(e), "build")
    if path is None:  # the task's files are used as they are: describe the source
        return cmd_info(argparse.Namespace(path=args.source))
    print(f"wrote {path}")
    return 0


def _describe_h5(path) -> list[str]:
    from ._base import open_h5

    lines = []
    with open_h5(path) as f:
        for k, v in f.attrs.items():
            lines.append(f"  attr {k} = {v.decode() if isinstance(v, bytes) else v}")

        def visit(name, obj):
            if hasattr(obj, "shape"):
                lines.append(f"  {name}: shape={tuple(obj.shape)} dtype={obj.dtype}")
            else:
                lines.append(f"  {name}/")

        f.visititems(visit)
    return lines


def _describe_table(path: Path) -> list[str]:
    """Columns, types and the first values of a table: what --set-column / --label-column / --features name."""
    from .sources.table import _chunks, _column_names

    cols = _column_names(path, False)
    head = next(_chunks(path, cols, False)).head(3)
    lines = [f"  table: {len(cols)} columns (name: type, first values); train with --data {path.name} "
             f"--set-column COL --label-column COL"]
    for c in cols:
        lines.append(f"    {c!s}: {head[c].dtype}, {', '.join(map(str, head[c].tolist()))}")
    return lines


def _describe_h5ad(path: Path) -> list[str]:
    from ._base import open_h5
    from .sources.h5ad import h5ad_var_names

    with open_h5(path) as f:
        obs = [k for k in f["obs"] if not k.startswith("__") and k not in ("_index", "index")] if "obs" in f else []
        var = h5ad_var_names(f, path) if "var" in f else []
        layers = sorted(f["layers"].keys()) if "layers" in f else []
        has_x = "X" in f
    return [f"  AnnData: obs columns {obs} (--set-column, --label-column)",
            f"  var names ({len(var)}): {var[:12]}{' ...' if len(var) > 12 else ''} (--channels)",
            f"  X: {'yes' if has_x else 'no (use --layer)'}; layers: {layers or 'none'}"]


def _own_data(p: Path) -> str | None:
    """What ``detected task`` says for your own sets (no paper task's layout): ``None`` if no source reads it."""
    from .sources import source_for

    try:
        src = source_for(p)
    except DataError:
        return None
    line = (f"your own sets ({src.name} source): regression or classification, from the labels or --target "
            f"(deepsets train --data {p.name} ...)")
    if src.name == "fcs" and not p.is_dir():
        return ("your own sets (fcs source): one file is one set; train regression or classification on a folder "
                "of them with labels.csv (set,label)")
    if src.name == "fcs":
        from .sources import open_source
        from .targets import explain_target

        labels = open_source(p, None).labels
        if labels is None:
            return ("your own sets (fcs source): no labels.csv, so prediction only; to train (regression or "
                    "classification), add labels.csv with columns set,label")
        target, why = explain_target([v for v in labels if v is not None])
        return f"{target} (your own sets, fcs source: {why}; --target chooses)"
    return line


def cmd_info(args) -> int:
    from .tasks import detect_task, get_task

    p = Path(args.path)
    if not p.exists():
        return _fail(f"data path does not exist: {p}", "info")
    try:
        from .fcs import is_fcs_path

        task = detect_task(p)
        print(f"{p}")
        if p.is_dir():
            files = sorted(x for x in p.rglob("*") if x.is_file())
            print(f"  folder with {len(files)} files: {', '.join(x.name for x in files[:10])}"
                  f"{' ...' if len(files) > 10 else ''}")
            fcs = [x for x in files if is_fcs_path(x)]
            if fcs:
                from .fcs import read_fcs_file

                f = read_fcs_file(fcs[0], events=False)
                print(f"  {len(fcs)} FCS file(s), one set each; {fcs[0].name}: FCS {f.version}, channels {f.pnn} "
                      f"(matched by name in every file)")
        elif is_fcs_path(p):
            from .fcs import read_fcs_file

            f = read_fcs_file(p)
            print(f"  FCS {f.version} file: {f.events.shape[0]} events, channels {f.pnn}")
        elif p.suffix.lower() in (".csv", ".tsv", ".tab", ".txt", ".parquet", ".pq"):
            for ln in _describe_table(p):
                print(ln)
        elif p.suffix.lower() == ".h5ad":
            for ln in _describe_h5ad(p):
                print(ln)
        elif p.suffix.lower() == ".npy":
            import numpy as np

            a = np.load(p, mmap_mode="r")
            print(f"  array: shape={a.shape} dtype={a.dtype}")
        else:
            for ln in _describe_h5(p):
                print(ln)
        print(f"  detected task: {task or _own_data(p) or 'unknown'}")
        if task is not None and p.suffix.lower() not in (".fcs", ".lmd", ".h5ad"):  # .h5ad needs --set-column
            for split in ("train", "test"):
                try:
                    ds = get_task(task, where=f"{p} names").load(split, data=p, set_size=0)  # never imported
                except (DataError, ValueError) as e:
                    print(f"  {split}: not readable as {task}: {e}")
                    continue
                print(f"  {split}: {len(ds)} sets, in_dim={ds.in_dim}, out_dim={ds.out_dim}")
    except (DataError, ImportError, OSError) as e:
        return _fail(str(e), "info")
    return 0


def main(argv=None) -> int:
    """Stand-alone entry (``python -m deepsets.data.cli ...``); the main ``deepsets`` command embeds the same."""
    parser = argparse.ArgumentParser(prog="deepsets")
    sub = parser.add_subparsers(dest="command")
    add_data_commands(sub)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
