"""The folder of a shared model (the Hub folder format): ``model.save_pretrained(DIR)`` writes it,
``deepsets.from_pretrained(DIR)`` reads it back (:mod:`deepsets.factory`, which also applies a backend).

A saved model is a folder of two files, the layout of huggingface_hub's ``PyTorchModelHubMixin`` (so the folder
can be pushed to, and downloaded from, the Hugging Face Hub as it is):

* ``model.safetensors``: the weights (the ``state_dict``; safetensors holds tensors only, never code);
* ``config.json``: ``{"model": a registered model name, "config": its config fields, "data": what the training
  run recorded about its data (features, classes), "deepsets_version": ...}``.

The weights are the same whatever backend the model runs on (the backends keep the ``state_dict`` keys).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .._version import __version__
from ..files import WriteError, atomic_write_bytes, check_free_space, current_umask, new_file_mode
from .registry import preset_name

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def safetensors():
    try:
        import safetensors.torch
    except ImportError as e:
        raise ImportError("saving and loading pretrained models needs safetensors: pip install 'deepsets[hub]'") from e
    return safetensors.torch


def save_pretrained(model, directory: str | Path, data_info: dict | None = None) -> Path:
    """Write ``model`` as ``DIRECTORY/model.safetensors`` + ``DIRECTORY/config.json``; returns the folder.

    ``data_info``: what a training run recorded about its data (``features``, ``classes``, ...), kept in
    ``config.json`` so whoever loads the model knows its inputs and outputs; a path in it (the training data's
    ``source``) is kept as its base name only, so the file says nothing about the machine that trained.

    Both files are written into a temporary folder beside ``DIRECTORY`` that is renamed into place when complete
    (into an existing folder: the two files are renamed into it, its other files stay); a failure removes the
    temporary folder and raises :class:`deepsets.files.WriteError` (``cannot write DIRECTORY: <reason>``).
    """
    st = safetensors()
    if not hasattr(getattr(model, "config", None), "to_dict"):
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
