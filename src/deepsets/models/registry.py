"""One registry of named presets over the two architecture families.

A preset is a family plus the paper's defaults for it; ``create_model`` merges keyword overrides into
those defaults, validates the result and builds the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from .base import SetEnsemble, SetModel, SetModelConfig
from .deepsets import DeepSets, DeepSetsConfig
from .settransformer import SetTransformer, SetTransformerConfig


@dataclass(frozen=True)
class Preset:
    name: str
    model_cls: type[SetModel]
    config_cls: type[SetModelConfig]
    defaults: dict = field(default_factory=dict)
    description: str = ""


_PRESETS: dict[str, Preset] = {}


def register_model(name: str, model_cls, config_cls, description: str = "", **defaults) -> Preset:
    """Register a named preset (the paper's four are registered below)."""
    if name in _PRESETS:
        raise ValueError(f"a model named {name!r} is already registered")
    unknown = set(defaults) - set(config_cls.field_names())
    if unknown:
        raise ValueError(f"preset {name!r}: unknown config fields {sorted(unknown)}")
    preset = Preset(name, model_cls, config_cls, dict(defaults), description)
    _PRESETS[name] = preset
    return preset


register_model("deepsets", DeepSets, DeepSetsConfig, "Deep Sets baseline (Zaheer et al. 2017): no norm, no residual",
               depth=50, norm="none", residual="none", pool="sum")
register_model("deepsets++", DeepSets, DeepSetsConfig, "Deep Sets++: set norm + clean-path residual blocks",
               depth=50, norm="set", residual="clean", pool="sum")
# The paper's "original" Set Transformer uses layer norm ("the normalization of choice in Set Transformer"; its
# code's sweeps run the baseline with layer_norm / set_norm, never without a norm), in post-norm MABs.
register_model("settransformer", SetTransformer, SetTransformerConfig,
               "Set Transformer baseline (Lee et al. 2019): post-norm ISABs with layer norm",
               depth=16, norm="layer", residual="nonclean")
register_model("settransformer++", SetTransformer, SetTransformerConfig,
               "Set Transformer++: set norm + clean-path pre-norm ISABs", depth=16, norm="set", residual="clean")


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_PRESETS)


def get_preset(name: str) -> Preset:
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _PRESETS[name]


def preset_default(name: str, key: str):
    """The value a preset gives ``key`` when not overridden (its own default, else the family's)."""
    preset = get_preset(name)
    if key in preset.defaults:
        return preset.defaults[key]
    return {f.name: f.default for f in fields(preset.config_cls)}.get(key)


def model_config(name: str, in_dim: int, out_dim: int, **overrides) -> SetModelConfig:
    """The validated config ``create_model`` would build (paper defaults + overrides)."""
    preset = get_preset(name)
    valid = preset.config_cls.field_names()
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise TypeError(
            f"create_model({name!r}) got unknown option(s) {unknown}; valid options: "
            f"{', '.join(v for v in valid if v not in ('in_dim', 'out_dim'))}"
        )
    kwargs = {**preset.defaults, **{k: v for k, v in overrides.items() if v is not None}}
    return preset.config_cls(in_dim=in_dim, out_dim=out_dim, **kwargs)


def create_model(name: str, in_dim: int, out_dim: int, backend: str = "auto", **overrides) -> SetModel:
    """Build a registered model with the paper's defaults, any keyword overriding them.

    ``backend``: ``"auto"`` (default) swaps in the fast CPU modules of :mod:`deepsets.backends` where they fit
    (same parameters and ``state_dict`` keys; each falls back to the reference layer where it does not apply);
    ``"reference"`` keeps the reference layers of :mod:`deepsets.nn` only.

    >>> model = create_model("deepsets++", in_dim=2, out_dim=1, depth=50)
    >>> model(x, mask)  # x: [B, N, 2], mask: bool[B, N] -> [B, 1]
    """
    from ..backends import apply

    config = model_config(name, in_dim, out_dim, **overrides)
    return apply(build(get_preset(name).model_cls, config), backend)


def build(model_cls: type[SetModel], config: SetModelConfig) -> SetModel:
    """The model of a family for a config: one model, or a :class:`SetEnsemble` of ``config.ensemble``."""
    return SetEnsemble(config, model_cls) if config.ensemble > 1 else model_cls(config)


def model_from_config(config: SetModelConfig | dict, name: str | None = None, backend: str = "auto") -> SetModel:
    """Rebuild a model from a config object, or from ``{"name": ..., **config fields}``."""
    if isinstance(config, SetModelConfig):
        from ..backends import apply

        for preset in _PRESETS.values():
            if isinstance(config, preset.config_cls):
                return apply(build(preset.model_cls, config), backend)
        raise TypeError(f"no registered family for config type {type(config).__name__}")
    config = dict(config)
    name = config.pop("name", name)
    if name is None:
        raise ValueError("a config dict needs a 'name' naming a registered model")
    return create_model(name, backend=backend, **config)
