"""Group summaries of element scores: per set and group (cell type, gate, cluster), and the frequency of the
top-scoring elements per set compared between classes (CellCnn's "population frequency").

All functions take per-set arrays (one score per element, one group label per element) as produced by
:func:`deepsets.explain` and return pandas tables.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["group_summary", "top_frequency", "frequency_test"]


def _scores_1d(s) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    return s if s.ndim == 1 else s[:, -1]  # several outputs: the last (a binary classifier's positive class)


def group_summary(scores: Sequence, groups: Sequence, set_ids: Sequence[str], labels: Sequence | None = None):
    """One row per (set, group): ``set``, [``label``], ``group``, ``elements``, ``fraction`` (of the set's
    elements), ``score_sum``, ``score_mean``. ``scores``: per set ``[n_i]`` (or ``[n_i, out]``: the last output)."""
    import pandas as pd

    rows = []
    for i, (s, g, sid) in enumerate(zip(scores, groups, set_ids)):
        s, g = _scores_1d(s), np.asarray(g, dtype=object)
        if len(s) != len(g):
            raise ValueError(f"set {sid}: {len(s)} scores but {len(g)} group labels")
        keys, inv = np.unique(g.astype(str), return_inverse=True)
        sums = np.bincount(inv, weights=s, minlength=len(keys))
        counts = np.bincount(inv, minlength=len(keys))
        for k, key in enumerate(keys):
            row = {"set": str(sid)}
            if labels is not None:
                row["label"] = labels[i]
            row.update(group=key, elements=int(counts[k]), fraction=counts[k] / max(len(s), 1),
                       score_sum=float(sums[k]), score_mean=float(sums[k] / counts[k]))
            rows.append(row)
    return pd.DataFrame(rows)


def top_frequency(scores: Sequence, set_ids: Sequence[str], labels: Sequence | None = None, top: float = 0.01):
    """Per set: the fraction of its elements among the top-scoring ``top`` fraction of all elements of all sets
    (one threshold for the data set: the ``1 - top`` quantile of every element's score).

    Returns ``(table, threshold)``; the table has ``set``, [``label``], ``elements``, ``top_elements``,
    ``top_frequency``."""
    import pandas as pd

    if not 0 < top < 1:
        raise ValueError(f"top must be a fraction in (0, 1), got {top}")
    flat = np.concatenate([_scores_1d(s) for s in scores]) if len(scores) else np.zeros(0)
    if flat.size == 0:
        raise ValueError("no scores to summarise")
    threshold = float(np.quantile(flat, 1 - top))
    rows = []
    for i, (s, sid) in enumerate(zip(scores, set_ids)):
        s = _scores_1d(s)
        k = int((s > threshold).sum())
        row = {"set": str(sid)}
        if labels is not None:
            row["label"] = labels[i]
        row.update(elements=len(s), top_elements=k, top_frequency=k / max(len(s), 1))
        rows.append(row)
    return pd.DataFrame(rows), threshold


def frequency_test(table) -> dict:
    """Is the top-element frequency different between classes? Mann-Whitney U for two classes, Kruskal-Wallis for
    more (scipy); per class the mean frequency. ``table``: from :func:`top_frequency`, with labels."""
    from scipy import stats

    if "label" not in table:
        raise ValueError("the frequency test needs the sets' labels")
    by = {str(k): v["top_frequency"].to_numpy() for k, v in table.groupby("label")}
    means = {k: float(v.mean()) for k, v in by.items()}
    if len(by) < 2:
        return {"test": None, "p_value": None, "mean_frequency": means}
    if len(by) == 2:
        a, b = by.values()
        res = stats.mannwhitneyu(a, b, alternative="two-sided")
        name = "Mann-Whitney U"
    else:
        res = stats.kruskal(*by.values())
        name = "Kruskal-Wallis"
    return {"test": name, "statistic": float(res.statistic), "p_value": float(res.pvalue), "mean_frequency": means}
