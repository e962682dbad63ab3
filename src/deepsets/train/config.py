"""Run configuration: one dataclass, loaded from YAML, overridden from the command line, saved with every run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "the default of the task or model preset"."""

    task: str | None = None  # a task of deepsets.data.TASKS; None: from target/data (normal-var without data)
    target: str | None = None  # regression | classification: your own sets (--data) with no --task needed
    model: str = "deepsets++"
    # model overrides (None: the preset's paper default; pool None: the task's pooling for Deep Sets)
    depth: int | None = None
    dim: int | None = None
    norm: str | None = None
    residual: str | None = None
    pool: str | None = None
    model_options: dict = field(default_factory=dict)  # any other create_model keyword (heads, num_inducing, ...)
    # optimisation (paper: Adam, lr 1e-4, batch 64, 50 epochs; 30 for hematocrit)
    epochs: int | None = None
    max_steps: int = -1  # stop after this many optimizer steps (-1: no limit)
    batch_size: int = 64
    lr: float = 1e-4
    seed: int = 0
    grad_clip: float | None = None
    # data
    data: str | None = None  # a real-format file/folder; None = the task's offline default
    set_size: int | None = None  # elements per set the model sees (None: the task's default)
    fixed_subset: bool = False  # one fixed subset per set (the paper's code) instead of a fresh one per epoch
    val_fraction: float = 0.1  # share of the training sets held out for validation
    eval_subsets: int = 1  # at test time, average predictions over this many random subsets per set
    task_options: dict = field(default_factory=dict)  # passed to deepsets.data.load_task (n_train, set_column, ...)
    num_workers: int = 0
    # hardware (PyTorch Lightning)
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    # bookkeeping
    out: str | None = None
    eval_every: int = 1  # validate (and checkpoint) every this many epochs
    progress: bool = True
    paper: dict = field(default_factory=dict)  # for configs/paper/: table, row, column, the paper's number

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "TrainConfig":
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; valid keys: {', '.join(cls.field_names())}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path, **overrides) -> "TrainConfig":
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

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
