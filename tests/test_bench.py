"""deepsets bench: the JSON contract and the FLOP count (no timing assertions)."""
import json
import subprocess
import sys
from pathlib import Path

import torch

import deepsets
from deepsets.bench import bench, make_batch, useful_flops

ROOT = Path(__file__).resolve().parents[1]


def analytic_deepsets_flops(model, n_elements: int, batch: int) -> int:
    """Forward + backward matmul FLOPs of the Deep Sets family, written out by hand."""
    c = model.config
    H, D = c.dim, c.in_dim
    hidden = 2 * (c.depth // 2)  # baseline: layers after the first; ++: two per residual block
    fwd_first = 2 * n_elements * D * H  # input layer: no gradient w.r.t. the data, so backward = 1x forward
    fwd_hidden = (hidden + 1) * 2 * n_elements * H * H  # hidden layers + the encoder's output layer
    fwd_rho = batch * 2 * (3 * H * H + H * c.out_dim)
    return 2 * fwd_first + 3 * fwd_hidden + 3 * fwd_rho


def test_flop_count_matches_hand_count_for_deep_sets():
    for name in ("deepsets", "deepsets++"):
        model = deepsets.create_model(name, 2, 1, depth=6, dim=32)
        x, mask = make_batch(3, 40, 2, masked=True, seed=1)
        counted = useful_flops(model, x, mask)
        n = int(mask.sum())
        assert counted == analytic_deepsets_flops(model, n, 3)


def test_attention_flops_match_the_math_decomposition():
    """Fused attention is counted like the products PyTorch's math backend runs (FlopCounterMode counts those)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    for name in ("settransformer++", "settransformer"):
        model = deepsets.create_model(name, 2, 1, depth=2, dim=32)
        x, _ = make_batch(1, 50, 2, masked=False, seed=3)
        counter = FlopCounterMode(display=False)
        with sdpa_kernel(SDPBackend.MATH), counter:
            model(x).sum().backward()
        model.zero_grad(set_to_none=True)
        assert useful_flops(model, x, None) == counter.get_total_flops()


def test_padding_is_not_counted_as_useful_work():
    model = deepsets.create_model("settransformer++", 2, 1, depth=2, dim=32)
    x, mask = make_batch(4, 60, 2, masked=True, seed=2)
    trimmed = sum(useful_flops(model, x[b : b + 1, mask[b]], None) for b in range(4))
    assert useful_flops(model, x, mask) == trimmed
    assert useful_flops(model, x, None) > trimmed


def test_bench_json_contract():
    r = subprocess.run([sys.executable, "-m", "deepsets.cli", "bench", "--model", "deepsets++", "--depth", "2",
                        "--batch", "2", "--set-size", "50", "--repeats", "2", "--warmup", "1", "--json"],
                       capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("sets_per_s", "step_ms", "gflops_per_s", "gemm_gflops_per_s"):
        assert out[key] > 0
    assert out["ratio"] == round(out["gflops_per_s"] / out["gemm_gflops_per_s"], 4) or abs(
        out["ratio"] - out["gflops_per_s"] / out["gemm_gflops_per_s"]) < 1e-2


def test_bench_masked_counts_valid_elements_only():
    out = bench("deepsets++", depth=2, batch=4, set_size=40, masked=True, repeats=1, warmup=0)
    assert 4 * 20 <= out["valid_elements"] < 4 * 40
    expected = (out["step_ms"] / out["valid_elements"]) / (out["full_step_ms"] / (4 * 40))
    assert abs(out["padded_cost_per_valid_element"] - expected) < 1e-2 * expected


def test_bench_mixed_precision_reports_both_matmul_baselines():
    out = bench("deepsets++", depth=2, batch=2, set_size=30, precision="bf16-mixed", repeats=1, warmup=0)
    assert out["precision"] == "bf16-mixed" and not out["compile"] and out["compile_mode"] is None
    assert out["gemm_gflops_per_s"] > 0 and out["gemm_amp_gflops_per_s"] > 0
    expected = out["gflops_per_s"] / out["gemm_amp_gflops_per_s"]
    assert abs(out["ratio_amp"] - expected) < 1e-2 * expected + 1e-3


def test_bench_compile_flag_takes_an_optional_mode():
    import argparse

    from deepsets.bench import add_bench_command

    parser = argparse.ArgumentParser()
    add_bench_command(parser.add_subparsers())
    assert parser.parse_args(["bench"]).compile is None
    assert parser.parse_args(["bench", "--compile"]).compile == "default"
    assert parser.parse_args(["bench", "--compile", "reduce-overhead"]).compile == "reduce-overhead"
