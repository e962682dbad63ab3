"""Export to ONNX and torch.export (deepsets.export, `deepsets export`): every registered family, both output kinds.

The properties are checked on the exported file itself (onnxruntime / the loaded program), not only on PyTorch:
agreement with the eager model on sets of 1 to 10,000 elements, permutation invariance (or equivariance for
per-element outputs) and padding invariance with garbage in the padded rows.
"""
import re
import subprocess

import pytest
import torch

from deepsets import create_model, list_models
from deepsets.cli import main
from deepsets.export import ExportCheckError, check_export, export_model, load_exported, padded_batch
from deepsets.nn import NORMS, POOLS

from test_train import CLI, env, tiny

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

IN, OUT = 2, 3
CASES = [(name, output, fmt) for name in list_models() for output in ("set", "elements") for fmt in ("onnx", "pt2")]


def small(name, output="set", **kw):
    torch.manual_seed(0)
    return create_model(name, IN, OUT, depth=2, dim=16, output=output, **kw).eval()


def close(a, b, rtol=1e-4, atol=1e-5):
    """|a - b| within float32 round-off of b's scale."""
    assert a.shape == b.shape
    tol = atol + rtol * float(b.abs().max())
    diff = float((a - b).abs().max())
    assert diff <= tol, f"max |difference| {diff:.3g} > {tol:.3g}"


def eager(model, x, mask):
    with torch.no_grad():
        return model(x, mask)


@pytest.mark.parametrize("name,output,fmt", CASES, ids=["-".join(c) for c in CASES])
def test_exported_model_matches_and_keeps_the_set_properties(name, output, fmt, tmp_path):
    """One export per case (exports dominate the time); every property is checked on the exported file."""
    model = small(name, output)
    path = export_model(model, tmp_path / f"model.{fmt}")
    run = load_exported(path)

    # agreement with eager PyTorch (its default backend) on 1 to 10,000 elements, padded batches of mixed sizes
    for sizes in ([1], [1, 1, 1], [10, 3, 1], [10_000, 2_500, 37, 1]):
        x, mask = padded_batch(sizes, IN, seed=len(sizes))
        y = run(x, mask)
        close(y, eager(model, x, mask))
        assert torch.isfinite(y).all()
        if output == "elements":
            assert y.shape == (len(sizes), max(sizes), OUT) and (y[~mask] == 0).all()
        else:
            assert y.shape == (len(sizes), OUT)

    # permutation: invariant (one output per set) or equivariant (per element), on the exported model
    x, mask = padded_batch([50, 20, 1], IN, n=64, seed=1)
    y = run(x, mask)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    y_perm = run(x[:, perm], mask[:, perm])
    close(y_perm, y[:, perm] if output == "elements" else y)

    # padding: more padded rows, holding other garbage, change nothing
    x_more, mask_more = padded_batch([50, 20, 1], IN, n=200, seed=2)
    x_more[:, :64] = torch.where(mask[..., None], x, x_more[:, :64])
    y_more = run(x_more, mask_more)
    if output == "elements":
        close(y_more[:, :64], y)
        assert (y_more[:, 64:] == 0).all()
    else:
        close(y_more, y)

    # an empty set (which the PyTorch model refuses with an error) gives a finite output and changes no other set
    x, mask = padded_batch([5, 0], IN, seed=4)
    y = run(x, mask)
    assert torch.isfinite(y).all()
    close(y[:1], run(x[:1], mask[:1]))

    # and the checker agrees
    assert check_export(path, model, sizes=(1, 7))["max_abs_diff"] < 1e-4


NORMS_POOLS = [(norm, pool) for norm, pool in zip(NORMS, [*POOLS] * len(NORMS))]


@pytest.mark.parametrize("norm,pool", NORMS_POOLS, ids=[f"{n}-{p}" for n, p in NORMS_POOLS])
def test_every_norm_and_pool_exports(norm, pool, tmp_path):
    """Every registered norm (and each pooling) through torch.export (the cheaper format; both share the trace)."""
    model = small("deepsets++", norm=norm, pool=pool)
    path = export_model(model, tmp_path / "m.pt2")
    assert check_export(path, model, sizes=(1, 7, 300))["max_abs_diff"] < 1e-4


def test_check_export_fails_on_a_model_that_differs(tmp_path):
    model = small("deepsets")
    path = export_model(model, tmp_path / "m.pt2")
    with torch.no_grad():
        model.rho[-1].bias.add_(1.0)
    with pytest.raises(ExportCheckError, match=re.escape("differs from the PyTorch model: max |difference| = 1 on sets of 1 ")):
        check_export(path, model)


def test_export_refuses_unknown_formats_and_keeps_the_model(tmp_path):
    model = small("deepsets++")
    with pytest.raises(ValueError, match="unknown export format 'tflite'; valid choices: 'onnx', 'pt2'"):
        export_model(model, tmp_path / "m.onnx", "tflite")
    with pytest.raises(ValueError, match="cannot tell the export format from 'm.bin'"):
        export_model(model, tmp_path / "m.bin")
    assert type(model.layers).__module__.startswith("deepsets.backends")  # still on its CPU backend


# ------------------------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A checkpoint written by training (one step of a tiny Deep Sets++)."""
    from deepsets.train import train

    out = tmp_path_factory.mktemp("run") / "run"
    train(tiny(out=str(out), max_steps=1, epochs=1))
    return out / "checkpoints" / "last.ckpt"


def elements_checkpoint(path):
    """A per-element (set-anomaly style) Set Transformer++ checkpoint, saved with the training module's layout."""
    from deepsets.train.module import SetModule

    module = SetModule(model="settransformer++", model_kwargs=dict(in_dim=IN, out_dim=1, depth=2, dim=16,
                                                                   output="elements"),
                       task="set-anomaly", target="elements")
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_cli_exports_a_checkpoint_and_prints_the_difference(fmt, trained_checkpoint, tmp_path, capsys):
    """ONNX: a trained checkpoint, as a subprocess; pt2: a per-element checkpoint, in this process (faster)."""
    out = tmp_path / "sub" / f"model.{fmt}"
    if fmt == "onnx":
        ckpt = trained_checkpoint
        r = subprocess.run([*CLI, "export", "--checkpoint", str(ckpt), "--format", fmt, "--output", str(out)],
                           capture_output=True, text=True, env=env(), timeout=300)
        assert r.returncode == 0, r.stderr
        stdout, stderr = r.stdout, r.stderr
    else:
        ckpt = elements_checkpoint(tmp_path / "elements.ckpt")
        assert main(["export", "--checkpoint", str(ckpt), "--output", str(out), "--check-sizes", "1", "9"]) == 0
        stdout, stderr = capsys.readouterr()
    assert out.is_file() and stderr.strip() == ""
    assert f"wrote {out} ({fmt}," in stdout and "mask bool [B, N]" in stdout
    assert ("output y [B, N, 1]" if fmt == "pt2" else "output y [B, 1]") in stdout
    line = next(s for s in stdout.splitlines() if "max abs difference" in s)
    sizes = "1, 7, 100" if fmt == "onnx" else "1, 9"
    assert f"padded sets of {sizes} elements" in line and float(line.rsplit(" ", 1)[1]) < 1e-4
    from deepsets.train import load_checkpoint

    model = load_checkpoint(ckpt).model
    x, mask = padded_batch([5, 2], model.config.in_dim)
    close(load_exported(out)(x, mask), eager(model, x, mask))


def test_cli_errors(tmp_path, capsys, monkeypatch):
    ckpt = elements_checkpoint(tmp_path / "e.ckpt")
    with pytest.raises(SystemExit) as e:
        main(["export", "--checkpoint", str(ckpt), "--format", "tflite", "--output", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--format: invalid choice: 'tflite'" in err and "onnx" in err and "pt2" in err

    assert main(["export", "--checkpoint", str(tmp_path / "missing.ckpt"), "--output", str(tmp_path / "m.pt2")]) == 1
    assert "deepsets export: error: checkpoint does not exist:" in capsys.readouterr().err

    assert main(["export", "--checkpoint", str(ckpt), "--output", str(tmp_path / "m.bin")]) == 1
    assert "cannot tell the export format from 'm.bin'" in capsys.readouterr().err

    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # as if the extra were not installed
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "ONNX export needs onnxruntime (not installed): pip install deepsets[export]" in err
    assert not (tmp_path / "m.onnx").exists()
