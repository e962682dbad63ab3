"""Experiment tracking through Lightning's own loggers (``deepsets train --logger NAME [--logger-uri URI]``).

``metrics.csv`` is always written; a logger receives the same rows (epoch means of the training loss and metric,
validation loss and metric, at the same steps) plus Lightning's per-step training loss and the run's config as
hyperparameters. Each logger is an optional extra, imported only when chosen.
"""
from __future__ import annotations

from pathlib import Path

#: name -> (the package it needs, the extra that installs it)
LOGGERS = {"csv": (None, None), "tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
           "wandb": ("wandb", "wandb")}


def make_logger(name: str | None, uri: str | None, out: Path):
    """The Lightning logger ``name`` writing to ``uri`` (see :class:`~deepsets.train.TrainConfig.logger_uri`), or
    ``False`` for none."""
    if name is None:
        return False
    if name not in LOGGERS:
        raise ValueError(f"unknown logger {name!r}; valid choices: {', '.join(LOGGERS)}")
    package, extra = LOGGERS[name]
    if package is not None:
        import importlib.util

        if importlib.util.find_spec(package) is None:
            raise ImportError(f"--logger {name} needs the {package} package: pip install 'deepsets[{extra}]'")
    from lightning.pytorch import loggers

    run = Path(out).name
    if name == "csv":
        return loggers.CSVLogger(save_dir=uri or out, name="logs")
    if name == "tensorboard":
        return loggers.TensorBoardLogger(save_dir=uri or out, name="tensorboard", default_hp_metric=False)
    if name == "mlflow":
        tracking = uri or f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"
        return loggers.MLFlowLogger(experiment_name="deepsets", run_name=run, tracking_uri=tracking)
    return loggers.WandbLogger(project=uri or "deepsets", name=run, save_dir=str(out))


def log_row(trainer, row: dict) -> None:
    """Send one ``metrics.csv`` row to the run's loggers (they write on rank zero only)."""
    values = {k: float(v) for k, v in row.items() if k not in ("step", "elapsed_s")}
    for logger in trainer.loggers:
        logger.log_metrics(values, step=int(row["step"]))


def close_loggers(trainer) -> None:
    """Flush and close the run's loggers (a wandb run is finished, so the next run in this process is its own)."""
    for logger in trainer.loggers:
        logger.finalize("success")
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            logger.experiment.finish()
