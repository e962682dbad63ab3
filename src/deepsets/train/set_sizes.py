"""The set-size generalisation report: a model's test metrics with every set cut to each of several sizes
(``deepsets eval --set-sizes 100 1000 10000``), as a table, JSON and a plot of each metric against the size."""
from __future__ import annotations

from pathlib import Path

SKIP = ("set_size", "sets", "loss", "label_variance")


def metric_names(rows: list[dict]) -> list[str]:
    return [k for k in rows[0] if k not in SKIP and isinstance(rows[0][k], (int, float))] if rows else []


def format_report(rows: list[dict]) -> str:
    """One line per size: the size, the number of sets, then every metric."""
    names = metric_names(rows)
    head = ["set_size", "sets", *names]
    lines = ["  ".join(f"{h:>12}" for h in head)]
    for r in rows:
        cells = [f"{r['set_size']:>12,}", f"{r['sets']:>12}"] + [f"{r[n]:>12.4g}" for n in names]
        lines.append("  ".join(cells))
    return "set-size generalisation (every set cut to a random subset of each size):\n" + "\n".join(lines)


def plot_report(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Each metric against the set size (log scale), one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_write_bytes

    names = metric_names(rows)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 3.0), squeeze=False)
    sizes = [r["set_size"] for r in rows]
    for ax, name in zip(axes[0], names):
        ax.plot(sizes, [r[name] for r in rows], marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("elements per set")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
