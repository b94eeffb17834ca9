"""The solver's fused GPU update (kernels/cuda/optim.cu): every learnable blob in flat device buffers, one launch.

Kernels: sumsq_segments + sum_partials (the global L2 gradient norm for clipping, float64 on the device) and sgd_fused
(clip, 1 / iter_size, L2 / L1 weight decay with decay_mult, lr_mult, SGD or Nesterov momentum; formulas in the .cu
file, the same float64 arithmetic as kernels/optim.py). Used by net/solver.py on device 'gpu'; other solver types
raise GPUBackendError (`unsupported_solver`). Tests: tests/kernels/test_gpu_backward.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kernels.gpu.backend import INDEX_LIMIT, GPUBackendError, Runtime, ceil_div, launch, runtime

__all__ = ["ALIGN", "SegmentedParams", "grad_norm", "sgd_update_fused", "unsupported_solver"]

REDUCE_THREADS = 256  # block of the shared-memory reductions (optim.cu default)
ALIGN = 64  # floats between segment starts of the flat buffers (256 bytes: float4 loads of the views stay aligned)
i32, f32, f64 = np.int32, np.float32, np.float64


class SegmentedParams:
    """Every learnable blob as a view of three flat device buffers (weights, gradients, history), so one launch
    updates them all. `sizes`: element count per blob; segment s is [offsets[s], offsets[s] + sizes[s]) with
    segment starts ALIGN floats apart; the kernels take segment s as [start s, start s + 1), gap included. `lr_mult` / `decay` (weight_decay * decay_mult) per blob.
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]], lr_mult: Sequence[float], decay: Sequence[float]) -> None:
        rt = runtime()
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        sizes = [math.prod(s) for s in self.shapes]
        starts, pos = [], 0
        for size in sizes:
            starts.append(pos)
            pos += ceil_div(max(size, 1), ALIGN) * ALIGN
        if pos >= INDEX_LIMIT:
            raise ValueError(f"solver: {pos} parameter elements exceed the fused update's 2^31 limit")
        self.total = pos
        self.starts = starts
        self.sizes = sizes
        self.w, self.g, self.h = rt.empty((pos,)), rt.empty((pos,)), rt.empty((pos,))
        for a in (self.w, self.g, self.h):
            a.fill(0)  # the gaps stay zero: the update maps (w, g, h) = 0 to 0, so segments may include them
        self._off = rt.asarray(np.array([*starts, pos], np.int32))
        self.lr_mult = rt.asarray(np.asarray(lr_mult, np.float64))
        self.decay = rt.asarray(np.asarray(decay, np.float64))
        self._lr_host = [float(v) for v in lr_mult]
        self.partial_blocks = 8

    def view(self, buf: Any, s: int) -> Any:
        """Segment s of one of the flat buffers, shaped like its blob."""
        return buf[self.starts[s] : self.starts[s] + self.sizes[s]].reshape(self.shapes[s])

    def __len__(self) -> int:
        return len(self.sizes)


def _segment_grid(params: SegmentedParams, rt: Runtime, blocks: int | None = None) -> tuple:
    """Grid (x, segments) of the fused kernels: x blocks per segment, enough for the largest blob (16 elements per
    thread) up to 8 per SM; smaller segments leave most of their blocks idle, which exit at once (a planning guess,
    unmeasured: bench on the device)."""
    if len(params) > 65535:
        raise ValueError(f"solver: {len(params)} learnable blobs exceed the fused update's 65535 segments")
    most = max(params.sizes, default=1)
    x = blocks if blocks is not None else max(1, min(ceil_div(most, 256 * 16), 8 * rt.sm_count))
    return (x, len(params), 1), (256, 1, 1)


def grad_norm(params: SegmentedParams) -> float:
    """The global L2 norm of the gradients of the blobs with lr_mult != 0: float64 sums on the device, one number
    read back."""
    rt = runtime()
    if not len(params):
        return 0.0
    (gx, gy, _), block = _segment_grid(params, rt, params.partial_blocks)
    partial = rt.empty((gx * gy,), np.float64)
    launch(rt, "optim", "sumsq_segments", (), (gx, gy, 1), block, (params.g, params._off, params.lr_mult, partial))
    total = rt.empty((1,), np.float64)
    launch(rt, "optim", "sum_partials", (), (1, 1, 1), (REDUCE_THREADS, 1, 1), (partial, total, i32(gx * gy)))
    return math.sqrt(float(rt.to_host(total)[0]))


def sgd_update_fused(
    params: SegmentedParams,
    rate: float,
    momentum: float,
    *,
    scale: float = 1.0,
    clip: float = 1.0,
    l1: bool = False,
    nesterov: bool = False,
) -> None:
    """One SGD (or Nesterov) step over every segment in a single launch: clip, scale (1 / iter_size), L2 / L1 decay,
    momentum; leaves the applied step in the gradient buffer, as the CPU kernels do (formulas in optim.cu)."""
    rt = runtime()
    if not len(params):
        return
    grid, block = _segment_grid(params, rt)
    args = (params.w, params.g, params.h, params._off, params.lr_mult, params.decay, f64(rate), f64(momentum))
    args += (f64(scale), f32(clip), i32(bool(l1)), i32(bool(nesterov)))
    launch(rt, "optim", "sgd_fused", (), grid, block, args)


def unsupported_solver(kind: str) -> GPUBackendError:
    return GPUBackendError(
        f"solver type {kind} has no GPU update yet (the GPU solver runs SGD and Nesterov); run with device 'cpu'"
    )
