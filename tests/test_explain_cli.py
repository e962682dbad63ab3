"""`deepsets explain` as a user runs it: the documented outputs for a table (pandas), an `.h5ad` (anndata) and an FCS
folder (flowio), and the same scores for the same cells in every format."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "deepsets.cli"]
CHANNELS = ["CD3", "CD19"]

pytestmark = pytest.mark.usefixtures("one_thread")


def run(*argv):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(CLI + [str(a) for a in argv], capture_output=True, text=True, env=env, timeout=600)
    return r


def ok(r):
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 sets of 20-40 cells with a cell type each; a classifier trained on them through the CLI."""
    root = tmp_path_factory.mktemp("explain-cli")
    rng = np.random.default_rng(0)
    rows = []
    for s in range(8):
        n = int(rng.integers(20, 40))
        x = rng.normal(size=(n, 2)).astype(np.float32)
        if s % 2:
            x[:3] += 3.0
        for i in range(n):
            rows.append({"sample": f"p{s}", "CD3": x[i, 0], "CD19": x[i, 1], "celltype": "T" if x[i, 0] > 0 else "B",
                         "label": s % 2})
    df = pd.DataFrame(rows)
    df.to_csv(root / "cells.csv", index=False)
    ok(run("train", "--data", root / "cells.csv", "--set-column", "sample", "--label-column", "label",
           "--features", *CHANNELS, "--out", root / "run", "--depth", "2", "--dim", "16", "--max-steps", "20",
           "--ensemble", "1", "--no-progress"))
    return root, df, root / "run" / "checkpoints" / "best.ckpt"


def test_table_csv_and_parquet(data, tmp_path):
    root, df, ckpt = data
    r = ok(run("explain", "--checkpoint", ckpt, "--input", root / "cells.csv", "--groupby", "celltype",
               "--output", tmp_path / "scores.csv", "--report", tmp_path / "report", "--label-column", "label"))
    assert "element scores" in r.stdout
    out = pd.read_csv(tmp_path / "scores.csv", dtype={"set": str})
    assert list(out.columns) == ["set", "element", "score_0", "score_1", "celltype"]
    assert len(out) == len(df)
    for sid, part in out.groupby("set", sort=False):  # elements in the input's order, with their groups
        rows = df[df["sample"] == sid]
        assert part["element"].tolist() == list(range(len(rows)))
        assert part["celltype"].tolist() == rows["celltype"].tolist()
    rep = tmp_path / "report"
    for name in ("summary.json", "top_frequency.csv", "groups.csv", "group_scores.png", "set_scores.png",
                 "deletion.png"):
        assert (rep / name).is_file(), name
    import json

    summary = json.loads((rep / "summary.json").read_text())
    assert summary["method"] == "occlusion" and summary["sets"] == 8
    assert summary["top"]["between_classes"]["test"] == "Mann-Whitney U"

    ok(run("explain", "--checkpoint", ckpt, "--input", root / "cells.csv", "--output", tmp_path / "scores.parquet",
           "--method", "integrated-gradients"))
    pq = pd.read_parquet(tmp_path / "scores.parquet")
    assert list(pq.columns) == ["set", "element", "score_0", "score_1"] and len(pq) == len(df)


def test_h5ad_gets_a_copy_with_scores_in_obs(data, tmp_path):
    ad = pytest.importorskip("anndata")
    root, df, ckpt = data
    a = ad.AnnData(X=df[CHANNELS].to_numpy(np.float32),
                   obs=pd.DataFrame({"sample": df["sample"].values, "celltype": df["celltype"].values},
                                    index=[f"c{i}" for i in range(len(df))]))
    a.var_names = CHANNELS
    src = tmp_path / "cells.h5ad"
    a.write_h5ad(src)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    ok(run("explain", "--checkpoint", ckpt, "--input", src, "--set-column", "sample", "--output",
           tmp_path / "scores.csv"))
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before  # the user's file is never written
    copy = ad.read_h5ad(tmp_path / "scores.h5ad")
    assert {"deepsets_score_0", "deepsets_score_1"} <= set(copy.obs.columns)
    table = pd.read_csv(tmp_path / "scores.csv")
    np.testing.assert_allclose(copy.obs["deepsets_score_1"].to_numpy(), table["score_1"].to_numpy(), rtol=1e-5,
                               atol=1e-6)
    # the same cells as a table give the same scores
    ok(run("explain", "--checkpoint", ckpt, "--input", root / "cells.csv", "--output", tmp_path / "t.csv"))
    np.testing.assert_allclose(pd.read_csv(tmp_path / "t.csv")["score_1"], table["score_1"], rtol=1e-5, atol=1e-6)
    r = run("explain", "--checkpoint", ckpt, "--input", src, "--set-column", "sample", "--output",
            tmp_path / "s2.csv", "--annotated", src)
    assert r.returncode == 1 and "also an input" in r.stderr


def test_fcs_folder_gets_copies_with_a_score_channel(data, tmp_path):
    flowio = pytest.importorskip("flowio")
    root, df, ckpt = data
    folder = tmp_path / "fcs"
    folder.mkdir()
    for sid, part in df.groupby("sample", sort=False):
        events = part[CHANNELS].to_numpy(np.float32)
        with open(folder / f"{sid}.fcs", "wb") as fh:
            flowio.create_fcs(fh, events.ravel().tolist(), CHANNELS)
    ok(run("explain", "--checkpoint", ckpt, "--input", folder, "--output", tmp_path / "scores.csv",
           "--annotated", tmp_path / "annotated"))
    scores = pd.read_csv(tmp_path / "scores.csv", dtype={"set": str})
    ok(run("explain", "--checkpoint", ckpt, "--input", root / "cells.csv", "--output", tmp_path / "t.csv"))
    table = pd.read_csv(tmp_path / "t.csv", dtype={"set": str})
    merged = scores.merge(table, on=["set", "element"], suffixes=("_fcs", "_table"))
    assert len(merged) == len(df)  # the same cells, read from FCS files and from a table: the same scores
    np.testing.assert_allclose(merged["score_1_fcs"], merged["score_1_table"], rtol=1e-4, atol=1e-5)
    for f in sorted(folder.glob("*.fcs")):
        copy = flowio.FlowData(str(tmp_path / "annotated" / f.name))
        assert copy.channel_count == 3
        names = list(copy.pnn_labels)
        assert names == CHANNELS + ["deepsets_score"]
        ev = np.asarray(copy.events, dtype=np.float32).reshape(-1, 3)
        np.testing.assert_allclose(ev[:, 2], scores.loc[scores["set"] == f.stem, "score_1"].to_numpy(), rtol=1e-4,
                                   atol=1e-5)
