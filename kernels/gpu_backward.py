"""GPU training kernels: backward launchers and the fused solver update, same signatures as the CPU functions.

Source: kernels/cuda/backward.cu (pooling, LRN, activations, softmax + loss, dropout, concat, eltwise, bias sums,
im2col / col2im / dy packing; the file opens with its kernel list). Convolution dW / dX and InnerProduct reuse crema's own sgemm (kernels/cuda/gemm.cu; no
cuBLAS, cuDNN or cupy.matmul):
  conv dW_g += dY_g (Mg x Q) @ im2col(X)_g^T (Q x Kg)      Q = images of the chunk x OH x OW
  conv dX   = col2im(W_g^T (Kg x Mg) @ dY_g (Mg x Q))       (a gather per input pixel: deterministic, no atomics)
  conv db  += per-channel sums of dY (channel_sum, float64 partial sums)
  fc   dW  += dy2^T @ x2 (x2^T @ dy2 with transpose); dx2 = dy2 @ W (dy2 @ W^T with transpose); db as conv
Images are taken in chunks whose im2col buffer stays under COL_LIMIT floats.

Semantics as the CPU functions (kernels/conv.py, fc.py, pool.py, lrn.py, activations.py, elementwise.py, loss.py):
input gradients are OVERWRITTEN, parameter gradients ACCUMULATED; the differences are documented per function
(device arrays in and out; Dropout's mask is a uint8 device array from a counter-based device RNG seeded from `rng`;
SoftmaxWithLoss returns its loss and normaliser as device scalars, so no host round trip is needed until the
solver reads the loss). The solver's fused update is in kernels/gpu_optim.py.

Tests: tests/kernels/test_gpu_backward.py (CPU emulator here; a GPU where one is visible).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kernels.activations import _check_ratio, _softmax_axis
from kernels.conv import _check_conv_args, _geometry
from kernels.elementwise import _check_eltwise, _concat_sizes
from kernels.fc import _flatten, _weight_dims
from kernels.gpu import (
    SOFTMAX_THREADS,
    _device,
    _flat,
    _out,
    _sgemm,
    eltwise_forward,
    pool2d_forward,
    softmax_forward,
)
from kernels.gpu_runtime import (
    FLAT_LIMIT,
    INDEX_LIMIT,
    Runtime,
    chunks,
    flat_launch,
    launch,
    runtime,
)
from kernels.loss import NORMALIZATIONS
from kernels.lrn import _check_params as _check_lrn_params
from kernels.pool import _check_params as _check_pool_params
from kernels.pool import pool2d_output_shape

__all__ = [
    "COL_LIMIT",
    "REDUCE_THREADS",
    "clip_backward",
    "concat_backward",
    "conv2d_backward",
    "dropout_backward",
    "dropout_forward",
    "eltwise_backward",
    "inner_product_backward",
    "lrn_backward",
    "pool2d_backward",
    "relu_backward",
    "sigmoid_backward",
    "softmax_backward",
    "softmax_loss_backward",
    "softmax_loss_forward",
    "split_backward",
    "tanh_backward",
]

REDUCE_THREADS = 256  # block of the shared-memory reductions (backward.cu / optim.cu default)
COL_LIMIT = 1 << 26  # floats of the im2col buffer of one convolution-backward chunk (256 MiB)
i32, i64, f32, f64 = np.int32, np.int64, np.float32, np.float64


def _need(name: str, arr: Any, need: bool, what: str) -> None:
    if arr is not None and not need:
        raise ValueError(f"{what}: {name} was given but need_{name} is False")


def _grad_out(rt: Runtime, out: Any, like: Any, what: str) -> Any:
    """`out` (checked: a float32 device array of like's shape), or a new one."""
    return _out(rt, out, tuple(like.shape), what)


def _channel_sum(rt: Runtime, x: Any, out: Any, outer: int, groups: int, inner: int) -> None:
    """out (groups,) += sums of x viewed (outer, groups, inner)."""
    if x.size == 0:
        return
    grid = (min(groups, 65535), 1, 1)
    launch(
        rt, "backward", "channel_sum", (), grid, (REDUCE_THREADS, 1, 1), (x, out, i32(outer), i32(groups), i32(inner))
    )


# -- convolution, InnerProduct ----------------------------------------------------------------------
def conv2d_backward(
    dy: Any,
    x: Any,
    w: Any,
    *,
    stride=1,
    pad=0,
    dilation=1,
    group: int = 1,
    dx: Any = None,
    dw: Any = None,
    db: Any = None,
    need_dx: bool = True,
    need_dw: bool = True,
    need_db: bool = True,
) -> tuple[Any, Any, Any]:
    """Convolution backward (kernels.conv.conv2d_backward's contract) on device arrays.

    dy (N, M, OH, OW); x (N, C, H, W); w (M, C/group, kh, kw). Returns (dx OVERWRITTEN, dw ACCUMULATED, db
    ACCUMULATED), each None when its need_* flag is False; arrays are allocated (dw, db zeroed) when not given.
    """
    rt = runtime()
    what = "conv2d_backward"
    x, w, dy = _device(rt, x, f"{what} x"), _device(rt, w, f"{what} w"), _device(rt, dy, f"{what} dy")
    group = int(group)
    _check_conv_args(x, w, None, group)
    (n, c, h, wd), (m, cg, kh, kw), (sh, sw), (ph, pw), (dh, dwl), (oh, ow) = _geometry(
        x.shape, w.shape, stride, pad, dilation
    )
    if dy.shape != (n, m, oh, ow):
        raise ValueError(f"{what}: expected dy of shape {(n, m, oh, ow)} (N, M, OH, OW), got {dy.shape}")
    for name, arr, need in (("dx", dx, need_dx), ("dw", dw, need_dw), ("db", db, need_db)):
        _need(name, arr, need, what)
    if need_dx:
        dx = _grad_out(rt, dx, x, f"{what} dx")
        if rt.ptr(dx) == rt.ptr(dy) and dx.size:
            raise ValueError(f"{what}: dx shares memory with dy; pass a separate dx array")
    if need_dw:
        if dw is None:
            dw = rt.empty(w.shape)
            dw.fill(0)
        dw = _out(rt, dw, tuple(w.shape), f"{what} dw")
    if need_db:
        if db is None:
            db = rt.empty((m,))
            db.fill(0)
        db = _out(rt, db, (m,), f"{what} db")
    if dy.size == 0 or x.size == 0:
        if need_dx and dx.size:
            dx.fill(0)
        return dx, dw, db
    mg, kg, npix = m // group, cg * kh * kw, oh * ow
    if need_db:
        for i0, i1 in chunks(n, m * npix):
            _channel_sum(rt, dy[i0:i1], db, i1 - i0, m, npix)
    if not (need_dx or need_dw):
        return dx, dw, db
    per_image = max(c * kh * kw * npix, m * npix, c * h * wd)
    step = max(1, min(COL_LIMIT, INDEX_LIMIT) // per_image)
    if per_image > INDEX_LIMIT:
        raise ValueError(f"{what}: one image needs {per_image} elements of workspace, over 2^31; not supported")
    w2 = w.reshape(m, kg)
    dw2 = dw.reshape(m, kg) if need_dw else None
    geometry = (i32(oh), i32(ow), i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw), i32(dh), i32(dwl))
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        nb, q = i1 - i0, (i1 - i0) * npix
        dyp = rt.empty((m, q))
        grid, block = flat_launch(m * q, rt.sm_count)
        launch(rt, "backward", "pack_dy", (), grid, block, (dy[i0:i1], dyp, i32(nb), i32(m), i32(npix)))
        col = rt.empty((c * kh * kw, q))
        if need_dw:
            grid, block = flat_launch(col.size, rt.sm_count)
            args = (x[i0:i1], col, i32(nb), i32(c), i32(h), i32(wd), *geometry)
            launch(rt, "backward", "im2col", (), grid, block, args)
            for g in range(group):
                rows, krows = slice(g * mg, (g + 1) * mg), slice(g * kg, (g + 1) * kg)
                _sgemm(rt, dyp[rows], col[krows], dw2[rows], trans_a=False, trans_b=True, accumulate=True)
        if need_dx:
            for g in range(group):
                rows, krows = slice(g * mg, (g + 1) * mg), slice(g * kg, (g + 1) * kg)
                _sgemm(rt, w2[rows], dyp[rows], col[krows], trans_a=True, trans_b=False)
            grid, block = flat_launch(nb * c * h * wd, rt.sm_count)
            args = (col, dx[i0:i1], i32(nb), i32(c), i32(h), i32(wd), *geometry)
            launch(rt, "backward", "col2im", (), grid, block, args)
    return dx, dw, db


def inner_product_backward(
    dy: Any,
    x: Any,
    w: Any,
    *,
    axis: int = 1,
    transpose: bool = False,
    dx: Any = None,
    dw: Any = None,
    db: Any = None,
    need_dx: bool = True,
    need_dw: bool = True,
    need_db: bool = True,
) -> tuple[Any, Any, Any]:
    """InnerProduct backward (kernels.fc.inner_product_backward's contract) on device arrays: dx OVERWRITTEN,
    dw and db ACCUMULATED (allocated zeroed when not given), None where the need_* flag is False."""
    rt = runtime()
    what = "inner_product_backward"
    x, w, dy = _device(rt, x, f"{what} x"), _device(rt, w, f"{what} w"), _device(rt, dy, f"{what} dy")
    n, k = _weight_dims(w, transpose)
    x2, lead = _flatten(x, axis, k)
    if dy.shape != lead + (n,):
        raise ValueError(f"{what}: expected dy of shape {lead + (n,)} (x.shape[:{axis}] + (N,)), got {dy.shape}")
    for name, arr, need in (("dx", dx, need_dx), ("dw", dw, need_dw), ("db", db, need_db)):
        _need(name, arr, need, what)
    if max(x2.size, w.size, dy.size) > INDEX_LIMIT:
        raise ValueError(f"{what}: x {x.shape} or w {w.shape} exceeds 2^31 elements; split the batch")
    rows = x2.shape[0]
    dy2 = dy.reshape(rows, n)
    if need_dw:
        if dw is None:
            dw = rt.empty(w.shape)
            dw.fill(0)
        dw = _out(rt, dw, tuple(w.shape), f"{what} dw")
        if rows and dw.size:
            if transpose:
                _sgemm(rt, x2, dy2, dw, trans_a=True, trans_b=False, accumulate=True)
            else:
                _sgemm(rt, dy2, x2, dw, trans_a=True, trans_b=False, accumulate=True)
    if need_db:
        if db is None:
            db = rt.empty((n,))
            db.fill(0)
        db = _out(rt, db, (n,), f"{what} db")
        _channel_sum(rt, dy2, db, rows, n, 1)
    if need_dx:
        dx = _grad_out(rt, dx, x, f"{what} dx")
        if dx.size and rt.ptr(dx) == rt.ptr(dy):
            raise ValueError(f"{what}: dx shares memory with dy; pass a separate dx array")
        dx2 = dx.reshape(x2.shape)
        if dx2.size:
            if n == 0:
                dx2.fill(0)
            else:
                _sgemm(rt, dy2, w, dx2, trans_a=False, trans_b=transpose)
    return dx, dw, db


# -- pooling, LRN ----------------------------------------------------------------------------------
def pool2d_backward(
    dy: Any,
    x: Any,
    *,
    method: str = "MAX",
    kernel=(2, 2),
    stride=(1, 1),
    pad=(0, 0),
    round_mode: str = "CEIL",
    mask: Any = None,
    out: Any = None,
) -> Any:
    """Gradient of pooling with respect to its input, OVERWRITTEN (kernels.pool.pool2d_backward's contract).

    dy (N, C, oh, ow); x the forward input (a device array) or its shape. MAX routes dy to the recorded argmax
    (`mask`, int32 device array from pool2d_forward(..., mask=...)), recomputed from x when mask is None. A gather
    per input pixel: no atomics, the same summation order as the CPU's scatter."""
    rt = runtime()
    (kh, kw), (sh, sw), (ph, pw) = _check_pool_params(kernel, stride, pad, method, round_mode)
    dy = _device(rt, dy, "pooling backward dy")
    shape = tuple(int(v) for v in (x.shape if rt.is_array(x) else x))
    if len(shape) != 4:
        raise ValueError(f"pooling backward: expected the input shape (N, C, H, W), got {shape}")
    n, c, h, w = shape
    oh, ow = pool2d_output_shape((h, w), (kh, kw), (sh, sw), (ph, pw), round_mode)
    if dy.shape != (n, c, oh, ow):
        raise ValueError(f"pooling backward dy: expected shape {(n, c, oh, ow)} for input {shape}, got {dy.shape}")
    out = _out(rt, out, shape, "pooling backward out")
    if out.size and rt.ptr(out) == rt.ptr(dy):
        raise ValueError("pooling backward out: must not overlap dy")
    if out.size == 0:
        return out
    if method == "MAX":
        if mask is None:
            if not rt.is_array(x):
                raise ValueError("pooling backward: MAX needs the argmax mask or the forward input x (got a shape)")
            mask = rt.empty(dy.shape, np.int32)
            pool2d_forward(x, method="MAX", kernel=(kh, kw), stride=(sh, sw), pad=(ph, pw), round_mode=round_mode,
                           mask=mask)  # fmt: skip
        elif not rt.is_array(mask) or mask.dtype != np.int32 or mask.shape != dy.shape:
            raise ValueError(f"pooling backward mask: expected an int32 device array of shape {dy.shape}")
    planes = n * c
    dy3, dx3 = dy.reshape(planes, oh * ow), out.reshape(planes, h * w)
    window = (i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw))
    for q0, q1 in chunks(planes, max(h * w, oh * ow), FLAT_LIMIT):
        grid, block = flat_launch((q1 - q0) * h * w, rt.sm_count)
        dims = (i32(q1 - q0), i32(h), i32(w), i32(oh), i32(ow))
        if method == "MAX":
            m3 = mask.reshape(planes, oh * ow)
            launch(rt, "backward", "pool2d_max_backward", (), grid, block, (dy3[q0:q1], m3[q0:q1], dx3[q0:q1], *dims,
                                                                             *window))  # fmt: skip
        else:
            launch(rt, "backward", "pool2d_ave_backward", (), grid, block, (dy3[q0:q1], dx3[q0:q1], *dims, *window))
    return out


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
    x, dy = _device(rt, x, "LRN backward x"), _device(rt, dy, "LRN backward dy")
    if x.ndim != 4:
        raise ValueError(f"LRN backward x: expected a 4-D array (N, C, H, W), got shape {x.shape}")
    _check_lrn_params(local_size, beta, region)
    if dy.shape != x.shape:
        raise ValueError(f"LRN backward: expected dy of shape {x.shape} (as x), got {dy.shape}")
    out = _out(rt, out, tuple(x.shape), "LRN backward out")
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
            launch(rt, "backward", "lrn_across_backward", (), grid, block, args)
    else:
        coeff = 2.0 * float(alpha) * float(beta) / size**2
        x3, dy3, o3, r3 = (a.reshape(n * c, h, w) for a in (x, dy, out, ratio))
        for q0, q1 in chunks(n * c, h * w, FLAT_LIMIT):
            grid, block = flat_launch((q1 - q0) * h * w, rt.sm_count)
            dims = (i32(q1 - q0), i32(h), i32(w), i32(size))
            args = (x3[q0:q1], dy3[q0:q1], o3[q0:q1], r3[q0:q1], *dims, f64(float(alpha) / size**2), f32(beta))
            launch(rt, "backward", "lrn_within_ratio", (), grid, block, args)
            launch(rt, "backward", "lrn_within_backward", (), grid, block, (x3[q0:q1], r3[q0:q1], o3[q0:q1], *dims,
                                                                             f64(coeff)))  # fmt: skip
    return out


# -- activations ----------------------------------------------------------------------------------------
def _pair_grad(rt: Runtime, dy: Any, other: Any, out: Any, what: str, name: str) -> tuple[Any, Any, Any]:
    dy = _device(rt, dy, f"{what} backward dy")
    other = _device(rt, other, f"{what} backward {name}")
    if other.shape != dy.shape:
        raise ValueError(f"{what} backward {name}: expected dy's shape {dy.shape}, got {other.shape}")
    return dy, other, _out(rt, out, tuple(dy.shape), f"{what} backward out")


def relu_backward(dy: Any, x: Any, negative_slope: float = 0.0, out: Any = None) -> Any:
    """dx = dy * (1 if x > 0 else negative_slope), OVERWRITTEN; `out` may be dy or x itself (in place)."""
    rt = runtime()
    dy, x, out = _pair_grad(rt, dy, x, out, "ReLU", "x")
    _flat(rt, "backward", "relu_backward", (dy, x, out), dy.size, (f32(negative_slope),))
    return out


def clip_backward(
    dy: Any, x: Any, lo: float, hi: float, *, inclusive: bool = True, out: Any = None
) -> Any:
    """dx = dy where lo <= x <= hi (inclusive=False: lo < x < hi, x the in-place output), else 0; OVERWRITTEN."""
    rt = runtime()
    dy, x, out = _pair_grad(rt, dy, x, out, "Clip", "x")
    _flat(rt, "backward", "clip_backward", (dy, x, out), dy.size, (f32(lo), f32(hi), i32(1 if inclusive else 0)))
    return out


def sigmoid_backward(dy: Any, y: Any, out: Any = None) -> Any:
    """dx = dy * y * (1 - y) from the forward output y, OVERWRITTEN; `out` may be dy or y."""
    rt = runtime()
    dy, y, out = _pair_grad(rt, dy, y, out, "Sigmoid", "y")
    _flat(rt, "backward", "sigmoid_backward", (dy, y, out), dy.size)
    return out


def tanh_backward(dy: Any, y: Any, out: Any = None) -> Any:
    """dx = dy * (1 - y^2) from the forward output y, OVERWRITTEN; `out` may be dy or y."""
    rt = runtime()
    dy, y, out = _pair_grad(rt, dy, y, out, "TanH", "y")
    _flat(rt, "backward", "tanh_backward", (dy, y, out), dy.size)
    return out


def softmax_backward(dy: Any, y: Any, axis: int = 1, out: Any = None) -> Any:
    """dx = y * (dy - sum_axis(dy * y)) (the sum in float64), OVERWRITTEN; `out` may be dy or y itself."""
    rt = runtime()
    dy, y, out = _pair_grad(rt, dy, y, out, "Softmax", "y")
    axis = _softmax_axis(y, axis)
    if y.size == 0:
        return out
    outer, c, inner = math.prod(y.shape[:axis]), y.shape[axis], math.prod(y.shape[axis + 1 :])
    g3, y3, o3 = (a.reshape(outer, c * inner) for a in (dy, y, out))
    for r0, r1 in chunks(outer, c * inner, FLAT_LIMIT):
        if inner == 1:
            threads = min(SOFTMAX_THREADS, max(32, 1 << (c - 1).bit_length()))
            args = (g3[r0:r1], y3[r0:r1], o3[r0:r1], i32(r1 - r0), i32(c))
            launch(rt, "backward", "softmax_backward_rows", (), (min(r1 - r0, 65535), 1, 1), (threads, 1, 1), args)
        else:
            grid, block = flat_launch((r1 - r0) * inner, rt.sm_count)
            args = (g3[r0:r1], y3[r0:r1], o3[r0:r1], i32(r1 - r0), i32(c), i32(inner))
            launch(rt, "backward", "softmax_backward_strided", (), grid, block, args)
    return out


def dropout_forward(x: Any, ratio: float, train: bool = False, rng: np.random.Generator | None = None) -> tuple:
    """Caffe Dropout on the device. TEST: (a copy of x, None). TRAIN: (x * mask / (1 - ratio), mask), mask a uint8
    device array, 1 with probability 1 - ratio, from a counter-based RNG (splitmix64 of (seed, index)) whose seed is
    drawn from `rng` (one draw per call, so the stream is reproducible and resumable). The draws differ from the CPU
    kernel's (which draws from `rng` directly); the distribution is the same."""
    rt = runtime()
    x = _device(rt, x, "Dropout input")
    _check_ratio(ratio)
    if not train:
        return x.copy(), None
    rng = np.random.default_rng() if rng is None else rng
    seed = i64(rng.integers(0, 2**63 - 1))
    y, mask = rt.empty(x.shape), rt.empty(x.shape, np.uint8)
    keep, scale = f32(1.0 - ratio), f32(1.0 / (1.0 - ratio))
    xf, yf, mf = x.reshape(-1), y.reshape(-1), mask.reshape(-1)
    for s0, s1 in chunks(x.size, 1, FLAT_LIMIT):
        grid, block = flat_launch(s1 - s0, rt.sm_count)
        args = (xf[s0:s1], yf[s0:s1], mf[s0:s1], i32(s1 - s0), seed, i64(s0), keep, scale)
        launch(rt, "backward", "dropout_forward", (), grid, block, args)
    return y, mask


def dropout_backward(dy: Any, ratio: float, mask: Any = None, out: Any = None) -> Any:
    """Gradient of Dropout, OVERWRITTEN (into `out`, which may be dy itself). TEST (mask None): dx = dy. TRAIN:
    dx = dy * mask / (1 - ratio) with the uint8 mask `dropout_forward` returned."""
    rt = runtime()
    _check_ratio(ratio)
    dy = _device(rt, dy, "Dropout backward dy")
    out = _out(rt, out, tuple(dy.shape), "Dropout backward out")
    if mask is None:
        if rt.ptr(out) != rt.ptr(dy):
            out[...] = dy
        return out
    if not rt.is_array(mask) or mask.dtype != np.uint8 or mask.shape != dy.shape:
        raise ValueError(f"Dropout backward mask: expected a uint8 device array of shape {dy.shape}")
    _flat(rt, "backward", "dropout_backward", (dy, mask, out), dy.size, (f32(1.0 / (1.0 - ratio)),))
    return out


# -- Concat, Eltwise, Split ---------------------------------------------------------------------------------
def concat_backward(
    dy: Any, sizes: Sequence[int], axis: int = 1, propagate_down: Sequence[bool] | None = None
) -> list[Any]:
    """Gradient of Concat: one new device array per input (its slice of dy along `axis`), None where
    propagate_down[i] is false."""
    rt = runtime()
    dy = _device(rt, dy, "Concat backward dy")
    axis = _concat_sizes(dy, sizes, axis)
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
                launch(rt, "backward", "concat_slice", (), grid, block, args)
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
    xs = [_device(rt, x, f"Eltwise backward input {i}") for i, x in enumerate(xs)]
    _check_eltwise(xs, operation, coeffs, dtype_check=False)
    dy = _device(rt, dy, "Eltwise backward dy")
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
            _flat(rt, "backward", "scale_copy", (a, dy, dx), n)
        elif operation == "PROD":
            others = [x for j, x in enumerate(xs) if j != i]
            _flat(rt, "elementwise", "eltwise_prod", (dy, others[0], dx), n)
            for x in others[1:]:
                _flat(rt, "elementwise", "eltwise_prod", (dx, x, dx), n)
        else:
            _flat(rt, "backward", "mask_select", (dy, mask, dx), n, (i32(i),))
        grads.append(dx)
    return grads


def split_backward(dys: Sequence[Any], out: Any = None) -> Any:
    """Gradient of Split: the sum of the tops' gradients in order (top 0 + top 1, then + each further top),
    OVERWRITTEN into `out` (which may be dys[0] itself) or a new device array."""
    rt = runtime()
    if len(dys) == 0:
        raise ValueError("Split backward: expected at least one top gradient, got none")
    dys = [_device(rt, d, f"Split backward dy {i}") for i, d in enumerate(dys)]
    for i, d in enumerate(dys):
        if d.shape != dys[0].shape:
            raise ValueError(f"Split backward dy {i}: expected shape {dys[0].shape} (as dy 0), got {d.shape}")
    y = _out(rt, out, tuple(dys[0].shape), "Split backward out")
    n, one = y.size, f32(1.0)
    if len(dys) == 1:
        if rt.ptr(y) != rt.ptr(dys[0]):
            y[...] = dys[0]
        return y
    _flat(rt, "elementwise", "eltwise_axpby", (one, dys[0], one, dys[1], y), n)
    for d in dys[2:]:
        _flat(rt, "elementwise", "eltwise_axpby", (one, y, one, d, y), n)
    return y


# -- SoftmaxWithLoss ------------------------------------------------------------------------------------------
def _loss_view(x: Any, axis: int) -> tuple[int, int, int]:
    if x.ndim == 0:
        raise ValueError("scores must have at least one axis")
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis < x.ndim:
        raise ValueError(f"axis {axis} out of range for scores of shape {x.shape}")
    return math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1 :])


def softmax_loss_forward(
    x: Any, labels: Any, *, axis: int = 1, ignore_label: int | None = None, normalization: str = "VALID"
) -> tuple[Any, Any, Any]:
    """Softmax along `axis` and the multinomial logistic loss on the device.

    x (..., C, ...) and labels (outer * inner values, float) device arrays. Returns (loss, prob, stats): loss a
    device array of shape () (float32), prob of x's shape, stats a (3,) device array [loss, normaliser, bad-label
    count] for softmax_loss_backward. Labels outside [0, C) (other than ignore_label) raise ValueError, which reads
    one number back from the device."""
    rt = runtime()
    x = _device(rt, x, "SoftmaxWithLoss scores")
    labels = _device(rt, labels, "SoftmaxWithLoss labels")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown loss normalization {normalization!r} (known: {', '.join(NORMALIZATIONS)})")
    outer, c, inner = _loss_view(x, axis)
    if labels.size != outer * inner:
        raise ValueError(
            f"label count ({labels.size}) must equal the number of score positions outer*inner = {outer}*{inner}"
        )
    if x.size > FLAT_LIMIT:
        raise ValueError(f"SoftmaxWithLoss: scores {x.shape} exceed {FLAT_LIMIT} elements; split the batch")
    prob = softmax_forward(x, axis=axis % x.ndim)
    stats = rt.empty((3,))
    ignore = -1 if ignore_label is None else int(ignore_label)
    args = (prob, labels.reshape(-1), stats, i32(outer), i32(c), i32(inner), i32(ignore), i32(ignore_label is not None))
    launch(
        rt,
        "backward",
        "softmax_loss",
        (),
        (1, 1, 1),
        (REDUCE_THREADS, 1, 1),
        (*args, i32(NORMALIZATIONS.index(normalization))),
    )
    bad = float(rt.to_host(stats[2:3])[0])
    if bad:
        raise ValueError(f"{int(bad)} label(s) out of range for {c} classes")
    return stats[0:1].reshape(()), prob, stats


def softmax_loss_backward(
    prob: Any,
    labels: Any,
    *,
    axis: int = 1,
    ignore_label: int | None = None,
    normalizer_value: Any,
    loss_weight: float = 1.0,
    dx: Any = None,
) -> Any:
    """Gradient of loss_weight * loss wrt the scores, OVERWRITTEN into `dx` (allocated if None):
    (p - onehot(label)) * float(loss_weight / normaliser), 0 at ignored positions. `normalizer_value` is the stats
    array softmax_loss_forward returned (read on the device) or a number."""
    rt = runtime()
    prob = _device(rt, prob, "SoftmaxWithLoss prob")
    labels = _device(rt, labels, "SoftmaxWithLoss labels")
    outer, c, inner = _loss_view(prob, axis)
    if labels.size != outer * inner:
        raise ValueError(f"label count ({labels.size}) must equal outer*inner = {outer}*{inner}")
    if rt.is_array(normalizer_value):
        stats = normalizer_value
    else:
        stats = rt.asarray(np.array([0.0, float(normalizer_value), 0.0], np.float32))
    dx = _out(rt, dx, tuple(prob.shape), "SoftmaxWithLoss dx")
    if prob.size == 0:
        return dx
    grid, block = flat_launch(prob.size, rt.sm_count)
    ignore = -1 if ignore_label is None else int(ignore_label)
    args = (prob, labels.reshape(-1), stats, dx, i32(outer), i32(c), i32(inner), i32(ignore))
    launch(
        rt, "backward", "softmax_loss_grad", (), grid, block, (*args, i32(ignore_label is not None), f64(loss_weight))
    )
    return dx
