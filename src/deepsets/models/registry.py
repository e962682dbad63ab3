"""One registry of named presets over the model families.

A preset is a family plus the paper's defaults for it; :func:`model_config` merges keyword overrides into those
defaults and validates the result (``deepsets.create_model`` then builds the model on a backend). The registry
knows no family: each family's module registers its presets (the paper's four: :mod:`.deepsets`,
:mod:`.settransformer`), and ``deepsets.models``, which every import of this module loads first, imports both.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Preset:
    name: str
    model_cls: type  # a SetModel subclass
    config_cls: type  # its SetModelConfig subclass
    defaults: dict = field(default_factory=dict)
    description: str = ""


_PRESETS: dict[str, Preset] = {}


def register_model(name: str, model_cls, config_cls, description: str = "", **defaults) -> Preset:
    """Register a named preset (the paper's four are registered by their families' modules)."""
    if name in _PRESETS:
        raise ValueError(f"a model named {name!r} is already registered")
    unknown = set(defaults) - set(config_cls.field_names())
    if unknown:
        raise ValueError(f"preset {name!r}: unknown config fields {sorted(unknown)}")
    preset = Preset(name, model_cls, config_cls, dict(defaults), description)
    _PRESETS[name] = preset
    return preset


def list_models() -> list[str]:
    """Names accepted by ``deepsets.create_model``."""
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


def model_config(name: str, in_dim: int, out_dim: int, **overrides):
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


def family_of(config) -> Preset:
    """The first registered preset whose family builds ``config`` (its type), or TypeError."""
    for preset in _PRESETS.values():
        if isinstance(config, preset.config_cls):
            return preset
    raise TypeError(f"no registered family for config type {type(config).__name__}")


def preset_name(model) -> str:
    """A registered model name that rebuilds ``model`` from its config: the preset whose defaults the config
    matches (``deepsets++``, ...), else any preset of the same family (every config field is saved anyway)."""
    config = model.config
    family = [p for p in _PRESETS.values() if type(config) is p.config_cls]
    if not family:
        raise TypeError(f"no registered model family builds a {type(config).__name__}; register it with "
                        f"deepsets.models.register_model first")
    exact = [p for p in family if all(getattr(config, k) == v for k, v in p.defaults.items())]
    return (exact or family)[0].name
