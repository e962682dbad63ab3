"""``deepsets explain``: one score per element of every set of a file, written where the user's data lives.

Outputs:

- ``--output FILE.csv|.parquet``: one row per element: ``set``, ``element`` (0-based position in its set, in the
  input's order), ``score`` (or ``score_<label>`` per class / ``score_<k>`` per output), and the ``--groupby``
  column.
- ``.h5ad`` input: a copy of the file with the scores in ``obs`` (``deepsets_score`` / ``deepsets_score_<label>``;
  cells in no set get NaN) at ``--annotated`` (default: beside ``--output``, ``OUTPUT_STEM.h5ad``); the input is
  never written.
- FCS folder or file, with ``--annotated DIR``: a copy of each file with the score as an added channel
  ``deepsets_score`` (flowio).
- ``--report DIR``: ``summary.json`` (method, per-set f(X), f(empty set), completeness error), with ``--groupby``
  ``groups.csv`` (per set and group: elements, fraction, score sum and mean) and the group box plot, the top-scoring
  elements' frequency per set (``top_frequency.csv``) with a test between classes, and for one set (``--plot-set``)
  the scatter of two channels coloured by score and the deletion curve beside a random order.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def add_explain_command(sub) -> None:
    from ..train.cli import add_source_flags, add_task_flag
    from .core import METHODS

    p = sub.add_parser("explain", help="which elements drive each set's prediction: one score per element -> "
                                       "CSV/Parquet (and .h5ad obs, FCS channels, plots)",
                       description="Per-element attribution of a trained model's output (a regressor's prediction, a "
                                   "classifier's logits) for every set of a file. Methods: occlusion (the output "
                                   "change when the element is removed), integrated-gradients (along the elements' "
                                   "presence, summing to f(X) - f(empty set)), shapley (values of --groupby groups, "
                                   "sampled, with a standard error).")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="a table (.csv/.tsv/.parquet), .h5ad, .fcs/.lmd or a folder of them, "
                                                  ".h5/.hdf5 or .npy [sets, elements, features]")
    p.add_argument("--output", required=True, help="per-element table: .csv or .parquet (by extension)")
    p.add_argument("--method", default="occlusion", choices=METHODS, help="attribution method (default occlusion)")
    p.add_argument("--groupby", metavar="COL", help="table/.h5ad column with a group per element (cell type, gate, "
                                                    "cluster): written beside each score, summarised per set in "
                                                    "--report, and the players of --method shapley")
    p.add_argument("--annotated", metavar="PATH", help=".h5ad input: the copy with scores in obs (default: "
                                                       "OUTPUT_STEM.h5ad); FCS input: a folder of FCS copies with a "
                                                       "deepsets_score channel")
    p.add_argument("--report", metavar="DIR", help="summaries and plots: summary.json, groups.csv, "
                                                   "top_frequency.csv, PNGs")
    p.add_argument("--plot-set", metavar="ID", help="with --report: the set drawn in the scatter and deletion plots "
                                                    "(default: the first)")
    p.add_argument("--plot-channels", nargs=2, metavar=("A", "B"), help="with --report: the two features of the "
                                                                         "scatter (default: the first two)")
    p.add_argument("--class", dest="target_class", metavar="LABEL",
                   help="classifiers: the class whose score the report summarises (default: a binary classifier's "
                        "log-odds of its second class, else the last class)")
    p.add_argument("--top", type=float, default=0.01, help="with --report: the top-scoring fraction of all "
                                                            "elements whose frequency per set is compared between "
                                                            "classes (default 0.01)")
    g = p.add_argument_group("method settings")
    g.add_argument("--steps", type=int, default=64, help="integrated-gradients: points along the path (default 64)")
    g.add_argument("--samples", type=int, default=32, help="shapley: sampled orders per set (default 32)")
    g.add_argument("--exact", dest="exact", action="store_true", default=None,
                   help="occlusion: one forward pass per removed element for every set (default: up to 1,024 "
                        "elements; larger sets take the readout fast path)")
    g.add_argument("--fast", dest="exact", action="store_false", help="occlusion: the readout fast path for every set")
    g.add_argument("--seed", type=int, default=0, help="shapley: seed of the sampled orders (default 0)")
    p.add_argument("--no-csv-escape", dest="csv_escape", action="store_false",
                   help="write text cells starting with = + - @ as they are (default: a leading ')")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    add_source_flags(p, labels=True)  # labels: only for the report's comparison between classes
    p.add_argument("--key", help="HDF5 dataset key (default: the first of test_data, data, train_data, ...)")
    add_task_flag(p)
    p.set_defaults(func=_cmd_explain)


# ------------------------------------------------------------------------------------------------ element groups
def element_groups(ds, column: str):
    """The ``column`` value of every element of every set of ``ds`` (a table or an ``.h5ad``), in the order the
    reader gives the elements: a list of arrays."""
    reader = getattr(ds, "reader", None)
    kind = type(reader).__name__
    if kind == "H5ADReader":
        from ..data.sources.h5ad import read_h5ad_column

        import h5py

        with h5py.File(reader.path, "r") as f:
            if column not in f["obs"]:
                raise ValueError(f"{reader.path}: no obs column {column!r} for --groupby; columns: "
                                 f"{sorted(k for k in f['obs'].keys() if not k.startswith('_'))}")
            values = read_h5ad_column(f["obs"], column, reader.path)
        return [np.asarray(values)[r] for r in reader.rows]
    if kind == "TableReader":
        return _table_groups(reader, column)
    raise ValueError(f"--groupby reads a column of a table or .h5ad; {getattr(ds, 'source', 'this input')} has none")


def _table_groups(reader, column: str):
    """A table's ``column`` per set, elements in file order (the reader's order), set ids read as text."""
    import pandas as pd

    path = Path(reader.path)
    set_col = reader.set_column
    if str(path).lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        names = pq.ParquetFile(path).schema_arrow.names
        if column not in names:
            raise ValueError(f"{path}: no column {column!r} for --groupby; columns: {names}")
        df = pq.read_table(path, columns=[set_col, column]).to_pandas()
    else:
        sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        header = None if reader.no_header else 0
        names = pd.read_csv(path, sep=sep, nrows=0, header=header).columns.tolist() if header == 0 else \
            list(range(len(pd.read_csv(path, sep=sep, nrows=1, header=None).columns)))
        if reader.no_header:
            column = int(column) if str(column).isdigit() else column
        if column not in names:
            raise ValueError(f"{path}: no column {column!r} for --groupby; columns: {names}")
        df = pd.read_csv(path, sep=sep, usecols=[set_col, column], dtype=str, keep_default_na=False,
                         header=header)
    ids = df[set_col].astype(str).str.strip()
    by = {k: v[column].to_numpy() for k, v in df.assign(_id=ids).groupby("_id", sort=False)}
    return [np.asarray(by.get(str(s), []), dtype=object) for s in reader.set_ids]


# ------------------------------------------------------------------------------------------------ the command
def score_columns(out_dim: int, classes) -> list[str]:
    if out_dim == 1:
        return ["score"]
    if classes and len(classes) == out_dim:
        return [f"score_{c}" for c in classes]
    return [f"score_{k}" for k in range(out_dim)]


def summary_score(scores: np.ndarray, classes, target_class=None) -> tuple[np.ndarray, str]:
    """The one number per element the report summarises, and its name."""
    s = scores.reshape(scores.shape[0], -1)
    if s.shape[1] == 1:
        return s[:, 0], "score"
    names = [str(c) for c in classes] if classes else [str(k) for k in range(s.shape[1])]
    if target_class is not None:
        if str(target_class) not in names:
            raise ValueError(f"--class {target_class!r} is not a class of the model; classes: {names}")
        k = names.index(str(target_class))
        return s[:, k], f"score_{names[k]}"
    if s.shape[1] == 2:
        return s[:, 1] - s[:, 0], f"log-odds of {names[1]}"
    return s[:, -1], f"score_{names[-1]}"


def _cmd_explain(args) -> int:
    import torch

    from .outputs import ElementTable, annotate_fcs, annotate_h5ad
    from tqdm.auto import tqdm

    from ..checkpoint import open_checkpoint
    from ..files import refuse_input_as_output
    from ..inference import prefetched
    from ..train.cli import source_options_from_args
    from ..train.predict import open_for_model, set_names
    from .core import explain

    out = Path(args.output)
    refuse_input_as_output(out, {"--input": args.input, "--checkpoint": args.checkpoint})
    for extra in (args.annotated, args.report):
        if extra:
            refuse_input_as_output(extra, {"--input": args.input, "--checkpoint": args.checkpoint})
    ckpt = open_checkpoint(args.checkpoint, task=args.task)  # --task: the checkpoint's task, named again
    model = ckpt.model
    classes = ckpt.data_info.get("classes") if ckpt.target.name == "classification" else None
    ds = open_for_model(ckpt, args.input, **source_options_from_args(args))
    names = set_names(ds)
    kind = type(getattr(ds, "reader", None)).__name__
    groups = element_groups(ds, args.groupby) if args.groupby else None
    if args.method == "shapley" and groups is None:
        print("shapley without --groupby: each element is its own player (sets of up to 64 elements)",
              file=sys.stderr)
    columns = score_columns(model.config.out_dim, classes) + ([args.groupby] if args.groupby else [])
    score_cols = [c for c in columns if c.startswith("score")]
    table = ElementTable(out, ["set", "element"] + columns, args.csv_escape)
    raw_labels = getattr(ds, "raw_labels", None)
    per_set, summary_sets, t0 = [], [], time.perf_counter()
    keep_scores = bool(args.report or args.annotated or kind == "H5ADReader")
    plot_index = names.index(args.plot_set) if args.plot_set in names else 0
    if args.plot_set is not None and args.plot_set not in names:
        raise ValueError(f"--plot-set {args.plot_set!r}: no such set in {args.input} (first sets: {names[:5]})")
    plot_x = None
    try:
        bar = tqdm(total=len(names), unit="set", desc=f"explain ({args.method})", leave=False,
                   disable=None if args.progress is None else not args.progress)
        for i, x in enumerate(prefetched(ds)):
            x = x.to(torch.float32)
            g = None if groups is None else groups[i]
            if g is not None and len(g) != x.shape[0]:
                raise ValueError(f"{args.input}: set {names[i]} has {x.shape[0]} elements but {len(g)} values of "
                                 f"--groupby {args.groupby}")
            s, ex = explain(model, x[None], method=args.method, groups=None if g is None else [g],
                            steps=args.steps, samples=args.samples, seed=args.seed + i, exact=args.exact,
                            return_info=True)
            s = s[0].double().numpy().reshape(x.shape[0], -1)
            table.add(names[i], s, g)
            record = {"set": names[i], "elements": int(x.shape[0]),
                      "output": ex.output[0].tolist()}
            if ex.empty is not None:
                record["empty_set_output"] = ex.empty[0].tolist()
                record["completeness_error"] = ex.completeness_error[0].tolist()
            if ex.exact:
                record["occlusion"] = "exact" if ex.exact[0] else "readout fast path"
            if ex.group_values:
                record["group_values"] = {str(k): v.tolist() for k, v in ex.group_values[0].items()}
                record["group_se"] = {str(k): v.tolist() for k, v in ex.se[0].items()}
            summary_sets.append(record)
            if keep_scores:
                per_set.append(s)
            if i == plot_index and args.report:
                plot_x = x.numpy()
            bar.update(1)
        bar.close()
        table.close()
    except BaseException:
        table.discard()
        raise
    seconds = time.perf_counter() - t0
    print(f"wrote {table.rows:,} element scores of {len(names)} set{'s' if len(names) != 1 else ''} to {out} "
          f"({args.method}, {seconds:.1f} s)")
    if kind == "H5ADReader" or (args.annotated and kind == "H5ADReader"):
        target = Path(args.annotated) if args.annotated else out.with_suffix(".h5ad")
        refuse_input_as_output(target, {"--input": args.input})
        annotate_h5ad(Path(ds.reader.path), target, ds.reader.rows, per_set, score_cols)
        print(f"wrote {target} (a copy of the input with {', '.join('deepsets_' + c for c in score_cols)} in obs)")
    elif args.annotated:
        files = getattr(ds.reader, "files", None)
        if files is None:
            raise ValueError("--annotated writes an .h5ad copy or FCS copies; this input is neither")
        for f, s in zip(files, per_set):
            annotate_fcs(Path(f), Path(args.annotated), s)
        print(f"wrote {len(per_set)} FCS file(s) with a deepsets_score channel to {args.annotated}")
    if args.report:
        _report(args, model, ds, names, per_set, groups, raw_labels, classes, summary_sets, plot_index, plot_x,
                seconds)
    return 0


def _report(args, model, ds, names, per_set, groups, labels, classes, summary_sets, plot_index, plot_x, seconds):
    from ..files import atomic_write_text
    from . import groups as G

    rep = Path(args.report)
    rep.mkdir(parents=True, exist_ok=True)
    one = [summary_score(s, classes, args.target_class) for s in per_set]
    values = [v for v, _ in one]
    what = one[0][1] if one else "score"
    lab = list(labels) if labels is not None and all(v is not None for v in labels) else None
    summary = {"method": args.method, "checkpoint": Path(args.checkpoint).name, "input": Path(args.input).name,
               "sets": len(names), "seconds": round(seconds, 3), "summarised_score": what, "per_set": summary_sets}
    top, threshold = G.top_frequency(values, names, lab, top=args.top)
    top.to_csv(rep / "top_frequency.csv", index=False)
    summary["top"] = {"fraction": args.top, "threshold": threshold}
    if lab is not None:
        summary["top"]["between_classes"] = G.frequency_test(top)
    if groups is not None:
        table = G.group_summary(values, groups, names, lab)
        table.to_csv(rep / "groups.csv", index=False)
        try:
            from .plots import plot_group_boxes

            plot_group_boxes(table, rep / "group_scores.png", title=f"{what} per group ({args.method})")
        except ImportError:
            pass
    try:
        import torch

        from .faithfulness import deletion_curve
        from .plots import plot_deletion, plot_set_scores

        feats = list(getattr(ds, "feature_names", []) or [])
        ch = (0, 1)
        if args.plot_channels:
            missing = [c for c in args.plot_channels if c not in feats]
            if missing:
                raise ValueError(f"--plot-channels {missing}: not features of the model; features: {feats}")
            ch = tuple(feats.index(c) for c in args.plot_channels)
        if plot_x is not None and plot_x.shape[1] >= 2:
            plot_set_scores(plot_x, values[plot_index], ch, feats, rep / "set_scores.png",
                            title=f"set {names[plot_index]}: {what} ({args.method})")
        if plot_x is not None and plot_x.shape[0] > 1:
            k = -1
            s = per_set[plot_index].reshape(plot_x.shape[0], -1)
            if classes and len(classes) == 2 and args.target_class is None:
                k, sc = 1, s[:, 1]
            elif classes and args.target_class is not None:
                k = [str(c) for c in classes].index(str(args.target_class))
                sc = s[:, k]
            else:
                sc = s[:, -1]
            if plot_x.shape[0] <= 20_000:
                fr, by, rnd, auc, auc_r = deletion_curve(model, torch.as_tensor(plot_x), sc, output=k)
                plot_deletion(fr, by, rnd, rep / "deletion.png", title=f"set {names[plot_index]} ({args.method})",
                              ylabel=f"output {k if k >= 0 else model.config.out_dim - 1}")
                summary["deletion"] = {"set": names[plot_index], "fractions": fr.tolist(), "by_score": by.tolist(),
                                       "random": rnd.tolist(), "area_by_score": auc, "area_random": auc_r}
    except ImportError:
        print("plots need matplotlib: pip install 'deepsets[plot]'", file=sys.stderr)
    atomic_write_text(rep / "summary.json", json.dumps(summary, indent=1, default=float) + "\n")
    print(f"wrote the report to {rep}")
