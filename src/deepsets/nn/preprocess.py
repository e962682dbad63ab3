"""The model's own input preprocessing: a per-feature transform, then standardisation.

    x'_d = (f_d(x_d) - mu_d) / sigma_d

with ``f_d`` one of

* ``arcsinh[:c]``: ``asinh(x / c)``, the cytometry transform (cofactor ``c``: 150 is usual for flow cytometry,
  5 for mass cytometry; :data:`DEFAULT_COFACTOR` when not given);
* ``log1p``: ``sign(x) log(1 + |x|)`` (``log(1 + x)`` for counts, defined for negative values too);
* ``none``: ``x``;

and ``mu_d``, ``sigma_d`` the mean and standard deviation of ``f_d(x_d)`` over the training elements (buffers of
the model, fitted once before training: :meth:`Preprocess.fit`). Because it is part of the model, a checkpoint, a
Hub folder and an exported ONNX / pt2 graph all take raw elements.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

TRANSFORMS = ("none", "arcsinh", "log1p")
DEFAULT_COFACTOR = 5.0


def parse_transform(spec: str) -> tuple[str, float]:
    """``"arcsinh:150"`` -> ``("arcsinh", 150.0)``; ``"log1p"`` -> ``("log1p", 1.0)``; a clear error otherwise."""
    text = str(spec).strip().lower()
    name, sep, arg = text.partition(":")
    if name == "asinh":
        name = "arcsinh"
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {spec!r}; valid: arcsinh[:COFACTOR], log1p, none")
    if name != "arcsinh":
        if sep:
            raise ValueError(f"transform {spec!r}: only arcsinh takes a value (arcsinh:COFACTOR)")
        return name, 1.0
    if not sep:
        return name, DEFAULT_COFACTOR
    try:
        c = float(arg)
    except ValueError:
        c = float("nan")
    if not math.isfinite(c) or c <= 0:
        raise ValueError(f"transform {spec!r}: the arcsinh cofactor must be a positive number, got {arg!r}")
    return name, c


def per_feature(transform, in_dim: int) -> list[str]:
    """One transform spec per feature from ``None``, one spec for all, or a list of ``in_dim`` specs."""
    if transform is None:
        return ["none"] * in_dim
    if isinstance(transform, str):
        return [transform] * in_dim
    specs = [str(t) for t in transform]
    if len(specs) != in_dim:
        raise ValueError(f"transform: expected one spec or {in_dim} (one per feature), got {len(specs)}")
    return specs


class Preprocess(nn.Module):
    """``x -> (f(x) - mean) / std`` per feature (see the module docstring); rows ``[..., D]`` of any shape."""

    def __init__(self, in_dim: int, transform=None, standardize: bool = False):
        super().__init__()
        parsed = [parse_transform(s) for s in per_feature(transform, in_dim)]
        kinds = [k for k, _ in parsed]
        self.specs = [s if k != "arcsinh" else f"arcsinh:{c:g}" for s, (k, c) in zip(kinds, parsed)]
        self.has_arcsinh, self.has_log = "arcsinh" in kinds, "log1p" in kinds
        self.standardize = bool(standardize)
        # derived from the config: rebuilt with the model, not saved with the weights
        self.register_buffer("arcsinh", torch.tensor([k == "arcsinh" for k in kinds]), persistent=False)
        self.register_buffer("log", torch.tensor([k == "log1p" for k in kinds]), persistent=False)
        self.register_buffer("inv_cofactor", torch.tensor([1.0 / c for _, c in parsed]), persistent=False)
        if self.standardize:  # fitted on the training elements (fit); saved with the weights
            self.register_buffer("mean", torch.zeros(in_dim))
            self.register_buffer("std", torch.ones(in_dim))

    def transform(self, x: Tensor) -> Tensor:
        if self.has_arcsinh:
            x = torch.where(self.arcsinh, torch.asinh(x * self.inv_cofactor.to(x.dtype)), x)
        if self.has_log:
            x = torch.where(self.log, torch.sign(x) * torch.log1p(x.abs()), x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.transform(x)
        if self.standardize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x

    @torch.no_grad()
    def fit(self, sets: Iterable[Tensor]) -> Preprocess:
        """Set ``mean`` / ``std`` to the moments of the transformed elements of ``sets`` (``[n_i, D]`` each;
        float64 sums). A feature that is constant gets ``std = 1``."""
        if not self.standardize:
            return self
        n, s, ss = 0, 0.0, 0.0
        for x in sets:
            t = self.transform(torch.as_tensor(x).double().reshape(-1, self.mean.numel()))
            n, s, ss = n + t.shape[0], s + t.sum(0), ss + (t * t).sum(0)
        if n == 0:
            raise ValueError("standardisation: no training elements to fit the feature means on")
        mean = s / n
        var = (ss / n - mean * mean).clamp_min(0)
        std = var.sqrt()
        std = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))
        return self

    def extra_repr(self) -> str:
        kinds = sorted(set(self.specs))
        return f"transform={kinds if len(kinds) > 1 else kinds[0]}, standardize={self.standardize}"


def describe(specs: Sequence[str], names: Sequence[str] | None = None) -> str:
    """A one-line summary of per-feature specs (``arcsinh:150 on 8 features, none on FSC-A, SSC-A``)."""
    groups: dict[str, list[str]] = {}
    for i, s in enumerate(specs):
        groups.setdefault(s, []).append(names[i] if names is not None else str(i))
    parts = []
    for s, feats in groups.items():
        where = "every feature" if len(groups) == 1 else (", ".join(feats[:6]) + (" ..." if len(feats) > 6 else ""))
        parts.append(f"{s} on {where}")
    return "; ".join(parts)
