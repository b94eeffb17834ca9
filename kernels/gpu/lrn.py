"""GPU local response normalisation (kernels/cuda/lrn.cu), forward and backward, same signatures as kernels.lrn."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.gpu.backend import FLAT_LIMIT, chunks, device_input, device_output, flat_launch, launch, runtime
from kernels.lrn import check_lrn_params

__all__ = ["lrn_backward", "lrn_forward"]

i32, f32, f64 = np.int32, np.float32, np.float64


def lrn_forward(
    x: Any,
    *,
    local_size: int = 5,
    alpha: float = 1.0,
    beta: float = 0.75,
    k: float = 1.0,
    region: str = "ACROSS_CHANNELS",
    out: Any = None,
) -> Any:
    """Caffe LRN forward. x (N, C, H, W) -> new y (N, C, H, W), or written into `out` (not overlapping x);
    WITHIN_CHANNEL ignores k, as in Caffe."""
    rt = runtime()
    x = device_input(rt, x, "LRN input")
    if x.ndim != 4:
        raise ValueError(f"LRN input: expected a 4-D array (N, C, H, W), got shape {x.shape}")
    check_lrn_params(local_size, beta, region)
    n, c, h, w = x.shape
    y = rt.empty(x.shape) if out is None else device_output(rt, out, tuple(x.shape), "LRN out")
    if out is not None and y.size and rt.ptr(y) == rt.ptr(x):
        raise ValueError("LRN out: must not overlap x (each output reads its neighbours' inputs)")
    if x.size == 0:
        return y
    size = int(local_size)
    if region == "ACROSS_CHANNELS":
        for i0, i1 in chunks(n, c * h * w, FLAT_LIMIT):
            grid, block = flat_launch((i1 - i0) * c * h * w, rt.sm_count)
            args = (x[i0:i1], y[i0:i1], i32(i1 - i0), i32(c), i32(h * w), i32(size), f64(float(alpha) / size))
            launch(rt, "lrn", "lrn_across", (), grid, block, (*args, f32(beta), f64(k)))
    else:
        x3, y3 = x.reshape(n * c, h, w), y.reshape(n * c, h, w)
        for q0, q1 in chunks(n * c, h * w, FLAT_LIMIT):
            grid, block = flat_launch((q1 - q0) * h * w, rt.sm_count)
            args = (x3[q0:q1], y3[q0:q1], i32(q1 - q0), i32(h), i32(w), i32(size), f64(float(alpha) / size**2))
            launch(rt, "lrn", "lrn_within", (), grid, block, (*args, f32(beta)))
    return y


def lrn_backward(
    dy: Any,
    x: Any,
    *,
    local_size: int = 5,
    alpha: float = 1.0,
    beta: float = 0.75,
    k: float = 1.0,
    region: str = "ACROSS_CHANNELS",
    out: Any = None,
) -> Any:
    """Gradient of LRN (kernels.lrn.lrn_backward's contract): dy, x (N, C, H, W) device arrays -> dx OVERWRITTEN
    (into `out` when given; it must not be dy or x). The scale is recomputed from x, as on the CPU."""
    rt = runtime()
    x, dy = device_input(rt, x, "LRN backward x"), device_input(rt, dy, "LRN backward dy")
    if x.ndim != 4:
        raise ValueError(f"LRN backward x: expected a 4-D array (N, C, H, W), got shape {x.shape}")
    check_lrn_params(local_size, beta, region)
    if dy.shape != x.shape:
        raise ValueError(f"LRN backward: expected dy of shape {x.shape} (as x), got {dy.shape}")
    out = device_output(rt, out, tuple(x.shape), "LRN backward out")
    if out.size and rt.ptr(out) in (rt.ptr(dy), rt.ptr(x)):
        raise ValueError("LRN backward out: must be C-contiguous and must not overlap dy or x")
    if x.size == 0:
        return out
    n, c, h, w = x.shape
    size = int(local_size)
    ratio = rt.empty(x.shape)
    if region == "ACROSS_CHANNELS":
        coeff = 2.0 * float(alpha) * float(beta) / size
        for i0, i1 in chunks(n, c * h * w, FLAT_LIMIT):
            grid, block = flat_launch((i1 - i0) * h * w, rt.sm_count)
            args = (x[i0:i1], dy[i0:i1], out[i0:i1], ratio[i0:i1], i32(i1 - i0), i32(c), i32(h * w), i32(size))
            args += (f64(float(alpha) / size), f32(beta), f64(k), f64(coeff))
            launch(rt, "lrn", "lrn_across_backward", (), grid, block, args)
    else:
        coeff = 2.0 * float(alpha) * float(beta) / size**2
        x3, dy3, o3, r3 = (a.reshape(n * c, h, w) for a in (x, dy, out, ratio))
        for q0, q1 in chunks(n * c, h * w, FLAT_LIMIT):
            grid, block = flat_launch((q1 - q0) * h * w, rt.sm_count)
            dims = (i32(q1 - q0), i32(h), i32(w), i32(size))
            args = (x3[q0:q1], dy3[q0:q1], o3[q0:q1], r3[q0:q1], *dims, f64(float(alpha) / size**2), f32(beta))
            launch(rt, "lrn", "lrn_within_ratio", (), grid, block, args)
            launch(rt, "lrn", "lrn_within_backward", (), grid, block, (x3[q0:q1], r3[q0:q1], o3[q0:q1], *dims,
                                                                             f64(coeff)))  # fmt: skip
    return out
