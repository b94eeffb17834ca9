"""Local response normalisation (Caffe LRN), forward and backward, NCHW float32.

Kernels, in the order they appear:
  0. `lrn_forward_ref`, `lrn_backward_ref`  NumPy references in float64: zero-padded window sums, then the power.
  1. `_lrn_across_worker`   ACROSS_CHANNELS, a task (kernels.tasks) over (image, block of BLOCK pixels); a running
                            sum of squares walks the channels (add the channel entering the window, drop the one
                            leaving).
  2. `_lrn_within_planes`   Numba, WITHIN_CHANNEL: prange over the N*C planes, separable n x n box sum of x^2.
  3. `_lrn_across_backward_blocks`  Numba, same tasks as 1: pass 1 recomputes the scale with the running sum and
                            writes dy * scale^-beta and the ratio dy * y / scale (a C x BLOCK buffer); pass 2 walks
                            a running sum of that ratio over the channel window.
  4. `_lrn_within_backward_planes`  Numba, per plane: the same with separable box sums.
Public: `lrn_forward`, `lrn_backward`.

Caffe semantics (caffe_facts.md 4.3), n = local_size (odd), r = (n - 1) / 2:
  ACROSS_CHANNELS: scale_c = k + alpha / n * sum_{c'=c-r}^{c+r} x_{c'}^2 (zero outside [0, C)); y = x * scale^-beta
     backward: dx_c = dy_c * scale_c^-beta - (2 alpha beta / n) x_c * sum_{|c'-c|<=r} dy_c' y_c' / scale_c'
  WITHIN_CHANNEL:  y = x * (1 + alpha / n^2 * sum over the n x n window, zero padded, of x^2)^-beta  (k ignored)
     backward: the same with the n x n window (the box sum is its own transpose) and 2 alpha beta / n^2.
The backward recomputes the scale from x (Caffe keeps it from the forward; recomputing costs one running sum)
and OVERWRITES dx (LRN has no parameters).

Precision: the running sum is kept in float64 (squares of float32 values are exact in float64), so adding and
removing channels never drifts, however large the activations. The power is taken in float32; beta == 0.75
(CaffeNet, AlexNet) uses 1 / sqrt(s * sqrt(s)), within 3 float32 ulps of s**-0.75 and several times faster than
powf; beta == 1 and beta == 0.5 are special-cased likewise.

Timing (norm1/norm2 forward and backward against torch): `python -m benchmarks --only layers --filter norm`.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange, types

from kernels.tasks import Task

__all__ = ["lrn_backward", "lrn_backward_ref", "lrn_forward", "lrn_forward_ref"]

REGIONS = ("ACROSS_CHANNELS", "WITHIN_CHANNEL")
BLOCK = 128  # pixels per ACROSS task: long enough to vectorise, short enough to give N=1 several tasks


def check_lrn_params(local_size: int, beta: float, region: str) -> None:
    if local_size <= 0 or local_size % 2 == 0:
        raise ValueError(f"LRN: local_size must be odd and > 0, got {local_size}")
    if region not in REGIONS:
        raise ValueError(f"LRN: region must be one of {REGIONS}, got {region!r}")
    if not math.isfinite(beta):
        raise ValueError(f"LRN: beta must be finite, got {beta}")


def _check(x: np.ndarray, local_size: int, beta: float, region: str, what: str = "LRN input") -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{what}: expected a 4-D float32 array (N, C, H, W), got {got}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous array, got strides {x.strides} (use np.ascontiguousarray)")
    check_lrn_params(local_size, beta, region)


def _out(out: np.ndarray | None, x: np.ndarray, what: str, names: str, *others: np.ndarray) -> np.ndarray:
    """A new array like x, or `out` after checking it: float32 of x's shape, C-contiguous, writeable, overlapping
    neither x nor `others` (named `names`): every output reads its neighbours' inputs."""
    if out is None:
        return np.empty_like(x)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != x.shape:
        raise ValueError(f"{what}: expected a float32 array of shape {x.shape}")
    if not (out.flags.c_contiguous and out.flags.writeable) or any(np.shares_memory(out, a) for a in (x, *others)):
        raise ValueError(f"{what}: must be C-contiguous and writeable and must not overlap {names}")
    return out


# -- 0. NumPy references ------------------------------------------------------------------------
def _window_sum_ref(a: np.ndarray, size: int, region: str) -> np.ndarray:
    """Zero-padded window sums of a (N, C, H, W) float64: over channels (ACROSS) or an n x n box (WITHIN)."""
    n, c, h, w = a.shape
    r = (size - 1) // 2
    if region == "ACROSS_CHANNELS":
        padded = np.zeros((n, c + 2 * r, h, w))
        padded[:, r : r + c] = a
        return sum(padded[:, i : i + c] for i in range(size))
    padded = np.zeros((n, c, h + 2 * r, w + 2 * r))
    padded[:, :, r : r + h, r : r + w] = a
    return sum(padded[:, :, i : i + h, j : j + w] for i in range(size) for j in range(size))


def _scale_ref(x64: np.ndarray, size: int, alpha: float, k: float, region: str) -> tuple[np.ndarray, float]:
    """(scale, alpha / window size) in float64."""
    a = alpha / size if region == "ACROSS_CHANNELS" else alpha / size**2
    shift = k if region == "ACROSS_CHANNELS" else 1.0
    return shift + a * _window_sum_ref(x64**2, size, region), a


def lrn_forward_ref(
    x: np.ndarray,
    *,
    local_size: int = 5,
    alpha: float = 1.0,
    beta: float = 0.75,
    k: float = 1.0,
    region: str = "ACROSS_CHANNELS",
) -> np.ndarray:
    """Plain reference: x (N, C, H, W) float32 -> y (N, C, H, W) float32, computed in float64 (a float64 x gives a
    float64 y, for finite-difference checks)."""
    check_lrn_params(local_size, beta, region)
    x64 = x.astype(np.float64)
    scale, _ = _scale_ref(x64, local_size, alpha, k, region)
    return (x64 * scale**-beta).astype(np.float64 if x.dtype == np.float64 else np.float32)


def lrn_backward_ref(
    dy: np.ndarray,
    x: np.ndarray,
    *,
    local_size: int = 5,
    alpha: float = 1.0,
    beta: float = 0.75,
    k: float = 1.0,
    region: str = "ACROSS_CHANNELS",
) -> np.ndarray:
    """Plain reference backward in float64: dy, x (N, C, H, W) -> dx (N, C, H, W) float64 (formulas above)."""
    check_lrn_params(local_size, beta, region)
    x64, g = x.astype(np.float64), dy.astype(np.float64)
    scale, a = _scale_ref(x64, local_size, alpha, k, region)
    y = x64 * scale**-beta
    return g * scale**-beta - 2.0 * a * beta * x64 * _window_sum_ref(g * y / scale, local_size, region)


# -- Numba kernels -----------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _pow_neg(s, beta):  # pragma: no cover - compiled
    """s ** -beta for float32 s > 0, with exact-enough fast paths for the common betas."""
    if beta == 0.75:
        return np.float32(1.0) / np.sqrt(s * np.sqrt(s))
    if beta == 1.0:
        return np.float32(1.0) / s
    if beta == 0.5:
        return np.float32(1.0) / np.sqrt(s)
    return s ** np.float32(-beta)


@njit(cache=True, inline="always")
def _window_step(acc, j, xh, xt, k, alpha_over_n):  # pragma: no cover - compiled
    """Pixel j's running float64 sum of squares: the entering channel's square added, then the leaving one's dropped
    (acc[j] updated); returns its scale, float32(k + alpha_over_n * sum)."""
    vh, vt = np.float64(xh[j]), np.float64(xt[j])
    a = acc[j] + vh * vh
    a = a - vt * vt
    acc[j] = a
    return np.float32(k + alpha_over_n * a)


def _lrn_across_worker(t, x, y, size, alpha_over_n, beta, k, workers):  # pragma: no cover - compiled
    """Worker t's share (kernels.tasks) of the (image, block of pixels) items, split evenly: x, y (N, C, P) with
    P = H*W; size odd; alpha_over_n, k float64; beta float32. A task, not a prange loop: a plan with no OpenMP loop
    runs on kernels.taskpool's threads (CaffeNet's LRN was its only one at batch 1).

    The blocks: P cut into ceil(P / BLOCK) blocks of equal length rounded up to 16 (169 pixels: 96 + 73, not 128 +
    41, so 2 threads share a 13 x 13 map). Per channel one loop over the block does it all (add the entering
    channel's square, drop the leaving one's, the power, the product), a zero row standing in for a channel outside
    [0, C) (adding or dropping +0.0 leaves the float64 sum as it was: the bits of the same sums taken with branches),
    the power chosen once per call, so LLVM vectorises the loop (benchmarks/perf_notes.md, twenty-fourth round)."""
    n, c, p = x.shape
    r = (size - 1) // 2
    nblk = (p + BLOCK - 1) // BLOCK
    blk = (p + 16 * nblk - 1) // (16 * nblk) * 16  # <= BLOCK (a multiple of 16); the last block may be shorter
    acc = np.zeros(BLOCK, dtype=np.float64)
    zero = np.zeros(BLOCK, dtype=np.float32)
    mode = 0 if beta == 0.75 else (1 if beta == 1.0 else (2 if beta == 0.5 else 3))
    nbeta = np.float32(-beta)
    one = np.float32(1.0)
    for q in range(t * n * nblk // workers, (t + 1) * n * nblk // workers):
        b = q // nblk
        lo = (q % nblk) * blk
        hi = min(lo + blk, p)
        m = hi - lo
        for j in range(m):
            acc[j] = 0.0
        for cc in range(min(r, c)):  # channels [0, r) are in the window of channel 0
            xr = x[b, cc, lo:hi]
            for j in range(m):
                v = np.float64(xr[j])
                acc[j] += v * v
        for cc in range(c):
            head, tail = cc + r, cc - r - 1
            xh = x[b, head, lo:hi] if head < c else zero[:m]
            xt = x[b, tail, lo:hi] if tail >= 0 else zero[:m]
            xr = x[b, cc, lo:hi]
            yr = y[b, cc, lo:hi]
            if mode == 0:  # beta 0.75 (CaffeNet): _pow_neg's form, in a loop of its own
                for j in range(m):
                    s = _window_step(acc, j, xh, xt, k, alpha_over_n)
                    yr[j] = xr[j] * (one / np.sqrt(s * np.sqrt(s)))
            else:
                for j in range(m):
                    s = _window_step(acc, j, xh, xt, k, alpha_over_n)
                    if mode == 1:
                        pw = one / s
                    elif mode == 2:
                        pw = one / np.sqrt(s)
                    else:
                        pw = s**nbeta
                    yr[j] = xr[j] * pw


_F3 = types.float32[:, :, ::1]
_LRN_ACROSS = Task(
    _lrn_across_worker, (_F3, _F3, types.int64, types.float64, types.float32, types.float64, types.int64)
)


def _lrn_across_blocks(x, y, size, alpha_over_n, beta, k) -> None:
    """`_lrn_across_worker` over the threads (as many as there are items at most)."""
    n, _, p = x.shape
    workers = max(1, min(numba.get_num_threads(), n * -(-p // BLOCK)))
    _LRN_ACROSS.parallel(_LRN_ACROSS.address, workers, x, y, size, alpha_over_n, beta, k, workers)


@njit(cache=True, parallel=True)
def _lrn_within_planes(x, y, size, alpha_over_n2, beta):  # pragma: no cover - compiled
    """x, y (P, H, W) planes; y = x * (1 + alpha/n^2 * boxsum_n(x^2))^-beta, box zero padded by r."""
    planes, h, w = x.shape
    r = (size - 1) // 2
    for q in prange(planes):
        rows = np.zeros((h, w), dtype=np.float64)  # horizontal window sums of x^2
        for i in range(h):
            for j in range(w):
                v = np.float64(x[q, i, j])
                v *= v
                for jj in range(max(j - r, 0), min(j + r + 1, w)):
                    rows[i, jj] += v
        for i in range(h):
            for j in range(w):
                total = 0.0
                for ii in range(max(i - r, 0), min(i + r + 1, h)):
                    total += rows[ii, j]
                s = np.float32(1.0 + alpha_over_n2 * total)
                y[q, i, j] = x[q, i, j] * _pow_neg(s, beta)


@njit(cache=True, parallel=True)
def _lrn_across_backward_blocks(x, dy, dx, size, alpha_over_n, beta, k, coeff):  # pragma: no cover - compiled
    """x, dy, dx (N, C, P); coeff = 2 * alpha * beta / n. dx overwritten (formula in the module doc)."""
    n, c, p = x.shape
    r = (size - 1) // 2
    nblk = (p + BLOCK - 1) // BLOCK
    for t in prange(n * nblk):
        b = t // nblk
        lo = (t % nblk) * BLOCK
        hi = min(lo + BLOCK, p)
        acc = np.zeros(hi - lo, dtype=np.float64)
        ratio = np.empty((c, hi - lo), dtype=np.float32)  # dy * y / scale
        for cc in range(min(r, c)):
            for j in range(lo, hi):
                v = np.float64(x[b, cc, j])
                acc[j - lo] += v * v
        for cc in range(c):
            head, tail = cc + r, cc - r - 1
            if head < c:
                for j in range(lo, hi):
                    v = np.float64(x[b, head, j])
                    acc[j - lo] += v * v
            if tail >= 0:
                for j in range(lo, hi):
                    v = np.float64(x[b, tail, j])
                    acc[j - lo] -= v * v
            for j in range(lo, hi):
                s = np.float32(k + alpha_over_n * acc[j - lo])
                pw = _pow_neg(s, beta)
                g = dy[b, cc, j]
                dx[b, cc, j] = g * pw
                ratio[cc, j - lo] = g * x[b, cc, j] * pw / s
        acc[:] = 0.0
        for cc in range(min(r, c)):
            for j in range(hi - lo):
                acc[j] += ratio[cc, j]
        for cc in range(c):
            head, tail = cc + r, cc - r - 1
            if head < c:
                for j in range(hi - lo):
                    acc[j] += ratio[head, j]
            if tail >= 0:
                for j in range(hi - lo):
                    acc[j] -= ratio[tail, j]
            for j in range(lo, hi):
                dx[b, cc, j] -= np.float32(coeff * x[b, cc, j] * acc[j - lo])


@njit(cache=True, inline="always")
def _box_sum(src, r, tmp, dst):  # pragma: no cover - compiled
    """dst = zero-padded (2r+1) x (2r+1) box sums of src (H, W) float64, separably via tmp (H, W)."""
    h, w = src.shape
    for i in range(h):
        for j in range(w):
            total = 0.0
            for jj in range(max(j - r, 0), min(j + r + 1, w)):
                total += src[i, jj]
            tmp[i, j] = total
    for i in range(h):
        for j in range(w):
            dst[i, j] = 0.0
        for ii in range(max(i - r, 0), min(i + r + 1, h)):
            for j in range(w):
                dst[i, j] += tmp[ii, j]


@njit(cache=True, parallel=True)
def _lrn_within_backward_planes(x, dy, dx, size, alpha_over_n2, beta, coeff):  # pragma: no cover - compiled
    """x, dy, dx (P, H, W) planes; coeff = 2 * alpha * beta / n^2. dx overwritten."""
    planes, h, w = x.shape
    r = (size - 1) // 2
    for q in prange(planes):
        sq = np.empty((h, w), dtype=np.float64)
        tmp = np.empty((h, w), dtype=np.float64)
        box = np.empty((h, w), dtype=np.float64)
        for i in range(h):
            for j in range(w):
                v = np.float64(x[q, i, j])
                sq[i, j] = v * v
        _box_sum(sq, r, tmp, box)
        for i in range(h):
            for j in range(w):
                s = np.float32(1.0 + alpha_over_n2 * box[i, j])
                pw = _pow_neg(s, beta)
                g = dy[q, i, j]
                dx[q, i, j] = g * pw
                sq[i, j] = np.float64(g * x[q, i, j] * pw / s)  # reuse: the ratio dy * y / scale
        _box_sum(sq, r, tmp, box)
        for i in range(h):
            for j in range(w):
                dx[q, i, j] -= np.float32(coeff * x[q, i, j] * box[i, j])


# -- public ------------------------------------------------------------------------------------
def lrn_forward(
    x: np.ndarray,
    *,
    local_size: int = 5,
    alpha: float = 1.0,
    beta: float = 0.75,
    k: float = 1.0,
    region: str = "ACROSS_CHANNELS",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Caffe LRN forward. x (N, C, H, W) float32 C-contiguous -> y (N, C, H, W) float32: a new array, or written
    into `out` (C-contiguous float32 of x's shape, not overlapping x: a CPU Net's plan keeps one per layer).

    region "ACROSS_CHANNELS" (default) or "WITHIN_CHANNEL" (where k is ignored, as in Caffe).
    """
    _check(x, local_size, beta, region)
    n, c, h, w = x.shape
    y = _out(out, x, "LRN out", "x")
    if x.size == 0:
        return y
    if region == "ACROSS_CHANNELS":
        _lrn_across_blocks(
            x.reshape(n, c, h * w),
            y.reshape(n, c, h * w),
            int(local_size),
            float(alpha) / local_size,
            np.float32(beta),
            float(k),
        )
    else:
        _lrn_within_planes(
            x.reshape(n * c, h, w),
            y.reshape(n * c, h, w),
            int(local_size),
            float(alpha) / local_size**2,
            np.float32(beta),
        )
    return y


def lrn_backward(
    dy: np.ndarray,
    x: np.ndarray,
    *,
    local_size: int = 5,
    alpha: float = 1.0,
    beta: float = 0.75,
    k: float = 1.0,
    region: str = "ACROSS_CHANNELS",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Gradient of `lrn_forward`: dy (top gradient) and x (the forward input), both (N, C, H, W) float32
    C-contiguous -> dx (N, C, H, W) float32, OVERWRITTEN (into `out` when given; it must not overlap dy or x)."""
    _check(x, local_size, beta, region, "LRN backward x")
    _check(dy, local_size, beta, region, "LRN backward dy")
    if dy.shape != x.shape:
        raise ValueError(f"LRN backward: expected dy of shape {x.shape} (as x), got {dy.shape}")
    out = _out(out, x, "LRN backward out", "dy or x", dy)
    if x.size == 0:
        return out
    n, c, h, w = x.shape
    if region == "ACROSS_CHANNELS":
        _lrn_across_backward_blocks(
            x.reshape(n, c, h * w),
            dy.reshape(n, c, h * w),
            out.reshape(n, c, h * w),
            int(local_size),
            float(alpha) / local_size,
            np.float32(beta),
            float(k),
            2.0 * float(alpha) * float(beta) / local_size,
        )
    else:
        _lrn_within_backward_planes(
            x.reshape(n * c, h, w),
            dy.reshape(n * c, h, w),
            out.reshape(n * c, h, w),
            int(local_size),
            float(alpha) / local_size**2,
            np.float32(beta),
            2.0 * float(alpha) * float(beta) / local_size**2,
        )
    return out
