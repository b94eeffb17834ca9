"""GPU elementwise ops (kernels/cuda/elementwise.cu), forward and backward, same signatures as kernels.elementwise:
Concat, Eltwise, Scale, Bias, BatchNorm (inference), Split's backward, and `channel_sum` (the per-channel sums of
bias gradients, which the convolution and InnerProduct backward launchers use). Device arrays in and out; input
gradients are new arrays or OVERWRITTEN, channel_sum ACCUMULATES.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kernels.elementwise import check_eltwise, concat_shape, concat_sizes, param_slices
from kernels.gpu.backend import (
    FLAT_LIMIT,
    Runtime,
    chunks,
    device_input,
    device_output,
    flat_launch,
    launch,
    launch_flat,
    runtime,
)

__all__ = [
    "batchnorm_forward_inference",
    "bias_forward",
    "channel_sum",
    "concat_backward",
    "concat_forward",
    "eltwise_backward",
    "eltwise_forward",
    "scale_forward",
    "split_backward",
]

REDUCE_THREADS = 256  # block of channel_sum's shared-memory reduction (elementwise.cu default)
i32, f32 = np.int32, np.float32


# -- forward -------------------------------------------------------------------------------------------
def concat_forward(xs: Sequence[Any], axis: int = 1, out: Any = None) -> Any:
    """Caffe Concat: the inputs laid one after another along `axis` (all other dims equal)."""
    rt = runtime()
    xs = [device_input(rt, x, f"Concat input {i}") for i, x in enumerate(xs)]
    shape, axis = concat_shape([np.broadcast_to(f32(0), x.shape) for x in xs], axis)  # shape-only stand-ins
    y = device_output(rt, out, shape, "Concat out")
    if y.size > FLAT_LIMIT:
        raise ValueError(f"Concat: output {shape} exceeds {FLAT_LIMIT} elements; split the batch")
    outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1 :])
    dst_row, offset = shape[axis] * inner, 0
    for x in xs:
        src_row = x.shape[axis] * inner
        if x.size:
            grid, block = flat_launch(x.size, rt.sm_count)
            args = (x, y, i32(outer), i32(src_row), i32(dst_row), i32(offset))
            launch(rt, "elementwise", "concat_copy", (), grid, block, args)
        offset += src_row
    return y


def eltwise_forward(
    xs: Sequence[Any], operation: str = "SUM", coeffs: Sequence[float] | None = None, out: Any = None, mask: Any = None
) -> Any:
    """Caffe Eltwise SUM (with coeffs) / PROD / MAX (ties: bottom 1 beats bottom 0, later bottoms win only when
    strictly greater; `mask`, MAX only, int32, receives the winner). `out` may be input 0 or 1 itself."""
    rt = runtime()
    xs = [device_input(rt, x, f"Eltwise input {i}") for i, x in enumerate(xs)]
    check_eltwise(xs, operation, coeffs, dtype_check=False)
    y = device_output(rt, out, xs[0].shape, "Eltwise out")
    if mask is not None:
        if operation != "MAX":
            raise ValueError(f"Eltwise mask: only MAX records a winner, got operation {operation}")
        mask = device_output(rt, mask, y.shape, "Eltwise mask", np.int32)
    n = y.size
    if operation == "SUM":
        c = [float(v) for v in coeffs] if coeffs is not None else [1.0] * len(xs)
        launch_flat(rt, "elementwise", "eltwise_axpby", (f32(c[0]), xs[0], f32(c[1]), xs[1], y), n)
        for ci, x in zip(c[2:], xs[2:]):
            launch_flat(rt, "elementwise", "eltwise_axpby", (f32(1.0), y, f32(ci), x, y), n)
    elif operation == "PROD":
        launch_flat(rt, "elementwise", "eltwise_prod", (xs[0], xs[1], y), n)
        for x in xs[2:]:
            launch_flat(rt, "elementwise", "eltwise_prod", (y, x, y), n)
    else:
        m = y if mask is None else mask
        launch_flat(rt, "elementwise", "eltwise_max", (xs[0], xs[1], y, m), n, (i32(1 if mask is not None else -1),))
        for k, x in enumerate(xs[2:], start=2):
            launch_flat(rt, "elementwise", "eltwise_max", (x, y, y, m), n, (i32(k if mask is not None else -1),))
    return y


def _affine(rt: Runtime, x: Any, gamma: Any, beta: Any, axis: int, out: Any, what: str) -> Any:
    x = device_input(rt, x, f"{what} input")
    param = gamma if gamma is not None else beta
    param = device_input(rt, param, f"{what} parameter")
    outer, groups, inner = param_slices(x, param, axis, what)
    if gamma is not None and beta is not None and beta.shape != gamma.shape:
        raise ValueError(f"{what}: expected beta shape {gamma.shape} (same as gamma), got {beta.shape}")
    y = device_output(rt, out, x.shape, f"{what} out")
    g = x if gamma is None else device_input(rt, gamma, f"{what} gamma")
    b = x if beta is None else device_input(rt, beta, f"{what} beta")
    mode = 0 if gamma is None else (1 if beta is None else 2)
    if x.size == 0:
        return y
    xf, yf = x.reshape(outer, -1), y.reshape(outer, -1)
    for o0, o1 in chunks(outer, groups * inner, FLAT_LIMIT):
        count = (o1 - o0) * groups * inner
        grid, block = flat_launch(count, rt.sm_count)
        args = (xf[o0:o1], g, b, yf[o0:o1], i32(count), i32(groups), i32(inner), i32(mode))
        launch(rt, "elementwise", "channel_affine", (), grid, block, args)
    return y


def scale_forward(x: Any, gamma: Any, beta: Any = None, axis: int = 1, out: Any = None) -> Any:
    """Caffe Scale: y = x * gamma (+ beta), gamma of shape x.shape[axis:axis + gamma.ndim]; `out` may be x."""
    return _affine(runtime(), x, gamma, beta, axis, out, "Scale")


def bias_forward(x: Any, beta: Any, axis: int = 1, out: Any = None) -> Any:
    """Caffe Bias: y = x + beta, beta of shape x.shape[axis:axis + beta.ndim]; `out` may be x."""
    return _affine(runtime(), x, None, beta, axis, out, "Bias")


def batchnorm_forward_inference(
    x: Any, mean_sum: Any, var_sum: Any, scale_factor: Any, eps: float = 1e-5, out: Any = None
) -> Any:
    """Caffe BatchNorm with global statistics: y = (x - mean) / sqrt(var + eps), mean = mean_sum / s,
    var = var_sum / s (factor 0 when s == 0); x (N, C, ...), mean_sum / var_sum (C,), s a number."""
    rt = runtime()
    x = device_input(rt, x, "BatchNorm input")
    if x.ndim < 2:
        raise ValueError(f"BatchNorm: expected an input with a channel axis (N, C, ...), got shape {x.shape}")
    n, c = x.shape[0], x.shape[1]
    mean_sum, var_sum = device_input(rt, mean_sum, "BatchNorm mean_sum"), device_input(rt, var_sum, "BatchNorm var_sum")
    for name, p in (("mean_sum", mean_sum), ("var_sum", var_sum)):
        if p.size != c:
            raise ValueError(f"BatchNorm {name}: expected {c} values (one per channel of {x.shape}), got {p.shape}")
    s = f32(np.asarray(scale_factor if np.isscalar(scale_factor) else rt.to_host(scale_factor)).reshape(-1)[0])
    factor = f32(0) if s == 0 else f32(1) / s
    y = device_output(rt, out, x.shape, "BatchNorm out")
    inner = math.prod(x.shape[2:])
    if x.size == 0:
        return y
    xf, yf = x.reshape(n, -1), y.reshape(n, -1)
    for i0, i1 in chunks(n, c * inner, FLAT_LIMIT):
        count = (i1 - i0) * c * inner
        grid, block = flat_launch(count, rt.sm_count)
        args = (xf[i0:i1], mean_sum.reshape(-1), var_sum.reshape(-1), yf[i0:i1], i32(count), i32(c), i32(inner))
        launch(rt, "elementwise", "batchnorm_inference", (), grid, block, (*args, factor, f32(eps)))
    return y


# -- backward ------------------------------------------------------------------------------------------
def concat_backward(
    dy: Any, sizes: Sequence[int], axis: int = 1, propagate_down: Sequence[bool] | None = None
) -> list[Any]:
    """Gradient of Concat: one new device array per input (its slice of dy along `axis`), None where
    propagate_down[i] is false."""
    rt = runtime()
    dy = device_input(rt, dy, "Concat backward dy")
    axis = concat_sizes(dy, sizes, axis)
    want = [True] * len(sizes) if propagate_down is None else [bool(v) for v in propagate_down]
    outer, inner = math.prod(dy.shape[:axis]), math.prod(dy.shape[axis + 1 :])
    src_row, offset = dy.shape[axis] * inner, 0
    grads: list[Any] = []
    for size, need in zip(sizes, want):
        shape = (*dy.shape[:axis], int(size), *dy.shape[axis + 1 :])
        if not need:
            grads.append(None)
        else:
            g = rt.empty(shape)
            if g.size:
                if g.size > FLAT_LIMIT:
                    raise ValueError(f"Concat backward: slice {shape} exceeds {FLAT_LIMIT} elements")
                grid, block = flat_launch(g.size, rt.sm_count)
                args = (dy, g, i32(outer), i32(int(size) * inner), i32(src_row), i32(offset))
                launch(rt, "elementwise", "concat_slice", (), grid, block, args)
            grads.append(g)
        offset += int(size) * inner
    return grads


def eltwise_backward(
    dy: Any,
    xs: Sequence[Any],
    operation: str = "SUM",
    coeffs: Sequence[float] | None = None,
    mask: Any = None,
    propagate_down: Sequence[bool] | None = None,
) -> list[Any]:
    """Gradient of Eltwise (kernels.elementwise.eltwise_backward's contract): one new device array per input, None
    where propagate_down[i] is false. SUM coeff * dy; PROD dy * the other inputs (in order, as the CPU); MAX dy
    where input i won (`mask` int32 from eltwise_forward(..., mask=...), recomputed when None)."""
    rt = runtime()
    xs = [device_input(rt, x, f"Eltwise backward input {i}") for i, x in enumerate(xs)]
    check_eltwise(xs, operation, coeffs, dtype_check=False)
    dy = device_input(rt, dy, "Eltwise backward dy")
    if dy.shape != xs[0].shape:
        raise ValueError(f"Eltwise backward dy: expected shape {xs[0].shape} (the inputs'), got {dy.shape}")
    want = [True] * len(xs) if propagate_down is None else [bool(v) for v in propagate_down]
    if len(want) != len(xs):
        raise ValueError(f"Eltwise backward: expected {len(xs)} propagate_down flags, got {len(want)}")
    if operation == "MAX" and any(want):
        if mask is None:
            mask = rt.empty(dy.shape, np.int32)
            eltwise_forward(xs, "MAX", mask=mask)
        elif not rt.is_array(mask) or mask.dtype != np.int32 or mask.shape != dy.shape:
            raise ValueError(f"Eltwise backward mask: expected an int32 device array of shape {dy.shape}")
    grads: list[Any] = []
    n = dy.size
    for i, need in enumerate(want):
        if not need:
            grads.append(None)
            continue
        dx = rt.empty(dy.shape)
        if operation == "SUM":
            a = f32(1.0 if coeffs is None else coeffs[i])
            launch_flat(rt, "elementwise", "scale_copy", (a, dy, dx), n)
        elif operation == "PROD":
            others = [x for j, x in enumerate(xs) if j != i]
            launch_flat(rt, "elementwise", "eltwise_prod", (dy, others[0], dx), n)
            for x in others[1:]:
                launch_flat(rt, "elementwise", "eltwise_prod", (dx, x, dx), n)
        else:
            launch_flat(rt, "elementwise", "mask_select", (dy, mask, dx), n, (i32(i),))
        grads.append(dx)
    return grads


def split_backward(dys: Sequence[Any], out: Any = None) -> Any:
    """Gradient of Split: the sum of the tops' gradients in order (top 0 + top 1, then + each further top),
    OVERWRITTEN into `out` (which may be dys[0] itself) or a new device array."""
    rt = runtime()
    if len(dys) == 0:
        raise ValueError("Split backward: expected at least one top gradient, got none")
    dys = [device_input(rt, d, f"Split backward dy {i}") for i, d in enumerate(dys)]
    for i, d in enumerate(dys):
        if d.shape != dys[0].shape:
            raise ValueError(f"Split backward dy {i}: expected shape {dys[0].shape} (as dy 0), got {d.shape}")
    y = device_output(rt, out, tuple(dys[0].shape), "Split backward out")
    n, one = y.size, f32(1.0)
    if len(dys) == 1:
        if rt.ptr(y) != rt.ptr(dys[0]):
            y[...] = dys[0]
        return y
    launch_flat(rt, "elementwise", "eltwise_axpby", (one, dys[0], one, dys[1], y), n)
    for d in dys[2:]:
        launch_flat(rt, "elementwise", "eltwise_axpby", (one, y, one, d, y), n)
    return y


def channel_sum(rt: Runtime, x: Any, out: Any, outer: int, groups: int, inner: int) -> None:
    """out (groups,) += sums of x viewed (outer, groups, inner)."""
    if x.size == 0:
        return
    grid = (min(groups, 65535), 1, 1)
    launch(
        rt,
        "elementwise",
        "channel_sum",
        (),
        grid,
        (REDUCE_THREADS, 1, 1),
        (x, out, i32(outer), i32(groups), i32(inner)),
    )
