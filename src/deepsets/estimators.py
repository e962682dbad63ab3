"""scikit-learn estimators over lists of sets: :class:`SetRegressor` and :class:`SetClassifier`.

``X`` is a list of float arrays ``[n_i, D]`` (sets may differ in size), ``y`` one label per set. ``fit`` trains
with the same Lightning training as ``deepsets train`` (validation hold-out, best checkpoint), so
``sklearn.model_selection.cross_val_score``, ``GridSearchCV`` and ``clone`` work on them::

    from deepsets import SetClassifier
    clf = SetClassifier(model="deepsets++", depth=8, epochs=30, lr=1e-3)
    clf.fit(train_sets, train_labels)          # labels of any type: strings, booleans, integers
    clf.predict(test_sets), clf.predict_proba(test_sets), clf.classes_

The constructor's arguments follow scikit-learn's conventions: each is a named parameter, stored as given and read
only by ``fit`` (``get_params`` / ``set_params`` are scikit-learn's own). Training: ``model``, ``depth``, ``epochs``,
``max_steps``, ``lr``, ``batch_size``, ``set_size``, ``seed``, ``val_fraction``, ``out`` (a run folder to keep;
default a temporary one), ``verbose``, ``weight_decay``, ``ensemble`` (K members, one model), ``patience`` (early
stopping), ``regime`` (``auto``: the recipe of ``deepsets train --regime``, which fills every argument left at
``None``), ``standardize`` and ``transform`` (the model's own preprocessing), ``subsets`` (how sets larger than the
training size are predicted). The ``create_model`` keywords of the registered families: ``dim``, ``norm``,
``residual``, ``pool`` (Deep Sets), ``heads``, ``num_inducing``, ``num_seeds`` (Set Transformer); ``None`` is the
preset's (or the task's) default; ``model_options``, a dict, holds any other (a family of your own).
scikit-learn is an optional dependency (``pip install 'deepsets[sklearn]'``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
except ImportError:  # pragma: no cover - the estimators need scikit-learn; the rest of deepsets does not
    class BaseEstimator:  # noqa: D101 - only so that `import deepsets` works without scikit-learn
        def __init__(self, *a, **k):
            raise ImportError("deepsets.SetRegressor / SetClassifier need scikit-learn: pip install 'deepsets[sklearn]'")

    ClassifierMixin = RegressorMixin = object

__all__ = ["SetClassifier", "SetRegressor"]

#: constructor arguments that are ``TrainConfig`` fields of the same name (``out``, ``set_size``, ``transform``,
#: ``verbose`` and the ``create_model`` keywords of :data:`MODEL_OPTIONS` are translated in ``_config``)
_TRAIN_FIELDS = ("model", "depth", "dim", "norm", "residual", "pool", "epochs", "max_steps", "lr", "batch_size",
                 "seed", "val_fraction", "weight_decay", "ensemble", "patience", "regime", "standardize")
#: ``create_model`` keywords without a ``TrainConfig`` field of their own (Set Transformer family)
MODEL_OPTIONS = ("heads", "num_inducing", "num_seeds")


class _SetEstimator(BaseEstimator):
    _target = ""

    def __init__(self, model: str = "deepsets++", depth: int | None = None, dim: int | None = None,
                 norm: str | None = None, residual: str | None = None, pool: str | None = None,
                 heads: int | None = None, num_inducing: int | None = None, num_seeds: int | None = None,
                 model_options: dict | None = None, epochs: int | None = None, max_steps: int = -1,
                 lr: float | None = None, batch_size: int | None = None, set_size: int | None = 1000, seed: int = 0,
                 val_fraction: float = 0.1, out: str | None = None, verbose: bool = False,
                 weight_decay: float | None = None, ensemble: int | None = None, patience: int | None = None,
                 regime: str = "auto", standardize: bool = True, transform=None, subsets: int | None = None):
        self.model = model
        self.depth = depth
        self.dim = dim
        self.norm = norm
        self.residual = residual
        self.pool = pool
        self.heads = heads
        self.num_inducing = num_inducing
        self.num_seeds = num_seeds
        self.model_options = model_options
        self.epochs = epochs
        self.max_steps = max_steps
        self.lr = lr
        self.batch_size = batch_size
        self.set_size = set_size
        self.seed = seed
        self.val_fraction = val_fraction
        self.out = out
        self.verbose = verbose
        self.weight_decay = weight_decay
        self.ensemble = ensemble
        self.patience = patience
        self.regime = regime
        self.standardize = standardize
        self.transform = transform
        self.subsets = subsets

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # X is a list of sets [n_i, D] (or one array [sets, n, D]), not [n, D]
        tags.input_tags.three_d_array = True
        return tags

    def _config(self, out: str):
        from .train import TrainConfig

        options = {k: getattr(self, k) for k in MODEL_OPTIONS if getattr(self, k) is not None}
        options.update(self.model_options or {})  # a create_model keyword that does not exist fails, naming them
        transform = [self.transform] if isinstance(self.transform, str) else self.transform
        return TrainConfig(task=self._target, **{k: getattr(self, k) for k in _TRAIN_FIELDS}, out=out,
                           set_size=self.set_size if self.set_size is not None else 0, progress=bool(self.verbose),
                           transform=None if transform is None else list(transform), model_options=options)

    def _dataset(self, X, y=None, classes=None):
        from .data import ListReader, SourceDataset

        reader = ListReader(X, labels=y, source="X")
        return SourceDataset(reader, target=self._target, classes=classes, task=self._target,
                             set_size=self.set_size or None, seed=self.seed)

    def fit(self, X, y):
        from .checkpoint import open_checkpoint
        from .data import get_task
        from .train.fit import quiet_lightning, train

        y = list(np.asarray(y, dtype=object).reshape(len(y), -1)[:, 0]) if self._target == "classification" \
            else np.asarray(y, dtype=np.float64)
        ds = self._dataset(X, y)
        self._fit_info(ds)
        quiet_lightning(verbose=bool(self.verbose))
        tmp = None
        out = self.out
        if out is None:
            tmp = tempfile.TemporaryDirectory(prefix="deepsets-fit-")
            out = tmp.name
        try:
            summary = train(self._config(out), overwrite=True, dataset=ds, task=get_task(self._target),
                            echo=print if self.verbose else (lambda *a: None))
            ckpt = open_checkpoint(Path(out) / "checkpoints" / "best.ckpt")
        finally:
            if tmp is not None:
                tmp.cleanup()
        self.module_ = ckpt  # the model (.model) and what its run recorded (.hparams)
        self.n_features_in_ = ds.in_dim
        self.history_ = summary
        return self

    def _fit_info(self, ds):
        pass

    def _outputs(self, X) -> np.ndarray:
        from .inference import predict_sets

        if not hasattr(self, "module_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first")
        ds = self._dataset(X)
        ds.set_size = None  # whole sets, or subsets of the training size where the pooling needs them
        if ds.in_dim != self.n_features_in_:
            raise ValueError(f"X has {ds.in_dim} features per element; the model was fitted on {self.n_features_in_}")
        return np.stack(predict_sets(self.module_.model, ds, subsets=self.subsets, seed=self.seed, progress=False,
                                     classify=self._target == "classification"))


class SetRegressor(RegressorMixin, _SetEstimator):
    """Deep set regression: ``predict(X)`` gives ``[n_sets]`` (or ``[n_sets, K]`` for ``K`` targets)."""

    _target = "regression"

    def predict(self, X):
        out = self._outputs(X)
        return out[:, 0] if out.shape[1] == 1 else out


class SetClassifier(ClassifierMixin, _SetEstimator):
    """Deep set classification with labels of any type; ``classes_`` in the order of ``predict_proba``."""

    _target = "classification"

    def _fit_info(self, ds):
        self.classes_ = np.asarray(ds.classes, dtype=object if any(isinstance(c, str) for c in ds.classes) else None)

    def predict_proba(self, X):
        import torch

        return torch.softmax(torch.from_numpy(self._outputs(X)).float(), -1).numpy()

    def predict(self, X):
        proba = self.predict_proba(X)  # (fitted or NotFittedError)
        return self.classes_[proba.argmax(1)]
