"""Training, evaluation and prediction on PyTorch Lightning.

``TrainConfig`` is light; ``train``, ``evaluate``, ``load_checkpoint`` and ``predict_dataset`` import Lightning
when first used, so ``deepsets --help`` and the commands that do not train start quickly.
"""
import warnings

# Lightning imports torch's pytree in a way torch 2.13 deprecates; harmless, and printed on every command.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
from .config import TrainConfig  # noqa: E402

__all__ = ["TrainConfig", "train", "evaluate", "load_checkpoint", "predict_dataset"]


def __getattr__(name):
    if name in ("train", "evaluate", "load_checkpoint", "predict_dataset"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'deepsets.train' has no attribute {name!r}")
