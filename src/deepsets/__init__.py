"""deepsets: deep learning on sets.

Deep Sets++ and Set Transformer++ (set norm + clean-path residual connections), the Deep Sets and Set
Transformer baselines, the paper's tasks, training and experiments (Zhang et al., ICML 2022).
"""
from . import nn
from ._version import __version__
from .factory import create_model, from_pretrained
from .models.base import count_parameters
from .models.registry import list_models

__all__ = ["nn", "create_model", "list_models", "count_parameters", "from_pretrained", "explain", "SetClassifier", "SetRegressor",
           "__version__"]


def __getattr__(name):  # the estimators import scikit-learn and Lightning: only when asked for
    if name in ("SetClassifier", "SetRegressor"):
        from . import estimators

        return getattr(estimators, name)
    if name == "explain":
        from .attribution import explain

        return explain
    if name == "data":
        import importlib

        return importlib.import_module(".data", __name__)
    raise AttributeError(f"module 'deepsets' has no attribute {name!r}")
