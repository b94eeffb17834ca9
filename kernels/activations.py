"""Activations: ReLU, Sigmoid, TanH, Softmax, Dropout (Caffe semantics, float32, any rank).

Each op has a NumPy reference (`*_ref`, float64 where rounding matters) and a Numba kernel over the flat array
(elementwise ops) or over (outer, C, inner) slices (softmax). Elementwise ops accept `out=x` for in-place use, as
Caffe's in-place ReLU/Dropout layers do. Backward passes will sit next to each forward.

Caffe semantics (caffe_facts.md 4.5-4.7):
  ReLU     y = max(x, 0) + negative_slope * min(x, 0)
  Sigmoid  y = 0.5 * tanh(0.5 * x) + 0.5   (Caffe's CPU form; equals 1 / (1 + exp(-x)) without overflow)
  Softmax  along `axis`: subtract the max, exp, divide by the sum, independently for every other index
  Dropout  TEST: y = x (a copy). TRAIN: mask ~ Bernoulli(1 - ratio), y = x * mask / (1 - ratio).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = [
    "dropout_forward",
    "dropout_forward_ref",
    "relu_forward",
    "relu_forward_ref",
    "sigmoid_forward",
    "sigmoid_forward_ref",
    "softmax_forward",
    "softmax_forward_ref",
    "tanh_forward",
    "tanh_forward_ref",
]


def _check(x: np.ndarray, what: str) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{what}: expected a float32 array, got {got}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous array, got strides {x.strides} (use np.ascontiguousarray)")


def _out_like(x: np.ndarray, out: np.ndarray | None, what: str) -> np.ndarray:
    """A fresh array like x, or `out` after checking it (it may be x itself for in-place use)."""
    if out is None:
        return np.empty_like(x)
    _check(out, f"{what} out")
    if out.shape != x.shape:
        raise ValueError(f"{what} out: expected shape {x.shape}, got {out.shape}")
    if out.ctypes.data != x.ctypes.data and np.shares_memory(out, x):
        raise ValueError(f"{what} out: must be x itself (same memory) or not overlap x")
    return out


# -- ReLU ----------------------------------------------------------------------------------------
def relu_forward_ref(x: np.ndarray, negative_slope: float = 0.0) -> np.ndarray:
    """x (any shape) float32 -> y = max(x, 0) + negative_slope * min(x, 0), same shape."""
    slope = np.float32(negative_slope)
    return np.maximum(x, np.float32(0)) + slope * np.minimum(x, np.float32(0))


@njit(cache=True, parallel=True)
def _relu_flat(x, y, slope):  # pragma: no cover - compiled
    zero = np.float32(0.0)
    for i in prange(x.size):
        v = x[i]
        y[i] = max(v, zero) + slope * min(v, zero)


def relu_forward(x: np.ndarray, negative_slope: float = 0.0, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe ReLU (leaky when negative_slope != 0). x float32 C-contiguous, any shape -> y same shape.

    `out` may be x (in place) or a separate float32 array of x's shape.
    """
    _check(x, "ReLU input")
    out = _out_like(x, out, "ReLU")
    _relu_flat(x.reshape(-1), out.reshape(-1), np.float32(negative_slope))
    return out


# -- Sigmoid and TanH ------------------------------------------------------------------------------
def sigmoid_forward_ref(x: np.ndarray) -> np.ndarray:
    """x (any shape) float32 -> 1 / (1 + exp(-x)) computed in float64, returned as float32."""
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


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


def tanh_forward_ref(x: np.ndarray) -> np.ndarray:
    """x (any shape) float32 -> tanh(x) computed in float64, returned as float32."""
    return np.tanh(x.astype(np.float64)).astype(np.float32)


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


# -- Softmax -------------------------------------------------------------------------------------
def _softmax_axis(x: np.ndarray, axis: int) -> int:
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"Softmax: axis {axis} out of range for input of shape {x.shape}")
    return axis % x.ndim


def softmax_forward_ref(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """x float32 (any rank) -> softmax along `axis` in float64, returned as float32."""
    z = x.astype(np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


@njit(cache=True, parallel=True)
def _softmax_slices(x, y):  # pragma: no cover - compiled
    """x, y (outer, C, inner): softmax over the middle axis, in float32 like Caffe (sum kept in float64)."""
    outer, c, inner = x.shape
    for o in prange(outer):
        m = np.empty(inner, dtype=np.float32)
        total = np.zeros(inner, dtype=np.float64)
        m[:] = x[o, 0]
        for cc in range(1, c):
            for i in range(inner):
                v = x[o, cc, i]
                m[i] = v if v > m[i] else m[i]  # noqa: FURB136 (strict >, NaN never wins)
        for cc in range(c):
            for i in range(inner):
                e = np.exp(x[o, cc, i] - m[i])
                y[o, cc, i] = e
                total[i] += e
        for cc in range(c):
            for i in range(inner):
                y[o, cc, i] = np.float32(y[o, cc, i] / total[i])


def softmax_forward(x: np.ndarray, axis: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe Softmax along `axis` (negative counts from the end). x float32 C-contiguous, any rank >= 1,
    e.g. (N, 1000) or (N, C, H, W) -> y same shape. `out` may be x (in place)."""
    _check(x, "Softmax input")
    axis = _softmax_axis(x, axis)
    out = _out_like(x, out, "Softmax")
    if x.size == 0:
        return out
    shape3 = (int(np.prod(x.shape[:axis])), x.shape[axis], int(np.prod(x.shape[axis + 1 :])))
    _softmax_slices(x.reshape(shape3), out.reshape(shape3))
    return out


# -- Dropout -------------------------------------------------------------------------------------
def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"Dropout: ratio must be in [0, 1), got {ratio}")


def dropout_forward_ref(x: np.ndarray, ratio: float, mask: np.ndarray | None = None) -> np.ndarray:
    """TEST (mask None): a copy of x. TRAIN: x * mask * (1 / (1 - ratio)) with mask a bool array of x's shape."""
    _check_ratio(ratio)
    if mask is None:
        return x.copy()
    return np.where(mask, x * np.float32(1.0 / (1.0 - ratio)), np.float32(0)).astype(np.float32)


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
    _check_ratio(ratio)
    if not train:
        return x.copy(), None
    rng = np.random.default_rng() if rng is None else rng
    mask = rng.random(x.shape, dtype=np.float32) < np.float32(1.0 - ratio)
    y = np.empty_like(x)
    _dropout_flat(x.reshape(-1), mask.reshape(-1), np.float32(1.0 / (1.0 - ratio)), y.reshape(-1))
    return y, mask
