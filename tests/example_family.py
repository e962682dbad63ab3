"""A model family defined outside the package, for the test that shows what adding a family takes: this file
(config, model, how it is chunked) plus one ``register_model`` call. Encoder: clean-path Deep Sets++ blocks;
pooling: attention of one learned seed over the set (PMA); decoder: one linear layer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from deepsets.models import SetModel, SetModelConfig
from deepsets.nn import PMA, DeepSetsBlock, SetSequential, zero_padding


@dataclass
class BlocksPMAConfig(SetModelConfig):
    depth: int = 4
    heads: int = 4
    residuals: ClassVar[tuple[str, ...]] = ("clean", "nonclean")


class BlocksPMA(SetModel):
    config: BlocksPMAConfig

    def __init__(self, config: BlocksPMAConfig):
        super().__init__(config)
        c = config
        self.input = nn.Linear(c.in_dim, c.dim, bias=c.bias)
        self.layers = SetSequential([DeepSetsBlock(c.dim, c.norm_layer, c.residual, c.bias) for _ in range(c.depth)])
        self.pma = PMA(c.dim, c.heads)
        self.head = nn.Linear(c.dim, c.out_dim)

    def encode(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.layers(self.embed(x, mask), mask)

    def embed(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return zero_padding(self.input(x), mask)

    def pool(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.pma(h, mask)[:, 0]

    def decode(self, z: Tensor) -> Tensor:
        return self.head(z)

    def decode_elements(self, h: Tensor, z: Tensor, mask: Tensor | None) -> Tensor:
        return self.head(h + z.unsqueeze(1))

    def encode_chunked(self, x: Tensor, run) -> Tensor:
        h = run.rows(self.embed, x)
        for layer in self.layers:
            h = run.rows(layer, h)
        return h

    def pool_chunked(self, h: Tensor, run) -> Tensor:
        return self.pma(run.keys(h))[:, 0]
