"""deepsets: deep learning on sets.

Deep Sets++ and Set Transformer++ (set norm + clean-path residual connections), the Deep Sets and Set
Transformer baselines, the paper's tasks, training and experiments (Zhang et al., ICML 2022).
"""
from . import nn
from .models import count_parameters, create_model, list_models

__version__ = "0.1.0"
__all__ = ["nn", "create_model", "list_models", "count_parameters", "__version__"]
