"""``deepsets predict``: one prediction per set of a new file, written as CSV."""
from __future__ import annotations

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
    labels, reader.labels = reader.labels, None  # prediction needs no labels (and does not check them)
    ds = SourceDataset(reader, target="regression", set_size=None)
    ds.raw_labels = labels  # as read, when a label column or file was given (explain's report compares classes)
    return ds


def set_names(ds) -> list[str]:
    if hasattr(ds, "set_name"):
        return [str(ds.set_name(i)) for i in range(len(ds))]
    return [str(i) for i in range(len(ds))]


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
    why = ("its pooling is size-consistent" if model.size_consistent else "as asked") if trained else         "the model was trained on whole sets"
    return f"prediction: whole sets ({why}; exact chunked inference for large sets)"


def _combine_subsets(model, outs: torch.Tensor, classify: bool) -> tuple[np.ndarray, np.ndarray]:
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
                 predict_after_unreadable: bool = True) -> list[np.ndarray]:
    """Model output for every set of ``ds``: whole sets, or for a set larger than the model's training set size,
    the mean over random subsets of that size where :func:`subset_plan` says so (``subsets``, ``seed``; with
    ``classify`` the mean of probabilities, as log-probabilities; ``spread``, a list, receives each set's sd over
    subsets, ``None`` for sets predicted whole). Sets are batched up to
    ``batch_size`` sets or ``max_elements`` padded elements, whichever comes first; a set larger than
    ``max_elements`` is evaluated alone and exactly in chunks of ``chunk_size`` elements (bounded memory,
    see :func:`deepsets.models.chunked_forward`). A set of at least ``huge_min`` elements also runs alone when the
    model has a huge-set fast path (:mod:`deepsets.backends.huge`: about 2x faster than the batched forward at
    10^5 elements, the same outputs up to float round-off). Sets are read one ahead in a background thread (reading
    overlaps computing); ``progress``: a progress bar with sets and cells per second (None: on a terminal only).

    ``unreadable``, a list: a set whose reading raises :class:`DataError` (a damaged file, an empty set, NaN
    values) does not stop the prediction: ``(index, message)`` is appended and the outputs (and ``spread``) hold
    the other sets, in order. With ``predict_after_unreadable=False`` the sets after the first unreadable one are
    only read (to list every unreadable one), not predicted."""
    from ..backends import huge
    from ..backends.chunked import chunked_forward
    from ..data import pad_sets, subset_views
    from ..nn.masking import check_nonempty

    model.eval()
    ds = Picked.of(ds)
    k_subsets, m_subsets = subset_plan(model, subsets)
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
        if spread is not None:
            spread.extend([None] * len(y))
        first_index += len(batch)
        batch = []

    bar = _progress(len(ds), progress)
    for i, x in enumerate(prefetched(ds, catch=(DataError,) if unreadable is not None else ())):
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
            mean, sd = _combine_subsets(model, y, classify)
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
        from torch.utils.data import Subset

        if not isinstance(ds, Subset):
            return ds
        from .run import unwrap

        return cls(*unwrap(ds))

    def __len__(self):
        return len(self.indices)

    def get_set(self, index: int, subsample: bool = True):
        return self.base.get_set(self.indices[index], subsample=subsample)

    def set_label(self, index: int) -> str:
        i = self.indices[index]
        return self.base.set_label(i) if hasattr(self.base, "set_label") else f"set {i}"


def prefetched(ds, catch: tuple = ()):
    """The whole sets of ``ds`` as tensors, in order; the next set is read (e.g. the next FCS file parsed) in a
    background thread while the caller computes on the current one. A set whose reading raises one of the
    exception types ``catch`` is yielded as that exception (and the next sets are still read)."""
    from concurrent.futures import ThreadPoolExecutor

    def read(i):
        try:
            return torch.from_numpy(ds.get_set(i, subsample=False))
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


def _progress(total: int, enabled):
    """A tqdm bar over sets that also counts cells (``enabled=None``: only on a terminal)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="set", desc="predict", disable=None if enabled is None else not enabled,
               leave=False)
    bar.cells = 0
    return bar


def predictions_csv(names: list[str], outputs: list[np.ndarray], target, classes=None, spread=None,
                    escape: bool = True) -> str:
    """One row per set: ``set`` then the target's columns (``prediction``; ``predicted_class`` + ``p_<label>``;
    ``odd_element`` + ``probability``); with ``spread`` (the sd over subsets, per set; ``None`` for a set predicted
    whole, written as empty cells), ``prediction_sd`` / ``p_<label>_sd`` columns after them. With ``escape`` (the
    default) a text cell a spreadsheet would run as a formula gets a leading ``'``
    (:func:`deepsets.train.io.escape_csv_cell`; numbers are left as they are)."""
    from ..data.targets import get_target
    from .io import csv_text

    target = get_target(target)
    out_dim = outputs[0].shape[-1] if outputs else 1
    header = target.csv_header(out_dim, classes)
    sd_header = []
    if spread is not None:
        sd_header = [h + "_sd" for h in header if h != "predicted_class"]
    rows = []
    for i, (n, o) in enumerate(zip(names, outputs)):
        row = [n] + target.csv_row(o, classes)
        if spread is not None:  # empty for a set predicted whole (no subsets, no spread)
            sd = spread[i]
            row += [""] * len(np.atleast_1d(o)) if sd is None else [f"{v:.6g}" for v in np.atleast_1d(sd)]
        rows.append(row)
    return csv_text(["set"] + header + sd_header, rows, escape=escape)


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
                import warnings

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


#: the layout options of a training run that a prediction reuses unless given again
PREDICT_OPTIONS = ("set_column", "features", "channels", "channel_map", "layer", "no_header", "key")


def open_for_model(module, input_path, **options) -> SetDataset:
    """The sets of ``input_path`` read as the checkpoint's model expects them.

    ``options`` are the source's layout options (``set_column``, ``features``/``channels``, ``channel_map``,
    ``layer``, ``no_header``, ``key``); those not given are the training run's, and the features default to the
    ones the model was trained on (by name, for tables, FCS and ``.h5ad``), so a file whose columns come in
    another order, or an FCS folder for a model trained on a table, is read right. A source without names
    (``.npy``/``.h5``/lists) is matched by its number of features."""
    from ..data.sources import source_for, source_options_of
    from ..data.tasks import source_options
    from .run import checkpoint_config

    cfg = checkpoint_config(module)
    info = module.hparams.get("data_info") or {}
    given = source_options({k: v for k, v in options.items() if v is not None})
    kind = source_for(input_path).name
    opts = source_options({k: v for k, v in cfg.task_options.items() if k in PREDICT_OPTIONS and v is not None})
    opts.update(given)
    if kind in ("table", "fcs", "h5ad") and "features" not in opts and info.get("features"):
        opts["features"] = list(info["features"])
    accepted = source_options_of(input_path)  # the run's options the format takes
    opts = {k: v for k, v in opts.items() if k in accepted or k in given}
    ds = open_input(input_path, expect_dim=module.model.config.in_dim, **opts)
    if ds.in_dim != module.model.config.in_dim:
        raise DataError(f"{input_path}: sets have {ds.in_dim} features per element but the checkpoint's model "
                        f"expects {module.model.config.in_dim}")
    return ds


def predict_file(checkpoint, input_path, output=None, batch_size: int = 64, subsets: int | None = None,
                 seed: int = 0, echo=None, csv_escape: bool = True, trust_code: bool = False,
                 skip_unreadable: bool = False, **options) -> tuple[str, int]:
    """Predict every set of ``input_path``; returns (CSV text, number of sets) and writes ``output`` if given.

    A set that cannot be read (a damaged FCS file, an empty set, NaN values) does not stop the others from being
    read: every unreadable one is reported, each on one line naming the file (or set) and the problem (through
    ``echo``), and then :class:`DataError` is raised, unless ``skip_unreadable``: then the other sets are predicted,
    the skipped ones are listed (``echo``, or a warning) and left out of the CSV.

    ``output`` may not be ``checkpoint`` or ``input_path`` (nor a file inside an input folder): that is refused
    before anything is read. ``csv_escape``: text cells a spreadsheet would run as formulas (a set id starting
    with ``=``, ``+``, ``-``, ``@``) get a leading ``'`` (:func:`predictions_csv`); ``False`` writes them as they are.

    Sets larger than the model's training set size are predicted as :func:`subset_plan` says (``subsets``: ``None``
    the model's default, ``0`` whole sets, ``K`` subsets; ``seed`` of the subsets); ``echo`` receives the line
    that says which.

    ``options`` are the source's layout options (``set_column``, ``features``/``channels``, ``channel_map``,
    ``layer``, ``no_header``, ``key``); those not given are the training run's, and the features default to the
    ones the model was trained on (by name, for tables, FCS and ``.h5ad``), so a file whose columns come in
    another order, or an FCS folder for a model trained on a table, is read right. ``trust_code``: import the
    checkpoint's task if it is given as code (see :func:`deepsets.train.run.load_checkpoint`).
    """
    from .io import atomic_write_text, refuse_input_as_output
    from .run import load_checkpoint

    refuse_input_as_output(output, {"--input": input_path, "--checkpoint": checkpoint})
    module = load_checkpoint(checkpoint, trust_code=trust_code)
    info = module.hparams.get("data_info") or {}
    ds = open_for_model(module, input_path, **options)
    spread = [] if subset_plan(module.model, subsets)[0] else None
    unreadable = [] if skip_unreadable or sets_are_files(ds) else None  # else: the first error stops it
    outs = predict_sets(module.model, ds, batch_size=batch_size, subsets=subsets, seed=seed,
                        classify=module.target.name == "classification", spread=spread, unreadable=unreadable,
                        predict_after_unreadable=skip_unreadable)
    names = set_names(ds)
    if unreadable:
        report_unreadable(ds, unreadable, skip_unreadable and len(unreadable) < len(ds), echo, "predict")
        names = [n for i, n in enumerate(names) if i not in {j for j, _ in unreadable}]
    if echo is not None:  # said once the prediction went through
        echo(describe_plan(module.model, subsets))
    text = predictions_csv(names, outs, module.target, info.get("classes"), spread, escape=csv_escape)
    if output:
        out = Path(output)
        if out.exists() and out.is_dir():
            raise ValueError(f"--output {out} is a folder; give a file name")
        atomic_write_text(out, text)
    return text, len(outs)
