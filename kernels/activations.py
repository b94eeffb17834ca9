"""Activations: ReLU, Sigmoid, TanH, Softmax, Dropout (Caffe semantics, float32, any rank), forward and backward.

Each op has a NumPy reference (`*_ref`, float64 where rounding matters) and a Numba kernel over the flat array
(elementwise ops) or over (outer, C, inner) slices (softmax). Elementwise ops accept `out=x` (forward) or `out=dy`
(backward) for in-place use, as Caffe's in-place ReLU/Dropout/Sigmoid/TanH layers do. ReLU, the hot one, runs a
serial kernel below SERIAL_BELOW elements (LeNet's relu1 is 64 x 500), where a parallel launch costs more than it
saves. Every backward OVERWRITES dx (none of these ops has parameters).

Caffe semantics (caffe_facts.md 4.5-4.7), forward / backward:
  ReLU     y = max(x, 0) + negative_slope * min(x, 0)  /  dx = dy * (x > 0 ? 1 : negative_slope) (slope at x == 0);
           in place the forward output stands in for x: y > 0 iff x > 0 when negative_slope >= 0
  Sigmoid  y = 0.5 * tanh(0.5 * x) + 0.5   (Caffe's CPU form; equals 1 / (1 + exp(-x)) without overflow)
           /  dx = dy * y * (1 - y), from the output y
  TanH     y = tanh(x)  /  dx = dy * (1 - y^2), from the output y
  Softmax  along `axis`: subtract the max, exp, divide by the sum, independently for every other index
           /  dx = y * (dy - sum_axis(dy * y)), from the output y
  Dropout  TEST: y = x (a copy). TRAIN: mask ~ Bernoulli(1 - ratio), y = x * mask / (1 - ratio)
           /  TRAIN: dx = dy * mask / (1 - ratio) with the forward's mask; TEST: dx = dy
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, prange, types
from numba.extending import intrinsic

from kernels.serial import SMALL_WORK
from kernels.tasks import Task, share16

__all__ = [
    "clip_backward",
    "clip_backward_ref",
    "clip_forward",
    "clip_forward_ref",
    "dropout_backward",
    "dropout_backward_ref",
    "dropout_forward",
    "dropout_forward_ref",
    "relu_backward",
    "relu_backward_ref",
    "relu_forward",
    "relu_forward_ref",
    "sigmoid_backward",
    "sigmoid_backward_ref",
    "sigmoid_forward",
    "sigmoid_forward_ref",
    "softmax_backward",
    "softmax_backward_ref",
    "softmax_forward",
    "softmax_forward_ref",
    "tanh_backward",
    "tanh_backward_ref",
    "tanh_forward",
    "tanh_forward_ref",
]

SERIAL_BELOW = 1 << 16  # elements: smaller elementwise ReLU calls run a serial kernel


def _ref_dtype(x: np.ndarray) -> np.dtype:
    """References return float64 for float64 input (finite-difference checks), float32 otherwise."""
    return np.dtype(np.float64 if x.dtype == np.float64 else np.float32)


def _check(x: np.ndarray, what: str) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{what}: expected a float32 array, got {got}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous array, got strides {x.strides} (use np.ascontiguousarray)")


def _out_like(x: np.ndarray, out: np.ndarray | None, what: str, name: str = "x") -> np.ndarray:
    """A fresh array like x, or `out` after checking it (it may be x itself for in-place use)."""
    if out is None:
        return np.empty_like(x)
    _check(out, f"{what} out")
    if out.shape != x.shape:
        raise ValueError(f"{what} out: expected shape {x.shape}, got {out.shape}")
    if np.shares_memory(out, x) and _address(out) != _address(x):
        raise ValueError(f"{what} out: must be {name} itself (same memory) or not overlap {name}")
    return out


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _grad_args(dy: np.ndarray, other: np.ndarray, out: np.ndarray | None, what: str, name: str) -> np.ndarray:
    """Check a backward's dy and its saved array (`name`: x, y or mask) and return dx: `out` (which may be dy itself,
    for in-place layers, or overlap nothing) or a new array."""
    _check(dy, f"{what} backward dy")
    if not isinstance(other, np.ndarray) or other.shape != dy.shape or not other.flags.c_contiguous:
        got = f"shape {other.shape}" if isinstance(other, np.ndarray) else type(other).__name__
        raise ValueError(f"{what} backward {name}: expected a C-contiguous array of dy's shape {dy.shape}, got {got}")
    dx = _out_like(dy, out, f"{what} backward", "dy")
    if np.shares_memory(dx, other) and _address(dx) != _address(other):
        raise ValueError(f"{what} backward out: may be {name} itself or dy itself, but overlaps {name}")
    return dx


# -- ReLU ----------------------------------------------------------------------------------------
def relu_forward_ref(x: np.ndarray, negative_slope: float = 0.0) -> np.ndarray:
    """x (any shape) float32 -> y = max(x, 0) + negative_slope * min(x, 0), same shape."""
    slope = np.float32(negative_slope)
    return np.maximum(x, np.float32(0)) + slope * np.minimum(x, np.float32(0))


def relu_backward_ref(dy: np.ndarray, x: np.ndarray, negative_slope: float = 0.0) -> np.ndarray:
    """dy, x (any shape) -> dx = dy * (1 if x > 0 else negative_slope) in float64."""
    return dy.astype(np.float64) * np.where(x > 0, 1.0, float(np.float32(negative_slope)))


def _relu_worker(t, x, y, slope, workers):  # pragma: no cover - compiled
    """Worker t's share (kernels.tasks; whole 16-float blocks) of `_relu_flat_serial`: a task, not a prange loop, so
    a plan with no OpenMP loop runs on kernels.taskpool's threads (CaffeNet's fc6 / fc7 at batch 64)."""
    lo, hi = share16(x.size, t, workers)
    _relu_flat_serial(x[lo:hi], y[lo:hi], slope)


@njit(cache=True)
def _relu_flat_serial(x, y, slope):  # pragma: no cover - compiled
    zero = np.float32(0.0)
    for i in range(x.size):
        v = x[i]
        y[i] = max(v, zero) + slope * min(v, zero)


def _relu_grad_worker(t, dy, x, slope, dx, workers):  # pragma: no cover - compiled
    """Worker t's share (kernels.tasks; whole 16-float blocks) of `_relu_grad_flat_serial`."""
    lo, hi = share16(dy.size, t, workers)
    _relu_grad_flat_serial(dy[lo:hi], x[lo:hi], slope, dx[lo:hi])


@njit(cache=True)
def _relu_grad_flat_serial(dy, x, slope, dx):  # pragma: no cover - compiled
    """dx = dy * (1 if x > 0 else slope). In place (dx is dy: an in-place ReLU's backward) the loop reads and writes dy
    alone: with dx and dy both in it, LLVM's run-time overlap check failed and the scalar loop ran (LeNet's relu1 at
    batch 64, 32,000 floats: 15.6 against 4.4 us)."""
    one = np.float32(1.0)
    if dx.size > 0 and dx.ctypes.data == dy.ctypes.data:
        for i in range(dy.size):
            dy[i] = dy[i] * (one if x[i] > 0 else slope)
        return
    for i in range(dy.size):
        dx[i] = dy[i] * (one if x[i] > 0 else slope)  # a product, as Caffe: 0 * inf stays NaN


_RELU = Task(_relu_worker, (types.float32[::1], types.float32[::1], types.float32, types.int64))
_RELU_GRAD = Task(_relu_grad_worker, (*(types.float32[::1],) * 2, types.float32, types.float32[::1], types.int64))


def _relu_flat(x, y, slope) -> None:
    workers = numba.get_num_threads()
    _RELU.parallel(_RELU.address, workers, x, y, slope, workers)


def relu_forward(x: np.ndarray, negative_slope: float = 0.0, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe ReLU (leaky when negative_slope != 0). x float32 C-contiguous, any shape -> y same shape.

    `out` may be x (in place) or a separate float32 array of x's shape.
    """
    _check(x, "ReLU input")
    out = _out_like(x, out, "ReLU")
    kernel = _relu_flat_serial if x.size < SERIAL_BELOW else _relu_flat
    kernel(x.reshape(-1), out.reshape(-1), np.float32(negative_slope))
    return out


def relu_backward(
    dy: np.ndarray, x: np.ndarray, negative_slope: float = 0.0, out: np.ndarray | None = None
) -> np.ndarray:
    """Gradient of ReLU: dx = dy * (1 if x > 0 else negative_slope), OVERWRITTEN into a new array or `out`.

    dy, x: float32 C-contiguous, same shape. x is the forward input, or the forward output when the layer ran in
    place (valid for negative_slope >= 0, where y > 0 iff x > 0; Caffe does the same). `out` may be dy itself or x
    itself (in place) or a separate array.
    """
    _check(x, "ReLU backward x")
    dx = _grad_args(dy, x, out, "ReLU", "x")
    # a task either way, the small case on this thread alone: a replayed training pass records it (net.train_replay)
    workers = 1 if dy.size < SERIAL_BELOW else numba.get_num_threads()
    run = _RELU_GRAD.serial if workers == 1 else _RELU_GRAD.parallel
    run(_RELU_GRAD.address, workers, dy.reshape(-1), x.reshape(-1), np.float32(negative_slope), dx.reshape(-1), workers)
    return dx


# -- Clip (Caffe's Clip, and ReLU6 = Clip to [0, 6]) ---------------------------------------------------
def clip_forward_ref(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """x (any shape) -> y = min(max(x, lo), hi), same dtype rules as the other references."""
    dt = _ref_dtype(x)
    return np.minimum(np.maximum(x.astype(dt), dt.type(lo)), dt.type(hi))


def clip_backward_ref(dy: np.ndarray, x: np.ndarray, lo: float, hi: float, *, inclusive: bool = True) -> np.ndarray:
    """dx = dy where lo <= x <= hi (Caffe's Clip), or lo < x < hi with inclusive=False (x is then the forward
    output of an in-place layer, which is always inside the range), else 0; float64."""
    inside = (x >= lo) & (x <= hi) if inclusive else (x > lo) & (x < hi)
    return dy.astype(np.float64) * inside


@njit(cache=True, parallel=True)
def _clip_flat(x, y, lo, hi):  # pragma: no cover - compiled
    for i in prange(x.size):
        y[i] = min(max(x[i], lo), hi)


@njit(cache=True)
def _clip_flat_serial(x, y, lo, hi):  # pragma: no cover - compiled
    for i in range(x.size):
        y[i] = min(max(x[i], lo), hi)


@njit(cache=True, parallel=True)
def _clip_grad_flat(dy, x, lo, hi, inclusive, dx):  # pragma: no cover - compiled
    zero = np.float32(0.0)
    for i in prange(dy.size):
        v = x[i]
        inside = (v >= lo and v <= hi) if inclusive else (v > lo and v < hi)
        dx[i] = dy[i] if inside else zero


def clip_forward(x: np.ndarray, lo: float, hi: float, out: np.ndarray | None = None) -> np.ndarray:
    """y = min(max(x, lo), hi) elementwise (Caffe's Clip; ReLU6 is lo 0, hi 6). x float32 C-contiguous; `out` may
    be x (in place) or a separate float32 array of x's shape."""
    _check(x, "Clip input")
    out = _out_like(x, out, "Clip")
    kernel = _clip_flat_serial if x.size < SERIAL_BELOW else _clip_flat
    kernel(x.reshape(-1), out.reshape(-1), np.float32(lo), np.float32(hi))
    return out


def clip_backward(
    dy: np.ndarray, x: np.ndarray, lo: float, hi: float, *, inclusive: bool = True, out: np.ndarray | None = None
) -> np.ndarray:
    """Gradient of Clip, OVERWRITTEN into a new array or `out`: dx = dy where lo <= x <= hi (Caffe), else 0. For an
    in-place layer x holds the output, always inside [lo, hi]: pass inclusive=False so the clipped elements (now
    exactly lo or hi) get no gradient."""
    _check(x, "Clip backward x")
    dx = _grad_args(dy, x, out, "Clip", "x")
    _clip_grad_flat(dy.reshape(-1), x.reshape(-1), np.float32(lo), np.float32(hi), bool(inclusive), dx.reshape(-1))
    return dx


# -- Sigmoid and TanH ------------------------------------------------------------------------------
def sigmoid_forward_ref(x: np.ndarray) -> np.ndarray:
    """x (any shape) float32 -> 1 / (1 + exp(-x)) computed in float64, returned as float32."""
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(_ref_dtype(x))


@njit(cache=True, parallel=True)
def _sigmoid_flat(x, y):  # pragma: no cover - compiled
    half = np.float32(0.5)
    for i in prange(x.size):
        y[i] = half * np.tanh(half * x[i]) + half


def sigmoid_forward(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe Sigmoid, y = 0.5 * tanh(0.5 * x) + 0.5. x float32 C-contiguous, any shape; `out` may be x."""
    _check(x, "Sigmoid input")
    out = _out_like(x, out, "Sigmoid")
    _sigmoid_flat(x.reshape(-1), out.reshape(-1))
    return out


def sigmoid_backward_ref(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dy, y (the forward output) -> dx = dy * y * (1 - y) in float64."""
    y64 = y.astype(np.float64)
    return dy.astype(np.float64) * y64 * (1.0 - y64)


@njit(cache=True, parallel=True)
def _sigmoid_grad_flat(dy, y, dx):  # pragma: no cover - compiled
    one = np.float32(1.0)
    for i in prange(dy.size):
        s = y[i]
        dx[i] = dy[i] * s * (one - s)


def sigmoid_backward(dy: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of Sigmoid from its output y: dx = dy * y * (1 - y), OVERWRITTEN. dy, y float32 C-contiguous, same
    shape; `out` may be dy or y itself (in place)."""
    _check(y, "Sigmoid backward y")
    dx = _grad_args(dy, y, out, "Sigmoid", "y")
    _sigmoid_grad_flat(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx


def tanh_forward_ref(x: np.ndarray) -> np.ndarray:
    """x (any shape) float32 -> tanh(x) computed in float64, returned as float32."""
    return np.tanh(x.astype(np.float64)).astype(_ref_dtype(x))


@njit(cache=True, parallel=True)
def _tanh_flat(x, y):  # pragma: no cover - compiled
    for i in prange(x.size):
        y[i] = np.tanh(x[i])


def tanh_forward(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe TanH. x float32 C-contiguous, any shape -> y same shape; `out` may be x."""
    _check(x, "TanH input")
    out = _out_like(x, out, "TanH")
    _tanh_flat(x.reshape(-1), out.reshape(-1))
    return out


def tanh_backward_ref(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dy, y (the forward output) -> dx = dy * (1 - y^2) in float64."""
    y64 = y.astype(np.float64)
    return dy.astype(np.float64) * (1.0 - y64 * y64)


@njit(cache=True, parallel=True)
def _tanh_grad_flat(dy, y, dx):  # pragma: no cover - compiled
    one = np.float32(1.0)
    for i in prange(dy.size):
        t = y[i]
        dx[i] = dy[i] * (one - t * t)


def tanh_backward(dy: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of TanH from its output y: dx = dy * (1 - y^2), OVERWRITTEN. dy, y float32 C-contiguous, same shape;
    `out` may be dy or y itself (in place)."""
    _check(y, "TanH backward y")
    dx = _grad_args(dy, y, out, "TanH", "y")
    _tanh_grad_flat(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx


# -- Softmax -------------------------------------------------------------------------------------
def softmax_axis(x: np.ndarray, axis: int) -> int:
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"Softmax: axis {axis} out of range for input of shape {x.shape}")
    return axis % x.ndim


def softmax_forward_ref(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """x float32 (any rank) -> softmax along `axis` in float64, returned as float32."""
    z = x.astype(np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(_ref_dtype(x))


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose bits are the int32 `bits` (LLVM bitcast: vectorises, unlike a view)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.FloatType())

    return sig, codegen


@njit(cache=True, inline="always", error_model="numpy")
def _exp_nonpositive(x):  # pragma: no cover - compiled
    """e**x for a float32 x <= 0 (softmax's x - max), in float32 arithmetic a loop vectorises: n = round(x / ln 2),
    r = x - n ln 2 in two parts (Cody-Waite), e**r by Cephes' expf polynomial, times 2**n made from its bits; 0 below
    -87.33654 (where e**x leaves the normal floats; libm's expf gives denormals down to -103.9, all < 1.2e-38, so a
    softmax differs there by less than that), NaN for NaN. Within 1 ulp of the exact value on [-87.3, 0]
    (tests/kernels/test_activations.py; libm's expf: 0.5)."""
    n = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - n * np.float32(0.693359375)
    r = r - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * (r * r) + r + np.float32(1.0)
    n = n if n > np.float32(-127.0) else np.float32(-127.0)  # noqa: FURB136 (NaN -> -127: no NaN to an int)
    scale = _f32_from_bits(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
    return np.float32(0.0) if x < np.float32(-87.33654) else p * scale


def _softmax_worker(t, x, y, workers):  # pragma: no cover - compiled
    """Worker t's share (kernels.tasks) of the outer slices of x, y (outer, C, inner): softmax over the middle axis,
    in float32 like Caffe (the sum kept in float64; the exp ``_exp_nonpositive``, within an ulp of libm's). A task,
    not a prange loop: a plan with no OpenMP loop runs on kernels.taskpool's threads. With inner == 1 (N x C: the
    nets' classifiers) each slice is flat loops over C, the exp and the division vectorised, no allocation."""
    outer, c, inner = x.shape
    o0, o1 = t * outer // workers, (t + 1) * outer // workers
    if inner == 1:
        x2, y2 = x.reshape(outer, c), y.reshape(outer, c)
        for o in range(o0, o1):
            xr, yr = x2[o], y2[o]
            m = xr[0]
            for cc in range(1, c):
                v = xr[cc]
                m = v if v > m else m  # noqa: FURB136 (strict >, NaN never wins)
            for cc in range(c):
                yr[cc] = _exp_nonpositive(xr[cc] - m)
            total = 0.0
            for cc in range(c):
                total += yr[cc]
            for cc in range(c):
                yr[cc] = np.float32(yr[cc] / total)
        return
    m = np.empty(inner, dtype=np.float32)
    total = np.empty(inner, dtype=np.float64)
    for o in range(o0, o1):
        for i in range(inner):  # not m[:] = x[o, 0]: a slice copy compiles Numba's shape-error message (2-3 s)
            m[i] = x[o, 0, i]
            total[i] = 0.0
        for cc in range(1, c):
            for i in range(inner):
                v = x[o, cc, i]
                m[i] = v if v > m[i] else m[i]  # noqa: FURB136 (strict >, NaN never wins)
        for cc in range(c):
            for i in range(inner):
                e = _exp_nonpositive(x[o, cc, i] - m[i])
                y[o, cc, i] = e
                total[i] += e
        for cc in range(c):
            for i in range(inner):
                y[o, cc, i] = np.float32(y[o, cc, i] / total[i])


def softmax_forward(x: np.ndarray, axis: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe Softmax along `axis` (negative counts from the end). x float32 C-contiguous, any rank >= 1,
    e.g. (N, 1000) or (N, C, H, W) -> y same shape. `out` may be x (in place)."""
    _check(x, "Softmax input")
    axis = softmax_axis(x, axis)
    out = _out_like(x, out, "Softmax")
    if x.size == 0:
        return out
    shape3 = (math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1 :]))
    _softmax_slices(x.reshape(shape3), out.reshape(shape3))
    return out


_SOFTMAX = Task(_softmax_worker, (types.float32[:, :, ::1], types.float32[:, :, ::1], types.int64))


def _softmax_slices(x: np.ndarray, y: np.ndarray, serial: bool = False) -> None:
    """`_softmax_worker` over the outer slices, on the threads (on this one: `serial`)."""
    workers = 1 if serial else max(1, min(numba.get_num_threads(), x.shape[0]))
    (_SOFTMAX.serial if workers == 1 else _SOFTMAX.parallel)(_SOFTMAX.address, workers, x, y, workers)


def softmax_runner(shape: tuple[int, ...], axis: int = 1):
    """``softmax_forward`` for C-contiguous float32 arrays of `shape`, with the shape work done once (a CPU Net's
    execution plan keeps it): returns run(x, out); out may be x."""
    axis = axis % len(shape)
    shape3 = (math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :]))
    if 0 in shape3:
        return lambda x, out: None

    serial = math.prod(shape3) < SMALL_WORK

    def run(x: np.ndarray, out: np.ndarray) -> None:
        _softmax_slices(x.reshape(shape3), out.reshape(shape3), serial)

    return run


def softmax_backward_ref(dy: np.ndarray, y: np.ndarray, axis: int = 1) -> np.ndarray:
    """dy, y (the forward output) -> dx = y * (dy - sum_axis(dy * y)) in float64."""
    g, y64 = dy.astype(np.float64), y.astype(np.float64)
    return y64 * (g - (g * y64).sum(axis=axis, keepdims=True))


@njit(cache=True, parallel=True)
def _softmax_grad_slices(dy, y, dx):  # pragma: no cover - compiled
    """dy, y, dx (outer, C, inner): dx = y * (dy - sum_C(dy * y)), the sum in float64; dx may be dy."""
    outer, c, inner = dy.shape
    for o in prange(outer):
        dot = np.zeros(inner, dtype=np.float64)
        for cc in range(c):
            for i in range(inner):
                dot[i] += np.float64(dy[o, cc, i]) * np.float64(y[o, cc, i])
        for cc in range(c):
            for i in range(inner):
                dx[o, cc, i] = (dy[o, cc, i] - np.float32(dot[i])) * y[o, cc, i]


def softmax_backward(dy: np.ndarray, y: np.ndarray, axis: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of Softmax along `axis` from its output y: dx = y * (dy - sum_axis(dy * y)), OVERWRITTEN.

    dy, y float32 C-contiguous, same shape (any rank >= 1); `out` may be dy or y itself (in place)."""
    _check(y, "Softmax backward y")
    dx = _grad_args(dy, y, out, "Softmax", "y")
    axis = softmax_axis(y, axis)
    if y.size == 0:
        return dx
    shape3 = (math.prod(y.shape[:axis]), y.shape[axis], math.prod(y.shape[axis + 1 :]))
    _softmax_grad_slices(dy.reshape(shape3), y.reshape(shape3), dx.reshape(shape3))
    return dx


# -- Dropout -------------------------------------------------------------------------------------
def check_dropout_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"Dropout: ratio must be in [0, 1), got {ratio}")


def dropout_forward_ref(x: np.ndarray, ratio: float, mask: np.ndarray | None = None) -> np.ndarray:
    """TEST (mask None): a copy of x. TRAIN: x * mask * (1 / (1 - ratio)) with mask a bool array of x's shape."""
    check_dropout_ratio(ratio)
    if mask is None:
        return x.copy()
    return np.where(mask, x * np.float32(1.0 / (1.0 - ratio)), np.float32(0)).astype(_ref_dtype(x))


@njit(cache=True, parallel=True)
def _dropout_flat(x, mask, scale, y):  # pragma: no cover - compiled
    zero = np.float32(0.0)
    for i in prange(x.size):
        y[i] = x[i] * scale if mask[i] else zero


def dropout_forward(
    x: np.ndarray, ratio: float, train: bool = False, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Caffe Dropout. x float32 C-contiguous, any shape -> (y, mask).

    TEST (train=False): y is a copy of x and mask is None. TRAIN: mask is a bool array of x's shape, True with
    probability 1 - ratio (drawn from `rng`, default a fresh `np.random.default_rng()`), and
    y = x * mask / (1 - ratio) ("inverted dropout"); keep the mask for the backward pass.
    """
    _check(x, "Dropout input")
    check_dropout_ratio(ratio)
    if not train:
        return x.copy(), None
    rng = np.random.default_rng() if rng is None else rng
    mask = rng.random(x.shape, dtype=np.float32) < np.float32(1.0 - ratio)
    y = np.empty_like(x)
    _dropout_flat(x.reshape(-1), mask.reshape(-1), np.float32(1.0 / (1.0 - ratio)), y.reshape(-1))
    return y, mask


def dropout_backward_ref(dy: np.ndarray, ratio: float, mask: np.ndarray | None = None) -> np.ndarray:
    """TEST (mask None): dy in float64. TRAIN: dy * mask / (1 - ratio) in float64."""
    check_dropout_ratio(ratio)
    g = dy.astype(np.float64)
    return g if mask is None else g * mask * float(np.float32(1.0 / (1.0 - ratio)))


@njit(cache=True, parallel=True)
def _dropout_grad_flat(dy, mask, scale, dx):  # pragma: no cover - compiled
    zero = np.float32(0.0)
    for i in prange(dy.size):
        dx[i] = dy[i] * (scale if mask[i] else zero)  # a product, as Caffe (dy * mask * scale)


def dropout_backward(
    dy: np.ndarray, ratio: float, mask: np.ndarray | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Gradient of Dropout, OVERWRITTEN into a new array or `out` (which may be dy itself, in place).

    TEST (mask None): dx = dy. TRAIN: dx = dy * mask / (1 - ratio), with the bool mask `dropout_forward` returned.
    """
    check_dropout_ratio(ratio)
    if mask is None:
        _check(dy, "Dropout backward dy")
        dx = _out_like(dy, out, "Dropout backward", "dy")
        if _address(dx) != _address(dy):
            dx[...] = dy
        return dx
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise ValueError(f"Dropout backward mask: expected a bool array, got {getattr(mask, 'dtype', type(mask))}")
    dx = _grad_args(dy, mask, out, "Dropout", "mask")
    _dropout_grad_flat(dy.reshape(-1), mask.reshape(-1), np.float32(1.0 / (1.0 - ratio)), dx.reshape(-1))
    return dx
