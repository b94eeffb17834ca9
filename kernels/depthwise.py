"""Depthwise 2-D convolution (group == C_in == C_out, one filter per channel), Caffe semantics, NCHW float32.

EfficientNet-Lite / MobileNet blocks: y[n, c] = b[c] + w[c, 0] (*) x_pad[n, c] (cross-correlation), then an optional
clip min(max(y, lo), hi) (ReLU: (0, inf); ReLU6: (0, 6)). The im2col + GEMM path of ``kernels.conv`` runs one
1-row GEMM per channel there; these kernels work on one channel plane at a time instead.

Kernels (forward, then backward):

0. ``depthwise_forward_ref`` / ``depthwise_backward_ref`` - plain NumPy in float64: one broadcast multiply-add per
                        kernel tap (i, j) over all channels, forward and its transpose.
1. ``_fill_planes``   - one channel plane copied into the running thread's buffer with its zero padding made explicit
                        and its columns split by phase (column u of phase q = padded column u*sw + q), so every tap of
                        every horizontal stride reads consecutive floats: output pixel (oh, ow), tap (i, j) reads
                        phase (j*dw) % sw, row oh*sh + i*dh, column ow + (j*dw) // sw. Only the rows and columns the
                        taps read are filled (hu x wq per phase, wq rounded up so whole 8-pixel runs stay inside).
2. ``_dw_tile``       - the micro-kernel, in LLVM IR: RUNS runs of 8 output pixels (each inside one output row, the
                        runs anywhere in the plane), all taps of the channel: one broadcast of the tap's weight and
                        RUNS unaligned 8-float loads feed RUNS FMAs, with RUNS <8 x float> accumulators in registers
                        (8 of the 16 ymm: 8 FMAs in flight cover the 4-cycle FMA latency of two pipes); then bias,
                        clip and the store (a partial run at a row's end stored lane by lane). Taps whose weight is
                        exactly 0 are dropped from the channel's tap table first: Caffe's form of TF's asymmetric
                        SAME padding at stride 2, a (k+1)x(k+1) kernel with a zero first row and column, then costs
                        k*k taps, not (k+1)^2 (a zero tap under an inf or NaN input no longer makes a NaN).
3. ``_dw_forward``    - planes (image, channel) in chunks of ``per``, claimed by one worker per thread (``gemm._claim``:
                        dynamic scheduling), each with its own plane buffer.
4. ``_dw_backward``   - channels claimed by workers, every image of a channel in turn: db += sum(dy); dw[c, t] +=
                        sum dy * (the x plane of 1. shifted by tap t), a dot product per output row summed in float64
                        per tap; dx: w * dy scattered into zeroed phase planes (the transpose of 2.), then gathered
                        back into dx without the padding.

Public: ``depthwise_applies(x_shape, w_shape, group, dilation) -> bool``,
``depthwise_forward(x, w, b, *, stride, pad, dilation, act, out) -> y`` (``DepthwiseRunner``: the shape work done
once, for a Net's execution plan) and
``depthwise_backward(dy, x, w, *, stride, pad, dilation, dx, dw, db, need_dx, need_dw, need_db) -> (dx, dw, db)``.
Shapes: x (N, C, H, W), w (C, 1, kh, kw), b (C,), y (N, C, OH, OW) with OH, OW from ``conv.conv2d_output_shape``.

Benchmark (checks against the reference first, then interleaved A/B against ``conv2d_forward`` with group = C,
torch and ONNX Runtime on the EfficientNet-Lite0 depthwise layers): ``python -m benchmarks.bench_depthwise``.
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
from kernels.gemm import Workspace, _accumulators, _as64, _claim, _flat_f32, _splat

RUNS = 8  # 8-pixel runs per _dw_tile: 8 ymm accumulators + 1 broadcast + 1 load of the 16 ymm registers
TILE = 8 * RUNS  # output pixels per tile
PLANE_WORK = 1 << 14  # multiply-adds per claimed task at least (several small planes per task: 7x7 x 25 taps)
assert RUNS * 8 == TILE and RUNS <= 12, "RUNS accumulators + broadcast + load must fit 16 ymm registers"

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
    _flat_f32(dst, src)
    sig = types.void(dst, a_off, b_off, src, s_off, n, split)

    def codegen(context, builder, signature, args):
        d_data = context.make_array(signature.args[0])(context, builder, args[0]).data
        s_data = context.make_array(signature.args[3])(context, builder, args[3]).data
        a0, b0, s0, n64 = (_as64(builder, args[i]) for i in (1, 2, 4, 5))
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
    _flat_f32(buf, tw, y)
    for a in (toff, rt):
        if not (isinstance(a, types.Array) and a.dtype == types.int64 and a.ndim == 1):
            raise errors.TypingError(f"_dw_tile: expected a 1-D int64 array, got {a}")
    sig = types.void(buf, xbase, tw, toff, ntap, y, ybase, rt, r0, bias, lo, hi)

    def codegen(context, builder, signature, args):
        def data(i):  # pointer to the elements of array argument i
            return context.make_array(signature.args[i])(context, builder, args[i]).data

        b_data, tw_data, t_data, y_data, rt_data = (data(i) for i in (0, 2, 3, 5, 7))
        xb, ntap64, yb, r064 = (_as64(builder, args[i]) for i in (1, 4, 6, 8))
        f32, i64 = llvm_ir.FloatType(), llvm_ir.IntType(64)
        vec = llvm_ir.VectorType(f32, 8)
        vptr = vec.as_pointer()

        def entry(v, k):  # rt[3*(r0 + v) + k]
            idx = builder.add(builder.mul(r064, llvm_ir.Constant(i64, 3)), llvm_ir.Constant(i64, 3 * v + k))
            return builder.load(builder.gep(rt_data, [idx]))

        xos = [builder.add(xb, entry(v, 0)) for v in range(RUNS)]
        slots, fma = _accumulators(builder, vec, RUNS)
        with cgutils.for_range(builder, ntap64) as loop:
            t = loop.index
            o = builder.load(builder.gep(t_data, [t]))
            wv = _splat(builder, builder.load(builder.gep(tw_data, [t])), vec)
            for v in range(RUNS):
                xv = builder.load(builder.bitcast(builder.gep(b_data, [builder.add(xos[v], o)]), vptr), align=4)
                builder.store(builder.call(fma, [wv, xv, builder.load(slots[v])]), slots[v])
        bv, lov, hiv = (_splat(builder, a if a.type == f32 else builder.fptrunc(a, f32), vec) for a in args[9:12])
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


@njit(cache=True, parallel=True, boundscheck=False)
def _dw_forward(xf, wf, bias, y, planes, c, h, wd, ph, pw, sw, hu, wq, npix, toff_all, rt, per, lo, hi, ws, workers,
                counter):  # fmt: skip  # pragma: no cover - compiled
    """Every plane (image, channel), `per` planes per claimed task, by `workers` workers (one per thread, ws[t] the
    plane buffer of worker t). xf, wf, y: flat x, w, y; toff_all[t]: offset of tap t = i*kw + j in the phase planes
    (see _fill_planes), relative to the output pixel's run; rt: the run table (_run_table), npix = OH*OW."""
    khw = toff_all.shape[0]
    ntask = (planes + per - 1) // per
    nrun = rt.shape[0] // 3
    psize = ws.shape[1] // 2
    for t in prange(workers):  # one worker per thread claiming tasks (gemm._claim)
        tw = np.empty(khw, np.float32)
        toff = np.empty(khw, np.int64)
        _zero(ws[t], 0, 2 * psize)  # the zero borders of both plane buffers, once (fills copy the image only)
        task = _claim(counter)
        while task < ntask:
            p0, p1 = task * per, min(planes, (task + 1) * per)
            _fill_planes(xf, p0 * h * wd, h, wd, ph, pw, sw, hu, wq, ws[t], False)
            for p in range(p0, p1):
                buf = ws[t][(p - p0) % 2 * psize :]
                if p + 1 < p1:  # the next plane first: a plane read right after its stores stalls store forwarding
                    _fill_planes(
                        xf, (p + 1) * h * wd, h, wd, ph, pw, sw, hu, wq, ws[t][(p + 1 - p0) % 2 * psize :], False
                    )
                ch = p % c
                ntap = _taps(wf, ch * khw, khw, toff_all, tw, toff)
                for r0 in range(0, nrun, RUNS):
                    _dw_tile(buf, 0, tw, toff, ntap, y, p * npix, rt, r0, bias[ch], lo, hi)
            task = _claim(counter)


# --------------------------------------------------------------------------------------------- backward
@njit(cache=True, parallel=True, fastmath=True, boundscheck=False)
def _dw_backward(xf, wf, dyf, dxf, dwf, dbf, n_img, c, h, wd, ph, pw, sh, sw, hu, wq, oh_n, ow_n, toff_all,
                 need_dx, need_dw, need_db, ws, workers, counter):  # fmt: skip  # pragma: no cover - compiled
    """Channels claimed by `workers` workers; per channel, every image: db[c] += sum(dy), dw[c] += the per-tap dot
    products of dy with the x planes (float64 sums per tap), dx = the transpose of the forward (overwritten). ws[t]:
    worker t's buffer for the x planes and the dx planes (2 * sw*hu*wq floats)."""
    khw = toff_all.shape[0]
    npix = oh_n * ow_n
    psize = sw * hu * wq
    for t in prange(workers):
        xb = ws[t][:psize]
        db_ = ws[t][psize:]
        dws = np.empty(khw, np.float64)
        ch = _claim(counter)
        while ch < c:
            for k in range(khw):
                dws[k] = 0.0
            dbs = 0.0
            for n in range(n_img):
                p = n * c + ch
                y0 = p * npix
                if need_db:
                    s = np.float32(0.0)
                    for i in range(npix):
                        s += dyf[y0 + i]
                    dbs += s
                if need_dw:
                    _fill_planes(xf, p * h * wd, h, wd, ph, pw, sw, hu, wq, xb, n == 0)
                    for k in range(khw):
                        acc = 0.0
                        for oh in range(oh_n):
                            x0 = oh * sh * wq + toff_all[k]
                            d0 = y0 + oh * ow_n
                            s = np.float32(0.0)
                            for i in range(ow_n):
                                s += dyf[d0 + i] * xb[x0 + i]
                            acc += s
                        dws[k] += acc
                if need_dx:
                    _scatter_dx(dyf, y0, wf, ch * khw, toff_all, db_, h, wd, ph, pw, sh, sw, hu, wq, oh_n, ow_n)
                    _gather_dx(db_, dxf, p * h * wd, h, wd, ph, pw, sw, hu, wq)
            if need_db:
                dbf[ch] += np.float32(dbs)
            if need_dw:
                for k in range(khw):
                    dwf[ch * khw + k] += np.float32(dws[k])
            ch = _claim(counter)


@njit(cache=True, fastmath=True, boundscheck=False)
def _scatter_dx(dyf, y0, wf, w_off, toff_all, dbuf, h, wd, ph, pw, sh, sw, hu, wq, oh_n, ow_n):  # pragma: no cover
    """dbuf (the phase planes of the padded dx, zeroed first) += w[t] * dy row, at every place tap t read."""
    for i in range(sw * hu * wq):
        dbuf[i] = 0.0
    for oh in range(oh_n):
        d0 = y0 + oh * ow_n
        for k in range(toff_all.shape[0]):
            wk = wf[w_off + k]
            if wk == 0.0:
                continue
            x0 = oh * sh * wq + toff_all[k]
            for i in range(ow_n):
                dbuf[x0 + i] += wk * dyf[d0 + i]


@njit(cache=True, boundscheck=False)
def _gather_dx(dbuf, dxf, x_off, h, wd, ph, pw, sw, hu, wq):  # pragma: no cover - compiled
    """dx plane at dxf[x_off:] = the phase planes dbuf without the padding (zero where no tap reached)."""
    for i in range(h * wd):
        dxf[x_off + i] = 0.0
    for q in range(sw):
        ulo = min(wq, max(0, (pw - q + sw - 1) // sw))
        uhi = min(wq, max(ulo, (wd + pw - q + sw - 1) // sw))
        for xr in range(max(0, min(h, hu - ph))):
            s = (q * hu + xr + ph) * wq
            d = x_off + xr * wd + q - pw
            for u in range(ulo, uhi):
                dxf[d + u * sw] = dbuf[s + u]


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


def _check_act(act: Act) -> tuple[float, float]:
    """(lo, hi) of the clip: (-inf, inf) for None."""
    if act is None:
        return -math.inf, math.inf
    try:
        lo, hi = (float(v) for v in act)
    except (TypeError, ValueError):
        raise ValueError(f"depthwise: expected act as None or a (lo, hi) pair of floats, got {act!r}") from None
    if not lo <= hi:
        raise ValueError(f"depthwise: expected act (lo, hi) with lo <= hi (ReLU: (0, inf), ReLU6: (0, 6)), got {act!r}")
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


class DepthwiseRunner:
    """A depthwise forward with everything that depends only on the shapes worked out once; calling it runs the
    compiled kernel with no further checks (a CPU Net's execution plan keeps one per layer, like conv.ForwardRunner).

    ``runner(x, w, bias, y)``: x C-contiguous float32 of x_shape, w (C, 1, kh, kw) C-contiguous float32, bias (C,)
    float32 (zeros for none), y the C-contiguous float32 output of ``runner.out_shape``, not overlapping x. act: None
    or (lo, hi), the clip after the bias. The thread split follows the thread count when the runner is made.
    """

    __slots__ = ("args", "lo_hi", "out_shape", "plane", "workers")

    def __init__(self, x_shape, w_shape, stride, pad, act: Act = None, dilation=(1, 1)) -> None:
        (n, c, h, wd), (sh, sw), (ph, pw), (oh, ow), hu, wq, toff = _plane_geometry(
            x_shape, w_shape, stride, pad, dilation
        )
        self.out_shape = (n, c, oh, ow)
        self.lo_hi = _check_act(act)
        self.workers = numba.get_num_threads()
        planes = n * c
        work = oh * ow * toff.size
        per = max(1, min(-(-PLANE_WORK // max(work, 1)), planes // (4 * self.workers)))  # >= 4 tasks per thread
        self.plane = sw * hu * wq
        self.args = (planes, c, h, wd, ph, pw, sw, hu, wq, oh * ow, toff, _run_table(oh, ow, sh, wq), per)

    def __call__(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray, out: np.ndarray) -> None:
        if out.size == 0:
            return
        (buf,) = _WORKSPACE.get(self.workers * 2 * self.plane)
        _dw_forward(
            x.reshape(-1),
            w.reshape(-1),
            bias,
            out.reshape(-1),
            *self.args,
            *self.lo_hi,
            buf.reshape(self.workers, 2 * self.plane),
            self.workers,
            np.zeros(1, np.int64),
        )


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
    size = 2 * sw * hu * wq
    (buf,) = _WORKSPACE.get(workers * size)
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
        buf.reshape(workers, size),
        workers,
        np.zeros(1, np.int64),
    )
    return dx, dw, db
