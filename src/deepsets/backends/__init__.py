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

from collections.abc import Callable

from torch import nn

BACKENDS = ("auto", "reference")


def adopt(module: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A new ``cls`` instance with ``module``'s state: the same parameters, buffers, children and attributes."""
    new = cls.__new__(cls)
    new.__dict__ = module.__dict__.copy()
    for key in ("_parameters", "_buffers", "_modules"):
        new.__dict__[key] = type(module.__dict__[key])(module.__dict__[key])
    return new


def substitute(module: nn.Module, replace: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """A copy of the module tree with each module ``m`` replaced by ``replace(m)`` where that is not None.

    Children are replaced first, so ``replace`` sees a module whose children are already the replacements.
    Modules on the way to a replacement are shallow copies; parameters and buffers are shared, never copied; the
    tree that was passed in is left as it was.
    """
    changed = {}
    for name, child in module.named_children():
        new = substitute(child, replace)
        if new is not child:
            changed[name] = new
    if changed:
        module = adopt(module, type(module))
        module._modules.update(changed)
    new = replace(module)
    return module if new is None else new


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
