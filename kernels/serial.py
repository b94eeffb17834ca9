"""Serial twins of parallel kernels, for work too small to share between threads.

A Numba ``parallel=True`` call costs a fixed fork and join of the threads more than the same loop compiled serially,
whatever the work, and the small steps of a batch-1 forward (pooling, the last inner product, softmax) are mostly
that overhead (figures: benchmarks/perf_notes.md). ``serial_twin(kernel)`` compiles the same Python source without
``parallel`` (``prange`` then runs as ``range``, so every output is computed by the same code in the same order: same
bits), under its own name so Numba's on-disk cache keeps both versions apart.

``SMALL_WORK``: below this many elements touched (or multiply-adds), the execution plan's runners take the twin.
``l2_bytes()``: this machine's L2 cache per core, for the kernels whose split depends on it.
"""

from __future__ import annotations

import functools
import types
from pathlib import Path

from numba import njit

SMALL_WORK = 32768  # elements read (pooling, softmax) or multiply-adds (inner product) of one call


@functools.cache
def l2_bytes(default: int = 512 << 10) -> int:
    """The first CPU's L2 cache in bytes (Linux sysfs), else `default` (Zen 3's 512 KB, where the kernels' constants
    were first tuned)."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index2/size").read_text().strip()
        return int(text[:-1]) << 10 if text.endswith("K") else int(text)
    except (OSError, ValueError):
        return default


@functools.cache
def serial_twin(kernel):
    """`kernel` (a Numba dispatcher compiled with parallel=True) recompiled serially, cached on disk as
    ``<name>_serial_twin``; closures keep their cell values (the pooling kernels' window constants)."""
    f = kernel.py_func
    g = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial_twin", f.__defaults__, f.__closure__)
    g.__qualname__ = f.__qualname__ + "_serial_twin"
    g.__module__ = f.__module__
    g.__doc__ = f.__doc__
    options = {k: v for k, v in kernel.targetoptions.items() if k not in ("parallel", "nopython")}
    return njit(cache=True, **options)(g)
