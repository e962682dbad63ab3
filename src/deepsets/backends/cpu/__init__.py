"""The CPU backend: C/OpenMP kernels (:mod:`.kernels`, ``setnorm.c``), the autograd functions built on them
(:mod:`.functions`), packed-row execution and the statistics hand-off between blocks (:mod:`.modules`).

:func:`apply` swaps those modules into a model built from the reference layers. ``DEEPSETS_KERNELS=0`` turns the
compiled kernels off (set norm then runs as PyTorch ops with the hand-written backward), ``DEEPSETS_KERNELS=norm``
keeps the set-norm kernels and turns the layer-level ones off; :func:`deepsets.backends.reference` gives the plain
reference layers back.
"""
from __future__ import annotations

from ..substitution import adopt, substitute
from .kernels import name
from .modules import MODULES, CPUSetNorm, DeepSetsStack, ISABStack

__all__ = ["apply", "name", "CPUSetNorm", "DeepSetsStack", "ISABStack", "MODULES"]


def apply(model):
    """``model`` with the CPU backend's modules in place of the reference modules they fit (parameters shared)."""
    def replace(m):
        for cls in MODULES:
            if cls.fits(m):
                return adopt(m, cls)
        return None

    return substitute(model, replace)
