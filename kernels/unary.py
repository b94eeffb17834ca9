"""Element-wise layers beyond ReLU/Clip/Sigmoid/TanH: ELU, Power, Exp, Log, AbsVal, BNLL, Threshold, Swish, PReLU.

Caffe semantics (BVLC src/caffe/layers/*_layer.cpp, read for the formulas), forward / backward; every backward
OVERWRITES dx, PReLU's slope gradient ACCUMULATES into the array passed in:
  ELU        y = x (x > 0) else alpha * (exp(x) - 1)  /  dx = dy * (1 if x > 0 else alpha + y); computed from y
             (y > 0 iff x > 0), so it works in place
  Power      y = (shift + scale * x) ^ power; power * scale == 0: y = 1 if power == 0 else shift ^ power
             /  dx = dy * power * scale * (shift + scale * x) ^ (power - 1)   (x needed)
  Exp        y = base ^ (shift + scale * x) = outer * exp(inner * x), inner = scale * ln(base), outer = base ^ shift
             (base -1: e)  /  dx = dy * inner * y  (from y, works in place)
  Log        y = log_base(shift + scale * x) (base -1: e)  /  dx = dy * scale / ln(base) / (shift + scale * x)
  AbsVal     y = |x|  /  dx = dy * sign(x), sign(0) = 0
  BNLL       y = x + log(1 + exp(-x)) if x > 0 else log(1 + exp(x))  /  dx = dy * e / (e + 1), e = exp(min(x, 50))
  Threshold  y = 1 if x > threshold else 0  (no backward in Caffe)
  Swish      y = x * s, s = sigmoid(beta * x) = 1 / (1 + exp(-beta * x)) (Caffe's CPU sigmoid is the equal
             0.5 * tanh(0.5 z) + 0.5; float32 tanhf costs ~25 ns an element here, expf ~3 ns: within 1 ulp-ish)
             /  dx = dy * (beta * y + s * (1 - beta * y))
  PReLU      y = max(x, 0) + a_c * min(x, 0) over axis 1 (one a for channel_shared)
             /  dx = dy * (1 if x > 0 else a_c); da_c += sum of dy * x where x <= 0

Kernels: one compiled pass over the flat array per op and direction (`_<op>_flat`, `_<op>_grad_flat`), PReLU over
(N, C, inner) slices; calls below SERIAL_BELOW elements run the serial twin (kernels.serial) of the same source, so
both give the same bits. NumPy references (`*_ref`) compute in float64. Benchmark: none of its own (one memory-bound
pass each; `crema time` shows them per layer).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from kernels.serial import serial_twin

__all__ = [
    "absval_backward",
    "absval_backward_ref",
    "absval_forward",
    "absval_forward_ref",
    "bnll_backward",
    "bnll_backward_ref",
    "bnll_forward",
    "bnll_forward_ref",
    "elu_backward",
    "elu_backward_ref",
    "elu_forward",
    "elu_forward_ref",
    "exp_backward",
    "exp_backward_ref",
    "exp_constants",
    "exp_forward",
    "exp_forward_ref",
    "log_backward",
    "log_backward_ref",
    "log_forward",
    "log_forward_ref",
    "power_backward",
    "power_backward_ref",
    "power_forward",
    "power_forward_ref",
    "prelu_backward",
    "prelu_backward_ref",
    "prelu_forward",
    "prelu_forward_ref",
    "swish_backward",
    "swish_backward_ref",
    "swish_forward",
    "swish_forward_ref",
    "threshold_forward",
    "threshold_forward_ref",
    "unary_runner",
]

SERIAL_BELOW = 1 << 16  # elements: smaller calls run the serial twin (a parallel launch costs ~2 us on 2 cores)
BNLL_THRESHOLD = 50.0  # Caffe's kBNLL_THRESHOLD: exp(x) is clamped at exp(50) in the gradient


def _check(x: np.ndarray, what: str) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{what}: expected a float32 array, got {got}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous array, got strides {x.strides} (use np.ascontiguousarray)")


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _out(like: np.ndarray, out: np.ndarray | None, what: str, *inputs: np.ndarray) -> np.ndarray:
    """A new array like `like`, or `out` checked: same shape, and each input either is out itself or does not
    overlap it."""
    if out is None:
        return np.empty_like(like)
    _check(out, f"{what} out")
    if out.shape != like.shape:
        raise ValueError(f"{what} out: expected shape {like.shape}, got {out.shape}")
    for a in inputs:
        if np.shares_memory(out, a) and _address(out) != _address(a):
            raise ValueError(f"{what} out: must be an input itself (same memory) or not overlap it")
    return out


def _grad(dy: np.ndarray, saved: np.ndarray, out: np.ndarray | None, what: str) -> np.ndarray:
    _check(dy, f"{what} backward dy")
    _check(saved, f"{what} backward input")
    if saved.shape != dy.shape:
        raise ValueError(f"{what} backward: dy has shape {dy.shape}, the saved array {saved.shape}")
    return _out(dy, out, f"{what} backward", dy, saved)


def _pick(kernel, size: int):
    return serial_twin(kernel) if size < SERIAL_BELOW else kernel


def _f64(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64)


# -- ELU -------------------------------------------------------------------------------------------
def elu_forward_ref(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    z = _f64(x)
    return np.where(z > 0, z, float(np.float32(alpha)) * np.expm1(np.minimum(z, 0.0)))


def elu_backward_ref(dy: np.ndarray, x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    z = _f64(x)
    a = float(np.float32(alpha))
    return _f64(dy) * np.where(z > 0, 1.0, a * np.exp(np.minimum(z, 0.0)))


@njit(cache=True, parallel=True)
def _elu_flat(x, y, alpha):  # pragma: no cover - compiled
    zero, one = np.float32(0.0), np.float32(1.0)
    for i in prange(x.size):
        v = x[i]
        y[i] = max(v, zero) + alpha * (np.exp(min(v, zero)) - one)


@njit(cache=True, parallel=True)
def _elu_grad_flat(dy, y, alpha, dx):  # pragma: no cover - compiled
    one = np.float32(1.0)
    for i in prange(dy.size):
        v = y[i]
        dx[i] = dy[i] * (one if v > 0 else alpha + v)


def elu_forward(x: np.ndarray, alpha: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe ELU. x float32 C-contiguous, any shape; `out` may be x (in place)."""
    _check(x, "ELU input")
    out = _out(x, out, "ELU", x)
    _pick(_elu_flat, x.size)(x.reshape(-1), out.reshape(-1), np.float32(alpha))
    return out


def elu_backward(dy: np.ndarray, y: np.ndarray, alpha: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ELU from its OUTPUT y: dx = dy * (1 if y > 0 else alpha + y). `out` may be dy or y."""
    dx = _grad(dy, y, out, "ELU")
    _pick(_elu_grad_flat, dy.size)(dy.reshape(-1), y.reshape(-1), np.float32(alpha), dx.reshape(-1))
    return dx


# -- Power ----------------------------------------------------------------------------------------
def power_forward_ref(x: np.ndarray, power: float = 1.0, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    p, s, t = (float(np.float32(v)) for v in (power, scale, shift))
    if p * s == 0:
        return np.full(x.shape, 1.0 if p == 0 else t**p)
    with np.errstate(all="ignore"):
        return np.power(t + s * _f64(x), p)


def power_backward_ref(dy: np.ndarray, x: np.ndarray, power: float = 1.0, scale: float = 1.0, shift: float = 0.0):
    p, s, t = (float(np.float32(v)) for v in (power, scale, shift))
    if p * s == 0:
        return np.zeros(dy.shape)
    with np.errstate(all="ignore"):
        return _f64(dy) * p * s * np.power(t + s * _f64(x), p - 1.0)


@njit(cache=True, parallel=True)
def _power_flat(x, y, power, scale, shift):  # pragma: no cover - compiled
    for i in prange(x.size):
        y[i] = (shift + scale * x[i]) ** power


@njit(cache=True, parallel=True)
def _power_grad_flat(dy, x, power, scale, shift, dx):  # pragma: no cover - compiled
    k = power * scale
    pm1 = power - np.float32(1.0)
    for i in prange(dy.size):
        dx[i] = dy[i] * (k * (shift + scale * x[i]) ** pm1)


def power_forward(
    x: np.ndarray, power: float = 1.0, scale: float = 1.0, shift: float = 0.0, out: np.ndarray | None = None
) -> np.ndarray:
    """Caffe Power: y = (shift + scale * x) ^ power (a constant when power * scale == 0). `out` may be x."""
    _check(x, "Power input")
    out = _out(x, out, "Power", x)
    p, s, t = np.float32(power), np.float32(scale), np.float32(shift)
    if p * s == 0:
        out[...] = np.float32(1.0) if p == 0 else np.float32(t**p)
    else:
        _pick(_power_flat, x.size)(x.reshape(-1), out.reshape(-1), p, s, t)
    return out


def power_backward(
    dy: np.ndarray, x: np.ndarray, power: float = 1.0, scale: float = 1.0, shift: float = 0.0, out=None
) -> np.ndarray:
    """Gradient of Power from its INPUT x: dx = dy * power * scale * (shift + scale * x) ^ (power - 1)."""
    dx = _grad(dy, x, out, "Power")
    p, s, t = np.float32(power), np.float32(scale), np.float32(shift)
    if p * s == 0:
        dx[...] = 0
    else:
        _pick(_power_grad_flat, dy.size)(dy.reshape(-1), x.reshape(-1), p, s, t, dx.reshape(-1))
    return dx


# -- Exp ------------------------------------------------------------------------------------------
def exp_constants(base: float = -1.0, scale: float = 1.0, shift: float = 0.0) -> tuple[float, float]:
    """(inner, outer) of y = outer * exp(inner * x) for Caffe's Exp (base -1: e). Raises for base <= 0 (not -1)."""
    base, scale, shift = (float(np.float32(v)) for v in (base, scale, shift))
    if base != -1.0 and base <= 0:
        raise ValueError(f"Exp: base must be strictly positive (or -1 for e), got {base}")
    log_base = 1.0 if base == -1.0 else math.log(base)
    return log_base * scale, 1.0 if shift == 0 else math.exp(shift * log_base)


def exp_forward_ref(x: np.ndarray, base: float = -1.0, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    inner, outer = exp_constants(base, scale, shift)
    with np.errstate(over="ignore"):
        return outer * np.exp(inner * _f64(x))


def exp_backward_ref(dy: np.ndarray, x: np.ndarray, base: float = -1.0, scale: float = 1.0, shift: float = 0.0):
    inner, _ = exp_constants(base, scale, shift)
    return _f64(dy) * inner * exp_forward_ref(x, base, scale, shift)


@njit(cache=True, parallel=True)
def _exp_flat(x, y, inner, outer):  # pragma: no cover - compiled
    for i in prange(x.size):
        y[i] = outer * np.exp(inner * x[i])


@njit(cache=True, parallel=True)
def _scaled_product_flat(dy, y, k, dx):  # pragma: no cover - compiled
    for i in prange(dy.size):
        dx[i] = dy[i] * y[i] * k


def exp_forward(
    x: np.ndarray, base: float = -1.0, scale: float = 1.0, shift: float = 0.0, out: np.ndarray | None = None
) -> np.ndarray:
    """Caffe Exp: y = base ^ (shift + scale * x). `out` may be x."""
    _check(x, "Exp input")
    inner, outer = exp_constants(base, scale, shift)
    out = _out(x, out, "Exp", x)
    _pick(_exp_flat, x.size)(x.reshape(-1), out.reshape(-1), np.float32(inner), np.float32(outer))
    return out


def exp_backward(
    dy: np.ndarray, y: np.ndarray, base: float = -1.0, scale: float = 1.0, shift: float = 0.0, out=None
) -> np.ndarray:
    """Gradient of Exp from its OUTPUT y: dx = dy * y * scale * ln(base). `out` may be dy or y."""
    inner, _ = exp_constants(base, scale, shift)
    dx = _grad(dy, y, out, "Exp")
    _pick(_scaled_product_flat, dy.size)(dy.reshape(-1), y.reshape(-1), np.float32(inner), dx.reshape(-1))
    return dx


# -- Log ------------------------------------------------------------------------------------------
def _log_constants(base: float, scale: float) -> float:
    """1 / ln(base) (1 for base -1, meaning e)."""
    base = float(np.float32(base))
    if base != -1.0 and (base <= 0 or base == 1.0):
        raise ValueError(f"Log: base must be strictly positive and not 1 (or -1 for e), got {base}")
    return 1.0 if base == -1.0 else 1.0 / math.log(base)


def log_forward_ref(x: np.ndarray, base: float = -1.0, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    k = _log_constants(base, scale)
    with np.errstate(all="ignore"):
        return np.log(float(np.float32(shift)) + float(np.float32(scale)) * _f64(x)) * k


def log_backward_ref(dy: np.ndarray, x: np.ndarray, base: float = -1.0, scale: float = 1.0, shift: float = 0.0):
    k = _log_constants(base, scale)
    s, t = float(np.float32(scale)), float(np.float32(shift))
    with np.errstate(all="ignore"):
        return _f64(dy) * (s * k) / (t + s * _f64(x))


@njit(cache=True, parallel=True)
def _log_flat(x, y, scale, shift, k):  # pragma: no cover - compiled
    for i in prange(x.size):
        y[i] = np.log(shift + scale * x[i]) * k


@njit(cache=True, parallel=True)
def _log_grad_flat(dy, x, scale, shift, num, dx):  # pragma: no cover - compiled
    for i in prange(dy.size):
        dx[i] = dy[i] * num / (shift + scale * x[i])


def log_forward(
    x: np.ndarray, base: float = -1.0, scale: float = 1.0, shift: float = 0.0, out: np.ndarray | None = None
) -> np.ndarray:
    """Caffe Log: y = log_base(shift + scale * x). `out` may be x."""
    _check(x, "Log input")
    k = _log_constants(base, scale)
    out = _out(x, out, "Log", x)
    _pick(_log_flat, x.size)(x.reshape(-1), out.reshape(-1), np.float32(scale), np.float32(shift), np.float32(k))
    return out


def log_backward(
    dy: np.ndarray, x: np.ndarray, base: float = -1.0, scale: float = 1.0, shift: float = 0.0, out=None
) -> np.ndarray:
    """Gradient of Log from its INPUT x: dx = dy * scale / ln(base) / (shift + scale * x)."""
    k = _log_constants(base, scale)
    dx = _grad(dy, x, out, "Log")
    s, t = np.float32(scale), np.float32(shift)
    _pick(_log_grad_flat, dy.size)(dy.reshape(-1), x.reshape(-1), s, t, np.float32(s * np.float32(k)), dx.reshape(-1))
    return dx


# -- AbsVal, BNLL, Threshold ------------------------------------------------------------------------
def absval_forward_ref(x: np.ndarray) -> np.ndarray:
    return np.abs(_f64(x))


def absval_backward_ref(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    return _f64(dy) * np.sign(_f64(x))


@njit(cache=True, parallel=True)
def _abs_flat(x, y):  # pragma: no cover - compiled
    for i in prange(x.size):
        y[i] = abs(x[i])


@njit(cache=True, parallel=True)
def _sign_grad_flat(dy, x, dx):  # pragma: no cover - compiled
    one, zero = np.float32(1.0), np.float32(0.0)
    for i in prange(dy.size):
        v = x[i]
        dx[i] = dy[i] * ((one if v > zero else zero) - (one if v < zero else zero))


def absval_forward(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe AbsVal: y = |x|."""
    _check(x, "AbsVal input")
    out = _out(x, out, "AbsVal", x)
    _pick(_abs_flat, x.size)(x.reshape(-1), out.reshape(-1))
    return out


def absval_backward(dy: np.ndarray, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of AbsVal from its INPUT x: dx = dy * sign(x) (0 at 0)."""
    dx = _grad(dy, x, out, "AbsVal")
    _pick(_sign_grad_flat, dy.size)(dy.reshape(-1), x.reshape(-1), dx.reshape(-1))
    return dx


def bnll_forward_ref(x: np.ndarray) -> np.ndarray:
    z = _f64(x)
    return np.where(z > 0, z + np.log1p(np.exp(-np.abs(z))), np.log1p(np.exp(np.minimum(z, 0.0))))


def bnll_backward_ref(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    e = np.exp(np.minimum(_f64(x), BNLL_THRESHOLD))
    return _f64(dy) * e / (e + 1.0)


@njit(cache=True, parallel=True)
def _bnll_flat(x, y):  # pragma: no cover - compiled
    one = np.float32(1.0)
    for i in prange(x.size):
        v = x[i]
        y[i] = v + np.log(one + np.exp(-v)) if v > 0 else np.log(one + np.exp(v))


@njit(cache=True, parallel=True)
def _bnll_grad_flat(dy, x, limit, dx):  # pragma: no cover - compiled
    one = np.float32(1.0)
    for i in prange(dy.size):
        e = np.exp(min(x[i], limit))
        dx[i] = dy[i] * e / (e + one)


def bnll_forward(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe BNLL (softplus, computed without overflow). `out` may be x."""
    _check(x, "BNLL input")
    out = _out(x, out, "BNLL", x)
    _pick(_bnll_flat, x.size)(x.reshape(-1), out.reshape(-1))
    return out


def bnll_backward(dy: np.ndarray, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of BNLL from its INPUT x: dx = dy * e / (e + 1), e = exp(min(x, 50))."""
    dx = _grad(dy, x, out, "BNLL")
    _pick(_bnll_grad_flat, dy.size)(dy.reshape(-1), x.reshape(-1), np.float32(BNLL_THRESHOLD), dx.reshape(-1))
    return dx


def threshold_forward_ref(x: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    return (x > np.float32(threshold)).astype(np.float64)


@njit(cache=True, parallel=True)
def _threshold_flat(x, y, t):  # pragma: no cover - compiled
    one, zero = np.float32(1.0), np.float32(0.0)
    for i in prange(x.size):
        y[i] = one if x[i] > t else zero


def threshold_forward(x: np.ndarray, threshold: float = 0.0, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe Threshold: y = 1 where x > threshold, else 0 (NaN gives 0). `out` may be x."""
    _check(x, "Threshold input")
    out = _out(x, out, "Threshold", x)
    _pick(_threshold_flat, x.size)(x.reshape(-1), out.reshape(-1), np.float32(threshold))
    return out


# -- Swish ----------------------------------------------------------------------------------------
def swish_forward_ref(x: np.ndarray, beta: float = 1.0) -> np.ndarray:
    z = _f64(x)
    return z / (1.0 + np.exp(-float(np.float32(beta)) * z))


def swish_backward_ref(dy: np.ndarray, x: np.ndarray, beta: float = 1.0) -> np.ndarray:
    z, b = _f64(x), float(np.float32(beta))
    s = 1.0 / (1.0 + np.exp(-b * z))
    y = z * s
    return _f64(dy) * (b * y + s * (1.0 - b * y))


@njit(cache=True, parallel=True)
def _swish_flat(x, y, beta):  # pragma: no cover - compiled
    one = np.float32(1.0)
    for i in prange(x.size):
        v = x[i]
        y[i] = v / (one + np.exp(-(beta * v)))  # exp(+large) = inf gives -0, the limit


@njit(cache=True, parallel=True)
def _swish_grad_flat(dy, x, beta, dx):  # pragma: no cover - compiled
    one = np.float32(1.0)
    for i in prange(dy.size):
        v = x[i]
        s = one / (one + np.exp(-(beta * v)))
        by = beta * (v * s)
        dx[i] = dy[i] * (by + s * (one - by))


def swish_forward(x: np.ndarray, beta: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe Swish: y = x * sigmoid(beta * x). `out` may be x."""
    _check(x, "Swish input")
    out = _out(x, out, "Swish", x)
    _pick(_swish_flat, x.size)(x.reshape(-1), out.reshape(-1), np.float32(beta))
    return out


def swish_backward(dy: np.ndarray, x: np.ndarray, beta: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of Swish from its INPUT x: dx = dy * (beta * y + s * (1 - beta * y))."""
    dx = _grad(dy, x, out, "Swish")
    _pick(_swish_grad_flat, dy.size)(dy.reshape(-1), x.reshape(-1), np.float32(beta), dx.reshape(-1))
    return dx


# -- PReLU ----------------------------------------------------------------------------------------
def _prelu_view(x: np.ndarray, slope: np.ndarray, what: str) -> tuple[int, int, int]:
    """(N, C, inner) of x for a slope of C values (or 1, shared)."""
    if x.ndim < 2:
        raise ValueError(f"{what}: expected an input of at least 2 axes (N, C, ...), got shape {x.shape}")
    c = x.shape[1]
    if slope.size not in (1, c):
        raise ValueError(f"{what}: expected {c} slopes (one per channel) or 1 (shared), got {slope.size}")
    return x.shape[0], c, math.prod(x.shape[2:])


def prelu_forward_ref(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    n, c, inner = _prelu_view(x, slope, "PReLU")
    a = np.broadcast_to(_f64(slope).reshape(-1), (c,)).reshape(1, c, 1)
    z = _f64(x).reshape(n, c, inner)
    return (np.maximum(z, 0.0) + a * np.minimum(z, 0.0)).reshape(x.shape)


def prelu_backward_ref(dy: np.ndarray, x: np.ndarray, slope: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dslope) in float64; dslope has slope's size (summed over channels when shared)."""
    n, c, inner = _prelu_view(x, slope, "PReLU")
    a = np.broadcast_to(_f64(slope).reshape(-1), (c,)).reshape(1, c, 1)
    z, g = _f64(x).reshape(n, c, inner), _f64(dy).reshape(n, c, inner)
    dx = g * np.where(z > 0, 1.0, a)
    da = (g * z * (z <= 0)).sum(axis=(0, 2))
    return dx.reshape(x.shape), (da.sum(keepdims=True) if slope.size == 1 else da)


@njit(cache=True, parallel=True)
def _prelu_slices(x, a, y):  # pragma: no cover - compiled
    n, c, inner = x.shape
    zero = np.float32(0.0)
    shared = a.size == 1
    for t in prange(n * c):
        j = t % c
        s = a[0] if shared else a[j]
        o = t // c
        for i in range(inner):
            v = x[o, j, i]
            y[o, j, i] = max(v, zero) + s * min(v, zero)


@njit(cache=True, parallel=True)
def _prelu_grad_slices(dy, x, a, dx, need_dx):  # pragma: no cover - compiled
    """dx (when need_dx) and the per-channel sums of dy * x over x <= 0, returned in float64 (one per channel)."""
    n, c, inner = x.shape
    shared = a.size == 1
    one = np.float32(1.0)
    sums = np.zeros(c, dtype=np.float64)
    for j in prange(c):
        s = a[0] if shared else a[j]
        acc = 0.0
        for o in range(n):
            for i in range(inner):
                v = x[o, j, i]
                g = dy[o, j, i]
                if v <= 0:
                    acc += np.float64(g) * np.float64(v)
                if need_dx:
                    dx[o, j, i] = g * (one if v > 0 else s)
        sums[j] = acc
    return sums


def prelu_forward(x: np.ndarray, slope: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe PReLU. x float32 (N, C, ...) C-contiguous; slope float32 of C values or 1 (channel_shared); `out` may
    be x."""
    _check(x, "PReLU input")
    slope = np.ascontiguousarray(np.asarray(slope, np.float32).reshape(-1))
    n, c, inner = _prelu_view(x, slope, "PReLU")
    out = _out(x, out, "PReLU", x)
    kernel = serial_twin(_prelu_slices) if x.size < SERIAL_BELOW else _prelu_slices
    kernel(x.reshape(n, c, inner), slope, out.reshape(n, c, inner))
    return out


def prelu_backward(
    dy: np.ndarray,
    x: np.ndarray,
    slope: np.ndarray,
    *,
    need_dx: bool = True,
    out: np.ndarray | None = None,
    dslope: np.ndarray | None = None,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Gradient of PReLU from its INPUT x: dx OVERWRITTEN (when need_dx; `out` may be dy), and dslope (slope's
    shape) ACCUMULATED into `dslope` when given, else returned fresh (float32). The sums run in float64."""
    _check(dy, "PReLU backward dy")
    _check(x, "PReLU backward x")
    a = np.ascontiguousarray(np.asarray(slope, np.float32).reshape(-1))
    n, c, inner = _prelu_view(x, a, "PReLU backward")
    if dy.shape != x.shape:
        raise ValueError(f"PReLU backward: dy has shape {dy.shape}, x {x.shape}")
    dx = _out(dy, out, "PReLU backward", dy, x) if need_dx else np.empty((0,), np.float32)
    view = (n, c, inner)
    dx_view = dx.reshape(view) if need_dx else np.empty((0, c, inner), np.float32)  # not written without need_dx
    sums = _prelu_grad_slices(dy.reshape(view), x.reshape(view), a, dx_view, bool(need_dx))
    total = np.asarray([sums.sum()]) if a.size == 1 else sums
    if dslope is None:
        dslope = np.zeros(np.shape(slope), np.float32)
    flat = dslope.reshape(-1)
    flat += total.astype(np.float32)
    return (dx if need_dx else None), dslope


# -- runners for a Net's execution plan -------------------------------------------------------------
def unary_runner(op: str, shape: tuple[int, ...], **params: float):
    """The forward of `op` ("elu", "power", "exp", "log", "absval", "bnll", "threshold", "swish", "prelu") for
    C-contiguous float32 arrays of `shape`, with the parameter and shape work done once (a CPU Net's plan keeps it):
    returns run(x, out); out may be x. The same kernels and constants as the `*_forward` functions (same bits).
    PReLU takes its slopes at each call: run(x, out, slope)."""
    size = math.prod(shape)
    if op == "prelu":
        n, c, inner = shape[0], shape[1], math.prod(shape[2:])
        kernel = serial_twin(_prelu_slices) if size < SERIAL_BELOW else _prelu_slices
        view = (n, c, inner)
        return lambda x, out, slope: kernel(x.reshape(view), slope.reshape(-1), out.reshape(view))
    f32 = np.float32
    if op == "power":
        p, s, t = f32(params["power"]), f32(params["scale"]), f32(params["shift"])
        if p * s == 0:
            value = f32(1.0) if p == 0 else f32(t**p)

            def fill(x, out):
                out[...] = value

            return fill
        kernel, args = _power_flat, (p, s, t)
    elif op == "exp":
        inner, outer = exp_constants(params["base"], params["scale"], params["shift"])
        kernel, args = _exp_flat, (f32(inner), f32(outer))
    elif op == "log":
        k = _log_constants(params["base"], params["scale"])
        kernel, args = _log_flat, (f32(params["scale"]), f32(params["shift"]), f32(k))
    else:
        table = {
            "elu": (_elu_flat, ("alpha",)),
            "absval": (_abs_flat, ()),
            "bnll": (_bnll_flat, ()),
            "threshold": (_threshold_flat, ("threshold",)),
            "swish": (_swish_flat, ("beta",)),
        }
        if op not in table:
            raise ValueError(f"unary_runner: unknown op {op!r}")
        kernel, names = table[op]
        args = tuple(f32(params[name]) for name in names)
    kernel = _pick(kernel, size)
    return lambda x, out: kernel(x.reshape(-1), out.reshape(-1), *args)
