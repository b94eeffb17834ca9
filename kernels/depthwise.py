"""Depthwise 2-D convolution (group == C_in == C_out, one filter per channel), Caffe semantics, NCHW float32.

EfficientNet-Lite / MobileNet blocks: y[n, c] = b[c] + w[c, 0] (*) x_pad[n, c] (cross-correlation), then an optional
clip min(max(y, lo), hi) (ReLU: (0, inf); ReLU6: (0, 6)). ``kernels.conv`` runs these as one 1-row GEMM per channel
(im2col + GEMM per group: 3-27x slower, the figures in the benchmark); here two forward paths, chosen by plane size.

Kernels (forward, then backward):

0. ``depthwise_forward_ref`` / ``depthwise_backward_ref`` - plain NumPy in float64: one broadcast multiply-add per
                        kernel tap (i, j) over all channels, forward and its transpose.
Plane by plane (large planes: 112 x 112, 56 x 56 at stride 1):
1. ``_fill_planes``   - one channel plane copied into the running thread's buffer with its zero padding made explicit
                        and its columns split by phase (column u of phase q = padded column u*sw + q), so every tap of
                        every horizontal stride reads consecutive floats: output pixel (oh, ow), tap (i, j) reads
                        phase (j*dw) % sw, row oh*sh + i*dh, column ow + (j*dw) // sw. Rows by ``_copy_split`` (LLVM
                        IR: 8-float copies, or a deinterleave into two phases at stride 2); the zero borders are
                        written once per call, as they never move.
2. ``_dw_tile``       - the micro-kernel, in LLVM IR: RUNS = 8 runs of 8 output pixels (each inside one output row,
                        anywhere in the plane, from a run table made once per shape), all taps of the channel: per tap
                        one broadcast of the weight and 8 unaligned loads feed 8 FMAs into 8 <8 x float> accumulators;
                        then bias, clip (compare and select: a NaN stays NaN) and the stores. A run that ends past its
                        row is stored whole where the spill stays in the plane (later runs overwrite it). Loads bound
                        it: 10 loads per 8 FMAs (figures in benchmarks/perf_notes.md). Taps whose weight is exactly 0 are
                        left out of the tap table: Caffe's form of TF's asymmetric SAME padding at stride 2, a
                        (k+1)x(k+1) kernel with a zero first row and column, then costs k*k taps, not (k+1)^2 (a zero
                        tap no longer turns an inf input into a NaN).
3. ``_dw_worker``     - planes (image, channel), ``per`` of them a task, claimed by one worker per thread
                        (``gemm.claim``: dynamic scheduling); each worker fills its next plane into a second buffer
                        before reading the current one (a plane read right after its stores stalls store forwarding).
Blocks of LANES channels, 16 with AVX-512 (zmm: half the instructions a channel of 8 lanes), else 8 (planes up to
C8_MAX_PIXELS padded pixels, or C8_MAX_PIXELS_STRIDED at stride 2: 28 x 28 and smaller, 56 x 56 at stride 2; rows of
7 or 14 pixels waste an 8-lane run, and per-plane overheads dominate there; and every plane size once x is
C8_ANY_PLANE_X_BYTES or more, read from memory):
4. ``_fill_c8``       - LANES channel planes of one image interleaved per pixel ((HP, WP, LANES): one vector per
                        padded pixel) by 8 x 8 transposes in registers (``_t8``), a row's tail through one transpose
                        that reads past the row (not past x) and stores only the tail's pixels.
5. ``_block_tile``    - 8 consecutive output pixels (any rows) x LANES channels: per tap one aligned load of the
                        channels' weights and 8 aligned loads of the pixels' channel vectors (no lane wasted, no line
                        split), 8 FMAs; bias, clip, 8 x 8 transposes back, and 8-pixel stores, one per channel.
6. ``_c8_worker``     - (block, image) tasks, block-major so a task's images share one tap table (``_c8_taps``:
                        taps zero in all the block's channels dropped; for a plan's folded weights, ``frozen``, every
                        block's table made once per weight array, ``_c8_tables``: 1.03x on EfficientNet-Lite0 at
                        batch 1, 1 thread), claimed and filled one ahead as in 3. With a ``PaddedInput`` the step
                        before (a ``pointwise_t`` 1x1) wrote the blocks in this layout already: no fill, the task
                        zeroes the block's borders (the buffer is shared between the plan's handoffs) and reads it in
                        place. EfficientNet-Lite0, in-process A/B: that handoff 1.04-1.06x (1 thread, batch 1) and
                        1.03x (2 threads) with blocks of 8 channels, blocks of 16 on top of that 1.056x and 1.07x.
Backward:
7. ``_dw_backward``   - channels claimed by workers, every image of a channel in turn: db += sum(dy); dw[c, t] +=
                        sum dy * (the x plane of 1. shifted by tap t), a dot product per output row, float32 per
                        image and float64 across images; dx: w * dy added into zeroed phase planes (the transpose of
                        2.), then gathered back into dx without the padding. Plain Numba loops (vectorised).

Public: ``depthwise_applies(x_shape, w_shape, group, dilation) -> bool``,
``depthwise_forward(x, w, b, *, stride, pad, dilation, act, out) -> y`` (``DepthwiseRunner``: the shape work done
once, for a Net's execution plan; its ``handoff`` / ``padded_in``, set by the plan, hand the output / take the input
in blocks: ``Handoff``, ``PaddedInput``) and
``depthwise_backward(dy, x, w, *, stride, pad, dilation, dx, dw, db, need_dx, need_dw, need_db) -> (dx, dw, db)``.
Shapes: x (N, C, H, W), w (C, 1, kh, kw), b (C,), y (N, C, OH, OW) with OH, OW from ``conv.conv2d_output_shape``.
Any kernel size, stride, pad and dilation take the fast paths.

Benchmark: in the whole net, ``python -m benchmarks --only efficientnet``; per layer (the 12 EfficientNet-Lite0
depthwise layers, checked against the reference first, then interleaved A/B against ``conv2d_forward`` with group = C,
torch and ONNX Runtime on one Conv node), the script bench_depthwise.py handed over with this module (not yet in
benchmarks/).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, prange
from numba.core import cgutils, errors, types
from numba.extending import intrinsic

from kernels.conv import conv2d_output_shape
from kernels.gemm import (
    Workspace,
    accumulators,
    as64,
    claim,
    claim_near,
    flat_f32,
    image_counters,
    queue_sizes,
    splat,
    transpose8,
)
from kernels.serial import l2_bytes
from kernels.tasks import Task
from kernels.tiling import VW

RUNS = 8  # 8-pixel runs per _dw_tile: 8 ymm accumulators + 1 broadcast weight (loads fold into the FMAs)
PLANE_WORK = 1 << 14  # multiply-adds per claimed task at least (several small planes per task: 7x7 x 25 taps)
assert 1 <= RUNS <= 15, "RUNS accumulators + the broadcast weight must fit the 16 ymm registers"
C8 = True  # forward: blocks of channels (_c8_worker) for small planes (see below); False: always plane by plane
# channels a block: 16 where the vectors are 16 floats (AVX-512: zmm tiles, half the instructions a channel), else 8
LANES = 16 if VW == 16 else 8
# padded pixels of a block buffer at stride 1: 2048 with blocks of 8 channels (64 KB; two per worker); with blocks of
# 16 (AVX-512), as many as let a worker's two buffers take a quarter of L2 (2 MB: 4096, 58 x 58 padded planes, 256 KB
# each; EfficientNet-Lite0's 56 x 56 stride-1 layer, its expand handing it the blocks: 0.153 -> 0.094 ms in the net at
# batch 1 on 2 threads)
C8_MAX_PIXELS = max(2048, l2_bytes() // (2 * 4 * LANES * 4)) if LANES == 16 else 2048


# at horizontal stride > 1, where the plane path's phase split costs more: padded pixels of a block buffer such that
# a worker's two buffers take half of L2 at most (Zen 3, 512 KB: 4096 pixels, 128 KB each, 56 x 56 planes at stride
# 2; a 2 MB L2: 16384, which takes in the 112 x 112 stride-2 layer: 0.56 -> 0.43 ms at batch 1 on 1 thread of an
# AVX-512 Xeon, CPU time, where 112 x 112 at stride 1 stays faster plane by plane, 0.27 vs 0.29-0.41 ms)
C8_MAX_PIXELS_STRIDED = max(4096, l2_bytes() // (2 * 2 * 8 * 4))
# x of at least this many bytes (read from memory, not from L2/L3: EfficientNet-Lite0 at batch 8 and more): blocks of 8
# channels for any plane size (their fill reads x once, in order); per layer at batch 32, 2 threads: 112 x 112 s2 7.94
# vs 9.27 ms, 56 x 56 5.61 vs 6.48, 112 x 112 5.08 vs 5.14; below it the plane path is as fast or faster (32 channels of
# 112 x 112 at batch 8, 12.8 MB: 1.15 vs 1.28 ms)
C8_ANY_PLANE_X_BYTES = 16 << 20

Act = tuple[float, float] | None  # (lo, hi) of the fused clip, or None


# --------------------------------------------------------------------------------------------- reference
def _geometry(x_shape, w_shape, stride, pad, dilation):
    """(n, c, h, wd), (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) of a depthwise convolution."""
    n, c, h, wd = x_shape
    kh, kw = w_shape[2], w_shape[3]
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride, "stride"), _pair(pad, "pad"), _pair(dilation, "dilation")
    oh, ow = conv2d_output_shape((h, wd), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    return (n, c, h, wd), (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow)


def _window(i: int, j: int, dil, out_hw, stride) -> tuple[slice, slice]:
    """Rows and columns of the padded input that tap (i, j) reads: x_pad[.., oh*sh + i*dh, ow*sw + j*dw]."""
    (dh, dw), (oh, ow), (sh, sw) = dil, out_hw, stride
    return slice(i * dh, i * dh + (oh - 1) * sh + 1, sh), slice(j * dw, j * dw + (ow - 1) * sw + 1, sw)


def depthwise_forward_ref(x, w, b, *, stride=(1, 1), pad=(0, 0), dilation=(1, 1), act: Act = None) -> np.ndarray:
    """Reference depthwise convolution in float64, returned as float64.

    x: (N, C, H, W); w: (C, 1, kh, kw); b: (C,) or None. Returns y: (N, C, OH, OW),
    y[n,c,oh,ow] = b[c] + sum_{i,j} w[c,0,i,j] * x_pad[n, c, oh*sh + i*dh, ow*sw + j*dw], then
    min(max(y, lo), hi) when act = (lo, hi).
    """
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    (n, c, h, wd), (kh, kw), st, (ph, pw), dil, out_hw = _geometry(x64.shape, w64.shape, stride, pad, dilation)
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph : ph + h, pw : pw + wd] = x64
    y = np.zeros((n, c, *out_hw))
    for i in range(kh):
        for j in range(kw):
            y += w64[:, 0, i, j].reshape(1, c, 1, 1) * xp[(slice(None), slice(None), *_window(i, j, dil, out_hw, st))]
    if b is not None:
        y += np.asarray(b, np.float64).reshape(1, c, 1, 1)
    if act is not None:
        y = np.minimum(np.maximum(y, act[0]), act[1])
    return y


def depthwise_backward_ref(dy, x, w, *, stride=(1, 1), pad=(0, 0), dilation=(1, 1)):
    """Reference gradients of depthwise_forward_ref (no act) in float64: (dx, dw, db) as float64 arrays.

    dy: (N, C, OH, OW); x: (N, C, H, W); w: (C, 1, kh, kw). dx (N, C, H, W): w[c,0,i,j] * dy scattered back to the
    pixels tap (i, j) read (padding cropped); dw (C, 1, kh, kw) = sum_{n,oh,ow} dy * x_pad window; db (C,) =
    sum_{n,oh,ow} dy.
    """
    dy64, x64, w64 = (np.asarray(a, np.float64) for a in (dy, x, w))
    (n, c, h, wd), (kh, kw), st, (ph, pw), dil, out_hw = _geometry(x64.shape, w64.shape, stride, pad, dilation)
    if dy64.shape != (n, c, *out_hw):
        raise ValueError(f"depthwise_backward_ref: expected dy of shape {(n, c, *out_hw)}, got {dy64.shape}")
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph : ph + h, pw : pw + wd] = x64
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w64)
    for i in range(kh):
        for j in range(kw):
            win = (slice(None), slice(None), *_window(i, j, dil, out_hw, st))
            dw[:, 0, i, j] = (dy64 * xp[win]).sum(axis=(0, 2, 3))
            dxp[win] += dy64 * w64[:, 0, i, j].reshape(1, c, 1, 1)
    return dxp[:, :, ph : ph + h, pw : pw + wd].copy(), dw, dy64.sum(axis=(0, 2, 3))


# --------------------------------------------------------------------------------------------- planes
@intrinsic
def _copy_split(typingctx, dst, a_off, b_off, src, s_off, n, split):
    """Copy n floats from src[s_off:] (LLVM IR, unaligned 8-float vectors and a scalar tail; Numba's own loop checked
    for overlap on every row: ~60 cycles a row, more than copying a 56-pixel row). split False: dst[a_off + k] =
    src[s_off + k] for k < n. split True: deinterleave n pairs, dst[a_off + k] = src[s_off + 2k], dst[b_off + k] =
    src[s_off + 2k + 1] (two 8-float loads, two shuffles, two stores per 8 pairs)."""
    flat_f32(dst, src)
    sig = types.void(dst, a_off, b_off, src, s_off, n, split)

    def codegen(context, builder, signature, args):
        d_data = context.make_array(signature.args[0])(context, builder, args[0]).data
        s_data = context.make_array(signature.args[3])(context, builder, args[3]).data
        a0, b0, s0, n64 = (as64(builder, args[i]) for i in (1, 2, 4, 5))
        i64 = llvm_ir.IntType(64)
        vec = llvm_ir.VectorType(llvm_ir.FloatType(), 8)
        vptr = vec.as_pointer()
        c = [llvm_ir.Constant(i64, v) for v in (0, 1, 2, 3, 8, 16)]

        def vload(off):
            return builder.load(builder.bitcast(builder.gep(s_data, [off]), vptr), align=4)

        def vstore(v, off):
            builder.store(v, builder.bitcast(builder.gep(d_data, [off]), vptr), align=4)

        def sstore(off_from, off_to):
            builder.store(builder.load(builder.gep(s_data, [off_from])), builder.gep(d_data, [off_to]))

        nv = builder.lshr(n64, c[3])  # whole vectors (plain) or groups of 8 pairs (split)
        with builder.if_else(cgutils.as_bool_bit(builder, args[6])) as (split_, plain):
            with plain:
                with cgutils.for_range(builder, nv) as loop:
                    o = builder.mul(loop.index, c[4])
                    vstore(vload(builder.add(s0, o)), builder.add(a0, o))
                with cgutils.for_range(builder, builder.sub(n64, builder.shl(nv, c[3]))) as loop:
                    k = builder.add(builder.shl(nv, c[3]), loop.index)
                    sstore(builder.add(s0, k), builder.add(a0, k))
            with split_:
                i32 = llvm_ir.IntType(32)
                evens = llvm_ir.Constant(llvm_ir.VectorType(i32, 8), list(range(0, 16, 2)))
                odds = llvm_ir.Constant(llvm_ir.VectorType(i32, 8), list(range(1, 16, 2)))
                with cgutils.for_range(builder, nv) as loop:
                    so = builder.add(s0, builder.mul(loop.index, c[5]))
                    lo_v, hi_v = vload(so), vload(builder.add(so, c[4]))
                    o = builder.mul(loop.index, c[4])
                    vstore(builder.shuffle_vector(lo_v, hi_v, evens), builder.add(a0, o))
                    vstore(builder.shuffle_vector(lo_v, hi_v, odds), builder.add(b0, o))
                with cgutils.for_range(builder, builder.sub(n64, builder.shl(nv, c[3]))) as loop:
                    k = builder.add(builder.shl(nv, c[3]), loop.index)
                    sk = builder.add(s0, builder.shl(k, c[1]))
                    sstore(sk, builder.add(a0, k))
                    sstore(builder.add(sk, c[1]), builder.add(b0, k))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, boundscheck=False, inline="always")
def _zero(buf, start, stop):  # pragma: no cover - compiled
    for u in range(np.uint64(start), np.uint64(stop)):  # unsigned: no wraparound code, so the loop vectorises
        buf[u] = 0.0


@njit(cache=True, boundscheck=False)
def _fill_planes(xf, x_off, h, wd, ph, pw, sw, hu, wq, buf, borders):  # pragma: no cover - compiled
    """buf[(q*hu + r)*wq + u] = x_pad[r, u*sw + q] for phases q < sw, rows r < hu, columns u < wq, where x_pad is the
    (H, W) plane at xf[x_off:] inside a zero border of (ph, pw) (and zero beyond it on the right and bottom).
    borders False: the image only (the zeros are where a fill of the same geometry left them: they never move)."""
    for q in range(
        sw if borders else 0
    ):  # the zero borders: columns u < ulo and u >= uhi of each phase, rows outside the image
        ulo = min(wq, max(0, (pw - q + sw - 1) // sw))  # first u with u*sw + q - pw >= 0
        uhi = min(wq, max(ulo, (wd + pw - q + sw - 1) // sw))  # first u with u*sw + q - pw >= W
        for r in range(hu):
            d = (q * hu + r) * wq
            if r < ph or r >= ph + h:
                _zero(buf, d, d + wq)
            else:
                _zero(buf, d, d + ulo)
                _zero(buf, d + uhi, d + wq)
    # the image: column xc of x goes to phase (xc + pw) % sw, column (xc + pw) // sw
    ncol = min(wd, wq * sw - pw)  # columns of x inside the planes
    for xr in range(min(h, hu - ph)):
        s = x_off + xr * wd
        row = xr + ph
        if sw == 1:
            _copy_split(buf, row * wq + pw, 0, xf, s, ncol, False)
        elif sw == 2:
            qa = pw % 2  # phase of column 0; column 1 is in the other
            da = (qa * hu + row) * wq + pw // 2
            db = ((1 - qa) * hu + row) * wq + (pw + 1) // 2
            _copy_split(buf, da, db, xf, s, ncol // 2, True)
            if ncol % 2:
                buf[np.uint64(da + ncol // 2)] = xf[np.uint64(s + ncol - 1)]
        else:
            for xc in range(ncol):
                pc = xc + pw
                buf[np.uint64(((pc % sw) * hu + row) * wq + pc // sw)] = xf[np.uint64(s + xc)]


@njit(cache=True, boundscheck=False)
def _taps(wf, w_off, khw, toff_all, tw, toff):  # pragma: no cover - compiled
    """The channel's nonzero taps: tw[k] = wf[w_off + t], toff[k] = toff_all[t] over taps t with a nonzero weight;
    returns how many."""
    k = 0
    for t in range(khw):
        v = wf[w_off + t]
        if v != 0.0:
            tw[k] = v
            toff[k] = toff_all[t]
            k += 1
    return k


# --------------------------------------------------------------------------------------------- micro-kernel
@intrinsic
def _dw_tile(typingctx, buf, xbase, tw, toff, ntap, y, ybase, rt, r0, bias, lo, hi):
    """Runs r0 .. r0 + RUNS - 1 of a plane, run v's table entries rt[3*(r0 + v) :] = (x offset, y offset, count):
    acc_v[j] = sum_{t < ntap} tw[t] * buf[xbase + x offset + toff[t] + j] (j < 8), then
    y[ybase + y offset + j] = min(max(acc_v[j] + bias, lo), hi) for j < count (8: one vector store; fewer: lane by
    lane; 0: nothing). Clip by compare and select: a NaN stays NaN, and lo = -inf, hi = inf leave y as it is."""
    flat_f32(buf, tw, y)
    for a in (toff, rt):
        if not (isinstance(a, types.Array) and a.dtype == types.int64 and a.ndim == 1):
            raise errors.TypingError(f"_dw_tile: expected a 1-D int64 array, got {a}")
    sig = types.void(buf, xbase, tw, toff, ntap, y, ybase, rt, r0, bias, lo, hi)

    def codegen(context, builder, signature, args):
        def data(i):  # pointer to the elements of array argument i
            return context.make_array(signature.args[i])(context, builder, args[i]).data

        b_data, tw_data, t_data, y_data, rt_data = (data(i) for i in (0, 2, 3, 5, 7))
        xb, ntap64, yb, r064 = (as64(builder, args[i]) for i in (1, 4, 6, 8))
        f32, i64 = llvm_ir.FloatType(), llvm_ir.IntType(64)
        vec = llvm_ir.VectorType(f32, 8)
        vptr = vec.as_pointer()

        def entry(v, k):  # rt[3*(r0 + v) + k]
            idx = builder.add(builder.mul(r064, llvm_ir.Constant(i64, 3)), llvm_ir.Constant(i64, 3 * v + k))
            return builder.load(builder.gep(rt_data, [idx]))

        xos = [builder.add(xb, entry(v, 0)) for v in range(RUNS)]
        slots, fma = accumulators(builder, vec, RUNS)
        with cgutils.for_range(builder, ntap64) as loop:
            t = loop.index
            o = builder.load(builder.gep(t_data, [t]))
            wv = splat(builder, builder.load(builder.gep(tw_data, [t])), vec)
            for v in range(RUNS):
                xv = builder.load(builder.bitcast(builder.gep(b_data, [builder.add(xos[v], o)]), vptr), align=4)
                builder.store(builder.call(fma, [wv, xv, builder.load(slots[v])]), slots[v])
        bv, lov, hiv = (splat(builder, a if a.type == f32 else builder.fptrunc(a, f32), vec) for a in args[9:12])
        for v in range(RUNS):
            r = builder.fadd(builder.load(slots[v]), bv)
            r = builder.select(builder.fcmp_ordered("<", r, lov), lov, r)
            r = builder.select(builder.fcmp_ordered(">", r, hiv), hiv, r)
            n = entry(v, 2)
            base = builder.gep(y_data, [builder.add(yb, entry(v, 1))])
            with builder.if_else(builder.icmp_signed("==", n, llvm_ir.Constant(i64, 8))) as (full, part):
                with full:
                    builder.store(r, builder.bitcast(base, vptr), align=4)
                with part, cgutils.for_range(builder, n) as lane:
                    builder.store(builder.extract_element(r, lane.index), builder.gep(base, [lane.index]))
        return context.get_dummy_value()

    return sig, codegen


def _run_table(oh: int, ow: int, sh: int, wq: int) -> np.ndarray:
    """The plane's 8-pixel runs (row by row, the last of a row partial when OW % 8), padded to a multiple of RUNS:
    rt[3r : 3r + 3] = (offset in the phase planes, offset in the output plane, pixels to store). A partial run is
    stored whole where all 8 floats stay inside the output plane: the spill lands on later rows' pixels, whose runs
    are stored later (the tile stores its runs in order). A padding run repeats the last with 0 to store."""
    rpr = -(-ow // 8)
    row, q = np.divmod(np.arange(oh * rpr), rpr)
    y_off = row * ow + 8 * q
    cnt = np.where(y_off + 8 <= oh * ow, 8, np.minimum(8, ow - 8 * q))
    rt = np.stack([row * sh * wq + 8 * q, y_off, cnt], axis=1)
    pad = -len(rt) % RUNS
    rt = np.concatenate([rt, np.repeat(rt[-1:] * [1, 1, 0], pad, axis=0)])
    return np.ascontiguousarray(rt.reshape(-1), dtype=np.int64)


def _dw_worker(t, xf, wf, bias, y, planes, c, h, wd, ph, pw, sw, hu, wq, npix, toff_all, rt, per, lo, hi, ws,
               counter):  # fmt: skip  # pragma: no cover - compiled
    """Worker t (kernels.tasks: one per thread): claims tasks of `per` planes (image, channel) until none is left
    (gemm.claim); ws[t]: its two plane buffers. xf, wf, y: flat x, w, y; toff_all[t]: offset of tap t = i*kw + j in
    the phase planes (see _fill_planes), relative to the output pixel's run; rt: the run table (_run_table), npix =
    OH*OW."""
    khw = toff_all.shape[0]
    ntask = (planes + per - 1) // per
    nrun = rt.shape[0] // 3
    psize = ws.shape[1] // 2
    tw = np.empty(khw, np.float32)
    toff = np.empty(khw, np.int64)
    _zero(ws[t], 0, 2 * psize)  # the zero borders of both plane buffers, once (fills copy the image only)
    task = claim(counter)
    while task < ntask:
        p0, p1 = task * per, min(planes, (task + 1) * per)
        _fill_planes(xf, p0 * h * wd, h, wd, ph, pw, sw, hu, wq, ws[t], False)
        for p in range(p0, p1):
            buf = ws[t][(p - p0) % 2 * psize :]
            if p + 1 < p1:  # the next plane first: a plane read right after its stores stalls store forwarding
                _fill_planes(xf, (p + 1) * h * wd, h, wd, ph, pw, sw, hu, wq, ws[t][(p + 1 - p0) % 2 * psize :], False)
            ch = p % c
            ntap = _taps(wf, ch * khw, khw, toff_all, tw, toff)
            for r0 in range(0, nrun, RUNS):
                _dw_tile(buf, 0, tw, toff, ntap, y, p * npix, rt, r0, bias[ch], lo, hi)
        task = claim(counter)


# --------------------------------------------------------------------------------------------- channel blocks
@intrinsic
def _t8(typingctx, src, s_offs, dst, d_off, ncol):
    """dst[d_off + LANES k + l] = src[s_offs[l] + k] for l < 8, k < ncol (<= 8): eight 8-float rows of src (one per
    channel; all 8 floats are read) stored as ncol 8-channel vectors LANES floats apart (one per pixel), an 8 x 8
    transpose in registers (LLVM IR)."""
    flat_f32(src, dst)
    sig = types.void(src, s_offs, dst, d_off, ncol)

    def codegen(context, builder, signature, args):
        s_data = context.make_array(signature.args[0])(context, builder, args[0]).data
        o_data = context.make_array(signature.args[1])(context, builder, args[1]).data
        d_data = context.make_array(signature.args[2])(context, builder, args[2]).data
        i64 = llvm_ir.IntType(64)
        vptr = llvm_ir.VectorType(llvm_ir.FloatType(), 8).as_pointer()
        d0, ncol = as64(builder, args[3]), as64(builder, args[4])
        rows = []
        for lane in range(8):
            o = builder.load(builder.gep(o_data, [llvm_ir.Constant(i64, lane)]))
            rows.append(builder.load(builder.bitcast(builder.gep(s_data, [o]), vptr), align=4))
        for k, col in enumerate(transpose8(builder, rows)):
            with builder.if_then(builder.icmp_signed("<", llvm_ir.Constant(i64, k), ncol)):
                p = builder.gep(d_data, [builder.add(d0, llvm_ir.Constant(i64, LANES * k))])
                builder.store(col, builder.bitcast(p, vptr), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _block_tile(typingctx, buf, xoff, p0, wt, toff, ntap, y, ybase, npix, nch, cnt, bias8, lo, hi, out8):
    """Output pixels p0 .. p0 + 7 of one image (flattened oh*OW + ow) for L = LANES channels at once, from the
    channel-block buffer buf (L channels interleaved per pixel): acc_v = sum_{t < ntap} wt[Lt : Lt + L] * buf[xoff[p0
    + v] + toff[t] :][:L], one aligned L-channel vector per load; then + bias8, clip, 8 x 8 transposes, and channel
    c's 8 pixels stored at y[ybase + c*npix + p0 :] for c < nch (the first cnt lanes when cnt < 8). out8 != 0: no
    transpose, pixel p0 + v's L channels stored at y[ybase + (p0 + v)*L :] for v < cnt (the block's channels
    interleaved per pixel where its L planes would be: the layout pointwise_t reads, ``DepthwiseRunner.handoff``)."""
    flat_f32(buf, wt, y, bias8)
    sig = types.void(buf, xoff, p0, wt, toff, ntap, y, ybase, npix, nch, cnt, bias8, lo, hi, out8)
    lanes = LANES

    def codegen(context, builder, signature, args):
        def data(i):
            return context.make_array(signature.args[i])(context, builder, args[i]).data

        b_data, x_data, w_data, t_data, y_data, bias_data = (data(i) for i in (0, 1, 3, 4, 6, 11))
        p064, ntap64, yb, npix64, nch64, cnt64 = (as64(builder, args[i]) for i in (2, 5, 7, 8, 9, 10))
        f32, i32, i64 = llvm_ir.FloatType(), llvm_ir.IntType(32), llvm_ir.IntType(64)
        vec = llvm_ir.VectorType(f32, lanes)
        vptr = vec.as_pointer()
        v8 = llvm_ir.VectorType(f32, 8)
        v8ptr = v8.as_pointer()

        def c64(v):
            return llvm_ir.Constant(i64, v)

        def vload(ptr, off, align=4):
            return builder.load(builder.bitcast(builder.gep(ptr, [off]), vptr), align=align)

        xos = [builder.load(builder.gep(x_data, [builder.add(p064, c64(v))])) for v in range(8)]
        slots, fma = accumulators(builder, vec, 8)
        with cgutils.for_range(builder, ntap64) as loop:
            t = loop.index
            o = builder.load(builder.gep(t_data, [t]))
            wv = vload(w_data, builder.mul(t, c64(lanes)))
            for v in range(8):
                xv = vload(b_data, builder.add(xos[v], o))
                builder.store(builder.call(fma, [wv, xv, builder.load(slots[v])]), slots[v])
        bv = vload(bias_data, c64(0))
        lov, hiv = (splat(builder, a if a.type == f32 else builder.fptrunc(a, f32), vec) for a in args[12:14])
        rows = []
        for v in range(8):
            r = builder.fadd(builder.load(slots[v]), bv)
            r = builder.select(builder.fcmp_ordered("<", r, lov), lov, r)
            rows.append(builder.select(builder.fcmp_ordered(">", r, hiv), hiv, r))
        with builder.if_else(builder.icmp_signed("!=", as64(builder, args[14]), c64(0))) as (interleaved, planes):
            with interleaved:
                for v, row in enumerate(rows):
                    with builder.if_then(builder.icmp_signed("<", c64(v), cnt64)):
                        at = builder.add(yb, builder.mul(builder.add(p064, c64(v)), c64(lanes)))
                        builder.store(row, builder.bitcast(builder.gep(y_data, [at]), vptr), align=4)
            with planes:
                full = builder.icmp_signed("==", cnt64, c64(8))
                for half in range(lanes // 8):  # 8 channels at a time: an 8 x 8 transpose
                    part = rows
                    if lanes > 8:
                        idx = llvm_ir.Constant(llvm_ir.VectorType(i32, 8), list(range(8 * half, 8 * half + 8)))
                        part = [builder.shuffle_vector(r, llvm_ir.Constant(vec, llvm_ir.Undefined), idx) for r in rows]
                    for lane, col in enumerate(transpose8(builder, part)):
                        ch = 8 * half + lane
                        with builder.if_then(builder.icmp_signed("<", c64(ch), nch64)):
                            at = builder.add(yb, builder.add(builder.mul(c64(ch), npix64), p064))
                            base = builder.gep(y_data, [at])
                            with builder.if_else(full) as (whole, partial):
                                with whole:
                                    builder.store(col, builder.bitcast(base, v8ptr), align=4)
                                with partial, cgutils.for_range(builder, cnt64) as ln:
                                    ptr = builder.gep(base, [ln.index])
                                    builder.store(builder.extract_element(col, ln.index), ptr)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, boundscheck=False, inline="always")
def _zero_block_border(buf, off, hb, wb, h, wd, ph, pw, lanes):  # pragma: no cover - compiled
    """Zeros in the border of a block buffer at buf[off:] ((hb, wb, lanes): rows outside ph..ph + h - 1, columns outside
    pw..pw + wd - 1), not in the image's pixels, which every fill writes (a whole 112 x 112 buffer pair is 0.8 MB)."""
    row = wb * lanes
    _zero(buf, off, off + ph * row)
    _zero(buf, off + (ph + h) * row, off + hb * row)
    for r in range(ph, ph + h):
        o = off + r * row
        _zero(buf, o, o + pw * lanes)
        _zero(buf, o + (pw + wd) * lanes, o + row)


@njit(cache=True, boundscheck=False)
def _fill_c8(xf, x_off, nch, h, wd, ph, pw, wp, buf, offs):  # pragma: no cover - compiled
    """buf[((r + ph)*WP + pw + col)*L + l] = x[c0 + l, r, col] for the nch channels of a block (L = LANES; plane l
    at xf[x_off + l*H*W:]); lanes l >= nch repeat the last channel (their weights are zero). 8 lanes at a time. The
    borders are left as they are (zeroed once per call: they never move). A row's last W % 8 columns go through one
    more transpose that reads past the row (stores only W % 8 pixels), unless that read would pass the end of x: then
    lane by lane."""
    hw = h * wd
    tail = wd % 8
    for r in range(h):
        s = x_off + r * wd
        for g in range(0, LANES, 8):  # lanes g .. g + 7
            d = ((r + ph) * wp + pw) * LANES + g
            for col in range(0, wd - 7, 8):
                for lane in range(8):
                    offs[lane] = s + min(g + lane, nch - 1) * hw + col
                _t8(xf, offs, buf, d + col * LANES, 8)
            if tail == 0:
                continue
            col = wd - tail
            if s + (nch - 1) * hw + col + 8 <= xf.shape[0]:
                for lane in range(8):
                    offs[lane] = s + min(g + lane, nch - 1) * hw + col
                _t8(xf, offs, buf, d + col * LANES, tail)
            else:
                for col in range(wd - tail, wd):
                    for lane in range(8):
                        buf[np.uint64(d + col * LANES + lane)] = xf[np.uint64(s + min(g + lane, nch - 1) * hw + col)]


def _c8_worker(t, xf, wf, bias, y, n_img, c, h, wd, ph, pw, wp, npix, toff_all, xoff, per, lo, hi, ws,
               counter, out8, wt_tab, toff_tab, ntaps, b8_tab, pin):  # fmt: skip  # pragma: no cover - compiled
    """Worker t (kernels.tasks: one per thread): claims tasks of `per` (image, block of LANES channels) until none is
    left (gemm.claim; with 2+ images a thread from its CPU's queue of images first, with one image from its CPU's
    queue of channel blocks: gemm.claim_near, gemm.image_counters); ws[t]: its two block buffers of HP*WP*L floats
    (L = LANES), 32-byte aligned. toff_all[t] = (i*dh*WP + j*dw)*L for tap t = i*kw + j; xoff[p] = (oh*sh*WP +
    ow*sw)*L for output pixel p = oh*OW + ow, padded to a multiple of 8 entries. ntaps of size nblk: every block's
    tap table made already (``_c8_tables``: row b of wt_tab, toff_tab, b8_tab, ntaps[b] taps); of size 0: made here
    per block. pin not empty: the blocks as the step before wrote them (``PaddedInput``: block b of image n at
    pin[(n*B + b)*plane:], the buffers' layout), read there after zeroing their borders; no fill. Blocks of LANES
    channels, 8 or 16 (the offsets count floats: pixels of LANES)."""
    khw = toff_all.shape[0]
    lanes = LANES
    nblk = (c + lanes - 1) // lanes
    bsize = ws.shape[1] // 2
    offs = np.empty(8, np.int64)
    wt = np.empty(khw * lanes, np.float32)  # the current block's taps: wt[k*L + lane], k < ntap
    toff = np.empty(khw, np.int64)
    b8 = np.empty(lanes, np.float32)
    tables = ntaps.shape[0] > 0
    given = pin.shape[0] > 0
    cur, ntap = -1, 0
    hb = bsize // (wp * lanes)  # padded rows of a block buffer
    for half in range(0 if given else 2):  # the zero borders of both block buffers, once a call (fills copy the image)
        _zero_block_border(ws[t], half * bsize, hb, wp, h, wd, ph, pw, lanes)
    # queues (gemm.image_counters, gemm.claim_near): queue u the images u*N/Q.. or, one image, its channel blocks
    # u*B/Q.., claimed from the queue of this thread's CPU first. Within a queue block-major: q -> block b_u + q // nu
    # of image n_u + q % nu (a task's images share its taps)
    items, granule = (n_img, nblk) if n_img > 1 else (nblk, 1)
    sizes = queue_sizes(counter, items, granule, per)
    nq = sizes.shape[0]
    while True:
        u, task = claim_near(counter, sizes)
        if u < 0:
            break
        first, stop = u * items // nq, (u + 1) * items // nq
        n_u, nu, b_u, nb = (first, stop - first, 0, nblk) if n_img > 1 else (0, 1, first, stop - first)
        q0, q1 = task * per, min(nu * nb, (task + 1) * per)
        for q in range(q0, q1 + 1):  # fill block q while computing block q - 1 (see _dw_worker)
            if q < q1 and not given:
                n, c0 = n_u + q % nu, (b_u + q // nu) * lanes
                qbuf = ws[t][(q - q0) % 2 * bsize :]
                _fill_c8(xf, (n * c + c0) * h * wd, min(lanes, c - c0), h, wd, ph, pw, wp, qbuf, offs)
            if q == q0:
                continue
            n, blk = n_u + (q - 1) % nu, b_u + (q - 1) // nu
            c0 = blk * lanes
            nch = min(lanes, c - c0)
            if blk != cur and tables:
                cur, ntap, wt, toff, b8 = blk, ntaps[blk], wt_tab[blk], toff_tab[blk], b8_tab[blk]
            elif blk != cur:
                cur, ntap = blk, _c8_taps(wf, bias, c0, nch, khw, toff_all, wt, toff, b8)
            if given:  # the borders zeroed here (the buffer is shared with other handoffs of the plan)
                _zero_block_border(pin, (n * nblk + blk) * bsize, hb, wp, h, wd, ph, pw, lanes)
            buf = pin[(n * nblk + blk) * bsize :] if given else ws[t][(q - 1 - q0) % 2 * bsize :]
            ybase = (n * c + c0) * npix
            for p0 in range(0, npix, 8):
                _block_tile(buf, xoff, p0, wt, toff, ntap, y, ybase, npix, nch, min(8, npix - p0), b8, lo, hi, out8)


_F1, _I1, _i = types.float32[::1], types.int64[::1], types.int64
_DW = Task(
    _dw_worker,
    (_F1, _F1, _F1, _F1, *(_i,) * 10, _I1, _I1, _i, types.float64, types.float64, types.float32[:, ::1], _I1),
    opt=1,  # explicit vector tiles: -O1 compiles in a fifth less time, same code speed (kernels.tasks)
    compile_s=1.0,
    boundscheck=False,
)
_F2, _I2 = types.float32[:, ::1], types.int64[:, ::1]
_C8_ARGS = (_F1, _F1, _F1, _F1, *(_i,) * 8, _I1, _I1, _i, types.float64, types.float64, _F2, _I1, _i)
_C8 = Task(
    _c8_worker,
    (*_C8_ARGS, _F2, _I2, _I1, _F2, _F1),  # then the tap tables and the blocks handed over
    opt=1,  # explicit vector tiles: -O1 compiles in a fifth less time, same code speed (kernels.tasks)
    compile_s=2.0,
    boundscheck=False,
)


@njit(cache=True, boundscheck=False)
def _c8_taps(wf, bias, c0, nch, khw, toff_all, wt, toff, b8):  # pragma: no cover - compiled
    """The tap table of the block of channels c0 .. c0 + nch - 1 (L = b8's size, 8 or 16 lanes): wt[k*L + lane],
    toff[k] for its taps that are not zero in every channel (lanes >= nch zero), b8 its biases; returns the number of
    taps."""
    nl = b8.shape[0]
    for lane in range(nl):  # every tap first (each channel's taps are contiguous in w), then the zero taps squeezed out
        if lane < nch:
            src = (c0 + lane) * khw
            for t in range(khw):
                wt[t * nl + lane] = wf[src + t]
        else:
            for t in range(khw):
                wt[t * nl + lane] = np.float32(0.0)
    k = 0
    for t in range(khw):
        nz = False
        for lane in range(nl):
            nz |= wt[t * nl + lane] != 0.0
        if nz:
            if k != t:  # k < t: the copy moves a tap down over one already squeezed out
                for lane in range(nl):
                    wt[k * nl + lane] = wt[t * nl + lane]
            toff[k] = toff_all[t]
            k += 1
    for lane in range(nl):
        b8[lane] = bias[c0 + lane] if lane < nch else np.float32(0.0)
    return k


def _c8_tables(wf, bias, c, toff_all, lanes):
    """Every block's tap table (blocks of `lanes` channels), as ``_c8_taps`` makes one (in NumPy: made once per weight
    array, nothing to compile): (wt_tab, toff_tab, ntaps, b8_tab), row b for block b."""
    khw = toff_all.shape[0]
    nblk = -(-c // lanes)
    w = np.zeros((nblk * lanes, khw), np.float32)
    w[:c] = wf.reshape(c, khw)
    w = w.reshape(nblk, lanes, khw).transpose(0, 2, 1)  # (block, tap, lane)
    used = (w != 0).any(axis=2)  # taps not zero in every channel of the block, kept in order, moved to the front
    order = np.argsort(~used, axis=1, kind="stable")
    wt_tab = np.ascontiguousarray(np.take_along_axis(w, order[:, :, None], axis=1).reshape(nblk, khw * lanes))
    toff_tab = np.ascontiguousarray(toff_all[order].astype(np.int64))
    b8_tab = np.zeros(nblk * lanes, np.float32)
    b8_tab[:c] = bias
    return wt_tab, toff_tab, used.sum(axis=1).astype(np.int64), b8_tab.reshape(nblk, lanes)


_NO_TABLES = (
    np.empty((0, 0), np.float32),
    np.empty((0, 0), np.int64),
    np.empty(0, np.int64),
    np.empty((0, 0), np.float32),
)  # the worker's tap tables when it makes them itself
_NO_INPUT = np.empty(0, np.float32)


# --------------------------------------------------------------------------------------------- backward
@njit(cache=True, parallel=True, fastmath=True, boundscheck=False)
def _dw_backward(xf, wf, dyf, dxf, dwf, dbf, n_img, c, h, wd, ph, pw, sh, sw, hu, wq, oh_n, ow_n, toff_all,
                 need_dx, need_dw, need_db, ws, workers, counter):  # fmt: skip  # pragma: no cover - compiled
    """Channels claimed by `workers` workers; per channel, every image: db[c] += sum(dy), dw[c] += the per-tap dot
    products of dy with the x planes (float32 per image, added in float64 per tap), dx = the transpose of the forward
    (overwritten). ws[t, 0]: worker t's x planes, ws[t, 1] its dx planes (sw*hu*wq floats each)."""
    khw = toff_all.shape[0]
    npix = oh_n * ow_n
    for t in prange(workers):
        xb = ws[t, 0]
        dxb = ws[t, 1]
        dws = np.empty(khw, np.float64)
        ch = claim(counter)
        while ch < c:
            for k in range(khw):
                dws[k] = 0.0
            dbs = 0.0
            for n in range(n_img):
                p = n * c + ch
                y0 = p * npix
                if need_db:
                    dbs += _sum(dyf, y0, npix)
                if need_dw:
                    _fill_planes(xf, p * h * wd, h, wd, ph, pw, sw, hu, wq, xb, n == 0)
                    for k in range(khw):
                        acc = np.float32(0.0)
                        for oh in range(oh_n):
                            acc += _dot(dyf, y0 + oh * ow_n, xb, oh * sh * wq + toff_all[k], ow_n)
                        dws[k] += acc
                if need_dx:
                    _zero(dxb, 0, dxb.shape[0])
                    for oh in range(oh_n):
                        for k in range(khw):
                            wk = wf[ch * khw + k]
                            if wk != 0.0:
                                _axpy(wk, dyf, y0 + oh * ow_n, dxb, oh * sh * wq + toff_all[k], ow_n)
                    _gather_dx(dxb, dxf, p * h * wd, h, wd, ph, pw, sw, hu, wq)
            if need_db:
                dbf[ch] += np.float32(dbs)
            if need_dw:
                for k in range(khw):
                    dwf[ch * khw + k] += np.float32(dws[k])
            ch = claim(counter)


@njit(cache=True, fastmath=True, boundscheck=False, inline="always")
def _sum(a, start, n):  # pragma: no cover - compiled
    s = np.float32(0.0)
    for i in range(np.uint64(start), np.uint64(start + n)):  # unsigned: no wraparound code; fastmath: vectorised
        s += a[i]
    return s


@njit(cache=True, fastmath=True, boundscheck=False, inline="always")
def _dot(a, a0, b, b0, n):  # pragma: no cover - compiled
    """sum_i a[a0 + i] * b[b0 + i] for i < n, in float32 (vectorised: fastmath reorders the sum)."""
    s = np.float32(0.0)
    for i in range(np.uint64(n)):
        s += a[np.uint64(a0) + i] * b[np.uint64(b0) + i]
    return s


@njit(cache=True, fastmath=True, boundscheck=False, inline="always")
def _axpy(alpha, a, a0, b, b0, n):  # pragma: no cover - compiled
    """b[b0 + i] += alpha * a[a0 + i] for i < n."""
    for i in range(np.uint64(n)):
        b[np.uint64(b0) + i] += alpha * a[np.uint64(a0) + i]


@njit(cache=True, boundscheck=False)
def _gather_dx(dbuf, dxf, x_off, h, wd, ph, pw, sw, hu, wq):  # pragma: no cover - compiled
    """dx plane at dxf[x_off:] = the phase planes dbuf without the padding (zero where no tap reached)."""
    _zero(dxf, x_off, x_off + h * wd)
    for q in range(sw):
        ulo = min(wq, max(0, (pw - q + sw - 1) // sw))
        uhi = min(wq, max(ulo, (wd + pw - q + sw - 1) // sw))
        for xr in range(max(0, min(h, hu - ph))):
            s = (q * hu + xr + ph) * wq
            d = x_off + xr * wd + q - pw  # + u*sw >= 0 for u >= ulo
            if sw == 1:
                for u in range(ulo, uhi):
                    dxf[np.uint64(d + u)] = dbuf[np.uint64(s + u)]
            else:
                for u in range(ulo, uhi):
                    dxf[np.uint64(d + u * sw)] = dbuf[np.uint64(s + u)]


# --------------------------------------------------------------------------------------------- public
_WORKSPACE = Workspace()


def _pair(v, name: str) -> tuple[int, int]:
    if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return v
    if np.isscalar(v):
        return int(v), int(v)
    t = tuple(int(e) for e in v)
    if len(t) != 2:
        raise ValueError(f"depthwise: expected {name} as an int or an (h, w) pair, got {v!r}")
    return t


def depthwise_applies(x_shape, w_shape, group: int, dilation=1) -> bool:
    """Is this convolution depthwise with channel multiplier 1 (group == C_in == C_out, w (C, 1, kh, kw)), so the
    depthwise kernels compute it? Any kernel size, stride, pad and dilation."""
    del dilation  # every dilation is handled (kept in the signature for callers that pass the layer's)
    return len(x_shape) == 4 and len(w_shape) == 4 and group == x_shape[1] == w_shape[0] and w_shape[1] == 1


def check_act(act: Act, what: str = "depthwise") -> tuple[float, float]:
    """(lo, hi) of a fused clip epilogue: (-inf, inf) for None; ValueError naming `what` otherwise. Shared with
    kernels.pointwise."""
    if act is None:
        return -math.inf, math.inf
    try:
        lo, hi = (float(v) for v in act)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected act as None or a (lo, hi) pair of floats, got {act!r}") from None
    if not lo <= hi:
        raise ValueError(f"{what}: expected act (lo, hi) with lo <= hi (ReLU: (0, inf), ReLU6: (0, 6)), got {act!r}")
    return lo, hi


def _check_args(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, what: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what}: expected x of rank 4 (N, C, H, W), got shape {x.shape}")
    c = x.shape[1]
    if w.ndim != 4 or w.shape[:2] != (c, 1):
        raise ValueError(
            f"{what}: expected w of shape ({c}, 1, kh, kw) for x of {c} channels (one filter per channel), "
            f"got {w.shape}"
        )
    if b is not None and b.shape != (c,):
        raise ValueError(f"{what}: expected bias of shape ({c},), got {b.shape}")


def _check_out(arr, shape: tuple[int, ...], name: str, what: str) -> np.ndarray:
    """`arr` if it is a writeable C-contiguous float32 array of `shape`, else ValueError naming it."""
    if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != np.float32 or not arr.flags.c_contiguous:
        got = f"{arr.dtype} {arr.shape} (c_contiguous={arr.flags.c_contiguous})" if isinstance(arr, np.ndarray) else arr
        raise ValueError(f"{what}: expected {name} to be a C-contiguous float32 array of shape {shape}, got {got}")
    if not arr.flags.writeable:
        raise ValueError(f"{what}: {name} is read-only")
    return arr


def _plane_geometry(x_shape, w_shape, stride, pad, dilation):
    """Geometry plus the phase planes' rows hu and width wq and the tap offset table (see _fill_planes)."""
    (n, c, h, wd), (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = _geometry(x_shape, w_shape, stride, pad, dilation)
    hu = (oh - 1) * sh + (kh - 1) * dh + 1  # rows any tap reads
    wq = -(-ow // 8) * 8 + (kw - 1) * dw // sw  # whole 8-pixel runs plus the widest tap shift
    toff = np.array(
        [((j * dw) % sw * hu + i * dh) * wq + (j * dw) // sw for i in range(kh) for j in range(kw)], np.int64
    )
    return (n, c, h, wd), (sh, sw), (ph, pw), (oh, ow), hu, wq, toff


class Handoff:
    """A depthwise output handed to the next step in blocks of LANES channels interleaved per pixel (the block tile's
    out8: block b of image n where its LANES planes would be, pixel p's channels at p*LANES), not in planes: the plan
    sets a DepthwiseRunner's ``handoff`` (channel-block path, channels a multiple of LANES) when the one step that
    reads the output can take that layout (``kernels.pointwise_t``: its broadcasts then read a pixel's 16 channels
    from one line, and no 8 x 8 transpose runs in between). ``interleaved``: LANES after each such write; the reader
    clears it (0) and reads planes when it is 0 (the Net ran the layer's own forward instead)."""

    __slots__ = ("interleaved",)

    def __init__(self) -> None:
        self.interleaved = 0


class PaddedInput:
    """A depthwise input handed over by the step before in the channel-block path's own layout (a 1x1 convolution
    on ``kernels.pointwise_t`` writing its output so, set by the plan: ``net.plan_steps.hand_over_expand``): block b
    of image n as a (HB, WB, LANES) buffer at ``buf[(n*B + b)*plane:]``, the image's pixels at rows ph.., columns
    pw.., the borders zeroed by the runner's task before it reads the block. The runner reads the blocks in place: no
    fill, none of its 8 x 8 transposes. ``poff[p]``: input pixel p's offset in a block, ((p // W + ph)*WB + pw + p %
    W)*LANES. ``ready``: the writer sets it after each such write, the runner clears it and fills from the planes when
    it is not set (the Net ran the 1x1 layer's own forward instead). ``unpadded``: the same layout without borders,
    for a fused expand + depthwise step that reads its input so (``mbconv.ExpandDepthwiseRunner.x_blocks``)."""

    __slots__ = ("buf", "geometry", "plane", "poff", "ready")

    @staticmethod
    def size(runner: DepthwiseRunner) -> int:
        """The floats of the blocks of a runner's input."""
        return runner.args[0] * -(-runner.args[1] // LANES) * runner.plane

    def __init__(self, runner: DepthwiseRunner, buf: np.ndarray) -> None:
        """buf: float32 aligned to a block's pixel (4 LANES bytes), at least ``size(runner)`` floats; several
        PaddedInputs of one plan may share it (each is read right after it is written), as the runner zeroes a block's
        borders before reading it."""
        if not runner.c8:
            raise ValueError("PaddedInput: the depthwise runner does not take the channel-block path")
        n, c, h, wd, ph, pw, wb = runner.args[:7]
        self._setup((n, c, h, wd, ph, pw, runner.plane // (LANES * wb), wb), buf)

    @classmethod
    def unpadded(cls, shape, buf: np.ndarray) -> PaddedInput:
        """Blocks of an (N, C, H, W) blob without borders: block b of image n at ``buf[(n*B + b)*H*W*LANES:]``, pixel p
        at p*LANES in it, the layout of a depthwise step's Handoff (a 1x1 step handing its output to the expand of a
        fused expand + depthwise step: ``mbconv.ExpandDepthwiseRunner.x_blocks``); buf as for the constructor, at least
        N * ceil(C / LANES) * H * W * LANES floats."""
        n, c, h, wd = (int(v) for v in shape)
        self = cls.__new__(cls)
        self._setup((n, c, h, wd, 0, 0, h, wd), buf)
        return self

    def _setup(self, geometry: tuple[int, ...], buf: np.ndarray) -> None:
        n, c, h, wd, ph, pw, hb, wb = geometry
        self.geometry = geometry
        self.plane = hb * wb * LANES
        size = n * -(-c // LANES) * self.plane
        if buf.dtype != np.float32 or buf.ndim != 1 or buf.size < size or buf.ctypes.data % (4 * LANES):
            raise ValueError(
                f"PaddedInput: needs {4 * LANES}-byte aligned float32 of {size} floats, got {buf.dtype} {buf.shape}"
            )
        self.buf = buf[:size]
        p = np.arange(h * wd)
        self.poff = (((p // wd + ph) * wb + pw + p % wd) * LANES).astype(np.int64)
        self.ready = False

    def planes(self, x: np.ndarray) -> None:
        """The blocks written back into x (N, C, H, W) as planes, ready cleared (a step that could not read them
        leaves them to the layer's own forward)."""
        n, c, h, wd, ph, pw, hb, wb = self.geometry
        blocks = self.buf.reshape(n, -1, hb, wb, LANES)[:, :, ph : ph + h, pw : pw + wd]
        x[...] = blocks.transpose(0, 1, 4, 2, 3).reshape(n, -1, h, wd)[:, :c]
        self.ready = False


class DepthwiseRunner:
    """A depthwise forward with everything that depends only on the shapes worked out once; calling it runs the
    compiled kernel with no further checks (a CPU Net's execution plan keeps one per layer, like conv.ForwardRunner).

    ``runner(x, w, bias, y)``: x C-contiguous float32 of x_shape, w (C, 1, kh, kw) C-contiguous float32, bias (C,)
    float32 (zeros for none), y the C-contiguous float32 output of ``runner.out_shape``, not overlapping x. act: None
    or (lo, hi), the clip after the bias. The thread split follows the thread count when the runner is made. c8: the
    channel-block path at any plane size (the plan's choice for a step whose input comes in its blocks: no fill).
    """

    __slots__ = (
        "args",
        "c8",
        "frozen",
        "geometry",
        "handoff",
        "lo_hi",
        "out_shape",
        "padded_in",
        "plane",
        "tables",
        "workers",
        "ws",
    )

    def __init__(
        self, x_shape, w_shape, stride, pad, act: Act = None, dilation=(1, 1), frozen: bool = False, c8: bool = False
    ) -> None:
        (n, c, h, wd), (sh, sw), (ph, pw), (oh, ow), hu, wq, toff = _plane_geometry(
            x_shape, w_shape, stride, pad, dilation
        )
        self.out_shape = (n, c, oh, ow)
        self.lo_hi = check_act(act)
        self.workers = threads = numba.get_num_threads()
        self.ws = (None, None)
        self.handoff: Handoff | None = None  # set by the plan (see Handoff): the output's layout for the next step
        # frozen: the caller never changes a weight or bias array in place (a folded BatchNorm, Net.freeze), so the tap
        # tables of the channel-block path are made once per (w, bias) pair of arrays: (w, bias, tables)
        self.frozen = frozen
        self.tables: tuple | None = None
        self.padded_in: PaddedInput | None = None  # set by the plan: x handed over in the blocks' layout
        kh, kw = w_shape[2:]
        (dh, dw), npix = _pair(dilation, "dilation"), oh * ow
        self.geometry = (kh, kw, sh, sw, dh, dw)  # kernel, stride and dilation (rows, columns)
        hb, wb = max(hu, h + ph), max((ow - 1) * sw + (kw - 1) * dw + 1, wd + pw)  # the padded block a tap can read
        small = hb * wb <= (C8_MAX_PIXELS if sw == 1 else C8_MAX_PIXELS_STRIDED)
        self.c8 = C8 and (c8 or small or 4 * n * c * h * wd >= C8_ANY_PLANE_X_BYTES)
        if self.c8:  # blocks of LANES channels
            toff = np.array([(i * dh * wb + j * dw) * LANES for i in range(kh) for j in range(kw)], np.int64)
            p = np.minimum(np.arange(-(-npix // 8) * 8), npix - 1)
            xoff = ((p // ow * sh * wb + p % ow * sw) * LANES).astype(np.int64)
            blocks = n * -(-c // LANES)
            per = max(1, min(-(-PLANE_WORK // max(LANES * npix * toff.size, 1)), blocks // (4 * threads)))
            self.plane = hb * wb * LANES
            self.args = (n, c, h, wd, ph, pw, wb, npix, toff, xoff, per)
        else:  # one plane at a time
            planes = n * c
            per = max(1, min(-(-PLANE_WORK // max(npix * toff.size, 1)), planes // (4 * threads)))  # 4 tasks a thread
            self.plane = sw * hu * wq
            self.args = (planes, c, h, wd, ph, pw, sw, hu, wq, npix, toff, _run_table(oh, ow, sh, wq), per)

    def __call__(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray, out: np.ndarray) -> None:
        if out.size == 0:
            return
        size = 2 * self.plane  # two buffers a worker: one filled while the other is read
        (buf,) = _WORKSPACE.get(self.workers * size + 8)
        base, ws = self.ws  # the aligned view of this thread's workspace, kept while the workspace stays the same
        if base is not buf.base:
            ws = buf[(-buf.ctypes.data // 4) % 8 :][: self.workers * size].reshape(self.workers, size)  # 32-byte
            self.ws = (buf.base, ws)  # one tuple: a runner shared by threads reads a matching pair
        xf, wf, yf = x.reshape(-1), w.reshape(-1), out.reshape(-1)
        if not self.c8:
            _DW.parallel(
                _DW.address, self.workers, xf, wf, bias, yf, *self.args, *self.lo_hi, ws, np.zeros(1, np.int64)
            )
            return
        handoff = self.handoff
        pin = self.padded_in
        given = pin is not None and pin.ready
        if given:
            pin.ready = False
        tables = _NO_TABLES
        if self.frozen:
            kept = self.tables
            if kept is None or kept[0] is not w or kept[1] is not bias:
                kept = self.tables = (w, bias, _c8_tables(wf, bias, self.args[1], self.args[8], LANES))
            tables = kept[2]
        counters = image_counters(self.args[0], self.workers, -(-self.args[1] // LANES))
        out8 = int(handoff is not None)
        _C8.parallel(
            _C8.address, self.workers, xf, wf, bias, yf, *self.args, *self.lo_hi, ws, counters, out8,
            *tables, pin.buf if given else _NO_INPUT,
        )  # fmt: skip
        if handoff is not None:
            handoff.interleaved = LANES  # out holds blocks of LANES channels interleaved per pixel this time


def depthwise_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    *,
    stride=(1, 1),
    pad=(0, 0),
    dilation=(1, 1),
    act: Act = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Depthwise convolution forward (Caffe semantics), float32, with the bias and an optional clip fused.

    x: (N, C, H, W); w: (C, 1, kh, kw); b: (C,) or None; stride/pad/dilation: (h, w) pairs or ints; act: None, or
    (lo, hi) for y = min(max(y, lo), hi) (ReLU: (0, inf), ReLU6: (0, 6)). Returns y: (N, C, OH, OW) float32, written
    into `out` when given (C-contiguous float32 of that shape, not overlapping x).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    b = None if b is None else np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    _check_args(x, w, b, "depthwise_forward")
    run = DepthwiseRunner(x.shape, w.shape, stride, pad, act, dilation)
    if out is None:
        out = np.empty(run.out_shape, np.float32)
    else:
        _check_out(out, run.out_shape, "out", "depthwise_forward")
        if np.shares_memory(out, x):
            raise ValueError("depthwise_forward: out shares memory with x; pass a separate out array")
    run(x, w, np.zeros(x.shape[1], np.float32) if b is None else b, out)
    return out


def depthwise_backward(
    dy: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    *,
    stride=(1, 1),
    pad=(0, 0),
    dilation=(1, 1),
    dx: np.ndarray | None = None,
    dw: np.ndarray | None = None,
    db: np.ndarray | None = None,
    need_dx: bool = True,
    need_dw: bool = True,
    need_db: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Depthwise convolution backward (Caffe semantics), float32: gradients of a loss L given dy = dL/dy (of the
    convolution's output before any clip: the caller applies the clip's gradient first).

    dy: (N, C, OH, OW); x: (N, C, H, W), the forward input; w: (C, 1, kh, kw). Returns (dx, dw, db):
      dx: (N, C, H, W), OVERWRITTEN: into `dx` when given, else a new array; None when need_dx is False. dx must not
          share memory with dy.
      dw: (C, 1, kh, kw), ACCUMULATED: dw += dL/dw (a zeroed array is allocated when dw is None); None when need_dw
          is False.
      db: (C,), ACCUMULATED like dw; None when need_db is False.
    Arrays passed in must be C-contiguous float32 of those shapes; passing one whose need_* flag is False is an error.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    _check_args(x, w, None, "depthwise_backward")
    (n, c, h, wd), (sh, sw), (ph, pw), (oh, ow), hu, wq, toff = _plane_geometry(x.shape, w.shape, stride, pad, dilation)
    if dy.shape != (n, c, oh, ow):
        raise ValueError(f"depthwise_backward: expected dy of shape {(n, c, oh, ow)} (N, C, OH, OW), got {dy.shape}")
    for name, arr, need in (("dx", dx, need_dx), ("dw", dw, need_dw), ("db", db, need_db)):
        if arr is not None and not need:
            raise ValueError(f"depthwise_backward: {name} was given but need_{name} is False")
    if need_dx:
        dx = np.empty(x.shape, np.float32) if dx is None else _check_out(dx, x.shape, "dx", "depthwise_backward")
        if np.shares_memory(dx, dy):
            raise ValueError("depthwise_backward: dx shares memory with dy; pass a separate dx array")
    if need_dw:
        dw = np.zeros(w.shape, np.float32) if dw is None else _check_out(dw, w.shape, "dw", "depthwise_backward")
    if need_db:
        db = np.zeros(c, np.float32) if db is None else _check_out(db, (c,), "db", "depthwise_backward")
    if not (need_dx or need_dw or need_db) or x.size == 0:
        if need_dx:
            dx[...] = 0.0
        return dx, dw, db
    workers = numba.get_num_threads()
    size = sw * hu * wq
    (buf,) = _WORKSPACE.get(workers * 2 * size)
    empty = np.empty(0, np.float32)
    _dw_backward(
        x.reshape(-1),
        w.reshape(-1),
        dy.reshape(-1),
        dx.reshape(-1) if need_dx else empty,
        dw.reshape(-1) if need_dw else empty,
        db if need_db else empty,
        n,
        c,
        h,
        wd,
        ph,
        pw,
        sh,
        sw,
        hu,
        wq,
        oh,
        ow,
        toff,
        need_dx,
        need_dw,
        need_db,
        buf.reshape(workers, 2, size),
        workers,
        np.zeros(1, np.int64),
    )
    return dx, dw, db
