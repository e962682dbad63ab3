"""``deepsets train`` and ``deepsets eval``."""
from __future__ import annotations

import json


def _int_or_str(v: str):
    return int(v) if v.isdigit() else v


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


SOURCE_FLAGS = ("set_column", "label_column", "labels", "split_column", "features", "channels", "channel_map",
                "layer", "no_header")


def source_options_from_args(args) -> dict:
    opts = {k: getattr(args, k, None) for k in SOURCE_FLAGS}
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
    p.set_defaults(func=_cmd_cv)

    p = sub.add_parser("eval", help="test metrics of a checkpoint (table + JSON)",
                       description="Test metrics of a checkpoint on the task's test split, or on --data in any "
                                   "source format (the training run's set/label columns and features are kept).")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="test data in any source format (default: the data the model was trained on)")
    p.add_argument("--task", help="(checked against the checkpoint's task)")
    p.add_argument("--subsets", type=int, help="average predictions over this many random subsets per set")
    p.add_argument("--json", dest="json_out", help="also write the result to this JSON file")
    add_source_flags(p)
    p.set_defaults(func=_cmd_eval)


def _add_training_flags(p) -> None:
    from ..data.targets import TARGETS

    p.add_argument("--config", help="YAML file of TrainConfig keys")
    p.add_argument("--task", help="normal-var | mnist-var | point-cloud | hematocrit | anemia | set-anomaly | "
                                  "regression | classification, or module:NAME / file.py:NAME")
    p.add_argument("--target", choices=[t for t in TARGETS if t != "elements"],
                   help="your own sets: what to predict per set (no --task needed; default: classification for "
                        "string or boolean labels, regression otherwise)")
    p.add_argument("--model", help="deepsets | deepsets++ | settransformer | settransformer++")
    p.add_argument("--depth", type=int)
    p.add_argument("--dim", type=int)
    p.add_argument("--norm", help="set | layer | feature | none")
    p.add_argument("--residual", help="clean | nonclean | none")
    p.add_argument("--pool", help="sum | mean | max (Deep Sets family)")
    p.add_argument("--epochs", type=int, help="default: the paper's for the task (50; 30 for hematocrit)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--set-size", type=int, help="elements per set the model sees")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--data", help="a table (.csv/.tsv/.parquet), .h5ad, folder of .fcs files, .npy/.h5, or a "
                                  "task's real-format file (default: the task's offline data)")
    add_source_flags(p)
    p.add_argument("--n-train", type=int, help="number of generated/simulated training sets")
    p.add_argument("--n-test", type=int, help="number of generated/simulated test sets")
    p.add_argument("--fixed-subset", action="store_true", default=None)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--out", help="run folder (default runs/TASK-MODEL-dDEPTH-sSEED)")
    p.add_argument("--accelerator", help="cpu | gpu | auto")
    p.add_argument("--devices", type=_int_or_str, help="number of devices (or 'auto')")
    p.add_argument("--strategy", help="auto | ddp | ...")
    p.add_argument("--num-nodes", type=int)
    p.add_argument("--precision", help="32-true | bf16-mixed | 16-mixed | ...")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)


CONFIG_FLAGS = ["task", "target", "model", "depth", "dim", "norm", "residual", "pool", "epochs", "max_steps", "batch_size",
                "set_size", "lr", "seed", "grad_clip", "data", "fixed_subset", "eval_every", "num_workers", "out",
                "accelerator", "devices", "strategy", "num_nodes", "precision", "progress"]


def config_from_args(args):
    from .config import TrainConfig

    overrides = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k, None) is not None}
    opts = source_options_from_args(args)
    opts.update({k: v for k, v in {"n_train": args.n_train, "n_test": args.n_test}.items() if v is not None})
    cfg = TrainConfig.load(args.config, **overrides) if args.config else TrainConfig.from_dict(overrides, "command line")
    cfg.task_options = {**cfg.task_options, **opts}
    return cfg


def _cmd_train(args) -> int:
    from .run import train

    cfg = config_from_args(args)
    summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
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
    result = cross_validate(cfg, folds=args.folds, overwrite=args.overwrite)
    print(f"{result['metric']} {result['mean']:.4g} +- {result['se']:.2g} (mean +- s.e. over {args.folds} folds); "
          f"wrote {result['path']}")
    return 0


def _cmd_eval(args) -> int:
    from .run import evaluate, format_table, load_checkpoint, write_json

    if args.task:
        hp_task = load_checkpoint(args.checkpoint).hparams["task"]
        if hp_task != args.task:
            raise ValueError(f"{args.checkpoint}: the checkpoint was trained on task {hp_task!r}, not {args.task!r}")
    result = evaluate(args.checkpoint, data=args.data, subsets=args.subsets,
                      task_options=source_options_from_args(args))
    from ..data import get_task

    if args.data is None and not get_task(result["task"]).paper:
        import sys

        print("note: no --data: evaluated on the data the model was trained on (its test split where the data "
              "define one, else every set); pass --data TEST_FILE for held-out sets", file=sys.stderr)
    print(format_table(result))
    print(json.dumps(result))
    if args.json_out:
        write_json(args.json_out, result)
    return 0


def add_experiment_commands(sub) -> None:
    p = sub.add_parser("predict", help="one prediction per set of a file (table, .h5ad, FCS, HDF5, .npy) -> CSV",
                       description="One prediction per set, keyed by the set id, as CSV. Whole sets are used; the "
                                   "training run's set column and features are the defaults.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="a table (.csv/.tsv/.parquet), .h5ad, .fcs or a folder of them "
                                                  "(one set per file), .h5/.hdf5 or .npy [sets, elements, features]")
    p.add_argument("--output", help="CSV file (default: print to standard output)")
    add_source_flags(p, labels=False)
    p.add_argument("--key", help="HDF5 dataset key (default: the first of test_data, data, train_data, ...)")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("reproduce", help="run a table of the paper and write results.md beside the paper's numbers")
    p.add_argument("table", choices=["table1", "table2"])
    p.add_argument("--budget", default="smoke", choices=["smoke", "cpu", "paper"])
    p.add_argument("--tasks", nargs="+")
    p.add_argument("--seeds", nargs="+", type=int)
    p.add_argument("--out")
    p.set_defaults(func=_cmd_reproduce)


def _cmd_predict(args) -> int:
    import sys

    from .predict import predict_file

    text, n = predict_file(args.checkpoint, args.input, args.output, batch_size=args.batch_size, key=args.key,
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
    path = reproduce(args.table, args.budget, args.tasks, args.seeds, args.out, command=command)
    print(path.read_text())
    print(f"wrote {path}")
    return 0
