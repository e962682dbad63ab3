"""Figures (matplotlib, the ``plot`` extra): learning curves and per-layer gradient norms."""
from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    from ..train.io import atomic_write_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_learning_curve(rows: list[dict], path: str | Path, metric: str = "mse", title: str = "") -> None:
    """Training and validation loss (and the metric, when it differs from the loss) per epoch."""
    plt = _plt()
    ncols = 1 if metric == "mse" else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 3.8), squeeze=False)
    epochs = [r["epoch"] + 1 for r in rows]
    ax = axes[0, 0]
    ax.plot(epochs, [r["train_loss"] for r in rows], "o-", ms=3, label="train")
    ax.plot(epochs, [r["val_loss"] for r in rows], "s-", ms=3, label="validation")
    ax.set_xlabel("epoch"), ax.set_ylabel("loss" if metric != "mse" else "MSE")
    if all(r["train_loss"] > 0 and r["val_loss"] > 0 for r in rows):
        ax.set_yscale("log")
    ax.legend(), ax.grid(alpha=0.3)
    if ncols == 2:
        ax = axes[0, 1]
        ax.plot(epochs, [r["train_metric"] for r in rows], "o-", ms=3, label="train")
        ax.plot(epochs, [r["val_metric"] for r in rows], "s-", ms=3, label="validation")
        ax.set_xlabel("epoch"), ax.set_ylabel(metric), ax.legend(), ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)


def plot_curves(curves: dict[str, list[dict]], path: str | Path, key: str = "val_loss", title: str = "",
                ylabel: str = "validation MSE", baseline: tuple[str, float] | None = None) -> None:
    """Several runs' learning curves on one axis (e.g. Deep Sets vs Deep Sets++), with an optional baseline."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in curves.items():
        ax.plot([r["epoch"] + 1 for r in rows], [r[key] for r in rows], "o-", ms=3, label=label)
    if baseline is not None:
        ax.axhline(baseline[1], color="gray", ls="--", lw=1, label=baseline[0])
    ax.set_xlabel("epoch"), ax.set_ylabel(ylabel), ax.set_yscale("log"), ax.grid(alpha=0.3), ax.legend()
    if title:
        ax.set_title(title)
    _save(fig, path)
    plt.close(fig)


def plot_grad_norms(results: dict[str, list[dict]], path: str | Path, title: str = "") -> None:
    """Gradient norm of each layer's weight at initialization, input layer on the left (log scale)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, rows in results.items():
        ax.plot([r["layer"] for r in rows], [max(r["grad_norm"], 1e-30) for r in rows], ".-", label=label)
    ax.set_yscale("log"), ax.set_xlabel("layer (input -> output)"), ax.set_ylabel("gradient norm of weight")
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    ax.set_title(title or "Gradient norms at initialization")
    _save(fig, path)
    plt.close(fig)
