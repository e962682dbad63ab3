"""deepsets.nn: parity of every norm, pooling and attention mask with a naive per-set computation."""
import math

import pytest
import torch
import torch.nn.functional as F

from deepsets import nn as dnn
from deepsets.testing import random_padded_batch

D = 5


def _batch(seed=0, B=6, N=9):
    return random_padded_batch(B, N, D, seed=seed)


def _randomize_affine(norm):
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn_like(p))
    return norm


def naive_set_norm(x, mask, w, b, eps=1e-5):
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        xi = x[i][mask[i]]  # [n, D] valid rows only
        mu = xi.mean()
        var = ((xi - mu) ** 2).mean()
        out[i][mask[i]] = (xi - mu) / torch.sqrt(var + eps) * w + b
    return out


def naive_layer_norm(x, mask, w, b, eps=1e-5):
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        for n in range(x.shape[1]):
            if mask[i, n]:
                e = x[i, n]
                out[i, n] = (e - e.mean()) / torch.sqrt(e.var(unbiased=False) + eps) * w + b
    return out


def naive_feature_norm(x, mask, w, b, eps=1e-5):
    valid = x[mask]  # [total, D]
    mu, var = valid.mean(0), valid.var(0, unbiased=False)
    out = torch.zeros_like(x)
    out[mask] = (valid - mu) / torch.sqrt(var + eps) * w + b
    return out, mu, valid.var(0, unbiased=True)


@pytest.mark.parametrize("masked", [True, False])
def test_set_norm_matches_naive(masked):
    x, mask = _batch()
    if not masked:
        mask = torch.ones_like(mask)
    norm = _randomize_affine(dnn.SetNorm(D).double())
    out = norm(x, mask if masked else None)
    torch.testing.assert_close(out, naive_set_norm(x, mask, norm.weight, norm.bias), rtol=1e-10, atol=1e-10)


def test_layer_norm_matches_naive():
    x, mask = _batch()
    norm = _randomize_affine(dnn.LayerNorm(D).double())
    torch.testing.assert_close(norm(x, mask), naive_layer_norm(x, mask, norm.weight, norm.bias), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("masked", [True, False])
def test_feature_norm_matches_naive_and_tracks_running_stats(masked):
    x, mask = _batch()
    if not masked:
        mask = torch.ones_like(mask)
    norm = _randomize_affine(dnn.FeatureNorm(D).double()).train()
    out = norm(x, mask if masked else None)
    expected, mu, unbiased_var = naive_feature_norm(x, mask, norm.weight, norm.bias)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(norm.running_mean, 0.1 * mu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(norm.running_var, 0.9 + 0.1 * unbiased_var, rtol=1e-10, atol=1e-12)
    # eval: a fixed per-feature affine map with the running statistics, per element
    norm.eval()
    ev = norm(x, mask)
    ref = (x - norm.running_mean) / torch.sqrt(norm.running_var + 1e-5) * norm.weight + norm.bias
    torch.testing.assert_close(ev, ref * mask.unsqueeze(-1), rtol=1e-10, atol=1e-10)


def test_set_norm_keeps_scale_information_layer_norm_destroys():
    """PAPER.md: layer norm maps x and a*x (per element) to the same output; set norm does not."""
    x = torch.rand(1, 20, 1, dtype=torch.float64) + 0.5
    scaled = x * torch.linspace(0.5, 3, 20, dtype=torch.float64).view(1, 20, 1)
    ln, sn = dnn.LayerNorm(4, eps=0).double(), dnn.SetNorm(4, eps=0).double()
    lift = torch.randn(1, 4, dtype=torch.float64)
    a, b = x * lift, scaled * lift  # features proportional within each element
    assert torch.allclose(ln(a), ln(b))
    assert not torch.allclose(sn(a), sn(b))


def test_set_norm_statistics_float32_under_autocast():
    x = (torch.randn(2, 300, 8) * 50 + 1000).to(torch.bfloat16)
    norm = dnn.SetNorm(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    assert out.dtype == torch.bfloat16
    ref = naive_set_norm(x.double(), torch.ones(2, 300, dtype=torch.bool), norm.weight.double(), norm.bias.double())
    # bf16 output rounding only (~3 significant digits); statistics were not taken in bf16
    assert (out.double() - ref).abs().max() < 0.05


@pytest.mark.parametrize("name", sorted(dnn.NORMS))
def test_norms_zero_padded_rows_and_ignore_their_values(name):
    x, mask = _batch()
    norm = dnn.make_norm(name, D).double().eval()
    out = norm(x, mask)
    assert out[~mask].abs().max() == 0
    x2 = x.clone()
    x2[~mask] = 1e12
    torch.testing.assert_close(norm(x2, mask), out)


def test_unknown_norm_lists_choices():
    with pytest.raises(ValueError, match="'set'.*'layer'.*'feature'.*'none'"):
        dnn.make_norm("batch", 4)


def test_pooling_matches_naive():
    x, mask = _batch()
    for kind, f in [("sum", lambda v: v.sum(0)), ("mean", lambda v: v.mean(0)), ("max", lambda v: v.amax(0))]:
        out = dnn.Pool(kind)(x, mask)
        ref = torch.stack([f(x[i][mask[i]]) for i in range(x.shape[0])])
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_pooling_empty_set_is_zero_not_nan():
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [False] * 4])
    for kind in dnn.POOLS:
        out = dnn.Pool(kind)(x, mask)
        assert torch.isfinite(out).all() and out[1].abs().max() == 0


def naive_attention(q, k, v, key_mask, heads, scale):
    """Per set, per head softmax over the valid keys only."""
    B, Nq, H = q.shape
    dh = H // heads
    out = torch.zeros(B, Nq, H, dtype=q.dtype)
    for b in range(B):
        kb, vb = k[b][key_mask[b]], v[b][key_mask[b]]
        for h in range(heads):
            s = slice(h * dh, (h + 1) * dh)
            w = torch.softmax(q[b, :, s] @ kb[:, s].T * scale, dim=-1)
            out[b, :, s] = w @ vb[:, s]
    return out


def test_attention_matches_naive_and_padded_keys_get_zero_weight():
    x, mask = _batch(N=11)
    att = dnn.Attention(D, D, 8, heads=4).double()
    q = torch.randn(x.shape[0], 3, D, dtype=torch.float64)
    out = att(q, x, mask)
    qp = att.q(q)
    k, v = att.kv(x).chunk(2, dim=-1)
    ref = naive_attention(qp, k, v, mask, 4, 1 / math.sqrt(8))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    x2 = x.clone()
    x2[~mask] = -1e9  # any padded value, even one that would dominate an unmasked softmax
    torch.testing.assert_close(att(q, x2, mask), out, rtol=0, atol=0)


def test_attention_to_empty_key_set_is_zero():
    att = dnn.Attention(3, 3, 8, heads=2)
    x = torch.randn(2, 5, 3)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :2] = True
    out = att(torch.randn(2, 4, 3), x, mask)
    assert torch.isfinite(out).all() and out[1].abs().max() == 0


@pytest.mark.parametrize("norm", sorted(dnn.NORMS))
@pytest.mark.parametrize("residual", dnn.RESIDUALS)
@pytest.mark.parametrize("block", ["sab", "isab", "deepsets"])
def test_blocks_equivariant_and_zero_padding(block, residual, norm):
    from deepsets.testing import (
        check_padding_invariance,
        check_permutation_equivariance,
    )

    dim, norm_layer = 8, dnn.NORMS[norm]
    layer = {
        "sab": lambda: dnn.SAB(dim, dim, heads=2, norm_layer=norm_layer, residual=residual),
        "isab": lambda: dnn.ISAB(dim, dim, heads=2, num_inducing=4, norm_layer=norm_layer, residual=residual),
        "deepsets": lambda: dnn.DeepSetsBlock(dim, norm_layer, residual=residual, bias=norm == "none"),
    }[block]().double().eval()
    x, mask = random_padded_batch(4, 9, dim)
    x = x.masked_fill(~mask.unsqueeze(-1), 0.0)  # layers assume finite padding; models clear it themselves
    out = layer(x, mask)
    assert out[~mask].abs().max() == 0
    check_permutation_equivariance(layer, x, mask, atol=1e-10)
    # layers keep zero padding zero (models clear padding once at their input)
    check_padding_invariance(layer, x, mask, fill_scale=0.0, atol=1e-10)


def test_clean_block_is_identity_plus_residual():
    """The clean-path block is literally x + f(x): zeroing the last linear layer gives the identity."""
    blk = dnn.DeepSetsBlock(6, dnn.SetNorm, residual="clean")
    torch.nn.init.zeros_(blk.fc2.weight)
    x = torch.randn(3, 7, 6)
    torch.testing.assert_close(blk(x), x)
    # the non-clean block does not reduce to the identity: a ReLU sits on the skip path
    nb = dnn.DeepSetsBlock(6, dnn.SetNorm, residual="nonclean")
    torch.nn.init.zeros_(nb.fc2.weight)
    torch.testing.assert_close(nb(x), F.relu(x))
