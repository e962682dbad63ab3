"""Figures (matplotlib, the ``plot`` extra): several runs' learning curves and per-layer gradient norms.

A single run's learning curve is drawn during training by :mod:`deepsets.train.plots` (re-exported here).
"""
from __future__ import annotations

from pathlib import Path

from ..train.plots import plot_learning_curve, pyplot, save_png

__all__ = ["plot_curves", "plot_grad_norms", "plot_learning_curve"]


def plot_curves(curves: dict[str, list[dict]], path: str | Path, key: str = "val_loss", title: str = "",
                ylabel: str = "validation MSE", baseline: tuple[str, float] | None = None) -> None:
    """Several runs' learning curves on one axis (e.g. Deep Sets vs Deep Sets++), with an optional baseline."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in curves.items():
        ax.plot([r["epoch"] + 1 for r in rows], [r[key] for r in rows], "o-", ms=3, label=label)
    if baseline is not None:
        ax.axhline(baseline[1], color="gray", ls="--", lw=1, label=baseline[0])
    ax.set_xlabel("epoch"), ax.set_ylabel(ylabel), ax.set_yscale("log"), ax.grid(alpha=0.3), ax.legend()
    if title:
        ax.set_title(title)
    save_png(fig, path)
    plt.close(fig)


def plot_grad_norms(results: dict[str, list[dict]], path: str | Path, title: str = "") -> None:
    """Gradient norm of each layer's weight at initialization, input layer on the left (log scale)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, rows in results.items():
        ax.plot([r["layer"] for r in rows], [max(r["grad_norm"], 1e-30) for r in rows], ".-", label=label)
    ax.set_yscale("log"), ax.set_xlabel("layer (input -> output)"), ax.set_ylabel("gradient norm of weight")
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    ax.set_title(title or "Gradient norms at initialization")
    save_png(fig, path)
    plt.close(fig)
