"""What every set model shares: input checks, and the encode -> pool -> decode split."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from torch import Tensor, nn

from ..nn.masking import PackedSets, check_nonempty, check_sets, clear_padding, zero_padding
from ..nn.norms import resolve_choice

OUTPUTS = ("set", "elements")


@dataclass
class SetModelConfig:
    """Fields every family has. Defaults are the paper's (PAPER.md)."""

    in_dim: int
    out_dim: int
    depth: int
    dim: int = 128  # hidden width H (paper: 128)
    norm: str = "set"  # set | layer | feature | none
    residual: str = "clean"  # clean | nonclean (| none for Deep Sets)
    output: str = "set"  # set: one output per set; elements: one per element (equivariant)

    def __post_init__(self):
        for name in ("in_dim", "out_dim", "depth", "dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        from ..nn.norms import NORMS

        resolve_choice("norm", self.norm, NORMS)
        resolve_choice("output", self.output, OUTPUTS)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class SetModel(nn.Module):
    """A deep set model: ``encode`` (equivariant, per element) -> ``pool`` (invariant) -> ``decode``.

    ``forward(x, mask=None)`` returns ``[B, out_dim]``, or ``[B, N, out_dim]`` with ``output="elements"``
    (zeros in padded rows). Padded input rows may hold anything, inf and NaN included.

    Empty sets: a set with no valid element raises ``ValueError`` naming its batch index. (The layers in
    ``deepsets.nn`` themselves give a defined, finite output for empty sets: zero pooled vectors and zero
    attention outputs.)
    """

    config: SetModelConfig
    #: True for families whose layers all accept packed rows (``deepsets.nn.PackedSets``): with a mask, such a
    #: model runs on the valid elements only, back to back, and never computes anything for padding.
    packs_sets: bool = False

    def __init__(self, config: SetModelConfig):
        super().__init__()
        self.config = config

    def encode(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # [B, N, H]
        raise NotImplementedError

    def pool(self, h: Tensor, mask: Tensor | None = None) -> Tensor:  # [B, H]
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:  # [B, H] -> [B, out]
        raise NotImplementedError

    def decode_elements(self, h: Tensor, z: Tensor, mask: Tensor | None) -> Tensor:  # -> [B, N, out]
        raise NotImplementedError

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = check_sets(x, mask)
        if x.shape[-1] != self.config.in_dim:
            raise ValueError(
                f"x has {x.shape[-1]} features per element but the model expects in_dim={self.config.in_dim}"
            )
        check_nonempty(mask, x.shape[1])
        if mask is not None and self.packs_sets:
            sets = PackedSets(mask)
            x = sets.pack(x)  # padded rows (whatever they hold) are never read
        else:
            sets = mask
            x = clear_padding(x, mask)
        h = self.encode(x, sets)
        z = self.pool(h, sets)
        if self.config.output == "elements":
            out = self.decode_elements(h, z, sets)
            return sets.unpack(out) if isinstance(sets, PackedSets) else zero_padding(out, mask)
        return self.decode(z)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
