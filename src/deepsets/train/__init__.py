"""Training, evaluation and prediction on PyTorch Lightning."""
from .config import TrainConfig
from .run import evaluate, load_checkpoint, predict_dataset, train

__all__ = ["TrainConfig", "train", "evaluate", "load_checkpoint", "predict_dataset"]
