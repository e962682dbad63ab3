"""``deepsets predict``: one prediction per set of a new file, written as CSV."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint, open_checkpoint
from ..data import DataError
from ..data._base import SetDataset
from ..data.sources import SourceDataset, open_source, source_for
from ..data.targets import get_target
from ..data.tasks import reading_options, source_options
from ..files import atomic_write_text, csv_text, refuse_input_as_output
from ..inference import describe_plan, predict_sets, report_unreadable, sets_are_files, subset_plan
from .config import TrainConfig


def open_input(path, expect_dim=None, **options) -> SetDataset:
    """The sets of a file to predict on: any source of :mod:`deepsets.data.sources` (labels are not read).

    ``options`` are the source's layout options (``set_column``, ``features``/``channels``, ``channel_map``,
    ``layer``, ``no_header``, ``key``); ``expect_dim`` checks the number of FCS/h5ad channels when none are named.
    """
    opts = {k: v for k, v in source_options(options).items() if v is not None}
    if expect_dim is not None and opts.get("features") is None and source_for(path).name in ("fcs", "h5ad"):
        opts["expect_dim"] = expect_dim
    reader = open_source(path, None, **opts)
    asked = opts.get("label_column") is not None or opts.get("labels") is not None
    # prediction needs no labels and does not check them (an FCS folder's labels.csv is not even read); labels
    # asked for by name are kept as read (explain's report compares classes)
    labels = reader.labels if asked else None
    reader.labels = None
    ds = SourceDataset(reader, target="regression", set_size=None)
    ds.raw_labels = labels
    return ds


def set_names(ds) -> list[str]:
    if hasattr(ds, "set_name"):
        return [str(ds.set_name(i)) for i in range(len(ds))]
    return [str(i) for i in range(len(ds))]


def predictions_csv(names: list[str], outputs: list[np.ndarray], target, classes=None, spread=None,
                    escape: bool = True) -> str:
    """One row per set: ``set`` then the target's columns (``prediction``; ``predicted_class`` + ``p_<label>``;
    ``odd_element`` + ``probability``); with ``spread`` (the sd over subsets, per set; ``None`` for a set predicted
    whole, written as empty cells), ``prediction_sd`` / ``p_<label>_sd`` columns after them. With ``escape`` (the
    default) a text cell a spreadsheet would run as a formula gets a leading ``'``
    (:func:`deepsets.files.escape_csv_cell`; numbers are left as they are)."""
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


def open_for_model(ckpt, input_path, **options) -> SetDataset:
    """The sets of ``input_path`` read as the checkpoint's model expects them (``ckpt``: a
    :class:`~deepsets.checkpoint.Checkpoint` or a training module).

    ``options`` are the source's layout options (``set_column``, ``features``/``channels``, ``channel_map``,
    ``layer``, ``no_header``, ``key``); those not given are the training run's, and the features default to the
    ones the model was trained on (by name, for tables, FCS and ``.h5ad``), so a file whose columns come in
    another order, or an FCS folder for a model trained on a table, is read right. A source without names
    (``.npy``/``.h5``/lists) is matched by its number of features."""
    cfg = TrainConfig.of_checkpoint(ckpt.hparams)
    features = (ckpt.hparams.get("data_info") or {}).get("features")
    opts = reading_options(input_path, cfg.task_options, options)
    if source_for(input_path).name in ("table", "fcs", "h5ad") and "features" not in opts and features:
        opts["features"] = list(features)
    in_dim = ckpt.model.config.in_dim
    ds = open_input(input_path, expect_dim=in_dim, **opts)
    if ds.in_dim != in_dim:
        raise DataError(f"{input_path}: sets have {ds.in_dim} features per element but the checkpoint's model "
                        f"expects {in_dim}")
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

    Sets larger than the model's training set size are predicted as :func:`~deepsets.inference.subset_plan` says (``subsets``: ``None``
    the model's default, ``0`` whole sets, ``K`` subsets; ``seed`` of the subsets); ``echo`` receives the line
    that says which.

    ``options`` are the source's layout options (``set_column``, ``features``/``channels``, ``channel_map``,
    ``layer``, ``no_header``, ``key``); those not given are the training run's, and the features default to the
    ones the model was trained on (by name, for tables, FCS and ``.h5ad``), so a file whose columns come in
    another order, or an FCS folder for a model trained on a table, is read right. ``trust_code``: import the
    checkpoint's task if it is given as code (see :func:`deepsets.checkpoint.open_checkpoint`). ``checkpoint``: a
    path, or a checkpoint already opened.
    """
    opened = checkpoint if isinstance(checkpoint, Checkpoint) else None
    refuse_input_as_output(output, {"--input": input_path,
                                    "--checkpoint": opened.path if opened is not None else checkpoint})
    ckpt = opened or open_checkpoint(checkpoint, trust_code=trust_code)
    info = ckpt.data_info
    ds = open_for_model(ckpt, input_path, **options)
    spread = [] if subset_plan(ckpt.model, subsets)[0] else None
    unreadable = [] if skip_unreadable or sets_are_files(ds) else None  # else: the first error stops it
    outs = predict_sets(ckpt.model, ds, batch_size=batch_size, subsets=subsets, seed=seed,
                        classify=ckpt.target.name == "classification", spread=spread, unreadable=unreadable,
                        predict_after_unreadable=skip_unreadable)
    names = set_names(ds)
    if unreadable:
        report_unreadable(ds, unreadable, skip_unreadable and len(unreadable) < len(ds), echo, "predict")
        names = [n for i, n in enumerate(names) if i not in {j for j, _ in unreadable}]
    if echo is not None:  # said once the prediction went through
        echo(describe_plan(ckpt.model, subsets))
    text = predictions_csv(names, outs, ckpt.target, info.get("classes"), spread, escape=csv_escape)
    if output:
        out = Path(output)
        if out.exists() and out.is_dir():
            raise ValueError(f"--output {out} is a folder; give a file name")
        atomic_write_text(out, text)
    return text, len(outs)
