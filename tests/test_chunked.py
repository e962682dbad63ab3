"""Exact chunked inference equals the ordinary forward pass, for every family, norm and residual wiring."""
import pytest
import torch

import deepsets
from deepsets.models import chunked_forward, get_preset
from deepsets.testing import random_padded_batch

NORMS = sorted(deepsets.nn.NORMS)
GRID = [(name, norm, res) for name in deepsets.list_models() for norm in NORMS
        for res in get_preset(name).config_cls.residuals
        if get_preset(name).defaults["residual"] == res or name.endswith("++")]


def _model(name, norm, residual, **kw):
    depth = 4 if "deepsets" in name else 2
    extra = {"num_inducing": 6} if "settransformer" in name else {}
    m = deepsets.create_model(name, 3, 2, depth=depth, dim=16, norm=norm, residual=residual, **extra, **kw)
    m = m.double()
    if norm == "feature":  # non-trivial running statistics
        m.train()
        m(torch.randn(4, 50, 3, dtype=torch.float64) * 2 + 1)
    return m.eval()


@pytest.mark.parametrize("name,norm,residual", GRID)
def test_chunked_equals_forward(name, norm, residual):
    model = _model(name, norm, residual)
    x, mask = random_padded_batch(3, 300, 3, min_size=100, seed=5)
    x = x * 4 + 2
    ref = model(x, mask)
    for chunk in (1000, 77):  # one chunk per set, and several (the last one partial)
        torch.testing.assert_close(chunked_forward(model, x, mask, chunk_size=chunk), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", deepsets.list_models())
def test_chunked_element_outputs(name):
    model = _model(name, "set", get_preset(name).defaults["residual"], output="elements")
    x, mask = random_padded_batch(2, 300, 3, min_size=50, seed=6)
    torch.testing.assert_close(chunked_forward(model, x, mask, chunk_size=64), model(x, mask), rtol=1e-9, atol=1e-9)


def test_chunked_float32_relative_error_on_large_set():
    model = deepsets.create_model("deepsets++", 2, 1, depth=10).eval()
    x = torch.randn(1, 20_000, 2) * torch.tensor([15.0, 3.0]) + torch.tensor([90.0, 30.0])
    ref = model(x)
    out = chunked_forward(model, x, chunk_size=4096)
    assert ((out - ref).abs() / ref.abs().clamp_min(1e-6)).max() <= 1e-4


def test_chunked_requires_eval_mode():
    model = deepsets.create_model("deepsets++", 2, 1, depth=2)
    with pytest.raises(ValueError, match="model.eval"):
        chunked_forward(model, torch.randn(1, 10, 2))


def test_predict_uses_exact_chunked_inference_for_huge_sets(tmp_path):
    import numpy as np

    from deepsets.inference import predict_sets
    from deepsets.train.predict import open_input

    model = deepsets.create_model("settransformer++", 2, 1, depth=2, dim=16, num_inducing=4).eval()
    sets = np.random.default_rng(0).normal(size=(3, 300, 2)).astype(np.float32)
    np.save(tmp_path / "big.npy", sets)
    outs = predict_sets(model, open_input(tmp_path / "big.npy"), max_elements=100, chunk_size=37)
    ref = model(torch.from_numpy(sets)).detach().numpy()
    np.testing.assert_allclose(np.stack(outs), ref, rtol=1e-4, atol=1e-6)


# --- the fast path of deepsets.backends.huge (one pass per layer, one in-place activation) -------------------------
FAST = [(name, norm) for name in deepsets.list_models() for norm in NORMS]


@pytest.mark.parametrize("name,norm", FAST)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_path_equals_forward_and_generic(name, norm, dtype):
    """Every registered model and norm: ``path="auto"`` (the fast path where the model has one, the generic path
    elsewhere) equals the model and the generic path; where there is a fast path it is the one taken."""
    from deepsets.backends import huge

    model = _model(name, norm, get_preset(name).defaults["residual"]).to(dtype)
    x, mask = random_padded_batch(3, 300, 3, min_size=100, seed=7)
    x = (x * 4 + 2).to(dtype)
    ref = model(x, mask)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    for chunk in (1000, 77):
        out = chunked_forward(model, x, mask, chunk_size=chunk, path="auto")
        torch.testing.assert_close(out, ref, **tol)
        torch.testing.assert_close(out, chunked_forward(model, x, mask, chunk_size=chunk, path="generic"), **tol)
    fast = huge.plan(model, x[0, :10].contiguous())
    if norm != "set" or name.endswith("++"):
        # element-wise norms (any wiring) and the paper's deep models with set norm have a fast path
        assert fast is not None
        torch.testing.assert_close(chunked_forward(model, x, mask, chunk_size=77, path="fast"), ref, **tol)
    elif fast is None:
        with pytest.raises(ValueError, match="no fast path"):
            chunked_forward(model, x, mask, path="fast")


@pytest.mark.parametrize("name", ["deepsets++", "settransformer++"])
@pytest.mark.parametrize("pool_or_output", ["sum", "mean", "max", "elements"])
def test_fast_path_pools_and_element_outputs(name, pool_or_output):
    kw = {"output": "elements"} if pool_or_output == "elements" else {}
    if name == "deepsets++" and pool_or_output != "elements":
        kw["pool"] = pool_or_output
    elif pool_or_output in ("mean", "max"):
        pytest.skip("the Set Transformer family pools by attention only")
    model = _model(name, "set", "clean", **kw)
    x, mask = random_padded_batch(2, 400, 3, min_size=150, seed=8)
    out = chunked_forward(model, x, mask, chunk_size=64, path="fast")
    torch.testing.assert_close(out, model(x, mask), rtol=1e-9, atol=1e-9)


def test_fast_path_float32_relative_error_on_large_set():
    """The Gram-matrix statistics of the inner set norm lose nothing against float32 round-off on a deep model
    with raw-unit inputs (what the generic path is held to in the test above)."""
    for name, depth in (("deepsets++", 10), ("settransformer++", 2)):
        model = deepsets.create_model(name, 2, 1, depth=depth).eval()
        x = torch.randn(1, 20_000, 2) * torch.tensor([15.0, 3.0]) + torch.tensor([90.0, 30.0])
        ref = model.double()(x.double()).float()
        model.float()
        out = chunked_forward(model, x, chunk_size=4096, path="fast")
        assert ((out - ref).abs() / ref.abs().clamp_min(1e-6)).max() <= 1e-4, name


def test_fast_path_falls_back_without_kernels(monkeypatch):
    from deepsets.backends import huge

    model = _model("deepsets++", "set", "clean")
    x = torch.randn(1, 50, 3, dtype=torch.float64)
    monkeypatch.setenv("DEEPSETS_KERNELS", "norm")
    assert huge.plan(model, x[0]) is None
    torch.testing.assert_close(chunked_forward(model, x), model(x), rtol=1e-9, atol=1e-9)


def test_chunked_forward_rejects_an_unknown_path():
    model = _model("deepsets++", "set", "clean")
    with pytest.raises(ValueError, match="unknown path"):
        chunked_forward(model, torch.randn(1, 10, 3, dtype=torch.float64), path="quick")


def test_predict_streams_a_fcs_folder_with_the_same_predictions(tmp_path):
    """Reading the next file in the background (and the progress bar) changes nothing in the predictions."""
    import numpy as np

    flowio = pytest.importorskip("flowio")
    from deepsets.inference import predict_sets, prefetched
    from deepsets.train.predict import open_input

    rng = np.random.default_rng(3)
    for i in range(5):
        ev = np.column_stack([rng.normal(90, 15, 40 + 7 * i), rng.normal(30, 3, 40 + 7 * i)]).astype(np.float32)
        with open(tmp_path / f"s{i}.fcs", "wb") as fh:
            flowio.create_fcs(fh, ev.ravel().tolist(), ["RBC_Volume", "RBC_HC"])
    ds = open_input(tmp_path, channels=["RBC_Volume", "RBC_HC"])
    model = deepsets.create_model("deepsets++", 2, 1, depth=2, dim=16).eval()
    sets = list(prefetched(ds))
    assert [len(s) for s in sets] == [len(ds.get_set(i, subsample=False)) for i in range(len(ds))]
    one_by_one = [model(s.unsqueeze(0))[0].detach().numpy() for s in sets]
    for progress in (True, False):
        outs = predict_sets(model, ds, max_elements=100, progress=progress)  # batches of one or two sets
        np.testing.assert_allclose(np.stack(outs), np.stack(one_by_one), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in deepsets.list_models() if n.endswith("++")])
def test_predict_runs_large_sets_on_the_fast_path_with_the_same_predictions(name, monkeypatch, tmp_path):
    """Sets of at least ``huge_min`` elements go alone through the huge-set path where the model has one; the
    predictions equal the batched forward's."""
    import numpy as np

    from deepsets.backends import chunked
    from deepsets.data.sources import SourceDataset
    from deepsets.data.sources.arrays import ListReader
    from deepsets.inference import predict_sets

    model = _model(name, "set", "clean").float()
    rng = np.random.default_rng(5)
    sets = [rng.normal(2, 3, size=(n, 3)).astype(np.float32) for n in (30, 400, 12, 350)]
    ds = SourceDataset(ListReader(sets), target="regression", set_size=None)
    batched = predict_sets(model, ds, huge_min=10**9, progress=False)
    calls = []
    real = chunked.chunked_forward
    monkeypatch.setattr(chunked, "chunked_forward", lambda m, x, *a, **k: calls.append(x.shape) or real(m, x, *a, **k))
    fast = predict_sets(model, ds, huge_min=300, progress=False)
    assert [s[1] for s in calls] == [400, 350]  # the two large sets, each alone
    np.testing.assert_allclose(np.stack(fast), np.stack(batched), rtol=2e-4, atol=2e-5)
