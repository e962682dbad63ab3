"""Sharing trained models: ``model.save_pretrained(DIR)`` and ``deepsets.from_pretrained(DIR)``.

A saved model is a folder of two files, the layout of huggingface_hub's ``PyTorchModelHubMixin`` (so the folder
can be pushed to, and downloaded from, the Hugging Face Hub as it is):

* ``model.safetensors``: the weights (the ``state_dict``; safetensors holds tensors only, never code);
* ``config.json``: ``{"model": a registered model name, "config": its config fields, "data": what the training
  run recorded about its data (features, classes), "deepsets_version": ...}``.

``deepsets export --checkpoint CKPT --format hub --output DIR`` writes the folder from a training checkpoint.
The weights are the same whatever backend the model runs on (the backends keep the ``state_dict`` keys).
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from .models.base import SetModel

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as e:
        raise ImportError("saving and loading pretrained models needs safetensors: pip install 'deepsets[hub]'") from e
    return safetensors.torch


def preset_name(model: SetModel) -> str:
    """A registered model name that rebuilds ``model`` from its config: the preset whose defaults the config
    matches (``deepsets++``, ...), else any preset of the same family (every config field is saved anyway)."""
    from .models.registry import _PRESETS

    config = model.config
    family = [p for p in _PRESETS.values() if type(config) is p.config_cls]
    if not family:
        raise TypeError(f"no registered model family builds a {type(config).__name__}; register it with "
                        f"deepsets.models.register_model first")
    exact = [p for p in family if all(getattr(config, k) == v for k, v in p.defaults.items())]
    return (exact or family)[0].name


def save_pretrained(model: SetModel, directory: str | Path, data_info: dict | None = None) -> Path:
    """Write ``model`` as ``DIRECTORY/model.safetensors`` + ``DIRECTORY/config.json``; returns the folder.

    ``data_info``: what a training run recorded about its data (``features``, ``classes``, ...), kept in
    ``config.json`` so whoever loads the model knows its inputs and outputs.
    """
    from . import __version__
    from .train.io import atomic_write_bytes, atomic_write_text

    st = _safetensors()
    if not isinstance(model, SetModel):
        raise TypeError(f"save_pretrained expects a deepsets model, got {type(model).__name__}")
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    config = {"model": preset_name(model), "config": model.config.to_dict(), "data": data_info or {},
              "deepsets_version": __version__}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS, st.save(state, metadata={"format": "pt"}))
    atomic_write_text(out / CONFIG, json.dumps(config, indent=2) + "\n")
    return out


def read_config(directory: str | Path) -> dict:
    """``config.json`` of a saved model, checked (a clear error naming the file otherwise)."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a folder written by save_pretrained")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict) or "model" not in config:
        raise ValueError(f"{path}: expected keys 'model' and 'config' (a deepsets model), found "
                         f"{sorted(config) if isinstance(config, dict) else type(config).__name__}")
    return config


def from_pretrained(path: str | Path, backend: str = "auto", **download) -> SetModel:
    """The model saved in ``path`` (a folder written by :func:`save_pretrained`), in eval mode.

    ``path`` may also be a Hugging Face Hub repository id (``user/name``) when huggingface_hub is installed;
    ``download`` is passed to its ``snapshot_download`` (``revision=``, ``cache_dir=``, ...). ``backend`` as in
    :func:`deepsets.create_model`.
    """
    from .models.registry import get_preset, model_from_config

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
    saved = read_config(folder)
    preset = get_preset(saved["model"])
    valid = {f.name for f in fields(preset.config_cls)}
    unknown = sorted(set(saved["config"]) - valid)
    if unknown:
        raise ValueError(f"{folder / CONFIG}: config fields {unknown} are not fields of {saved['model']!r} (saved by "
                         f"another deepsets version?)")
    model = model_from_config(preset.config_cls(**saved["config"]), backend=backend)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist")
    try:
        state = _safetensors().load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise ValueError(f"{weights}: not a readable safetensors file (corrupt or truncated?): {e}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not match the model in {CONFIG} (missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]})")
    model.data_info = saved.get("data") or {}
    return model.eval()


def checkpoint_to_pretrained(checkpoint: str | Path, directory: str | Path) -> Path:
    """The folder of :func:`save_pretrained` for a training checkpoint (its model and its data description)."""
    from .train.run import load_checkpoint

    module = load_checkpoint(checkpoint)
    info = dict(module.hparams.get("data_info") or {})
    info.update({"task": module.hparams["task"], "target": module.hparams.get("target")})
    return save_pretrained(module.model, directory, data_info=info)


def push_to_hub(directory: str | Path, repo_id: str, private: bool = True, **kwargs) -> str:
    """Upload a saved model's folder to the Hugging Face Hub (needs huggingface_hub and a login); returns the
    commit URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError as e:
        raise ImportError("pushing to the Hub needs huggingface_hub: pip install 'deepsets[hub]'") from e
    read_config(directory)
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return str(api.upload_folder(repo_id=repo_id, folder_path=str(directory), **kwargs))

