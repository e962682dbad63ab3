"""Training, evaluation and prediction on PyTorch Lightning.

``TrainConfig`` is light; ``train``, ``evaluate``, ``load_checkpoint`` and ``predict_dataset`` import Lightning (or
the model code) when first used, so ``deepsets --help`` and the commands that do not train start quickly.

Modules: :mod:`.config` (the run's configuration), :mod:`.folder` (the run folder, resuming), :mod:`.guard` (lock,
signals, full disks), :mod:`.datamodule` (the task and its training sets), :mod:`.module` (the Lightning module),
:mod:`.callbacks`, :mod:`.loggers`, :mod:`.fit` (training one model), :mod:`.evaluation`, :mod:`.predict` (the
``predict`` command's files), :mod:`.cv`, :mod:`.tune`, :mod:`.reproduce`, :mod:`.cli`.
"""
import warnings

# Lightning imports torch's pytree in a way torch 2.13 deprecates; harmless, and printed on every command.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
from .config import TrainConfig  # noqa: E402

__all__ = ["TrainConfig", "train", "evaluate", "load_checkpoint", "predict_dataset"]


def __getattr__(name):
    if name == "train":
        from .fit import train

        return train
    if name in ("evaluate", "load_checkpoint"):
        from . import evaluation

        return getattr(evaluation, name)
    if name == "predict_dataset":
        from ..inference import predict_dataset

        return predict_dataset
    raise AttributeError(f"module 'deepsets.train' has no attribute {name!r}")
