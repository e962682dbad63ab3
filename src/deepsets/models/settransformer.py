"""The Set Transformer family: Set Transformer (baseline) and Set Transformer++ (PAPER.md).

::

    nonclean (baseline): ISAB(D_in, H), (L-1) x ISAB(H, H)          [post-norm MABs]  -> PMA - 3 SAB - Linear
    clean (++):          Linear(D_in, H), L x ISAB(H, H), norm      [pre-norm MABs]   -> PMA - 3 SAB - Linear

The decoder (PMA with ``num_seeds`` seed vectors, three SABs, a linear output) uses no norm, in the
family's own MAB wiring.

One documented difference from the paper's parameter table: the paper's code creates a norm for the
inducing-point queries of each ISAB that its forward never applies (``normalizeQ=False``). Those ``2*H``
parameters per ISAB never receive a gradient, so this implementation does not create them; with a norm,
Set Transformer++ therefore has ``depth * 2 * H`` fewer parameters than PAPER.md's table
(:func:`paper_unused_parameters_per_isab`), and computes exactly the same function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ..nn.attention import ISAB, PMA, SAB
from ..nn.masking import zero_padding
from ..nn.norms import NoNorm, resolve_choice
from ..nn.residual import RESIDUALS
from ..nn.sequential import SetSequential
from .base import SetModel, SetModelConfig
from .registry import register_model


def paper_unused_parameters_per_isab(dim: int, norm: str) -> int:
    """Parameters of the never-applied inducing-query norm in the paper's Set Transformer++ code."""
    return 0 if norm == "none" else 2 * dim



@dataclass
class SetTransformerConfig(SetModelConfig):
    depth: int = 16  # number of ISAB blocks; Table 1 uses 16 for this family
    heads: int = 4  # paper: 4 heads
    num_inducing: int = 32  # paper: 32 inducing points per ISAB
    num_seeds: int = 1  # PMA seed vectors (paper: 1)
    pool: str = "pma"  # pooling by multihead attention (the only choice for this family)
    residuals: ClassVar[tuple[str, ...]] = RESIDUALS

    def __post_init__(self):
        super().__post_init__()
        resolve_choice("residual for the Set Transformer family", self.residual, self.residuals)
        resolve_choice("pool for the Set Transformer family", self.pool, ("pma",))
        for name in ("heads", "num_inducing", "num_seeds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")


class SetTransformer(SetModel):
    """Set Transformer / Set Transformer++: ISAB encoder, PMA pooling, SAB decoder."""

    config: SetTransformerConfig

    def __init__(self, config: SetTransformerConfig):
        super().__init__(config)
        c = config
        H, r = c.dim, c.residual
        block = dict(heads=c.heads, num_inducing=c.num_inducing, norm_layer=c.norm_layer, residual=r)
        if r == "clean":
            self.input = nn.Linear(c.in_dim, H)
            self.layers = SetSequential([ISAB(H, H, **block) for _ in range(c.depth)])
            self.final_norm = c.norm_layer(H)
        else:
            self.input = None
            self.layers = SetSequential([ISAB(c.in_dim if i == 0 else H, H, **block) for i in range(c.depth)])
            self.final_norm = None
        # The decoder uses no norm, in the family's own MAB wiring.
        self.pma = PMA(H, c.heads, c.num_seeds, norm_layer=NoNorm, residual=r)
        self.sabs = SetSequential([SAB(H, H, c.heads, norm_layer=NoNorm, residual=r) for _ in range(3)])
        self.head = nn.Linear(H * c.num_seeds, c.out_dim)

    def encode(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.finish(self.layers(self.embed(x, mask), mask), mask)

    def embed(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return x if self.input is None else zero_padding(self.input(x), mask)

    def finish(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        return h if self.final_norm is None else self.final_norm(h, mask)

    def pool(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        z = self.sabs(self.pma(h, mask))  # [B, num_seeds, H]
        return z.flatten(1)  # [B, num_seeds * H]

    def decode(self, z: Tensor) -> Tensor:
        return self.head(z)

    def decode_elements(self, h: Tensor, z: Tensor, mask: Tensor | None) -> Tensor:
        if self.config.num_seeds != 1:
            raise ValueError("output='elements' needs num_seeds=1 (one set summary added to every element)")
        # Equivariant head: each element's features plus the attention-pooled set summary.
        return self.head(h + z.unsqueeze(1))

    # Chunked inference: an ISAB is MAB(X, MAB(I, X)); its inducing points attend to the whole set as a stream of
    # keys, then every element attends to the inducing points' outputs, one chunk of elements at a time.
    def encode_chunked(self, x: Tensor, run) -> Tensor:
        h = run.rows(self.embed, x)
        for block in self.layers:
            ind = block.mab0(block.inducing, run.keys(h))  # [1, num_inducing, H]
            h = run.rows(lambda r, block=block, ind=ind: block.mab1(r, ind), h)
        return run.rows(self.finish, h)

    def pool_chunked(self, h: Tensor, run) -> Tensor:
        return self.sabs(self.pma(run.keys(h))).flatten(1)


# The paper's "original" Set Transformer uses layer norm ("the normalization of choice in Set Transformer"; its
# code's sweeps run the baseline with layer_norm / set_norm, never without a norm), in post-norm MABs.
register_model("settransformer", SetTransformer, SetTransformerConfig,
               "Set Transformer baseline (Lee et al. 2019): post-norm ISABs with layer norm",
               depth=16, norm="layer", residual="nonclean")
register_model("settransformer++", SetTransformer, SetTransformerConfig,
               "Set Transformer++: set norm + clean-path pre-norm ISABs", depth=16, norm="set", residual="clean")
