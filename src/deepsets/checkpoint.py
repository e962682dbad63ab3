"""A training checkpoint, read once: the file checked, its model built (on the default backend) and its
description at hand, without Lightning.

``eval``, ``predict``, ``export`` and ``explain`` open a checkpoint with :func:`open_checkpoint` and pass the
:class:`Checkpoint` down; training wraps one in its Lightning module (``deepsets.train.load_checkpoint``).
Nothing in a checkpoint runs code: it is loaded with ``weights_only=True``, and a task given as code that it
records is imported only when the caller names it (``--task``, ``trust_code``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .data.targets import Target, get_target
from .data.tasks import Task, is_code, recorded_task
from .factory import create_model
from .models.base import SetModel

PREFIX = "model."  # the training module's state_dict keys: its set model's, under this prefix
#: the losses that checkpoints of earlier versions name instead of their target
LOSSES = {"mse": "regression", "ce": "classification", "ce_elements": "elements"}


def load_file(path: str | Path, map_location="cpu") -> dict:
    """The contents of a checkpoint file (tensors and plain values only: ``weights_only=True``); a folder, a missing
    file or one that cannot be read gives ``ValueError`` / ``FileNotFoundError`` naming the file."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p}: expected a checkpoint file (.ckpt), found a folder")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint does not exist: {p}")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0].split(". ")[0][:200] if str(e).strip() else ""
        raise ValueError(f"{p}: not a readable checkpoint (corrupt or truncated?): {type(e).__name__}: "
                         f"{first}") from None


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The contents of a deepsets checkpoint file, checked; a missing, corrupt or foreign file gives a clear
    error (``FileNotFoundError`` or ``ValueError`` naming the file)."""
    ckpt = load_file(path, map_location)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "model" not in hp or "model_kwargs" not in hp or "state_dict" not in ckpt:
        found = sorted(map(str, ckpt))[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a deepsets training checkpoint (expected hyper_parameters with a model "
                         f"description and a state_dict, found {found})")
    return ckpt


@dataclass
class Checkpoint:
    """A checkpoint's model (in eval mode), what its run recorded (``hparams``: ``model``, ``model_kwargs``,
    ``task``, ``target``, ``train_config``, ``data_info``, ...) and ``task``, the registered
    :class:`~deepsets.data.Task` it was trained on (``None`` for a task this process does not know). ``hparams``, ``target`` and ``model`` read as
    those of the training module, so code taking one takes the other."""

    path: str | Path  # as given
    hparams: dict
    model: SetModel
    target: Target
    task: Task | None = None

    @property
    def data_info(self) -> dict:
        return self.hparams.get("data_info") or {}

    @property
    def train_config(self) -> dict | None:
        return self.hparams.get("train_config")

    def pretrained_info(self) -> dict:
        """What a Hub folder records of the run (``config.json``'s ``data``): its data, task and target."""
        return {**self.data_info, "task": self.hparams.get("task"), "target": self.hparams.get("target")}


def named_task(path, recorded, task: str | None) -> bool:
    """``--task`` of ``eval``/``predict``/``export``/``explain``: the checkpoint's task named again, which trusts it
    (a task given as code is then imported). Another task than the checkpoint's is refused."""
    if task is None:
        return False
    if recorded != task:
        raise ValueError(f"{path}: the checkpoint was trained on task {recorded!r}, not {task!r}"
                         + (f"; to run its task give --task {recorded}" if is_code(recorded) else ""))
    return True


def target_of(hp: dict) -> Target:
    """The target a checkpoint's model was trained for; checkpoints of earlier versions name their loss instead
    (``mse``, ``ce``, ``ce_elements``)."""
    name = hp.get("target") or LOSSES.get(hp.get("loss"), hp.get("loss"))
    if name is None:
        raise ValueError("the checkpoint names no target (regression, classification or elements)")
    return get_target(name)


def open_checkpoint(path: str | Path, trust_code: bool = False, task: str | None = None,
                    map_location="cpu") -> Checkpoint:
    """Read the checkpoint at ``path`` once and build its model; a missing, corrupt or foreign file, or weights
    that do not fit the model it describes, give a clear error naming the file.

    A checkpoint trained with a task given as code (``file.py:NAME`` / ``module:NAME``) that is not registered in
    this process raises :class:`~deepsets.data.UntrustedTaskError`, unless ``trust_code`` or ``task`` names that
    task again (``--task``: see :func:`named_task`); then it is imported."""
    p = Path(path)
    contents = read_checkpoint(path, map_location)
    hp = contents["hyper_parameters"]
    trust = named_task(p, hp.get("task"), task) or trust_code
    task = recorded_task(hp.get("task"), f"checkpoint {p} was trained with", trust)
    try:
        target = target_of(hp)
        model = create_model(hp["model"], **hp["model_kwargs"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{p}: the model described in the checkpoint cannot be built: {e}") from None
    state = contents["state_dict"]
    try:
        foreign = [k for k in state if not k.startswith(PREFIX)]
        if foreign:
            raise RuntimeError(f"Error(s) in loading state_dict:\n\tUnexpected key(s) in state_dict: "
                               f"{', '.join(map(repr, foreign[:4]))}.")
        model.load_state_dict({k[len(PREFIX):]: v for k, v in state.items()})
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0] if first else ""
        raise ValueError(f"{p}: weights do not match the model described in the checkpoint (a checkpoint of a "
                         f"different model?): {detail[:300]}") from None
    return Checkpoint(path, hp, model.eval(), target, task)
