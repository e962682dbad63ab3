"""Your own data: preprocessing inside the model, set-size-consistent prediction, ensembles and the training regime.

Parametrised from the registries (models, poolings), so a new model or pooling is covered without editing a test.
"""
import math

import numpy as np
import pytest
import torch

import deepsets
from deepsets import create_model, list_models
from deepsets.data import ListReader, SourceDataset
from deepsets.models import chunked_forward
from deepsets.nn import POOLS
from deepsets.nn.preprocess import Preprocess, parse_transform
from deepsets.inference import predict_sets, subset_plan

IN = 3
SPECS = ["arcsinh:150", "log1p", "none"]


def raw_events(n, seed=0, batch=None):
    """Cytometry-like raw values: 0 to 10^5 with a negative tail."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, IN) if batch is None else (batch, n, IN)
    return torch.randn(*shape, generator=g) * torch.tensor([3000.0, 50.0, 2.0]) + torch.tensor([5000.0, 20.0, 1.0])


def naive_preprocess(x, mean, std):
    cols = [torch.asinh(x[..., 0] / 150), torch.sign(x[..., 1]) * torch.log1p(x[..., 1].abs()), x[..., 2]]
    return (torch.stack(cols, -1) - mean) / std


def preprocessed_model(name, output="set", ensemble=1, out_dim=2, seed=0, **kw):
    torch.manual_seed(seed)
    model = create_model(name, IN, out_dim, depth=2, dim=16, output=output, transform=SPECS, standardize=True,
                         ensemble=ensemble, **kw)
    model.preprocess.fit([raw_events(500, seed=s) for s in range(3)])
    return model.eval()


# ------------------------------------------------------------------------------------------------ preprocessing
def test_preprocess_equals_its_formula_and_standardises_the_training_elements():
    pre = Preprocess(IN, SPECS, standardize=True)
    train = [raw_events(400, seed=s).double() for s in range(4)]
    pre.double().fit(train)
    t = naive_preprocess(torch.cat(train), 0.0, 1.0)
    assert torch.allclose(pre.mean, t.mean(0)) and torch.allclose(pre.std, t.std(0, unbiased=False))
    x = raw_events(50, seed=9).double()
    assert torch.allclose(pre(x), naive_preprocess(x, pre.mean, pre.std))
    z = pre(torch.cat(train))
    assert torch.allclose(z.mean(0), torch.zeros(IN, dtype=z.dtype), atol=1e-9)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(IN, dtype=z.dtype), atol=1e-9)


@pytest.mark.parametrize("spec", ["asinh:0", "arcsinh:-1", "arcsinh:x", "log2", "log1p:3"])
def test_bad_transform_specs_name_the_problem(spec):
    with pytest.raises(ValueError, match="transform"):
        parse_transform(spec)


@pytest.mark.parametrize("name", list_models())
def test_a_preprocessed_model_keeps_padding_and_permutation_invariance(name):
    model = preprocessed_model(name)
    x = raw_events(40, seed=1, batch=2)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 25:] = False
    garbage = x.clone()
    garbage[1, 25:] = float("nan")
    with torch.no_grad():
        y = model(x[:1, :25].contiguous())
        assert torch.allclose(model(garbage, mask)[1], model(x[1:, :25].contiguous())[0], atol=1e-5)
        perm = torch.randperm(25)
        assert torch.allclose(model(x[:1, :25][:, perm].contiguous()), y, atol=1e-5)
        assert torch.allclose(chunked_forward(model, x[:1, :25], chunk_size=7), y, atol=1e-4)


@pytest.mark.parametrize("name", list_models())
def test_preprocessing_survives_the_hub_folder_on_raw_input(name, tmp_path):
    pytest.importorskip("safetensors")
    model = preprocessed_model(name)
    model.save_pretrained(tmp_path / "m")
    again = deepsets.from_pretrained(tmp_path / "m")
    x = raw_events(30, seed=2, batch=2)
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-6)
    assert torch.equal(again.preprocess.mean, model.preprocess.mean)


@pytest.mark.parametrize("name,fmt", [("deepsets++", "onnx"), ("settransformer++", "pt2")])
def test_an_exported_graph_takes_raw_events(name, fmt, tmp_path):
    pytest.importorskip("onnxruntime")
    from deepsets.export import export_model, load_exported

    model = preprocessed_model(name, ensemble=2, combine="probabilities")
    run = load_exported(export_model(model, tmp_path / f"m.{fmt}"))
    x = raw_events(60, seed=3, batch=2)
    mask = torch.ones(2, 60, dtype=torch.bool)
    mask[0, 40:] = False
    with torch.no_grad():
        ref = model(x, mask)
    assert torch.allclose(run(x, mask), ref, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ set size
POOLINGS = [("deepsets++", p) for p in POOLS] + [("settransformer++", "pma")]


@pytest.mark.parametrize("name,pool", POOLINGS, ids=[f"{n}-{p}" for n, p in POOLINGS])
def test_a_10x_larger_set_predicts_the_same_within_the_subset_noise(name, pool):
    """Sets of the training size n and a set of 10 n from the same distribution: the prediction the default
    policy gives the large set lies within the spread of the predictions of independent sets of size n."""
    n = 200
    torch.manual_seed(0)
    kw = {"pool": pool} if pool != "pma" else {}
    model = create_model(name, 2, 1, depth=2, dim=16, trained_set_size=n, **kw).eval()
    rng = np.random.default_rng(0)
    draw = lambda m: rng.uniform(-1, 1, size=(m, 2)).astype(np.float32)  # noqa: E731
    small = np.stack(predict_sets(model, _dataset([draw(n) for _ in range(30)]), progress=False))[:, 0]
    big = predict_sets(model, _dataset([draw(10 * n)]), progress=False)[0][0]
    k, m = subset_plan(model)
    assert (k > 0) == (pool == "sum") and m in (None, n)
    assert abs(big - small.mean()) <= 4 * small.std() + 1e-4, (big, small.mean(), small.std())
    if pool == "sum":  # the test can fail: the whole large set is far outside what sets of n give
        whole = predict_sets(model, _dataset([draw(10 * n)]), subsets=0, progress=False)[0][0]
        assert abs(whole - small.mean()) > 4 * small.std()


def _dataset(sets, labels=None):
    return SourceDataset(ListReader(sets, labels=labels, source="X"), target="regression", set_size=None)


def test_subsets_give_a_spread_column_and_whole_sets_none(tmp_path):
    from deepsets.train.predict import predictions_csv

    torch.manual_seed(0)
    model = create_model("deepsets++", 2, 1, depth=2, dim=16, trained_set_size=50).eval()
    sets = [np.random.default_rng(i).normal(size=(n, 2)).astype(np.float32) for i, n in enumerate([30, 500])]
    spread = []
    outs = predict_sets(model, _dataset(sets), spread=spread, progress=False)
    text = predictions_csv(["a", "b"], outs, "regression", spread=spread)
    rows = [r.split(",") for r in text.strip().splitlines()]
    assert rows[0] == ["set", "prediction", "prediction_sd"]
    assert rows[1][2] == "" and float(rows[2][2]) > 0.0  # the small set whole (no spread), the large one by subsets
    views = torch.from_numpy(sets[1])[torch.from_numpy(np.stack(
        [deepsets.data.subset_indices(500, 50, 0, j, 0) for j in range(10)]))]
    with torch.no_grad():
        assert math.isclose(outs[1][0], float(model(views).mean()), rel_tol=1e-5, abs_tol=1e-6)


# ------------------------------------------------------------------------------------------------ ensembles
@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("combine", ["mean", "probabilities"])
def test_an_ensemble_predicts_the_mean_of_its_members(name, combine):
    model = preprocessed_model(name, ensemble=3, out_dim=3, combine=combine)
    x = raw_events(20, seed=4, batch=2)
    with torch.no_grad():
        prepared = model.preprocess(x)
        members = [m(prepared) for m in model.members]
        y = model(x)
        assert chunked_forward(model, x, chunk_size=6).allclose(y, atol=1e-4)
    if combine == "mean":
        assert torch.allclose(y, torch.stack(members).mean(0), atol=1e-6)
    else:
        assert torch.allclose(y.softmax(-1), torch.stack([o.softmax(-1) for o in members]).mean(0), atol=1e-6)
    assert len({next(m.parameters()).detach().flatten()[0].item() for m in model.members}) == 3  # they differ


def test_an_ensemble_trains_and_is_one_model_everywhere(tmp_path):
    """The estimator trains K members; the checkpoint, predict and the Hub folder treat them as one model."""
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    X = [rng.normal(size=(rng.integers(5, 30), 2)).astype(np.float32) + (i % 2) for i in range(40)]
    y = np.array([i % 2 for i in range(40)])
    clf = deepsets.SetClassifier(depth=2, dim=8, epochs=3, ensemble=3, out=str(tmp_path / "run"))
    clf.fit(X, y)
    model = clf.module_.model
    assert type(model).__name__ == "SetEnsemble" and len(model.members) == 3
    p = clf.predict_proba(X[:5])
    assert np.allclose(p.sum(1), 1, atol=1e-5)
    from deepsets.train import load_checkpoint

    again = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt").model
    with torch.no_grad():
        x = torch.from_numpy(X[0])[None]
        assert torch.allclose(again(x), model(x), atol=1e-6)


# ------------------------------------------------------------------------------------------------ regime
def test_the_regime_is_printed_and_follows_the_data():
    from deepsets.data import get_task
    from deepsets.train import TrainConfig
    from deepsets.train.regime import RECIPES, resolve_regime

    said = []
    own, paper = get_task("classification"), get_task("normal-var")
    cfg = resolve_regime(TrainConfig(task="classification"), own, 90, echo=said.append)
    assert cfg.regime == "small" and "small" in said[0] and "90 training sets" in said[0]
    assert all(getattr(cfg, k) == v for k, v in RECIPES["small"].items() if hasattr(cfg, k))
    # the step budget becomes epochs of these data: 81 training sets in batches of 8 = 11 steps per epoch
    steps, per_epoch = RECIPES["small"]["steps"], math.ceil(81 / cfg.batch_size)
    assert cfg.max_steps == steps and cfg.epochs == math.ceil(steps / per_epoch)
    assert cfg.patience == max(5, math.ceil(RECIPES["small"]["patience_steps"] / per_epoch))
    big = resolve_regime(TrainConfig(task="classification"), own, 5000, echo=said.append)
    assert big.regime == "paper" and big.lr == 1e-4
    assert resolve_regime(TrainConfig(task="normal-var"), paper, 90, echo=said.append).regime == "paper"
    mine = resolve_regime(TrainConfig(task="classification", lr=0.05, epochs=7, regime="small"), own, 90,
                          echo=said.append)
    assert mine.lr == 0.05 and mine.dim == RECIPES["small"]["dim"]  # a flag the user gives always wins
    assert mine.epochs == 7 and mine.max_steps == -1 and mine.patience is None  # --epochs replaces the budget
    st = resolve_regime(TrainConfig(task="classification", model="settransformer++"), own, 90, echo=said.append)
    assert st.pool is None  # the Set Transformer family pools by attention
    assert resolve_regime(mine, own, 90, echo=said.append) == mine  # resolving again changes nothing


# ------------------------------------------------------------------------------------------------ tune
def test_tune_is_nested_and_keeps_the_cv_contract(tmp_path, capsys):
    """Each outer fold's trials are scored on its training sets only; tune.json has cv.json's keys."""
    pytest.importorskip("optuna")
    import json

    import pandas as pd

    from deepsets.cli import main
    from deepsets.train.tune import SPACE

    rng = np.random.default_rng(0)
    rows = [(f"p{i:02d}", i % 2, *(rng.normal(size=2) + (i % 2))) for i in range(12) for _ in range(8)]
    pd.DataFrame(rows, columns=["patient", "y", "a", "b"]).to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "tune"
    assert main(["tune", "--folds", "2", "--inner-folds", "2", "--trials", "2", "--data", str(tmp_path / "t.csv"),
                 "--set-column", "patient", "--label-column", "y", "--epochs", "1", "--depth", "2",
                 "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "tune.json").read_text())
    for key in ("metric", "folds", "mean", "se", "metrics", "fold_sets", "best_params", "recommended"):
        assert key in res, key
    assert res["metric"] == "accuracy" and len(res["folds"]) == 2 and "nested" in printed
    assert "depth" not in res["searched"] and {"dim", "lr", "pool"} <= set(res["searched"])  # a given flag is fixed
    for k, detail in enumerate(res["details"]):
        assert not set(detail["inner_sets"]) & set(res["fold_sets"][k])  # trials never saw the outer test sets
        assert len(detail["trials"]) == 2
        for name, value in detail["best_params"].items():
            kind, *args = SPACE[name]
            assert value in args[0] if kind == "categorical" else args[0] <= value <= args[1]
    assert sorted(s for f in res["fold_sets"] for s in f) == [f"p{i:02d}" for i in range(12)]
