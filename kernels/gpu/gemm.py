"""GPU GEMM launchers (kernels/cuda/gemm.cu, tile machinery in gemm.cuh): `gemm` (kernels.gemm.gemm's contract on
device arrays), `sgemm` (the tiled kernel into a given C, with bias, ReLU, accumulate and split-K: the GEMM under the
convolution and InnerProduct launchers) and `sgemm_naive` (the obviously correct one: tests and benchmarks).
No cuBLAS or cupy.matmul: those are the references in benchmarks/bench_gpu.py.

Benchmark: ``python -m benchmarks.bench_gpu --only sgemm``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.gpu.activations import relu_forward
from kernels.gpu.backend import (
    INDEX_LIMIT,
    Runtime,
    Tile,
    ceil_div,
    device_input,
    device_output,
    gemm_plan,
    launch,
    runtime,
)

__all__ = ["gemm", "sgemm", "sgemm_naive"]

# Epilogue / layout flags of gemm.cuh (tests check they match its #defines).
F_RELU, F_ACCUMULATE, F_ATOMIC, F_VEC_A, F_VEC_B, F_VEC_C, F_BIAS = 1, 2, 4, 8, 16, 32, 64
i32 = np.int32


def sgemm(
    rt: Runtime,
    a: Any,
    b: Any,
    c: Any,
    *,
    trans_a: bool,
    trans_b: bool,
    bias: Any = None,
    bias_mode: int = 0,
    relu: bool = False,
    accumulate: bool = False,
    tile: Tile | None = None,
    splits: int | None = None,
) -> None:
    """c (M x N) (+)= op(a) op(b) (+ bias) (ReLU) on 2-D C-contiguous device arrays of runtime `rt`.

    bias_mode: 1 per row of c, 2 per column; `tile` / `splits` force the plan (tests), else `gemm_plan` picks them.
    """
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if max(a.size, b.size, c.size) > INDEX_LIMIT:
        raise ValueError(f"gemm: operands of {a.shape}, {b.shape} -> {c.shape} exceed 2^31 elements; split them")
    plan = gemm_plan(m, n, k, 1, rt.sm_count, tile=tile, splits=splits)
    atomic = plan.splits > 1
    if atomic and not accumulate:
        c.fill(0)
    lda, ldb = a.shape[1], b.shape[1]
    flags = (
        (F_RELU if relu and not atomic else 0)
        | (F_ACCUMULATE if accumulate else 0)
        | (F_ATOMIC if atomic else 0)
        | (F_VEC_A if lda % 4 == 0 and rt.ptr(a) % 16 == 0 else 0)
        | (F_VEC_B if ldb % 4 == 0 and rt.ptr(b) % 16 == 0 else 0)
        | (F_VEC_C if n % 4 == 0 and rt.ptr(c) % 16 == 0 else 0)
    )
    defines = plan.tile.defines() + (("TRANS_A", int(trans_a)), ("TRANS_B", int(trans_b)))
    args = (a, b, c, c if bias is None else bias, i32(m), i32(n), i32(k), i32(lda), i32(ldb), i32(n))
    args += (i32(plan.k_chunk), i32(bias_mode if bias is not None else 0), i32(flags))
    launch(rt, "gemm", "sgemm", defines, plan.grid, plan.block, args)
    if relu and atomic:
        relu_forward(c, out=c)


def gemm(
    a: Any, b: Any, *, trans_a: bool = False, trans_b: bool = False, out: Any = None, accumulate: bool = False
) -> Any:
    """out = op(a) @ op(b) (or out += ... when accumulate), float32, on crema's SGEMM (kernels.gemm.gemm's contract).

    a: (M, K), or (K, M) with trans_a; b: (K, N), or (N, K) with trans_b; out: (M, N), allocated when None.
    """
    rt = runtime()
    a, b = device_input(rt, a, "gemm a"), device_input(rt, b, "gemm b")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"gemm: expected 2-D a and b, got shapes {a.shape} and {b.shape}")
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != kb:
        raise ValueError(
            f"gemm: inner dimensions differ: op(a) is {m}x{k}, op(b) is {kb}x{n} "
            f"(a shape {a.shape}, trans_a={trans_a}; b shape {b.shape}, trans_b={trans_b})"
        )
    if out is None and accumulate:
        raise ValueError("gemm: accumulate=True needs an `out` array to accumulate into")
    out = device_output(rt, out, (m, n), "gemm out")
    if m and n:
        sgemm(rt, a, b, out, trans_a=trans_a, trans_b=trans_b, accumulate=accumulate)
    return out


def sgemm_naive(a: Any, b: Any) -> Any:
    """c = a @ b with the one-thread-per-element kernel (the obviously correct one; tests and benchmarks)."""
    rt = runtime()
    a, b = device_input(rt, a, "sgemm_naive a"), device_input(rt, b, "sgemm_naive b")
    (m, k), n = a.shape, b.shape[1]
    c = rt.empty((m, n))
    grid = (ceil_div(n, 16), ceil_div(m, 16), 1)
    launch(rt, "gemm", "sgemm_naive", (), grid, (16, 16, 1), (a, b, c, i32(m), i32(n), i32(k), i32(k), i32(n), i32(n)))
    return c
