"""Long tables: CSV, TSV or Parquet with one row per element and a column naming each row's set.

The table is read once, in chunks (pandas for CSV/TSV, pyarrow for Parquet, both from the ``tables`` extra):
the feature columns are converted to float32 into a memory-mapped file in the data folder
(``$DEEPSETS_DATA/tables/``, keyed by the file's path, its content fingerprint (:mod:`deepsets.data.fingerprint`:
size and a hash of its bytes, so a file edited in place is indexed again whatever its modification time) and the
chosen columns), and each set becomes a list of row positions. Later runs on the same file reuse the index.
Reading a set is then a slice of the memory map (a gather when a set's rows are not contiguous), so resident
memory stays far below the table's size and sets are served faster than a deep model trains on them
(``benchmarks/table_loader.py``).

Set ids, labels and the split column are read as text, exactly as written (``007`` and ``7`` are two sets; a
Parquet integer column gives ``7``, not ``7.0``); a label column whose every text is a plain number (or
``True``/``False``) is read as numbers (booleans), as long as no two labels become one value (``1`` and ``1.0``),
else labels stay text. The feature columns are chosen from the first rows, and must be numeric in every row of
the file.

Checks while indexing (each a one-line :class:`~deepsets.data.DataError` naming the file): a named column that
does not exist (the message lists the columns there are), a feature column with a non-numeric value (column,
row and value), a label that differs within one set (the set and two of its labels). NaN or infinite feature
values are noted in the index (the first of each set) and reported by :meth:`TableReader.scan_finite`, so that
:func:`~deepsets.data.check_finite` names the split the set is in (reading such a set also raises).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from .._base import DataError, data_dir
from ..finite import NonFinite
from . import SetReader, Source, labels_from_file

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": None, ".parquet": None, ".pq": None}
CHUNK_ROWS = 1 << 18  # rows per chunk while indexing: bounds the memory of the pass over the file


def _pandas():
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading tables needs pandas (and pyarrow for Parquet): pip install 'deepsets[tables]'") from e
    return pd


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _column_names(path: Path, no_header: bool) -> list:
    pd = _pandas()
    if _is_parquet(path):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover
            raise ImportError("reading Parquet needs pyarrow: pip install 'deepsets[tables]'") from e
        try:
            names = list(pq.ParquetFile(path).schema_arrow.names)
        except Exception as e:  # noqa: BLE001 - pyarrow's many error types
            raise DataError(f"{path}: not a readable Parquet file: {' '.join(str(e).split())}") from None
        return list(range(len(names))) if no_header else names
    try:
        head = pd.read_csv(path, sep=_sep(path), header=None if no_header else "infer", nrows=5)
    except Exception as e:  # noqa: BLE001 - pandas' parser errors
        raise DataError(f"{path}: not a readable table: {' '.join(str(e).split())}") from None
    return list(head.columns)


def _sep(path: Path):
    sep = TABLE_SUFFIXES.get(path.suffix.lower(), ",")
    return sep if sep is not None else r"\s+|,"


def _arrow_text(arr):
    """A Parquet column as text (``None`` where missing): integers and strings as Arrow writes them (``7``, never
    ``7.0``), other types (floats, booleans, dates) as Python writes them (``7.5``, ``True``), as in a CSV."""
    import pyarrow as pa

    t = arr.type.value_type if pa.types.is_dictionary(arr.type) else arr.type
    if pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr.cast(pa.string()).to_pandas().astype(object)
    s = arr.to_pandas()
    out = s.astype(str).astype(object)
    out[s.isna().to_numpy()] = None
    return out


def _chunks(path: Path, columns: list, no_header: bool, text=()):
    """DataFrames of the chosen columns, ``CHUNK_ROWS`` rows at a time; the ``text`` columns (set ids, labels,
    split) as text exactly as written, surrounding spaces removed."""
    pd = _pandas()
    text = [c for c in text if c in columns]
    if _is_parquet(path):
        import pyarrow.parquet as pq

        f = pq.ParquetFile(path, pre_buffer=False)  # one row group in memory at a time
        names = f.schema_arrow.names
        cols = [names[c] for c in columns] if no_header else columns
        start = 0
        for batch in f.iter_batches(batch_size=CHUNK_ROWS, columns=cols, use_threads=False):
            df = batch.to_pandas()
            for c in text:  # never through floats: an integer id column gives 7, not 7.0
                name = names[c] if no_header else c
                df[name] = _arrow_text(batch.column(name)).to_numpy()
            df.index = pd.RangeIndex(start, start + len(df))  # row numbers of the file, for messages
            start += len(df)
            if no_header:
                df.columns = columns
            yield _strip(df, text)
        return
    kw = {"sep": _sep(path), "header": None if no_header else "infer", "usecols": columns,
          "chunksize": CHUNK_ROWS, "engine": "python" if _sep(path) == r"\s+|," else "c",
          "dtype": {c: str for c in text}}  # ids as written: 007 and 7 are two sets, never numbers per chunk
    try:
        for df in pd.read_csv(path, **kw):
            yield _strip(df, text)
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot parse the table: {' '.join(str(e).split())}") from None


def _strip(df, text):
    for c in text:
        df[c] = df[c].map(lambda v: v.strip() if isinstance(v, str) else v, na_action="ignore")
    return df


_INT_TEXT = re.compile(r"0|-?[1-9][0-9]*")


def _typed_labels(values: list) -> list:
    """Labels read as text, as numbers (or booleans) where that keeps each label's text: every text is an integer
    as Python writes it (``7``, not ``007`` or ``+7``), a float as Python writes it (``0.5``, ``1.0``), or
    ``True``/``False``, and no two texts become one value (``1`` and ``1.0``); otherwise they stay text."""
    texts = {v for v in values if isinstance(v, str)}
    if not texts:
        return values
    if texts <= {"True", "False"}:
        typed = {"True": True, "False": False}
    else:
        typed = {}
        for t in texts:
            if _INT_TEXT.fullmatch(t):
                typed[t] = int(t)
                continue
            try:
                f = float(t)
            except ValueError:
                return values
            if repr(f) != t:
                return values
            typed[t] = f
        if len(set(typed.values())) < len(typed):
            return values
    return [typed[v] if isinstance(v, str) else v for v in values]


def _resolve(col, columns: list, path: Path, no_header: bool, what: str):
    """A column given by name (or by 0-based index for a headerless table)."""
    if col is None:
        return None
    if no_header:
        try:
            j = int(col)
        except (TypeError, ValueError):
            raise DataError(f"{path}: --no-header: {what} must be a 0-based column index, found {col!r}") from None
        if not 0 <= j < len(columns):
            raise DataError(f"{path}: {what} index {j} out of range: the table has {len(columns)} columns "
                            f"(0..{len(columns) - 1})")
        return j
    if col in columns:
        return col
    hint = " (a table without a header row? pass --no-header and name columns by 0-based index)" \
        if str(col).isdigit() else ""
    raise DataError(f"{path}: {what} {col!r} not found; the table's columns are {columns}{hint}")


def _looks_numeric(name) -> bool:
    try:
        float(str(name))
    except ValueError:
        return False
    return True


def _check_header(columns: list, path: Path) -> None:
    """A first row of numbers is data, not column names: refuse rather than train on shifted columns."""
    if columns and sum(_looks_numeric(c) for c in columns) * 2 >= len(columns):
        raise DataError(f"{path}: the first row looks like data, not column names ({columns[:6]}); for a table "
                        f"without a header row pass --no-header and name columns by 0-based index")


def _cache_key(path: Path, parts) -> str:
    """The index of ``path`` read with ``parts`` (columns, options): keyed by the file's content, not its times."""
    from ..fingerprint import fingerprint

    raw = json.dumps(["text-ids", str(path.resolve()), fingerprint(path), parts], default=str)
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


class TableReader(SetReader):
    """Sets of a long table (see module docstring)."""

    def __init__(self, path, set_column, label_column=None, features=None, no_header: bool = False,
                 labels=None, split_column=None, split: str | None = None):
        self.path = Path(path)
        self.source = str(self.path)
        if set_column is None:
            cols = _column_names(self.path, no_header)
            raise DataError(f"{path}: no set column given: pass set_column=... (--set-column COL), the column "
                            f"naming each row's set; the table's columns are {cols}")
        columns = _column_names(self.path, no_header)
        if not no_header:
            _check_header(columns, self.path)
        set_col = _resolve(set_column, columns, self.path, no_header, "set column")
        self.set_column, self.no_header = set_col, no_header  # what a per-element column is grouped by (explain)
        label_col = _resolve(label_column, columns, self.path, no_header, "label column")
        split_col = _resolve(split_column, columns, self.path, no_header, "split column")
        taken = {c for c in (set_col, label_col, split_col) if c is not None}
        if features is not None:
            feats = [_resolve(c, columns, self.path, no_header, "feature column") for c in features]
        else:
            feats = None  # every other numeric column, decided on the first chunk
        self._index(columns, set_col, label_col, split_col, feats, taken, no_header, split)
        self.has_test_split = split == "train" and split_col is not None
        if labels is not None:
            if label_col is not None:
                raise ValueError(f"{path}: give a label column or a labels file, not both")
            self.labels = labels_from_file(labels, self.set_ids, split)
            self.labels_source = str(labels)

    # ------------------------------------------------------------------------------------------ indexing
    def _index(self, columns, set_col, label_col, split_col, feats, taken, no_header, split):
        pd = _pandas()
        key = _cache_key(self.path, [set_col, label_col, split_col, feats, no_header, split])
        folder = data_dir() / "tables"
        meta_path, data_path = folder / f"{key}.json", folder / f"{key}.f32"
        if meta_path.is_file() and data_path.is_file():
            meta = json.loads(meta_path.read_text())
            self._load_index(meta, folder / f"{key}.order.npy", data_path)
            return
        folder.mkdir(parents=True, exist_ok=True)
        usecols = [set_col] + [c for c in (label_col, split_col) if c is not None]
        text = list(usecols)  # read as text, exactly as written
        if feats is None:  # all numeric columns but the set/label/split ones, from the first rows
            first = next(_chunks(self.path, columns, no_header, text), None)
            if first is None or len(first) == 0:
                raise DataError(f"{self.path}: holds no rows (a header only); nothing to read")
            feats = [c for c in columns if c not in taken and pd.api.types.is_numeric_dtype(first[c])
                     and not pd.api.types.is_bool_dtype(first[c])]
            for c in columns:  # a column of numbers with a stray text value is an error, not a silent drop
                if c in taken or c in feats or pd.api.types.is_bool_dtype(first[c]):
                    continue
                vals = first[c].dropna()
                num = pd.to_numeric(vals, errors="coerce")
                if len(vals) and num.notna().all():  # numbers pandas keeps as objects: beyond 64-bit integers
                    j = vals.index[0]
                    raise DataError(f"{self.path}: column {c!r} holds numbers too large for a 64-bit number (row "
                                    f"{int(j)}: {str(vals[j])[:40]}); leave it out with --features, or store it "
                                    f"as a decimal number")
                if len(vals) and num.notna().mean() >= 0.9:
                    j = vals.index[num.isna().to_numpy()][0]
                    raise DataError(f"{self.path}: column {c!r} holds numbers but row {int(j)} holds "
                                    f"{vals[j]!r}; clean it, or choose the features with --features")
            if not feats:
                raise DataError(f"{self.path}: no numeric feature columns besides the set/label columns; the "
                                f"table's columns are {columns}; name them with --features")
        usecols += [c for c in feats if c not in usecols]
        ids: dict = {}
        codes_parts, labels, seen_label = [], {}, {}
        seen, nonfinite = np.zeros(0, dtype=np.int64), {}
        tmp = data_path.with_name(f".{data_path.name}.{os.getpid()}.tmp")
        n_rows = 0
        with open(tmp, "wb") as out:
            for chunk, df in enumerate(_chunks(self.path, usecols, no_header, text)):
                if split_col is not None and split is not None:
                    df = df[df[split_col].astype(str).str.strip() == split]
                x = self._features(df, feats, chunk > 0)
                sid = df[set_col]
                empty = (sid.isna() | (sid == "")).to_numpy()
                if empty.any():
                    j = int(np.flatnonzero(empty)[0])
                    raise DataError(f"{self.path}: row {int(df.index[j])} has no set id (column {set_col!r} is "
                                    f"empty)")
                local, uniq = pd.factorize(sid, sort=False)
                glob = np.array([ids.setdefault(u, len(ids)) for u in uniq], dtype=np.int32)
                codes = glob[local]
                seen = np.pad(seen, (0, len(ids) - len(seen)))  # rows of each set in earlier chunks
                if not np.isfinite(x).all():
                    _note_nonfinite(x, codes, seen, df.index, nonfinite)
                seen += np.bincount(codes, minlength=len(ids))
                if label_col is not None:
                    self._merge_labels(df, set_col, label_col, labels, seen_label)
                out.write(np.ascontiguousarray(x, dtype=np.float32).tobytes())
                codes_parts.append(codes)
                n_rows += len(df)
                del df, x, sid, local, codes
        codes = np.concatenate(codes_parts) if codes_parts else np.zeros(0, np.int32)
        del codes_parts
        if n_rows == 0:
            tmp.unlink(missing_ok=True)
            raise DataError(f"{self.path}: no rows" + (f" in split {split!r}" if split_col is not None else ""))
        contiguous = bool((codes[1:] >= codes[:-1]).all())
        order_path = folder / f"{key}.order.npy"
        if contiguous:
            order_path.unlink(missing_ok=True)
        else:
            np.save(order_path, np.argsort(codes, kind="stable"))
        counts = np.bincount(codes, minlength=len(ids))
        set_ids = [str(s) for s in ids]
        meta = {"features": [str(f) for f in feats], "set_ids": set_ids, "counts": counts.tolist(),
                "contiguous": contiguous, "rows": n_rows,
                "nonfinite": [[k, *v] for k, v in sorted(nonfinite.items(), key=lambda kv: kv[1][3])],
                "labels": None if label_col is None else _typed_labels([labels[s] for s in ids])}
        os.replace(tmp, data_path)
        tmp_meta = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, meta_path)  # the index is complete once its meta file exists
        self._load_index(meta, order_path, data_path)

    def _features(self, df, feats, later: bool) -> np.ndarray:
        """The feature columns of one chunk as float64; ``later``: not the first chunk (earlier rows held numbers
        wherever they were read)."""
        pd = _pandas()
        cols = []
        for c in feats:
            s = df[c]
            if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
                num = pd.to_numeric(s, errors="coerce")
                bad = num.isna() & s.notna()
                if bad.any() or pd.api.types.is_bool_dtype(s):
                    j = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else 0
                    if later:  # numbers in earlier rows: the column's type is the whole file's, not a chunk's
                        raise DataError(f"{self.path}: feature column {c!r} holds numbers in earlier rows but row "
                                        f"{int(df.index[j])} holds {s.iloc[j]!r}; clean the column, or choose "
                                        f"numeric columns with --features")
                    raise DataError(f"{self.path}: feature column {c!r} is not numeric: row {int(df.index[j])} "
                                    f"holds {s.iloc[j]!r}; choose numeric columns with --features")
                s = num
            cols.append(s.to_numpy(dtype=np.float64, na_value=np.nan))
        if not cols:
            return np.zeros((len(df), 0))
        return np.column_stack(cols)

    def _merge_labels(self, df, set_col, label_col, labels, seen):
        g = df.groupby(set_col, sort=False)[label_col]
        nun = g.nunique(dropna=False)
        first = g.first()
        for sid, k in nun.items():
            if k > 1:
                vals = sorted(map(str, df.loc[df[set_col] == sid, label_col].unique()))[:3]
                raise DataError(f"{self.path}: label column {label_col!r} differs within set {sid!r}: {vals}; a "
                                f"set has one label")
            v = first[sid]
            v = v.item() if isinstance(v, np.generic) else v
            if sid in labels and str(labels[sid]) != str(v):
                raise DataError(f"{self.path}: label column {label_col!r} differs within set {sid!r}: "
                                f"{[labels[sid], v]}; a set has one label")
            labels[sid] = v

    def _load_index(self, meta, order_path: Path, data_path: Path):
        self.feature_names = meta["features"]
        self.set_ids = meta["set_ids"]
        counts = np.asarray(meta["counts"], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self._order = None if meta["contiguous"] else np.load(order_path, mmap_mode="r")
        d = len(self.feature_names)
        self._data_path, self._shape = data_path, (int(meta["rows"]), d)
        self._mm = None
        self.labels = meta["labels"]
        self._nonfinite = meta.get("nonfinite", [])  # indexes written before this list had none

    def __getstate__(self):
        s = dict(self.__dict__)
        s["_mm"] = None
        return s

    def __len__(self):
        return len(self.set_ids)

    def scan_finite(self, indices):
        """The table was scanned while indexing: the first NaN/inf of each set is in the index."""
        wanted = set(np.asarray(indices).tolist())
        hit = next((h for h in self._nonfinite if h[0] in wanted), None)
        return None if hit is None else NonFinite(*hit)

    def read(self, index):
        if self._mm is None:
            self._mm = np.memmap(self._data_path, dtype=np.float32, mode="r", shape=self._shape)
        a, b = int(self._offsets[index]), int(self._offsets[index + 1])
        if self._order is None:
            return np.array(self._mm[a:b])
        return self._mm[np.asarray(self._order[a:b])]


def _note_nonfinite(x, codes, seen, rows, out: dict) -> None:
    """Add ``{set code: [element, feature, value, file row]}`` for the first NaN/inf of each set in this chunk
    not in ``out`` yet (``seen``: the rows of each set in earlier chunks, so ``element`` is its position)."""
    bad = ~np.isfinite(x)
    bad_rows = np.flatnonzero(bad.any(axis=1))
    order = np.argsort(codes, kind="stable")
    rank = np.empty(len(codes), dtype=np.int64)  # position of each row among its set's rows in this chunk
    rank[order] = np.arange(len(codes)) - np.searchsorted(codes[order], codes[order], side="left")
    _, first = np.unique(codes[bad_rows], return_index=True)
    for r in bad_rows[first]:
        code = int(codes[r])
        if code not in out:
            c = int(np.flatnonzero(bad[r])[0])
            out[code] = [int(seen[code] + rank[r]), c, float(x[r, c]), int(rows[r])]


def _open(path, split=None, set_column=None, label_column=None, features=None, no_header=False, labels=None,
          split_column=None):
    return TableReader(path, set_column, label_column, features, bool(no_header), labels, split_column, split)


SOURCE = Source("table", ".csv/.tsv/.parquet with one row per element and --set-column",
                lambda p: p.is_file() and p.suffix.lower() in TABLE_SUFFIXES, _open)


def sets_from_table(table, set_column, label_column=None, features=None):
    """``(sets, labels, set_ids)`` from a pandas DataFrame or a table file (CSV/TSV/Parquet).

    ``sets`` is a list of float32 ``[n_i, D]`` arrays in order of first appearance, ``labels`` one label per set
    (``None`` without ``label_column``), ``features`` the feature columns (default: every other numeric column).
    """
    pd = _pandas()
    if isinstance(table, (str, os.PathLike)):
        r = TableReader(table, set_column, label_column, features)
        if r._nonfinite:
            code, element, feature, value, row = r._nonfinite[0]
            raise DataError(f"{r.path}: set {r.set_ids[code]!r}, row {row}: feature {r.feature_names[feature]!r} "
                            f"is {value} (expected a finite number); clean or drop the row")
        return [r.read(i) for i in range(len(r))], r.labels, list(r.set_ids)
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"sets_from_table expects a pandas DataFrame or a path, got {type(table).__name__}")
    cols = list(table.columns)
    where = "table"
    for c, what in ((set_column, "set column"), (label_column, "label column")):
        if c is not None and c not in cols:
            raise DataError(f"{where}: {what} {c!r} not found; the table's columns are {cols}")
    if features is None:
        features = [c for c in cols if c not in (set_column, label_column)
                    and pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])]
    missing = [c for c in features if c not in cols]
    if missing:
        raise DataError(f"{where}: feature column(s) {missing} not found; the table's columns are {cols}")
    sets, labels, ids = [], [], []
    for sid, g in table.groupby(set_column, sort=False):
        try:
            x = g[features].to_numpy(dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}: set {sid!r}: non-numeric feature values ({e}); choose numeric columns") from None
        bad = ~np.isfinite(x)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise DataError(f"{where}: set {sid!r}, row {g.index[r]!r}: feature {features[c]!r} is {x[r, c]} "
                            f"(expected a finite number)")
        sets.append(x)
        ids.append(str(sid))
        if label_column is not None:
            vals = g[label_column].unique()
            if len(vals) != 1:
                raise DataError(f"{where}: label column {label_column!r} differs within set {sid!r}: "
                                f"{sorted(map(str, vals))[:3]}")
            v = vals[0]
            labels.append(v.item() if isinstance(v, np.generic) else v)
    return sets, (labels if label_column is not None else None), ids
