"""Where ``deepsets explain`` writes element scores: the per-element table (CSV or Parquet, written set by set and
renamed into place), a copy of an ``.h5ad`` with the scores in ``obs``, and copies of FCS files with a score channel.
Nothing here writes the user's input."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


class ElementTable:
    """The per-element table, written set by set to a temporary file beside ``path`` and renamed at the end."""

    def __init__(self, path: Path, columns: list[str], escape: bool):
        self.path, self.columns, self.escape = path, columns, escape
        self.parquet = path.suffix.lower() == ".parquet"
        if not self.parquet and path.suffix.lower() not in (".csv", ".tsv", ".txt"):
            raise ValueError(f"--output {path}: give a .csv or .parquet file")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        self.writer = None
        self.rows = 0

    def add(self, set_id: str, scores: np.ndarray, group=None) -> None:
        import pandas as pd

        n = scores.shape[0]
        data = {"set": np.full(n, set_id, dtype=object), "element": np.arange(n)}
        s2 = scores.reshape(n, -1)
        for j, c in enumerate(c for c in self.columns if c.startswith("score")):
            data[c] = s2[:, j]
        if group is not None:
            data[self.columns[-1]] = np.asarray(group, dtype=object)
        df = pd.DataFrame(data, columns=self.columns)
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            df["set"] = df["set"].astype(str)
            if group is not None:
                df[self.columns[-1]] = df[self.columns[-1]].astype(str)
            table = pa.Table.from_pandas(df, preserve_index=False)
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.tmp, table.schema)
            self.writer.write_table(table)
        else:
            from ..files import escape_csv_cell as csv_escape_cell

            if self.escape:
                df["set"] = df["set"].map(csv_escape_cell)
                if group is not None:
                    df[self.columns[-1]] = df[self.columns[-1]].astype(str).map(csv_escape_cell)
            df.to_csv(self.tmp, mode="a", header=self.rows == 0, index=False, float_format="%.6g")
        self.rows += n

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.rows == 0 and not self.parquet:
            Path(self.tmp).write_text(",".join(self.columns) + "\n")
        os.chmod(self.tmp, 0o666 & ~_umask())
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - already failing
                pass
        Path(self.tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def annotate_h5ad(source: Path, target: Path, rows: list, scores: list, columns: list[str]) -> None:
    """A copy of ``source`` with one ``obs`` column per score column (NaN for cells in no set)."""
    import anndata as ad

    a = ad.read_h5ad(source)
    for j, c in enumerate(columns):
        col = np.full(a.n_obs, np.nan)
        for r, s in zip(rows, scores):
            col[r] = s.reshape(len(r), -1)[:, j]
        a.obs[f"deepsets_{c}"] = col
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".h5ad", dir=target.parent)
    os.close(fd)
    try:
        a.write_h5ad(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def annotate_fcs(source: Path, target_dir: Path, scores: np.ndarray) -> Path:
    """A copy of the FCS file ``source`` in ``target_dir`` with the element scores as an added channel
    ``deepsets_score`` (the last output's score for several outputs); events in the file's order."""
    import flowio

    fd = flowio.FlowData(str(source))
    n_ch = fd.channel_count
    events = np.asarray(fd.events, dtype=np.float64).reshape(-1, n_ch)
    if scores.shape[0] != events.shape[0]:
        raise ValueError(f"{source}: {events.shape[0]} events but {scores.shape[0]} scores (the reader left events "
                         f"out); an annotated copy needs one score per event")
    names = list(fd.pnn_labels)
    out = np.column_stack([events, scores.reshape(len(scores), -1)[:, -1]]).astype(np.float32)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / source.name
    if target.resolve() == source.resolve():
        raise ValueError(f"--annotated {target_dir}: would overwrite the input {source}; choose another folder")
    fdesc, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target_dir)
    try:
        with os.fdopen(fdesc, "wb") as fh:
            flowio.create_fcs(fh, out.ravel().tolist(), names + ["deepsets_score"])
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
