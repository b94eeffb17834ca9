"""Concat, Eltwise, Split, BatchNorm (inference), Scale and Bias: Caffe semantics, float32, any rank.

Each op has a NumPy reference (`*_ref`, backward references in float64) and a fast version: Numba kernels over the
flat array (Eltwise, Split) or over (outer, G, inner) slices with one parameter per slice (BatchNorm, Scale, Bias);
Concat is slice copies, which NumPy already does at memory speed.

Caffe semantics (caffe_facts.md 4.10-4.14), forward / backward:
  Concat     bottoms laid one after another along `axis`; all other dims must match  /  dx_i = dy's slice i.
  Eltwise    SUM y = sum_i coeff_i * x_i (coeffs default 1, only for SUM); PROD; MAX with ties going to bottom 1
             over bottom 0 and later bottoms replacing only when strictly greater (the winner is recorded in an
             int32 mask)  /  SUM dx_i = coeff_i * dy; PROD dx_i = dy * prod_{j != i} x_j (Caffe's default
             stable_prod_grad); MAX dx_i = dy where bottom i won, else 0.
  Split      every top shares the bottom  /  dx = sum of the tops' gradients.
  BatchNorm  global stats: f = 0 if s == 0 else 1 / s; mean = f * mean_sum, var = f * var_sum (float32, as Caffe);
             y = (x - mean) / sqrt(var + eps) per channel (axis 1).
  Scale      y = x * gamma (+ beta), gamma.shape == x.shape[axis:axis + gamma.ndim] (0-d gamma: one scalar)
             /  dx = dy * gamma; dgamma = sum over the broadcast axes of dy * x; dbeta = sum of dy.
  Bias       y = x + beta, same broadcasting rule  /  dx = dy; dbeta = sum of dy.
Input gradients are OVERWRITTEN (new arrays, or `out`); parameter gradients (dgamma, dbeta) are ACCUMULATED into the
arrays passed in (the Blob diffs the solver zeroes), or returned fresh when none is passed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numba import njit, prange

__all__ = [
    "batchnorm_forward_inference",
    "batchnorm_forward_inference_ref",
    "bias_backward",
    "bias_backward_ref",
    "bias_forward",
    "bias_forward_ref",
    "concat_backward",
    "concat_backward_ref",
    "concat_forward",
    "concat_forward_ref",
    "eltwise_backward",
    "eltwise_backward_ref",
    "eltwise_forward",
    "eltwise_forward_ref",
    "scale_backward",
    "scale_backward_ref",
    "scale_forward",
    "scale_forward_ref",
    "split_backward",
    "split_backward_ref",
]

OPERATIONS = ("SUM", "PROD", "MAX")


def _ref_dtype(x: np.ndarray) -> np.dtype:
    """References return float64 for float64 input (finite-difference checks), float32 otherwise."""
    return np.dtype(np.float64 if x.dtype == np.float64 else np.float32)


def _check(x: np.ndarray, what: str) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{what}: expected a float32 array, got {got}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous array, got strides {x.strides} (use np.ascontiguousarray)")


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    same = a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    return same and a.shape == b.shape and a.strides == b.strides


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
def concat_shape(xs: Sequence[np.ndarray], axis: int) -> tuple[tuple[int, ...], int]:
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
    return np.concatenate(list(xs), axis=axis).astype(_ref_dtype(xs[0]), copy=False)


def concat_forward(xs: Sequence[np.ndarray], axis: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe Concat. xs: float32 arrays of equal rank, equal except on `axis` -> y with the sizes on `axis` added.

    Always writes a new array (or `out`); any memory layout of the inputs is accepted.
    """
    shape, axis = concat_shape(xs, axis)
    y = _check_out(out, shape, "Concat")
    offset = 0
    index: list[slice] = [slice(None)] * len(shape)
    for x in xs:
        index[axis] = slice(offset, offset + x.shape[axis])
        y[tuple(index)] = x
        offset += x.shape[axis]
    return y


def concat_sizes(dy: np.ndarray, sizes: Sequence[int], axis: int) -> int:
    if not -dy.ndim <= axis < max(dy.ndim, 1):
        raise ValueError(f"Concat backward: axis {axis} out of range for dy of shape {dy.shape}")
    axis %= dy.ndim
    if any(int(n) < 0 for n in sizes) or sum(int(n) for n in sizes) != dy.shape[axis]:
        raise ValueError(
            f"Concat backward: input sizes {list(sizes)} along axis {axis} must add up to dy's {dy.shape[axis]}"
        )
    return axis


def concat_backward_ref(dy: np.ndarray, sizes: Sequence[int], axis: int = 1) -> list[np.ndarray]:
    """dy (concatenated shape) -> one float64 gradient per input, the slices of dy of `sizes` along `axis`."""
    axis = concat_sizes(dy, sizes, axis)
    return [a.astype(np.float64) for a in np.split(dy, np.cumsum(sizes)[:-1], axis=axis)]


def concat_backward(
    dy: np.ndarray, sizes: Sequence[int], axis: int = 1, propagate_down: Sequence[bool] | None = None
) -> list[np.ndarray | None]:
    """Gradient of Concat: dy float32 (concatenated shape); sizes: each input's size along `axis`.

    Returns one new C-contiguous float32 array per input (the slice of dy), or None where propagate_down[i] is
    false.
    """
    if not isinstance(dy, np.ndarray) or dy.dtype != np.float32:
        raise ValueError(f"Concat backward dy: expected a float32 array, got {getattr(dy, 'dtype', type(dy))}")
    axis = concat_sizes(dy, sizes, axis)
    want = [True] * len(sizes) if propagate_down is None else [bool(v) for v in propagate_down]
    out: list[np.ndarray | None] = []
    offset = 0
    index: list[slice] = [slice(None)] * dy.ndim
    for n, need in zip(sizes, want):
        index[axis] = slice(offset, offset + int(n))
        out.append(np.ascontiguousarray(dy[tuple(index)]).copy() if need else None)
        offset += int(n)
    return out


# -- Eltwise -------------------------------------------------------------------------------------
def check_eltwise(
    xs: Sequence[np.ndarray], operation: str, coeffs: Sequence[float] | None, dtype_check: bool = True
) -> None:
    if operation not in OPERATIONS:
        raise ValueError(f"Eltwise: operation must be one of {OPERATIONS}, got {operation!r}")
    if len(xs) < 2:
        raise ValueError(f"Eltwise: expected at least 2 inputs, got {len(xs)}")
    for i, x in enumerate(xs):
        if dtype_check:
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
    """xs: >= 2 float32 arrays of one shape -> y (same shape), folding the inputs in order like Caffe (float64
    inputs give a float64 y, for finite-difference checks)."""
    check_eltwise(xs, operation, coeffs, dtype_check=False)
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
    return y.astype(_ref_dtype(xs[0]), copy=False)


@njit(cache=True, parallel=True)
def _axpby_flat(a, x, b, z, y):  # pragma: no cover - compiled
    for i in prange(x.size):
        y[i] = a * x[i] + b * z[i]


@njit(cache=True)
def _axpby_flat_serial(a, x, b, z, y):  # pragma: no cover - compiled
    for i in range(x.size):
        y[i] = a * x[i] + b * z[i]


SERIAL_SUM_BELOW = 1 << 16  # elements: smaller sums run serially (a parallel launch costs more than the adds)


def eltwise_sum_runner(n_inputs: int, size: int, coeffs: Sequence[float] | None = None):
    """Eltwise SUM of `n_inputs` float32 C-contiguous arrays of `size` elements with the shape work done once (for
    a CPU Net's execution plan): `run(xs, out)`, out not overlapping any input but 0 and 1, unchecked. Same bits as
    `eltwise_forward`."""
    c = [np.float32(v) for v in coeffs] if coeffs is not None else [np.float32(1)] * n_inputs
    kernel = _axpby_flat_serial if size < SERIAL_SUM_BELOW else _axpby_flat
    one = np.float32(1)

    def run(xs: Sequence[np.ndarray], out: np.ndarray) -> None:
        yf = out.reshape(-1)
        kernel(c[0], xs[0].reshape(-1), c[1], xs[1].reshape(-1), yf)
        for ci, x in zip(c[2:], xs[2:]):
            kernel(one, yf, ci, x.reshape(-1), yf)

    return run


@njit(cache=True, parallel=True)
def _prod_flat(x, z, y):  # pragma: no cover - compiled
    for i in prange(x.size):
        y[i] = x[i] * z[i]


@njit(cache=True, parallel=True)
def _max_flat(x, z, y):  # pragma: no cover - compiled
    """y = x where x > z, else z (ties go to z). Caffe's MAX: (x, z) = (bottom 0, bottom 1), then (bottom i, y)."""
    for i in prange(x.size):
        y[i] = x[i] if x[i] > z[i] else z[i]  # noqa: FURB136 (ties go to z, as in Caffe)


@njit(cache=True, parallel=True)
def _max_flat_mask(x, z, y, mask):  # pragma: no cover - compiled
    """Bottoms 0 and 1: y = x if x > z else z, mask = 0 or 1."""
    for i in prange(x.size):
        a, b = x[i], z[i]
        win = a > b
        y[i] = a if win else b
        mask[i] = 0 if win else 1


@njit(cache=True, parallel=True)
def _max_update_mask(x, y, mask, k):  # pragma: no cover - compiled
    """Bottom k >= 2: where x > y, y = x and mask = k."""
    for i in prange(x.size):
        if x[i] > y[i]:
            y[i] = x[i]
            mask[i] = k


def eltwise_forward(
    xs: Sequence[np.ndarray],
    operation: str = "SUM",
    coeffs: Sequence[float] | None = None,
    out: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Caffe Eltwise. xs: >= 2 float32 C-contiguous arrays of one shape -> y (same shape).

    SUM y = sum_i coeffs[i] * xs[i] (coeffs default all 1); PROD; MAX (ties: bottom 1 beats bottom 0, later bottoms
    win only when strictly greater). `out` may be input 0 or input 1 itself (in place). `mask` (MAX only): an int32
    C-contiguous array of y's shape that receives the index of the winning input, for `eltwise_backward`.
    """
    check_eltwise(xs, operation, coeffs)
    y = _check_out(out, xs[0].shape, "Eltwise")
    if mask is not None:
        if operation != "MAX":
            raise ValueError(f"Eltwise mask: only MAX records a winner, got operation {operation}")
        if not isinstance(mask, np.ndarray) or mask.dtype != np.int32 or mask.shape != y.shape:
            raise ValueError(f"Eltwise mask: expected an int32 array of shape {y.shape}")
        if not mask.flags.c_contiguous:
            raise ValueError("Eltwise mask: expected a C-contiguous array")
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
    elif mask is None:
        _max_flat(flat[0], flat[1], yf)
        for x in flat[2:]:
            _max_flat(x, yf, yf)  # a later bottom replaces the running max only when strictly greater
    else:
        mf = mask.reshape(-1)
        _max_flat_mask(flat[0], flat[1], yf, mf)
        for k, x in enumerate(flat[2:], start=2):
            _max_update_mask(x, yf, mf, np.int32(k))
    return y


def _eltwise_max_mask_ref(xs: Sequence[np.ndarray]) -> np.ndarray:
    mask = np.where(xs[0] > xs[1], 0, 1).astype(np.int32)
    y = np.where(xs[0] > xs[1], xs[0], xs[1])
    for k, x in enumerate(xs[2:], start=2):
        mask = np.where(x > y, k, mask).astype(np.int32)
        y = np.where(x > y, x, y)
    return mask


def eltwise_backward_ref(
    dy: np.ndarray, xs: Sequence[np.ndarray], operation: str = "SUM", coeffs: Sequence[float] | None = None
) -> list[np.ndarray]:
    """dy, xs (the forward inputs) -> one float64 gradient per input (formulas in the module doc)."""
    check_eltwise(xs, operation, coeffs, dtype_check=False)
    g = dy.astype(np.float64)
    if operation == "SUM":
        c = [float(np.float32(v)) for v in coeffs] if coeffs is not None else [1.0] * len(xs)
        return [ci * g for ci in c]
    if operation == "PROD":
        x64 = [x.astype(np.float64) for x in xs]
        return [g * np.prod([x for j, x in enumerate(x64) if j != i], axis=0) for i in range(len(xs))]
    mask = _eltwise_max_mask_ref(xs)
    return [np.where(mask == i, g, 0.0) for i in range(len(xs))]


@njit(cache=True, parallel=True)
def _scaled_copy_flat(a, x, y):  # pragma: no cover - compiled
    for i in prange(x.size):
        y[i] = a * x[i]


@njit(cache=True, parallel=True)
def _mask_select_flat(dy, mask, k, dx):  # pragma: no cover - compiled
    zero = np.float32(0.0)
    for i in prange(dy.size):
        dx[i] = dy[i] if mask[i] == k else zero


def eltwise_backward(
    dy: np.ndarray,
    xs: Sequence[np.ndarray],
    operation: str = "SUM",
    coeffs: Sequence[float] | None = None,
    mask: np.ndarray | None = None,
    propagate_down: Sequence[bool] | None = None,
) -> list[np.ndarray | None]:
    """Gradient of Eltwise: dy float32 C-contiguous (y's shape), xs the forward inputs (PROD and MAX read them; for
    SUM only their count and shape matter). Returns one new float32 array per input (OVERWRITTEN semantics), or None
    where propagate_down[i] is false.

    SUM dx_i = coeffs[i] * dy; PROD dx_i = dy * prod_{j != i} xs[j]; MAX dx_i = dy where input i won (from `mask`
    as recorded by `eltwise_forward(..., mask=...)`, else recomputed from xs), else 0.
    """
    check_eltwise(xs, operation, coeffs)
    _check(dy, "Eltwise backward dy")
    if dy.shape != xs[0].shape:
        raise ValueError(f"Eltwise backward dy: expected shape {xs[0].shape} (the inputs'), got {dy.shape}")
    want = [True] * len(xs) if propagate_down is None else [bool(v) for v in propagate_down]
    if len(want) != len(xs):
        raise ValueError(f"Eltwise backward: expected {len(xs)} propagate_down flags, got {len(want)}")
    if operation == "MAX" and any(want):
        if mask is None:
            mask = np.empty(dy.shape, dtype=np.int32)
            eltwise_forward(xs, "MAX", mask=mask)
        elif not isinstance(mask, np.ndarray) or mask.dtype != np.int32 or mask.shape != dy.shape:
            raise ValueError(f"Eltwise backward mask: expected an int32 array of shape {dy.shape}")
        mask = np.ascontiguousarray(mask)
    g = dy.reshape(-1)
    grads: list[np.ndarray | None] = []
    for i, need in enumerate(want):
        if not need:
            grads.append(None)
            continue
        dx = np.empty_like(dy)
        d = dx.reshape(-1)
        if operation == "SUM":
            _scaled_copy_flat(np.float32(1.0 if coeffs is None else coeffs[i]), g, d)
        elif operation == "PROD":
            others = [x.reshape(-1) for j, x in enumerate(xs) if j != i]
            _prod_flat(g, others[0], d)
            for x in others[1:]:
                _prod_flat(d, x, d)
        else:
            _mask_select_flat(g, mask.reshape(-1), np.int32(i), d)
        grads.append(dx)
    return grads


# -- Split ---------------------------------------------------------------------------------------
def split_backward_ref(dys: Sequence[np.ndarray]) -> np.ndarray:
    """The tops' gradients (one shape) -> their sum in float64."""
    return np.sum([d.astype(np.float64) for d in dys], axis=0)


def split_backward(dys: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of Split: the sum of the tops' gradients dys (>= 1 float32 C-contiguous arrays of one shape), in
    order (Caffe: top 0 + top 1, then + each further top). Returns a new array, or `out` filled (OVERWRITTEN; it may
    be dys[0] itself, otherwise it must not overlap any of dys)."""
    if len(dys) == 0:
        raise ValueError("Split backward: expected at least one top gradient, got none")
    for i, d in enumerate(dys):
        _check(d, f"Split backward dy {i}")
        if d.shape != dys[0].shape:
            raise ValueError(f"Split backward dy {i}: expected shape {dys[0].shape} (as dy 0), got {d.shape}")
    y = _check_out(out, dys[0].shape, "Split backward")
    for i, d in enumerate(dys):
        if out is not None and not (i == 0 and _same_memory(out, d)) and np.shares_memory(out, d):
            raise ValueError(f"Split backward out: may be dy 0 itself, but overlaps dy {i}")
    yf, flat = y.reshape(-1), [d.reshape(-1) for d in dys]
    if len(flat) == 1:
        if not _same_memory(y, dys[0]):
            y[...] = dys[0]
        return y
    one = np.float32(1.0)
    _axpby_flat(one, flat[0], one, flat[1], yf)
    for d in flat[2:]:
        _axpby_flat(one, yf, one, d, yf)
    return y


# -- per-slice affine: BatchNorm, Scale, Bias ---------------------------------------------------------
def param_slices(x: np.ndarray, param: np.ndarray, axis: int, what: str) -> tuple[int, int, int]:
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
    outer = math.prod(x.shape[:axis])
    return outer, int(param.size), math.prod(x.shape[axis + param.ndim :])


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
    outer, groups, inner = param_slices(x, gamma, axis, "Scale")
    y = x.reshape(outer, groups, inner) * gamma.reshape(1, groups, 1)
    if beta is not None:
        y = y + beta.reshape(1, groups, 1)
    return y.reshape(x.shape).astype(_ref_dtype(x), copy=False)


def scale_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray | None = None, axis: int = 1, out: np.ndarray | None = None
) -> np.ndarray:
    """Caffe Scale: y = x * gamma (+ beta). x float32 C-contiguous; gamma (and beta) float32 of shape
    x.shape[axis:axis + gamma.ndim] (0-d: one scalar). `out` may be x (in place)."""
    _check(x, "Scale input")
    gamma = _param(gamma, "Scale gamma")
    outer, groups, inner = param_slices(x, gamma, axis, "Scale")
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
    outer, groups, inner = param_slices(x, beta, axis, "Bias")
    return (x.reshape(outer, groups, inner) + beta.reshape(1, groups, 1)).reshape(x.shape).astype(_ref_dtype(x))


def bias_forward(x: np.ndarray, beta: np.ndarray, axis: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe Bias: y = x + beta. x float32 C-contiguous; beta float32 of shape x.shape[axis:axis + beta.ndim].
    `out` may be x (in place)."""
    _check(x, "Bias input")
    beta = _param(beta, "Bias beta")
    outer, groups, inner = param_slices(x, beta, axis, "Bias")
    y = _check_out(out, x.shape, "Bias", x)
    _bias_slices(x.reshape(outer, groups, inner), beta.reshape(-1), y.reshape(outer, groups, inner))
    return y


def scale_backward_ref(
    dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, axis: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dy, x (the forward input), gamma -> (dx, dgamma, dbeta) in float64: dy * gamma, sum(dy * x), sum(dy) over the
    broadcast axes (dgamma and dbeta have gamma's shape)."""
    outer, groups, inner = param_slices(x, gamma, axis, "Scale")
    g = dy.astype(np.float64).reshape(outer, groups, inner)
    x3 = x.astype(np.float64).reshape(outer, groups, inner)
    dx = g * gamma.astype(np.float64).reshape(1, groups, 1)
    return (
        dx.reshape(x.shape),
        (g * x3).sum(axis=(0, 2)).reshape(gamma.shape),
        g.sum(axis=(0, 2)).reshape(gamma.shape),
    )


def bias_backward_ref(dy: np.ndarray, beta: np.ndarray, axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """dy, beta -> (dx, dbeta) in float64: dy itself and its sum over the broadcast axes (beta's shape)."""
    outer, groups, inner = param_slices(dy, beta, axis, "Bias")
    g = dy.astype(np.float64)
    return g, g.reshape(outer, groups, inner).sum(axis=(0, 2)).reshape(beta.shape)


@njit(cache=True, parallel=True)
def _scale_grad_slices(dy, x, g, dx, dg, db, need_dx, need_dg, need_db):  # pragma: no cover - compiled
    """dy, x, dx (outer, G, inner); g (G,); dg, db (G,) float64 sums (written, not accumulated). dx may be dy."""
    outer, groups, inner = dy.shape
    for j in prange(groups):
        sg = 0.0
        sb = 0.0
        for o in range(outer):
            for i in range(inner):
                d = dy[o, j, i]
                if need_dg:
                    sg += np.float64(d) * np.float64(x[o, j, i])
                if need_db:
                    sb += np.float64(d)
                if need_dx:
                    dx[o, j, i] = d * g[j]
        dg[j] = sg
        db[j] = sb


def _accumulate(target: np.ndarray | None, value: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Add value (float64, flat) into target (float32 of `shape`), or return it as a new float32 array."""
    if target is None:
        return value.astype(np.float32).reshape(shape)
    if not isinstance(target, np.ndarray) or target.dtype != np.float32 or target.shape != shape:
        raise ValueError(f"{what}: expected a float32 array of shape {shape} to accumulate into")
    target += value.astype(np.float32).reshape(shape)
    return target


def scale_backward(
    dy: np.ndarray,
    x: np.ndarray,
    gamma: np.ndarray,
    axis: int = 1,
    *,
    need_dx: bool = True,
    need_dgamma: bool = True,
    need_dbeta: bool = False,
    out: np.ndarray | None = None,
    dgamma: np.ndarray | None = None,
    dbeta: np.ndarray | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Gradient of Scale: dy, x (the forward input) float32 C-contiguous of one shape, gamma as in `scale_forward`.

    Returns (dx, dgamma, dbeta), each None unless asked for (need_*). dx = dy * gamma is OVERWRITTEN (a new array,
    or `out`, which may be dy itself for an in-place layer). dgamma = sum(dy * x) and dbeta = sum(dy) over the
    broadcast axes (gamma's shape) are ACCUMULATED into `dgamma` / `dbeta` when given (the parameter diffs), else
    returned as new arrays. Sums run in float64.
    """
    _check(dy, "Scale backward dy")
    gamma = _param(gamma, "Scale gamma")
    outer, groups, inner = param_slices(dy, gamma, axis, "Scale")
    if need_dgamma:
        _check(x, "Scale backward x")
        if x.shape != dy.shape:
            raise ValueError(f"Scale backward x: expected shape {dy.shape} (as dy), got {x.shape}")
    dx = _check_out(out, dy.shape, "Scale backward", dy) if need_dx else None
    if dx is not None and need_dgamma and np.shares_memory(dx, x) and not _same_memory(dx, dy):
        raise ValueError("Scale backward out: overlaps x")
    shape3 = (outer, groups, inner)
    dg, db = np.zeros(groups), np.zeros(groups)
    _scale_grad_slices(
        dy.reshape(shape3),
        (x if need_dgamma else dy).reshape(shape3),
        gamma.reshape(-1),
        (dx if dx is not None else dy).reshape(shape3),
        dg,
        db,
        need_dx,
        need_dgamma,
        need_dbeta,
    )
    return (
        dx,
        _accumulate(dgamma, dg, gamma.shape, "Scale backward dgamma") if need_dgamma else None,
        _accumulate(dbeta, db, gamma.shape, "Scale backward dbeta") if need_dbeta else None,
    )


def bias_backward(
    dy: np.ndarray,
    beta: np.ndarray,
    axis: int = 1,
    *,
    need_dx: bool = True,
    need_dbeta: bool = True,
    out: np.ndarray | None = None,
    dbeta: np.ndarray | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Gradient of Bias: dy float32 C-contiguous, beta as in `bias_forward` (only its shape is used).

    Returns (dx, dbeta), each None unless asked for. dx = dy is OVERWRITTEN (a copy, or `out`; `out` may be dy itself
    for an in-place layer, then nothing is copied). dbeta = sum(dy) over the broadcast axes is ACCUMULATED into
    `dbeta` when given, else returned as a new array.
    """
    _check(dy, "Bias backward dy")
    beta = _param(beta, "Bias beta")
    outer, groups, inner = param_slices(dy, beta, axis, "Bias")
    dx = None
    if need_dx:
        dx = _check_out(out, dy.shape, "Bias backward", dy)
        if not _same_memory(dx, dy):
            dx[...] = dy
    if not need_dbeta:
        return dx, None
    shape3 = (outer, groups, inner)
    db, unused = np.zeros(groups), np.zeros(groups)
    one = np.ones(groups, dtype=np.float32)
    _scale_grad_slices(dy.reshape(shape3), dy.reshape(shape3), one, dy.reshape(shape3), unused, db, False, False, True)
    return dx, _accumulate(dbeta, db, beta.shape, "Bias backward dbeta")


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
    inner = math.prod(x.shape[2:])
    _normalize_slices(x.reshape(n, c, inner), mean, std, y.reshape(n, c, inner))
    return y
