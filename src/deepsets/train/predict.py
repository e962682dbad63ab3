"""``deepsets predict``: one prediction per set of a new file, written as CSV."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from ..data import DataError
from ..data._base import SetDataset

def open_input(path, expect_dim=None, **options) -> SetDataset:
    """The sets of a file to predict on: any source of :mod:`deepsets.data.sources` (labels are not read).

    ``options`` are the source's layout options (``set_column``, ``features``/``channels``, ``channel_map``,
    ``layer``, ``no_header``, ``key``); ``expect_dim`` checks the number of FCS/h5ad channels when none are named.
    """
    from ..data.sources import SourceDataset, open_source, source_for
    from ..data.tasks import source_options

    opts = {k: v for k, v in source_options(options).items() if v is not None}
    if expect_dim is not None and opts.get("features") is None and source_for(path).name in ("fcs", "h5ad"):
        opts["expect_dim"] = expect_dim
    reader = open_source(path, None, **opts)
    reader.labels = None  # prediction needs no labels (and does not check them)
    return SourceDataset(reader, target="regression", set_size=None)


def set_names(ds) -> list[str]:
    if hasattr(ds, "set_name"):
        return [str(ds.set_name(i)) for i in range(len(ds))]
    return [str(i) for i in range(len(ds))]


@torch.no_grad()
def predict_sets(model, ds, max_elements: int = 262_144, batch_size: int = 64,
                 chunk_size: int = 65_536, progress: bool | None = None, huge_min: int = 32_768) -> list[np.ndarray]:
    """Model output for every set of ``ds``, whole sets (no subsampling). Sets are batched up to
    ``batch_size`` sets or ``max_elements`` padded elements, whichever comes first; a set larger than
    ``max_elements`` is evaluated alone and exactly in chunks of ``chunk_size`` elements (bounded memory,
    see :func:`deepsets.models.chunked_forward`). A set of at least ``huge_min`` elements also runs alone when the
    model has a huge-set fast path (:mod:`deepsets.backends.huge`: about 2x faster than the batched forward at
    10^5 elements, the same outputs up to float round-off). Sets are read one ahead in a background thread (reading
    overlaps computing); ``progress``: a progress bar with sets and cells per second (None: on a terminal only)."""
    from ..backends import huge
    from ..backends.chunked import chunked_forward
    from ..data import pad_sets
    from ..nn.masking import check_nonempty

    model.eval()
    outs: list[np.ndarray] = []
    batch: list[torch.Tensor] = []
    first_index = 0
    source = getattr(ds, "source", "") or "input"
    label = ds.set_label if hasattr(ds, "set_label") else (lambda i: f"set {i}")

    def flush(alone: bool = False):
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
        if alone or x.shape[1] > max_elements:  # one huge set: exact chunked evaluation
            y = chunked_forward(model, x, mask, chunk_size=chunk_size).float()
        else:
            y = model(x, mask).float()
        outs.extend(y.numpy())
        first_index += len(batch)
        batch = []

    bar = _progress(len(ds), progress)
    for i, x in enumerate(prefetched(ds)):
        bar.update(1)
        bar.cells += len(x)
        bar.set_postfix_str(f"{bar.cells / max(bar.format_dict['elapsed'], 1e-9):,.0f} cells/s", refresh=False)
        if x.shape[-1] != model.config.in_dim:
            raise DataError(f"{source}: {label(i)} has {x.shape[-1]} features per element but the model "
                            f"expects {model.config.in_dim}")
        if len(x) >= huge_min and huge.plan(model, x) is not None:
            flush()
            batch.append(x)
            flush(alone=True)
            continue
        if batch and (len(batch) >= batch_size or max(len(b) for b in batch + [x]) * (len(batch) + 1) > max_elements):
            flush()
        batch.append(x)
    flush()
    bar.close()
    return outs


def prefetched(ds):
    """The whole sets of ``ds`` as tensors, in order; the next set is read (e.g. the next FCS file parsed) in a
    background thread while the caller computes on the current one."""
    from concurrent.futures import ThreadPoolExecutor

    def read(i):
        return torch.from_numpy(ds.get_set(i, subsample=False))

    n = len(ds)
    if n == 0:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepsets-read") as pool:
        nxt = pool.submit(read, 0)
        for i in range(n):
            x = nxt.result()
            if i + 1 < n:
                nxt = pool.submit(read, i + 1)
            yield x


def _progress(total: int, enabled):
    """A tqdm bar over sets that also counts cells (``enabled=None``: only on a terminal)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="set", desc="predict", disable=None if enabled is None else not enabled,
               leave=False)
    bar.cells = 0
    return bar


def predictions_csv(names: list[str], outputs: list[np.ndarray], target, classes=None) -> str:
    """One row per set: ``set`` then the target's columns (``prediction``; ``predicted_class`` + ``p_<label>``;
    ``odd_element`` + ``probability``)."""
    from ..data.targets import get_target

    target = get_target(target)
    buf = io.StringIO()
    w = csv.writer(buf)
    out_dim = outputs[0].shape[-1] if outputs else 1
    w.writerow(["set"] + target.csv_header(out_dim, classes))
    for n, o in zip(names, outputs):
        w.writerow([n] + target.csv_row(o, classes))
    return buf.getvalue()


#: the layout options of a training run that a prediction reuses unless given again
PREDICT_OPTIONS = ("set_column", "features", "channels", "channel_map", "layer", "no_header", "key")


def predict_file(checkpoint, input_path, output=None, batch_size: int = 64, **options) -> tuple[str, int]:
    """Predict every set of ``input_path``; returns (CSV text, number of sets) and writes ``output`` if given.

    ``options`` are the source's layout options (``set_column``, ``features``/``channels``, ``channel_map``,
    ``layer``, ``no_header``, ``key``); those not given are the training run's, and the features default to the
    ones the model was trained on (by name, for tables, FCS and ``.h5ad``), so a file whose columns come in
    another order, or an FCS folder for a model trained on a table, is read right.
    """
    from ..data.sources import source_for, source_options_of
    from .io import atomic_write_text
    from .run import checkpoint_config, load_checkpoint

    module = load_checkpoint(checkpoint)
    cfg = checkpoint_config(module)
    info = module.hparams.get("data_info") or {}
    given = {k: v for k, v in options.items() if v is not None}
    kind = source_for(input_path).name
    opts = {k: v for k, v in cfg.task_options.items() if k in PREDICT_OPTIONS and v is not None}
    if "channels" in given or "features" in given:
        opts.pop("channels", None), opts.pop("features", None)
    opts.update(given)
    if kind in ("table", "fcs", "h5ad") and "channels" not in opts and "features" not in opts and info.get("features"):
        opts["features"] = list(info["features"])
    accepted = source_options_of(input_path) | {"channels"}
    opts = {k: v for k, v in opts.items() if k in accepted or k in given}  # the run's options the format takes
    ds = open_input(input_path, expect_dim=module.model.config.in_dim, **opts)
    if ds.in_dim != module.model.config.in_dim:
        raise DataError(f"{input_path}: sets have {ds.in_dim} features per element but the checkpoint's model "
                        f"expects {module.model.config.in_dim}")
    outs = predict_sets(module.model, ds, batch_size=batch_size)
    text = predictions_csv(set_names(ds), outs, module.target, info.get("classes"))
    if output:
        out = Path(output)
        if out.exists() and out.is_dir():
            raise ValueError(f"--output {out} is a folder; give a file name")
        atomic_write_text(out, text)
    return text, len(outs)
