"""``deepsets predict``: one prediction per set of a new file, written as CSV."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from ..data import DataError
from ..data._base import SetDataset, check_exists, open_h5

H5_KEYS = ("test_data", "data", "train_data", "test_cloud", "tr_cloud")


class NpySets(SetDataset):
    """An ``.npy`` array ``[sets, elements, features]`` (memory-mapped, read one set at a time)."""

    def __init__(self, path):
        super().__init__(set_size=None)
        self.path = Path(path)
        try:
            self.arr = np.load(self.path, mmap_mode="r")
        except Exception as e:
            raise DataError(f"{self.path}: not a readable .npy file: {e}") from None
        if self.arr.ndim != 3:
            raise DataError(f"{self.path}: expected an array [sets, elements, features], found shape {self.arr.shape}")
        self.in_dim, self.source = int(self.arr.shape[2]), str(self.path)

    def __len__(self):
        return self.arr.shape[0]

    def _raw_set(self, i):
        return np.asarray(self.arr[i], dtype=np.float32)

    def _target(self, i):
        return float("nan")


class H5Sets(SetDataset):
    """Sets from one key ``[sets, elements, features]`` of an HDF5 file, read lazily."""

    def __init__(self, path, key: str | None = None):
        super().__init__(set_size=None)
        self.path = Path(path)
        with open_h5(self.path) as f:
            if key is None:
                key = next((k for k in H5_KEYS if k in f), None)
                if key is None:
                    raise DataError(f"{self.path}: none of the keys {list(H5_KEYS)} found; pass --key "
                                    f"(keys in the file: {sorted(f.keys())})")
            if key not in f:
                raise DataError(f"{self.path}: no key {key!r}; keys in the file: {sorted(f.keys())}")
            shape = f[key].shape
            if len(shape) != 3:
                raise DataError(f"{self.path}: {key} must be [sets, elements, features], found shape {shape}")
        self.key, self.n, self.in_dim, self.source = key, shape[0], int(shape[2]), f"{self.path}:{key}"
        self._f = None

    def __len__(self):
        return self.n

    def _raw_set(self, i):
        if self._f is None:
            self._f = open_h5(self.path)
        try:
            return np.asarray(self._f[self.key][i], dtype=np.float32)
        except Exception as e:  # h5py's errors on damaged files
            raise DataError(f"{self.path}: cannot read {self.key}[{i}] (corrupt or truncated?): {e}") from e

    def _target(self, i):
        return float("nan")


def open_input(path, channels=None, set_column=None, key=None, expect_dim=None, channel_map=None) -> SetDataset:
    """The sets of a file to predict on: HDF5, ``.npy``, FCS file/folder, or ``.h5ad``."""
    p = check_exists(path)
    suffix = p.suffix.lower()
    if p.is_dir() or suffix == ".fcs":
        from ..data.cytometry import FCSDataset

        return FCSDataset(p, channels=channels, expect_dim=expect_dim, set_size=None, channel_map=channel_map)
    if suffix == ".h5ad":
        from ..data.cytometry import H5ADDataset

        return H5ADDataset(p, set_column=set_column, channels=channels, expect_dim=expect_dim, set_size=None,
                           channel_map=channel_map)
    if suffix == ".npy":
        return NpySets(p)
    if suffix in (".h5", ".hdf5", ".hdf"):
        return H5Sets(p, key)
    raise DataError(f"{p}: unsupported input type {suffix!r}; expected .h5/.hdf5, .npy, .fcs (or a folder of them), .h5ad")


def set_names(ds) -> list[str]:
    if hasattr(ds, "set_name"):
        return [str(ds.set_name(i)) for i in range(len(ds))]
    return [str(i) for i in range(len(ds))]


@torch.no_grad()
def predict_sets(model, ds, max_elements: int = 262_144, batch_size: int = 64,
                 chunk_size: int = 65_536) -> list[np.ndarray]:
    """Model output for every set of ``ds``, whole sets (no subsampling). Sets are batched up to
    ``batch_size`` sets or ``max_elements`` padded elements, whichever comes first; a set larger than
    ``max_elements`` is evaluated alone and exactly in chunks of ``chunk_size`` elements (bounded memory,
    see :func:`deepsets.models.chunked_forward`)."""
    from ..data import pad_sets
    from ..nn.masking import check_nonempty

    model.eval()
    outs: list[np.ndarray] = []
    batch: list[torch.Tensor] = []
    first_index = 0
    source = getattr(ds, "source", "") or "input"
    label = ds.set_label if hasattr(ds, "set_label") else (lambda i: f"set {i}")

    def flush():
        nonlocal batch, first_index
        if not batch:
            return
        x, mask = pad_sets(batch)
        bad = ~torch.isfinite(x).all(-1) & mask
        if bad.any():
            b = int(bad.any(1).nonzero()[0])
            j = int(bad[b].nonzero()[0])
            raise DataError(f"{source}: {label(first_index + b)} holds NaN or infinite feature values "
                            f"(expected finite numbers; first at element {j})")
        try:
            check_nonempty(mask, x.shape[1])
        except ValueError:
            b = int((~mask.any(1)).nonzero()[0])
            raise DataError(f"{source}: {label(first_index + b)} is empty (expected at least one element, "
                            f"found 0)") from None
        if x.shape[1] > max_elements:  # one huge set: exact chunked evaluation
            from ..models.chunked import chunked_forward

            y = chunked_forward(model, x, mask, chunk_size=chunk_size).float()
        else:
            y = model(x, mask).float()
        outs.extend(y.numpy())
        first_index += len(batch)
        batch = []

    for i in range(len(ds)):
        x = torch.from_numpy(ds.get_set(i, subsample=False))
        if x.shape[-1] != model.config.in_dim:
            raise DataError(f"{source}: {label(i)} has {x.shape[-1]} features per element but the model "
                            f"expects {model.config.in_dim}")
        if batch and (len(batch) >= batch_size or max(len(b) for b in batch + [x]) * (len(batch) + 1) > max_elements):
            flush()
        batch.append(x)
    flush()
    return outs


def predictions_csv(names: list[str], outputs: list[np.ndarray], loss_kind: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    out_dim = outputs[0].shape[-1] if outputs else 1
    if loss_kind == "mse":
        w.writerow(["set"] + (["prediction"] if out_dim == 1 else [f"prediction_{k}" for k in range(out_dim)]))
        for n, o in zip(names, outputs):
            w.writerow([n] + [f"{v:.6g}" for v in np.atleast_1d(o)])
    elif loss_kind == "ce":
        w.writerow(["set", "predicted_class"] + [f"p_{k}" for k in range(out_dim)])
        for n, o in zip(names, outputs):
            p = torch.softmax(torch.from_numpy(np.asarray(o)), -1).numpy()
            w.writerow([n, int(p.argmax())] + [f"{v:.6g}" for v in p])
    else:  # one logit per element: report the predicted odd element and its probability
        w.writerow(["set", "odd_element", "probability"])
        for n, o in zip(names, outputs):
            logits = torch.from_numpy(np.asarray(o)).reshape(-1)
            p = torch.softmax(logits, -1)
            w.writerow([n, int(p.argmax()), f"{float(p.max()):.6g}"])
    return buf.getvalue()


def predict_file(checkpoint, input_path, output=None, channels=None, set_column=None, key=None,
                 batch_size: int = 64, channel_map=None) -> tuple[str, int]:
    """Predict every set of ``input_path``; returns (CSV text, number of sets) and writes ``output`` if given.

    For FCS and ``.h5ad`` input, ``channels`` defaults to the channels the model was trained on (recorded in the
    checkpoint), and ``channel_map`` (``{name in the file: name to use}`` or ``["FILE=NAME", ...]``) renames
    the new files' channels to those names.
    """
    from .io import atomic_write_text
    from .run import load_checkpoint

    module = load_checkpoint(checkpoint)
    if channels is None:
        trained = ((module.hparams.get("train_config") or {}).get("task_options") or {}).get("channels")
        suffix = Path(input_path).suffix.lower()
        if trained and (Path(input_path).is_dir() or suffix in (".fcs", ".h5ad")):
            channels = list(trained)
    ds = open_input(input_path, channels=channels, set_column=set_column, key=key,
                    expect_dim=module.model.config.in_dim, channel_map=channel_map)
    if ds.in_dim != module.model.config.in_dim:
        raise DataError(f"{input_path}: sets have {ds.in_dim} features per element but the checkpoint's model "
                        f"expects {module.model.config.in_dim}")
    outs = predict_sets(module.model, ds, batch_size=batch_size)
    text = predictions_csv(set_names(ds), outs, module.hparams["loss"])
    if output:
        out = Path(output)
        if out.exists() and out.is_dir():
            raise ValueError(f"--output {out} is a folder; give a file name")
        atomic_write_text(out, text)
    return text, len(outs)
