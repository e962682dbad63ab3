"""Property-based tests (hypothesis): the set properties of every registered model and norm under random set
sizes, batch compositions, paddings, permutations and value scales; numerically hard but valid inputs; and
random corruptions of the real file formats, which must give a clear error or a correct read, nothing else."""
import csv
import io
import os
import pickle
import select
import signal
import tempfile
import traceback
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deepsets
from deepsets.data import DataError, load_task
from deepsets.models import get_preset
from deepsets.testing import (
    check_batch_independence,
    check_padding_invariance,
    check_permutation_equivariance,
    check_permutation_invariance,
)

from test_models import FAMILY_RESIDUALS as RESIDUALS, NORMS  # one grid of norms and wirings for both files
COMBOS = [(name, norm) for name in deepsets.list_models() for norm in NORMS]
FAST = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name, norm, in_dim, out_dim=2, residual=None, output="set", dtype=torch.float64):
    family = get_preset(name).model_cls.__name__
    depth = 4 if family == "DeepSets" else 2
    kw = {"num_inducing": 4} if family == "SetTransformer" else {}
    if residual is not None:
        kw["residual"] = residual
    torch.manual_seed(0)
    return deepsets.create_model(name, in_dim, out_dim, depth=depth, dim=16, norm=norm, output=output,
                                 **kw).to(dtype).eval()


@st.composite
def batches(draw):
    """A random batch: sizes 1..12 per set (at least one full), 1..3 features, values of scale 1e-6..1e6 around
    a random offset, padded rows filled with large junk."""
    b = draw(st.integers(1, 4))
    n = draw(st.integers(1, 12))
    d = draw(st.integers(1, 3))
    sizes = draw(st.lists(st.integers(1, n), min_size=b, max_size=b))
    sizes[draw(st.integers(0, b - 1))] = n
    scale = 10.0 ** draw(st.integers(-6, 6))
    offset = draw(st.sampled_from([0.0, 1.0, -50.0]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64) * scale + offset * scale
    mask = torch.arange(n).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
    junk = torch.randn(b, n, d, generator=g, dtype=torch.float64) * 1e4
    x = torch.where(mask.unsqueeze(-1), x, junk)
    return x, (None if all(s == n for s in sizes) and draw(st.booleans()) else mask), seed


def _tol(y):
    # float64: deviations are round-off, measured relative to the output's own size
    return dict(atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name,norm", COMBOS, ids=[f"{n}-{m}" for n, m in COMBOS])
@FAST
@given(data=batches(), residual_pick=st.integers(0, 2))
def test_invariant_models_properties(name, norm, data, residual_pick):
    x, mask, seed = data
    family = get_preset(name).model_cls.__name__
    residual = RESIDUALS[family][residual_pick % len(RESIDUALS[family])]
    model = _model(name, norm, x.shape[-1], residual=residual)
    y = model(x, mask)
    assert y.shape == (x.shape[0], 2) and torch.isfinite(y).all()
    check_permutation_invariance(model, x, mask, seed=seed, **_tol(y))
    check_padding_invariance(model, x, mask, extra=3, seed=seed, **_tol(y))
    check_batch_independence(model, x, mask, **_tol(y))


@pytest.mark.parametrize("name,norm", COMBOS, ids=[f"{n}-{m}" for n, m in COMBOS])
@FAST
@given(data=batches())
def test_equivariant_models_properties(name, norm, data):
    x, mask, seed = data
    model = _model(name, norm, x.shape[-1], out_dim=1, output="elements")
    y = model(x, mask)
    assert y.shape == (*x.shape[:2], 1) and torch.isfinite(y).all()
    if mask is not None:
        assert (y[~mask] == 0).all()
    check_permutation_equivariance(model, x, mask, seed=seed, **_tol(y))
    check_padding_invariance(model, x, mask, extra=2, seed=seed, **_tol(y))
    check_batch_independence(model, x, mask, **_tol(y))


# ---------------------------------------------------------------------------------------- numerically hard inputs
def _hard(case):
    g = torch.Generator().manual_seed(0)
    if case == "constant":
        return torch.full((3, 50, 2), 7.0)
    if case == "single-element":
        return torch.randn(3, 1, 2, generator=g)
    if case == "values-1e6":
        return 1e6 + 1e6 * torch.randn(3, 50, 2, generator=g)
    if case == "values-1e-6":
        return 1e-6 * torch.randn(3, 50, 2, generator=g)
    if case == "large-set":
        return torch.randn(1, 20_000, 2, generator=g)
    raise AssertionError(case)


HARD = ["constant", "single-element", "values-1e6", "values-1e-6", "large-set"]


@pytest.mark.parametrize("case", HARD)
@pytest.mark.parametrize("name,norm", COMBOS, ids=[f"{n}-{m}" for n, m in COMBOS])
def test_numerically_hard_inputs_give_finite_outputs_and_gradients(name, norm, case):
    """float32, as in training: constant sets (zero variance), one element, values ~1e6 and ~1e-6, 20,000
    elements: outputs and gradients are finite."""
    x = _hard(case)
    model = _model(name, norm, 2, dtype=torch.float32).train()
    y = model(x)
    assert torch.isfinite(y).all(), f"{name}/{norm}: non-finite output on {case}"
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), f"{name}/{norm}: non-finite gradient on {case}"
    model.eval()  # evaluation mode too (feature norm: running statistics instead of the batch's)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all(), f"{name}/{norm}: non-finite output in eval mode on {case}"


# ---------------------------------------------------------------------------------------- corrupted real files
class _Files(dict):
    def __repr__(self):  # keep hypothesis's failure reports short
        return f"<valid files: {', '.join(self)}>"


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    """One valid small file of each real format (bytes), and how to load it."""
    d = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(0)
    out = _Files()
    p = d / "rbc.h5"
    with h5py.File(p, "w") as f:
        f["train_data"] = rng.uniform(50, 100, (5, 40, 2)).astype(np.float32)
        f["train_labels"] = rng.uniform(30, 50, (5, 1)).astype(np.float32)
    out["flow-rbc.h5"] = p.read_bytes()
    p = d / "cells.h5ad"
    str_dt = h5py.string_dtype()
    with h5py.File(p, "w") as f:
        f["X"] = rng.uniform(1, 2, (30, 2)).astype(np.float32)
        var = f.create_group("var")
        var.attrs["_index"] = "_index"
        var.create_dataset("_index", data=np.array(["volume", "hemoglobin"], dtype=object), dtype=str_dt)
        o = f.create_group("obs")
        o.attrs["_index"] = "_index"
        o.create_dataset("_index", data=np.array([f"c{i}" for i in range(30)], dtype=object), dtype=str_dt)
        o.create_dataset("patient", data=np.array([f"p{i % 3}" for i in range(30)], dtype=object), dtype=str_dt)
        o["hct"] = np.repeat([[30.0, 40.0, 50.0]], 10, axis=0).ravel()
    out["cells.h5ad"] = p.read_bytes()
    flowio = pytest.importorskip("flowio")
    buf = io.BytesIO()
    flowio.create_fcs(buf, rng.uniform(0, 100, (40, 2)).astype(np.float32).ravel().tolist(), ["RBC_Volume", "RBC_HC"])
    out["patient.fcs"] = buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, rng.normal(size=(3, 10, 2)).astype(np.float32))
    out["sets.npy"] = buf.getvalue()
    from deepsets.train.module import SetModule

    kw = {"model": "deepsets++", "model_kwargs": {"in_dim": 2, "out_dim": 1, "depth": 2, "dim": 16},
          "task": "hematocrit"}
    hp = {**kw, "loss": "mse", "metric": "mse"}  # as checkpoints of earlier versions name the target
    buf = io.BytesIO()
    torch.save({"epoch": 0, "hyper_parameters": hp, "state_dict": SetModule(**kw, target="regression").state_dict()},
               buf)
    out["model.ckpt"] = buf.getvalue()
    return out


def _load_everything(kind: str, path: Path):
    """Read the file the way the library does, touching every set."""
    if kind == "model.ckpt":
        from deepsets.train import load_checkpoint

        model = load_checkpoint(path).model
        return model(torch.ones(1, 3, 2))
    if kind == "sets.npy":
        from deepsets.train.predict import open_input

        ds = open_input(path)
        return [ds.get_set(i, subsample=False) for i in range(len(ds))]
    if kind == "patient.fcs":
        with open(path.parent / "labels.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([["file", "label"], [path.name, "40"]])
        ds = load_task("hematocrit", "train", data=path.parent, channels=["RBC_Volume", "RBC_HC"], set_size=0)
    elif kind == "cells.h5ad":
        ds = load_task("hematocrit", "train", data=path, set_column="patient", label_column="hct", set_size=0)
    else:
        ds = load_task("hematocrit", "train", data=path, set_size=0)
    return [ds[i] for i in range(len(ds))]


corruptions = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 0.999)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0.0, 0.999), st.integers(1, 255)), min_size=1,
                                        max_size=8)),
    st.tuples(st.just("zero"), st.tuples(st.floats(0.0, 0.999), st.integers(1, 512))),
)


def _corrupt(raw: bytes, how) -> bytes:
    kind, arg = how
    b = bytearray(raw)
    if kind == "truncate":
        return bytes(b[: int(arg * len(b))])
    if kind == "flip":
        for pos, mask in arg:
            b[int(pos * len(b))] ^= mask
        return bytes(b)
    start, length = int(arg[0] * len(b)), arg[1]
    b[start: start + length] = bytes(len(b[start: start + length]))
    return bytes(b)


FILE_CHECK_TIMEOUT = 3  # seconds: well under the watchdog's 10, well over a walk of these files (~0.3 s)
KINDS = ["flow-rbc.h5", "cells.h5ad", "patient.fcs", "sets.npy", "model.ckpt"]


def _outcome(kind: str, path: Path):
    """``("ok", None)``, ``("value_error", message)`` or ``("other", traceback)`` of reading the file."""
    try:
        result = _load_everything(kind, path)
    except ValueError as e:  # DataError is a ValueError
        return "value_error", str(e)
    except Exception:  # noqa: BLE001
        return "other", traceback.format_exc()
    if isinstance(result, torch.Tensor):
        return "ok", None  # a damaged checkpoint may still load; its (damaged) weights are its own values
    for item in result:
        x = item[0] if isinstance(item, tuple) else item
        if not np.isfinite(np.asarray(x)).all():
            return "other", "a set with NaN/inf values was returned without an error"
    return "ok", None


def _outcome_with_watchdog(kind: str, path: Path, timeout: float = 10.0):
    """``_outcome`` in a forked child, so a read that never returns (inside a C library) cannot hang the tests:
    returns ``("hang", None)`` then."""
    if not hasattr(os, "fork"):
        return _outcome(kind, path)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with os.fdopen(w, "wb") as fh:
                pickle.dump(_outcome(kind, path), fh)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        ready, _, _ = select.select([fh], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hang", None
        data = fh.read()
    os.waitpid(pid, 0)
    return pickle.loads(data) if data else ("other", "the reading process died (crash in a C library?)")


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(how=corruptions)
def test_corrupted_files_give_a_clear_error_or_a_clean_read(kind, how, good_files, monkeypatch):
    """A damaged file is either still readable (damage in unused bytes; every value read is then finite) or
    raises ValueError/DataError naming the file: never another exception, a crash, a hang or silent NaN.

    Some damaged HDF5 metadata makes the HDF5 C library loop forever; the data layer walks a file's metadata
    first in a child process it kills after ``$DEEPSETS_FILE_CHECK_TIMEOUT`` seconds (3 here), so such a read
    ends with a DataError. The watchdog (10 s) is only the tests' safety net: reaching it fails the test."""
    monkeypatch.setenv("DEEPSETS_FILE_CHECK_TIMEOUT", str(FILE_CHECK_TIMEOUT))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / kind
        path.write_bytes(_corrupt(good_files[kind], how))
        status, detail = _outcome_with_watchdog(kind, path)
        assert status != "hang", f"reading a damaged {kind} never returned: {how}"
        assert status != "other", detail
        if status == "value_error":
            assert kind in detail or path.parent.name in detail, f"message does not name the file: {detail}"
