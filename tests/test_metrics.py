"""``deepsets.metrics`` equals scikit-learn's function of the same name on the same predictions.

Parametrised over the registry (:data:`deepsets.metrics.METRICS`): a new metric needs an entry in ``SKLEARN``
below, and the test that every registered metric has one fails until it does.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from deepsets.metrics import HIGHER_IS_BETTER, METRICS, metric_names, set_metrics, softmax

skm = pytest.importorskip("sklearn.metrics")


#: scikit-learn's value of each metric: fn(raw outputs, labels, number of classes)
SKLEARN = {
    "accuracy": lambda out, y, c: skm.accuracy_score(y, out.argmax(1)),
    "balanced_accuracy": lambda out, y, c: skm.balanced_accuracy_score(y, out.argmax(1)),
    "roc_auc": lambda out, y, c: (skm.roc_auc_score(y, softmax(out)[:, 1]) if c == 2 else
                                  skm.roc_auc_score(y, softmax(out), multi_class="ovr", average="macro",
                                                    labels=list(range(c)))),
    "log_loss": lambda out, y, c: skm.log_loss(y, softmax(out), labels=list(range(c))),
    "mse": lambda out, y, c: skm.mean_squared_error(y, out),
    "mae": lambda out, y, c: skm.mean_absolute_error(y, out),
    "r2": lambda out, y, c: skm.r2_score(y, out),
}

CASES = {  # (target, classes or outputs, n)
    "binary": ("classification", 2, 40),
    "multiclass": ("classification", 4, 60),
    "regression-1": ("regression", 1, 30),
    "regression-3": ("regression", 3, 30),
}
PAIRS = [(target, name, case) for case, (target, _, _) in CASES.items() for name in METRICS[target]]


def _data(case: str, seed: int, ties: bool = False):
    target, k, n = CASES[case]
    rng = np.random.default_rng(seed)
    if target == "classification":
        y = np.r_[np.arange(k), rng.integers(0, k, n - k)]  # every class present
        out = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y] * rng.uniform(0, 1, (n, 1))
        if ties:
            out = np.round(out, 0)  # tied scores: roc_auc counts them one half, as scikit-learn does
        return target, out.astype(np.float32), y, k
    y = rng.normal(size=(n, k)) * rng.uniform(0.5, 3, k)
    out = y + rng.normal(size=(n, k)) * rng.uniform(0.1, 2, k)
    if ties:
        out[:, 0] = np.round(out[:, 0])
    if k == 1:
        y = y[:, 0]  # [n] labels with [n, 1] outputs
    return target, out.astype(np.float32), y.astype(np.float32), k


def test_every_metric_has_a_reference_and_a_direction():
    assert set(metric_names()) == set(SKLEARN), "add the new metric to SKLEARN in this file"
    assert set(metric_names()) <= set(HIGHER_IS_BETTER)
    assert metric_names("classification")[0] == "accuracy" and metric_names("regression")[0] == "mse"


@pytest.mark.parametrize("target,name,case", PAIRS, ids=[f"{c}-{n}" for _, n, c in PAIRS])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True], ids=["", "ties"])
def test_metric_equals_sklearn(target, name, case, seed, ties):
    target, out, y, k = _data(case, seed, ties)
    ours = set_metrics(target, out, y)
    assert list(ours) == metric_names(target)
    ref = SKLEARN[name](out.astype(np.float64), y, k)
    assert ours[name] == pytest.approx(ref, rel=1e-9, abs=1e-12), (name, ours[name], ref)


def test_roc_auc_of_one_class_is_nan_and_a_missing_class_is_left_out():
    rng = np.random.default_rng(0)
    out = rng.normal(size=(10, 2))
    m = set_metrics("classification", out, np.ones(10, dtype=int))
    assert math.isnan(m["roc_auc"]) and m["accuracy"] == pytest.approx(np.mean(out.argmax(1) == 1))
    # three classes, class 2 absent from the fold: the macro average of the two present classes' AUCs
    out = rng.normal(size=(12, 3))
    y = np.r_[np.zeros(6, int), np.ones(6, int)]
    p = softmax(out)
    expected = np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in (0, 1)])
    assert set_metrics("classification", out, y)["roc_auc"] == pytest.approx(expected)
    assert set_metrics("classification", out, y)["log_loss"] == pytest.approx(
        skm.log_loss(y, p, labels=[0, 1, 2]))


def test_confident_wrong_predictions_are_clipped_like_sklearn():
    out = np.array([[800.0, -800.0], [-800.0, 800.0]])
    y = np.array([1, 1])
    ours = set_metrics("classification", out, y)["log_loss"]
    assert math.isfinite(ours)
    assert ours == pytest.approx(skm.log_loss(y, softmax(out), labels=[0, 1]))


def test_r2_edge_cases_match_sklearn():
    y = np.array([2.0, 2.0, 2.0])
    assert set_metrics("regression", y[:, None], y)["r2"] == skm.r2_score(y, y) == 1.0
    assert set_metrics("regression", (y + 1)[:, None], y)["r2"] == skm.r2_score(y, y + 1) == 0.0
    assert math.isnan(set_metrics("regression", np.ones((1, 1)), np.ones(1))["r2"])


def test_elements_target_has_no_set_metrics():
    assert set_metrics("elements", np.zeros((2, 5, 1)), np.zeros(2)) == {}
