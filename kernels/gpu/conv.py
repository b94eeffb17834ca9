"""GPU convolution (kernels/cuda/conv.cu), forward and backward, same signatures as kernels.conv.

  forward  conv2d_igemm: an implicit GEMM per group (no im2col buffer), bias and ReLU fused into its epilogue;
           depthwise (group == C == M, EfficientNet's 3x3 / 5x5): conv2d_depthwise, one thread per output
  backward dW_g += dY_g (Mg x Q) @ im2col(X)_g^T (Q x Kg)      Q = images of the chunk x OH x OW
           dX   = col2im(W_g^T (Kg x Mg) @ dY_g (Mg x Q))       (a gather per input pixel: deterministic, no atomics)
           db  += per-channel sums of dY (channel_sum, float64 partial sums; kernels.gpu.elementwise)
The GEMMs of the backward are crema's own sgemm (kernels.gpu.gemm; no cuBLAS, cuDNN or cupy.matmul). Images are taken
in chunks whose im2col buffer stays under COL_LIMIT floats. Geometry and checks are kernels.conv's.

Benchmark: ``python -m benchmarks.bench_gpu --only conv``; ``python -m benchmarks.bench_gpu_train`` (backward).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kernels.conv import check_conv2d_args, conv2d_geometry
from kernels.gpu.activations import clip_forward, relu_forward
from kernels.gpu.backend import (
    FLAT_LIMIT,
    INDEX_LIMIT,
    LARGE,
    check_need,
    chunks,
    device_input,
    device_output,
    flat_launch,
    gemm_plan,
    launch,
    runtime,
)
from kernels.gpu.elementwise import channel_sum
from kernels.gpu.gemm import F_ATOMIC, F_BIAS, F_RELU, F_VEC_A, sgemm

__all__ = ["COL_LIMIT", "conv2d_backward", "conv2d_forward"]

COL_LIMIT = 1 << 26  # floats of the im2col buffer of one convolution-backward chunk (256 MiB)
i32 = np.int32


def conv2d_forward(
    x: Any,
    w: Any,
    b: Any,
    *,
    stride: Any = (1, 1),
    pad: Any = (0, 0),
    dilation: Any = (1, 1),
    group: int = 1,
    out: Any = None,
    relu: bool = False,
    relu_max: float = math.inf,
) -> Any:
    """Convolution forward (Caffe semantics) as an implicit GEMM; `relu` fuses max(y, 0) into the epilogue, and a
    finite `relu_max` (ReLU6: 6) caps it, min(max(y, 0), relu_max), in one pass over the output after the GEMM.

    x: (N, C, H, W); w: (M, C/group, kh, kw); b: (M,) or None -> y: (N, M, OH, OW) float32 (into `out` when given).
    """
    rt = runtime()
    x, w = device_input(rt, x, "conv2d x"), device_input(rt, w, "conv2d w")
    b = None if b is None else device_input(rt, b, "conv2d b").reshape(-1)
    group = int(group)
    check_conv2d_args(x, w, b, group)
    (n, c, h, wd), (m, cg, kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = conv2d_geometry(
        x.shape, w.shape, stride, pad, dilation
    )
    out = device_output(rt, out, (n, m, oh, ow), "conv2d out")
    if out.size == 0:
        return out
    mg, kg, npix = m // group, cg * kh * kw, oh * ow
    if group == c == m:  # depthwise: one thread per output, not one-row GEMM tiles
        flags = (F_BIAS if b is not None else 0) | (F_RELU if relu else 0)
        defines = LARGE.defines() + (("KH", kh), ("KW", kw))  # the tile constants only let conv.cu compile
        geometry = (i32(c), i32(h), i32(wd), i32(oh), i32(ow), i32(sh), i32(sw), i32(ph), i32(pw), i32(dh), i32(dw))
        for i0, i1 in chunks(n, max(c * h * wd, m * npix), FLAT_LIMIT):
            grid, block = flat_launch((i1 - i0) * m * npix, rt.sm_count)
            args = (x[i0:i1], w, w if b is None else b, out[i0:i1], i32(i1 - i0), *geometry, i32(flags))
            launch(rt, "conv", "conv2d_depthwise", defines, grid, block, args)
        if relu and relu_max != math.inf:
            clip_forward(out, 0.0, relu_max, out=out)
        return out
    base = (F_BIAS if b is not None else 0) | (F_VEC_A if kg % 4 == 0 and rt.ptr(w) % 16 == 0 else 0)
    geometry = (i32(c), i32(h), i32(wd), i32(oh), i32(ow), i32(m), i32(group))
    geometry += (i32(sh), i32(sw), i32(ph), i32(pw), i32(dh), i32(dw))
    for i0, i1 in chunks(n, max(c * h * wd, m * npix)):
        plan = gemm_plan(mg, (i1 - i0) * npix, kg, group, rt.sm_count)
        atomic = plan.splits > 1
        y = out[i0:i1]
        if atomic:
            y.fill(0)
        flags = base | (F_ATOMIC if atomic else 0) | (F_RELU if relu and not atomic else 0)
        defines = plan.tile.defines() + (("KH", kh), ("KW", kw))
        args = (x[i0:i1], w, w if b is None else b, y, i32(i1 - i0), *geometry)
        args += (i32(plan.splits), i32(plan.k_chunk), i32(flags))
        launch(rt, "conv", "conv2d_igemm", defines, plan.grid, plan.block, args)
        if relu and atomic:
            relu_forward(y, out=y)
    if relu and relu_max != math.inf:
        clip_forward(out, 0.0, relu_max, out=out)
    return out


def conv2d_backward(
    dy: Any,
    x: Any,
    w: Any,
    *,
    stride=1,
    pad=0,
    dilation=1,
    group: int = 1,
    dx: Any = None,
    dw: Any = None,
    db: Any = None,
    need_dx: bool = True,
    need_dw: bool = True,
    need_db: bool = True,
    overwrite_dw: bool = False,
    overwrite_db: bool = False,
) -> tuple[Any, Any, Any]:
    """Convolution backward (kernels.conv.conv2d_backward's contract) on device arrays.

    dy (N, M, OH, OW); x (N, C, H, W); w (M, C/group, kh, kw). Returns (dx OVERWRITTEN, dw ACCUMULATED, db
    ACCUMULATED, or zeroed first with overwrite_dw / overwrite_db), each None when its need_* flag is False; arrays are
    allocated (dw, db zeroed) when not given.
    """
    rt = runtime()
    what = "conv2d_backward"
    x, w, dy = device_input(rt, x, f"{what} x"), device_input(rt, w, f"{what} w"), device_input(rt, dy, f"{what} dy")
    group = int(group)
    check_conv2d_args(x, w, None, group)
    (n, c, h, wd), (m, cg, kh, kw), (sh, sw), (ph, pw), (dh, dwl), (oh, ow) = conv2d_geometry(
        x.shape, w.shape, stride, pad, dilation
    )
    if dy.shape != (n, m, oh, ow):
        raise ValueError(f"{what}: expected dy of shape {(n, m, oh, ow)} (N, M, OH, OW), got {dy.shape}")
    for name, arr, need in (("dx", dx, need_dx), ("dw", dw, need_dw), ("db", db, need_db)):
        check_need(name, arr, need, what)
    if need_dx:
        dx = device_output(rt, dx, tuple(x.shape), f"{what} dx")
        if rt.ptr(dx) == rt.ptr(dy) and dx.size:
            raise ValueError(f"{what}: dx shares memory with dy; pass a separate dx array")
    if need_dw:
        if dw is None:
            dw = rt.empty(w.shape)
            dw.fill(0)
        dw = device_output(rt, dw, tuple(w.shape), f"{what} dw")
        if overwrite_dw:
            dw.fill(0)
    if need_db:
        if db is None:
            db = rt.empty((m,))
            db.fill(0)
        db = device_output(rt, db, (m,), f"{what} db")
        if overwrite_db:
            db.fill(0)
    if dy.size == 0 or x.size == 0:
        if need_dx and dx.size:
            dx.fill(0)
        return dx, dw, db
    mg, kg, npix = m // group, cg * kh * kw, oh * ow
    if need_db:
        for i0, i1 in chunks(n, m * npix):
            channel_sum(rt, dy[i0:i1], db, i1 - i0, m, npix)
    if not (need_dx or need_dw):
        return dx, dw, db
    per_image = max(c * kh * kw * npix, m * npix, c * h * wd)
    step = max(1, min(COL_LIMIT, INDEX_LIMIT) // per_image)
    if per_image > INDEX_LIMIT:
        raise ValueError(f"{what}: one image needs {per_image} elements of workspace, over 2^31; not supported")
    w2 = w.reshape(m, kg)
    dw2 = dw.reshape(m, kg) if need_dw else None
    geometry = (i32(oh), i32(ow), i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw), i32(dh), i32(dwl))
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        nb, q = i1 - i0, (i1 - i0) * npix
        dyp = rt.empty((m, q))
        grid, block = flat_launch(m * q, rt.sm_count)
        launch(rt, "conv", "pack_dy", (), grid, block, (dy[i0:i1], dyp, i32(nb), i32(m), i32(npix)))
        col = rt.empty((c * kh * kw, q))
        if need_dw:
            grid, block = flat_launch(col.size, rt.sm_count)
            args = (x[i0:i1], col, i32(nb), i32(c), i32(h), i32(wd), *geometry)
            launch(rt, "conv", "im2col", (), grid, block, args)
            for g in range(group):
                rows, krows = slice(g * mg, (g + 1) * mg), slice(g * kg, (g + 1) * kg)
                sgemm(rt, dyp[rows], col[krows], dw2[rows], trans_a=False, trans_b=True, accumulate=True)
        if need_dx:
            for g in range(group):
                rows, krows = slice(g * mg, (g + 1) * mg), slice(g * kg, (g + 1) * kg)
                sgemm(rt, w2[rows], dyp[rows], col[krows], trans_a=True, trans_b=False)
            grid, block = flat_launch(nb * c * h * wd, rt.sm_count)
            args = (col, dx[i0:i1], i32(nb), i32(c), i32(h), i32(wd), *geometry)
            launch(rt, "conv", "col2im", (), grid, block, args)
    return dx, dw, db
