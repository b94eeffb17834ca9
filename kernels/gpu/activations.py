"""GPU activations (kernels/cuda/activations.cu), forward and backward, same signatures as kernels.activations:
ReLU (leaky), Clip (ReLU6), Sigmoid, TanH, Softmax, Dropout. Device arrays in and out; every input gradient is
OVERWRITTEN, and `out` may be the input itself (in place) where the docstring says so.

Tests: tests/kernels/test_gpu.py (forward), tests/kernels/test_gpu_backward.py (backward), on the CPU emulator here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kernels.activations import check_dropout_ratio, softmax_axis
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
    "clip_backward",
    "clip_forward",
    "dropout_backward",
    "dropout_forward",
    "relu_backward",
    "relu_forward",
    "sigmoid_backward",
    "sigmoid_forward",
    "softmax_backward",
    "softmax_forward",
    "tanh_backward",
    "tanh_forward",
]

SOFTMAX_THREADS = 256  # largest block of softmax_rows / softmax_backward_rows (activations.cu default)
i32, i64, f32 = np.int32, np.int64, np.float32


# -- forward -------------------------------------------------------------------------------------------
def _unary_out(rt: Runtime, x: Any, out: Any, what: str) -> tuple[Any, Any]:
    x = device_input(rt, x, f"{what} input")
    return x, device_output(rt, out, x.shape, f"{what} out")


def relu_forward(x: Any, negative_slope: float = 0.0, out: Any = None) -> Any:
    """Caffe ReLU (leaky when negative_slope != 0); `out` may be x (in place)."""
    rt = runtime()
    x, out = _unary_out(rt, x, out, "ReLU")
    launch_flat(rt, "activations", "relu", (x, out), x.size, (f32(negative_slope),))
    return out


def clip_forward(x: Any, lo: float, hi: float, out: Any = None) -> Any:
    """y = min(max(x, lo), hi) (Caffe's Clip, ReLU6); `out` may be x (in place)."""
    rt = runtime()
    x, out = _unary_out(rt, x, out, "Clip")
    launch_flat(rt, "activations", "clip", (x, out), x.size, (f32(lo), f32(hi)))
    return out


def sigmoid_forward(x: Any, out: Any = None) -> Any:
    rt = runtime()
    x, out = _unary_out(rt, x, out, "Sigmoid")
    launch_flat(rt, "activations", "sigmoid", (x, out), x.size)
    return out


def tanh_forward(x: Any, out: Any = None) -> Any:
    rt = runtime()
    x, out = _unary_out(rt, x, out, "TanH")
    launch_flat(rt, "activations", "tanh_forward", (x, out), x.size)
    return out


def softmax_forward(x: Any, axis: int = 1, out: Any = None) -> Any:
    """Softmax along `axis` (negative counts from the end); `out` may be x (in place)."""
    rt = runtime()
    x, out = _unary_out(rt, x, out, "Softmax")
    axis = softmax_axis(x, axis)
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


# -- backward ------------------------------------------------------------------------------------------
def _pair_grad(rt: Runtime, dy: Any, other: Any, out: Any, what: str, name: str) -> tuple[Any, Any, Any]:
    dy = device_input(rt, dy, f"{what} backward dy")
    other = device_input(rt, other, f"{what} backward {name}")
    if other.shape != dy.shape:
        raise ValueError(f"{what} backward {name}: expected dy's shape {dy.shape}, got {other.shape}")
    return dy, other, device_output(rt, out, tuple(dy.shape), f"{what} backward out")


def relu_backward(dy: Any, x: Any, negative_slope: float = 0.0, out: Any = None) -> Any:
    """dx = dy * (1 if x > 0 else negative_slope), OVERWRITTEN; `out` may be dy or x itself (in place)."""
    rt = runtime()
    dy, x, out = _pair_grad(rt, dy, x, out, "ReLU", "x")
    launch_flat(rt, "activations", "relu_backward", (dy, x, out), dy.size, (f32(negative_slope),))
    return out


def clip_backward(dy: Any, x: Any, lo: float, hi: float, *, inclusive: bool = True, out: Any = None) -> Any:
    """dx = dy where lo <= x <= hi (inclusive=False: lo < x < hi, x the in-place output), else 0; OVERWRITTEN."""
    rt = runtime()
    dy, x, out = _pair_grad(rt, dy, x, out, "Clip", "x")
    launch_flat(
        rt, "activations", "clip_backward", (dy, x, out), dy.size, (f32(lo), f32(hi), i32(1 if inclusive else 0))
    )
    return out


def sigmoid_backward(dy: Any, y: Any, out: Any = None) -> Any:
    """dx = dy * y * (1 - y) from the forward output y, OVERWRITTEN; `out` may be dy or y."""
    rt = runtime()
    dy, y, out = _pair_grad(rt, dy, y, out, "Sigmoid", "y")
    launch_flat(rt, "activations", "sigmoid_backward", (dy, y, out), dy.size)
    return out


def tanh_backward(dy: Any, y: Any, out: Any = None) -> Any:
    """dx = dy * (1 - y^2) from the forward output y, OVERWRITTEN; `out` may be dy or y."""
    rt = runtime()
    dy, y, out = _pair_grad(rt, dy, y, out, "TanH", "y")
    launch_flat(rt, "activations", "tanh_backward", (dy, y, out), dy.size)
    return out


def softmax_backward(dy: Any, y: Any, axis: int = 1, out: Any = None) -> Any:
    """dx = y * (dy - sum_axis(dy * y)) (the sum in float64), OVERWRITTEN; `out` may be dy or y itself."""
    rt = runtime()
    dy, y, out = _pair_grad(rt, dy, y, out, "Softmax", "y")
    axis = softmax_axis(y, axis)
    if y.size == 0:
        return out
    outer, c, inner = math.prod(y.shape[:axis]), y.shape[axis], math.prod(y.shape[axis + 1 :])
    g3, y3, o3 = (a.reshape(outer, c * inner) for a in (dy, y, out))
    for r0, r1 in chunks(outer, c * inner, FLAT_LIMIT):
        if inner == 1:
            threads = min(SOFTMAX_THREADS, max(32, 1 << (c - 1).bit_length()))
            args = (g3[r0:r1], y3[r0:r1], o3[r0:r1], i32(r1 - r0), i32(c))
            launch(rt, "activations", "softmax_backward_rows", (), (min(r1 - r0, 65535), 1, 1), (threads, 1, 1), args)
        else:
            grid, block = flat_launch((r1 - r0) * inner, rt.sm_count)
            args = (g3[r0:r1], y3[r0:r1], o3[r0:r1], i32(r1 - r0), i32(c), i32(inner))
            launch(rt, "activations", "softmax_backward_strided", (), grid, block, args)
    return out


def dropout_forward(x: Any, ratio: float, train: bool = False, rng: np.random.Generator | None = None) -> tuple:
    """Caffe Dropout on the device. TEST: (a copy of x, None). TRAIN: (x * mask / (1 - ratio), mask), mask a uint8
    device array, 1 with probability 1 - ratio, from a counter-based RNG (splitmix64 of (seed, index)) whose seed is
    drawn from `rng` (one draw per call, so the stream is reproducible and resumable). The draws differ from the CPU
    kernel's (which draws from `rng` directly); the distribution is the same."""
    rt = runtime()
    x = device_input(rt, x, "Dropout input")
    check_dropout_ratio(ratio)
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
        launch(rt, "activations", "dropout_forward", (), grid, block, args)
    return y, mask


def dropout_backward(dy: Any, ratio: float, mask: Any = None, out: Any = None) -> Any:
    """Gradient of Dropout, OVERWRITTEN (into `out`, which may be dy itself). TEST (mask None): dx = dy. TRAIN:
    dx = dy * mask / (1 - ratio) with the uint8 mask `dropout_forward` returned."""
    rt = runtime()
    check_dropout_ratio(ratio)
    dy = device_input(rt, dy, "Dropout backward dy")
    out = device_output(rt, out, tuple(dy.shape), "Dropout backward out")
    if mask is None:
        if rt.ptr(out) != rt.ptr(dy):
            out[...] = dy
        return out
    if not rt.is_array(mask) or mask.dtype != np.uint8 or mask.shape != dy.shape:
        raise ValueError(f"Dropout backward mask: expected a uint8 device array of shape {dy.shape}")
    launch_flat(rt, "activations", "dropout_backward", (dy, mask, out), dy.size, (f32(1.0 / (1.0 - ratio)),))
    return out
