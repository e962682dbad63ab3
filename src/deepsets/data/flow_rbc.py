"""Flow-RBC: red blood cell sets (volume fL, hemoglobin pg per cell) -> hematocrit, or anemic vs not.

Real data: the public Flow-RBC HDF5 file has ``train_data [N, cells, 2]`` (float; column 0 = cell volume in fL,
column 1 = cell hemoglobin content in pg, raw units), ``train_labels [N, 1]`` (hematocrit, %), ``test_data`` and
``test_labels``. Rows that are entirely NaN are treated as padding and dropped (variable-size sets).
For the anemia task the label is taken from ``{split}_anemia`` (0/1) when present, else from an integer-typed
``{split}_labels``, else from ``label_key=``. The public file has hematocrit labels only, so anemia needs a file
with binary labels (the simulator writes them).

Offline default: :func:`simulate_flow_rbc`, a physiology-based simulator that writes the same layout.

Simulator assumptions (per patient):

* sex ~ Bernoulli(0.5); phenotype drawn from :data:`PHENOTYPES` with the listed prevalences (healthy 50%,
  iron deficiency 15%, anemia of chronic disease 15%, thalassemia trait 10%, macrocytic 10%);
* red cell indices drawn from normal distributions clipped to the phenotype's clinical range:
  MCV (mean cell volume, fL), RDW (red cell distribution width = CV of cell volume, %), MCHC (mean cell
  hemoglobin concentration, g/dL), HDW (SD of cell hemoglobin concentration, g/dL) and the RBC count
  (10^12 cells/L; healthy men 4.7-6.1, women 4.2-5.4; low in iron deficiency, chronic disease and macrocytic
  anemia, high-normal to high in thalassemia trait);
* per cell: volume ~ log-normal with mean MCV and coefficient of variation RDW/100; cell hemoglobin
  concentration CHC ~ Normal(MCHC - 0.8 * z, HDW) clipped to [20, 42] g/dL, where z is the cell's standardized
  log-volume (small cells slightly denser); cell hemoglobin (pg) = volume (fL) x CHC (g/dL) / 100;
* hematocrit (%) = RBC count x MCV / 10 + Normal(0, 0.8) analyzer noise;
  hemoglobin (g/dL) = RBC count x MCH / 10 with MCH = MCV x MCHC / 100;
  anemic = hemoglobin < 13 g/dL (men) or < 12 g/dL (women) (WHO thresholds).

Irreducible error: the RBC count (cells per litre) is not in the set - a set is a sample of cells, not a count -
so hematocrit is only predictable through the correlation of the count with the cell phenotype. Even a perfect
model has a test MSE of roughly the variance of RBC count x MCV / 10 within a phenotype and sex
(about 10 %^2 with these settings), in the spirit of the paper's ~19 on the real data.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._base import (DataError, H5Source, SetDataset, _rng, check_class_labels, check_regression_labels, data_dir,
                    open_h5, require_keys)

__all__ = ["PHENOTYPES", "FlowRBCDataset", "default_simulation", "simulate_flow_rbc"]

#: name -> (prevalence, {index: (mean, sd, low, high)}); RBC count given for (male, female).
PHENOTYPES = {
    "healthy": (0.50, {"mcv": (90, 4.5, 80, 100), "rdw": (13.0, 0.7, 11.5, 14.5), "mchc": (34.0, 0.8, 32, 36),
                       "hdw": (2.6, 0.3, 2.0, 3.3), "rbc_m": (5.3, 0.35, 4.5, 6.2), "rbc_f": (4.7, 0.3, 4.1, 5.5)}),
    "iron_deficiency": (0.15, {"mcv": (74, 5, 60, 82), "rdw": (17.0, 1.5, 14.5, 22), "mchc": (31.0, 1.0, 28, 33),
                               "hdw": (3.3, 0.4, 2.5, 4.2), "rbc_m": (4.3, 0.4, 3.2, 5.3),
                               "rbc_f": (4.0, 0.4, 3.0, 5.0)}),
    "chronic_disease": (0.15, {"mcv": (85, 4, 76, 95), "rdw": (14.0, 0.8, 12, 16.5), "mchc": (32.5, 0.8, 31, 34.5),
                               "hdw": (2.7, 0.3, 2.1, 3.4), "rbc_m": (4.0, 0.35, 3.1, 4.8),
                               "rbc_f": (3.8, 0.35, 3.0, 4.6)}),
    "thalassemia_trait": (0.10, {"mcv": (66, 4, 55, 75), "rdw": (14.0, 0.8, 12, 16), "mchc": (32.5, 0.8, 30.5, 34.5),
                                 "hdw": (2.8, 0.3, 2.2, 3.5), "rbc_m": (5.9, 0.4, 5.0, 7.0),
                                 "rbc_f": (5.5, 0.4, 4.7, 6.6)}),
    "macrocytic": (0.10, {"mcv": (108, 6, 100, 125), "rdw": (16.0, 1.5, 13, 21), "mchc": (34.0, 0.8, 32, 36),
                          "hdw": (2.8, 0.3, 2.2, 3.5), "rbc_m": (3.4, 0.45, 2.3, 4.4),
                          "rbc_f": (3.2, 0.45, 2.2, 4.2)}),
}
PHENOTYPE_NAMES = list(PHENOTYPES)


def _draw(rng, spec, n=None):
    m, s, lo, hi = spec
    return np.clip(rng.normal(m, s, size=n), lo, hi)


def _simulate_split(n: int, cells: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    prev = np.array([PHENOTYPES[k][0] for k in PHENOTYPE_NAMES])
    pheno = rng.choice(len(PHENOTYPE_NAMES), size=n, p=prev / prev.sum())
    sex = rng.integers(0, 2, size=n)  # 0 = male, 1 = female
    data = np.empty((n, cells, 2), dtype=np.float32)
    out = {k: np.empty(n) for k in ("mcv", "rdw", "mchc", "hdw", "rbc")}
    for i in range(n):
        spec = PHENOTYPES[PHENOTYPE_NAMES[pheno[i]]][1]
        mcv, rdw, mchc, hdw = (_draw(rng, spec[k]) for k in ("mcv", "rdw", "mchc", "hdw"))
        rbc = _draw(rng, spec["rbc_f" if sex[i] else "rbc_m"])
        sigma = np.sqrt(np.log1p((rdw / 100.0) ** 2))
        z = rng.normal(size=cells)
        vol = np.exp(np.log(mcv) - sigma ** 2 / 2 + sigma * z)
        chc = np.clip(rng.normal(mchc - 0.8 * z, hdw), 20.0, 42.0)
        data[i, :, 0] = vol
        data[i, :, 1] = vol * chc / 100.0
        for k, v in zip(("mcv", "rdw", "mchc", "hdw", "rbc"), (mcv, rdw, mchc, hdw, rbc)):
            out[k][i] = v
    hct = out["rbc"] * out["mcv"] / 10.0 + rng.normal(0.0, 0.8, size=n)
    hgb = out["rbc"] * (out["mcv"] * out["mchc"] / 100.0) / 10.0
    anemic = np.where(sex == 1, hgb < 12.0, hgb < 13.0).astype(np.int64)
    return {"data": data, "labels": hct.astype(np.float32).reshape(n, 1), "anemia": anemic,
            "hemoglobin": hgb.astype(np.float32), "rbc_count": out["rbc"].astype(np.float32),
            "mcv": out["mcv"].astype(np.float32), "rdw": out["rdw"].astype(np.float32),
            "mchc": out["mchc"].astype(np.float32), "hdw": out["hdw"].astype(np.float32),
            "phenotype": pheno.astype(np.int64), "sex": sex.astype(np.int64)}


def simulate_flow_rbc(path, n_train: int = 4000, n_test: int = 1000, cells: int = 1000, seed: int = 0) -> Path:
    """Simulate a Flow-RBC-like HDF5 file (see module docstring) and return its path.

    Keys: ``{split}_data float32 [N, cells, 2]`` (volume fL, hemoglobin pg), ``{split}_labels float32 [N, 1]``
    (hematocrit %), ``{split}_anemia int64 [N]`` and the latent per-patient values ``{split}_hemoglobin``,
    ``_rbc_count``, ``_mcv``, ``_rdw``, ``_mchc``, ``_hdw``, ``_phenotype`` (codes; names in the file attribute
    ``phenotypes``), ``_sex`` (0 male, 1 female). Deterministic in ``seed``; written atomically.
    """
    import h5py

    if n_train < 0 or n_test < 0 or cells < 1:
        raise ValueError("n_train and n_test must be >= 0 and cells >= 1")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["deepsets_task"] = "hematocrit"
        f.attrs["simulator"] = "deepsets.data.flow_rbc.simulate_flow_rbc"
        f.attrs["seed"] = int(seed)
        f.attrs["phenotypes"] = ",".join(PHENOTYPE_NAMES)
        f.attrs["columns"] = "volume_fL,hemoglobin_pg"
        for sid, (split, n) in enumerate((("train", n_train), ("test", n_test))):
            arrays = _simulate_split(int(n), int(cells), _rng(seed, sid, 0xB10D))
            for k, v in arrays.items():
                kw = {"chunks": (1, cells, 2)} if k == "data" and n else {}
                f.create_dataset(f"{split}_{k}", data=v, **kw)
    os.replace(tmp, path)
    return path


def default_simulation(n_train: int = 4000, n_test: int = 1000, cells: int = 1000, data_seed: int = 0) -> Path:
    """The cached offline Flow-RBC file for these settings (simulated on first use, in the data folder)."""
    path = data_dir() / f"flow_rbc_sim_s{data_seed}_{n_train}_{n_test}_{cells}.h5"
    if not path.exists():
        simulate_flow_rbc(path, n_train=n_train, n_test=n_test, cells=cells, seed=data_seed)
    return path


class FlowRBCDataset(SetDataset):
    """Flow-RBC sets read lazily from HDF5 (public layout or the simulator's)."""

    def __init__(self, path, split: str = "train", task: str = "hematocrit", label_key: str | None = None, **kw):
        super().__init__(**kw)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.task = task
        dk = f"{split}_data"
        with open_h5(path) as f:
            require_keys(f, path, [dk])
            if label_key is None:
                if task == "anemia":
                    if f"{split}_anemia" in f:
                        label_key = f"{split}_anemia"
                    elif f"{split}_labels" in f and np.issubdtype(f[f"{split}_labels"].dtype, np.integer):
                        label_key = f"{split}_labels"
                    else:
                        raise DataError(
                            f"{path}: no anemia labels: expected {split}_anemia (0/1) or integer {split}_labels; "
                            f"found {sorted(f.keys())} (the public Flow-RBC file has hematocrit labels only; "
                            "pass label_key=... to choose a key)"
                        )
                else:
                    label_key = f"{split}_labels"
            require_keys(f, path, [dk, label_key])
            ds, ls, ldt = f[dk].shape, f[label_key].shape, f[label_key].dtype
            self.has_test_split = split == "train" and "test_data" in f
        if len(ds) != 3:
            raise DataError(f"{path}: {dk} should be [N, cells, features] (features = volume, hemoglobin), "
                            f"found shape {ds}")
        if len(ls) not in (1, 2) or (len(ls) == 2 and ls[1] != 1):
            raise DataError(f"{path}: {label_key} should be [N, 1] or [N], found {ls}")
        if ls[0] != ds[0]:
            raise DataError(f"{path}: {dk} has {ds[0]} sets but {label_key} has {ls[0]} labels")
        if task == "anemia" and not (np.issubdtype(ldt, np.integer) or np.issubdtype(ldt, np.bool_)):
            raise DataError(f"{path}: anemia labels {label_key} must be integer 0/1, found dtype {ldt}")
        with open_h5(path) as f:  # labels are one number per set: small enough to check whole
            try:
                labels = np.asarray(f[label_key][()])
            except Exception as e:
                raise DataError(f"{path}: cannot read {label_key} (corrupt or truncated?): {e}") from e
        if task == "anemia":
            check_class_labels(labels, 2, f"{path}: {label_key}", first_index=0)
        else:
            check_regression_labels(labels, f"{path}: {label_key}")
        self.h5 = H5Source(path)
        self.dk, self.lk = dk, label_key
        self.n = int(ds[0])
        self.in_dim = int(ds[2])
        if task == "anemia":
            self.target_kind, self.out_dim, self.num_classes = "class", 2, 2
        else:
            self.target_kind, self.out_dim, self.num_classes = "regression", 1, None
        self.source = str(path)

    def __len__(self):
        return self.n

    def _raw_set(self, index):
        x = np.asarray(self.h5.read(self.dk, index), dtype=np.float32)
        if x.size and np.isnan(x).any():
            x = x[~np.isnan(x).all(axis=1)]
        return x

    def _target(self, index):
        return np.asarray(self.h5.read(self.lk, index)).reshape(-1)[:1]

    def scan_finite(self, indices):
        """One pass over ``{split}_data`` in chunk-aligned slabs; all-NaN rows are padding (see module docstring)."""
        from .finite import scan_array

        with open_h5(self.h5.path) as f:
            return scan_array(f[self.dk], indices, padding=True)
