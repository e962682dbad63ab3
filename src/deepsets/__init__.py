"""deepsets: deep learning on sets.

Deep Sets++ and Set Transformer++ (set norm + clean-path residual connections), the Deep Sets and Set
Transformer baselines, the paper's tasks, training and experiments (Zhang et al., ICML 2022).
"""
from . import nn
from .models import count_parameters, create_model, list_models

__version__ = "0.1.0"
__all__ = ["nn", "create_model", "list_models", "count_parameters", "from_pretrained", "explain", "SetClassifier", "SetRegressor",
           "__version__"]


def __getattr__(name):  # the estimators import scikit-learn and Lightning: only when asked for
    if name in ("SetClassifier", "SetRegressor"):
        from . import estimators

        return getattr(estimators, name)
    if name == "explain":
        from .attribution import explain

        return explain
    if name == "from_pretrained":
        from .hub import from_pretrained

        return from_pretrained
    if name == "data":
        import importlib

        return importlib.import_module(".data", __name__)
    raise AttributeError(f"module 'deepsets' has no attribute {name!r}")
