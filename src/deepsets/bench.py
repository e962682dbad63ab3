"""``deepsets bench``: training-step speed of a model against this machine's own matmul speed.

What is measured, in one process, interleaved so that a change in machine load hits both alike:

- ``step_ms``: median wall time of one training step (forward + backward + Adam) on a fixed batch.
- with ``--masked``: the same model's step on full sets of the padded size, timed in the same loop, and
  ``padded_cost_per_valid_element`` = (padded step time / valid elements) / (full step time / elements).
- ``gemm_ms``: median wall time of replaying, with plain ``torch.mm``/``torch.bmm`` on fresh fp32 tensors,
  every matrix product the step executes (the model's own shapes, recorded from one step); attention is
  replayed as its two batched products.
- ``useful_gflop``: the FLOPs the architecture needs for one step: matrix products and attention of the
  forward and backward passes over the **valid** elements only (padding excluded), counted from the shapes of
  the products a step runs on each set alone (attention: ``2 * 2 * Nq * Nk * d`` per head forward, twice that
  backward). Norms, activations, pooling and the optimizer are not counted.
- ``gflops_per_s = useful_gflop / step_s``; ``gemm_gflops_per_s = replayed FLOPs / gemm_s``. Their ratio is the
  share of the machine's matmul speed the model turns into useful work (1.0 = as fast as its matmuls alone).
  The recording runs under a dispatch mode, where the layer-level CPU kernels (:mod:`deepsets.backends.cpu`) step
  aside, so the replay runs each product over all rows as one ``torch.mm``. Those kernels run the same products
  in cache-sized tiles of rows, which can be faster than the replay: the ratio can then exceed 1.
- with ``--precision bf16-mixed`` / ``16-mixed``: also ``gemm_amp_gflops_per_s``, the same replay in the
  autocast dtype, and ``ratio_amp`` against it (the fp32 ``ratio`` then compares with a slower baseline).
- with ``--compile [MODE]``: the step runs the ``torch.compile``-d model (``mode=MODE``, e.g. ``reduce-overhead``
  for CUDA graphs); FLOPs and shapes are recorded from the eager one.
"""
from __future__ import annotations

import json
import statistics
import time
from contextlib import nullcontext

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .backends.cpu import kernels as _kernels
from .runtime import allocator_tuned

aten = torch.ops.aten
_MM = {aten.mm.default, aten.addmm.default, aten.addmm_.default, aten.bmm.default, aten.baddbmm.default}
_ATTN_PREFIX = "_scaled_dot_product"


class MatmulRecorder(TorchDispatchMode):
    """Records the (kind, shapes) of every matrix product and attention call that runs inside it."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (aten.mm.default,):
            self.calls.append(("mm", (tuple(args[0].shape), tuple(args[1].shape))))
        elif func in (aten.addmm.default, aten.addmm_.default):
            self.calls.append(("mm", (tuple(args[1].shape), tuple(args[2].shape))))
        elif func is aten.bmm.default:
            self.calls.append(("bmm", (tuple(args[0].shape), tuple(args[1].shape))))
        elif func is aten.baddbmm.default:
            self.calls.append(("bmm", (tuple(args[1].shape), tuple(args[2].shape))))
        elif _ATTN_PREFIX in str(func.__name__) and "backward" not in str(func.__name__):
            q, k = args[0], args[1]  # [B, h, Nq, d], [B, h, Nk, d]: scores q k^T, then weights v
            b = q.shape[0] * q.shape[1]
            self.calls.append(("bmm", ((b, q.shape[2], q.shape[3]), (b, q.shape[3], k.shape[2]))))
            self.calls.append(("bmm", ((b, q.shape[2], k.shape[2]), (b, k.shape[2], q.shape[3]))))
        elif _ATTN_PREFIX in str(func.__name__):  # backward: four products of the same sizes as forward's two
            q, k = args[1], args[2]
            b = q.shape[0] * q.shape[1]
            for _ in range(2):
                self.calls.append(("bmm", ((b, q.shape[2], q.shape[3]), (b, q.shape[3], k.shape[2]))))
                self.calls.append(("bmm", ((b, q.shape[2], k.shape[2]), (b, k.shape[2], q.shape[3]))))
        return func(*args, **kwargs)


def _flops(kind: str, shapes: tuple) -> int:
    a, b = shapes
    if kind == "mm":
        return 2 * a[0] * a[1] * b[1]
    return 2 * a[0] * a[1] * a[2] * b[2]


def make_batch(batch: int, set_size: int, in_dim: int, masked: bool, seed: int = 0, device="cpu"):
    """Random sets; with ``masked`` the sizes are uniform in [set_size/2, set_size] and the rest is padding."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, set_size, in_dim, generator=g)
    mask = None
    if masked:
        sizes = torch.randint(set_size // 2, set_size + 1, (batch,), generator=g)
        sizes[0] = set_size
        mask = torch.arange(set_size)[None] < sizes[:, None]
        mask = mask.to(device)
    return x.to(device), mask


def useful_flops(model, x, mask) -> int:
    """Forward + backward matmul/attention FLOPs over valid elements: each set run alone, unpadded.

    Counted from the shapes of the matrix products and attention calls one training step executes
    (:class:`MatmulRecorder`; attention is its two products forward and four backward), so fused attention
    kernels are counted like the products they replace.
    """
    total = 0
    for b in range(x.shape[0]):
        xb = x[b : b + 1] if mask is None else x[b : b + 1, mask[b]]
        rec = MatmulRecorder()
        with rec:
            model(xb).float().sum().backward()
        total += sum(_flops(kind, shapes) for kind, shapes in rec.calls)
    model.zero_grad(set_to_none=True)
    return total


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def bench(model_name: str = "deepsets++", depth: int | None = None, batch: int = 8, set_size: int = 1000,
          in_dim: int = 2, masked: bool = False, device: str = "cpu", precision: str = "32",
          compile: bool | str = False, warmup: int = 3, repeats: int = 15, seed: int = 0, **model_kw) -> dict:
    from .factory import create_model
    from .models.base import count_parameters

    torch.manual_seed(seed)
    model = create_model(model_name, in_dim, 1, depth=depth, **model_kw).to(device).train()
    x, mask = make_batch(batch, set_size, in_dim, masked, seed, device)
    y = torch.randn(batch, 1, device=device)
    flops = useful_flops(model, x, mask)
    from .train.module import make_adam

    opt = make_adam(model.parameters(), 1e-4)
    amp = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
    if precision not in amp:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(amp)}")
    dtype = amp[precision]
    ctx = (lambda: torch.autocast(torch.device(device).type, dtype=dtype)) if dtype else nullcontext
    mode = compile if isinstance(compile, str) else ("default" if compile else None)
    fwd = torch.compile(model, mode=mode) if mode else model

    def step(xb=x, mb=mask, net=fwd):
        with ctx():
            loss = torch.nn.functional.mse_loss(net(xb, mb).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # Padded batches are also compared with full sets of the same padded size, timed in the same loop.
    x_full = make_batch(batch, set_size, in_dim, False, seed, device)[0] if masked else None

    rec = MatmulRecorder()
    with rec:  # the eager model: same matmul shapes, and no compilation under a dispatch mode
        step(net=model)
    calls = rec.calls
    gemm_flops = sum(_flops(k, s) for k, s in calls)

    def operands(dt):
        return [(kind, torch.randn(*a, device=device, dtype=dt), torch.randn(*b, device=device, dtype=dt))
                for kind, (a, b) in calls]

    def replay(ops):
        for kind, a, b in ops:
            (torch.mm if kind == "mm" else torch.bmm)(a, b)

    def time_replay(ops, n=repeats):
        for _ in range(2):
            replay(ops)
        times = []
        for _ in range(n):
            _sync(device)
            t0 = time.perf_counter()
            replay(ops)
            _sync(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    tensors = operands(torch.float32)

    for _ in range(warmup):
        step(), replay(tensors)
        if masked:
            step(x_full, None)
    step_t, gemm_t, full_t = [], [], []
    for _ in range(repeats):  # interleaved: a load change affects all series alike
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        t1 = time.perf_counter()
        replay(tensors)
        _sync(device)
        t2 = time.perf_counter()
        step_t.append(t1 - t0)
        gemm_t.append(t2 - t1)
        if masked:
            step(x_full, None)
            _sync(device)
            full_t.append(time.perf_counter() - t2)
    step_s, gemm_s = statistics.median(step_t), statistics.median(gemm_t)
    valid = int(mask.sum()) if mask is not None else batch * set_size
    extra = {}
    if dtype is not None:  # mixed precision: also the matmul rate in the autocast dtype, same shapes
        del tensors
        low_s = time_replay(operands(dtype))
        extra = {"gemm_amp_gflops_per_s": round(gemm_flops / 1e9 / low_s, 3),
                 "ratio_amp": round((flops / step_s) / (gemm_flops / low_s), 4)}
    padded = {}
    if masked:
        full_s = statistics.median(full_t)
        padded = {
            "full_step_ms": round(full_s * 1e3, 3),
            "full_us_per_valid_element": round(full_s * 1e6 / (batch * set_size), 4),
            # time per valid element, padded batch over full sets (1.0 = padding costs nothing)
            "padded_cost_per_valid_element": round((step_s / valid) / (full_s / (batch * set_size)), 4),
        }
    return {
        "model": model_name, "depth": model.config.depth, "batch": batch, "set_size": set_size, "in_dim": in_dim,
        "masked": masked, "valid_elements": valid, "device": device, "precision": precision, "compile": bool(mode),
        "compile_mode": mode, "threads": torch.get_num_threads(), "params": count_parameters(model),
        "step_ms": round(step_s * 1e3, 3), "step_ms_min": round(min(step_t) * 1e3, 3),
        "sets_per_s": round(batch / step_s, 3),
        "us_per_valid_element": round(step_s * 1e6 / valid, 4),
        "useful_gflop": round(flops / 1e9, 4), "gflops_per_s": round(flops / 1e9 / step_s, 3),
        "gemm_ms": round(gemm_s * 1e3, 3), "gemm_gflop": round(gemm_flops / 1e9, 4),
        "gemm_gflops_per_s": round(gemm_flops / 1e9 / gemm_s, 3),
        "ratio": round((flops / step_s) / (gemm_flops / gemm_s), 4),
        "torch": torch.__version__, "repeats": repeats,
        "set_norm_kernels": _kernels.name(), "malloc_tuned": allocator_tuned(), **extra, **padded,
    }


def add_bench_command(sub) -> None:
    p = sub.add_parser("bench", help="training-step speed vs this machine's matmul speed (JSON)")
    p.add_argument("--model", default="deepsets++")
    p.add_argument("--depth", type=int)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--set-size", type=int, default=1000)
    p.add_argument("--in-dim", type=int, default=2)
    p.add_argument("--norm")
    p.add_argument("--masked", action="store_true", help="set sizes uniform in [N/2, N], padded to N")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"])
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile the model; optional mode, e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    kw = {"norm": args.norm} if args.norm else {}
    r = bench(args.model, args.depth, args.batch, args.set_size, args.in_dim, args.masked, args.device,
              args.precision, args.compile, args.warmup, args.repeats, **kw)
    if not args.json:
        print(f"{r['model']} depth {r['depth']}: {r['step_ms']:.1f} ms/step, {r['sets_per_s']:.1f} sets/s, "
              f"{r['gflops_per_s']:.1f} useful GFLOP/s vs {r['gemm_gflops_per_s']:.1f} GFLOP/s matmul "
              f"(ratio {r['ratio']:.2f})")
    print(json.dumps(r))
    return 0
