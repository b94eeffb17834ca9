"""Local response normalisation (Caffe LRN), forward, NCHW float32.

Kernels, in the order they appear:
  0. `lrn_forward_ref`      NumPy reference in float64: zero-padded window sums of x^2, then the power.
  1. `_lrn_across_blocks`   Numba, ACROSS_CHANNELS: prange over (image, block of BLOCK pixels); a running sum of
                            squares walks the channels (add the channel entering the window, drop the one leaving).
  2. `_lrn_within_planes`   Numba, WITHIN_CHANNEL: prange over the N*C planes, separable n x n box sum of x^2.
Public: `lrn_forward`. Backward (caffe_facts.md 4.3) will sit next to the forward.

Caffe semantics (caffe_facts.md 4.3), n = local_size (odd), r = (n - 1) / 2:
  ACROSS_CHANNELS: scale_c = k + alpha / n * sum_{c'=c-r}^{c+r} x_{c'}^2 (zero outside [0, C)); y = x * scale^-beta
  WITHIN_CHANNEL:  y = x * (1 + alpha / n^2 * sum over the n x n window, zero padded, of x^2)^-beta  (k ignored)

Precision: the running sum is kept in float64 (squares of float32 values are exact in float64), so adding and
removing channels never drifts, however large the activations. The power is taken in float32; beta == 0.75
(CaffeNet, AlexNet) uses 1 / sqrt(s * sqrt(s)), within 3 float32 ulps of s**-0.75 and several times faster than
powf; beta == 1 and beta == 0.5 are special-cased likewise.

Timing: `CREMA_BENCH=1 python -m pytest tests/kernels/test_lrn.py -q -s -k timing` prints norm1/norm2.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["lrn_forward", "lrn_forward_ref"]

REGIONS = ("ACROSS_CHANNELS", "WITHIN_CHANNEL")
BLOCK = 128  # pixels per ACROSS task: long enough to vectorise, short enough to give N=1 several tasks


def _check(x: np.ndarray, local_size: int, beta: float, region: str) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"LRN input: expected a 4-D float32 array (N, C, H, W), got {got}")
    if not x.flags.c_contiguous:
        raise ValueError(
            f"LRN input: expected a C-contiguous array, got strides {x.strides} (use np.ascontiguousarray)"
        )
    if local_size <= 0 or local_size % 2 == 0:
        raise ValueError(f"LRN: local_size must be odd and > 0, got {local_size}")
    if region not in REGIONS:
        raise ValueError(f"LRN: region must be one of {REGIONS}, got {region!r}")
    if not math.isfinite(beta):
        raise ValueError(f"LRN: beta must be finite, got {beta}")


# -- 0. NumPy reference ------------------------------------------------------------------------
def lrn_forward_ref(
    x: np.ndarray,
    *,
    local_size: int = 5,
    alpha: float = 1.0,
    beta: float = 0.75,
    k: float = 1.0,
    region: str = "ACROSS_CHANNELS",
) -> np.ndarray:
    """Plain reference: x (N, C, H, W) float32 -> y (N, C, H, W) float32, computed in float64."""
    _check(x, local_size, beta, region)
    n, c, h, w = x.shape
    r = (local_size - 1) // 2
    sq = x.astype(np.float64) ** 2
    if region == "ACROSS_CHANNELS":
        padded = np.zeros((n, c + 2 * r, h, w))
        padded[:, r : r + c] = sq
        window = sum(padded[:, i : i + c] for i in range(local_size))
        scale = k + alpha / local_size * window
    else:
        padded = np.zeros((n, c, h + 2 * r, w + 2 * r))
        padded[:, :, r : r + h, r : r + w] = sq
        window = sum(padded[:, :, i : i + h, j : j + w] for i in range(local_size) for j in range(local_size))
        scale = 1.0 + alpha / local_size**2 * window
    return (x * scale**-beta).astype(np.float32)


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


@njit(cache=True, parallel=True)
def _lrn_across_blocks(x, y, size, alpha_over_n, beta, k):  # pragma: no cover - compiled
    """x, y (N, C, P) with P = H*W; size odd; alpha_over_n, k float64; beta float32."""
    n, c, p = x.shape
    r = (size - 1) // 2
    nblk = (p + BLOCK - 1) // BLOCK
    for t in prange(n * nblk):
        b = t // nblk
        lo = (t % nblk) * BLOCK
        hi = min(lo + BLOCK, p)
        acc = np.zeros(hi - lo, dtype=np.float64)
        for cc in range(min(r, c)):  # channels [0, r) are in the window of channel 0
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
                y[b, cc, j] = x[b, cc, j] * _pow_neg(s, beta)


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


# -- public ------------------------------------------------------------------------------------
def lrn_forward(
    x: np.ndarray,
    *,
    local_size: int = 5,
    alpha: float = 1.0,
    beta: float = 0.75,
    k: float = 1.0,
    region: str = "ACROSS_CHANNELS",
) -> np.ndarray:
    """Caffe LRN forward. x (N, C, H, W) float32 C-contiguous -> new y (N, C, H, W) float32.

    region "ACROSS_CHANNELS" (default) or "WITHIN_CHANNEL" (where k is ignored, as in Caffe).
    """
    _check(x, local_size, beta, region)
    n, c, h, w = x.shape
    y = np.empty_like(x)
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
