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
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.masking import zero_padding
from ..nn.norms import NoNorm, resolve_choice
from ..nn.pooling import POOLS, Pool
from ..nn.residual import DeepSetsBlock
from ..nn.sequential import SetSequential
from .base import SetModel, SetModelConfig
from .registry import register_model


@dataclass
class DeepSetsConfig(SetModelConfig):
    depth: int = 50  # the paper's "No. layers"; Table 1 uses 50 for this family
    residual: str = "clean"  # clean (Deep Sets++) | nonclean | none (the Deep Sets baseline)
    pool: str = "sum"  # sum | mean | max (paper: sum; max for point clouds)
    residuals: ClassVar[tuple[str, ...]] = ("clean", "nonclean", "none")

    def __post_init__(self):
        super().__post_init__()
        resolve_choice("residual for the Deep Sets family", self.residual, self.residuals)
        resolve_choice("pool for the Deep Sets family", self.pool, POOLS)


class LinearNormReLU(nn.Module):
    """``ReLU(norm(W x))``: one layer of the baseline Deep Sets encoder."""

    def __init__(self, dim_in: int, dim: int, norm_layer=NoNorm, bias: bool = False):
        super().__init__()
        self.fc = nn.Linear(dim_in, dim, bias=bias)
        self.norm = norm_layer(dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return F.relu(self.norm(self.fc(x), mask))


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

    def __init__(self, config: DeepSetsConfig):
        super().__init__(config)
        c = config
        H, norm, bias = c.dim, c.norm_layer, c.bias
        if c.residual == "none":
            self.layers = SetSequential(
                [LinearNormReLU(c.in_dim if i == 0 else H, H, norm, bias) for i in range(2 * (c.depth // 2) + 1)]
            )
            self.final_norm = None
        else:
            self.input = nn.Linear(c.in_dim, H, bias=bias)
            self.layers = SetSequential([DeepSetsBlock(H, norm, c.residual, bias) for _ in range(c.depth // 2)])
            # Clean path: the residual stream is normalized once before leaving the encoder.
            self.final_norm = norm(H) if c.residual == "clean" else None
        self.output = nn.Linear(H, H)
        self.pooling = Pool(c.pool)
        self.rho = decoder_mlp(H, c.out_dim)

    def encode(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.finish(self.layers(self.embed(x, mask), mask), mask)

    def embed(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The input layer of the residual encoders (the baseline's first layer is one of its ``layers``)."""
        return x if self.config.residual == "none" else zero_padding(self.input(x), mask)

    def finish(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        """After the blocks: ReLU(norm(h)) on a clean path, then the output layer (padded rows hold its bias;
        pooling and heads use the mask)."""
        if self.final_norm is not None:
            h = F.relu(self.final_norm(h, mask))
        return self.output(h)

    def pool(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.pooling(h, mask)

    @property
    def size_consistent(self) -> bool:
        return self.config.pool != "sum" or self.config.output == "elements"

    def decode(self, z: Tensor) -> Tensor:
        return self.rho(z)

    def decode_elements(self, h: Tensor, z: Tensor, mask: Tensor | None) -> Tensor:
        # Equivariant head: each element's features plus the pooled set summary, through rho.
        return self.rho(h + z.unsqueeze(1))

    # Chunked inference: every layer is per element or per set, so each is one pass over the rows (plus one per
    # set norm it contains, for the statistics); the pooling accumulates.
    def encode_chunked(self, x: Tensor, run) -> Tensor:
        h = run.rows(self.embed, x)
        for layer in self.layers:
            h = run.rows(layer, h)
        return run.rows(self.finish, h)

    def pool_chunked(self, h: Tensor, run) -> Tensor:
        return run.pool(self.config.pool, h)


register_model("deepsets", DeepSets, DeepSetsConfig, "Deep Sets baseline (Zaheer et al. 2017): no norm, no residual",
               depth=50, norm="none", residual="none", pool="sum")
register_model("deepsets++", DeepSets, DeepSetsConfig, "Deep Sets++: set norm + clean-path residual blocks",
               depth=50, norm="set", residual="clean", pool="sum")
