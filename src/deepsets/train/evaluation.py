"""Evaluation: the test metrics of a checkpoint (``deepsets eval``), of a cross-validation fold, of a set-size
report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import Checkpoint, open_checkpoint
from ..data import get_task
from ..data._base import require_labels, unwrap
from ..data.sources import source_for
from ..data.tasks import reading_options, source_options
from ..inference import describe_plan, predict_dataset, predict_sets, report_unreadable, sets_are_files
from ..metrics import set_metrics
from .config import TrainConfig


def load_checkpoint(path: str | Path, map_location="cpu", trust_code: bool = False):
    """The Lightning training module of a checkpoint (:class:`~deepsets.train.module.SetModule`: ``.model``,
    ``.hparams``, ``.target``); a missing, corrupt or foreign file gives a clear error.

    A checkpoint trained with a task given as code (``file.py:NAME`` / ``module:NAME``) that is not registered in
    this process raises :class:`~deepsets.data.UntrustedTaskError`; ``trust_code=True`` imports that task (do so only
    for a checkpoint whose task you would run yourself: ``--task`` on the command line). Without Lightning:
    :func:`deepsets.checkpoint.open_checkpoint`."""
    from .module import SetModule

    return SetModule.of(open_checkpoint(path, trust_code=trust_code, map_location=map_location))


def evaluate_dataset(ckpt, ds, subsets: int | None = None, batch_size: int = 64, seed: int = 0,
                     skip_unreadable: bool = False, echo=None, task=None) -> dict:
    """``{"sets", "loss", METRIC[, "label_variance"], OTHER METRICS}`` of a checkpoint's model on a labeled dataset
    (or Subset); ``ckpt`` is a :class:`~deepsets.checkpoint.Checkpoint` or a training module, ``task`` its task
    where the caller has it (else the registered one it names).

    The other metrics are every metric of the target (:mod:`deepsets.metrics`: ``accuracy``,
    ``balanced_accuracy``, ``roc_auc``, ``log_loss`` / ``mse``, ``mae``, ``r2``); none for per-element targets.

    Your own data are predicted on whole sets, or on ``subsets`` random subsets of the training size per larger
    set (:func:`deepsets.inference.subset_plan`; ``None``: the model's default; ``seed``: of the subsets); the
    paper's tasks average ``subsets`` (default 1) subsets of the task's set size, as the paper evaluates.

    Your own data: every set that cannot be read (a damaged file) is reported (:func:`~deepsets.inference.
    report_unreadable`, through ``echo``), then :class:`DataError` is raised, unless ``skip_unreadable``: then the
    other sets are evaluated and ``"skipped"`` counts the left-out ones."""
    base, idx = unwrap(ds)
    require_labels(base)
    model, target = ckpt.model, ckpt.target
    if base.in_dim != model.config.in_dim:
        raise ValueError(f"{getattr(base, 'source', 'data')}: sets have {base.in_dim} features but the checkpoint's "
                         f"model expects {model.config.in_dim}")
    task = task or getattr(ckpt, "task", None) or get_task(ckpt.hparams["task"], where="the model was trained with")
    items = None
    if target.output != "elements" and not task.paper:  # your own data: whole sets, or the mean over subsets
        unreadable = [] if skip_unreadable or sets_are_files(ds) else None  # else: the first error stops it
        outs = predict_sets(model, ds, batch_size=batch_size, subsets=subsets, seed=seed,
                            classify=target.name == "classification", progress=False, unreadable=unreadable,
                            predict_after_unreadable=skip_unreadable)
        if unreadable:
            report_unreadable(ds, unreadable, skip_unreadable and len(unreadable) < len(idx), echo, "evaluate")
            bad = {j for j, _ in unreadable}
            idx = np.asarray([i for k, i in enumerate(idx) if k not in bad])
        out = torch.from_numpy(np.stack(outs)) if outs else torch.zeros(0, base.out_dim)
        ys = torch.stack([base.target_of(int(i)) for i in idx])
    else:
        out = predict_dataset(model, ds, batch_size, subsets or 1)
        items = [ds[i] for i in range(len(ds))]
        ys = torch.stack([y for _, y in items])
    mask = None
    if target.output == "elements":
        mask = torch.zeros(out.shape[:2], dtype=torch.bool)
        for i, (x, _) in enumerate(items):
            mask[i, : x.shape[0]] = True
    loss, metric = target.loss(out, ys, mask)
    result = {"sets": len(ys), "loss": loss.item(), target.metric: metric.item()}
    if len(ys) < len(ds):  # skip_unreadable
        result["skipped"] = len(ds) - len(ys)
    if target.metric == "mse":  # the MSE of always predicting the test labels' mean
        ys_f = ys.float().view_as(out)
        result["label_variance"] = ((ys_f - ys_f.mean()) ** 2).mean().item()
    if target.output != "elements":
        for name, value in set_metrics(target.name, out.numpy(), ys.numpy()).items():
            result.setdefault(name, value)  # the task's metric keeps the loss function's value
    return result


def evaluate(checkpoint: str | Path | Checkpoint, data: str | None = None, split: str = "test",
             subsets: int | None = None, batch_size: int = 64, task_options: dict | None = None, seed: int = 0,
             set_sizes=None, echo=None, trust_code: bool = False, skip_unreadable: bool = False) -> dict:
    """Test metrics of a checkpoint (a path, or one opened with :func:`deepsets.checkpoint.open_checkpoint`) on the
    task's test split (offline default or ``data``).

    With ``data``, the layout options the model was trained with (set and label columns, features, layer, ...)
    are kept and ``task_options`` may override them; classes keep the training order. ``subsets`` and ``seed``:
    how sets larger than the training set size are predicted (see :func:`evaluate_dataset`); ``echo`` receives the
    line that says which. ``set_sizes``: also the metrics with every set cut to each of these sizes (a random
    subset; smaller sets stay whole), under ``"set_sizes"``: the set-size generalisation report. ``trust_code``:
    import the checkpoint's task if it is given as code (see :func:`load_checkpoint`). ``skip_unreadable``: sets
    that cannot be read (damaged files) are listed through ``echo`` and left out (see :func:`evaluate_dataset`).
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint, trust_code=trust_code)
    hp = ckpt.hparams
    cfg = TrainConfig.of_checkpoint(hp)
    task = ckpt.task or get_task(hp["task"])  # (an unknown task: a clear error)
    if data is None:
        opts = {**cfg.task_options, **(task_options or {})}
        opts = opts if task.paper else source_options(opts)  # (your own data's sources read them so)
    else:  # the training run's layout options that the new file's format takes
        opts = reading_options(data, cfg.task_options, task_options or {}, labels=True)
    classes = ckpt.data_info.get("classes")
    source = data if data is not None else cfg.data
    features = ckpt.data_info.get("features")
    if not task.paper and isinstance(source, (str, Path)) and features and "features" not in opts \
            and source_for(source).name in ("fcs", "h5ad"):
        opts["features"] = list(features)  # the model's channels, by name (as predict does)
    if classes is not None and task.classes is None:
        opts["classes"] = classes
    ds = task.load(split, data=source, set_size=cfg.set_size, seed=cfg.seed, **opts)
    k = subsets if subsets is not None else cfg.eval_subsets
    result = {"checkpoint": str(ckpt.path), "task": hp["task"], "model": hp["model"],
              "depth": ckpt.model.config.depth, "split": split, "subsets": k}
    if not task.paper:
        line = describe_plan(ckpt.model, k)
        result["prediction"] = line.partition(": ")[2]
    result.update(evaluate_dataset(ckpt, ds, k, batch_size, seed, skip_unreadable=skip_unreadable, echo=echo,
                                   task=task))
    if not task.paper and echo is not None:  # said once the evaluation went through
        echo(line)
    if set_sizes:
        from ..data import resized

        result["set_sizes"] = [{"set_size": int(n), **evaluate_dataset(ckpt, resized(ds, int(n), seed), k,
                                                                       batch_size, seed, skip_unreadable,
                                                                       echo=lambda line: None, task=task)}
                               for n in set_sizes]  # (the unreadable sets are listed once)
    return result


def format_table(result: dict) -> str:
    width = max(len(k) for k in result)
    lines = []
    for k, v in result.items():
        val = f"{v:.6g}" if isinstance(v, float) else str(v)
        lines.append(f"{k:<{width}}  {val}")
    return "\n".join(lines)
