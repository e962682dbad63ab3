"""The learning-curve figure of a run (matplotlib, the ``plot`` extra), and the helpers every figure uses."""
from __future__ import annotations

import io
from pathlib import Path

from .io import atomic_write_bytes


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (raises ImportError without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path) -> None:
    """Write ``fig`` as a PNG atomically (a kill never leaves half a file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_learning_curve(rows: list[dict], path: str | Path, metric: str = "mse", title: str = "") -> None:
    """Training and validation loss (and the metric, when it differs from the loss) per epoch."""
    plt = pyplot()
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
    save_png(fig, path)
    plt.close(fig)
