"""What a model predicts for a set: a target kind = label encoding + loss and metric + prediction columns.

Three kinds cover every task:

``regression``
    ``K`` real outputs per set; loss and metric MSE; predictions ``prediction`` (or ``prediction_k``).
``classification``
    one of ``C`` classes per set; labels of any type (strings, booleans, integers) are mapped to the indices of
    ``classes`` (sorted unique labels unless a task fixes them); loss cross-entropy, metric accuracy;
    predictions ``predicted_class`` (the original label) and ``p_<label>`` per class.
``elements``
    one logit per element; the target is the index of one element (the odd one out of set anomaly); loss
    cross-entropy over the set's elements, metric accuracy; predictions ``odd_element`` and ``probability``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._base import DataError

__all__ = ["TARGETS", "Target", "explain_target", "get_target", "infer_target"]


class Target:
    name: str = ""
    metric: str = ""
    output: str = "set"  # "set": one output vector per set; "elements": one per element
    kind: str = ""  # SetDataset.target_kind of the encoded targets: "regression" | "class"

    def loss(self, out: Tensor, y: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(loss, metric)`` of a batch."""
        raise NotImplementedError

    def csv_header(self, out_dim: int, classes) -> list[str]:
        raise NotImplementedError

    def csv_row(self, output: np.ndarray, classes) -> list:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Target({self.name!r})"


class Regression(Target):
    name, metric, kind = "regression", "mse", "regression"

    def loss(self, out, y, mask):
        loss = F.mse_loss(out.float(), y.float().view_as(out))
        return loss, loss.detach()

    def encode(self, labels, what: str, label_of_set) -> np.ndarray:
        """Raw labels (numbers, numeric strings, or ``[K]`` rows) -> float32 ``[sets, K]``, checked finite."""
        rows = []
        for i, v in enumerate(labels):
            if v is None or isinstance(v, str) and not v.strip():
                raise DataError(f"{what}: label of {label_of_set(i)}: expected a number, found an empty (missing) "
                                f"label")
            try:
                a = np.atleast_1d(np.asarray(v, dtype=np.float64)).reshape(-1)
            except (TypeError, ValueError):
                raise DataError(f"{what}: label of {label_of_set(i)}: expected a number, found {v!r}; for class "
                                f"labels use --target classification") from None
            if not np.isfinite(a).all():
                raise DataError(f"{what}: label of {label_of_set(i)}: expected a finite number, found {v!r} "
                                f"(a missing label?)")
            rows.append(a)
        if rows and len({len(r) for r in rows}) != 1:
            raise DataError(f"{what}: sets have different numbers of regression targets "
                            f"{sorted({len(r) for r in rows})}")
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)

    def csv_header(self, out_dim, classes):
        return ["prediction"] if out_dim == 1 else [f"prediction_{k}" for k in range(out_dim)]

    def csv_row(self, output, classes):
        return [f"{v:.6g}" for v in np.atleast_1d(output)]


def _label_key(v) -> str:
    """How labels are matched against classes: their text, with integral floats written as integers."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (np.integer,)):
        return str(int(v))
    return str(v).strip()


def plain(v):
    """A label as a plain Python value (for checkpoints, JSON and YAML)."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def _is_missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, (float, np.floating)) and not np.isfinite(v):
        return True
    return isinstance(v, str) and v.strip() == ""


class Classification(Target):
    name, metric, kind = "classification", "accuracy", "class"

    def loss(self, out, y, mask):
        logits = out.float()
        return F.cross_entropy(logits, y.long()), (logits.argmax(-1) == y).float().mean()

    @staticmethod
    def classes_of(labels) -> list:
        """Sorted unique labels (numbers by value, else by text) as plain Python values."""
        vals = [plain(v) for v in labels if not _is_missing(v)]
        uniq = {_label_key(v): v for v in vals}
        try:
            return sorted(uniq.values())
        except TypeError:  # mixed types: sort by text
            return [uniq[k] for k in sorted(uniq)]

    def encode(self, labels, what: str, label_of_set, classes) -> np.ndarray:
        """Raw labels -> int64 indices into ``classes``; a missing or unknown label names the set."""
        index = {_label_key(c): k for k, c in enumerate(classes)}
        out = np.empty(len(labels), dtype=np.int64)
        for i, v in enumerate(labels):
            if _is_missing(v):
                raise DataError(f"{what}: {label_of_set(i)} has no label (found {v!r})")
            k = index.get(_label_key(v))
            if k is None:
                ints = [str(c) for c in classes] == [str(j) for j in range(len(classes))]
                expected = (f"a class in 0..{len(classes) - 1} for {len(classes)} classes" if ints
                            else f"one of the classes {list(classes)}")
                raise DataError(f"{what}: label of {label_of_set(i)}: expected {expected}, found {v!r}")
            out[i] = k
        return out

    def csv_header(self, out_dim, classes):
        classes = classes if classes is not None else list(range(out_dim))
        return ["predicted_class"] + [f"p_{c}" for c in classes]

    def csv_row(self, output, classes):
        p = torch.softmax(torch.as_tensor(np.asarray(output, dtype=np.float32)), -1).numpy()
        classes = classes if classes is not None else list(range(len(p)))
        return [classes[int(p.argmax())]] + [f"{v:.6g}" for v in p]


class ElementClassification(Target):
    name, metric, kind, output = "elements", "accuracy", "class", "elements"

    def loss(self, out, y, mask):
        logits = out.float().squeeze(-1)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return F.cross_entropy(logits, y.long()), (logits.argmax(-1) == y).float().mean()

    def csv_header(self, out_dim, classes):
        return ["odd_element", "probability"]

    def csv_row(self, output, classes):
        p = torch.softmax(torch.as_tensor(np.asarray(output, dtype=np.float32)).reshape(-1), -1)
        return [int(p.argmax()), f"{float(p.max()):.6g}"]


TARGETS: dict[str, Target] = {t.name: t for t in (Regression(), Classification(), ElementClassification())}


def get_target(name: str | Target) -> Target:
    """The :class:`Target` named ``name`` (``regression``, ``classification``, ``elements``)."""
    if isinstance(name, Target):
        return name
    try:
        return TARGETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown target {name!r}; valid targets: {', '.join(TARGETS)}") from None


def infer_target(labels) -> str:
    """``classification`` for string or boolean labels and for labels with exactly two distinct values (0/1,
    1.0/2.0, two strings), ``regression`` for other numbers (the documented default); see :func:`explain_target`."""
    return explain_target(labels)[0]


def explain_target(labels) -> tuple[str, str]:
    """``(target, why)``: the target :func:`infer_target` picks for ``labels`` and the reason, in words."""
    a = np.asarray(labels, dtype=object) if not isinstance(labels, np.ndarray) else labels
    if a.dtype.kind == "b":
        return "classification", "the labels are booleans"
    if a.dtype.kind in "iufc":
        if a.ndim > 1 and a.shape[1:] != (1,) * (a.ndim - 1):
            return "regression", "the labels are rows of numbers"
        vals = a.ravel()
        vals = vals[np.isfinite(vals)] if a.dtype.kind in "fc" else vals
        if len(np.unique(vals)) == 2:
            return "classification", "the labels have two distinct values"
        return "regression", "the labels are numbers"
    vals = [v for v in a.ravel() if not _is_missing(v)]
    if any(isinstance(v, (bool, np.bool_)) for v in vals):
        return "classification", "the labels are booleans"
    rows = False
    for v in vals:
        if isinstance(v, (list, tuple, np.ndarray)):
            rows = True
            continue
        try:
            float(v)
        except (TypeError, ValueError):
            return "classification", "the labels are not all numbers"
    if rows:
        return "regression", "the labels are rows of numbers"
    if len({_label_key(_number(v)) for v in vals}) == 2:
        return "classification", "the labels have two distinct values"
    return "regression", "the labels are numbers"


def _number(v):
    """A numeric label (a number or its text) as a float, so ``"1"``, ``1`` and ``1.0`` are one value."""
    return float(v)
