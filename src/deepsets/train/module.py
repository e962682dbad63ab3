"""The Lightning module: a registered set model + the task's loss and metric."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from ..models import create_model

LOSSES = ("mse", "ce", "ce_elements")


def task_loss(kind: str, out: Tensor, y: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(loss, metric)`` for a batch. ``mse``: metric = MSE; ``ce``/``ce_elements``: metric = accuracy."""
    if kind == "mse":
        loss = F.mse_loss(out.float(), y.float().view_as(out))
        return loss, loss.detach()
    if kind == "ce":
        logits = out.float()
    elif kind == "ce_elements":  # one logit per element; the target is the index of the odd element
        logits = out.float().squeeze(-1)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
    else:
        raise ValueError(f"unknown loss {kind!r}; valid: {', '.join(LOSSES)}")
    loss = F.cross_entropy(logits, y.long())
    return loss, (logits.argmax(-1) == y).float().mean()


class SetModule(pl.LightningModule):
    """Wraps ``create_model(model, **model_kwargs)``; everything needed to rebuild it is in the checkpoint."""

    def __init__(self, model: str, model_kwargs: dict, task: str, loss: str, metric: str, lr: float = 1e-4,
                 train_config: dict | None = None, data_info: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(model, **model_kwargs)
        self.loss_kind, self.metric_name, self.lr = loss, metric, lr
        self.train_loss, self.train_metric = MeanMetric(), MeanMetric()
        self.val_loss, self.val_metric = MeanMetric(), MeanMetric()
        self.last_val: dict[str, float] = {}

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.model(x, mask)

    def _step(self, batch):
        x, mask, y = batch
        out = self.model(x, mask)
        return task_loss(self.loss_kind, out, y, mask)

    def training_step(self, batch, batch_idx):
        loss, metric = self._step(batch)
        if not torch.isfinite(loss):
            from .callbacks import NonFiniteLossError

            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step} "
                f"(batch {batch_idx}); training stopped"
            )
        n = batch[0].shape[0]
        self.train_loss.update(loss.detach(), n)
        self.train_metric.update(metric, n)
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, metric = self._step(batch)
        n = batch[0].shape[0]
        self.val_loss.update(loss, n)
        self.val_metric.update(metric, n)

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            self.val_loss.reset(), self.val_metric.reset()
            return
        self.last_val = {"val_loss": self.val_loss.compute().item(), "val_metric": self.val_metric.compute().item()}
        self.val_loss.reset(), self.val_metric.reset()
        # val_loss is what checkpoints monitor; it is already reduced over processes by torchmetrics.
        self.log("val_loss", self.last_val["val_loss"], prog_bar=True, sync_dist=False, rank_zero_only=False)
        self.log("val_metric", self.last_val["val_metric"], prog_bar=self.metric_name != "mse")

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
        return make_adam(self.parameters(), self.lr)


def make_adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam (the paper's optimizer); the fused implementation where this PyTorch build has one."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)
