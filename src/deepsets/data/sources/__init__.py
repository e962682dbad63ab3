"""Sources of sets: where the elements of each set and its label come from.

A source reads one format and gives a :class:`SetReader`: ``len(reader)`` sets, ``reader.read(i)`` the elements
of set ``i`` as float32 ``[n_i, D]``, ``reader.set_ids`` (how predictions name each set), ``reader.labels`` (one
raw label per set, of any type, or ``None``) and ``reader.feature_names``. :class:`SourceDataset` turns a reader
and a target kind (:mod:`deepsets.data.targets`) into the :class:`~deepsets.data.SetDataset` that training,
evaluation and prediction use. Adding a format is one file here with a ``SOURCE = Source(...)`` entry.

=================  ===================================================================  ==========================
format             one set is                                                           labels from
=================  ===================================================================  ==========================
``.csv .tsv``      the rows that share a ``set_column`` value (one row per element)     ``label_column`` or file
``.parquet``       same (read lazily, indexed once)                                     ``label_column`` or file
``.h5ad``          the cells that share an ``obs[set_column]`` value                    ``obs[label_column]``/file
folder of ``.fcs``  one file (its stem is the set id)                                    ``labels.csv``/``labels=``
``.npy``           ``arr[i]`` of ``[sets, elements, features]``                         ``labels=`` file
``.h5``            ``f[key][i]`` of ``[sets, elements, features]``                      ``KEY_labels``/file
Python             one ``[n_i, D]`` array of a list                                     a list
=================  ===================================================================  ==========================

A labels file is a CSV with columns ``set,label`` (``file,label`` also works for FCS) and optionally ``split``.
"""
from __future__ import annotations

import csv
import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._base import DataError, SetDataset, check_exists
from ..targets import Classification, get_target, infer_target

__all__ = ["Source", "sources", "SetReader", "SourceDataset", "open_source", "parse_channel_map", "source_options_of", "read_labels_file",
           "select_features", "source_for", "measurement_channels", "is_non_measurement", "left_out_note"]


class SetReader:
    """Base of the readers: subclasses set the attributes below and implement ``__len__`` and ``read``."""

    source: str = ""
    feature_names: list[str] = []
    set_ids: list[str] = []
    labels_source: str | None = None  # the labels file, where labels came from one (for messages)
    has_test_split: bool = False  # opened as "train" from data that also hold a separate test split
    _labels = _UNREAD = object()

    @property
    def labels(self) -> list | None:
        """One raw label per set, or ``None``; read (and checked) on first use, so prediction never reads them."""
        if self._labels is SetReader._UNREAD:
            self._labels = self._read_labels()
        return self._labels

    @labels.setter
    def labels(self, value) -> None:
        self._labels = value

    def _read_labels(self) -> list | None:
        return None

    def describe(self, index: int) -> str:
        """How messages name set ``index``."""
        return f"set {self.set_ids[index]!r}"

    def scan_finite(self, indices):
        """The first NaN/inf among sets ``indices`` (see :mod:`deepsets.data.finite`); by default each set is read."""
        from ..finite import scan_sets

        return scan_sets(self.read, indices)

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, index: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Source:
    """A file format: ``matches(path)`` says whether it reads ``path``; ``open(path, split, **options)``."""

    name: str
    description: str
    matches: Callable[[Path], bool]
    open: Callable[..., SetReader]


def sources() -> list[Source]:
    """Every source: the ``SOURCE`` of each module of this package (a new format is one new file)."""
    import pkgutil

    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"{__name__}.{m}").SOURCE for m in names]



def source_for(path) -> Source:
    p = check_exists(path)
    for s in sources():
        if s.matches(p):
            return s
    kinds = "; ".join(f"{s.name}: {s.description}" for s in sources())
    raise DataError(f"{p}: unsupported input ({'a folder without .fcs files' if p.is_dir() else repr(p.suffix)}); "
                    f"readable sources: {kinds}")


def source_options_of(path) -> set[str]:
    """The options the source of ``path`` takes."""
    return {k for k in inspect.signature(source_for(path).open).parameters if k not in ("path", "split")}


def open_source(path, split: str | None = None, **options) -> SetReader:
    """The :class:`SetReader` of ``path`` (format chosen by suffix; a folder is a folder of FCS files).

    ``split`` (``"train"``/``"test"``) keeps the sets of that split where the data say (a ``split`` column of a
    labels file or table, ``train/`` and ``test/`` subfolders, ``train_data``/``test_data`` keys); otherwise
    every set is in every split. Unknown options raise ValueError listing the source's options.
    """
    src = source_for(path)
    params = inspect.signature(src.open).parameters
    allowed = [k for k in params if k not in ("path", "split")]
    unknown = sorted(k for k, v in options.items() if k not in allowed and v is not None)
    if unknown:
        raise ValueError(f"{path}: option(s) {unknown} do not apply to a {src.name} source; its options: "
                         f"{', '.join(allowed)}")
    return src.open(Path(path), split=split, **{k: v for k, v in options.items() if k in allowed})


# ---------------------------------------------------------------------------------------------- shared helpers
def parse_channel_map(channel_map) -> dict[str, str]:
    """``channel_map`` as a dict ``{name in the file: name to use}``.

    Accepts a dict, or a list of ``"FILE_NAME=NAME"`` strings (the ``--channel-map`` command-line form).
    """
    if channel_map is None:
        return {}
    if isinstance(channel_map, dict):
        return {str(k): str(v) for k, v in channel_map.items()}
    if isinstance(channel_map, str):
        channel_map = [channel_map]
    out = {}
    for item in channel_map:
        old, sep, new = str(item).partition("=")
        if not sep or not old.strip() or not new.strip():
            raise ValueError(f"channel map entry {item!r}: expected FILE_CHANNEL=NAME (e.g. FSC-A=RBC_Volume)")
        out[old.strip()] = new.strip()
    return out


def read_labels_file(path, split: str | None = None) -> dict[str, str]:
    """``{set id: label}`` from a CSV with columns ``set`` (or ``file``) and ``label`` (and optional ``split``)."""
    p = check_exists(path)
    try:
        with open(p, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{p}: cannot read labels CSV: {e}") from e
    cols = list(rows[0]) if rows else []
    key = "set" if "set" in cols else "file" if "file" in cols else None
    if key is None or "label" not in cols:
        raise DataError(f"{p}: expected columns set,label[,split] (or file,label for FCS), found {cols}")
    out: dict[str, str] = {}
    for r in rows:
        if split is not None and "split" in r and (r["split"] or "").strip() not in ("", split):
            continue
        sid = (r[key] or "").strip()
        if sid in out and out[sid] != (r["label"] or "").strip():
            raise DataError(f"{p}: set {sid!r} is listed twice with different labels "
                            f"({out[sid]!r}, {r['label'].strip()!r})")
        out[sid] = (r["label"] or "").strip()
    return out


def labels_from_file(path, set_ids: Sequence[str], split: str | None = None, aliases=None,
                     all_names=None) -> list:
    """One label per set from a labels file; a set without a row, or a row naming no set, is an error.

    ``aliases(i)`` may give other names a row can use for set ``i`` (FCS: file name, relative path);
    ``all_names`` are the names of every set of the data, in any split (default: ``set_ids`` and aliases).
    """
    table = read_labels_file(path, split)
    everything = read_labels_file(path)
    out, missing, used = [], [], set()
    for i, sid in enumerate(set_ids):
        names = [sid] + (list(aliases(i)) if aliases else [])
        hit = next((n for n in names if n in table), None)
        if hit is None:
            if not any(n in everything for n in names):
                missing.append(names[-1])  # FCS: the file's path in the folder
            out.append(None)
            continue
        used.add(hit)
        out.append(table[hit])
    if missing:
        raise DataError(f"{path}: no label for {len(missing)} set(s): {missing[:5]}; add a row (set,label) for each")
    known = set(all_names) if all_names is not None else \
        set(set_ids) | ({n for i in range(len(set_ids)) for n in aliases(i)} if aliases else set())
    unknown = sorted(set(everything) - known)
    if unknown:
        raise DataError(f"{path}: lists set(s) that are not in the data: {unknown[:5]}")
    return out


def select_features(names: Sequence[str], wanted: Sequence | None, path, alt_names: Sequence[str] = (),
                    expect_dim: int | None = None, channel_map=None, what: str = "channel") -> list[int]:
    """Column indices of ``wanted`` among ``names`` (then ``alt_names``, e.g. FCS ``$PnS``); all if ``None``.

    ``channel_map`` (``{name in the file: name to use}``) renames first. A name that appears twice is only
    accepted where the other list names it uniquely; integers select by 0-based position.
    """
    cmap = parse_channel_map(channel_map)
    names = [cmap.get(n, n) for n in names]
    alt = [cmap.get(n, n) for n in alt_names]
    if wanted is None:
        if expect_dim is not None and len(names) != expect_dim:
            raise DataError(f"{path}: has {len(names)} {what}s {list(names)} but the task needs {expect_dim}; "
                            f"choose them with channels=[...] (--channels on the command line)")
        return list(range(len(names)))
    idx = []
    for c in wanted:
        if isinstance(c, (int, np.integer)) or (isinstance(c, str) and c.isdigit() and c not in names):
            j = int(c)
            if not 0 <= j < len(names):
                raise DataError(f"{path}: {what} index {j} out of range ({len(names)} {what}s)")
            idx.append(j)
            continue
        hits = [j for j, n in enumerate(names) if n == c]
        alt_hits = [j for j, n in enumerate(alt) if n == c]
        if len(hits) == 1:
            idx.append(hits[0])
        elif len(alt_hits) == 1 and len(hits) != 1:
            idx.append(alt_hits[0])
        elif hits or alt_hits:
            raise DataError(f"{path}: {what} name {c!r} is ambiguous: it names {what}s {hits or alt_hits} "
                            f"(0-based); select by the other name ($PnS/$PnN) or rename one with --channel-map")
        else:
            avail = list(names) + [s for s in alt if s and s not in names]
            raise DataError(f"{path}: {what} {c!r} not found (expected {what}s {list(wanted)}); available "
                            f"{what}s: {avail}; rename a file's {what} with channel_map / "
                            f"--channel-map FILE_CHANNEL={c}")
    return idx


#: channels that are not measurements of the cells, left out of FCS and .h5ad features unless named with
#: ``features``/``channels``: names equal, ignoring case, spaces, ``_``, ``-`` and ``.``, to one of these (the
#: acquisition time, the event length and event counters of flow and mass cytometers)
NON_MEASUREMENT_NAMES = ("time", "eventlength", "celllength", "event", "event#", "eventcount", "eventnumber",
                         "eventno")
#: ... or holding a word ``bead``/``beads``/``barcode`` (optionally numbered: ``Bead1``, ``140Ce_Beads``,
#: ``Barcode_3``): calibration beads and sample barcodes. Short barcode names (``BC1``) are kept: too ambiguous.
NON_MEASUREMENT_WORDS = r"(beads?|barcodes?)\d*"


def is_non_measurement(name) -> bool:
    """Whether a channel named ``name`` is time, event length/count, beads or a barcode (see
    :data:`NON_MEASUREMENT_NAMES`, :data:`NON_MEASUREMENT_WORDS`)."""
    import re

    text = str(name or "").strip().lower()
    if not text:
        return False
    if re.sub(r"[\s_\-.]+", "", text) in NON_MEASUREMENT_NAMES:
        return True
    return any(re.fullmatch(NON_MEASUREMENT_WORDS, w) for w in re.split(r"[^a-z0-9#]+", text) if w)


def measurement_channels(names: Sequence[str], path, alt_names: Sequence[str] = (), expect_dim: int | None = None,
                         channel_map=None, what: str = "channel") -> tuple[list[int], list[str]]:
    """The default features of an FCS file or ``.h5ad``: ``(indices, left out names)``: every channel except
    the ones that are not measurements (:func:`is_non_measurement` of its name, after ``channel_map``, or of
    its ``alt_names`` entry, e.g. FCS ``$PnS``). If nothing else is left, every channel is kept. ``expect_dim``
    checks the number kept."""
    cmap = parse_channel_map(channel_map)
    mapped = [cmap.get(n, n) for n in names]
    alt = list(alt_names) + [""] * (len(names) - len(alt_names))
    drop = [is_non_measurement(n) or is_non_measurement(a) for n, a in zip(mapped, alt)]
    if all(drop):
        drop = [False] * len(names)
    idx = [j for j, d in enumerate(drop) if not d]
    left_out = [str(names[j]) for j, d in enumerate(drop) if d]
    if expect_dim is not None and len(idx) != expect_dim:
        more = f" (left out as not measurements: {left_out})" if left_out else ""
        raise DataError(f"{path}: has {len(idx)} {what}s {[mapped[j] for j in idx]}{more} but the task needs "
                        f"{expect_dim}; choose them with channels=[...] (--channels on the command line)")
    return idx, left_out


def left_out_note(ds) -> str | None:
    """One line naming the channels a dataset (or ``Subset``) left out by default, or ``None``."""
    for _ in range(8):  # a (nested) torch Subset: its dataset
        if hasattr(ds, "left_out") or not hasattr(ds, "dataset"):
            break
        ds = ds.dataset
    names = list(getattr(ds, "left_out", None) or [])
    if not names:
        return None
    s = "s" if len(names) != 1 else ""
    return (f"left out {len(names)} channel{s} that {'are' if s else 'is'} not a measurement: {', '.join(names)} "
            f"(name the channels to use with --channels)")


# ---------------------------------------------------------------------------------------------- dataset
class SourceDataset(SetDataset):
    """A :class:`SetReader` with its labels encoded for a target kind: what train/eval/predict use.

    Args:
        reader: the sets.
        target: ``"regression"``, ``"classification"`` or ``None`` (inferred from the labels: classification
            for string or boolean labels and labels with two distinct values, regression otherwise).
        classes: the classes, in output order (classification); ``None`` = the sorted unique labels. A model
            trained on some classes evaluates other data with the same list.
        task: the task name recorded on the dataset.
        require_labels: raise unless every set has a label (``False`` for prediction).
    """

    @staticmethod
    def _which(reader) -> str:
        split = getattr(reader, "split", None)
        return f" in split {split!r}" if isinstance(split, str) else ""

    def __init__(self, reader: SetReader, target: str | None = None, classes: Sequence | None = None,
                 task: str = "", require_labels: bool = False, **kw):
        super().__init__(**kw)
        self.reader, self.task, self.source = reader, task, reader.source
        if len(reader) == 0:
            raise DataError(f"{reader.source}: holds no sets (0 elements{self._which(reader)}); nothing to read")
        self.feature_names = list(reader.feature_names)
        self.left_out = list(getattr(reader, "left_out", None) or [])  # channels that are not measurements
        self.has_test_split = reader.has_test_split
        self.in_dim = len(self.feature_names)
        labels = reader.labels
        self.has_labels = labels is not None
        if labels is None:
            if require_labels:
                raise DataError(f"{reader.source}: no labels found (give label_column=... / --label-column, or a "
                                f"labels file with columns set,label: labels=... / --labels FILE)")
            labels = [None] * len(reader)
        if target is None:
            target = infer_target([v for v in labels if v is not None]) if self.has_labels else "regression"
        self.target = get_target(target)
        self.target_kind = self.target.kind
        label_of = reader.describe
        what = reader.labels_source or reader.source
        if self.target.name == "classification":
            self.classes = list(classes) if classes is not None else Classification.classes_of(labels)
            if classes is None and self.has_labels and len(self.classes) < 2:
                raise DataError(f"{what}: every set has the label {self.classes[0] if self.classes else None!r}; "
                                f"classification needs at least two classes")
            self.num_classes = self.out_dim = len(self.classes)
            self.targets = (self.target.encode(labels, what, label_of, self.classes) if self.has_labels
                            else np.full(len(reader), -1, dtype=np.int64))
        elif self.target.name == "regression":
            self.classes = None
            self.targets = (self.target.encode(labels, what, label_of) if self.has_labels
                            else np.full((len(reader), 1), np.nan, dtype=np.float32))
            self.out_dim = int(self.targets.shape[1]) if len(self.targets) else 1
        else:
            raise ValueError(f"target {self.target.name!r} cannot be read from a {type(reader).__name__} "
                             f"source (its labels are one per set)")

    def __len__(self):
        return len(self.reader)

    def set_name(self, index):
        return str(self.reader.set_ids[index])

    def _raw_set(self, index):
        return self.reader.read(index)

    def scan_finite(self, indices):
        return self.reader.scan_finite(indices)

    def _target(self, index):
        return self.targets[index]
