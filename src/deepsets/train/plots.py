"""The learning-curve figure of a run (matplotlib, the ``plot`` extra), and the helpers every figure uses."""
from __future__ import annotations

import io
from pathlib import Path

from ..files import atomic_write_bytes


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


def plot_depth(cells: dict[tuple[str, str, int], list[float]], paper: dict[tuple[str, str, int], float | None],
               metrics: dict[str, str], path: str | Path, title: str = "",
               mean_predictor: dict[str, float] | None = None) -> None:
    """Test metric against depth, one panel per task, one line per model family (mean +- s.e. over seeds),
    with the paper's numbers as open markers. ``cells[(task, model, depth)]``: the seeds' values;
    ``mean_predictor[task]``: the MSE of predicting the test labels' mean, drawn as a grey line (a collapsed
    model sits on it)."""
    import math

    from ..models.registry import list_models

    plt = pyplot()
    tasks = list(dict.fromkeys(k[0] for k in cells))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    models = [m for m in list_models() if any(k[1] == m for k in cells)]
    colors = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, task in zip(axes[0], tasks):
        for m in models:
            pts = sorted((d, v) for (t, mm, d), v in cells.items() if t == task and mm == m)
            if not pts:
                continue
            depths = [d for d, _ in pts]
            means = [sum(v) / len(v) for _, v in pts]
            ses = [math.sqrt(sum((x - mu) ** 2 for x in v) / (len(v) - 1) / len(v)) if len(v) > 1 else 0.0
                   for (_, v), mu in zip(pts, means)]
            ax.errorbar(depths, means, yerr=ses, fmt="o-", ms=4, capsize=3, color=colors[m], label=m)
            ref = [(d, paper.get((task, m, d))) for d in depths]
            ref = [(d, p) for d, p in ref if p is not None]
            if ref:
                ax.plot(*zip(*ref), "o--", mfc="none", ms=6, color=colors[m], alpha=0.6, lw=0.8)
        if mean_predictor and task in mean_predictor:
            ax.axhline(mean_predictor[task], color="grey", ls=":", lw=1, label="predict the mean")
        if metrics.get(task) == "MSE":  # errors span orders of magnitude across depths and families
            ax.set_yscale("log")
        ax.set_title(task), ax.set_xlabel("layers"), ax.set_ylabel(f"test {metrics.get(task, '')}")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle((title + "\n" if title else "") + "filled: this project (mean +- s.e. over seeds); "
                 "open, dashed: the paper", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
