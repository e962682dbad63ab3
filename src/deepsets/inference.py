"""Prediction: the one loop that runs a set model over the sets of a dataset, for ``eval``, ``predict``, ``cv``,
``explain`` and the scikit-learn estimators.

Sets are read one ahead in a background thread, batched by count and padded size, and a set too large for a
batch runs alone, exactly, in chunks (:mod:`deepsets.backends.chunked`); a set larger than the model's training set
size is predicted whole or as the mean over random subsets of that size (:func:`subset_plan`).
"""
from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Subset

from .data import DataError, pad_sets, subset_views
from .data._base import unwrap
from .nn.masking import check_nonempty

#: random subsets per set when a set larger than the training set size is predicted by subsets (default)
DEFAULT_SUBSETS = 10


def subset_plan(model, subsets: int | None = None) -> tuple[int, int | None]:
    """``(K, m)``: sets larger than ``m`` elements are predicted as the mean over ``K`` random subsets of ``m``
    elements, or ``(0, None)``: every set whole.

    ``subsets=None`` (the default) uses subsets only where whole-set prediction is outside what the model learned:
    a model trained on subsets of ``m = config.trained_set_size`` elements whose pooling is not size-consistent
    (sum pooling; mean, max and attention pooling are size-consistent), with :data:`DEFAULT_SUBSETS` subsets.
    ``subsets=0``: whole sets always; ``subsets=K``: ``K`` subsets of the training size for larger sets."""
    m = getattr(model.config, "trained_set_size", None)
    if m is None or subsets == 0:
        return 0, None
    if subsets is None:
        return (DEFAULT_SUBSETS, m) if not model.size_consistent else (0, None)
    if subsets < 0:
        raise ValueError(f"subsets must be >= 0, got {subsets}")
    return int(subsets), m


def describe_plan(model, subsets: int | None = None) -> str:
    """One line saying how sets are predicted (printed by eval and predict)."""
    k, m = subset_plan(model, subsets)
    if k:
        why = ("its sum pooling grows with the set size" if not model.size_consistent and subsets is None
               else "as asked")
        return (f"prediction: sets larger than the training set size ({m:,} elements) are predicted as the mean over "
                f"{k} random subsets of {m:,} elements ({why}); --whole-sets uses whole sets")
    trained = getattr(model.config, "trained_set_size", None)
    why = (("its pooling is size-consistent" if model.size_consistent else "as asked") if trained
           else "the model was trained on whole sets")
    return f"prediction: whole sets ({why}; exact chunked inference for large sets)"


def combine_subsets(model, outs: torch.Tensor, classify: bool) -> tuple[np.ndarray, np.ndarray]:
    """The mean over subsets (of probabilities for a classifier, returned as log-probabilities so that a softmax
    gives them back) and the spread (sd over subsets, of probabilities for a classifier)."""
    outs = outs.double()
    if classify:
        p = torch.softmax(outs, -1)
        return p.mean(0).log().float().numpy(), p.std(0, unbiased=len(p) > 1).float().numpy()
    return outs.mean(0).float().numpy(), outs.std(0, unbiased=len(outs) > 1).float().numpy()


@torch.no_grad()
def predict_sets(model, ds, max_elements: int = 262_144, batch_size: int = 64,
                 chunk_size: int = 65_536, progress: bool | None = None, huge_min: int = 32_768,
                 subsets: int | None = None, seed: int = 0, classify: bool = False,
                 spread: list | None = None, unreadable: list | None = None,
                 predict_after_unreadable: bool = True, whole: bool = True) -> list[np.ndarray]:
    """Model output for every set of ``ds``: whole sets, or for a set larger than the model's training set size,
    the mean over random subsets of that size where :func:`subset_plan` says so (``subsets``, ``seed``; with
    ``classify`` the mean of probabilities, as log-probabilities; ``spread``, a list, receives each set's sd over
    subsets, ``None`` for sets predicted whole). Sets are batched up to ``batch_size`` sets or ``max_elements``
    padded elements, whichever comes first; a set larger than ``max_elements`` is evaluated alone and exactly in
    chunks of ``chunk_size`` elements (bounded memory, see :func:`deepsets.backends.chunked.chunked_forward`). A set
    of at least ``huge_min`` elements also runs alone when the model has a huge-set fast path
    (:mod:`deepsets.backends.huge`: about 2x faster than the batched forward at 10^5 elements, the same outputs up to
    float round-off). Sets are read one ahead in a background thread (reading overlaps computing); ``progress``: a
    progress bar with sets and cells per second (None: on a terminal only).

    ``unreadable``, a list: a set whose reading raises :class:`DataError` (a damaged file, an empty set, NaN
    values) does not stop the prediction: ``(index, message)`` is appended and the outputs (and ``spread``) hold
    the other sets, in order. With ``predict_after_unreadable=False`` the sets after the first unreadable one are
    only read (to list every unreadable one), not predicted.

    ``whole=False``: the sets as the dataset draws them (its ``set_size``, at its current epoch), in batches of
    ``batch_size`` sets only: how the paper's tasks are evaluated (:func:`predict_dataset`). Per-element outputs
    (``output="elements"``) are ``[n_i, out]`` per set."""
    from .backends import chunked, huge  # (the CPU kernels load on first use)

    model.eval()
    ds = Picked.of(ds)
    k_subsets, m_subsets = subset_plan(model, subsets) if whole else (0, None)
    if not whole:
        max_elements, huge_min = math.inf, math.inf
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
            y = chunked.chunked_forward(model, x, mask, chunk_size=chunk_size).float()
        else:
            y = model(x, mask).float()
        if y.dim() == 3:  # per-element outputs: each set's own rows
            outs.extend(y[b, : len(s)].numpy() for b, s in enumerate(batch))
        else:
            outs.extend(y.numpy())
        if spread is not None:
            spread.extend([None] * len(y))
        first_index += len(batch)
        batch = []

    bar = progress_bar(len(ds), progress)
    for i, x in enumerate(prefetched(ds, catch=(DataError,) if unreadable is not None else (), subsample=not whole)):
        if isinstance(x, DataError):  # a set that cannot be read: listed, left out of the outputs
            flush()
            unreadable.append((i, str(x)))
            first_index = i + 1
            bar.update(1)
            continue
        if unreadable and not predict_after_unreadable:  # the rest are only read, to list every unreadable one
            bar.update(1)
            first_index = i + 1
            continue
        bar.update(1)
        bar.cells += len(x)
        bar.set_postfix_str(f"{bar.cells / max(bar.format_dict['elapsed'], 1e-9):,.0f} cells/s", refresh=False)
        if x.shape[-1] != model.config.in_dim:
            raise DataError(f"{source}: {label(i)} has {x.shape[-1]} features per element but the model "
                            f"expects {model.config.in_dim}")
        if k_subsets and len(x) > m_subsets:  # the mean over random subsets of the training size
            flush()
            if not torch.isfinite(x).all():
                j = int((~torch.isfinite(x).all(-1)).nonzero()[0])
                raise DataError(f"{source}: {label(i)} holds NaN or infinite feature values (expected finite "
                                f"numbers; first at element {j})")
            views = subset_views(x, m_subsets, k_subsets, seed=seed)
            per = max(1, max_elements // m_subsets)
            y = torch.cat([model(views[j:j + per]).float() for j in range(0, len(views), per)])
            mean, sd = combine_subsets(model, y, classify)
            outs.append(mean)
            if spread is not None:
                spread.append(sd)
            first_index += 1
            continue
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


class Picked:
    """The sets ``indices`` of a dataset, as the dataset reads them (what a torch ``Subset`` selects)."""

    def __init__(self, base, indices):
        self.base, self.indices = base, [int(i) for i in indices]
        self.source = getattr(base, "source", "")

    @classmethod
    def of(cls, ds):
        if not isinstance(ds, Subset):
            return ds
        return cls(*unwrap(ds))

    def __len__(self):
        return len(self.indices)

    def get_set(self, index: int, subsample: bool = True):
        return self.base.get_set(self.indices[index], subsample=subsample)

    def set_label(self, index: int) -> str:
        i = self.indices[index]
        return self.base.set_label(i) if hasattr(self.base, "set_label") else f"set {i}"


def sets_are_files(ds) -> bool:
    """Whether each set of ``ds`` (or of the dataset of a ``Subset``) is a file of its own (an FCS folder): then
    every unreadable file is reported, not only the first."""
    picked = Picked.of(ds)
    base = picked.base if isinstance(picked, Picked) else ds
    return bool(getattr(getattr(base, "reader", None), "sets_are_files", False))


def report_unreadable(ds, unreadable: list, skip: bool, echo=None, what: str = "predict") -> None:
    """Say which sets could not be read (``unreadable``: ``(index, message)`` pairs of :func:`predict_sets`).

    ``skip``: each is listed as ``skipped: MESSAGE`` (through ``echo``, or as a warning); otherwise each is listed as
    ``unreadable: MESSAGE`` and :class:`DataError` is raised naming them all (with the messages when there is no
    ``echo`` to list them); a single unreadable set is just the error, with its message."""
    picked = Picked.of(ds)  # a torch Subset (eval): positions in it are indices of its dataset
    base, pos = (picked.base, picked.indices) if isinstance(picked, Picked) else (ds, None)
    reader = getattr(base, "reader", None)

    def where(i):
        j = pos[i] if pos is not None else i
        if reader is not None:
            return reader.describe(j)
        return base.set_label(j) if hasattr(base, "set_label") else f"set {j}"

    if skip:
        for _, msg in unreadable:
            line = f"skipped: {msg}"
            if echo is not None:
                echo(line)
            else:
                warnings.warn(line, stacklevel=3)
        return
    n = len(unreadable)
    rest = "" if n == len(ds) else f", or pass --skip-unreadable to {what} the others"
    if n == 1:  # one line says it all
        raise DataError(f"{unreadable[0][1]}; fix or remove it{rest}")
    if echo is not None:
        for _, msg in unreadable:
            echo(f"unreadable: {msg}")
        listed = " (" + ", ".join(where(i) for i, _ in unreadable[:20]) + (" ..." if n > 20 else "") + \
                 "; each is listed above)"
    else:
        listed = ": " + "; ".join(m for _, m in unreadable)
    raise DataError(f"{getattr(base, 'source', '') or 'input'}: {n} of {len(ds)} set{'s' if len(ds) != 1 else ''} "
                    f"could not be read{listed}; fix or remove them{rest}")


def prefetched(ds, catch: tuple = (), subsample: bool = False):
    """The whole sets of ``ds`` (``subsample``: as the dataset draws them) as tensors, in order; the next set is
    read (e.g. the next FCS file parsed) in a background thread while the caller computes on the current one. A set
    whose reading raises one of the exception types ``catch`` is yielded as that exception (and the next sets are
    still read)."""
    def read(i):
        try:
            return torch.from_numpy(ds.get_set(i, subsample=subsample))
        except catch as e:
            return e

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


def progress_bar(total: int, enabled):
    """A tqdm bar over sets that also counts cells (``enabled=None``: only on a terminal)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="set", desc="predict", disable=None if enabled is None else not enabled,
               leave=False)
    bar.cells = 0
    return bar

@torch.no_grad()
def predict_dataset(model, ds, batch_size: int = 64, subsets: int = 1) -> torch.Tensor:
    """Model outputs for every set of ``ds`` as the dataset draws them (the task's ``set_size``), averaged over
    ``subsets`` draws (epochs ``0 .. subsets - 1`` of the dataset's subsampling): the paper's evaluation.
    ``[sets, out]``, or ``[sets, N, out]`` for per-element outputs (padded with zeros to the largest set)."""
    base = unwrap(ds)[0]
    passes = []
    for j in range(subsets):
        if hasattr(base, "set_epoch"):
            base.set_epoch(j)
        outs = [torch.from_numpy(o) for o in predict_sets(model, ds, batch_size=batch_size, progress=False,
                                                          whole=False)]
        if outs and outs[0].dim() == 2:  # per-element outputs: pad every set to the largest
            n = max(o.shape[0] for o in outs)
            outs = [torch.nn.functional.pad(o, (0, 0, 0, n - o.shape[0])) for o in outs]
        passes.append(torch.stack(outs))
    if hasattr(base, "set_epoch"):
        base.set_epoch(0)
    return torch.stack(passes).mean(0)
