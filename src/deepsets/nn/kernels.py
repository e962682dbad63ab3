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
:mod:`deepsets.nn.norms`, which computes the same thing.

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


def applies(x: torch.Tensor) -> bool:
    """Whether the fused kernels handle this input (CPU, float32/float64, built, not turned off)."""
    return (
        x.device.type == "cpu" and x.dtype in _TYPES and enabled() and _lib(x.dtype) is not None
    )


def name() -> str:
    """Which set-norm implementation float32 CPU tensors get: ``"c"`` (fused kernels) or ``"eager"``."""
    return "c" if enabled() and _lib(torch.float32) is not None else "eager"


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
