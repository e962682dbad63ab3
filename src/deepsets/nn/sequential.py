"""A stack of set layers applied in turn, ``forward(x, mask)``."""
from __future__ import annotations

from torch import Tensor, nn


class SetSequential(nn.ModuleList):
    """``layer_L(... layer_1(x, mask) ..., mask)``; indexed and saved like a ``ModuleList`` (keys ``0.``, ``1.``, ...).

    Model encoders keep their blocks in one, so that a backend can replace the whole stack (and hand statistics
    from block to block) without changing a parameter name.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        for layer in self:
            x = layer(x, mask)
        return x
