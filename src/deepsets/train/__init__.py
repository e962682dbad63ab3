"""Training, evaluation and prediction on PyTorch Lightning."""
import warnings

# Lightning imports torch's pytree in a way torch 2.13 deprecates; harmless, and printed on every command.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
from .config import TrainConfig
from .run import evaluate, load_checkpoint, predict_dataset, train

__all__ = ["TrainConfig", "train", "evaluate", "load_checkpoint", "predict_dataset"]
