"""Set layers with no model knowledge: norms, masked pooling, attention blocks, residual blocks.

Every layer is ``forward(x, mask=None)`` with ``x: [B, N, D]`` and ``mask: bool[B, N]`` (True = present).
Norms, pooling and Deep Sets blocks also take packed rows ``x: [T, D]`` (the valid elements back to back)
with a :class:`PackedSets` in place of the mask; norms take ``relu=True`` to fuse the following ReLU.
"""
from .attention import ISAB, MAB, PMA, SAB, Attention
from .masking import PackedSets, check_mask, check_sets, clear_padding, set_sizes, zero_padding
from .norms import NORMS, FeatureNorm, LayerNorm, NoNorm, SetNorm, make_norm
from .pooling import POOLS, Pool, max_pool, mean_pool, sum_pool
from .residual import DeepSetsBlock

__all__ = [
    "Attention", "MAB", "SAB", "ISAB", "PMA", "DeepSetsBlock",
    "SetNorm", "LayerNorm", "FeatureNorm", "NoNorm", "NORMS", "make_norm",
    "Pool", "POOLS", "sum_pool", "mean_pool", "max_pool",
    "PackedSets", "check_mask", "check_sets", "clear_padding", "zero_padding", "set_sizes",
]
