"""The model families as config dataclasses + presets in one registry, and the folder format of a shared model.

This layer builds models on the reference layers of :mod:`deepsets.nn` only. ``create_model``,
``model_from_config`` (:mod:`deepsets.factory`: a model on a backend) and ``chunked_forward``
(:mod:`deepsets.backends.chunked`) live above it; they are re-exported here for users, loaded when first asked for.
"""
from .base import SetModel, SetModelConfig, build, count_parameters
from .deepsets import DeepSets, DeepSetsConfig
from .registry import family_of, get_preset, list_models, model_config, preset_default, preset_name, register_model
from .settransformer import SetTransformer, SetTransformerConfig, paper_unused_parameters_per_isab

__all__ = [
    "SetModel", "SetModelConfig", "DeepSets", "DeepSetsConfig", "SetTransformer", "SetTransformerConfig",
    "create_model", "list_models", "get_preset", "model_config", "model_from_config", "register_model",
    "preset_default", "count_parameters", "paper_unused_parameters_per_isab", "chunked_forward", "build", "family_of",
    "preset_name",
]


def __getattr__(name):  # names of higher layers, for users (the package's own modules import them where defined)
    if name in ("create_model", "model_from_config"):
        from .. import factory

        return getattr(factory, name)
    if name == "chunked_forward":
        from ..backends.chunked import chunked_forward

        return chunked_forward
    raise AttributeError(f"module 'deepsets.models' has no attribute {name!r}")
