"""The GPU backend under kernels.gpu: CUDA sources, compiled kernels, device arrays, launch geometry and the checks
every launcher shares.

Sources: kernels/cuda/<op>.cu, one per op and named like the CPU module (conv.cu beside kernels/conv.py), forward and
backward kernels together, CUDA C for NVRTC, every kernel extern "C", constants as #defines the launchers set
(`Defines`). A source may `#include "x.cuh"` from kernels/cuda (gemm.cuh: the tile machinery sgemm and conv2d_igemm
share); `cuda_source` inlines it, so NVRTC and the CPU emulator get one text and nvcc compiles each .cu as it is.
`CupyRuntime` compiles each source with NVRTC through ``cupy.RawModule`` once per (device, constant set) and keeps
the module (CuPy also caches the binary on disk). `runtime()` returns the active runtime, CuPy's by default, and
raises GPUBackendError (a RuntimeError) saying what is missing when CuPy or a device is; `use_runtime` swaps in
another (the tests run the launchers over a CPU emulation of the sources, tests/kernels/cuda_emu.py). Nothing here
imports CuPy until `runtime()` is called.

Launch geometry, pure Python and tested without a GPU: `Tile` and `TILES` (the block tiles of sgemm and
conv2d_igemm), `choose_tile`, `split_k` and `gemm_plan` (tile, split-K and grid of a GEMM), `flat_launch` (grid of a
grid-stride kernel) and `chunks` (cutting work so every launch indexes fewer than 2^31 elements).

Launcher plumbing: `device_input` (a checked float32 device array), `device_output` (a given output checked, or a
new one), `check_need` (a gradient array given without its need_* flag) and `launch_flat` (a grid-stride kernel
over a flat array, in launches below 2^30 elements).
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

CUDA_DIR = Path(__file__).resolve().parents[1] / "cuda"
SOURCES = ("activations", "conv", "elementwise", "fc", "gemm", "loss", "lrn", "optim", "pool")
INCLUDE = re.compile(r'^#include "(\w+\.cuh)"[ \t]*$', re.MULTILINE)
THREADS = 256  # threads per block of the grid-stride kernels
INDEX_LIMIT = 2**31 - 1  # elements of one array in one launch (32-bit indices)
FLAT_LIMIT = 2**30  # elements per grid-stride launch (index + grid stride must stay below 2^31)

Defines = tuple[tuple[str, int], ...]
Grid = tuple[int, int, int]


# -- runtime -----------------------------------------------------------------------------------------
class Runtime(Protocol):
    """What the launchers need from a device: arrays, pointers and compiled kernels."""

    name: str
    sm_count: int

    def empty(self, shape: tuple[int, ...], dtype: Any = np.float32) -> Any: ...
    def asarray(self, host: np.ndarray) -> Any: ...
    def to_host(self, a: Any) -> np.ndarray: ...
    def upload(self, dst: Any, host: np.ndarray) -> None: ...
    def is_array(self, a: Any) -> bool: ...
    def contiguous(self, a: Any, dtype: Any = np.float32) -> Any: ...
    def ptr(self, a: Any) -> int: ...
    def function(self, source: str, kernel: str, defines: Defines) -> Callable[..., None]: ...
    def synchronize(self) -> None: ...


@cache
def cuda_source(name: str) -> str:
    """The text of kernels/cuda/<name>.cu with each `#include "x.cuh"` of kernels/cuda replaced by that file's text
    (its `#pragma once` dropped: each header is inlined at most once per source)."""
    if name not in SOURCES:
        raise ValueError(f"no CUDA source named {name!r} (have: {', '.join(SOURCES)})")
    seen: set[str] = set()

    def inline(match: re.Match) -> str:
        header = match.group(1)
        if header in seen:
            return ""
        seen.add(header)
        text = (CUDA_DIR / header).read_text(encoding="utf-8").replace("#pragma once\n", "")
        return INCLUDE.sub(inline, text)

    return INCLUDE.sub(inline, (CUDA_DIR / f"{name}.cu").read_text(encoding="utf-8"))


def kernel_names(source: str) -> list[str]:
    """The extern "C" __global__ kernels of a CUDA source text, in order."""
    return re.findall(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(', source)


def define_options(defines: Defines) -> tuple[str, ...]:
    return tuple(f"-D{key}={value}" for key, value in defines)


class CupyRuntime:
    """CuPy arrays; kernels compiled by NVRTC through cupy.RawModule, cached per (device, source, constants).

    `upload` copies a host array into an existing device array through page-locked staging buffers: the host copies
    into a buffer (a few threads, casting to float32 on the way) overlap the DMA of the previous one on the current
    stream. A plain copy from pageable memory (cupy.asarray, torch's .to("cuda")) runs at 6.5-16 GB/s on the H200's
    host (benchmarks/gpu_notes.md); an input batch is often the largest transfer of a forward."""

    name = "cupy"
    STAGE_BYTES = 8 << 20  # one staging buffer; uploads below this are one plain copy
    STAGES = 3
    COPY_THREADS = 4

    def __init__(self, cupy: Any) -> None:
        self.cp = cupy
        self.sm_count = int(cupy.cuda.Device().attributes["MultiProcessorCount"])
        self._modules: dict[tuple, Any] = {}
        self._functions: dict[tuple, Callable[..., None]] = {}
        self._stages: list[tuple[Any, np.ndarray]] = []  # (pinned memory, float32 view), made on the first upload
        self._stage_done: list[Any] = []  # per buffer: the event after its last DMA, or None
        self._copiers: Any = None  # a ThreadPoolExecutor for the host copies
        self._upload_lock = threading.Lock()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (rt := ref()) is not None and rt._after_fork())

    def function(self, source: str, kernel: str, defines: Defines) -> Callable[..., None]:
        key = (self.cp.cuda.Device().id, source, defines)
        fn = self._functions.get((key, kernel))
        if fn is None:
            module = self._modules.get(key)
            if module is None:
                module = self._modules[key] = self.cp.RawModule(
                    code=cuda_source(source), options=define_options(defines)
                )
            fn = self._functions[(key, kernel)] = module.get_function(kernel)
        return fn

    def empty(self, shape: tuple[int, ...], dtype: Any = np.float32) -> Any:
        return self.cp.empty(shape, dtype=dtype)

    def asarray(self, host: np.ndarray) -> Any:
        return self.cp.asarray(host)

    def to_host(self, a: Any) -> np.ndarray:
        return self.cp.asnumpy(a)

    def upload(self, dst: Any, host: np.ndarray) -> None:
        """Copy `host` (any real dtype, cast to float32) into the C-contiguous float32 device array `dst` of the same
        number of elements, ordered on the current stream before whatever is launched next; returns once `host` has
        been read (the last DMA may still be running: the buffers are reused only after their events)."""
        src = np.ascontiguousarray(host).reshape(-1)
        if src.size != dst.size or dst.dtype != np.float32 or not dst.flags.c_contiguous:
            raise ValueError(f"upload: {host.shape} into a {dst.dtype} device array of shape {dst.shape}")
        if src.nbytes < self.STAGE_BYTES or src.dtype.kind not in "fiub":
            dst.set(np.ascontiguousarray(src, dtype=np.float32).reshape(dst.shape))
            return
        cp = self.cp
        with self._upload_lock, dst.device:  # dst's device and its current stream, as ndarray.set does
            if not self._stages:
                from concurrent.futures import ThreadPoolExecutor

                for _ in range(self.STAGES):
                    mem = cp.cuda.alloc_pinned_memory(self.STAGE_BYTES)
                    self._stages.append((mem, np.frombuffer(mem, np.float32, self.STAGE_BYTES // 4)))
                    self._stage_done.append(None)
                self._copiers = ThreadPoolExecutor(self.COPY_THREADS, thread_name_prefix="crema-upload")
            stream = cp.cuda.get_current_stream()
            step = self.STAGE_BYTES // 4
            base = int(dst.data.ptr)
            for i, start in enumerate(range(0, src.size, step)):
                slot = i % self.STAGES
                done = self._stage_done[slot]
                if done is not None:
                    done.synchronize()  # this buffer's previous DMA has finished
                n = min(step, src.size - start)
                buf = self._stages[slot][1]
                part = -(-n // self.COPY_THREADS)
                cuts = [(a, min(a + part, n)) for a in range(0, n, part)]
                copies = [self._copiers.submit(np.copyto, buf[a:b], src[start + a : start + b], casting="unsafe")
                          for a, b in cuts]  # fmt: skip
                try:
                    for c in copies:
                        c.result()
                finally:  # an error or an interrupt: no copy may still be writing the buffer once the lock is free
                    for c in copies:
                        c.cancel() or c.exception()
                cp.cuda.runtime.memcpyAsync(base + 4 * start, buf.ctypes.data, 4 * n,
                                            cp.cuda.runtime.memcpyHostToDevice, stream.ptr)  # fmt: skip
                event = cp.cuda.Event(disable_timing=True)
                event.record(stream)
                self._stage_done[slot] = event

    def _after_fork(self) -> None:
        """A forked child has none of the copy threads (their pool would wait for them forever) and must not reuse the
        parent's page-locked buffers: both are made again on its first upload."""
        self._stages, self._stage_done, self._copiers = [], [], None
        self._upload_lock = threading.Lock()

    def is_array(self, a: Any) -> bool:
        return isinstance(a, self.cp.ndarray)

    def contiguous(self, a: Any, dtype: Any = np.float32) -> Any:
        return self.cp.ascontiguousarray(a, dtype=dtype)

    def ptr(self, a: Any) -> int:
        return int(a.data.ptr)

    def synchronize(self) -> None:
        self.cp.cuda.get_current_stream().synchronize()


class GPUBackendError(RuntimeError):
    """The GPU backend cannot run here: no CuPy, no visible CUDA device, or a net it does not support."""


_active: Runtime | None = None


def _cupy_runtime() -> CupyRuntime:
    try:
        import cupy
    except ImportError as exc:
        raise GPUBackendError(
            "the GPU backend needs CuPy, which is not installed: pip install -e '.[gpu]' "
            "(cupy-cuda13x; use cupy-cuda12x on a CUDA 12 driver), or run with device 'cpu'"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except (RuntimeError, OSError) as exc:  # CUDARuntimeError (a RuntimeError): no driver, driver too old
        raise GPUBackendError(f"the GPU backend found no usable CUDA device ({exc}); run with device 'cpu'") from None
    if count == 0:
        raise GPUBackendError("the GPU backend found no CUDA device (CuPy sees 0 devices); run with device 'cpu'")
    return CupyRuntime(cupy)


def runtime() -> Runtime:
    """The active runtime (CuPy's unless `use_runtime` set another); GPUBackendError without CuPy or a device."""
    global _active
    if _active is None:
        _active = _cupy_runtime()
    return _active


def unavailable_reason() -> str | None:
    """None when `runtime()` works, else why not (for skips and CLI messages)."""
    try:
        runtime()
    except RuntimeError as exc:
        return str(exc)
    return None


@contextmanager
def use_runtime(rt: Runtime) -> Iterator[Runtime]:
    """Run the launchers on `rt` inside the block (tests: the CPU emulator)."""
    global _active
    previous, _active = _active, rt
    try:
        yield rt
    finally:
        _active = previous


def owns(a: Any) -> bool:
    """True when `a` is an array of the active runtime (never imports CuPy)."""
    return _active is not None and _active.is_array(a)


def to_device(host: np.ndarray) -> Any:
    """A C-contiguous float32 device copy of a host array (other dtypes are kept as they are)."""
    a = np.asarray(host)
    return runtime().asarray(np.ascontiguousarray(a, dtype=np.float32 if a.dtype.kind == "f" else a.dtype))


def to_host(a: Any) -> np.ndarray:
    return runtime().to_host(a)


def upload(dst: Any, host: np.ndarray) -> None:
    """Copy a host array into an existing float32 device array of as many elements (an input batch, every forward:
    no new device array, and on CuPy page-locked staging buffers instead of a copy from pageable memory)."""
    runtime().upload(dst, host)


def launch(rt: Runtime, source: str, kernel: str, defines: Defines, grid: Grid, block: Grid, args: tuple) -> None:
    """Run `kernel` of kernels/cuda/<source>.cu, compiled with `defines`, on `rt`: args are device arrays and NumPy
    scalars of the kernel's exact parameter types."""
    rt.function(source, kernel, defines)(grid, block, args)


# -- launcher plumbing -------------------------------------------------------------------------------
i32 = np.int32


def device_input(rt: Runtime, a: Any, what: str) -> Any:
    """`a` as a C-contiguous float32 device array; ValueError for host arrays (upload them once with to_device)."""
    if not rt.is_array(a):
        raise ValueError(
            f"{what}: expected a device array ({rt.name}), got {type(a).__name__} (use kernels.gpu.to_device)"
        )
    return rt.contiguous(a, np.float32)


def device_output(rt: Runtime, out: Any, shape: tuple[int, ...], what: str, dtype: Any = np.float32) -> Any:
    """`out` checked (a C-contiguous device array of `shape` and `dtype`), or a new uninitialised one when None."""
    if out is None:
        return rt.empty(shape, dtype)
    if not rt.is_array(out) or out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        got = f"{out.dtype} {out.shape}" if rt.is_array(out) else type(out).__name__
        raise ValueError(
            f"{what}: expected a C-contiguous {np.dtype(dtype).name} device array of shape {shape}, got {got}"
        )
    return out


def check_need(name: str, arr: Any, need: bool, what: str) -> None:
    """ValueError when a gradient array `name` is given but its need_<name> flag is False."""
    if arr is not None and not need:
        raise ValueError(f"{what}: {name} was given but need_{name} is False")


def launch_flat(rt: Runtime, source: str, kernel: str, args: tuple, n: int, tail: tuple = ()) -> None:
    """A grid-stride kernel (args..., n, *tail) over n elements: array arguments are viewed flat and cut into launches
    of at most FLAT_LIMIT elements; NumPy scalars pass as they are."""
    for s0, s1 in chunks(n, 1, FLAT_LIMIT):
        grid, block = flat_launch(s1 - s0, rt.sm_count)
        views = tuple(a if isinstance(a, np.generic) else a.reshape(-1)[s0:s1] for a in args)
        launch(rt, source, kernel, (), grid, block, (*views, i32(s1 - s0), *tail))


# -- launch geometry (pure Python) -------------------------------------------------------------------
@dataclass(frozen=True)
class Tile:
    """Block tile of sgemm / conv2d_igemm: BM x BN outputs, BK-deep K panels, TM x TN outputs per thread.

    `speed` is the tile's expected throughput relative to LARGE on a full GPU (fewer outputs per thread read
    shared memory more often): a planning guess, to be calibrated on the device with benchmarks/bench_gpu.py."""

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    speed: float = 1.0
    min_blocks: int = 2

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    def blocks(self, m: int, n: int, batch: int = 1) -> int:
        return ceil_div(m, self.bm) * ceil_div(n, self.bn) * batch

    def defines(self) -> Defines:
        shape = (("BM", self.bm), ("BN", self.bn), ("BK", self.bk), ("TM", self.tm), ("TN", self.tn))
        return (*shape, ("MIN_BLOCKS", self.min_blocks))


LARGE = Tile(128, 128, 8, 8, 8)  # 256 threads x 8 x 8 outputs: big problems
SMALL = Tile(64, 64, 16, 4, 4, speed=0.8)  # 256 threads x 4 x 4: four times the blocks of LARGE
SKINNY = Tile(32, 128, 16, 4, 8, speed=0.7)  # 128 threads x 4 x 8: few output channels (LeNet's 20 and 50)
TILES = (LARGE, SMALL, SKINNY)
MAX_SPLITS = 16


@dataclass(frozen=True)
class GemmPlan:
    tile: Tile
    splits: int  # K ranges summed with atomicAdd (1: plain stores, fused epilogue)
    k_chunk: int  # K per split (a multiple of tile.bk unless splits == 1)
    grid: Grid
    block: Grid


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for integers."""
    return -(-a // b)


def choose_tile(m: int, n: int, batch: int, sm_count: int) -> Tile:
    """The tile with the least expected time: padded rows (ceil(m / BM) * BM / m) over its speed, among the tiles
    that give every SM a block if any do (else among all: split-K then fills the SMs). Ties go to the larger tile."""
    full = [t for t in TILES if t.blocks(m, n, batch) >= sm_count] or list(TILES)
    return min(full, key=lambda t: ceil_div(m, t.bm) * t.bm / max(m, 1) / t.speed)


def split_k(m: int, n: int, k: int, batch: int, tile: Tile, sm_count: int) -> tuple[int, int]:
    """(splits, k_chunk): split K when the tiles alone leave SMs idle and K is deep (>= 16 panels), aiming at two
    blocks per SM with at least 8 panels per split; no empty split."""
    blocks = tile.blocks(m, n, batch)
    panels = ceil_div(k, tile.bk)
    if blocks >= sm_count or panels < 16:
        return 1, max(k, 1)
    splits = min(MAX_SPLITS, max(1, 2 * sm_count // blocks), panels // 8)
    return _splits_of(k, tile, splits)


def _splits_of(k: int, tile: Tile, splits: int) -> tuple[int, int]:
    if splits <= 1:
        return 1, max(k, 1)
    per = ceil_div(ceil_div(k, tile.bk), splits) * tile.bk
    return ceil_div(k, per), per


def gemm_plan(
    m: int, n: int, k: int, batch: int, sm_count: int, *, tile: Tile | None = None, splits: int | None = None
) -> GemmPlan:
    """Tile, split-K and grid for C (m x n, per batch entry) = A (m x k) B (k x n); `tile` / `splits` force a choice."""
    tile = tile or choose_tile(m, n, batch, sm_count)
    splits, k_chunk = split_k(m, n, k, batch, tile, sm_count) if splits is None else _splits_of(k, tile, splits)
    grid = (ceil_div(n, tile.bn), ceil_div(m, tile.bm), batch * splits)
    if grid[1] > 65535 or grid[2] > 65535:
        raise ValueError(f"gemm: grid {grid} exceeds CUDA's 65535 blocks in y or z (m={m}, batch={batch})")
    return GemmPlan(tile, splits, k_chunk, grid, (tile.threads, 1, 1))


def flat_launch(n: int, sm_count: int, threads: int = THREADS) -> tuple[Grid, Grid]:
    """Grid and block of a grid-stride kernel over n elements: one element per thread, at most 32 blocks per SM."""
    return (max(1, min(ceil_div(n, threads), 32 * sm_count)), 1, 1), (threads, 1, 1)


def chunks(count: int, per_item: int, limit: int = INDEX_LIMIT) -> list[tuple[int, int]]:
    """Split `count` items of `per_item` elements into [start, stop) ranges of at most `limit` elements each."""
    if per_item > limit:
        raise ValueError(f"one item of {per_item} elements exceeds the {limit} elements a launch can index")
    step = max(1, limit // max(per_item, 1))
    return [(s, min(s + step, count)) for s in range(0, count, step)]
