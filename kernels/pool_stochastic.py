"""STOCHASTIC pooling at TEST time (Caffe's StoPoolForwardTest, pooling_layer.cu): the probability-weighted average.

Caffe samples one element per window at TRAIN (probabilities x / sum(x)) and at TEST outputs the expectation of that
draw: y = sum(x^2) / sum(x) over the window, 0 where the sum is not positive. Windows start at oh * stride and are
clipped at the input's edge; Caffe allows no padding for this method. The output size is the usual pooling one
(kernels.pool.pool2d_output_shape: CEIL or FLOOR). Caffe has no CPU version and no TEST backward.

Kernels: `_stochastic_test` (one compiled pass, parallel over the N * C planes, float32 sums as Caffe's CUDA kernel);
reference `stochastic_pool_test_ref` in float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.pool import pool2d_output_shape

__all__ = ["stochastic_pool_test", "stochastic_pool_test_ref"]


def stochastic_pool_test_ref(x: np.ndarray, kernel, stride, round_mode: str = "CEIL") -> np.ndarray:
    """x (N, C, H, W) -> (N, C, OH, OW) float64."""
    n, c, h, w = x.shape
    oh, ow = pool2d_output_shape((h, w), kernel, stride, (0, 0), round_mode)
    (kh, kw), (sh, sw) = kernel, stride
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * sh : min(i * sh + kh, h), j * sw : min(j * sw + kw, w)].astype(np.float64)
            total = win.sum(axis=(2, 3))
            safe = np.where(total > 0, total, 1.0)
            y[:, :, i, j] = np.where(total > 0, (win * win).sum(axis=(2, 3)) / safe, 0.0)
    return y


@njit(cache=True, parallel=True)
def _stochastic_test(x, y, kh, kw, sh, sw):  # pragma: no cover - compiled
    planes, h, w = x.shape
    _, oh, ow = y.shape
    zero = np.float32(0.0)
    for p in prange(planes):
        for i in range(oh):
            h0 = i * sh
            h1 = min(h0 + kh, h)
            for j in range(ow):
                w0 = j * sw
                w1 = min(w0 + kw, w)
                total = zero
                squares = zero
                for a in range(h0, h1):
                    for b in range(w0, w1):
                        v = x[p, a, b]
                        total += v
                        squares += v * v
                y[p, i, j] = squares / total if total > zero else zero


def stochastic_pool_test(x: np.ndarray, kernel, stride, round_mode: str = "CEIL", out=None) -> np.ndarray:
    """x float32 (N, C, H, W) -> y float32 (N, C, OH, OW), Caffe's TEST-time STOCHASTIC pooling (no padding)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        raise ValueError(f"STOCHASTIC pooling: expected a float32 (N, C, H, W) array, got {getattr(x, 'shape', x)}")
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    oh, ow = pool2d_output_shape((h, w), kernel, stride, (0, 0), round_mode)
    if out is None or out.shape != (n, c, oh, ow) or out.dtype != np.float32 or not out.flags.c_contiguous:
        out = np.empty((n, c, oh, ow), np.float32)
    (kh, kw), (sh, sw) = kernel, stride
    _stochastic_test(x.reshape(n * c, h, w), out.reshape(n * c, oh, ow), kh, kw, sh, sw)
    return out
