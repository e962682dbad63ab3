"""How the reference layers of :mod:`deepsets.nn` run fast, by module substitution.

A backend takes a model built from the reference layers and returns it with some modules replaced by subclasses
that compute the same function faster where they apply and call the reference ``forward`` everywhere else. The
replacements share the original's parameters and children, so ``state_dict`` keys (and checkpoints) are
identical. ``deepsets.create_model`` applies the default backend (``backend="auto"``: :mod:`.cpu`, which takes over
on CPU for float32/float64 without autocast, compile or tracing); ``backend="reference"`` keeps the plain layers,
and :func:`reference` turns a model back into them.

:mod:`.chunked` (exact inference on huge sets) uses the same mechanism inside a context it owns.
"""
from __future__ import annotations

from torch import nn

from .substitution import adopt, substitute

__all__ = ["BACKENDS", "adopt", "apply", "reference", "substitute"]

BACKENDS = ("auto", "reference")


def apply(model: nn.Module, backend: str = "auto") -> nn.Module:
    """``model`` on ``backend`` (``"auto"``: the CPU backend's modules where they fit; ``"reference"``: unchanged)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid choices: {', '.join(map(repr, BACKENDS))}")
    if backend == "reference":
        return reference(model)
    from . import cpu

    return cpu.apply(model)


def reference(model: nn.Module) -> nn.Module:
    """``model`` with every backend module turned back into the reference module it replaced (parameters shared)."""
    def back(m):
        ref = getattr(type(m), "reference", None)
        return adopt(m, ref) if ref is not None and type(m) is not ref else None

    return substitute(model, back)
