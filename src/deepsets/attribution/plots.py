"""Figures of element scores: one set's elements on two channels coloured by score, group scores per class as box
plots, and the deletion curve beside a random order (matplotlib, the ``plot`` extra)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..train.plots import pyplot, save_png


def plot_set_scores(x, scores, channels=(0, 1), names=None, path: str | Path = "set.png", title: str = "",
                    max_points: int = 50_000, seed: int = 0) -> None:
    """One set's elements on two channels (indices into its features), coloured by score (a diverging map centred
    at 0); sets over ``max_points`` elements are drawn from a random subsample, the highest scores on top."""
    plt = pyplot()
    x, s = np.asarray(x), np.asarray(scores, dtype=np.float64)
    s = s if s.ndim == 1 else s[:, -1]
    i, j = channels
    idx = np.arange(len(s))
    if len(idx) > max_points:
        idx = np.random.default_rng(seed).choice(idx, max_points, replace=False)
    idx = idx[np.argsort(np.abs(s[idx]))]  # strongest drawn last
    lim = float(np.abs(s).max()) or 1.0
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    sc = ax.scatter(x[idx, i], x[idx, j], c=s[idx], cmap="coolwarm", vmin=-lim, vmax=lim, s=6, linewidths=0)
    fig.colorbar(sc, ax=ax, label="score")
    ax.set_xlabel(names[i] if names else f"feature {i}"), ax.set_ylabel(names[j] if names else f"feature {j}")
    ax.set_title(title or f"element scores ({len(s):,} elements)")
    save_png(fig, path)
    plt.close(fig)


def plot_group_boxes(summary, path: str | Path, value: str = "score_mean", title: str = "") -> None:
    """Per group, the distribution over sets of ``value`` (e.g. the group's mean score), one box per class."""
    plt = pyplot()
    groups = sorted(summary["group"].astype(str).unique())
    classes = sorted(summary["label"].astype(str).unique()) if "label" in summary else ["all"]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(groups) * len(classes) + 2), 4.2))
    width = 0.8 / len(classes)
    for c, cls in enumerate(classes):
        part = summary if cls == "all" else summary[summary["label"].astype(str) == cls]
        data = [part.loc[part["group"].astype(str) == g, value].to_numpy() for g in groups]
        pos = np.arange(len(groups)) + (c - (len(classes) - 1) / 2) * width
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, manage_ticks=False)
        for box in bp["boxes"]:
            box.set_facecolor(f"C{c}"), box.set_alpha(0.6)
        ax.plot([], [], "s", color=f"C{c}", label=f"class {cls}" if cls != "all" else "all sets")
    ax.set_xticks(np.arange(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylabel(value.replace("_", " ")), ax.axhline(0, color="0.6", lw=0.8)
    ax.legend(fontsize=8), ax.grid(alpha=0.3, axis="y")
    ax.set_title(title or "group scores per class")
    save_png(fig, path)
    plt.close(fig)


def plot_deletion(fractions, by_score, random, path: str | Path, title: str = "", ylabel: str = "output") -> None:
    """The deletion curve: the output as the top-scoring elements are removed, beside a random order."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    ax.plot(fractions, by_score, "o-", ms=3, label=f"highest scores first (area {np.mean(by_score):.3g})")
    ax.plot(fractions, random, "s--", ms=3, label=f"random order (area {np.mean(random):.3g})")
    ax.set_xlabel("fraction of elements removed"), ax.set_ylabel(ylabel)
    ax.legend(fontsize=8), ax.grid(alpha=0.3)
    ax.set_title(title or "deletion curve")
    save_png(fig, path)
    plt.close(fig)
