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
import os
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
    ``config.json`` so whoever loads the model knows its inputs and outputs; a path in it (the training data's
    ``source``) is kept as its base name only, so the file says nothing about the machine that trained.

    Both files are written into a temporary folder beside ``DIRECTORY`` that is renamed into place when complete
    (into an existing folder: the two files are renamed into it, its other files stay); a failure removes the
    temporary folder and raises :class:`deepsets.train.io.WriteError` (``cannot write DIRECTORY: <reason>``).
    """
    import shutil
    import tempfile

    from . import __version__
    from .train.io import WriteError, atomic_write_bytes, check_free_space, current_umask, new_file_mode

    st = _safetensors()
    if not isinstance(model, SetModel):
        raise TypeError(f"save_pretrained expects a deepsets model, got {type(model).__name__}")
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    config = {"model": preset_name(model), "config": model.config.to_dict(), "data": portable(data_info or {}),
              "deepsets_version": __version__}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    files = {WEIGHTS: st.save(state, metadata={"format": "pt"}), CONFIG: (json.dumps(config, indent=2) + "\n").encode()}
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        check_free_space(out / WEIGHTS, sum(len(v) for v in files.values()))
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
        if not out.exists() or (out.is_dir() and not any(out.iterdir())):
            os.chmod(tmp, os.stat(out).st_mode & 0o7777 if out.exists() else 0o777 & ~current_umask())
            os.replace(tmp, out)  # a new (or empty) folder: complete or absent
            tmp = None
        else:  # a folder with other files: replace ours, one rename each (weights first, config.json last)
            for name in files:
                os.chmod(tmp / name, new_file_mode(out / name))
                os.replace(tmp / name, out / name)
    except OSError as e:  # named by the folder asked for, not the temporary one
        if isinstance(e, WriteError) and tmp is None:
            raise
        raise WriteError(e.errno or 0, e.strerror or str(e), str(out)) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def portable(info: dict) -> dict:
    """``info`` without the paths of the machine that trained: the data's ``source`` keeps the base names of the
    files or folders it names (``/data/run1/cells.csv`` -> ``cells.csv``), any other absolute path its base name."""
    import re

    def clean(k, v):
        if not isinstance(v, str):
            return v
        if k == "source":
            return ", ".join(re.sub(r"^[^:]*[\\/]", "", part) for part in v.split(", "))
        return Path(v).name if os.path.isabs(v) or v.startswith("~") else v

    return {k: clean(k, v) for k, v in info.items()}


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


def from_pretrained(path: str | Path, backend: str = "auto", trust_code: bool | None = False, **download) -> SetModel:
    """The model saved in ``path`` (a folder written by :func:`save_pretrained`), in eval mode.

    ``path`` may also be a Hugging Face Hub repository id (``user/name``) when huggingface_hub is installed;
    ``download`` is passed to its ``snapshot_download`` (``revision=``, ``cache_dir=``, ...). ``backend`` as in
    :func:`deepsets.create_model`.

    Nothing in the folder is run: a model trained with a task given as code (``file.py:NAME``, recorded in
    ``config.json``) that is not registered in this process raises :class:`~deepsets.data.UntrustedTaskError`;
    ``trust_code=True`` imports that task; ``None`` does not look at it (the model alone: nothing is imported).
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
        state = _safetensors().load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise ValueError(f"{weights}: not a readable safetensors file (corrupt or truncated?): {e}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not match the model in {CONFIG} (missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]})")
    model.data_info = saved.get("data") or {}
    return model.eval()


def read_header(weights: str | Path) -> dict[str, list[int]]:
    """The tensor shapes a safetensors file holds (``{name: shape}``), from its header alone (no tensor is read)."""
    import struct

    weights = Path(weights)
    size = weights.stat().st_size
    with weights.open("rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= min(size - 8, 100_000_000):
            raise ValueError(f"{weights}: not a readable safetensors file (corrupt or truncated?): header length "
                             f"{n} in a file of {size} bytes")
        try:
            header = json.loads(f.read(n))
            return {k: [int(d) for d in v["shape"]] for k, v in header.items() if k != "__metadata__"}
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"{weights}: not a readable safetensors file (corrupt or truncated?): {e}") from None


def check_sizes(config, weights: str | Path, config_path: str | Path) -> None:
    """Compare the model ``config`` describes (built on the meta device: no memory) with the tensor shapes in the
    header of ``weights``; a config.json whose sizes (``dim``, ``depth``, ...) differ from the weights' raises
    ``ValueError`` before any memory is allocated for the model."""
    import torch

    from .models.registry import model_from_config

    shapes = read_header(weights)
    try:
        with torch.device("meta"):
            meta = model_from_config(config, backend="reference")  # shapes only: no memory
        expected = {k: list(v.shape) for k, v in meta.state_dict().items()}
    except (ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"{config_path}: not a valid model description (sizes too large or out of range?): "
                         f"{e}") from None
    wrong = [k for k in expected if k in shapes and expected[k] != shapes[k]]
    if wrong:
        k = wrong[0]
        fields = {f: getattr(config, f) for f in ("in_dim", "out_dim", "dim", "depth") if hasattr(config, f)}
        raise ValueError(f"{config_path}: sizes do not match the weights in {Path(weights).name}: {k} is "
                         f"{expected[k]} by the config ({', '.join(f'{f}={v}' for f, v in fields.items())}) but "
                         f"{shapes[k]} in the weights ({len(wrong)} tensor(s) differ); config.json and the weights "
                         f"are of different models")
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not match the model in {CONFIG} (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")


def checkpoint_to_pretrained(checkpoint: str | Path, directory: str | Path, trust_code: bool = False) -> Path:
    """The folder of :func:`save_pretrained` for a training checkpoint (its model and its data description);
    ``trust_code`` as in :func:`deepsets.train.run.load_checkpoint`."""
    from .train.run import load_checkpoint

    module = load_checkpoint(checkpoint, trust_code=trust_code)
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

