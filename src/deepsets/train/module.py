"""The Lightning module: a registered set model + the task's loss and metric."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric
from torchmetrics.utilities import dim_zero_cat

from ..checkpoint import Checkpoint
from ..data.targets import get_target
from ..factory import create_model
from ..metrics import HIGHER_IS_BETTER, check_selection, set_metrics
from .callbacks import NonFiniteLossError


class SetModule(pl.LightningModule):
    """Wraps ``create_model(model, **model_kwargs)``; everything needed to rebuild it is in the checkpoint.

    ``target`` names the target kind (its loss and metric). ``built``: the model itself, already built (a
    checkpoint's: :meth:`of`), instead of a new one.
    """

    def __init__(self, model: str, model_kwargs: dict, task: str, target: str, lr: float = 1e-4,
                 train_config: dict | None = None, data_info: dict | None = None, weight_decay: float = 0.0,
                 built: torch.nn.Module | None = None):
        super().__init__()
        self.save_hyperparameters({"model": model, "model_kwargs": model_kwargs, "task": task, "target": target,
                                   "lr": lr, "train_config": train_config, "data_info": data_info,
                                   "weight_decay": weight_decay})
        self.model = built if built is not None else create_model(model, **model_kwargs)
        self.target = get_target(target)
        self.metric_name, self.lr = self.target.metric, lr
        self.train_loss, self.train_metric = MeanMetric(), MeanMetric()
        self.val_loss, self.val_metric = MeanMetric(), MeanMetric()
        self.last_val: dict[str, float] = {}
        # --metric NAME: best.ckpt (and --patience) follow that metric of the whole validation set, computed from
        # the outputs and labels gathered from every process; monitored as "val_select" (lower is better)
        self.select_metric = check_selection((train_config or {}).get("metric"), self.target.name)
        selecting = self.select_metric not in (None, "loss")
        self.monitor = "val_select" if selecting else "val_loss"
        self.val_outputs = ValidationOutputs() if selecting else None
        self.last_monitored = float("nan")

    @classmethod
    def of(cls, ckpt: Checkpoint) -> SetModule:
        """The training module of a checkpoint read by :func:`deepsets.checkpoint.open_checkpoint` (its model)."""
        hp = ckpt.hparams
        return cls(hp["model"], hp["model_kwargs"], hp["task"], ckpt.target.name, hp.get("lr", 1e-4),
                   train_config=hp.get("train_config"), data_info=hp.get("data_info"),
                   weight_decay=hp.get("weight_decay") or 0.0, built=ckpt.model).eval()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.model(x, mask)

    def _step(self, batch):
        x, mask, y = batch
        if self.training and hasattr(self.model, "member_outputs"):  # an ensemble: each member learns on its own
            outs = self.model.member_outputs(x, mask)  # loss; the metric is the combined model's
            loss = sum(self.target.loss(o, y, mask)[0] for o in outs) / len(outs)
            return loss, self.target.loss(self.model.combine([o.detach() for o in outs]), y, mask)[1]
        out = self.model(x, mask)
        return self.target.loss(out, y, mask)

    def training_step(self, batch, batch_idx):
        loss, metric = self._step(batch)
        here = not bool(torch.isfinite(loss))
        bad = here
        if self._trainer is not None and self.trainer.world_size > 1:  # all processes stop at the same step: one
            bad = self.trainer.strategy.reduce_boolean_decision(here, all=False)  # stopping alone hangs the others
        if bad:
            what = f"{loss.item()} at epoch" if here else "not finite on another process at epoch"
            raise NonFiniteLossError(f"training loss is {what} {self.current_epoch}, step {self.global_step} "
                                     f"(batch {batch_idx}); training stopped")
        n = batch[0].shape[0]
        self.train_loss.update(loss.detach(), n)
        self.train_metric.update(metric, n)
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx):
        x, mask, y = batch
        out = self.model(x, mask)
        loss, metric = self.target.loss(out, y, mask)
        n = batch[0].shape[0]
        self.val_loss.update(loss, n)
        self.val_metric.update(metric, n)
        if self.val_outputs is not None:
            self.val_outputs.update(out.detach(), y.detach())

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            self.val_loss.reset(), self.val_metric.reset()
            if self.val_outputs is not None:
                self.val_outputs.reset()
            return
        self.last_val = {"val_loss": self.val_loss.compute().item(), "val_metric": self.val_metric.compute().item()}
        self.val_loss.reset(), self.val_metric.reset()
        # val_loss is what checkpoints monitor (without --metric); it is already reduced over processes by
        # torchmetrics. (loggers get them with the epoch's training means, in the metrics.csv row: see
        # MetricsCSV.record)
        self.log("val_loss", self.last_val["val_loss"], prog_bar=True, sync_dist=False, rank_zero_only=False,
                 logger=False)
        self.log("val_metric", self.last_val["val_metric"], prog_bar=self.metric_name != "mse", logger=False)
        self.last_monitored = self.last_val["val_loss"]
        if self.val_outputs is not None:
            outputs, labels = self.val_outputs.compute()  # every process's sets (the same on every process)
            self.val_outputs.reset()
            name = self.select_metric
            value = set_metrics(self.target.name, outputs.cpu().numpy(), labels.cpu().numpy())[name]
            self.last_val[f"val_{name}"] = value  # a metrics.csv column
            self.last_monitored = -value if HIGHER_IS_BETTER[name] else value
            self.log(f"val_{name}", value, prog_bar=True, logger=False)
            self.log("val_select", self.last_monitored, sync_dist=False, rank_zero_only=False, logger=False)

    def take_train_means(self) -> dict[str, float]:
        """Epoch means of the training loss/metric (reduced over processes), then reset."""
        if self.train_loss.update_count == 0:
            return {"train_loss": float("nan"), "train_metric": float("nan")}
        out = {"train_loss": self.train_loss.compute().item(), "train_metric": self.train_metric.compute().item()}
        self.train_loss.reset(), self.train_metric.reset()
        return out

    def predict_step(self, batch, batch_idx):
        x, mask = batch[0], batch[1]
        return self.model(x, mask)

    def configure_optimizers(self):
        return make_adam(self.parameters(), self.lr, self.hparams.get("weight_decay") or 0.0)


def make_adam(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam (the paper's optimizer), or AdamW (decoupled weight decay) with ``weight_decay > 0``; the fused
    implementation where this PyTorch build has one."""
    params = list(params)
    opt = torch.optim.AdamW if weight_decay > 0 else torch.optim.Adam
    kw = {"lr": lr, "weight_decay": weight_decay} if weight_decay > 0 else {"lr": lr}
    try:
        return opt(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return opt(params, **kw)


class ValidationOutputs(Metric):
    """The validation outputs and labels of an epoch, concatenated over batches and (on ``compute``) over
    processes: a metric of the whole validation set (ROC AUC, balanced accuracy, R^2) is not a mean of batches."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("outputs", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, outputs: Tensor, labels: Tensor) -> None:
        self.outputs.append(outputs.float().reshape(len(outputs), -1))
        self.labels.append(labels.reshape(len(labels), -1))

    def compute(self) -> tuple[Tensor, Tensor]:
        return dim_zero_cat(self.outputs), dim_zero_cat(self.labels)
