"""The run folder: made or replaced, locked while a run writes (:mod:`.guard`), and resumed from its last
checkpoint as its ``config.yaml`` says."""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from ..checkpoint import read_checkpoint
from .config import TrainConfig
from .guard import LOCK_FILES

RUN_FILES = ("config.yaml", "metrics.csv", "learning_curve.png", "checkpoints", "results.json",
             "logs", "tensorboard", "mlflow.db", "wandb")  # the last four: --logger csv|tensorboard|mlflow|wandb


def resume_checkpoint(out: str | Path) -> dict:
    """The contents of the checkpoint ``--resume`` continues from (``OUT/checkpoints/last.ckpt``), read once and
    checked: a clear error now rather than deep inside Lightning. Half-written files of a killed run are removed."""
    out = Path(out)
    last = out / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint to resume from at {last} (the run stopped before its "
                                f"first checkpoint); start it again with --overwrite")
    if not (out / "config.yaml").is_file():
        raise FileNotFoundError(f"--resume: {out / 'config.yaml'} is missing; cannot tell how the run was "
                                f"configured; start it again with --overwrite")
    for stale in list(out.glob(".*.tmp")) + list((out / "checkpoints").glob(".*.tmp")):
        stale.unlink(missing_ok=True)  # half-written files of a killed run (never renamed into place)
    return read_checkpoint(last)


def prepare_out_dir(out: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Create the run folder; an existing non-empty one is refused unless resuming or overwriting."""
    out = Path(out)
    if resume:
        resume_checkpoint(out)
        return out
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(p.name not in LOCK_FILES for p in out.iterdir()):
        if not overwrite:
            raise ValueError(
                f"output folder {out} already holds files; pass --resume to continue that run, "
                f"--overwrite to replace it, or choose another --out"
            )
        links = [name for name in RUN_FILES if (out / name).is_symlink()]
        if links:  # checked before anything is removed: --overwrite never follows a link into other files
            raise ValueError(f"--overwrite: {out / links[0]} is a symbolic link; a run only replaces files it wrote "
                             f"itself: remove or move the link, or choose another --out")
        for name in RUN_FILES:  # only what a run writes; anything else of the user's stays
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"output folder {out} cannot be created: {e.strerror or e}") from None
    probe = out / ".write-test"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"output folder {out} is not writable: {e.strerror}") from None
    return out


def launched_worker() -> bool:
    """True in the extra processes Lightning's DDP launcher starts (they re-run the same command)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def default_out(cfg: TrainConfig) -> str:
    """``runs/TASK-MODEL-dDEPTH-sSEED`` (a task given as ``file.py:NAME`` uses ``NAME``)."""
    depth = cfg.depth if cfg.depth is not None else "default"
    task = str(cfg.task).rpartition(":")[2] or str(cfg.task)
    return str(Path("runs") / f"{task}-{cfg.model}-d{depth}-s{cfg.seed}")


def absolute_paths(cfg: TrainConfig) -> None:
    """Data paths as absolute paths, so ``eval``/``predict`` of the checkpoint work from any folder."""
    if isinstance(cfg.data, str) and Path(cfg.data).expanduser().exists():
        cfg.data = str(Path(cfg.data).expanduser().resolve())
    lab = cfg.task_options.get("labels")
    if isinstance(lab, str) and Path(lab).expanduser().exists():
        cfg.task_options["labels"] = str(Path(lab).expanduser().resolve())


#: what ``--resume`` may change: the budget, the hardware and the bookkeeping. Everything else (task, data, model,
#: optimizer) is the saved run's; the checkpoint's weights and optimizer state hold it.
RESUMABLE = ("epochs", "max_steps", "eval_every", "grad_clip", "progress", "accelerator", "devices", "strategy",
             "num_nodes", "num_workers", "precision", "logger", "logger_uri", "out")


def changed_fields(cfg: TrainConfig) -> set[str]:
    """The fields of ``cfg`` that differ from :class:`TrainConfig`'s defaults (what a Python caller set)."""
    default = TrainConfig()
    return {k for k in TrainConfig.field_names() if getattr(cfg, k) != getattr(default, k)}


def resume_config(out: str | Path, cfg: TrainConfig, changed, last: dict, echo=print) -> TrainConfig:
    """The saved config of the run in ``out`` with the fields named in ``changed`` taken from ``cfg``; ``last``: the
    checkpoint it continues from (:func:`resume_checkpoint`).

    Only :data:`RESUMABLE` fields may differ from the saved run (a larger ``epochs``, other devices, ...); each
    change is said once. Another field that differs (``--depth``, ``--lr``, ``--data``, ...) is refused with
    ``ValueError`` naming it: the checkpoint's weights and optimizer state belong to the saved values.
    """
    out = Path(out)
    saved = TrainConfig.load(out / "config.yaml")
    cfg = copy.deepcopy(cfg)
    absolute_paths(cfg)
    said = []
    for name in sorted(set(changed) - {"out"}, key=TrainConfig.field_names().index):
        new, old = getattr(cfg, name), getattr(saved, name)
        if name == "task_options":  # data options: each given one must match the saved run's
            diff = {k: v for k, v in new.items() if old.get(k) != v}
            if diff:
                k = next(iter(diff))
                raise ValueError(f"--resume: {flag_name(k)} {diff[k]!r} differs from the run's saved "
                                 f"{old.get(k)!r} ({out / 'config.yaml'}); the data of a run cannot change when it "
                                 f"is resumed: start a new run with another --out")
            continue
        if new == old:
            continue
        if name not in RESUMABLE:
            raise ValueError(f"--resume: {flag_name(name)} {new!r} differs from the run's saved {old!r} "
                             f"({out / 'config.yaml'}); only the budget and hardware flags "
                             f"({', '.join(flag_name(k) for k in RESUMABLE if k != 'out')}) can change when a run "
                             f"is resumed: start a new run with another --out")
        setattr(saved, name, new)
        said.append(f"{flag_name(name)} {old} -> {new}")
    saved.out = str(out)
    if not launched_worker():
        where = f"saved at epoch {last.get('epoch')}, step {last.get('global_step')}"
        echo(f"resuming {out} from its last checkpoint ({where}) as configured in config.yaml"
             + (f", except {'; '.join(said)}" if said else ""))
    return saved


def flag_name(field_name: str) -> str:
    """The command-line flag of a config field or task option (``max_steps`` -> ``--max-steps``)."""
    from dataclasses import fields

    meta = next((f.metadata for f in fields(TrainConfig) if f.name == field_name), {})
    return meta.get("flag") or "--" + field_name.replace("_", "-")


def check_resumable(module, ckpt: dict, out: Path) -> None:
    """The checkpoint of ``--resume`` holds the weights of the model that ``config.yaml`` describes, or a clear
    ValueError names both (instead of a raw state_dict error from deep inside Lightning)."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    if want == have:
        return
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    shape = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    hp = ckpt["hyper_parameters"]
    first = (f"{len(missing)} weights missing, e.g. {missing[0]}" if missing else
             f"{len(extra)} unexpected weights, e.g. {extra[0]}" if extra else
             f"{len(shape)} weights of another shape, e.g. {shape[0]}: {have[shape[0]]} vs {want[shape[0]]}")
    raise ValueError(f"--resume: {out / 'checkpoints' / 'last.ckpt'} does not match {out / 'config.yaml'}: the "
                     f"checkpoint holds a {hp.get('model')} model, config.yaml describes {module.hparams['model']} "
                     f"({first}); restore the run's own checkpoint, or start again with --overwrite")
