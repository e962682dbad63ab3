"""Process-level settings that make CPU training faster; the ``deepsets`` command applies them to itself.

**Allocator.** A training step allocates and frees hundreds of activation buffers of a few MB each. With
glibc's default malloc, buffers above its mmap threshold go straight back to the operating system when freed,
so the next one costs a page fault per 4 KiB page (about 1,000 faults for a ``[8000, 128]`` float32
activation), which on some machines takes longer than the arithmetic on it. :func:`tune_allocator` raises the
mmap and trim thresholds so freed buffers are reused (PyTorch's CPU performance guide suggests jemalloc or
tcmalloc for the same reason). The cost: the process keeps its peak heap instead of returning it early.

``deepsets.train.train`` applies it too. Other Python API users can call :func:`tune_allocator` once at start-up, or set the equivalent environment variable
before starting Python: ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824``.
``DEEPSETS_TUNE_MALLOC=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit systems
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h


def tune_allocator() -> bool:
    """Raise glibc malloc's mmap/trim thresholds for this process; True if applied (Linux with glibc only)."""
    if not sys.platform.startswith("linux") or os.environ.get("DEEPSETS_TUNE_MALLOC", "1") == "0":
        return allocator_tuned()
    return _mallopt()


@functools.cache
def _mallopt() -> bool:
    """Apply the thresholds (once per process: the allocator's settings are the process's)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` has been applied in this process."""
    return _mallopt.cache_info().currsize > 0 and _mallopt()
