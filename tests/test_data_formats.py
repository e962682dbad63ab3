"""Real-format readers and builders on tiny files written in each layout."""
import csv
import gzip
import struct

import h5py
import numpy as np
import pytest
import torch

from deepsets.data import DataError, load_task


def _write(path, **arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return path


# ---------------------------------------------------------------------------------------------------- ModelNet40
def _ply_folder(tmp_path, points=64):
    rng = np.random.default_rng(0)
    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    folder.mkdir()
    sizes = {"train0": 5, "train1": 3, "test0": 4}
    for name, n in sizes.items():
        _write(folder / f"ply_data_{name}.h5", data=rng.normal(size=(n, points, 3)).astype(np.float32) * 3 + 2,
               label=rng.integers(0, 40, size=(n, 1)).astype(np.uint8))
    return folder


def test_modelnet_folder_list_and_combined(tmp_path):
    folder = _ply_folder(tmp_path)
    tr = load_task("point-cloud", "train", data=folder, set_size=50)
    te = load_task("point-cloud", "test", data=folder, set_size=50)
    assert len(tr) == 8 and len(te) == 4 and tr.num_classes == 40 == tr.out_dim
    x, y = tr[6]  # second file
    assert x.shape == (50, 3) and y.dtype == torch.int64 and y.ndim == 0
    assert abs(x.mean().item()) < 1e-5 and x.std(unbiased=False).item() == pytest.approx(1, abs=1e-4)
    with h5py.File(folder / "ply_data_train1.h5") as f:
        assert y.item() == int(f["label"][1, 0])
    files = sorted(folder.glob("*.h5"))
    assert len(load_task("point-cloud", "train", data=files)) == 8

    from deepsets.data.pointcloud import build_modelnet_combined

    comb = build_modelnet_combined(folder, tmp_path / "ModelNet40_cloud.h5")
    with h5py.File(comb) as f:
        assert f["tr_cloud"].shape == (8, 64, 3) and f["test_cloud"].shape == (4, 64, 3)
        assert f["tr_labels"].shape == (8,)
    c = load_task("point-cloud", "train", data=comb, set_size=0)
    r = load_task("point-cloud", "train", data=folder, set_size=0)
    for i in range(8):
        assert torch.equal(c[i][0], r[i][0]) and c[i][1] == r[i][1]


def test_modelnet_errors(tmp_path):
    p = _write(tmp_path / "bad.h5", data=np.zeros((3, 10, 2), np.float32), label=np.zeros((3, 1), np.uint8))
    with pytest.raises(DataError, match=r"bad.h5.*\[n, points, 3\]"):
        load_task("point-cloud", "train", data=p)
    p = _write(tmp_path / "len.h5", tr_cloud=np.zeros((3, 10, 3), np.float32), tr_labels=np.zeros(2, np.int64))
    with pytest.raises(DataError, match=r"len.h5.*3 clouds.*2 labels"):
        load_task("point-cloud", "train", data=p)
    p = _write(tmp_path / "keys.h5", foo=np.zeros(3))
    with pytest.raises(DataError, match="keys.h5.*tr_cloud"):
        load_task("point-cloud", "train", data=p)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="ply_data_train"):
        load_task("point-cloud", "train", data=tmp_path / "empty")


# ---------------------------------------------------------------------------------------------------- MNIST
def _idx_bytes(arr):
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def _mnist_folder(tmp_path, gz=True):
    rng = np.random.default_rng(1)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for split, n in (("train", 40), ("t10k", 20)):
        imgs = rng.integers(0, 256, size=(n, 28, 28))
        labs = np.arange(n) % 10
        for stem, arr in ((f"{split}-images-idx3-ubyte", imgs), (f"{split}-labels-idx1-ubyte", labs)):
            data = _idx_bytes(arr)
            if gz:
                (folder / (stem + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / stem).write_bytes(data)
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_folder(tmp_path, gz):
    folder = _mnist_folder(tmp_path, gz)
    ds = load_task("mnist-var", "train", data=folder, n_train=7)
    assert len(ds) == 7
    x, y = ds[0]
    assert x.shape == (10, 784) and x.max() <= 1
    assert y.item() == pytest.approx(np.var(ds.digits(0)))
    assert len(load_task("mnist-var", "test", data=folder, n_test=3)) == 3


def test_mnist_idx_truncated_and_bad(tmp_path):
    from deepsets.data.mnist import read_idx

    folder = _mnist_folder(tmp_path, gz=False)
    p = folder / "train-images-idx3-ubyte"
    raw = p.read_bytes()
    p.write_bytes(raw[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        load_task("mnist-var", "train", data=folder)
    p.write_bytes(b"\x01\x02\x03\x04" + raw[4:])
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(p)
    g = tmp_path / "x.gz"
    g.write_bytes(gzip.compress(raw)[:50])
    with pytest.raises(DataError, match="x.gz"):
        read_idx(g)


def test_mnist_idx_label_mismatch(tmp_path):
    folder = _mnist_folder(tmp_path, gz=False)
    (folder / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(39)))
    with pytest.raises(DataError, match=r"40 images.*39 labels"):
        load_task("mnist-var", "train", data=folder)


def test_mnist_var_h5_builder_and_reader(tmp_path):
    from deepsets.data.mnist import build_mnist_var_h5, load_mnist_idx

    folder = _mnist_folder(tmp_path)
    tr, te = load_mnist_idx(folder, "train"), load_mnist_idx(folder, "test")
    out = build_mnist_var_h5(tmp_path / "MNIST_var_10.h5", *tr, *te, n_train=6, n_test=2)
    with h5py.File(out) as f:
        assert f["train_data"].shape == (6, 10, 784) and f["train_labels"].shape == (6, 1)
        digits = f["train_digits"][()]
    ds = load_task("mnist-var", "train", data=out)
    assert len(ds) == 6
    for i in range(6):
        x, y = ds[i]
        assert x.shape == (10, 784) and 0 <= x.min() and x.max() <= 1
        assert y.item() == pytest.approx(np.var(digits[i]), rel=1e-6)
    # the paper's layout with [n, 10, 28, 28] float images and [n] labels
    p = _write(tmp_path / "paper.h5", train_data=np.ones((2, 10, 28, 28), np.float32), train_labels=np.array([1.0, 2.0]))
    x, y = load_task("mnist-var", "train", data=p)[1]
    assert x.shape == (10, 784) and y.tolist() == [2.0]
    with pytest.raises(DataError, match="paper.h5.*test_data"):
        load_task("mnist-var", "test", data=p)


# ---------------------------------------------------------------------------------------------------- FCS
def _fcs(path, events, names):
    flowio = pytest.importorskip("flowio")
    with open(path, "wb") as fh:
        flowio.create_fcs(fh, np.asarray(events, dtype=np.float32).ravel().tolist(), names)


def _fcs_folder(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "fcs"
    folder.mkdir()
    rows = []
    for i in range(4):
        n = 30 + 5 * i
        ev = np.column_stack([rng.uniform(0, 1000, n), rng.uniform(60, 110, n), rng.uniform(20, 35, n)])
        _fcs(folder / f"patient{i}.fcs", ev, ["FSC-A", "RBC_Volume", "RBC_HC"])
        rows.append({"file": f"patient{i}.fcs", "label": str(30 + i), "split": "train" if i < 3 else "test"})
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return folder


def test_fcs_folder(tmp_path):
    folder = _fcs_folder(tmp_path)
    ds = load_task("hematocrit", "train", data=folder, channels=["RBC_Volume", "RBC_HC"], set_size=32)
    assert len(ds) == 3 and ds.in_dim == 2
    x, y = ds[1]
    assert x.shape == (32, 2) and 60 <= x[:, 0].min() and x[:, 0].max() <= 110
    assert y.tolist() == [31.0]
    assert ds[0][0].shape == (30, 2)
    te = load_task("hematocrit", "test", data=folder, channels=["RBC_Volume", "RBC_HC"], set_size=0)
    assert len(te) == 1 and te[0][0].shape == (45, 2)
    # hematocrit values are not classes: loading them as anemia labels is refused, naming the file
    with pytest.raises(DataError, match="expected a class in 0..1"):
        load_task("anemia", "train", data=folder, channels=["RBC_Volume", "RBC_HC"])[0]
    with open(folder / "anemia.csv", "w", newline="") as fh:
        fh.write("file,label,split\n" + "".join(f"patient{i}.fcs,{i % 2},train\n" for i in range(4)))
    an = load_task("anemia", "train", data=folder, channels=["RBC_Volume", "RBC_HC"], labels=folder / "anemia.csv")
    assert an[0][1].dtype == torch.int64 and [an[i][1].item() for i in range(len(an))] == [0, 1, 0, 1]


def test_fcs_channel_errors(tmp_path):
    folder = _fcs_folder(tmp_path)
    with pytest.raises(DataError) as e:
        load_task("hematocrit", "train", data=folder, channels=["volume", "RBC_HC"])
    assert "volume" in str(e.value) and "RBC_Volume" in str(e.value) and "patient0.fcs" in str(e.value)
    with pytest.raises(DataError, match="channels="):
        load_task("hematocrit", "train", data=folder)  # 3 channels, task needs 2
    bad = folder / "patient1.fcs"
    bad.write_bytes(bad.read_bytes()[:100])
    ds = load_task("hematocrit", "train", data=folder, channels=["RBC_Volume", "RBC_HC"])
    with pytest.raises(DataError, match="patient1.fcs"):
        ds[1]


def test_fcs_single_file_without_labels(tmp_path):
    folder = _fcs_folder(tmp_path)
    (folder / "labels.csv").unlink()
    ds = load_task("hematocrit", "train", data=folder / "patient2.fcs", channels=["RBC_Volume", "RBC_HC"])
    x, y = ds[0]
    assert x.shape == (40, 2) and torch.isnan(y).all() and not ds.has_labels


# ---------------------------------------------------------------------------------------------------- h5ad
def _h5ad(path, X, var_names, obs: dict, categorical=(), sparse=False):
    str_dt = h5py.string_dtype()
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        if sparse:
            g = f.create_group("X")
            g.attrs["encoding-type"] = "csr_matrix"
            g.attrs["encoding-version"] = "0.1.0"
            g.attrs["shape"] = np.array(X.shape)
            data, indices, indptr = [], [], [0]
            for row in X:
                nz = np.flatnonzero(row)
                data += row[nz].tolist()
                indices += nz.tolist()
                indptr.append(len(data))
            g["data"], g["indices"], g["indptr"] = np.array(data, np.float32), np.array(indices), np.array(indptr)
        else:
            f["X"] = X
        var = f.create_group("var")
        var.attrs["_index"] = "_index"
        var.attrs["column-order"] = np.array([], dtype=str_dt)
        var.create_dataset("_index", data=np.array(var_names, dtype=object), dtype=str_dt)
        o = f.create_group("obs")
        o.attrs["_index"] = "_index"
        o.attrs["column-order"] = np.array(list(obs), dtype=object).astype(str_dt)
        n = X.shape[0]
        o.create_dataset("_index", data=np.array([f"cell{i}" for i in range(n)], dtype=object), dtype=str_dt)
        for name, vals in obs.items():
            vals = np.asarray(vals)
            if name in categorical:
                cats, codes = np.unique(vals.astype(str), return_inverse=True)
                g = o.create_group(name)
                g.attrs["encoding-type"] = "categorical"
                g.attrs["ordered"] = False
                g.create_dataset("categories", data=cats.astype(object), dtype=str_dt)
                g.create_dataset("codes", data=codes.astype(np.int8))
            elif vals.dtype.kind in "US":
                o.create_dataset(name, data=vals.astype(object), dtype=str_dt)
            else:
                o.create_dataset(name, data=vals)
    return path


@pytest.mark.parametrize("sparse", [False, True])
def test_h5ad(tmp_path, sparse):
    rng = np.random.default_rng(3)
    n = 60
    X = np.column_stack([rng.uniform(60, 110, n), rng.uniform(20, 35, n), np.zeros(n)]).astype(np.float32)
    X[::7, 2] = 5.0
    patient = np.array([f"p{i % 4}" for i in range(n)])  # interleaved rows
    label = np.array([30.0 + (i % 4) for i in range(n)])
    split = np.where(np.isin(patient, ["p3"]), "test", "train")
    p = _h5ad(tmp_path / "cells.h5ad", X, ["volume", "hemoglobin", "other"],
              {"patient": patient, "hct": label, "split": split}, categorical=("patient", "split"), sparse=sparse)
    ds = load_task("hematocrit", "train", data=p, set_column="patient", label_column="hct",
                   channels=["volume", "hemoglobin"], set_size=0)
    assert len(ds) == 3 and ds.in_dim == 2
    for i in range(3):
        x, y = ds[i]
        rows = np.flatnonzero(patient == ds.set_name(i))
        assert np.allclose(x.numpy(), X[rows][:, :2]) and y.item() == label[rows[0]]
    assert len(load_task("hematocrit", "test", data=p, set_column="patient", label_column="hct",
                         channels=["volume", "hemoglobin"])) == 1
    with pytest.raises(DataError, match=r"cells.h5ad.*'volum'.*volume"):
        load_task("hematocrit", "train", data=p, set_column="patient", channels=["volum", "hemoglobin"])
    with pytest.raises(DataError, match="set_column"):
        load_task("hematocrit", "train", data=p, channels=["volume", "hemoglobin"])
    with pytest.raises(DataError, match=r"'nope'.*patient"):
        load_task("hematocrit", "train", data=p, set_column="nope", channels=["volume", "hemoglobin"])


def test_h5ad_label_not_constant(tmp_path):
    X = np.ones((6, 2), np.float32)
    p = _h5ad(tmp_path / "c.h5ad", X, ["a", "b"], {"s": np.array(["x"] * 6), "label": np.arange(6.0)})
    with pytest.raises(DataError, match="not constant"):
        load_task("hematocrit", "train", data=p, set_column="s")
    p = _h5ad(tmp_path / "m.h5ad", X, ["a", "b", "c"], {"s": np.array(["x"] * 6)})
    with pytest.raises(DataError, match=r"m.h5ad.*2 columns.*var has 3"):
        load_task("hematocrit", "train", data=p, set_column="s")


# ---------------------------------------------------------------------------------------------------- CelebA
def test_celeba_builder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    src = tmp_path / "celeba"
    (src / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(4)
    names = ["Smiling", "Eyeglasses", "Bald"]
    lines, ident = [], []
    n = 60
    for i in range(n):
        fn = f"{i:06d}.jpg"
        Image.fromarray(rng.integers(0, 255, size=(22, 18, 3), dtype=np.uint8)).save(src / "img_align_celeba" / fn)
        a = rng.random(3) < 0.5
        if i % 5 == 0:
            a[:] = False
        if i % 3 == 0:
            a[:2] = True
        lines.append(fn + " " + " ".join("1" if v else "-1" for v in a))
        ident.append(f"{fn} {i // 3}")
    (src / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(names)}\n" + "\n".join(lines) + "\n")
    (src / "identity_CelebA.txt").write_text("\n".join(ident) + "\n")

    from deepsets.data.anomaly import build_celeba_anomaly_h5, read_celeba_attributes

    out = build_celeba_anomaly_h5(src, tmp_path / "anom.h5", n_train=4, n_test=2, image_size=16, elements=4)
    with h5py.File(out) as f:
        assert f["train_data"].shape == (4, 4, 3, 16, 16)
        pairs = f["train_attributes"][()]
    ds = load_task("set-anomaly", "train", data=out)
    assert ds.in_dim == 3 * 16 * 16 and ds.image_shape == (3, 16, 16)
    x, y = ds[0]
    assert x.shape == (4, 768) and y.dtype == torch.int64 and 0 <= y.item() < 4
    assert pairs.shape == (4, 2)
    # truncated attribute file
    (src / "list_attr_celeba.txt").write_text(f"{n + 5}\n{' '.join(names)}\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError, match="list_attr_celeba.txt.*truncated"):
        read_celeba_attributes(src / "list_attr_celeba.txt")
    with pytest.raises(DataError, match="build set-anomaly"):
        load_task("set-anomaly", "train", data=src)


def test_paper_layouts_celeba_and_variable_mnist(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "paper"
    folder.mkdir()
    for split, n in (("train", 3), ("test", 2)):
        onehot = np.zeros((n, 10, 1))
        odd = rng.integers(0, 10, n)
        onehot[np.arange(n), odd] = 1
        _write(folder / f"CelebA_{split}_10.h5", **{f"{split}_data": rng.integers(0, 255, (n, 10, 8, 8, 3)).astype(np.uint8),
                                                  f"{split}_labels": onehot})
        ds = load_task("set-anomaly", split, data=folder)
        assert len(ds) == n and ds.image_shape == (3, 8, 8)
        with h5py.File(folder / f"CelebA_{split}_10.h5") as f:
            img = f[f"{split}_data"][1]
        x, y = ds[1]
        assert y.item() == odd[1]
        assert np.allclose(x.numpy().reshape(10, 3, 8, 8), img.transpose(0, 3, 1, 2) / 255.0)
    bad = np.zeros((2, 10, 1))
    bad[0, :2] = 1
    p = _write(tmp_path / "two_odd.h5", train_data=np.zeros((2, 10, 4)), train_labels=bad)
    with pytest.raises(DataError, match="two_odd.h5.*exactly one"):
        load_task("set-anomaly", "train", data=p)[0]

    data = rng.integers(0, 256, (2, 10, 784)).astype(np.int32)
    data[0, 7:] = 0
    p = _write(tmp_path / "MNIST_var_6_10.h5", train_data=data, train_labels=np.array([[1.0], [2.0]]),
               train_lengths=np.array([[7], [10]]))
    ds = load_task("mnist-var", "train", data=p)
    assert ds[0][0].shape == (7, 784) and ds[1][0].shape == (10, 784)
    assert ds[1][0].max() <= 1 and np.allclose(ds[1][0].numpy() * 255, data[1])
