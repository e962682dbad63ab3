"""The Deep Sets family: Deep Sets (baseline) and Deep Sets++ (PAPER.md).

``residual="none"`` builds the baseline; ``"clean"`` / ``"nonclean"`` build the residual encoders::

    none:      Linear - norm - ReLU, (2*(L//2)) x [Linear - norm - ReLU], Linear          -> pool -> rho
    clean:     Linear, (L//2) x [x + W2 ReLU norm W1 ReLU norm x], norm - ReLU - Linear   -> pool -> rho
    nonclean:  Linear, (L//2) x [ReLU(x + norm W2 ReLU norm W1 x)], Linear                -> pool -> rho

``rho = Linear ReLU Linear ReLU Linear ReLU Linear(H, out)``. Linear layers that feed a norm have no bias
(with ``norm="none"`` they have one), which is how the parameter counts of PAPER.md come out.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..nn.masking import PackedSets, zero_padding
from ..nn.norms import make_norm, resolve_choice
from ..nn.pooling import POOLS, Pool
from ..nn.residual import DeepSetsBlock
from .base import SetModel, SetModelConfig


@dataclass
class DeepSetsConfig(SetModelConfig):
    depth: int = 50  # the paper's "No. layers"; Table 1 uses 50 for this family
    residual: str = "clean"  # clean (Deep Sets++) | nonclean | none (the Deep Sets baseline)
    pool: str = "sum"  # sum | mean | max (paper: sum; max for point clouds)

    def __post_init__(self):
        super().__post_init__()
        resolve_choice("residual for the Deep Sets family", self.residual, ("clean", "nonclean", "none"))
        resolve_choice("pool for the Deep Sets family", self.pool, POOLS)


class LinearNormReLU(nn.Module):
    """``ReLU(norm(W x))``: one layer of the baseline Deep Sets encoder."""

    def __init__(self, dim_in: int, dim: int, norm: str):
        super().__init__()
        self.fc = nn.Linear(dim_in, dim, bias=norm == "none")
        self.norm = make_norm(norm, dim)

    def forward(self, x: Tensor, mask=None) -> Tensor:
        return self.norm(self.fc(x), mask, relu=True)


def decoder_mlp(dim: int, out_dim: int) -> nn.Sequential:
    """rho: three hidden ReLU layers of width ``dim`` and a linear output."""
    return nn.Sequential(
        nn.Linear(dim, dim), nn.ReLU(),
        nn.Linear(dim, dim), nn.ReLU(),
        nn.Linear(dim, dim), nn.ReLU(),
        nn.Linear(dim, out_dim),
    )


class DeepSets(SetModel):
    """Deep Sets / Deep Sets++: an element-wise (or residual) encoder phi, masked pooling, decoder rho."""

    config: DeepSetsConfig
    packs_sets = True  # every layer is per element or per set: padded batches run on packed rows

    def __init__(self, config: DeepSetsConfig):
        super().__init__(config)
        c = config
        H, bias = c.dim, c.norm == "none"
        if c.residual == "none":
            n_layers = 2 * (c.depth // 2) + 1
            self.layers = nn.ModuleList(
                [LinearNormReLU(c.in_dim if i == 0 else H, H, c.norm) for i in range(n_layers)]
            )
            self.final_norm = None
        else:
            self.input = nn.Linear(c.in_dim, H, bias=bias)
            self.layers = nn.ModuleList([DeepSetsBlock(H, c.norm, c.residual) for _ in range(c.depth // 2)])
            # Clean path: the residual stream is normalized once before leaving the encoder.
            self.final_norm = make_norm(c.norm, H) if c.residual == "clean" else None
        self.output = nn.Linear(H, H)
        self.pooling = Pool(c.pool)
        self.rho = decoder_mlp(H, c.out_dim)

    def encode(self, x: Tensor, mask=None) -> Tensor:
        if self.config.residual == "none":
            h = x
            for layer in self.layers:
                h = layer(h, mask)
        else:
            h, stats = zero_padding(self.input(x), mask), None
            for layer in self.layers:  # each block hands the next its output's set statistics, where it has them
                h, stats = layer.forward_stats(h, mask, stats)
        if self.final_norm is not None:
            h = self.final_norm(h, mask, relu=True)
        return self.output(h)  # padded rows hold the bias; pooling and heads use the mask

    def pool(self, h: Tensor, mask=None) -> Tensor:
        return self.pooling(h, mask)

    def decode(self, z: Tensor) -> Tensor:
        return self.rho(z)

    def decode_elements(self, h: Tensor, z: Tensor, mask) -> Tensor:
        # Equivariant head: each element's features plus the pooled set summary, through rho.
        return self.rho(h + (mask.expand(z) if isinstance(mask, PackedSets) else z.unsqueeze(1)))
