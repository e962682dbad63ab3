"""Sharing trained models: ``model.save_pretrained(DIR)``, ``deepsets.from_pretrained(DIR)``, a training
checkpoint as such a folder, and the Hugging Face Hub.

The folder's format (``model.safetensors`` + ``config.json``, the layout of huggingface_hub's
``PyTorchModelHubMixin``) is :mod:`deepsets.models.pretrained`; :func:`from_pretrained` (:mod:`deepsets.factory`)
rebuilds the model on a backend. ``deepsets export --checkpoint CKPT --format hub --output DIR`` writes the folder
from a training checkpoint.
"""
from __future__ import annotations

from pathlib import Path

from .checkpoint import Checkpoint, open_checkpoint
from .factory import check_sizes, from_pretrained
from .models.pretrained import CONFIG, WEIGHTS, portable, read_config, read_header, save_pretrained
from .models.registry import preset_name

__all__ = ["CONFIG", "WEIGHTS", "check_sizes", "checkpoint_to_pretrained", "from_pretrained", "portable",
           "preset_name", "push_to_hub", "read_config", "read_header", "save_pretrained"]


def checkpoint_to_pretrained(checkpoint: str | Path | Checkpoint, directory: str | Path,
                             trust_code: bool = False) -> Path:
    """The folder of :func:`save_pretrained` for a training checkpoint (a path, or one already opened with
    :func:`deepsets.checkpoint.open_checkpoint`): its model and its data description; ``trust_code`` as there."""
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = open_checkpoint(checkpoint, trust_code=trust_code)
    return save_pretrained(checkpoint.model, directory, data_info=checkpoint.pretrained_info())


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

