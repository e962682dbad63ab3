"""Flow-RBC simulator and HDF5 reader."""
import h5py
import numpy as np
import pytest
import torch

from deepsets.data import DataError, load_task, simulate_flow_rbc


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_flow_rbc(tmp_path_factory.mktemp("sim") / "sim.h5", n_train=800, n_test=300, cells=400, seed=3)


def _stats(ds):
    feats, ys = [], []
    for i in range(len(ds)):
        x, y = ds[i]
        x = x.numpy().astype(np.float64)
        f = []
        for c in range(2):
            v = x[:, c]
            f += [v.mean(), v.std(), *np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])]
        f.append((x[:, 1] / x[:, 0]).mean())
        feats.append(f)
        ys.append(y.numpy().reshape(-1)[0])
    return np.array(feats), np.array(ys, dtype=np.float64)


def test_simulator_layout_and_units(sim):
    with h5py.File(sim) as f:
        assert f["train_data"].shape == (800, 400, 2) and f["train_data"].dtype == np.float32
        assert f["train_labels"].shape == (800, 1)
        assert f["test_data"].shape == (300, 400, 2) and f["test_labels"].shape == (300, 1)
        assert f["train_anemia"].shape == (800,)
        vol = f["train_data"][:50, :, 0]
        hgb = f["train_data"][:50, :, 1]
        hct = f["train_labels"][()]
        anemia = f["train_anemia"][()]
        rbc, mcv = f["train_rbc_count"][()], f["train_mcv"][()]
    assert 50 < np.median(vol) < 120 and 15 < np.median(hgb) < 40  # fL and pg
    assert 15 < hct.mean() < 50 and hct.min() > 5 and hct.max() < 70
    assert 0.15 < anemia.mean() < 0.7
    # hematocrit = RBC count x MCV / 10 plus small analyzer noise
    assert np.abs(hct[:, 0] - rbc * mcv / 10).std() < 1.5


def test_simulator_deterministic(tmp_path):
    a = simulate_flow_rbc(tmp_path / "a.h5", n_train=5, n_test=2, cells=30, seed=1)
    b = simulate_flow_rbc(tmp_path / "b.h5", n_train=5, n_test=2, cells=30, seed=1)
    c = simulate_flow_rbc(tmp_path / "c.h5", n_train=5, n_test=2, cells=30, seed=2)
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        assert np.array_equal(fa["train_data"][()], fb["train_data"][()])
        assert np.array_equal(fa["test_labels"][()], fb["test_labels"][()])
        assert not np.array_equal(fa["train_data"][()], fc["train_data"][()])


def test_hematocrit_learnable_but_irreducible(sim):
    tr = load_task("hematocrit", "train", data=sim)
    te = load_task("hematocrit", "test", data=sim)
    xtr, ytr = _stats(tr)
    xte, yte = _stats(te)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-9
    A = np.column_stack([np.ones(len(xtr)), (xtr - mu) / sd])
    w, *_ = np.linalg.lstsq(A, ytr, rcond=None)
    pred = np.column_stack([np.ones(len(xte)), (xte - mu) / sd]) @ w
    mse = np.mean((pred - yte) ** 2)
    baseline = np.mean((ytr.mean() - yte) ** 2)
    assert mse < 0.75 * baseline  # the cells carry information about hematocrit
    assert mse > 3.0  # but the RBC count is not in the set: irreducible error


def test_hematocrit_and_anemia_items(sim):
    ds = load_task("hematocrit", "train", data=sim)
    x, y = ds[0]
    assert x.shape == (400, 2) and x.dtype == torch.float32 and y.shape == (1,) and y.dtype == torch.float32
    sub = load_task("hematocrit", "train", data=sim, set_size=100)
    assert sub[0][0].shape == (100, 2)
    an = load_task("anemia", "test", data=sim)
    x, y = an[0]
    assert y.dtype == torch.int64 and y.ndim == 0 and y.item() in (0, 1)
    assert an.num_classes == 2 and an.out_dim == 2


def test_offline_default_simulation_cached():
    ds = load_task("hematocrit", "train", n_train=6, n_test=2, cells=50)
    assert len(ds) == 6 and ds[0][0].shape == (50, 2)
    again = load_task("hematocrit", "train", n_train=6, n_test=2, cells=50)
    assert torch.equal(again[3][0], ds[3][0])
    assert len(load_task("anemia", "test", n_train=6, n_test=2, cells=50)) == 2


def _write(path, **arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return path


def test_public_layout_and_nan_padding(tmp_path):
    data = np.random.default_rng(0).uniform(50, 100, size=(3, 20, 2)).astype(np.float32)
    data[1, 15:] = np.nan
    p = _write(tmp_path / "rbc.h5", train_data=data, train_labels=np.array([[40.0], [35.0], [45.0]]),
               test_data=data[:1], test_labels=np.array([[41.0]]))
    ds = load_task("hematocrit", "train", data=p)
    assert len(ds) == 3 and ds[1][0].shape == (15, 2)
    assert ds[2][1].item() == pytest.approx(45.0)
    with pytest.raises(DataError, match="anemia"):
        load_task("anemia", "train", data=p)


def test_errors_name_file(tmp_path):
    good = np.zeros((4, 10, 2), np.float32)
    p = _write(tmp_path / "missing.h5", train_data=good)
    with pytest.raises(DataError, match="missing.h5.*train_labels"):
        load_task("hematocrit", "train", data=p)
    p = _write(tmp_path / "mismatch.h5", train_data=good, train_labels=np.zeros((3, 1)))
    with pytest.raises(DataError, match=r"mismatch.h5.*4 sets.*3 labels"):
        load_task("hematocrit", "train", data=p)
    p = _write(tmp_path / "shape.h5", train_data=np.zeros((4, 10)), train_labels=np.zeros((4, 1)))
    with pytest.raises(DataError, match=r"shape.h5.*\(4, 10\)"):
        load_task("hematocrit", "train", data=p)
    p = tmp_path / "garbage.h5"
    p.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(DataError, match="garbage.h5"):
        load_task("hematocrit", "train", data=p)


def test_truncated_file(tmp_path, sim):
    raw = sim.read_bytes()
    p = tmp_path / "trunc.h5"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="trunc.h5"):
        ds = load_task("hematocrit", "train", data=p)
        for i in range(len(ds)):
            ds[i]
