"""Test metrics of a set model's outputs, numpy only (each equals scikit-learn's function of the same name).

``set_metrics(target, outputs, labels)`` takes the model's raw outputs and the encoded labels of a target kind
(:mod:`deepsets.data.targets`):

``classification``: outputs ``[n, C]`` logits, labels ``[n]`` class indices.
    ``accuracy``; ``balanced_accuracy`` (mean recall over the classes present in the labels);
    ``roc_auc`` (two classes: of the probability of class 1; more: one-vs-rest, macro average over the classes
    present in the labels; NaN when the labels hold one class only); ``log_loss`` (of the softmax probabilities
    clipped to ``[eps, 1 - eps]`` as scikit-learn does, ``eps`` = float64 machine precision).
``regression``: outputs ``[n, K]``, labels ``[n, K]`` (or ``[n]`` for ``K = 1``).
    ``mse``, ``mae``, ``r2``, each averaged over the ``K`` outputs (scikit-learn's ``'uniform_average'``; ``r2``
    of a constant output is 1.0 when predicted exactly, else 0.0, and NaN for fewer than two sets).

:data:`METRICS` lists each target's metrics (the first is the target's default, the one training reports);
:data:`HIGHER_IS_BETTER` says which way each one improves.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["METRICS", "HIGHER_IS_BETTER", "check_selection", "default_metric", "metric_names", "selection_names",
           "set_metrics", "softmax"]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------------ classification
def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(np.argmax(outputs, axis=-1) == labels))


def balanced_accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    pred = np.argmax(outputs, axis=-1)
    recalls = [np.mean(pred[labels == c] == c) for c in np.unique(labels)]
    return float(np.mean(recalls)) if recalls else float("nan")


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties sharing their mean rank (scipy's ``rankdata(method='average')``)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(xs)])
    mean_rank = first + (counts + 1) / 2.0  # (first + 1 + first + count) / 2
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = mean_rank[group]
    return ranks


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic; ties count one half)."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(score, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(outputs: np.ndarray, labels: np.ndarray) -> float:
    p = softmax(outputs)
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if p.shape[1] == 2:
        return _binary_auc(labels == 1, p[:, 1])
    return float(np.mean([_binary_auc(labels == c, p[:, c]) for c in present]))


def log_loss(outputs: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return float("nan")
    eps = np.finfo(np.float64).eps
    p = np.clip(softmax(outputs), eps, 1 - eps)
    return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))


# ---------------------------------------------------------------------------------------------------- regression
def mse(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean((outputs - labels) ** 2)) if outputs.size else float("nan")


def mae(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.abs(outputs - labels))) if outputs.size else float("nan")


def r2(outputs: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) < 2:
        return float("nan")
    ss_res = ((labels - outputs) ** 2).sum(axis=0)
    ss_tot = ((labels - labels.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0),
                          np.where(ss_res == 0, 1.0, 0.0))
    return float(np.mean(scores))


#: each target's metrics, ``{target: {name: fn(outputs, labels)}}``; the first is the target's default metric
METRICS: dict[str, dict[str, Callable[[np.ndarray, np.ndarray], float]]] = {
    "classification": {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy, "roc_auc": roc_auc,
                       "log_loss": log_loss},
    "regression": {"mse": mse, "mae": mae, "r2": r2},
}

#: whether a larger value of the metric is better
HIGHER_IS_BETTER: dict[str, bool] = {"accuracy": True, "balanced_accuracy": True, "roc_auc": True,
                                     "log_loss": False, "mse": False, "mae": False, "r2": True, "loss": False}


def metric_names(target: str | None = None) -> list[str]:
    """The metrics of a target (``classification`` / ``regression``), or of every target (no duplicates)."""
    if target is not None:
        return list(METRICS.get(_kind(target), {}))
    return list(dict.fromkeys(n for m in METRICS.values() for n in m))


def default_metric(target: str) -> str:
    """The metric a target reports by default (``accuracy`` / ``mse``)."""
    return metric_names(target)[0]


def _kind(target) -> str:
    name = getattr(target, "name", target)
    return {"mse": "regression", "ce": "classification"}.get(name, name)


def set_metrics(target, outputs, labels) -> dict[str, float]:
    """Every metric of ``target`` (``classification``/``regression``, or a :class:`~deepsets.data.targets.Target`)
    of raw model ``outputs`` against encoded ``labels``; ``{}`` for a target without set metrics (``elements``)."""
    kind = _kind(target)
    if kind not in METRICS:
        return {}
    out = np.asarray(outputs, dtype=np.float64)
    if kind == "classification":
        out = out.reshape(len(out), -1)
        y = np.asarray(labels).reshape(-1).astype(np.int64)
    else:
        out = out.reshape(len(out), -1)
        y = np.asarray(labels, dtype=np.float64).reshape(out.shape)
    if len(y) != len(out):
        raise ValueError(f"{len(out)} outputs but {len(y)} labels")
    return {name: fn(out, y) for name, fn in METRICS[kind].items()}


def selection_names() -> list[str]:
    """What ``--metric`` accepts: every metric, and ``loss`` (the validation loss, the default)."""
    return [*metric_names(), "loss"]


def check_selection(name: str | None, target) -> str | None:
    """``name`` if ``--metric name`` can select epochs of a model of ``target`` (``None`` and ``loss``: always);
    else ``ValueError`` naming the target's metrics."""
    if name is None or name == "loss":
        return name
    valid = metric_names(target)
    if name not in valid:
        kind = _kind(target)
        raise ValueError(f"--metric {name}: not a metric of {kind} models (choose one of "
                         f"{', '.join([*valid, 'loss'])})")
    return name
