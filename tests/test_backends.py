"""The CPU backend against the reference layers: its autograd functions (C kernels and the eager hand-written
backward) against naive computations, and whole models with the backend's modules against the same weights in
the reference layers, over every registered family, norm and wiring. Correctness only."""
import ast
import itertools
import shutil
from pathlib import Path

import pytest
import torch
from test_nn import naive_set_norm

import deepsets
from deepsets import backends
from deepsets import nn as dnn
from deepsets.backends.cpu import functions as fused
from deepsets.backends.cpu import kernels
from deepsets.backends.cpu.functions import PackedSets, _SetNormFunction
from deepsets.models import get_preset

IMPLS = ["eager", "c"]


def _needs(impl):
    if impl == "c" and not kernels.applies(torch.zeros(1, 1)):
        pytest.skip("fused set-norm kernels unavailable (no C compiler with OpenMP)")


def _apply(impl, x, w, b, relu, packed, mask=None):
    """Set norm with one implementation: ``x`` dense [B, N, D] (all rows, or the rows where ``mask`` is True)
    when ``packed`` is None, else packed rows [T, D]."""
    if impl == "eager" and mask is not None:  # padded batches without kernels: the reference layer
        norm = dnn.SetNorm(x.shape[-1]).to(x.dtype)
        with torch.no_grad():
            norm.weight.copy_(w)
            norm.bias.copy_(b)
        y = torch.func.functional_call(norm, {"weight": w, "bias": b}, (x, mask))
        return y.relu() if relu else y
    return _SetNormFunction.apply(x, w, b, 1e-5, relu, packed if mask is None else mask, impl == "c")


def _inputs(seed, B=4, N=30, D=16, shift=0.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, N, D, generator=g, dtype=dtype) * 2 + shift)
    w = torch.randn(D, generator=g, dtype=dtype)
    b = torch.randn(D, generator=g, dtype=dtype)
    mask = torch.rand(B, N, generator=g) < 0.6
    mask[:, 0] = True
    return x, w, b, mask


def test_kernels_build_where_a_compiler_exists():
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    assert kernels.name() == "c+blocks"  # the BLAS routine of PyTorch's CPU build is found and checked


def test_kernels_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("DEEPSETS_KERNELS", "norm")
    assert kernels.name() == "c" and not kernels.blocks_enabled()
    monkeypatch.setenv("DEEPSETS_KERNELS", "0")
    assert kernels.name() == "eager" and not kernels.applies(torch.zeros(2, 2))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", ["dense", "packed", "padded"])
@pytest.mark.parametrize("relu", [False, True])
def test_set_norm_fast_path_matches_naive_forward_and_backward(impl, layout, relu):
    _needs(impl)
    x, w, b, mask = _inputs(0)
    if layout == "dense":
        mask = torch.ones_like(mask)
    packed = PackedSets(mask) if layout == "packed" else None
    x = x.masked_fill(~mask.unsqueeze(-1), 1e3) if layout == "padded" else x  # padding must be ignored
    xs = (packed.pack(x) if packed else x).detach().requires_grad_()
    ws, bs = w.clone().requires_grad_(), b.clone().requires_grad_()
    out = _apply(impl, xs, ws, bs, relu, packed, mask if layout == "padded" else None)
    out_full = packed.unpack(out) if packed else out

    xr, wr, br = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
    ref = naive_set_norm(xr, mask, wr, br)
    ref = ref.relu() if relu else ref
    torch.testing.assert_close(out_full, ref, rtol=1e-10, atol=1e-10)

    g = torch.randn_like(ref) * mask.unsqueeze(-1)
    (out_full * g).sum().backward()
    (ref * g).sum().backward()
    gx = packed.unpack(xs.grad) if packed else xs.grad
    torch.testing.assert_close(gx, xr.grad * mask.unsqueeze(-1), rtol=1e-9, atol=1e-10)  # zero in padded rows
    torch.testing.assert_close(ws.grad, wr.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(bs.grad, br.grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
def test_set_norm_fast_path_gradcheck(impl):
    _needs(impl)
    x, w, b, mask = _inputs(1, B=3, N=7, D=5)
    packed = PackedSets(mask)
    for args in ((x, None, None), (packed.pack(x), packed, None), (x, None, mask)):
        for relu in (False, True):
            inputs = (args[0].detach().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_())
            assert torch.autograd.gradcheck(lambda xx, ww, bb: _apply(impl, xx, ww, bb, relu, *args[1:]), inputs)


@pytest.mark.parametrize("impl", IMPLS)
def test_set_norm_float32_fast_path_is_accurate_on_large_offset_sets(impl):
    """float32 against float64: large sets, mean far from zero (where E[x^2] - E[x]^2 would cancel)."""
    _needs(impl)
    x, w, b, _ = _inputs(2, B=3, N=2000, D=64, shift=300.0)
    ref = naive_set_norm(x, torch.ones(x.shape[:2], dtype=torch.bool), w, b).relu()
    got = _apply(impl, x.float(), w.float(), b.float(), True, None).double()
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-4


def test_set_norm_module_uses_kernels_and_matches_reference(monkeypatch):
    _needs("c")
    torch.manual_seed(0)
    norm = backends.apply(dnn.SetNorm(32))
    assert type(norm).__name__ == "CPUSetNorm"
    x = torch.randn(5, 200, 32)
    mask = torch.rand(5, 200) < 0.5
    calls = []
    real = kernels.set_norm_forward
    monkeypatch.setattr(kernels, "set_norm_forward", lambda *a: calls.append(1) or real(*a))
    for m in (None, mask):
        torch.testing.assert_close(norm(x, m), backends.reference(norm)(x, m), rtol=1e-5, atol=1e-5)
    assert len(calls) == 2


def test_tune_allocator_is_idempotent():
    from deepsets.runtime import allocator_tuned, tune_allocator

    first = tune_allocator()
    assert tune_allocator() == first == allocator_tuned()


def test_kernel_build_falls_back_to_a_temporary_folder(tmp_path, monkeypatch):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("DEEPSETS_CACHE", str(blocker / "cache"))
    built = kernels._build("float")
    assert built.exists() and not str(built).startswith(str(blocker))


@pytest.mark.parametrize("impl", IMPLS)
def test_set_norm_fast_paths_support_double_backward(impl):
    """A differentiated backward (create_graph=True, e.g. gradient penalties) falls back to plain autograd."""
    _needs(impl)
    x, w, b, mask = _inputs(5, B=2, N=5, D=3)
    packed = PackedSets(mask)
    cases = [(x, None, None), (packed.pack(x), packed, None)] + ([(x, None, mask)] if impl == "c" else [])
    for xx, pk, mk in cases:
        for relu in (False, True):
            inputs = (xx.detach().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_())
            assert torch.autograd.gradgradcheck(lambda a, ww, bb: _apply(impl, a, ww, bb, relu, pk, mk), inputs)


@pytest.mark.parametrize("impl", IMPLS)
def test_set_norm_skip_copy_carries_its_gradient(impl):
    """The skip output (a copy of x for pre-norm blocks) equals x, and its gradient joins the norm's input
    gradient: gradcheck of x -> (norm(x), copy) on every layout, and double backward."""
    _needs(impl)
    x, w, b, mask = _inputs(6, B=3, N=7, D=5)
    packed = PackedSets(mask)
    for xx, pk, mk in ((x, None, None), (packed.pack(x), packed, None), (x, None, mask)):
        if impl == "eager" and mk is not None:
            continue  # padded batches without kernels take SetNorm._padded_eager (no skip copy)
        for relu in (False, True):
            def f(a, ww, bb):
                y, copy = _SetNormFunction.apply(a, ww, bb, 1e-5, relu, pk if mk is None else mk, impl == "c", True)
                return y, copy * 1.5  # a non-trivial gradient for the copy
            inputs = (xx.detach().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_())
            y, copy = _SetNormFunction.apply(*inputs, 1e-5, relu, pk if mk is None else mk, impl == "c", True)
            torch.testing.assert_close(copy, xx.reshape(-1, xx.shape[-1]), rtol=0, atol=0)
            assert torch.autograd.gradcheck(f, inputs)
            assert torch.autograd.gradgradcheck(f, inputs)


# --- the fused Deep Sets++ block (one kernel per clean-path block, around the BLAS GEMM) -------------------------

def _needs_block():
    if not kernels.block_applies(torch.zeros(1, 1)):
        pytest.skip("fused block kernel unavailable (no C compiler with OpenMP, or no BLAS routine found)")


def _block(D, seed, dtype=torch.float64):
    torch.manual_seed(seed)
    blk = dnn.DeepSetsBlock(D).to(dtype)
    with torch.no_grad():  # away from the identity init, so every term of the backward matters
        for p in blk.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return blk


def _block_params(blk):
    return [blk.norm1.weight, blk.norm1.bias, blk.fc1.weight, blk.norm2.weight, blk.norm2.bias, blk.fc2.weight]


def _run(blk, x, sets, grad, fused_block=True):
    """Output, output statistics and every gradient of one block on a fresh leaf copy of ``x``: the fused block
    kernel, or the same block in plain PyTorch ops."""
    blk.zero_grad(set_to_none=True)
    xl = x.detach().clone().requires_grad_(True)
    if fused_block:
        out, stats = fused.clean_block(xl, sets, None, blk.norm1, blk.fc1, blk.norm2, blk.fc2)
    else:
        out, stats = fused.clean_block_reference(xl, *_block_params(blk), blk.norm1.eps, sets), None
    out.backward(grad)
    return out.detach(), stats, [xl.grad] + [p.grad for p in _block_params(blk)]


# Sets bigger than one tile (256 rows at D=16 ... 128), of one row, and (packed) empty.
@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("D", [16, 128])
def test_fused_block_matches_plain_ops(layout, D, monkeypatch):
    _needs_block()
    blk = _block(D, seed=D)
    g = torch.Generator().manual_seed(1)
    if layout == "dense":
        x, sets = torch.randn(3, 700, D, generator=g, dtype=torch.float64) * 2 + 0.5, None
    else:
        mask = torch.zeros(5, 600, dtype=torch.bool)
        for b, n in enumerate([600, 1, 0, 257, 33]):
            mask[b, :n] = True
        sets = PackedSets(mask)
        x = torch.randn(int(mask.sum()), D, generator=g, dtype=torch.float64) * 2 + 0.5
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    calls = []
    real = kernels.ds_block_forward
    monkeypatch.setattr(kernels, "ds_block_forward", lambda *a: calls.append(1) or real(*a))
    out, stats, grads = _run(blk, x, sets, grad)
    assert calls, "the fused block kernel was not used"
    out0, stats0, grads0 = _run(blk, x, sets, grad, fused_block=False)
    assert len(calls) == 1
    torch.testing.assert_close(out, out0, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, grads0):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # the returned statistics are the set norm's own: mean and rstd of each set of the output
    rows = out.reshape(-1, D)
    offsets = sets.offsets() if sets is not None else [0, 700, 1400, 2100]
    for b in range(len(offsets) - 1):
        s = rows[offsets[b]:offsets[b + 1]]
        if len(s):
            torch.testing.assert_close(stats[0, b].item(), s.mean().item(), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(stats[1, b].item(), (s.var(unbiased=False) + 1e-5).rsqrt().item(), rtol=1e-10, atol=0)


def test_fused_block_statistics_chain_through_a_stack(monkeypatch):
    """A block given its input's statistics (from the block before) computes what it computes without them."""
    _needs_block()
    blocks = [_block(32, seed=s) for s in range(3)]
    x = torch.randn(4, 300, 32, dtype=torch.float64)
    h, stats = x, None
    for blk in blocks:
        with_stats, stats_next = fused.clean_block(h, None, stats, blk.norm1, blk.fc1, blk.norm2, blk.fc2)
        without, _ = fused.clean_block(h, None, None, blk.norm1, blk.fc1, blk.norm2, blk.fc2)
        assert torch.equal(with_stats, without)
        h, stats = with_stats, stats_next


def test_fused_block_gradcheck_and_double_backward():
    _needs_block()
    blk = _block(6, seed=3)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[0, :9], mask[1, :4], mask[2, :1] = True, True, True
    sets = PackedSets(mask)
    x = torch.randn(int(mask.sum()), 6, dtype=torch.float64, requires_grad=True)
    params = _block_params(blk)
    f = lambda x, *p: fused._FusedCleanBlock.apply(x, None, 1e-5, sets, *p)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, *params))
    assert torch.autograd.gradgradcheck(f, (x, *params))


def test_fused_block_is_not_used_where_it_does_not_apply(monkeypatch):
    """Autocast and dispatch modes (FLOP counting) run the per-op path; a set norm with another eps is not
    substituted at all; padded batches run packed on the fused kernel."""
    _needs_block()
    from deepsets.bench import MatmulRecorder

    blk = _block(16, seed=0).float()
    stack = backends.apply(dnn.SetSequential([blk]))
    assert type(stack).__name__ == "DeepSetsStack"
    calls = []
    real = kernels.ds_block_forward
    monkeypatch.setattr(kernels, "ds_block_forward", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 20, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stack(x)
    rec = MatmulRecorder()
    with rec:
        stack(x)
    assert not calls and len(rec.calls) == 2  # the two products, as the FLOP count and the replay need them
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 10:] = False
    stack(x, mask)
    assert len(calls) == 1
    blk.norm2.eps = 1e-3  # statistics pass between fused layers with the library's eps: another eps is not fused
    assert type(backends.apply(dnn.SetSequential([blk]))).__name__ == "SetSequential"


@pytest.mark.parametrize("name", ["deepsets++", "settransformer++"])
def test_models_train_under_cpu_autocast(name):
    """bf16 autocast on CPU (``--precision bf16-mixed``): the in-place residual paths step aside, and the result
    stays close to float32."""
    torch.manual_seed(0)
    model = deepsets.create_model(name, 2, 1, depth=4)
    x = torch.randn(3, 50, 2)
    ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)


# --- set norm + linear layer in one kernel (attention projections and feed-forward layers) -----------------------

@pytest.mark.parametrize("flags", [0, 1, 2, 3, 6])  # none, ReLU after norm, ReLU after product, both, residual
@pytest.mark.parametrize("layout", ["dense", "packed", "padded"])
def test_norm_linear_matches_plain_ops(flags, layout):
    _needs_block()
    g = torch.Generator().manual_seed(flags)
    D, N = 24, (24 if flags & fused.RESIDUAL else 40)
    norm = dnn.SetNorm(D).double()
    fc = torch.nn.Linear(D, N, bias=flags != 1).double()  # one case without a bias
    with torch.no_grad():
        norm.weight.add_(torch.randn(D, generator=g, dtype=torch.float64) * 0.5)
        norm.bias.add_(torch.randn(D, generator=g, dtype=torch.float64) * 0.5)
    if layout == "dense":
        x, sets = torch.randn(3, 300, D, generator=g, dtype=torch.float64) * 2 + 1, None
    elif layout == "padded":  # a bool mask: padding anywhere in a set, an empty set, and garbage in padded rows
        sets = torch.rand(3, 300, generator=g) < 0.6
        sets[1] = False
        x = torch.randn(3, 300, D, generator=g, dtype=torch.float64) * 2 + 1
        x = x.masked_fill(~sets.unsqueeze(-1), 50.0)
    else:
        mask = torch.zeros(4, 300, dtype=torch.bool)
        for b, n in enumerate([300, 1, 0, 170]):
            mask[b, :n] = True
        sets = PackedSets(mask)
        x = torch.randn(int(mask.sum()), D, generator=g, dtype=torch.float64) * 2 + 1
    params = [norm.weight, norm.bias, fc.weight] + ([fc.bias] if fc.bias is not None else [])
    grad = torch.randn(*x.shape[:-1], N, generator=g, dtype=torch.float64)

    def run(f):
        xl = x.clone().requires_grad_(True)
        y = f(xl)
        grads = torch.autograd.grad(y, [xl, *params], grad)
        return y.detach(), grads

    want_stats = bool(flags & fused.RESIDUAL)
    got = run(lambda xl: fused.norm_linear(xl, sets, None, norm, fc, flags, want_stats)[0])
    want = run(lambda xl: fused.reference(xl, norm.weight, norm.bias, fc.weight, fc.bias, norm.eps, flags, sets))
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    y, st_x, *st_y = fused.norm_linear(x, sets, None, norm, fc, flags, want_stats)
    again = fused.norm_linear(x, sets, st_x, norm, fc, flags)[0]  # given statistics: the same result
    assert torch.equal(again, y)
    if want_stats:  # statistics of the output: mean and rstd of each set
        rows, offsets = y.reshape(-1, N), fused.set_offsets(y, sets)
        valid = fused._valid_rows(sets)
        for b in range(len(offsets) - 1):
            s = rows[offsets[b]:offsets[b + 1]]
            s = s if valid is None else s[valid[offsets[b]:offsets[b + 1]]]
            if len(s):
                torch.testing.assert_close(st_y[0][0, b].item(), s.mean().item(), rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(st_y[0][1, b].item(), (s.var(unbiased=False) + 1e-5).rsqrt().item(),
                                           rtol=1e-10, atol=0)


def test_norm_linear_gradcheck_and_double_backward():
    _needs_block()
    norm, fc = dnn.SetNorm(5).double(), torch.nn.Linear(5, 5).double()
    x = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    params = (norm.weight, norm.bias, fc.weight, fc.bias)
    flags = fused.RELU_IN | fused.RESIDUAL  # ReLU only before the product: gradcheck-safe away from kinks

    def f(x, w, b, W, bias):
        return fused._NormLinear.apply(x, None, None, 1e-5, flags, False, w, b, W, bias)[0]

    assert torch.autograd.gradcheck(f, (x, *params))
    assert torch.autograd.gradgradcheck(f, (x, *params))


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_isab_matches_plain_ops_in_the_whole_model(dtype, padded, monkeypatch):
    """Set Transformer++ with its ISABs on the layer-level kernels vs every layer per op: outputs and every
    gradient, and the kernels are really used."""
    _needs_block()
    torch.manual_seed(0)
    model = deepsets.create_model("settransformer++", 2, 1, depth=3).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(3, 300, 2, dtype=dtype)
    mask = None
    if padded:  # padding in the middle and at the end of sets, and one full set
        mask = torch.rand(3, 300, generator=torch.Generator().manual_seed(0)) < 0.7
        mask[0] = True
        x = x.masked_fill(~mask.unsqueeze(-1), 7.0)  # whatever padded rows hold is ignored
    calls = []
    real = fused._NormLinear.apply
    monkeypatch.setattr(fused._NormLinear, "apply", lambda *a: calls.append(1) or real(*a))

    def run():
        model.zero_grad(set_to_none=True)
        out = model(x, mask)
        out.sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out, grads = run()
    assert len(calls) == 3 * 3  # three fused layers per ISAB
    monkeypatch.setenv("DEEPSETS_KERNELS", "norm")
    out0, grads0 = run()
    assert len(calls) == 9
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out, out0, rtol=tol, atol=tol)
    scale = max(g.abs().max() for g in grads0.values())  # some decoder gradients are 0 in theory (rounding only)
    assert grads.keys() == grads0.keys()
    for name in grads0:
        torch.testing.assert_close(grads[name] / scale, grads0[name] / scale, rtol=0, atol=tol * 10, msg=name)


# --- whole models: the backend's modules against the reference layers, over the registries ----------------------

BACKEND_GRID = [(name, norm, residual) for name in deepsets.list_models() for norm, residual in
                itertools.product(sorted(dnn.NORMS), get_preset(name).config_cls.residuals)]


@pytest.mark.parametrize("kernels_setting", ["1", "norm", "0"])
@pytest.mark.parametrize("name,norm,residual", BACKEND_GRID)
def test_backend_equals_reference_layers(name, norm, residual, kernels_setting, monkeypatch):
    """Same outputs and gradients as the reference layers with the same weights (every kernel setting; padded and
    not; per-set and per-element outputs); same state_dict keys."""
    monkeypatch.setenv("DEEPSETS_KERNELS", kernels_setting)
    torch.manual_seed(0)
    kw = {"num_inducing": 5} if get_preset(name).config_cls.__name__ == "SetTransformerConfig" else {}
    for output in ("set", "elements"):
        model = deepsets.create_model(name, 3, 2, depth=4, dim=16, norm=norm, residual=residual, output=output,
                                      **kw).double()
        ref = backends.reference(model)
        assert list(model.state_dict()) == list(ref.state_dict())
        assert all(type(m).__module__.startswith("deepsets.backends") is False for m in ref.modules())
        with torch.no_grad():  # away from the init, so that every term matters
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        x, _, _, mask = _inputs(9, B=3, N=12, D=3)
        for m in (None, mask):
            got, want = (_out_and_grads(net, x, m) for net in (model, ref))
            torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
            for a, b in zip(got[1], want[1]):
                torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)


def _out_and_grads(model, x, mask):
    model.zero_grad(set_to_none=True)
    out = model(x, mask)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
    return out.detach(), [p.grad.clone() if p.grad is not None else None for p in model.parameters()]


def test_backend_modules_are_substituted_where_they_fit():
    expect = {"deepsets++": "DeepSetsStack", "settransformer++": "ISABStack", "deepsets": "SetSequential",
              "settransformer": "SetSequential"}
    for name, cls in expect.items():
        model = deepsets.create_model(name, 2, 1, depth=4)
        assert type(model.layers).__name__ == cls
        assert type(deepsets.create_model(name, 2, 1, depth=4, backend="reference").layers).__name__ == "SetSequential"
    with pytest.raises(ValueError, match="'auto', 'reference'"):
        deepsets.create_model("deepsets++", 2, 1, backend="gpu")


def test_no_layer_or_model_file_imports_the_backend_kernels():
    root = Path(deepsets.__file__).parent
    for path in [*(root / "nn").glob("*.py"), *(root / "models").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = "." * node.level + (node.module or "")
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            bad = [n for n in names if "backends.cpu" in n or n.endswith(("kernels", "functions"))
                   or (path.parent.name == "nn" and "backends" in n)]
            assert not bad, f"{path.relative_to(root)} imports {bad}"


def test_no_function_rebinds_module_state():
    """No module-level mutable state: no ``global`` statement anywhere in the package (caches are
    ``functools.cache``; chunked inference keeps its statistics in its own run object)."""
    root = Path(deepsets.__file__).parent
    found = [f"{path.relative_to(root)}:{node.lineno}" for path in root.rglob("*.py")
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Global)]
    assert not found, found


def test_chunked_inference_leaves_the_model_as_it_was():
    model = deepsets.create_model("settransformer++", 2, 1, depth=2).eval()
    before = [(name, type(m)) for name, m in model.named_modules()]
    deepsets.models.chunked_forward(model, torch.randn(1, 50, 2), chunk_size=16)
    assert [(name, type(m)) for name, m in model.named_modules()] == before


# --- checkpoints written before the layers and the backend were separated still load and predict the same -------

OLD = Path(__file__).parent / "data" / "checkpoints-2026-12-01"


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("name", ["deepsets++", "settransformer++"])
def test_checkpoints_from_before_the_backend_split_predict_the_same(name, backend, tmp_path, monkeypatch):
    """``tests/data/checkpoints-2026-12-01``: two small runs (normal-var, 3 steps) and their ``deepsets predict``
    output on ``sets.npy``, written by the code in which the kernels lived inside the layers. They load into the
    models with the backend and into the reference layers alone, and predict the same."""
    import csv

    from deepsets.train.predict import predict_file

    if backend == "reference":
        real = backends.apply
        monkeypatch.setattr(backends, "apply", lambda model, _backend="auto": real(model, "reference"))

    out = tmp_path / "p.csv"
    predict_file(str(OLD / f"{name}.ckpt"), str(OLD / "sets.npy"), str(out))
    got = {r["set"]: float(r["prediction"]) for r in csv.DictReader(out.open())}
    want = {r["set"]: float(r["prediction"]) for r in csv.DictReader((OLD / f"{name}.csv").open())}
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
