"""Callbacks and plugins: the metrics file, fresh subsets per epoch, atomic checkpoints, how a fit ended."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..files import atomic_write_bytes, atomic_write_text, csv_text
from .guard import take_over_sigterm, write_error

# metrics.csv: one row per evaluation (the end of every `eval_every`-th epoch, and the end of training).
METRIC_COLUMNS = [
    "epoch",  # 0-based epoch that just finished
    "step",  # optimizer steps taken so far
    "train_loss",  # mean training loss over the epoch's batches (since the previous row)
    "train_metric",  # mean training metric over the same batches (MSE, or accuracy for classification)
    "val_loss",  # loss on the held-out validation sets
    "val_metric",  # metric on the validation sets
    "elapsed_s",  # wall-clock seconds since the run (or its resumption) started
]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it: a kill never leaves a corrupt checkpoint.

    A write that fails (full disk, file size limit, unwritable folder) removes the temporary file, leaves the
    previous checkpoint as it was and raises :class:`~deepsets.train.guard.StorageError` naming the file.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        try:
            atomic_write_bytes(path, buf.getvalue())
        except OSError as e:
            raise write_error("checkpoint", path, e) from None


class StopRecorder(pl.Callback):
    """Notes the exception that ended a fit (Lightning's ``on_exception`` hook: ``SIGTERMException``,
    ``KeyboardInterrupt``, ...) and the epoch and step it happened at; see :class:`deepsets.train.guard.RunGuard`."""

    def __init__(self):
        self.exception: BaseException | None = None
        self.epoch = self.step = None

    def on_exception(self, trainer, pl_module, exception):
        self.exception, self.epoch, self.step = exception, trainer.current_epoch, trainer.global_step

    # Under DDP, Lightning's SIGTERM handler broadcasts from inside the signal handler, which deadlocks when the
    # signal lands while the ranks are in another collective (a metric's all_gather, say). There SIGTERM takes
    # Lightning's Ctrl-C path instead: it stops rank zero and kills the processes it launched (which write nothing).
    def on_train_start(self, trainer, pl_module):  # after Lightning has installed its handlers
        if trainer.world_size > 1:
            take_over_sigterm()

    on_validation_start = on_train_start


class SubsetEpoch(pl.Callback):
    """Tells the training data the epoch number, so sets larger than ``set_size`` get a fresh random subset."""

    def on_train_epoch_start(self, trainer, pl_module):
        ds = trainer.datamodule.train_set if trainer.datamodule is not None else None
        base = getattr(ds, "dataset", ds)  # a torch Subset wraps the dataset
        if hasattr(base, "set_epoch"):
            base.set_epoch(trainer.current_epoch)


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    def value(k, v):
        if k in ("epoch", "step"):
            return int(v)
        return float(v) if v not in ("", None) else float("nan")

    try:
        with path.open() as f:
            return [{k: value(k, v) for k, v in row.items() if k is not None} for row in csv.DictReader(f)]
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable metrics file (expected columns {METRIC_COLUMNS}): {e}") from None


def write_metrics(path: str | Path, rows: list[dict], escape: bool = True) -> None:
    """:data:`METRIC_COLUMNS`, then any other column the rows hold (``val_NAME`` of ``--metric NAME``); written
    with :func:`deepsets.files.csv_text` (``escape``: formula-like text cells get a leading ``'``)."""
    extra = list(dict.fromkeys(k for r in rows for k in r if k not in METRIC_COLUMNS))
    text = csv_text(METRIC_COLUMNS + extra, rows, escape=escape)
    try:
        atomic_write_text(path, text)
    except OSError as e:  # the previous file is untouched
        raise write_error("metrics file", path, e) from None


class MetricsCSV(pl.Callback):
    """Keeps ``DIR/metrics.csv`` (see :data:`METRIC_COLUMNS`) and the learning-curve PNG up to date.

    On resume (``resume=True``), the file's rows are kept up to the restored checkpoint; rows of later epochs (a
    run killed after validating an epoch but before its checkpoint) are dropped, so no epoch appears twice.
    """

    def __init__(self, out: str | Path, metric_name: str, title: str = "", resume: bool = False):
        self.path = Path(out) / "metrics.csv"
        self.png = Path(out) / "learning_curve.png"
        self.metric_name, self.title = metric_name, title
        self.rows: list[dict] = read_metrics(self.path) if resume else []
        self.t0 = time.time()
        self._plotted = time.time()  # the first drawing after PLOT_EVERY_S, or at the end

    def on_train_start(self, trainer, pl_module):  # after a checkpoint's loop state is restored
        self.t0 = time.time()
        done = trainer.current_epoch  # epochs completed before this fit (nonzero when resumed)
        self.rows = [r for r in self.rows if r["epoch"] < done]

    def on_train_epoch_end(self, trainer, pl_module):
        last_epoch = (trainer.current_epoch + 1) % trainer.check_val_every_n_epoch == 0
        if pl_module.last_val and last_epoch:
            self.record(trainer, pl_module, pl_module.last_val)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.last_step_epoch = trainer.current_epoch  # the epoch of the latest step (a step budget ends mid-epoch)

    last_step_epoch = 0

    def record(self, trainer, pl_module, val: dict, epoch: int | None = None) -> None:
        """Append (or replace) the row of ``epoch`` (default: the epoch just finished) with the training means since
        the previous row and ``val``; rank zero writes the file."""
        epoch = trainer.current_epoch if epoch is None else epoch
        row = {"epoch": epoch, "step": trainer.global_step, **pl_module.take_train_means(),
               **val, "elapsed_s": round(time.time() - self.t0, 2)}
        pl_module.last_val = {}
        from .loggers import log_row

        log_row(trainer, row)
        if trainer.is_global_zero:
            self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
            write_metrics(self.path, self.rows)
            if time.time() - self._plotted >= self.PLOT_EVERY_S:
                self.plot()

    #: redraw the learning curve at most this often while training (drawing costs ~1 s; short fits would spend
    #: most of their time on it); it is always drawn when training ends
    PLOT_EVERY_S = 30.0
    _plotted = 0.0

    def plot(self) -> None:
        if not self.rows:
            return
        try:
            from .plots import plot_learning_curve

            plot_learning_curve(self.rows, self.png, self.metric_name, self.title)
        except ImportError:  # matplotlib is optional
            pass
        except OSError as e:  # written atomically: the previous figure is untouched
            raise write_error("learning curve", self.png, e) from None
        self._plotted = time.time()

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.plot()

