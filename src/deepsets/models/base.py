"""What every set model shares: input checks, and the encode -> pool -> decode split."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from torch import Tensor, nn

from ..nn.masking import check_nonempty, check_sets, clear_padding, zero_padding
from ..nn.norms import norm_layer, resolve_choice
from ..nn.preprocess import Preprocess

OUTPUTS = ("set", "elements")
COMBINE = ("mean", "probabilities")


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
    # the model's own input preprocessing (deepsets.nn.preprocess): a transform per feature, then standardisation
    transform: str | list | None = None  # arcsinh[:COFACTOR] | log1p | none, for all features or one per feature
    standardize: bool = False  # (x - mean) / std with the training elements' moments (buffers, fitted in training)
    trained_set_size: int | None = None  # elements per set in training (None: whole sets / not recorded)
    ensemble: int = 1  # K > 1: K members of this config, one model that combines their outputs
    combine: str = "mean"  # how an ensemble combines: mean (outputs) | probabilities (mean softmax, as log)

    def __post_init__(self):
        for name in ("in_dim", "out_dim", "depth", "dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        from ..nn.norms import NORMS

        resolve_choice("norm", self.norm, NORMS)
        resolve_choice("output", self.output, OUTPUTS)
        resolve_choice("combine", self.combine, COMBINE)
        from ..nn.preprocess import parse_transform, per_feature

        for spec in per_feature(self.transform, self.in_dim):
            parse_transform(spec)
        for name in ("ensemble",):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.trained_set_size is not None and (not isinstance(self.trained_set_size, int)
                                                  or self.trained_set_size < 1):
            raise ValueError(f"trained_set_size must be a positive integer or None, got {self.trained_set_size!r}")

    @property
    def norm_layer(self):
        """The norm class that ``norm`` names (resolved once here; layers take the class)."""
        return norm_layer(self.norm)

    @property
    def bias(self) -> bool:
        """Linear layers that feed a norm have no bias, except with ``norm="none"`` (the paper's code)."""
        return self.norm == "none"

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

    def __init__(self, config: SetModelConfig):
        super().__init__()
        self.config = config
        self.preprocess = (Preprocess(config.in_dim, config.transform, config.standardize)
                           if config.transform is not None or config.standardize else None)

    def prepare(self, x: Tensor) -> Tensor:
        """The model's input preprocessing (transform, standardisation) of raw elements; identity without one."""
        return x if self.preprocess is None else self.preprocess(x)

    @property
    def size_consistent(self) -> bool:
        """Whether the output of a whole large set is what the model learned on subsets of its training size
        (mean, max or attention pooling, per-element outputs); sum pooling grows with the set, so a set larger
        than ``trained_set_size`` is predicted as the mean over random subsets of that size
        (:func:`deepsets.inference.predict_sets`)."""
        return True

    def encode(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # [B, N, H]
        raise NotImplementedError

    def pool(self, h: Tensor, mask: Tensor | None = None) -> Tensor:  # [B, H]
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:  # [B, H] -> [B, out]
        raise NotImplementedError

    def decode_elements(self, h: Tensor, z: Tensor, mask: Tensor | None) -> Tensor:  # -> [B, N, out]
        raise NotImplementedError

    def encode_chunked(self, x: Tensor, run) -> Tensor:  # one huge set [n, D] -> [n, H]
        """How this family is evaluated in chunks (:mod:`deepsets.backends.chunked`): the encoder, stage by stage,
        on ``run``'s primitives."""
        raise NotImplementedError(f"{type(self).__name__} does not declare how it is evaluated in chunks "
                                  f"(encode_chunked / pool_chunked)")

    def pool_chunked(self, h: Tensor, run) -> Tensor:  # [n, H] -> [1, H']
        raise NotImplementedError(f"{type(self).__name__} does not declare how it is evaluated in chunks "
                                  f"(encode_chunked / pool_chunked)")

    def check_input(self, x: Tensor, mask: Tensor | None) -> Tensor | None:
        """Validate a batch (shapes, dtypes, features, no empty set) and return the mask."""
        mask = check_sets(x, mask)
        if x.shape[-1] != self.config.in_dim:
            raise ValueError(
                f"x has {x.shape[-1]} features per element but the model expects in_dim={self.config.in_dim}"
            )
        check_nonempty(mask, x.shape[1])
        return mask

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = self.check_input(x, mask)
        x = clear_padding(self.prepare(x), mask)  # padded rows may hold anything, inf and NaN included
        h = self.encode(x, mask)
        z = self.pool(h, mask)
        if self.config.output == "elements":
            return zero_padding(self.decode_elements(h, z, mask), mask)
        return self.decode(z)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())

    def save_pretrained(self, directory, data_info: dict | None = None):
        """Write ``DIRECTORY/model.safetensors`` + ``config.json`` (:mod:`deepsets.models.pretrained`); load them
        with ``deepsets.from_pretrained(DIRECTORY)``."""
        from .pretrained import save_pretrained

        return save_pretrained(self, directory, data_info)


def build(model_cls: type[SetModel], config: SetModelConfig) -> SetModel:
    """The model of a family for a config, on the reference layers: one model, or a :class:`SetEnsemble` of
    ``config.ensemble`` members."""
    return SetEnsemble(config, model_cls) if config.ensemble > 1 else model_cls(config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class SetEnsemble(SetModel):
    """``config.ensemble`` members of one family and config, one model: the mean of their outputs, or for
    classifiers (``combine="probabilities"``) the log of the mean of their softmax probabilities (so that
    ``softmax(output)`` is the members' mean probability). The preprocessing is the ensemble's, applied once."""

    def __init__(self, config: SetModelConfig, member_cls: type[SetModel]):
        super().__init__(config)
        from dataclasses import replace

        member = replace(config, ensemble=1, transform=None, standardize=False)
        self.members = nn.ModuleList([member_cls(member) for _ in range(config.ensemble)])

    @property
    def size_consistent(self) -> bool:
        return self.members[0].size_consistent

    def member_outputs(self, x: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        """Every member's output on raw elements ``x``."""
        mask = self.check_input(x, mask)
        x = clear_padding(self.prepare(x), mask)
        return [m(x, mask) for m in self.members]

    def combine(self, outs: list[Tensor]) -> Tensor:
        if self.config.combine == "probabilities":
            import math

            import torch

            logp = torch.stack([o.float().log_softmax(-1) for o in outs])
            return (torch.logsumexp(logp, 0) - math.log(len(outs))).to(outs[0].dtype)
        return sum(outs) / len(outs)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.combine(self.member_outputs(x, mask))
