"""GPU InnerProduct (kernels/cuda/fc.cu for few rows, crema's sgemm otherwise), forward and backward, same signatures
as kernels.fc.

  forward  M <= GEMV_MAX_M rows: gemv_rows / gemv_rows_t stream W once; more rows: sgemm with the bias in its epilogue
  backward dW += dy2^T @ x2 (x2^T @ dy2 with transpose); dx2 = dy2 @ W (dy2 @ W^T with transpose), on sgemm;
           db += channel_sum(dy2) (kernels.gpu.elementwise)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.fc import flatten_input, weight_dims
from kernels.gpu.backend import INDEX_LIMIT, THREADS, ceil_div, check_need, device_input, device_output, launch, runtime
from kernels.gpu.elementwise import channel_sum
from kernels.gpu.gemm import sgemm

__all__ = ["gemv_k_splits", "inner_product_backward", "inner_product_forward"]

GEMV_MAX_M = 8  # rows of x up to which InnerProduct streams the weight with gemv_rows (fc.cu default)
i32 = np.int32


def gemv_k_splits(n: int, k: int, sm_count: int, threads: int = THREADS) -> int:
    """K ranges of gemv_rows_t: enough blocks for two per SM when the columns alone give fewer, >= 64 rows each."""
    blocks = ceil_div(n, threads)
    if blocks >= 2 * sm_count:
        return 1
    return max(1, min(ceil_div(2 * sm_count, blocks), k // 64))


def inner_product_forward(x: Any, w: Any, b: Any, *, axis: int = 1, transpose: bool = False, out: Any = None) -> Any:
    """InnerProduct forward: y = x2 @ W.T + b (x2 @ W + b with transpose), x flattened to (M, K) at `axis`.

    M <= GEMV_MAX_M streams W once (gemv_rows / gemv_rows_t); otherwise sgemm with the bias in its epilogue.
    """
    rt = runtime()
    x, w = device_input(rt, x, "inner_product x"), device_input(rt, w, "inner_product w")
    n, k = weight_dims(w, transpose)
    x2, lead = flatten_input(x, axis, k)
    if b is not None:
        b = device_input(rt, b, "inner_product b").reshape(-1)
        if b.shape != (n,):
            raise ValueError(f"inner_product: expected bias of shape ({n},), got {b.shape}")
    out = device_output(rt, out, lead + (n,), "inner_product out")
    m = x2.shape[0]
    if max(x2.size, w.size, out.size) > INDEX_LIMIT:
        raise ValueError(f"inner_product: x {x.shape} or w {w.shape} exceeds 2^31 elements; split the batch")
    y2 = out.reshape(m, n)
    if m == 0 or n == 0:
        return out
    has_bias, bias = i32(b is not None), w if b is None else b
    if m <= GEMV_MAX_M and transpose:
        splits = gemv_k_splits(n, k, rt.sm_count)
        k_chunk = ceil_div(max(k, 1), splits)
        if splits > 1:
            y2.fill(0)
        grid = (ceil_div(n, THREADS), ceil_div(max(k, 1), k_chunk), 1)
        args = (x2, w, bias, y2, i32(m), i32(n), i32(k), has_bias, i32(k_chunk))
        launch(rt, "fc", "gemv_rows_t", (), grid, (THREADS, 1, 1), args)
    elif m <= GEMV_MAX_M:
        vec = i32(k % 4 == 0 and rt.ptr(x2) % 16 == 0 and rt.ptr(w) % 16 == 0)
        grid = (ceil_div(n, THREADS // 32), 1, 1)
        args = (x2, w, bias, y2, i32(m), i32(n), i32(k), has_bias, vec)
        launch(rt, "fc", "gemv_rows", (), grid, (THREADS, 1, 1), args)
    else:
        sgemm(rt, x2, w, y2, trans_a=False, trans_b=not transpose, bias=b, bias_mode=2)
    return out


def inner_product_backward(
    dy: Any,
    x: Any,
    w: Any,
    *,
    axis: int = 1,
    transpose: bool = False,
    dx: Any = None,
    dw: Any = None,
    db: Any = None,
    need_dx: bool = True,
    need_dw: bool = True,
    need_db: bool = True,
    overwrite_dw: bool = False,
    overwrite_db: bool = False,
) -> tuple[Any, Any, Any]:
    """InnerProduct backward (kernels.fc.inner_product_backward's contract) on device arrays: dx OVERWRITTEN,
    dw and db ACCUMULATED (allocated zeroed when not given; zeroed first with overwrite_dw / overwrite_db), None where
    the need_* flag is False."""
    rt = runtime()
    what = "inner_product_backward"
    x, w, dy = device_input(rt, x, f"{what} x"), device_input(rt, w, f"{what} w"), device_input(rt, dy, f"{what} dy")
    n, k = weight_dims(w, transpose)
    x2, lead = flatten_input(x, axis, k)
    if dy.shape != lead + (n,):
        raise ValueError(f"{what}: expected dy of shape {lead + (n,)} (x.shape[:{axis}] + (N,)), got {dy.shape}")
    for name, arr, need in (("dx", dx, need_dx), ("dw", dw, need_dw), ("db", db, need_db)):
        check_need(name, arr, need, what)
    if max(x2.size, w.size, dy.size) > INDEX_LIMIT:
        raise ValueError(f"{what}: x {x.shape} or w {w.shape} exceeds 2^31 elements; split the batch")
    rows = x2.shape[0]
    dy2 = dy.reshape(rows, n)
    if need_dw:
        if dw is None:
            dw = rt.empty(w.shape)
            dw.fill(0)
        dw = device_output(rt, dw, tuple(w.shape), f"{what} dw")
        if overwrite_dw:
            dw.fill(0)
        if rows and dw.size:
            if transpose:
                sgemm(rt, x2, dy2, dw, trans_a=True, trans_b=False, accumulate=True)
            else:
                sgemm(rt, dy2, x2, dw, trans_a=True, trans_b=False, accumulate=True)
    if need_db:
        if db is None:
            db = rt.empty((n,))
            db.fill(0)
        db = device_output(rt, db, (n,), f"{what} db")
        if overwrite_db:
            db.fill(0)
        channel_sum(rt, dy2, db, rows, n, 1)
    if need_dx:
        dx = device_output(rt, dx, tuple(x.shape), f"{what} dx")
        if dx.size and rt.ptr(dx) == rt.ptr(dy):
            raise ValueError(f"{what}: dx shares memory with dy; pass a separate dx array")
        dx2 = dx.reshape(x2.shape)
        if dx2.size:
            if n == 0:
                dx2.fill(0)
            else:
                sgemm(rt, dy2, w, dx2, trans_a=False, trans_b=transpose)
    return dx, dw, db
