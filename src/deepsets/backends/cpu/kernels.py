"""Fused CPU kernels for set norm (optionally followed by ReLU), in C with OpenMP (``setnorm.c``).

Set norm reduces over a whole set (all its elements x all features), so in eager PyTorch its forward and
backward take several memory-bound passes over ``[rows, D]`` activations, each writing a fresh temporary.
The kernels do the same maths in the fewest passes, in parallel over chunks of rows:

- forward: per chunk, the sum and the centered sum of squares (two passes over a chunk that is still in
  cache), combined exactly per set in float64 (Chan et al.), then one pass ``y = max(x a_bd + s_bd, 0)``;
- backward: one pass for the per-set, per-feature sums ``sum_n G`` and ``sum_n G x``, one pass for ``dx``
  (the ReLU's gate is recomputed from ``x``, so the output is not read again);
- optionally the forward also writes a copy of ``x`` (the residual stream of a pre-norm block) and the
  backward adds that copy's gradient to ``dx`` in its output pass.

Rows of a set are contiguous (``offsets[b]:offsets[b+1]``): this covers unpadded batches ``[B, N, D]``, the
packed rows of padded batches, and padded batches with a row mask (padded rows are skipped). float32 and
float64 on CPU; anything else (and any machine where the kernels cannot be built) uses the eager code in
the PyTorch ops of :mod:`.functions`, which compute the same thing.

Layer-level kernels (same C file; used through :mod:`.functions`) go one step
further: a set norm and the linear layer it feeds run as one call. Rows are cut into tiles of at most 256 rows
(a tile never spans two sets); each thread normalizes a tile into a buffer that stays in its cache and
multiplies it there with one single-threaded call of the BLAS routine PyTorch itself uses (``sgemm_`` /
``dgemm_``, found in ``libtorch_cpu`` and checked against ``torch.mm`` before first use), and takes the
statistics of what it writes while the tile is in cache. The backward pass recomputes the normalized tiles
instead of reading saved ones. Where the routine cannot be found the layers run op by op.
``DEEPSETS_KERNELS=norm`` keeps the set-norm kernels and turns the layer-level ones off.

Build: on first use the C file is compiled with the system C compiler (``$CC`` or ``cc``; about a second)
into a per-user cache (``$DEEPSETS_CACHE`` or ``~/.cache/deepsets``), keyed by the source, the flags and the
CPU. It links the OpenMP runtime that PyTorch has already loaded, so it runs on PyTorch's own threads (a
second thread pool would fight PyTorch's for the cores). ``DEEPSETS_KERNELS=0`` turns the kernels off.
(``torch.utils.cpp_extension`` would need ninja and a build of PyTorch's C++ headers, about a minute, for
two plain C functions.)
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

_TYPES = {torch.float32: "float", torch.float64: "double"}
_LIBS: dict[torch.dtype, ctypes.CDLL | None] = {}


def enabled() -> bool:
    """False when turned off with ``DEEPSETS_KERNELS=0``."""
    return os.environ.get("DEEPSETS_KERNELS", "1") != "0"


def blocks_enabled() -> bool:
    """Whether the layer-level kernels may be used: off with ``DEEPSETS_KERNELS=0`` or ``=norm`` (set-norm kernels
    only)."""
    return os.environ.get("DEEPSETS_KERNELS", "1") not in ("0", "norm")


def applies(x: torch.Tensor) -> bool:
    """Whether the fused kernels handle this input (CPU, float32/float64, built, not turned off)."""
    return (
        x.device.type == "cpu" and x.dtype in _TYPES and enabled() and _lib(x.dtype) is not None
    )


def name() -> str:
    """Which implementation float32 CPU tensors get: ``"c+blocks"`` (set-norm kernels and the fused Deep Sets++
    block), ``"c"`` (set-norm kernels) or ``"eager"``."""
    if not enabled() or _lib(torch.float32) is None:
        return "eager"
    return "c+blocks" if blocks_enabled() and _gemm(torch.float32) is not None else "c"


def cache_dir() -> Path:
    root = os.environ.get("DEEPSETS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "deepsets"
    )
    return Path(root) / "kernels"


def _cpu_id() -> str:
    """What ``-march=native`` depends on: a build is reused only on the same kind of CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc.split()[0]):
            return cc
    return None


def _build(ctype: str) -> Path:
    source = (Path(__file__).with_name("setnorm.c")).read_bytes()
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    flags = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", f"-DREAL={ctype}"]
    key = hashlib.sha256(b"\0".join([source, " ".join([cc, *flags]).encode(), _cpu_id().encode(),
                                     sys.platform.encode()])).hexdigest()[:16]
    out = cache_dir() / f"setnorm_{ctype}_{key}.so"
    if out.exists():
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home: build in a per-user temporary folder instead
        out = Path(tempfile.gettempdir()) / f"deepsets-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}" / out.name
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src, so = Path(tmp) / "setnorm.c", Path(tmp) / out.name
        src.write_bytes(source)
        subprocess.run([*cc.split(), *flags, "-o", str(so), str(src), "-lm"], check=True, capture_output=True,
                       timeout=300)
        os.replace(so, out)  # atomic: concurrent builders never see a partial file
    return out


def _lib(dtype: torch.dtype) -> ctypes.CDLL | None:
    if dtype in _LIBS:
        return _LIBS[dtype]
    lib = None
    try:
        lib = ctypes.CDLL(str(_build(_TYPES[dtype])))
        p, i64, dbl, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
        lib.setnorm_forward.argtypes = [p, p, p, p, i64, i64, p, p, dbl, c_int, p, p, p]
        lib.setnorm_backward.argtypes = [p, c_int, p, p, p, i64, i64, p, p, p, p, p, p, p, p]
        lib.setnorm_forward.restype = lib.setnorm_backward.restype = c_int
        lib.dsblock_forward.argtypes = [p, p, p, i64, i64, p, p, p, p, p, p, dbl, p, c_int, p, p, p, p]
        lib.dsblock_backward.argtypes = [p, p, p, p, p, i64, i64, p, p, p, p, p, p, p, p, p, p, p, p, p, p, p, p]
        lib.dsblock_forward.restype = lib.dsblock_backward.restype = c_int
        lib.normlinear_forward.argtypes = [p, p, p, p, i64, i64, i64, p, p, p, p, dbl, c_int, p, c_int, p, p, p]
        lib.normlinear_backward.argtypes = [p, p, p, p, p, i64, i64, i64, p, p, p, c_int, c_int, p, p, p, p, p, p, p,
                                            p]
        lib.normlinear_forward.restype = lib.normlinear_backward.restype = c_int
        lib.huge_moments.argtypes = [p, i64, i64, p]
        lib.huge_sums.argtypes = [p, p, i64, i64, p, p, p, p, p]
        lib.huge_block.argtypes = [p, p, i64, i64, p, p, p, p, p, p, dbl, p]
        lib.huge_moments.restype = lib.huge_sums.restype = lib.huge_block.restype = c_int
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        warnings.warn(
            f"deepsets: fused set-norm kernels unavailable ({err}{': ' + detail.decode()[:300] if detail else ''}); "
            f"using the eager implementation (same results, slower on CPU)", RuntimeWarning, stacklevel=3,
        )
        lib = None
    _LIBS[dtype] = lib
    return lib


def _ptr(t) -> int:
    return t.data_ptr() if isinstance(t, torch.Tensor) else t.ctypes.data


def _opt(t) -> int | None:
    return None if t is None else _ptr(t)


def set_norm_forward(x2d: torch.Tensor, offsets: np.ndarray, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                     relu: bool, out: torch.Tensor, valid: torch.Tensor | None = None,
                     copy: torch.Tensor | None = None):
    """Write set norm (+ ReLU) of contiguous rows ``x2d [T, D]`` into ``out``; return float64 ``(mean, rstd)``.

    Set ``b`` is rows ``offsets[b]:offsets[b+1]`` (``offsets``: int64 NumPy array ``[B + 1]``). ``valid``: an
    optional contiguous bool ``[T]``; rows where it is False are padding (ignored, zero output). ``copy``: an
    optional ``[T, D]`` buffer that receives ``x2d`` in the same pass.
    """
    B, D = offsets.shape[0] - 1, x2d.shape[1]
    mean, rstd = torch.empty(2, B, dtype=torch.float64)
    rc = _lib(x2d.dtype).setnorm_forward(_ptr(x2d), _ptr(out), _ptr(offsets), _opt(valid), B, D, _ptr(weight),
                                         _ptr(bias), float(eps), int(relu), _ptr(mean), _ptr(rstd), _opt(copy))
    if rc:
        raise MemoryError("set norm kernel: out of memory")
    return mean, rstd


def set_norm_backward(grad: torch.Tensor, relu: bool, x2d: torch.Tensor, offsets: np.ndarray, weight: torch.Tensor,
                      bias: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, valid: torch.Tensor | None = None,
                      grad_copy: torch.Tensor | None = None):
    """``(dx, dweight, dbias)`` of :func:`set_norm_forward` with the same ``relu``, ``weight``, ``bias`` and its
    float64 ``mean`` and ``rstd`` (the ReLU's gate is recomputed from ``x2d``). ``grad_copy``: the gradient
    reaching the forward's ``copy``, added to ``dx`` in the same pass.
    """
    B, D = offsets.shape[0] - 1, x2d.shape[1]
    g = grad.contiguous()
    dx = torch.empty_like(x2d)
    dwb = torch.empty(2, D, dtype=x2d.dtype)  # weight and bias gradients (summed in double by the kernel)
    dw, db = dwb[0], dwb[1]
    gc = None if grad_copy is None else grad_copy.contiguous()
    rc = _lib(x2d.dtype).setnorm_backward(_ptr(g), int(relu), _ptr(x2d), _ptr(offsets), _opt(valid), B, D,
                                          _ptr(weight), _ptr(bias), _ptr(mean), _ptr(rstd), _opt(gc), _ptr(dx),
                                          _ptr(dw), _ptr(db))
    if rc:
        raise MemoryError("set norm kernel: out of memory")
    return dx, dw, db


# --- layer-level kernels: the BLAS routine they call ------------------------------------------------------------

_GEMM: dict[torch.dtype, int | None] = {}
_GEMM_NAMES = {torch.float32: "sgemm_", torch.float64: "dgemm_"}


def _blas_library() -> ctypes.CDLL | None:
    """The library holding the BLAS that PyTorch's CPU matrix products use (``libtorch_cpu``)."""
    libdir = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        if (libdir / name).exists():
            return ctypes.CDLL(str(libdir / name))
    return None


def _gemm(dtype: torch.dtype) -> int | None:
    """Address of the BLAS ``?gemm_`` routine for ``dtype``, after a check against ``torch.mm``; else None."""
    if dtype in _GEMM:
        return _GEMM[dtype]
    addr = None
    try:
        blas = _blas_library()
        fn = getattr(blas, _GEMM_NAMES[dtype]) if blas is not None else None
        if fn is not None:
            addr = ctypes.cast(fn, ctypes.c_void_p).value
            if not _gemm_agrees(addr, dtype):
                addr = None
    except (OSError, AttributeError):
        addr = None
    _GEMM[dtype] = addr
    return addr


def _gemm_agrees(addr: int, dtype: torch.dtype) -> bool:
    """Run ``C = A B^T`` (row-major) through the routine at ``addr`` and compare with ``torch.mm``."""
    real = ctypes.c_float if dtype == torch.float32 else ctypes.c_double
    ptr, i64p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, i64p, i64p, i64p, ctypes.POINTER(real), ptr, i64p,
                          ptr, i64p, ctypes.POINTER(real), ptr, i64p)(addr)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=g, dtype=dtype), torch.randn(4, 3, generator=g, dtype=dtype)
    c = torch.full((5, 4), float("nan"), dtype=dtype)
    M, N, K = (ctypes.c_int64(v) for v in (5, 4, 3))
    one, zero = real(1.0), real(0.0)
    fn(b"T", b"N", ctypes.byref(N), ctypes.byref(M), ctypes.byref(K), ctypes.byref(one), b.data_ptr(), ctypes.byref(K),
       a.data_ptr(), ctypes.byref(K), ctypes.byref(zero), c.data_ptr(), ctypes.byref(N))
    return bool(torch.allclose(c, a @ b.t()))


def block_applies(x: torch.Tensor) -> bool:
    """Whether the layer-level kernels handle ``x`` (the set-norm kernels apply and the BLAS routine was found)."""
    return applies(x) and _gemm(x.dtype) is not None


# --- a whole clean-path Deep Sets++ block (setnorm.c: dsblock_forward / dsblock_backward) -------------------------


def ds_block_forward(x2d: torch.Tensor, offsets: np.ndarray, params, eps: float, stats_x: torch.Tensor | None):
    """One clean-path Deep Sets++ block ``out = x + W2 relu(SN2(W1 relu(SN1(x))))`` on rows ``x2d [T, D]``.

    ``params``: ``(w1, b1, W1, w2, b2, W2)`` (norm weights and biases, linear weights ``[D, D]``), contiguous and
    of ``x2d``'s type. ``stats_x``: float64 ``[2, B]`` (per-set mean and rstd of ``x2d``) when known, else None.
    Returns ``(out, t, stats_x, stats_t, stats_out)``: ``t = W1 relu(SN1(x))`` is what the backward needs.
    """
    B, D = offsets.shape[0] - 1, x2d.shape[1]
    have = stats_x is not None
    st_x = stats_x if have else torch.empty(2, B, dtype=torch.float64)
    st_t, st_out = torch.empty(2, 2, B, dtype=torch.float64)
    t, out = torch.empty_like(x2d), torch.empty_like(x2d)
    rc = _lib(x2d.dtype).dsblock_forward(_gemm(x2d.dtype), _ptr(x2d), _ptr(offsets), B, D, *map(_ptr, params),
                                         float(eps), _ptr(st_x), int(have), _ptr(t), _ptr(st_t), _ptr(out),
                                         _ptr(st_out))
    if rc:
        raise MemoryError("Deep Sets++ block kernel: out of memory")
    return out, t, st_x, st_t, st_out


def ds_block_backward(grad: torch.Tensor, x2d: torch.Tensor, t: torch.Tensor, offsets: np.ndarray, params,
                      stats_x: torch.Tensor, stats_t: torch.Tensor):
    """Gradients of :func:`ds_block_forward`: ``(dx, dw1, db1, dW1, dw2, db2, dW2)``."""
    B, D = offsets.shape[0] - 1, x2d.shape[1]
    g = grad.contiguous()
    gbuf, dx = torch.empty_like(x2d), torch.empty_like(x2d)
    dW = torch.empty(2, D, D, dtype=x2d.dtype)
    dv = torch.empty(4, D, dtype=x2d.dtype)
    rc = _lib(x2d.dtype).dsblock_backward(_gemm(x2d.dtype), _ptr(g), _ptr(x2d), _ptr(t), _ptr(offsets), B, D,
                                          *map(_ptr, params), _ptr(stats_x), _ptr(stats_t), _ptr(gbuf), _ptr(dx),
                                          _ptr(dW[0]), _ptr(dW[1]), *(_ptr(v) for v in dv))
    if rc:
        raise MemoryError("Deep Sets++ block kernel: out of memory")
    return dx, dv[0], dv[1], dW[0], dv[2], dv[3], dW[1]


# --- set norm feeding a linear layer (setnorm.c: normlinear_forward / normlinear_backward) -----------------------

RELU_IN, RELU_OUT, RESIDUAL = 1, 2, 4  # flags of norm_linear_forward


def norm_linear_forward(x2d: torch.Tensor, offsets: np.ndarray, w, b, W, bias, eps: float, flags: int,
                        stats_x: torch.Tensor | None, want_stats: bool = False, valid: torch.Tensor | None = None,
                        out: torch.Tensor | None = None, want_gate: bool = True):
    """``y = [x +] act2(W act1(SN(x)) [+ bias])`` on rows ``x2d [T, D]``, ``W [N, D]``; ``flags``: ``RELU_IN``
    (ReLU after the norm), ``RELU_OUT`` (ReLU after the product), ``RESIDUAL`` (add ``x``; ``N == D``).

    Returns ``(y, gate, stats_x, stats_y)``: ``gate`` (uint8 ``[T, N]``, with ``RELU_OUT``) is what the backward
    needs; ``stats_x`` the float64 ``[2, B]`` mean and rstd of ``x`` (given or computed); ``stats_y`` those of
    ``y`` when ``want_stats`` (residual only), else None. ``valid``: optional contiguous bool ``[T]``; rows where
    it is False are padding (left out of the statistics, normalized to zero: their ``y`` is the bias).
    ``out``: a contiguous ``[T, N]`` buffer for ``y`` (not ``x2d``); ``want_gate=False``: no gate (inference).
    """
    B, D = offsets.shape[0] - 1, x2d.shape[1]
    N = W.shape[0]
    have = stats_x is not None
    st_x = stats_x if have else torch.empty(2, B, dtype=torch.float64)
    st_y = torch.empty(2, B, dtype=torch.float64) if want_stats else None
    y = torch.empty(x2d.shape[0], N, dtype=x2d.dtype) if out is None else out
    gate = torch.empty(x2d.shape[0], N, dtype=torch.uint8) if flags & RELU_OUT and want_gate else None
    rc = _lib(x2d.dtype).normlinear_forward(_gemm(x2d.dtype), _ptr(x2d), _ptr(offsets), _opt(valid), B, D, N,
                                            _ptr(w), _ptr(b), _ptr(W), _opt(bias), float(eps), int(flags),
                                            _ptr(st_x), int(have), _ptr(y), _opt(gate), _opt(st_y))
    if rc:
        raise MemoryError("set norm + linear kernel: out of memory")
    return y, gate, st_x, st_y


def norm_linear_backward(grad: torch.Tensor, x2d: torch.Tensor, offsets: np.ndarray, w, b, W, has_bias: bool,
                         flags: int, stats_x: torch.Tensor, gate: torch.Tensor | None, valid: torch.Tensor | None = None):
    """Gradients of :func:`norm_linear_forward`: ``(dx, dw, db, dW, dbias)`` (``dbias`` None without a bias)."""
    B, D = offsets.shape[0] - 1, x2d.shape[1]
    N = W.shape[0]
    g = grad.contiguous()
    gbuf, dx = torch.empty_like(x2d), torch.empty_like(x2d)
    dW = torch.empty(N, D, dtype=x2d.dtype)
    dv = torch.empty(2 * D + N, dtype=x2d.dtype)
    dw, db, dbias = dv[:D], dv[D:2 * D], dv[2 * D:]
    rc = _lib(x2d.dtype).normlinear_backward(_gemm(x2d.dtype), _ptr(g), _ptr(x2d), _ptr(offsets), _opt(valid), B, D,
                                             N, _ptr(w), _ptr(b), _ptr(W), int(has_bias), int(flags), _ptr(stats_x),
                                             _opt(gate), _ptr(gbuf), _ptr(dx), _ptr(dW), _ptr(dbias), _ptr(dw),
                                             _ptr(db))
    if rc:
        raise MemoryError("set norm + linear kernel: out of memory")
    return dx, dw, db, dW, (dbias if has_bias else None)


# --- one huge set, in place (setnorm.c: huge_moments / huge_sums / huge_block; used by deepsets.backends.huge) ----


def huge_moments(x2d: torch.Tensor) -> tuple[float, float]:
    """Mean and variance of all values of the contiguous rows ``x2d [n, D]`` (one set)."""
    st = torch.empty(2, dtype=torch.float64)
    if _lib(x2d.dtype).huge_moments(_ptr(x2d), x2d.shape[0], x2d.shape[1], _ptr(st)):
        raise MemoryError("huge-set kernel: out of memory")
    return float(st[0]), float(st[1])


def huge_sums(x2d: torch.Tensor, a: torch.Tensor, s: torch.Tensor, shift: torch.Tensor | None, gram: bool):
    """With ``u = relu(x a + s) - shift`` per row: float64 ``(sum_n u [D], sum_n u u^T [D, D] or None)``."""
    D = x2d.shape[1]
    out = torch.empty(D + (D * D if gram else 0), dtype=torch.float64)
    total, g = out[:D], (out[D:].view(D, D) if gram else None)
    if _lib(x2d.dtype).huge_sums(_gemm(x2d.dtype), _ptr(x2d), x2d.shape[0], D, _ptr(a), _ptr(s), _opt(shift),
                                 _ptr(total), _opt(g)):
        raise MemoryError("huge-set kernel: out of memory")
    return total, g


def huge_block(x2d: torch.Tensor, a1, s1, W1, a2, s2, W2, eps: float) -> tuple[float, float]:
    """``x2d <- x2d + W2 relu(t a2 + s2)``, ``t = W1 relu(x2d a1 + s1)``, in place; returns the new rows' mean and
    rstd. All arguments contiguous, of ``x2d``'s type (``W1``, ``W2``: ``[D, D]``)."""
    st = torch.empty(2, dtype=torch.float64)
    if _lib(x2d.dtype).huge_block(_gemm(x2d.dtype), _ptr(x2d), x2d.shape[0], x2d.shape[1], *map(_ptr, (a1, s1, W1, a2, s2, W2)),
                                  float(eps), _ptr(st)):
        raise MemoryError("huge-set kernel: out of memory")
    return float(st[0]), float(st[1])
