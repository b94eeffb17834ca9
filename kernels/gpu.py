"""GPU kernels: launchers for crema's CUDA C sources (kernels/cuda/*.cu), same signatures as the CPU ones.

Kernels (each .cu file opens with its list): gemm.cu (sgemm_naive, sgemm, conv2d_igemm, gemv_rows, gemv_rows_t),
pool.cu (pool2d_max, pool2d_ave), lrn.cu (lrn_across, lrn_within), activations.cu (relu, sigmoid, tanh_forward,
softmax_rows, softmax_strided), elementwise.cu (eltwise_axpby/prod/max, concat_copy, channel_affine,
batchnorm_inference). No cuBLAS, cuDNN or cupy.matmul here: those are the references in benchmarks/bench_gpu.py.

Public launchers (device arrays in and out; shapes, checks and errors as the CPU function of the same name):
``conv2d_forward`` (plus ``relu=`` for the fused bias + ReLU epilogue), ``inner_product_forward``, ``gemm``,
``pool2d_forward``, ``lrn_forward``, ``relu_forward``, ``sigmoid_forward``, ``tanh_forward``, ``softmax_forward``,
``concat_forward``, ``eltwise_forward``, ``bias_forward``, ``scale_forward``, ``batchnorm_forward_inference``;
``sgemm_naive`` (the obviously correct GEMM); ``to_device`` / ``to_host`` copy arrays. Host arrays given to a
launcher are a ValueError: the Net uploads weights once and keeps activations on the device (net/device.py).

The runtime (CuPy's RawModule, or the tests' CPU emulator), the compile cache and the launch geometry (tiles,
split-K, grids, 32-bit chunks) are in kernels/gpu_runtime.py; `runtime()` raises GPUBackendError (a RuntimeError)
without CuPy or a device, and importing this module never imports CuPy.

Training: the backward launchers and the fused solver update are in kernels/gpu_backward.py (backward.cu, optim.cu);
their names (``conv2d_backward``, ``pool2d_backward``, ... see BACKWARD) are also attributes of this module, looked up
on first use, so `net.device.kernels_for` returns one namespace for forward and backward.

Benchmark: ``python -m benchmarks.bench_gpu`` (checks every result against cuBLAS / cuDNN first);
``python -m benchmarks.bench_gpu_train`` for training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kernels.activations import _softmax_axis
from kernels.conv import _check_conv_args, _geometry
from kernels.elementwise import _check_eltwise, _concat_shape, _slices
from kernels.fc import _flatten, _weight_dims
from kernels.gpu_runtime import (
    FLAT_LIMIT,
    INDEX_LIMIT,
    THREADS,
    GPUBackendError,
    Runtime,
    Tile,
    ceil_div,
    chunks,
    flat_launch,
    gemm_plan,
    launch,
    owns,
    runtime,
    to_device,
    to_host,
    unavailable_reason,
    use_runtime,
)
from kernels.lrn import _check_params as _check_lrn_params
from kernels.pool import _check_params as _check_pool_params
from kernels.pool import pool2d_output_shape

__all__ = [
    "GPUBackendError",
    "batchnorm_forward_inference",
    "bias_forward",
    "concat_forward",
    "conv2d_forward",
    "eltwise_forward",
    "gemm",
    "inner_product_forward",
    "lrn_forward",
    "owns",
    "pool2d_forward",
    "relu_forward",
    "runtime",
    "scale_forward",
    "sgemm_naive",
    "sigmoid_forward",
    "softmax_forward",
    "tanh_forward",
    "to_device",
    "to_host",
    "unavailable_reason",
    "use_runtime",
]

# Epilogue / layout flags of gemm.cu (tests check they match its #defines).
F_RELU, F_ACCUMULATE, F_ATOMIC, F_VEC_A, F_VEC_B, F_VEC_C, F_BIAS = 1, 2, 4, 8, 16, 32, 64
GEMV_MAX_M = 8  # rows of x up to which InnerProduct streams the weight with gemv_rows (gemm.cu default)
SOFTMAX_THREADS = 256  # largest block of softmax_rows (activations.cu default)


# -- helpers -----------------------------------------------------------------------------------------
i32, f32, f64 = np.int32, np.float32, np.float64


def _device(rt: Runtime, a: Any, what: str) -> Any:
    """`a` as a C-contiguous float32 device array; ValueError for host arrays (upload them once with to_device)."""
    if not rt.is_array(a):
        raise ValueError(
            f"{what}: expected a device array ({rt.name}), got {type(a).__name__} (use kernels.gpu.to_device)"
        )
    return rt.contiguous(a, np.float32)


def _out(rt: Runtime, out: Any, shape: tuple[int, ...], what: str, dtype: Any = np.float32) -> Any:
    if out is None:
        return rt.empty(shape, dtype)
    if not rt.is_array(out) or out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        got = f"{out.dtype} {out.shape}" if rt.is_array(out) else type(out).__name__
        raise ValueError(
            f"{what}: expected a C-contiguous {np.dtype(dtype).name} device array of shape {shape}, got {got}"
        )
    return out


def _flat(rt: Runtime, source: str, kernel: str, args: tuple, n: int, tail: tuple = ()) -> None:
    """A grid-stride kernel (args..., n, *tail) over n elements: array arguments are viewed flat and cut into launches
    of at most FLAT_LIMIT elements; NumPy scalars pass as they are."""
    for s0, s1 in chunks(n, 1, FLAT_LIMIT):
        grid, block = flat_launch(s1 - s0, rt.sm_count)
        views = tuple(a if isinstance(a, np.generic) else a.reshape(-1)[s0:s1] for a in args)
        launch(rt, source, kernel, (), grid, block, (*views, i32(s1 - s0), *tail))


# -- GEMM, convolution, InnerProduct -----------------------------------------------------------------
def _sgemm(
    rt: Runtime,
    a: Any,
    b: Any,
    c: Any,
    *,
    trans_a: bool,
    trans_b: bool,
    bias: Any = None,
    bias_mode: int = 0,
    relu: bool = False,
    accumulate: bool = False,
    tile: Tile | None = None,
    splits: int | None = None,
) -> None:
    """c (M x N) (+)= op(a) op(b) (+ bias) (ReLU) on 2-D C-contiguous device arrays."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if max(a.size, b.size, c.size) > INDEX_LIMIT:
        raise ValueError(f"gemm: operands of {a.shape}, {b.shape} -> {c.shape} exceed 2^31 elements; split them")
    plan = gemm_plan(m, n, k, 1, rt.sm_count, tile=tile, splits=splits)
    atomic = plan.splits > 1
    if atomic and not accumulate:
        c.fill(0)
    lda, ldb = a.shape[1], b.shape[1]
    flags = (
        (F_RELU if relu and not atomic else 0)
        | (F_ACCUMULATE if accumulate else 0)
        | (F_ATOMIC if atomic else 0)
        | (F_VEC_A if lda % 4 == 0 and rt.ptr(a) % 16 == 0 else 0)
        | (F_VEC_B if ldb % 4 == 0 and rt.ptr(b) % 16 == 0 else 0)
        | (F_VEC_C if n % 4 == 0 and rt.ptr(c) % 16 == 0 else 0)
    )
    defines = plan.tile.defines() + (("TRANS_A", int(trans_a)), ("TRANS_B", int(trans_b)))
    args = (a, b, c, c if bias is None else bias, i32(m), i32(n), i32(k), i32(lda), i32(ldb), i32(n))
    args += (i32(plan.k_chunk), i32(bias_mode if bias is not None else 0), i32(flags))
    launch(rt, "gemm", "sgemm", defines, plan.grid, plan.block, args)
    if relu and atomic:
        relu_forward(c, out=c)


def gemm(
    a: Any, b: Any, *, trans_a: bool = False, trans_b: bool = False, out: Any = None, accumulate: bool = False
) -> Any:
    """out = op(a) @ op(b) (or out += ... when accumulate), float32, on crema's SGEMM (kernels.gemm.gemm's contract).

    a: (M, K), or (K, M) with trans_a; b: (K, N), or (N, K) with trans_b; out: (M, N), allocated when None.
    """
    rt = runtime()
    a, b = _device(rt, a, "gemm a"), _device(rt, b, "gemm b")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"gemm: expected 2-D a and b, got shapes {a.shape} and {b.shape}")
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != kb:
        raise ValueError(
            f"gemm: inner dimensions differ: op(a) is {m}x{k}, op(b) is {kb}x{n} "
            f"(a shape {a.shape}, trans_a={trans_a}; b shape {b.shape}, trans_b={trans_b})"
        )
    if out is None and accumulate:
        raise ValueError("gemm: accumulate=True needs an `out` array to accumulate into")
    out = _out(rt, out, (m, n), "gemm out")
    if m and n:
        _sgemm(rt, a, b, out, trans_a=trans_a, trans_b=trans_b, accumulate=accumulate)
    return out


def sgemm_naive(a: Any, b: Any) -> Any:
    """c = a @ b with the one-thread-per-element kernel (the obviously correct one; tests and benchmarks)."""
    rt = runtime()
    a, b = _device(rt, a, "sgemm_naive a"), _device(rt, b, "sgemm_naive b")
    (m, k), n = a.shape, b.shape[1]
    c = rt.empty((m, n))
    grid = (ceil_div(n, 16), ceil_div(m, 16), 1)
    launch(rt, "gemm", "sgemm_naive", (), grid, (16, 16, 1), (a, b, c, i32(m), i32(n), i32(k), i32(k), i32(n), i32(n)))
    return c


def conv2d_forward(
    x: Any,
    w: Any,
    b: Any,
    *,
    stride: Any = (1, 1),
    pad: Any = (0, 0),
    dilation: Any = (1, 1),
    group: int = 1,
    out: Any = None,
    relu: bool = False,
    relu_max: float = math.inf,
) -> Any:
    """Convolution forward (Caffe semantics) as an implicit GEMM; `relu` fuses max(y, 0) into the epilogue, and a
    finite `relu_max` (ReLU6: 6) caps it, min(max(y, 0), relu_max), in one pass over the output after the GEMM.

    x: (N, C, H, W); w: (M, C/group, kh, kw); b: (M,) or None -> y: (N, M, OH, OW) float32 (into `out` when given).
    """
    rt = runtime()
    x, w = _device(rt, x, "conv2d x"), _device(rt, w, "conv2d w")
    b = None if b is None else _device(rt, b, "conv2d b").reshape(-1)
    group = int(group)
    _check_conv_args(x, w, b, group)
    (n, c, h, wd), (m, cg, kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = _geometry(
        x.shape, w.shape, stride, pad, dilation
    )
    out = _out(rt, out, (n, m, oh, ow), "conv2d out")
    if out.size == 0:
        return out
    mg, kg, npix = m // group, cg * kh * kw, oh * ow
    base = (F_BIAS if b is not None else 0) | (F_VEC_A if kg % 4 == 0 and rt.ptr(w) % 16 == 0 else 0)
    geometry = (i32(c), i32(h), i32(wd), i32(oh), i32(ow), i32(m), i32(group))
    geometry += (i32(sh), i32(sw), i32(ph), i32(pw), i32(dh), i32(dw))
    for i0, i1 in chunks(n, max(c * h * wd, m * npix)):
        plan = gemm_plan(mg, (i1 - i0) * npix, kg, group, rt.sm_count)
        atomic = plan.splits > 1
        y = out[i0:i1]
        if atomic:
            y.fill(0)
        flags = base | (F_ATOMIC if atomic else 0) | (F_RELU if relu and not atomic else 0)
        defines = plan.tile.defines() + (("KH", kh), ("KW", kw))
        args = (x[i0:i1], w, w if b is None else b, y, i32(i1 - i0), *geometry)
        args += (i32(plan.splits), i32(plan.k_chunk), i32(flags))
        launch(rt, "gemm", "conv2d_igemm", defines, plan.grid, plan.block, args)
        if relu and atomic:
            relu_forward(y, out=y)
    if relu and relu_max != math.inf:
        clip_forward(out, 0.0, relu_max, out=out)
    return out


def gemv_k_splits(n: int, k: int, sm_count: int, threads: int = THREADS) -> int:
    """K ranges of gemv_rows_t: enough blocks for two per SM when the columns alone give fewer, >= 64 rows each."""
    blocks = ceil_div(n, threads)
    if blocks >= 2 * sm_count:
        return 1
    return max(1, min(ceil_div(2 * sm_count, blocks), k // 64))


def inner_product_forward(x: Any, w: Any, b: Any, *, axis: int = 1, transpose: bool = False, out: Any = None) -> Any:
    """InnerProduct forward: y = x2 @ W.T + b (x2 @ W + b with transpose), x flattened to (M, K) at `axis`.

    M <= GEMV_MAX_M streams W once (gemv_rows / gemv_rows_t); otherwise sgemm with the bias in its epilogue.
    """
    rt = runtime()
    x, w = _device(rt, x, "inner_product x"), _device(rt, w, "inner_product w")
    n, k = _weight_dims(w, transpose)
    x2, lead = _flatten(x, axis, k)
    if b is not None:
        b = _device(rt, b, "inner_product b").reshape(-1)
        if b.shape != (n,):
            raise ValueError(f"inner_product: expected bias of shape ({n},), got {b.shape}")
    out = _out(rt, out, lead + (n,), "inner_product out")
    m = x2.shape[0]
    if max(x2.size, w.size, out.size) > INDEX_LIMIT:
        raise ValueError(f"inner_product: x {x.shape} or w {w.shape} exceeds 2^31 elements; split the batch")
    y2 = out.reshape(m, n)
    if m == 0 or n == 0:
        return out
    has_bias, bias = i32(b is not None), w if b is None else b
    if m <= GEMV_MAX_M and transpose:
        splits = gemv_k_splits(n, k, rt.sm_count)
        k_chunk = ceil_div(max(k, 1), splits)
        if splits > 1:
            y2.fill(0)
        grid = (ceil_div(n, THREADS), ceil_div(max(k, 1), k_chunk), 1)
        args = (x2, w, bias, y2, i32(m), i32(n), i32(k), has_bias, i32(k_chunk))
        launch(rt, "gemm", "gemv_rows_t", (), grid, (THREADS, 1, 1), args)
    elif m <= GEMV_MAX_M:
        vec = i32(k % 4 == 0 and rt.ptr(x2) % 16 == 0 and rt.ptr(w) % 16 == 0)
        grid = (ceil_div(n, THREADS // 32), 1, 1)
        args = (x2, w, bias, y2, i32(m), i32(n), i32(k), has_bias, vec)
        launch(rt, "gemm", "gemv_rows", (), grid, (THREADS, 1, 1), args)
    else:
        _sgemm(rt, x2, w, y2, trans_a=False, trans_b=not transpose, bias=b, bias_mode=2)
    return out


# -- pooling, LRN ------------------------------------------------------------------------------------
def pool2d_forward(
    x: Any,
    *,
    method: str = "MAX",
    kernel: Any = (2, 2),
    stride: Any = (1, 1),
    pad: Any = (0, 0),
    round_mode: str = "CEIL",
    out: Any = None,
    mask: Any = None,
) -> Any:
    """Caffe MAX/AVE pooling. x (N, C, H, W) -> y (N, C, oh, ow); `mask` (MAX only, int32 device array of y's
    shape) receives each argmax as h * W + w in its input plane (-1 for an empty window)."""
    rt = runtime()
    x = _device(rt, x, "pooling input")
    if x.ndim != 4:
        raise ValueError(f"pooling input: expected a 4-D array (N, C, H, W), got shape {x.shape}")
    (kh, kw), (sh, sw), (ph, pw) = _check_pool_params(kernel, stride, pad, method, round_mode)
    n, c, h, w = x.shape
    oh, ow = pool2d_output_shape((h, w), (kh, kw), (sh, sw), (ph, pw), round_mode)
    out = _out(rt, out, (n, c, oh, ow), "pooling out")
    if mask is not None:
        if method != "MAX":
            raise ValueError(f"pooling mask: only MAX pooling records an argmax, got method {method!r}")
        mask = _out(rt, mask, (n, c, oh, ow), "pooling mask", np.int32)
    planes = n * c
    x3, y3 = x.reshape(planes, h * w), out.reshape(planes, oh * ow)
    m3 = y3 if mask is None else mask.reshape(planes, oh * ow)
    window = (i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw))
    for q0, q1 in chunks(planes, max(h * w, oh * ow), FLAT_LIMIT):
        grid, block = flat_launch((q1 - q0) * oh * ow, rt.sm_count)
        shape = (i32(q1 - q0), i32(h), i32(w), i32(oh), i32(ow))
        if method == "MAX":
            args = (x3[q0:q1], y3[q0:q1], m3[q0:q1], *shape, *window, i32(mask is not None))
            launch(rt, "pool", "pool2d_max", (), grid, block, args)
        else:
            launch(rt, "pool", "pool2d_ave", (), grid, block, (x3[q0:q1], y3[q0:q1], *shape, *window))
    return out


def lrn_forward(
    x: Any,
    *,
    local_size: int = 5,
    alpha: float = 1.0,
    beta: float = 0.75,
    k: float = 1.0,
    region: str = "ACROSS_CHANNELS",
) -> Any:
    """Caffe LRN forward. x (N, C, H, W) -> new y (N, C, H, W); WITHIN_CHANNEL ignores k, as in Caffe."""
    rt = runtime()
    x = _device(rt, x, "LRN input")
    if x.ndim != 4:
        raise ValueError(f"LRN input: expected a 4-D array (N, C, H, W), got shape {x.shape}")
    _check_lrn_params(local_size, beta, region)
    n, c, h, w = x.shape
    y = rt.empty(x.shape)
    if x.size == 0:
        return y
    size = int(local_size)
    if region == "ACROSS_CHANNELS":
        for i0, i1 in chunks(n, c * h * w, FLAT_LIMIT):
            grid, block = flat_launch((i1 - i0) * h * w, rt.sm_count)
            args = (x[i0:i1], y[i0:i1], i32(i1 - i0), i32(c), i32(h * w), i32(size), f64(float(alpha) / size))
            launch(rt, "lrn", "lrn_across", (), grid, block, (*args, f32(beta), f64(k)))
    else:
        x3, y3 = x.reshape(n * c, h, w), y.reshape(n * c, h, w)
        for q0, q1 in chunks(n * c, h * w, FLAT_LIMIT):
            grid, block = flat_launch((q1 - q0) * h * w, rt.sm_count)
            args = (x3[q0:q1], y3[q0:q1], i32(q1 - q0), i32(h), i32(w), i32(size), f64(float(alpha) / size**2))
            launch(rt, "lrn", "lrn_within", (), grid, block, (*args, f32(beta)))
    return y


# -- activations -------------------------------------------------------------------------------------
def _unary_out(rt: Runtime, x: Any, out: Any, what: str) -> tuple[Any, Any]:
    x = _device(rt, x, f"{what} input")
    return x, _out(rt, out, x.shape, f"{what} out")


def relu_forward(x: Any, negative_slope: float = 0.0, out: Any = None) -> Any:
    """Caffe ReLU (leaky when negative_slope != 0); `out` may be x (in place)."""
    rt = runtime()
    x, out = _unary_out(rt, x, out, "ReLU")
    _flat(rt, "activations", "relu", (x, out), x.size, (f32(negative_slope),))
    return out


def clip_forward(x: Any, lo: float, hi: float, out: Any = None) -> Any:
    """y = min(max(x, lo), hi) (Caffe's Clip, ReLU6); `out` may be x (in place)."""
    rt = runtime()
    x, out = _unary_out(rt, x, out, "Clip")
    _flat(rt, "activations", "clip", (x, out), x.size, (f32(lo), f32(hi)))
    return out


def sigmoid_forward(x: Any, out: Any = None) -> Any:
    rt = runtime()
    x, out = _unary_out(rt, x, out, "Sigmoid")
    _flat(rt, "activations", "sigmoid", (x, out), x.size)
    return out


def tanh_forward(x: Any, out: Any = None) -> Any:
    rt = runtime()
    x, out = _unary_out(rt, x, out, "TanH")
    _flat(rt, "activations", "tanh_forward", (x, out), x.size)
    return out


def softmax_forward(x: Any, axis: int = 1, out: Any = None) -> Any:
    """Softmax along `axis` (negative counts from the end); `out` may be x (in place)."""
    rt = runtime()
    x, out = _unary_out(rt, x, out, "Softmax")
    axis = _softmax_axis(x, axis)
    if x.size == 0:
        return out
    outer, c, inner = math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1 :])
    x3, y3 = x.reshape(outer, c * inner), out.reshape(outer, c * inner)
    for o0, o1 in chunks(outer, c * inner, FLAT_LIMIT):
        if inner == 1:
            threads = min(SOFTMAX_THREADS, max(32, 1 << (c - 1).bit_length()))
            grid = (min(o1 - o0, 65535), 1, 1)
            args = (x3[o0:o1], y3[o0:o1], i32(o1 - o0), i32(c))
            launch(rt, "activations", "softmax_rows", (), grid, (threads, 1, 1), args)
        else:
            grid, block = flat_launch((o1 - o0) * inner, rt.sm_count)
            args = (x3[o0:o1], y3[o0:o1], i32(o1 - o0), i32(c), i32(inner))
            launch(rt, "activations", "softmax_strided", (), grid, block, args)
    return out


# -- Concat, Eltwise, Scale / Bias, BatchNorm --------------------------------------------------------
def concat_forward(xs: Sequence[Any], axis: int = 1, out: Any = None) -> Any:
    """Caffe Concat: the inputs laid one after another along `axis` (all other dims equal)."""
    rt = runtime()
    xs = [_device(rt, x, f"Concat input {i}") for i, x in enumerate(xs)]
    shape, axis = _concat_shape([np.broadcast_to(f32(0), x.shape) for x in xs], axis)  # shape-only stand-ins
    y = _out(rt, out, shape, "Concat out")
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
    xs = [_device(rt, x, f"Eltwise input {i}") for i, x in enumerate(xs)]
    _check_eltwise(xs, operation, coeffs, dtype_check=False)
    y = _out(rt, out, xs[0].shape, "Eltwise out")
    if mask is not None:
        if operation != "MAX":
            raise ValueError(f"Eltwise mask: only MAX records a winner, got operation {operation}")
        mask = _out(rt, mask, y.shape, "Eltwise mask", np.int32)
    n = y.size
    if operation == "SUM":
        c = [float(v) for v in coeffs] if coeffs is not None else [1.0] * len(xs)
        _flat(rt, "elementwise", "eltwise_axpby", (f32(c[0]), xs[0], f32(c[1]), xs[1], y), n)
        for ci, x in zip(c[2:], xs[2:]):
            _flat(rt, "elementwise", "eltwise_axpby", (f32(1.0), y, f32(ci), x, y), n)
    elif operation == "PROD":
        _flat(rt, "elementwise", "eltwise_prod", (xs[0], xs[1], y), n)
        for x in xs[2:]:
            _flat(rt, "elementwise", "eltwise_prod", (y, x, y), n)
    else:
        m = y if mask is None else mask
        _flat(rt, "elementwise", "eltwise_max", (xs[0], xs[1], y, m), n, (i32(1 if mask is not None else -1),))
        for k, x in enumerate(xs[2:], start=2):
            _flat(rt, "elementwise", "eltwise_max", (x, y, y, m), n, (i32(k if mask is not None else -1),))
    return y


def _affine(rt: Runtime, x: Any, gamma: Any, beta: Any, axis: int, out: Any, what: str) -> Any:
    x = _device(rt, x, f"{what} input")
    param = gamma if gamma is not None else beta
    param = _device(rt, param, f"{what} parameter")
    outer, groups, inner = _slices(x, param, axis, what)
    if gamma is not None and beta is not None and beta.shape != gamma.shape:
        raise ValueError(f"{what}: expected beta shape {gamma.shape} (same as gamma), got {beta.shape}")
    y = _out(rt, out, x.shape, f"{what} out")
    g = x if gamma is None else _device(rt, gamma, f"{what} gamma")
    b = x if beta is None else _device(rt, beta, f"{what} beta")
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
    x = _device(rt, x, "BatchNorm input")
    if x.ndim < 2:
        raise ValueError(f"BatchNorm: expected an input with a channel axis (N, C, ...), got shape {x.shape}")
    n, c = x.shape[0], x.shape[1]
    mean_sum, var_sum = _device(rt, mean_sum, "BatchNorm mean_sum"), _device(rt, var_sum, "BatchNorm var_sum")
    for name, p in (("mean_sum", mean_sum), ("var_sum", var_sum)):
        if p.size != c:
            raise ValueError(f"BatchNorm {name}: expected {c} values (one per channel of {x.shape}), got {p.shape}")
    s = f32(np.asarray(scale_factor if np.isscalar(scale_factor) else rt.to_host(scale_factor)).reshape(-1)[0])
    factor = f32(0) if s == 0 else f32(1) / s
    y = _out(rt, out, x.shape, "BatchNorm out")
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


# -- training: the backward launchers live in kernels/gpu_backward.py (which imports this module); they are
# reachable here too, looked up on first use, so one namespace has every launcher a layer calls through
# net.device.kernels_for.
BACKWARD = (
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
)


def __getattr__(name: str) -> Any:
    if name in BACKWARD:
        from kernels import gpu_backward

        value = getattr(gpu_backward, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kernels.gpu' has no attribute {name!r}")
