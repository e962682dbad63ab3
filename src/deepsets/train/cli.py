"""``deepsets train``, ``cv``, ``eval``, ``predict`` and ``reproduce``."""
from __future__ import annotations

import json
from pathlib import Path


def add_source_flags(p, labels: bool = True) -> None:
    """The flags that say how to read a source of sets (tables, .h5ad, FCS folders, .npy/.h5)."""
    g = p.add_argument_group("your own sets (tables, .h5ad, FCS folders, .npy/.h5)")
    g.add_argument("--set-column", metavar="COL", help="table/.h5ad column naming each element's set "
                                                        "(a 0-based index with --no-header)")
    if labels:
        g.add_argument("--label-column", metavar="COL", help="table/.h5ad column with each set's label")
        g.add_argument("--labels", metavar="FILE.csv", help="labels file with columns set,label[,split] "
                                                           "(FCS folders: default labels.csv in the folder)")
        g.add_argument("--split-column", metavar="COL", help="table/.h5ad column with train/test per element")
    g.add_argument("--features", nargs="+", metavar="COL", help="feature columns (default: every other numeric "
                                                                 "column; FCS/.h5ad: every channel)")
    g.add_argument("--channels", nargs="+", help="FCS/.h5ad channel names to use as features (= --features)")
    g.add_argument("--channel-map", nargs="+", metavar="FILE_CHANNEL=NAME",
                   help="rename the files' FCS/h5ad channels before --channels are matched (e.g. FSC-A=volume)")
    g.add_argument("--layer", help=".h5ad: read this layer instead of X")
    g.add_argument("--no-header", action="store_true", default=None,
                   help="the table has no header row: name columns by 0-based index")


def add_executor_flags(p) -> None:
    """How a grid of runs is executed (``reproduce``, ``cv``): here, or one submitit job per run."""
    g = p.add_argument_group("jobs (submitit: the 'cluster' extra)")
    g.add_argument("--executor", choices=["local", "slurm"], help="one job per run through submitit: local "
                   "processes, or SLURM jobs (default: every run in this process, one after another)")
    g.add_argument("--parallel", type=int, default=2, help="jobs running at once (default 2)")
    g.add_argument("--slurm-partition", metavar="NAME", help="SLURM: sbatch --partition")
    g.add_argument("--gpus-per-job", type=int, default=0, help="SLURM: sbatch --gpus-per-node (default 0)")
    g.add_argument("--cpus-per-job", type=int, default=4, help="SLURM: sbatch --cpus-per-task (default 4)")
    g.add_argument("--time-limit", type=int, default=240, metavar="MIN",
                   help="minutes per job (SLURM: sbatch --time; default 240)")


def executor_options(args) -> dict:
    from .executors import SlurmOptions

    if args.parallel < 1:
        raise ValueError(f"--parallel must be at least 1, got {args.parallel}")
    slurm = SlurmOptions(partition=args.slurm_partition, gpus_per_job=args.gpus_per_job,
                         cpus_per_job=args.cpus_per_job, time_min=args.time_limit)
    return {"executor": args.executor, "parallel": args.parallel, "slurm": slurm}


def source_options_from_args(args) -> dict:
    """The source options the command line gives (:data:`deepsets.data.tasks.SOURCE_OPTIONS`: the flags of
    :func:`add_source_flags`, and ``--key`` where a command has it)."""
    from ..data.tasks import SOURCE_OPTIONS

    opts = {k: getattr(args, k, None) for k in SOURCE_OPTIONS}
    if opts.get("channel_map"):
        from ..data.sources import parse_channel_map

        opts["channel_map"] = parse_channel_map(opts["channel_map"])
    return {k: v for k, v in opts.items() if v is not None}


def add_train_commands(sub) -> None:
    p = sub.add_parser("train", help="train a model on a task or on your own sets (--data, --target)",
                       description="Train a set model. Values come from --config (YAML), then these flags; "
                                   "the resolved config is saved as OUT/config.yaml.")
    _add_training_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run files in an existing --out")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("cv", help="K-fold cross-validation (stratified for classification) -> OUT/cv.json",
                       description="Cross-validate: every fold trains on the other folds (with the train flags) "
                                   "and is tested on its held-out sets; writes OUT/cv.json and OUT/fold-K/.")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--overwrite", action="store_true", help="replace a cross-validation with other settings in --out")
    _add_training_flags(p)
    add_executor_flags(p)
    p.set_defaults(func=_cmd_cv)

    p = sub.add_parser("tune", help="hyperparameter search (Optuna) scored by nested cross-validation -> OUT/tune.json",
                       description="For each outer fold, an Optuna study searches the settings not given as flags "
                                   "(depth, dim, lr, weight decay, batch size, pooling), each scored by inner "
                                   "cross-validation on the outer fold's training sets only; the best is tested on "
                                   "the held-out fold. The 'tune' extra (Optuna).")
    p.add_argument("--folds", type=int, default=5, help="outer folds (default 5)")
    p.add_argument("--inner-folds", type=int, default=3, help="inner folds scoring each trial (default 3)")
    p.add_argument("--trials", type=int, default=20, help="settings tried per outer fold (default 20)")
    p.add_argument("--overwrite", action="store_true", help="replace a search with other settings in --out")
    _add_training_flags(p)
    add_executor_flags(p)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("eval", help="test metrics of a checkpoint (table + JSON)",
                       description="Test metrics of a checkpoint on the task's test split, or on --data in any "
                                   "source format (the training run's set/label columns and features are kept).")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="test data in any source format (default: the data the model was trained on)")
    add_task_flag(p)
    add_subset_flags(p)
    p.add_argument("--set-sizes", nargs="+", type=int, metavar="N",
                   help="also evaluate with every set cut to each of these sizes (a random subset; smaller sets stay "
                        "whole): the set-size generalisation report (table, JSON, plot)")
    p.add_argument("--plot", metavar="FILE.png", help="with --set-sizes: the metric against the set size (default: "
                                                       "beside --json as .png)")
    p.add_argument("--json", dest="json_out", help="also write the result to this JSON file")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="your own data: evaluate the sets that can be read and list the others (damaged files) on "
                        "standard error (default: list every unreadable one and stop)")
    add_source_flags(p)
    p.set_defaults(func=_cmd_eval)


def add_task_flag(p) -> None:
    """``--task`` of the commands that open a checkpoint (eval, predict, export)."""
    p.add_argument("--task", metavar="TASK", help="the checkpoint's task, named again (checked against it): a task "
                   "given as code (file.py:NAME, module:NAME) is only imported when named here")


def add_subset_flags(p) -> None:
    """How sets larger than the model's training set size are predicted (eval, predict)."""
    g = p.add_argument_group("sets larger than the training set size")
    g.add_argument("--subsets", type=int, metavar="K", help="predict a set larger than the training set size as the "
                   "mean over K random subsets of that size (default: 10 for sum-pooled models, whole sets for "
                   "size-consistent poolings: mean, max, attention)")
    g.add_argument("--subset-seed", type=int, default=0, metavar="S", help="seed of the random subsets (default 0)")
    g.add_argument("--whole-sets", action="store_true", help="predict every set whole (exact chunked inference for "
                   "large sets), whatever the pooling")


def subsets_from_args(args) -> int | None:
    if getattr(args, "whole_sets", False):
        if args.subsets:
            raise ValueError("--whole-sets and --subsets K contradict each other; give one")
        return 0
    return args.subsets


def _add_training_flags(p) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of TrainConfig keys (flags override it)")
    add_config_flags(p)
    add_source_flags(p)


def _scalar_type(name: str, tp):
    import typing

    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    if len(args) == 1 and args[0] in (int, float, str):
        return args[0]
    raise TypeError(f"TrainConfig.{name}: annotation {tp} has no flag type; give one in its metadata (type=...)")


def key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (KEY, VALUE as an int, float, bool or None where it reads as one, else the string)."""
    import argparse

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for convert in (int, float):
        try:
            return key, convert(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False, "none": None, "null": None}.get(value.lower(), value)


def add_config_flags(p) -> None:
    """One flag per field of :class:`TrainConfig` with a flag (see the metadata in :mod:`deepsets.train.config`).

    Every flag defaults to None, so a flag that is not given leaves the ``--config`` file's value (or the field's
    default) in place. ``--n-train`` / ``--n-test`` (generated data sizes) go to ``task_options``.
    """
    import typing
    from dataclasses import MISSING

    from .config import DATA, TrainConfig, flag_fields

    hints = typing.get_type_hints(TrainConfig)
    groups: dict = {}
    for f in flag_fields():
        meta, tp = f.metadata, hints[f.name]
        title = meta.get("group")
        g = groups[title] if title in groups else groups.setdefault(title, p.add_argument_group(title))
        text = meta.get("help", "")
        if "names" in meta:
            text = text.replace("{names}", ", ".join(meta["names"]()))
        if f.default is not MISSING and f.default is not None and tp is not bool and "default" not in text:
            text += f" (default {f.default})"
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        kw = {"dest": f.name, "default": None, "help": text.replace("%", "%%")}
        if tp is bool:
            if f.default:
                flag = meta.get("flag") or "--no-" + f.name.replace("_", "-")
            kw["action"] = "store_false" if f.default else "store_true"
        elif tp is dict:
            kw.update(action="append", type=key_value, metavar=meta.get("metavar", "KEY=VALUE"))
        else:
            kw["type"] = meta.get("type") or _scalar_type(f.name, tp)
            if "choices" in meta:
                kw["choices"] = list(meta["choices"]())
            if "metavar" in meta:
                kw["metavar"] = meta["metavar"]
            if "nargs" in meta:
                kw["nargs"] = meta["nargs"]
        g.add_argument(flag, **kw)
    g = groups.get(DATA, p)
    g.add_argument("--n-train", type=int, help="number of generated/simulated training sets")
    g.add_argument("--n-test", type=int, help="number of generated/simulated test sets")


def config_from_args(args):
    """The run's :class:`TrainConfig`: the ``--config`` file (if any), then every flag that was given."""
    from .config import TrainConfig, flag_fields

    overrides, merged = {}, {}
    for f in flag_fields():
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if f.default_factory is dict:
            merged[f.name] = dict(value)  # KEY=VALUE flags extend the config file's mapping
        else:
            overrides[f.name] = value
    source = args.config or "command line"
    cfg = TrainConfig.load(args.config, **overrides) if args.config else TrainConfig.from_dict(overrides, source)
    for name, extra in merged.items():
        setattr(cfg, name, {**(getattr(cfg, name) or {}), **extra})
    opts = source_options_from_args(args)
    opts.update({k: v for k, v in {"n_train": args.n_train, "n_test": args.n_test}.items() if v is not None})
    cfg.task_options = {**cfg.task_options, **opts}
    return cfg.check_choices(source)


def given_fields(args) -> set[str]:
    """The config fields the command line sets: the given flags and the keys of the ``--config`` file."""
    from .config import flag_fields

    given = {f.name for f in flag_fields() if getattr(args, f.name, None) is not None}
    if args.config:
        import yaml

        given |= set(yaml.safe_load(open(args.config)) or {})  # read (and checked) by config_from_args first
    if source_options_from_args(args) or args.n_train is not None or args.n_test is not None:
        given.add("task_options")
    return given


def named_task(args, cfg) -> None:
    """A task given as code is imported only when the command line names it (``--task file.py:NAME``); one read
    from ``--config FILE.yaml`` is refused unless named again with --task (a resumed run's: see
    :func:`deepsets.train.fit.train`)."""
    from ..data.tasks import UntrustedTaskError, import_task, is_code

    if args.task is not None:
        import_task(args.task)
    elif args.config and is_code(cfg.task):
        raise UntrustedTaskError(cfg.task, f"{args.config} names", python="TrainConfig(task=...)")


def _cmd_train(args) -> int:
    from .callbacks import NonFiniteLossError
    from .fit import train
    from .folder import launched_worker

    cfg = config_from_args(args)
    named_task(args, cfg)
    changed = given_fields(args) if args.resume else None  # --resume: the saved run, changed only where flags say
    try:
        summary = train(cfg, resume=args.resume, overwrite=args.overwrite, changed=changed, trust_code=False)
    except NonFiniteLossError:
        if launched_worker():  # every process stopped at the same step; rank zero says so once
            return 1
        raise
    if launched_worker():  # the other DDP processes: the summary is rank zero's to print
        return 0
    final = summary["final"] or {}
    print(f"run folder: {summary['out']}  (epochs {summary['epochs_done']}, steps {summary['steps']})")
    if final:
        metric = summary.get("metric", "metric")
        print(f"final: train_loss {final['train_loss']:.5g}  val_loss {final['val_loss']:.5g}  "
              f"val_{metric} {final['val_metric']:.5g}")
    return 0


def _cmd_cv(args) -> int:
    from .cv import cross_validate

    cfg = config_from_args(args)
    named_task(args, cfg)
    result = cross_validate(cfg, folds=args.folds, overwrite=args.overwrite, trust_code=False,
                            **executor_options(args))
    print(f"{result['metric']} {result['mean']:.4g} +- {result['se']:.2g} (mean +- s.e. over {args.folds} folds); "
          f"wrote {result['path']}")
    others = [f"{name} {m['mean']:.4g} +- {m['se']:.2g}" for name, m in result.get("metrics", {}).items()
              if name != result["metric"]]
    if others:
        print("other metrics: " + "; ".join(others))
    return 0


def _cmd_tune(args) -> int:
    from .tune import tune

    cfg = config_from_args(args)
    named_task(args, cfg)
    result = tune(cfg, folds=args.folds, inner_folds=args.inner_folds, trials=args.trials, overwrite=args.overwrite,
                  trust_code=False, **executor_options(args))
    print(f"{result['metric']} {result['mean']:.4g} +- {result['se']:.2g} (nested: mean +- s.e. over "
          f"{result['k']} outer folds, each tuned on its training sets only); wrote {result['path']}")
    if result["recommended"]:
        print("most often best: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in result["recommended"].items()))
    return 0


def _cmd_eval(args) -> int:
    import sys

    from ..checkpoint import open_checkpoint
    from ..files import refuse_input_as_output, write_json
    from .evaluation import evaluate, format_table

    inputs = {"--checkpoint": args.checkpoint, "--data": args.data, "--labels": args.labels}
    refuse_input_as_output(args.json_out, inputs, "--json")
    refuse_input_as_output(args.plot, inputs, "--plot")
    if args.json_out and args.set_sizes and not args.plot:  # the plot beside --json
        refuse_input_as_output(str(Path(args.json_out).with_suffix(".png")), inputs, "--json (its .png plot)")
    ckpt = open_checkpoint(args.checkpoint, task=args.task)  # --task: the checkpoint's task, named again
    result = evaluate(ckpt, data=args.data, subsets=subsets_from_args(args),
                      task_options=source_options_from_args(args), seed=args.subset_seed, set_sizes=args.set_sizes,
                      echo=lambda line: print(line, file=sys.stderr), skip_unreadable=args.skip_unreadable)
    sizes = result.pop("set_sizes", None)
    if args.data is None and not ckpt.task.paper:  # (evaluate has checked the task is a registered one)
        print("note: no --data: evaluated on the data the model was trained on (its test split where the data "
              "define one, else every set); pass --data TEST_FILE for held-out sets", file=sys.stderr)
    print(format_table({k: v for k, v in result.items() if k != "prediction"}))  # (said on stderr)
    if sizes:
        from .set_sizes import format_report, plot_report

        result["set_sizes"] = sizes
        print(format_report(sizes))
        plot = args.plot or (str(Path(args.json_out).with_suffix(".png")) if args.json_out else None)
        if plot:
            plot_report(sizes, plot, title=f"{result['model']} on {args.data or 'its data'}")
            print(f"wrote {plot}", file=sys.stderr)
    print(json.dumps(result))
    if args.json_out:
        write_json(args.json_out, result)
    return 0


def add_experiment_commands(sub) -> None:
    p = sub.add_parser("predict", help="one prediction per set of a file (table, .h5ad, FCS, HDF5, .npy) -> CSV",
                       description="One prediction per set, keyed by the set id, as CSV. Whole sets are used; the "
                                   "training run's set column and features are the defaults.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="a table (.csv/.tsv/.parquet), .h5ad, .fcs/.lmd or a folder of them "
                                                  "(one set per file), .h5/.hdf5 or .npy [sets, elements, features]")
    p.add_argument("--output", help="CSV file (default: print to standard output); not the --input or --checkpoint")
    p.add_argument("--no-csv-escape", dest="csv_escape", action="store_false",
                   help="write text cells starting with = + - @ as they are (default: a leading ' so that a "
                        "spreadsheet shows them as text, not formulas; numbers are never changed)")
    add_source_flags(p, labels=False)
    p.add_argument("--key", help="HDF5 dataset key (default: the first of test_data, data, train_data, ...)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--skip-unreadable", action="store_true",
                   help="predict the sets that can be read and list the others (damaged files, empty sets) on "
                        "standard error; they are left out of the CSV (default: list every unreadable one and stop)")
    add_task_flag(p)
    add_subset_flags(p)
    p.set_defaults(func=_cmd_predict)

    from .reproduce import BUDGETS, config_root

    p = sub.add_parser("reproduce", help="run a table of the paper and write results.md beside the paper's numbers")
    p.add_argument("table", choices=sorted(d.name for d in config_root().iterdir() if d.is_dir()))
    p.add_argument("--budget", default="smoke", choices=list(BUDGETS), help="smoke: 2 steps per cell (checks the grid "
                   "runs); cpu: Adam 1e-4, batch 32, 600 steps (1500 on MNIST Var), sets of 100, 3 seeds (minutes per "
                   "run on a CPU); paper: the paper's epochs and full sets (default smoke)")
    p.add_argument("--tasks", nargs="+", help="only these tasks' columns (default: all of the table's)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds per cell (default: the budget's)")
    p.add_argument("--cells", nargs="+", metavar="GLOB", help="only the cells whose config name matches (e.g. "
                                                             "'ds-clean-*'; names: configs/paper/TABLE/*.yaml)")
    p.add_argument("--out", help="output folder (default runs/reproduce-TABLE-BUDGET)")
    add_executor_flags(p)
    p.set_defaults(func=_cmd_reproduce)


def _cmd_predict(args) -> int:
    import sys

    from ..checkpoint import open_checkpoint
    from ..files import refuse_input_as_output
    from .predict import predict_file

    refuse_input_as_output(args.output, {"--input": args.input, "--checkpoint": args.checkpoint})
    ckpt = open_checkpoint(args.checkpoint, task=args.task)  # --task: the checkpoint's task, named again
    text, n = predict_file(ckpt, args.input, args.output, batch_size=args.batch_size,
                           subsets=subsets_from_args(args), seed=args.subset_seed, csv_escape=args.csv_escape,
                           skip_unreadable=args.skip_unreadable, echo=lambda line: print(line, file=sys.stderr),
                           **source_options_from_args(args))
    if args.output:
        print(f"wrote {n} prediction{'s' if n != 1 else ''} to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_reproduce(args) -> int:
    import shlex
    import sys

    from .reproduce import reproduce

    command = "deepsets " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""
    path = reproduce(args.table, args.budget, args.tasks, args.seeds, args.out, command=command, cells=args.cells,
                     **executor_options(args))
    print(path.read_text())
    print(f"wrote {path}")
    return 0
