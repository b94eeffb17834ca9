"""InnerProduct (fully connected) forward, Caffe semantics, on crema's own GEMM.

Kernels:

0. ``inner_product_forward_ref`` - plain NumPy in float64.
1. ``_ip_small_rows`` / ``_ip_small_rows_t`` - few samples (M <= SMALL_M, e.g. CaffeNet's fc6 at batch 10):
                                   memory-bound on the weight, so the weight is streamed once straight from
                                   the caller's array (no packing copy of a 150 MB matrix), threads over outputs.
2. ``inner_product_forward``     - otherwise ``kernels.gemm.gemm`` with the weight read transposed by the
                                   packing (no transposed copy): y = x2 @ W.T (x2 @ W with ``transpose``), + b.

Benchmark: ``python -m benchmarks.bench_kernels --threads 2`` (the GEMM lines cover this op).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.gemm import gemm

SMALL_M = 32  # at most this many rows of x2: weight-streaming kernels instead of the packed GEMM


def _flatten(x: np.ndarray, axis: int, k_expected: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """x viewed as (M, K) with M = prod(shape[:axis]), K = prod(shape[axis:]); also returns shape[:axis]."""
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"inner_product: axis {axis} out of range for x of shape {x.shape}")
    axis %= x.ndim
    lead = x.shape[:axis]
    k = int(np.prod(x.shape[axis:], dtype=np.int64))
    if k != k_expected:
        raise ValueError(
            f"inner_product: expected {k_expected} inputs per sample (weight K), got "
            f"{k} = prod(x.shape[{axis}:]) for x shape {x.shape}"
        )
    return x.reshape(int(np.prod(lead, dtype=np.int64)), k), lead


def _weight_dims(w: np.ndarray, transpose: bool) -> tuple[int, int]:
    """(N outputs, K inputs) of the weight: w is (N, K), or (K, N) with transpose."""
    if w.ndim != 2:
        raise ValueError(
            f"inner_product: expected a 2-D weight ({'(K, N)' if transpose else '(N, K)'}), got shape {w.shape}"
        )
    return (w.shape[1], w.shape[0]) if transpose else w.shape


@njit(cache=True, parallel=True, fastmath=True, boundscheck=False)
def _ip_small_rows(x2, w, bias, y):
    """y[m, n] = dot(x2[m], w[n]) + bias[n]; x2: (M, K), w: (N, K), bias: (N,), y: (M, N). Threads over n."""
    m_all, k_all = x2.shape
    for n in prange(w.shape[0]):
        wr = w[n]
        for m in range(m_all):
            xr = x2[m]
            acc = np.float32(0.0)
            for k in range(k_all):
                acc += xr[k] * wr[k]
            y[m, n] = acc + bias[n]


@njit(cache=True, parallel=True, fastmath=True, boundscheck=False)
def _ip_small_rows_t(x2, w, bias, y):
    """y[m, :] = x2[m] @ w + bias; x2: (M, K), w: (K, N), bias: (N,), y: (M, N). Threads over column blocks,
    each streaming its columns of w once (k outer) while its block of y stays in cache."""
    m_all, k_all = x2.shape
    n_all = w.shape[1]
    nb = 256
    for blk in prange((n_all + nb - 1) // nb):
        j0 = blk * nb
        j1 = min(j0 + nb, n_all)
        for m in range(m_all):
            for j in range(j0, j1):
                y[m, j] = bias[j]
        for k in range(k_all):
            wr = w[k]
            for m in range(m_all):
                xv = x2[m, k]
                for j in range(j0, j1):
                    y[m, j] += xv * wr[j]


def inner_product_forward_ref(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, *, axis: int = 1, transpose: bool = False
) -> np.ndarray:
    """Reference in float64 (returned as float32).

    x: any shape, flattened to (M, K) at `axis`; w: (N, K), or (K, N) with transpose; b: (N,) or None.
    Returns y: x.shape[:axis] + (N,), y = x2 @ W.T + b (x2 @ W + b with transpose).
    """
    x = np.asarray(x)
    n, k = _weight_dims(np.asarray(w), transpose)
    x2, lead = _flatten(x, axis, k)
    w64 = np.asarray(w, np.float64)
    y = x2.astype(np.float64) @ (w64 if transpose else w64.T)
    if b is not None:
        y += np.asarray(b, np.float64).reshape(1, n)
    return y.astype(np.float32).reshape(lead + (n,))


def inner_product_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    *,
    axis: int = 1,
    transpose: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """InnerProduct forward, float32.

    x: any shape, flattened row-major to (M, K) = (prod(shape[:axis]), prod(shape[axis:])); w: (N, K), or (K, N)
    with transpose; b: (N,) or None. Returns y: x.shape[:axis] + (N,), written into `out` when given
    (C-contiguous float32 of that shape).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    n, k = _weight_dims(w, transpose)
    x2, lead = _flatten(x, axis, k)
    if b is not None:
        b = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
        if b.shape != (n,):
            raise ValueError(f"inner_product: expected bias of shape ({n},), got {b.shape}")
    shape = lead + (n,)
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"inner_product: expected out to be C-contiguous float32 of shape {shape}, got {out.dtype} {out.shape}"
        )
    out2 = out.reshape(x2.shape[0], n)
    if x2.shape[0] <= SMALL_M:
        bias = np.zeros(n, np.float32) if b is None else b
        (_ip_small_rows_t if transpose else _ip_small_rows)(x2, w, bias, out2)
        return out
    gemm(x2, w, trans_b=not transpose, out=out2)
    if b is not None:
        out2 += b
    return out
