"""Models on a backend: ``create_model``, ``model_from_config`` and ``from_pretrained``.

The layers of :mod:`deepsets.models` build a model on the reference layers; here the default backend
(:mod:`deepsets.backends`) is applied to it, as every public way of making a model does.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from . import backends
from .models import pretrained
from .models.base import SetModel, SetModelConfig, build
from .models.pretrained import CONFIG, WEIGHTS
from .models.registry import family_of, get_preset, model_config


def create_model(name: str, in_dim: int, out_dim: int, backend: str = "auto", **overrides) -> SetModel:
    """Build a registered model with the paper's defaults, any keyword overriding them.

    ``backend``: ``"auto"`` (default) swaps in the fast CPU modules of :mod:`deepsets.backends` where they fit
    (same parameters and ``state_dict`` keys; each falls back to the reference layer where it does not apply);
    ``"reference"`` keeps the reference layers of :mod:`deepsets.nn` only.

    >>> model = create_model("deepsets++", in_dim=2, out_dim=1, depth=50)
    >>> model(x, mask)  # x: [B, N, 2], mask: bool[B, N] -> [B, 1]
    """
    config = model_config(name, in_dim, out_dim, **overrides)
    return backends.apply(build(get_preset(name).model_cls, config), backend)


def model_from_config(config: SetModelConfig | dict, name: str | None = None, backend: str = "auto") -> SetModel:
    """Rebuild a model from a config object, or from ``{"name": ..., **config fields}``."""
    if isinstance(config, SetModelConfig):
        return backends.apply(build(family_of(config).model_cls, config), backend)
    config = dict(config)
    name = config.pop("name", name)
    if name is None:
        raise ValueError("a config dict needs a 'name' naming a registered model")
    return create_model(name, backend=backend, **config)


def from_pretrained(path: str | Path, backend: str = "auto", trust_code: bool | None = False, **download) -> SetModel:
    """The model saved in ``path`` (a folder written by :func:`save_pretrained`), in eval mode.

    ``path`` may also be a Hugging Face Hub repository id (``user/name``) when huggingface_hub is installed;
    ``download`` is passed to its ``snapshot_download`` (``revision=``, ``cache_dir=``, ...). ``backend`` as in
    :func:`create_model`.

    Nothing in the folder is run: a model trained with a task given as code (``file.py:NAME``, recorded in
    ``config.json``) that is not registered in this process raises :class:`~deepsets.data.UntrustedTaskError`;
    ``trust_code=True`` imports that task; ``None`` does not look at it (the model alone: nothing is imported).
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        if str(path).count("/") != 1:
            raise FileNotFoundError(f"{path}: no such folder (expected a folder written by save_pretrained, or a "
                                    f"Hub repository id user/name)")
        try:
            from huggingface_hub import snapshot_download
        except ImportError as e:
            raise ImportError(f"{path} is not a local folder; downloading it from the Hub needs huggingface_hub: "
                              f"pip install 'deepsets[hub]'") from e
        folder = Path(snapshot_download(str(path), allow_patterns=[WEIGHTS, CONFIG], **download))
    saved = pretrained.read_config(folder)
    from .data.tasks import recorded_task

    data = saved.get("data") if isinstance(saved.get("data"), dict) else {}
    if trust_code is not None:
        recorded_task(data.get("task"), f"the model in {folder} was trained with", trust_code)
    preset = get_preset(saved["model"])
    valid = {f.name for f in fields(preset.config_cls)}
    unknown = sorted(set(saved["config"]) - valid)
    if unknown:
        raise ValueError(f"{folder / CONFIG}: config fields {unknown} are not fields of {saved['model']!r} (saved by "
                         f"another deepsets version?)")
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist")
    config = preset.config_cls(**saved["config"])
    check_sizes(config, weights, folder / CONFIG)  # before allocating: a wrong config.json fails fast
    model = model_from_config(config, backend=backend)
    try:
        state = pretrained.safetensors().load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise ValueError(f"{weights}: not a readable safetensors file (corrupt or truncated?): {e}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not match the model in {CONFIG} (missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]})")
    model.data_info = saved.get("data") or {}
    return model.eval()


def check_sizes(config, weights: str | Path, config_path: str | Path) -> None:
    """Compare the model ``config`` describes (built on the meta device: no memory) with the tensor shapes in the
    header of ``weights``; a config.json whose sizes (``dim``, ``depth``, ...) differ from the weights' raises
    ``ValueError`` before any memory is allocated for the model."""
    shapes = pretrained.read_header(weights)
    try:
        with torch.device("meta"):
            meta = build(family_of(config).model_cls, config)  # shapes only: no memory
        expected = {k: list(v.shape) for k, v in meta.state_dict().items()}
    except (ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"{config_path}: not a valid model description (sizes too large or out of range?): "
                         f"{e}") from None
    wrong = [k for k in expected if k in shapes and expected[k] != shapes[k]]
    if wrong:
        k = wrong[0]
        sizes = {f: getattr(config, f) for f in ("in_dim", "out_dim", "dim", "depth") if hasattr(config, f)}
        raise ValueError(f"{config_path}: sizes do not match the weights in {Path(weights).name}: {k} is "
                         f"{expected[k]} by the config ({', '.join(f'{f}={v}' for f, v in sizes.items())}) but "
                         f"{shapes[k]} in the weights ({len(wrong)} tensor(s) differ); config.json and the weights "
                         f"are of different models")
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not match the model in {CONFIG} (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")
