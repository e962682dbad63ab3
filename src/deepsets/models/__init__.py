"""The four model families of the paper as config dataclasses + presets in one registry."""
from ..backends.chunked import chunked_forward
from .base import SetModel, SetModelConfig, count_parameters
from .deepsets import DeepSets, DeepSetsConfig
from .registry import (
    create_model,
    get_preset,
    list_models,
    model_config,
    model_from_config,
    preset_default,
    register_model,
)
from .settransformer import (
    SetTransformer,
    SetTransformerConfig,
    paper_unused_parameters_per_isab,
)

__all__ = [
    "SetModel", "SetModelConfig", "DeepSets", "DeepSetsConfig", "SetTransformer", "SetTransformerConfig",
    "create_model", "list_models", "get_preset", "model_config", "model_from_config", "register_model", "preset_default",
    "count_parameters", "paper_unused_parameters_per_isab", "chunked_forward",
]
