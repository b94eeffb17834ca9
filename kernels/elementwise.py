"""Concat, Eltwise, BatchNorm (inference), Scale and Bias: Caffe semantics, float32, any rank.

Each op has a NumPy reference (`*_ref`) and a fast version: Numba kernels over the flat array (Eltwise) or over
(outer, G, inner) slices with one parameter per slice (BatchNorm, Scale, Bias); Concat is slice copies, which
NumPy already does at memory speed. Backward passes will sit next to each forward.

Caffe semantics (caffe_facts.md 4.10-4.12):
  Concat     bottoms laid one after another along `axis`; all other dims must match.
  Eltwise    SUM y = sum_i coeff_i * x_i (coeffs default 1, only for SUM); PROD; MAX with ties going to bottom 1
             over bottom 0 and later bottoms replacing only when strictly greater.
  BatchNorm  global stats: f = 0 if s == 0 else 1 / s; mean = f * mean_sum, var = f * var_sum (float32, as Caffe);
             y = (x - mean) / sqrt(var + eps) per channel (axis 1).
  Scale      y = x * gamma (+ beta), gamma.shape == x.shape[axis:axis + gamma.ndim] (0-d gamma: one scalar).
  Bias       y = x + beta, same broadcasting rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit, prange

__all__ = [
    "batchnorm_forward_inference",
    "batchnorm_forward_inference_ref",
    "bias_forward",
    "bias_forward_ref",
    "concat_forward",
    "concat_forward_ref",
    "eltwise_forward",
    "eltwise_forward_ref",
    "scale_forward",
    "scale_forward_ref",
]

OPERATIONS = ("SUM", "PROD", "MAX")


def _check(x: np.ndarray, what: str) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{what}: expected a float32 array, got {got}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous array, got strides {x.strides} (use np.ascontiguousarray)")


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    return a.ctypes.data == b.ctypes.data and a.shape == b.shape and a.strides == b.strides


def _check_out(out: np.ndarray | None, shape: tuple[int, ...], what: str, x: np.ndarray | None = None) -> np.ndarray:
    """A fresh float32 array of `shape`, or `out` after checking it; with x given, out must be x or not overlap it."""
    if out is None:
        return np.empty(shape, dtype=np.float32)
    _check(out, f"{what} out")
    if out.shape != shape:
        raise ValueError(f"{what} out: expected shape {shape}, got {out.shape}")
    if x is not None and not _same_memory(out, x) and np.shares_memory(out, x):
        raise ValueError(f"{what} out: must be the input itself (same memory) or not overlap it")
    return out


# -- Concat --------------------------------------------------------------------------------------
def _concat_shape(xs: Sequence[np.ndarray], axis: int) -> tuple[tuple[int, ...], int]:
    if len(xs) == 0:
        raise ValueError("Concat: expected at least one input, got none")
    for i, x in enumerate(xs):
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            raise ValueError(f"Concat input {i}: expected a float32 array, got {getattr(x, 'dtype', type(x))}")
    first = xs[0].shape
    if not -len(first) <= axis < len(first):
        raise ValueError(f"Concat: axis {axis} out of range for inputs of shape {first}")
    axis %= len(first)
    for i, x in enumerate(xs):
        if x.ndim != len(first) or x.shape[:axis] != first[:axis] or x.shape[axis + 1 :] != first[axis + 1 :]:
            raise ValueError(f"Concat input {i}: expected shape {first} except on axis {axis}, got {x.shape}")
    total = sum(x.shape[axis] for x in xs)
    return (*first[:axis], total, *first[axis + 1 :]), axis


def concat_forward_ref(xs: Sequence[np.ndarray], axis: int = 1) -> np.ndarray:
    """xs: arrays equal except on `axis` -> their concatenation along `axis` (float32)."""
    return np.concatenate(list(xs), axis=axis).astype(np.float32, copy=False)


def concat_forward(xs: Sequence[np.ndarray], axis: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe Concat. xs: float32 arrays of equal rank, equal except on `axis` -> y with the sizes on `axis` added.

    Always writes a new array (or `out`); any memory layout of the inputs is accepted.
    """
    shape, axis = _concat_shape(xs, axis)
    y = _check_out(out, shape, "Concat")
    offset = 0
    index: list[slice] = [slice(None)] * len(shape)
    for x in xs:
        index[axis] = slice(offset, offset + x.shape[axis])
        y[tuple(index)] = x
        offset += x.shape[axis]
    return y


# -- Eltwise -------------------------------------------------------------------------------------
def _check_eltwise(xs: Sequence[np.ndarray], operation: str, coeffs: Sequence[float] | None) -> None:
    if operation not in OPERATIONS:
        raise ValueError(f"Eltwise: operation must be one of {OPERATIONS}, got {operation!r}")
    if len(xs) < 2:
        raise ValueError(f"Eltwise: expected at least 2 inputs, got {len(xs)}")
    for i, x in enumerate(xs):
        _check(x, f"Eltwise input {i}")
        if x.shape != xs[0].shape:
            raise ValueError(f"Eltwise input {i}: expected shape {xs[0].shape} (same as input 0), got {x.shape}")
    if coeffs is not None:
        if operation != "SUM":
            raise ValueError(f"Eltwise: coeffs are only allowed with operation SUM, got operation {operation}")
        if len(coeffs) != len(xs):
            raise ValueError(f"Eltwise: expected one coeff per input ({len(xs)}), got {len(coeffs)}")


def eltwise_forward_ref(
    xs: Sequence[np.ndarray], operation: str = "SUM", coeffs: Sequence[float] | None = None
) -> np.ndarray:
    """xs: >= 2 float32 arrays of one shape -> y (same shape), folding the inputs in order like Caffe."""
    _check_eltwise(xs, operation, coeffs)
    if operation == "SUM":
        c = [np.float32(v) for v in coeffs] if coeffs is not None else [np.float32(1)] * len(xs)
        y = c[0] * xs[0]
        for ci, x in zip(c[1:], xs[1:]):
            y = y + ci * x
    elif operation == "PROD":
        y = xs[0] * xs[1]
        for x in xs[2:]:
            y = y * x
    else:
        y = np.where(xs[0] > xs[1], xs[0], xs[1])
        for x in xs[2:]:
            y = np.where(x > y, x, y)
    return y.astype(np.float32, copy=False)


@njit(cache=True, parallel=True)
def _axpby_flat(a, x, b, z, y):  # pragma: no cover - compiled
    for i in prange(x.size):
        y[i] = a * x[i] + b * z[i]


@njit(cache=True, parallel=True)
def _prod_flat(x, z, y):  # pragma: no cover - compiled
    for i in prange(x.size):
        y[i] = x[i] * z[i]


@njit(cache=True, parallel=True)
def _max_flat(x, z, y):  # pragma: no cover - compiled
    """y = x where x > z, else z (ties go to z). Caffe's MAX: (x, z) = (bottom 0, bottom 1), then (bottom i, y)."""
    for i in prange(x.size):
        y[i] = x[i] if x[i] > z[i] else z[i]  # noqa: FURB136 (ties go to z, as in Caffe)


def eltwise_forward(
    xs: Sequence[np.ndarray],
    operation: str = "SUM",
    coeffs: Sequence[float] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Caffe Eltwise. xs: >= 2 float32 C-contiguous arrays of one shape -> y (same shape).

    SUM y = sum_i coeffs[i] * xs[i] (coeffs default all 1); PROD; MAX (ties: bottom 1 beats bottom 0, later bottoms
    win only when strictly greater). `out` may be input 0 or input 1 itself (in place).
    """
    _check_eltwise(xs, operation, coeffs)
    y = _check_out(out, xs[0].shape, "Eltwise")
    for i, x in enumerate(xs):
        if out is not None and not (i < 2 and _same_memory(out, x)) and np.shares_memory(out, x):
            raise ValueError(f"Eltwise out: may be input 0 or input 1 itself, but overlaps input {i}")
    flat = [x.reshape(-1) for x in xs]
    yf = y.reshape(-1)
    if operation == "SUM":
        c = [np.float32(v) for v in coeffs] if coeffs is not None else [np.float32(1)] * len(xs)
        _axpby_flat(c[0], flat[0], c[1], flat[1], yf)
        for ci, x in zip(c[2:], flat[2:]):
            _axpby_flat(np.float32(1), yf, ci, x, yf)
    elif operation == "PROD":
        _prod_flat(flat[0], flat[1], yf)
        for x in flat[2:]:
            _prod_flat(yf, x, yf)
    else:
        _max_flat(flat[0], flat[1], yf)
        for x in flat[2:]:
            _max_flat(x, yf, yf)  # a later bottom replaces the running max only when strictly greater
    return y


# -- per-slice affine: BatchNorm, Scale, Bias ---------------------------------------------------------
def _slices(x: np.ndarray, param: np.ndarray, axis: int, what: str) -> tuple[int, int, int]:
    """(outer, G, inner) view sizes of x for a parameter of shape x.shape[axis:axis + param.ndim]."""
    if not -x.ndim <= axis < max(x.ndim, 1):
        raise ValueError(f"{what}: axis {axis} out of range for input of shape {x.shape}")
    axis %= max(x.ndim, 1)
    want = x.shape[axis : axis + param.ndim]
    if param.shape != want or axis + param.ndim > x.ndim:
        raise ValueError(
            f"{what}: expected parameter shape {want} (x.shape[{axis}:{axis + param.ndim}] of input "
            f"{x.shape}), got {param.shape}"
        )
    outer = int(np.prod(x.shape[:axis]))
    return outer, int(param.size), int(np.prod(x.shape[axis + param.ndim :]))


@njit(cache=True, parallel=True)
def _scale_slices(x, g, y):  # pragma: no cover - compiled
    outer, groups, inner = x.shape
    for t in prange(outer * groups):
        o, j = t // groups, t % groups
        for i in range(inner):
            y[o, j, i] = x[o, j, i] * g[j]


@njit(cache=True, parallel=True)
def _scale_bias_slices(x, g, b, y):  # pragma: no cover - compiled
    outer, groups, inner = x.shape
    for t in prange(outer * groups):
        o, j = t // groups, t % groups
        for i in range(inner):
            y[o, j, i] = x[o, j, i] * g[j] + b[j]


@njit(cache=True, parallel=True)
def _bias_slices(x, b, y):  # pragma: no cover - compiled
    outer, groups, inner = x.shape
    for t in prange(outer * groups):
        o, j = t // groups, t % groups
        for i in range(inner):
            y[o, j, i] = x[o, j, i] + b[j]


@njit(cache=True, parallel=True)
def _normalize_slices(x, mean, std, y):  # pragma: no cover - compiled
    outer, groups, inner = x.shape
    for t in prange(outer * groups):
        o, j = t // groups, t % groups
        for i in range(inner):
            y[o, j, i] = (x[o, j, i] - mean[j]) / std[j]


def _param(p, what: str) -> np.ndarray:
    p = np.asarray(p)
    if p.dtype != np.float32:
        raise ValueError(f"{what}: expected a float32 array, got {p.dtype}")
    return p if p.flags.c_contiguous else p.copy(order="C")  # (np.ascontiguousarray would make 0-d 1-d)


def scale_forward_ref(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray | None = None, axis: int = 1) -> np.ndarray:
    """x float32 (any rank), gamma of shape x.shape[axis:axis + gamma.ndim] -> x * gamma (+ beta), broadcast."""
    outer, groups, inner = _slices(x, gamma, axis, "Scale")
    y = x.reshape(outer, groups, inner) * gamma.reshape(1, groups, 1)
    if beta is not None:
        y = y + beta.reshape(1, groups, 1)
    return y.reshape(x.shape).astype(np.float32, copy=False)


def scale_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray | None = None, axis: int = 1, out: np.ndarray | None = None
) -> np.ndarray:
    """Caffe Scale: y = x * gamma (+ beta). x float32 C-contiguous; gamma (and beta) float32 of shape
    x.shape[axis:axis + gamma.ndim] (0-d: one scalar). `out` may be x (in place)."""
    _check(x, "Scale input")
    gamma = _param(gamma, "Scale gamma")
    outer, groups, inner = _slices(x, gamma, axis, "Scale")
    y = _check_out(out, x.shape, "Scale", x)
    x3, y3, g = x.reshape(outer, groups, inner), y.reshape(outer, groups, inner), gamma.reshape(-1)
    if beta is None:
        _scale_slices(x3, g, y3)
    else:
        beta = _param(beta, "Scale beta")
        if beta.shape != gamma.shape:
            raise ValueError(f"Scale: expected beta shape {gamma.shape} (same as gamma), got {beta.shape}")
        _scale_bias_slices(x3, g, beta.reshape(-1), y3)
    return y


def bias_forward_ref(x: np.ndarray, beta: np.ndarray, axis: int = 1) -> np.ndarray:
    """x float32 (any rank), beta of shape x.shape[axis:axis + beta.ndim] -> x + beta, broadcast."""
    outer, groups, inner = _slices(x, beta, axis, "Bias")
    return (x.reshape(outer, groups, inner) + beta.reshape(1, groups, 1)).reshape(x.shape).astype(np.float32)


def bias_forward(x: np.ndarray, beta: np.ndarray, axis: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe Bias: y = x + beta. x float32 C-contiguous; beta float32 of shape x.shape[axis:axis + beta.ndim].
    `out` may be x (in place)."""
    _check(x, "Bias input")
    beta = _param(beta, "Bias beta")
    outer, groups, inner = _slices(x, beta, axis, "Bias")
    y = _check_out(out, x.shape, "Bias", x)
    _bias_slices(x.reshape(outer, groups, inner), beta.reshape(-1), y.reshape(outer, groups, inner))
    return y


def _bn_stats(x: np.ndarray, mean_sum: np.ndarray, var_sum: np.ndarray, scale_factor) -> tuple[np.ndarray, ...]:
    if x.ndim < 2:
        raise ValueError(f"BatchNorm: expected an input with a channel axis (N, C, ...), got shape {x.shape}")
    c = x.shape[1]
    mean_sum, var_sum = _param(mean_sum, "BatchNorm mean_sum"), _param(var_sum, "BatchNorm var_sum")
    for name, p in (("mean_sum", mean_sum), ("var_sum", var_sum)):
        if p.size != c:
            raise ValueError(f"BatchNorm {name}: expected {c} values (one per channel of {x.shape}), got {p.shape}")
    s = np.float32(np.asarray(scale_factor, dtype=np.float32).reshape(-1)[0])
    factor = np.float32(0) if s == 0 else np.float32(1) / s
    return factor * mean_sum.reshape(-1), factor * var_sum.reshape(-1)


def batchnorm_forward_inference_ref(
    x: np.ndarray, mean_sum: np.ndarray, var_sum: np.ndarray, scale_factor, eps: float = 1e-5
) -> np.ndarray:
    """x (N, C, ...) float32 -> (x - mean) / sqrt(var + eps) per channel in float64, returned as float32."""
    mean, var = _bn_stats(x, mean_sum, var_sum, scale_factor)
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    m, v = mean.astype(np.float64).reshape(shape), var.astype(np.float64).reshape(shape)
    return ((x - m) / np.sqrt(v + eps)).astype(np.float32)


def batchnorm_forward_inference(
    x: np.ndarray,
    mean_sum: np.ndarray,
    var_sum: np.ndarray,
    scale_factor,
    eps: float = 1e-5,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Caffe BatchNorm with global statistics (use_global_stats, TEST phase).

    x (N, C, ...) float32 C-contiguous; mean_sum, var_sum (C,) float32 (blobs 0 and 1); scale_factor: blob 2, a
    number or shape-(1,) array. y = (x - mean) / sqrt(var + eps) with mean = mean_sum / s, var = var_sum / s
    (factor 0 when s == 0). `out` may be x (in place).
    """
    _check(x, "BatchNorm input")
    mean, var = _bn_stats(x, mean_sum, var_sum, scale_factor)
    std = np.sqrt(var + np.float32(eps)).astype(np.float32)
    y = _check_out(out, x.shape, "BatchNorm", x)
    n, c = x.shape[0], x.shape[1]
    inner = int(np.prod(x.shape[2:]))
    _normalize_slices(x.reshape(n, c, inner), mean, std, y.reshape(n, c, inner))
    return y
