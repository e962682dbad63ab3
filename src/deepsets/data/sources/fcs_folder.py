"""A folder of FCS files (``.fcs``, and Beckman Coulter ``.lmd``), one file = one set (its stem is the set id); or
one such file.

Needs the optional dependency ``flowio`` (``pip install 'deepsets[cytometry]'``); decoding, and the vendor quirks
it handles, are in :mod:`deepsets.data.fcs`. Channels are chosen by name with ``features``/``channels`` (matched
against ``$PnN``, then ``$PnS``; a duplicated name must be unique in the other list); without them every channel
is used except those that are not measurements (time, event length and count, beads, barcodes: see
:func:`deepsets.data.sources.measurement_channels`; ``left_out`` names them): those of the first file (the first
whose TEXT reads, in any split), by ``$PnN`` name. Channels are always matched by name in every file, never by
position: a file whose channels come in another order is read in the first file's order, and a file whose
(measurement) channels are other ones is refused with one line naming it and the missing and extra names.
``channel_map={"FSC-A": "volume"}`` renames a file's channels before they are matched. Labels come from
``labels.csv`` in the folder, or ``labels=FILE``: columns ``set,label`` (``set`` = file stem, file name or path
relative to the folder; ``file,label`` also works) and optionally ``split``. Without a ``split`` column,
subfolders ``train/`` and ``test/`` are the splits if both exist, else every file is in every split. Files are
read when their set is accessed; a file that cannot be read gets one line naming it and the reason.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._base import DataError, check_exists
from . import SetReader, Source, labels_from_file, measurement_channels, read_labels_file, select_features


def _fcs():
    from .. import fcs

    return fcs


class FCSFolderReader(SetReader):
    sets_are_files = True  # prediction reports every unreadable file, not only the first

    def __init__(self, path, split=None, features=None, channel_map=None, labels=None, expect_dim=None):
        from . import parse_channel_map

        root = check_exists(path)
        self.source = str(root)
        if root.is_file():
            files, folder = [root], root.parent
        else:
            folder = root
            files = _fcs_files(root)
            if not files:
                raise DataError(f"{root}: no .fcs (or .lmd) files found")
        self.folder = folder
        all_names = {n for f in files for n in self._names(f)}
        all_files = files
        lab_path = Path(labels) if labels else folder / "labels.csv"
        has_split = False
        if lab_path.exists():
            has_split = "split" in next(iter(_columns(lab_path)), [])
        if split is not None and not has_split and root.is_dir() and (folder / "train").is_dir() \
                and (folder / "test").is_dir():
            files = [f for f in files if self._rel(f).startswith(f"{split}/")]
        if has_split and split is not None:  # keep the files of this split (rows of the other split drop out)
            table = read_labels_file(lab_path, split)
            everything = read_labels_file(lab_path)
            files = [f for f in files if any(n in table for n in self._names(f)) or
                     not any(n in everything for n in self._names(f))]
        self.files = files
        self.has_test_split = split == "train" and (has_split or any(self._rel(f).startswith("test/")
                                                                     for f in all_files))
        self.set_ids = [f.stem for f in files]
        self.labels_source = str(lab_path) if lab_path.exists() else None
        self._label_args = (lab_path, split, all_names)
        self.channel_map = parse_channel_map(channel_map)
        self.left_out: list[str] = []
        self._keys: list = []
        self._ref = files[0] if files else None
        head = None
        if files:  # the reference: the first file of every split, so that the splits share the channel order
            head, self._ref = _first_readable(all_files)  # a damaged file is reported when its set is read
            pnn, pns = head.pnn, head.pns
            if features is None:  # every channel that is a measurement (not time, event length, beads, ...)
                self._idx, self.left_out = measurement_channels(pnn, self._ref, alt_names=pns, expect_dim=expect_dim,
                                                                channel_map=self.channel_map)
                keys = _channel_keys([self.channel_map.get(n, n) for n in pnn])
                self._keys = [keys[i] for i in self._idx]  # what every other file is matched against, by name
            else:
                self._idx = select_features(pnn, features, self._ref, alt_names=pns, expect_dim=expect_dim,
                                            channel_map=self.channel_map)
            if features is not None:
                self.feature_names = [str(c) for c in features]
            else:
                self.feature_names = [self.channel_map.get(pnn[i], pnn[i]) for i in self._idx]
        else:
            self.feature_names = [str(c) for c in features or []]
        self._wanted = list(features) if features is not None else None
        self.mass_cytometry = head is not None and _fcs().mass_cytometry(head)

    def _rel(self, f: Path) -> str:
        return f.relative_to(self.folder).as_posix() if f.is_relative_to(self.folder) else f.name

    def _names(self, f: Path) -> list[str]:
        return list(dict.fromkeys([f.stem, f.name, self._rel(f)]))

    def _read_labels(self):
        lab_path, split, all_names = self._label_args
        if not lab_path.exists():
            return None
        return labels_from_file(lab_path, self.set_ids, split, aliases=lambda i: self._names(self.files[i])[1:],
                                all_names=all_names)

    def describe(self, index):
        return self._rel(self.files[index])

    def __len__(self):
        return len(self.files)

    def read(self, index):
        fcs = _fcs()
        f = self.files[index]
        data = fcs.read_fcs_file(f)
        if self._wanted is None:  # the first file's channels, by name (never by position)
            idx = measurement_channels(data.pnn, f, alt_names=data.pns, channel_map=self.channel_map)[0]
            keys = _channel_keys([self.channel_map.get(n, n) for n in data.pnn])
            at = {keys[j]: j for j in idx}
            if set(at) != set(self._keys):
                missing = [_show(k) for k in self._keys if k not in at]
                extra = [_show(keys[j]) for j in idx if keys[j] not in set(self._keys)]
                raise DataError(f"{f}: its channels differ from those of {self._rel(self._ref)} (channels are "
                                f"matched by name): missing {missing}, extra {extra}; name the channels to use with "
                                f"--channels, or rename with --channel-map FILE_CHANNEL=NAME")
            idx = [at[k] for k in self._keys]
        else:
            idx = select_features(data.pnn, self._wanted, f, alt_names=data.pns, channel_map=self.channel_map)
        return np.asarray(data.events[:, idx], dtype=np.float32)


def _columns(path: Path):
    import csv

    try:
        with open(path, newline="") as fh:
            yield next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read labels CSV: {e}") from e


def _fcs_files(root: Path) -> list[Path]:
    """The FCS files under a folder (``.fcs``/``.lmd``, any case), sorted."""
    from ..fcs import is_fcs_path

    return sorted(p for p in root.rglob("*") if is_fcs_path(p) and p.is_file())


def _first_readable(files):
    """``(TEXT of the first file whose HEADER and TEXT read, that file)``; the first file's error if none does."""
    first = None
    for f in files:
        try:
            return _fcs().read_fcs_file(f, events=False), f
        except DataError as e:
            first = first or e
    raise first


def _channel_keys(names) -> list:
    """How channels are matched across files: by name; the k-th channel of a name that appears several times
    in a file is ``(name, k)``."""
    seen: dict = {}
    out = []
    for n in names:
        k = seen[n] = seen.get(n, -1) + 1
        out.append(n if k == 0 else (n, k))
    return out


def _show(key) -> str:
    return key if isinstance(key, str) else f"{key[0]} (#{key[1] + 1})"


def _matches(p: Path) -> bool:
    from ..fcs import is_fcs_path

    if p.is_dir():
        return any(is_fcs_path(q) for q in p.rglob("*"))
    return p.is_file() and is_fcs_path(p)


SOURCE = Source("fcs", "a folder of .fcs/.lmd files (one file = one set) or one .fcs/.lmd file", _matches,
                FCSFolderReader)
