"""Module substitution, the mechanism of every backend: a module tree with some modules replaced by subclasses
that share their parameters, buffers and children (identical ``state_dict`` keys)."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn


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
