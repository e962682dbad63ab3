"""Run configuration: one dataclass, loaded from YAML, overridden from the command line, saved with every run.

Each field's ``metadata`` describes its command-line flag (``deepsets train`` and ``deepsets cv`` build their
flags from the fields, see :func:`deepsets.train.cli.add_config_flags`):

* ``help``: the help text (for a bool: of the flag that flips its default); ``{names}`` in it is replaced by
  the names ``names()`` returns.
* ``choices``: a function returning the valid values (a registry, read when the parser is built); the same
  check applies to values from a YAML file (:meth:`TrainConfig.check_choices`).
* ``group``: the help section; ``metavar``, ``type``: as in argparse (``type`` defaults from the annotation).
* ``flag``: ``False`` for a field with no flag, or the flag's name where it differs from ``--field-name``.
"""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ..files import atomic_write_text


# ------------------------------------------------------------------ registries (imported when first asked)
def model_names() -> list[str]:
    from ..models.registry import list_models

    return list_models()


def norm_names() -> list[str]:
    from .. import nn

    return list(nn.NORMS)


RESIDUAL_NAMES = ("clean", "nonclean", "none")  # none: the Deep Sets baseline (no residual connection)


def residual_names() -> list[str]:
    return list(RESIDUAL_NAMES)


def pool_names() -> list[str]:
    from .. import nn

    return [*nn.POOLS, "pma"]  # Deep Sets family: nn.POOLS; Set Transformer family: pma (attention pooling)


def target_names() -> list[str]:
    from ..data.targets import TARGETS

    return [t for t in TARGETS if t != "elements"]  # per-element targets need a task of their own


def task_names() -> list[str]:
    from ..data import list_tasks

    return list_tasks()


def logger_names() -> list[str]:
    from .loggers import LOGGERS

    return list(LOGGERS)


REGIMES = ("paper", "small", "auto")


def int_or_str(v: str):
    return int(v) if v.isdigit() else v


def cli(help: str = "", **meta) -> dict:
    """A field's ``metadata``: the description of its command-line flag (see the module docstring)."""
    return {"help": help, **meta}


DATA, MODEL, OPTIM, HARDWARE, RUN = ("task and data", "model (default: the preset's paper values)", "optimisation",
                                     "hardware (PyTorch Lightning)", "run folder and output")


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "the default of the task or model preset"."""

    task: str | None = field(default=None, metadata=cli(
        "the task: {names}, or module:NAME / file.py:NAME for a task of your own (default: from --target / "
        "--data; normal-var without --data)", names=task_names, group=DATA))
    target: str | None = field(default=None, metadata=cli(
        "your own sets: what to predict per set (no --task needed; default: classification for string or boolean "
        "labels and labels with two distinct values, regression otherwise)", choices=target_names, group=DATA))
    # model overrides (None: the preset's paper default; pool None: the task's pooling for Deep Sets)
    model: str = field(default="deepsets++", metadata=cli(
        "a registered model (deepsets models lists them)", choices=model_names, group=MODEL))
    depth: int | None = field(default=None, metadata=cli("number of encoder layers", group=MODEL))
    dim: int | None = field(default=None, metadata=cli("hidden width", group=MODEL))
    norm: str | None = field(default=None, metadata=cli("normalization layer", choices=norm_names, group=MODEL))
    residual: str | None = field(default=None, metadata=cli(
        "residual connections (none: Deep Sets family only)", choices=residual_names, group=MODEL))
    pool: str | None = field(default=None, metadata=cli(
        "pooling over the set (sum | mean | max: Deep Sets family, default the task's; pma: Set Transformer "
        "family)", choices=pool_names, group=MODEL))
    model_options: dict = field(default_factory=dict, metadata=cli(
        "any other create_model option, e.g. heads=4 (repeatable)", flag="--model-option", metavar="KEY=VALUE",
        group=MODEL))
    # optimisation (paper: Adam, lr 1e-4, batch 64, 50 epochs; 30 for hematocrit)
    epochs: int | None = field(default=None, metadata=cli(
        "training epochs (default: the paper's for the task: 50; 30 for hematocrit)", group=OPTIM))
    max_steps: int = field(default=-1, metadata=cli("stop after this many optimizer steps (-1: no limit)",
                                                    group=OPTIM))
    batch_size: int | None = field(default=None, metadata=cli(
        "sets per batch (default: the regime's: 64 paper, 16 small)", group=OPTIM))
    lr: float | None = field(default=None, metadata=cli(
        "learning rate of Adam (default: the regime's: 1e-4 paper, 1e-3 small)", group=OPTIM))
    weight_decay: float | None = field(default=None, metadata=cli(
        "decoupled weight decay (AdamW; default: the regime's: 0 paper, small: see --regime)", group=OPTIM))
    ensemble: int | None = field(default=None, metadata=cli(
        "train this many members (seeds SEED, SEED+1, ...) saved and used as one model that averages their "
        "probabilities / predictions (default: the regime's: 1 paper)", metavar="K", group=OPTIM))
    regime: str | None = field(default=None, metadata=cli(
        "training recipe for the unset flags: paper (the paper's settings), small (shallow, regularised, early "
        "stopping: few sets), auto (your own data: small under 2,000 training sets, else paper; the paper's tasks: "
        "paper)", choices=lambda: list(REGIMES), group=OPTIM))
    seed: int = field(default=0, metadata=cli("seed of the initialization, the validation split and the subsets",
                                              group=OPTIM))
    grad_clip: float | None = field(default=None, metadata=cli(
        "clip the gradient norm to this value (default: no clipping)", group=OPTIM))
    metric: str | None = field(default=None, metadata=cli(
        "choose the best epoch (best.ckpt) by this validation metric: {names}; cv reports it (default: the "
        "validation loss; cv reports mse / accuracy)", names=lambda: __import__(
            "deepsets.metrics", fromlist=["selection_names"]).selection_names(),
        choices=lambda: __import__("deepsets.metrics", fromlist=["selection_names"]).selection_names(),
        metavar="NAME", group=OPTIM))
    patience: int | None = field(default=None, metadata=cli(
        "stop training after this many validations without improvement of --metric (or of the validation loss) "
        "(default: the regime's; paper: no early stopping)", metavar="N", group=OPTIM))
    # data
    data: str | None = field(default=None, metadata=cli(
        "a table (.csv/.tsv/.parquet), .h5ad, folder of .fcs files, .npy/.h5, or a task's real-format file "
        "(default: the task's offline data)", group=DATA))
    set_size: int | None = field(default=None, metadata=cli(
        "elements per set the model sees; larger sets are subsampled (default: the task's)", group=DATA))
    fixed_subset: bool = field(default=False, metadata=cli(
        "one fixed subset per set (as the paper's code) instead of a fresh one per epoch", group=DATA))
    val_fraction: float = field(default=0.1, metadata=cli("share of the training sets held out for validation",
                                                          group=DATA))
    eval_subsets: int | None = field(default=None, metadata=cli(
        "at test time, average predictions over this many random subsets of the training set size per set "
        "larger than that (default: 1 for the paper's tasks; your own data: 10 when the model's pooling is not "
        "size-consistent (sum), else whole sets)", metavar="K", group=DATA))
    transform: list | None = field(default=None, metadata=cli(
        "element transform stored in the model: arcsinh[:COFACTOR] | log1p | none, for every feature, then "
        "FEATURE=SPEC for single ones (default: FCS input arcsinh, cofactor 150 for flow, 5 for mass cytometry; "
        "else none)", nargs="+", metavar="SPEC", type=str, group=DATA))
    standardize: bool = field(default=True, metadata=cli(
        "do not standardise the features (your own data: each feature's mean and standard deviation over the "
        "training elements, after --transform, stored in the model)", group=DATA))
    # passed to deepsets.data.load_task (n_train, set_column, ...); flags: --n-train, --n-test, the source flags
    task_options: dict = field(default_factory=dict, metadata=cli(flag=False))
    num_workers: int = field(default=0, metadata=cli("data-loading worker processes", group=DATA))
    # hardware (PyTorch Lightning)
    accelerator: str = field(default="auto", metadata=cli("cpu | gpu | auto | ...", group=HARDWARE))
    devices: int | str = field(default=1, metadata=cli("number of devices (or 'auto')", type=int_or_str,
                                                       group=HARDWARE))
    strategy: str = field(default="auto", metadata=cli("auto | ddp | ...", group=HARDWARE))
    num_nodes: int = field(default=1, metadata=cli("number of nodes (DDP)", group=HARDWARE))
    precision: str = field(default="32-true", metadata=cli("32-true | bf16-mixed | 16-mixed | ...", group=HARDWARE))
    # bookkeeping
    out: str | None = field(default=None, metadata=cli("run folder (default runs/TASK-MODEL-dDEPTH-sSEED)",
                                                       group=RUN))
    eval_every: int = field(default=1, metadata=cli("validate (and checkpoint) every this many epochs", group=RUN))
    progress: bool = field(default=True, metadata=cli("show no progress bar", group=RUN))
    logger: str | None = field(default=None, metadata=cli(
        "also log to this Lightning logger: {names} (extras; metrics.csv is always written)", names=logger_names,
        choices=logger_names, group=RUN))
    logger_uri: str | None = field(default=None, metadata=cli(
        "where the logger writes: a folder for csv/tensorboard (default OUT), an MLflow tracking URI (default "
        "sqlite:///OUT/mlflow.db; e.g. http://HOST:5000), a wandb project (default deepsets)", metavar="URI",
        group=RUN))
    # for configs/paper/: table, row, column, the paper's number
    paper: dict = field(default_factory=dict, metadata=cli(flag=False))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        valid = cls.field_names()
        unknown = sorted(set(values) - set(valid))
        if unknown:
            hints = [f"{k!r} -> {m[0]!r}" for k in unknown if (m := difflib.get_close_matches(str(k), valid, 1))]
            hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
            raise ValueError(f"{source}: unknown key(s) {unknown}{hint}; valid keys: {', '.join(valid)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path, **overrides) -> TrainConfig:
        """Read a YAML file, then apply every override that is not None."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file does not exist: {p}")
        try:
            values = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{p}: expected a mapping of config keys, found {type(values).__name__}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values, source=str(p))

    @classmethod
    def of_checkpoint(cls, hparams: dict) -> TrainConfig:
        """The config a checkpoint's run was trained with (its ``hyper_parameters``; checkpoints without one: the
        task alone)."""
        return cls.from_dict(hparams["train_config"]) if hparams.get("train_config") else cls(task=hparams["task"])

    def check_choices(self, source: str = "config") -> TrainConfig:
        """Raise ValueError naming the field, the value and the valid choices for a value outside its registry."""
        for f in fields(self):
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            if value is None or choices is None:
                continue
            valid = choices()
            if value not in valid:
                near = difflib.get_close_matches(str(value), [str(v) for v in valid], 1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ValueError(f"{source}: unknown {f.name} {value!r}{hint}; valid choices: "
                                 f"{', '.join(map(str, valid))}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def flag_fields() -> list:
    """The fields of :class:`TrainConfig` that have a command-line flag, in order."""
    return [f for f in fields(TrainConfig) if f.metadata.get("flag", True) is not False]
