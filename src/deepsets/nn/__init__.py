"""Set layers that read like PAPER.md: norms, masked pooling, attention blocks, residual blocks.

Every layer is ``forward(x, mask=None)`` with ``x: [B, N, D]`` and ``mask: bool[B, N]`` (True = present) or
``None`` (all present). Layer types are passed in (``norm_layer=SetNorm``). How the same layers run fast lives in
:mod:`deepsets.backends`, which replaces whole modules without changing a parameter name.
"""
from .attention import ISAB, MAB, PMA, SAB, Attention, attention
from .masking import (
    check_mask,
    check_sets,
    clear_padding,
    masked_moments,
    set_sizes,
    zero_padding,
)
from .norms import (
    NORMS,
    FeatureNorm,
    LayerNorm,
    NoNorm,
    SetNorm,
    make_norm,
    norm_layer,
    register_norm,
)
from .pooling import POOLS, Pool, max_pool, mean_pool, sum_pool
from .residual import RESIDUALS, DeepSetsBlock
from .sequential import SetSequential

__all__ = [
    "Attention", "attention", "MAB", "SAB", "ISAB", "PMA", "DeepSetsBlock", "RESIDUALS", "SetSequential",
    "SetNorm", "LayerNorm", "FeatureNorm", "NoNorm", "NORMS", "make_norm", "norm_layer", "register_norm",
    "Pool", "POOLS", "sum_pool", "mean_pool", "max_pool",
    "check_mask", "check_sets", "clear_padding", "zero_padding", "set_sizes", "masked_moments",
]
