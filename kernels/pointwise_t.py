"""1x1 convolution on small planes with the output channels in the vector lanes (NCHW float32, AVX-512).

``kernels.pointwise`` puts 16 pixels of one output channel in a vector and broadcasts the weights. On 7 x 7 and
14 x 14 planes its 32-pixel tiles leave edge pixels to slower dot-product tiles (196 = 6 x 32 + 4, 49 = 32 + 16 + 1)
and read rows of x that start off the cache lines: 120-140 GFLOP/s a core there on an AVX-512 Xeon, against 148-154
on larger planes. Here the roles are swapped. A tile is 14 pixels (or 7: a 7 x 7 plane is 7 tiles of 7, paired into
14 where a task has two left, so no plane here has an edge) x 32 output channels (16 for a last panel of 16): 28 zmm
accumulators, and per input channel k one broadcast of x[k, p] per pixel (14 consecutive floats of row k: one or two
lines) and two vector loads of the weights, packed once as W^T panels (K, 32). The epilogue adds the bias and clips
(16 channels of a pixel at a time), transposes 8 x 8 blocks in registers (``gemm.transpose8``) and stores each
output channel's 7 pixels with a masked store; with a residual, z = y + res the same way (relu: max(y + res, 0),
the compare and select of the clip: ResNet's ReLU after its residual sum), and y not stored at all where no step
reads it (``sum_only``, set by the plan: ``net.plan_steps.sums_only``). A task's first tile
prefetches the next panel's weights into L2 (in a net they come from L3: 1.03x in-process on EfficientNet-Lite0; the
output lines prefetched for writing as well: 1.00x, left out); its other tiles a share of the next step's weights,
where the plan names them (``PointwiseTRunner.ahead``, ``net.plan_steps.prefetch_ahead``: the next fused expand's or
1x1's packed panels, an fc's W), so that step does not start on weights from memory.

x is read in planes, or, after a depthwise step that hands its output over (``depthwise.Handoff``, set by the plan:
``net.plan_steps.hand_over_depthwise``), in blocks of ``depthwise.LANES`` (16) channels interleaved per pixel, where
the depthwise tile stored its accumulators without transposing them back to planes; a broadcast of x[k, p] then
reads one line per 16 input channels and pixel. The same values, the same bits; EfficientNet-Lite0 in-process A/B
with the handoff off / on (blocks of 8 then): 1 thread batch 1 1.00-1.02x, 2 threads batch 1 1.00-1.04x, batch 32
1.01-1.03x.

A panel whose last 16 channels hold 8 real ones (M = 24, 40: EfficientNet-Lite0's projections on 56 x 56 and 28 x 28
planes) runs on 14-pixel tiles whose last vector has 8 lanes (``HALF_TILES``): where a 512-bit FMA takes both of the
core's 256-bit FMA units (AMD Zen 4) a quarter (M = 24) or a sixth (M = 40) fewer FMA cycles; the same FMA chain per
output, the same bits. Alone, hot, batch 1, 1 thread, Zen 4 EPYC: blocks 1-4's projections 185 / 284 / 102 / 172 ->
154 / 236 / 91 / 155 us; the whole forward, in-process A/B: 2 threads 1.016 / 1.010x (min / median), 1 thread 1.007 /
1.015x; the kernel's compile 1.50 -> 1.77 s.

With x in blocks the kernel also runs the projections on large planes at batch 1 (``applies(..., xblk=True)``: any
plane size, K a multiple of 16, any M: a last panel of M % 16 channels gets zero weights and bias, and its padding
channels are not stored), set by the plan (``net.plan_steps.PROJECT_BLOCKS``), so the depthwise before them hands its
blocks on too. The same bits as ``pointwise`` there (no edge pixels). EfficientNet-Lite0's projections of blocks 1-4
(56 x 56 and 28 x 28, M = 24 and 40), with the 56 x 56 depthwise layer on its channel-block path: 2 threads batch 1,
processes alternated, ORT/crema minimum 0.79-0.81 -> 0.83-0.84.

``ConvTRunner`` runs the same tiles on a convolution with pad 0 (EfficientNet-Lite0's stem on its zero-bordered
image, ``net.plan_steps.zero_border_step``): per tap (c, i, j) the tile broadcasts its pixels from the image itself
(sw apart), no im2col; the same bits as ``pointwise.Im2colRunner``. The plan uses it only where the stem hands its
output to the depthwise step after in that step's blocks (below): in planes its transposing epilogue made it slower
than ``Im2colRunner`` (355-375 vs 260 us at 1 thread), in blocks the first depthwise layer runs on its channel-block
path without a fill and hands its blocks on (EfficientNet-Lite0 in-process A/B, ``net.plan_steps.STEM_BLOCKS``, same
bits: 2 threads batch 1 1.045 / 1.035x min / median, 1 thread 1.034 / 1.032x, batch 4 1.013 / 1.024x). At stride 2
the tile's 14 pixel offsets are constants (``_ctile2w_s2``; at stride 4 ``_ctile2w_s4``, CaffeNet's conv1: 1.44 ->
0.96 ms at batch 1, 2 threads): with the stride a run-time value they were 14 products held in general registers,
more than x86-64 has beside the loop's own, and the tap loop spilled them; the stem alone,
hot, batch 1, on a Zen 4 EPYC: 1 thread 440 -> 241 us, 2 threads 245-278 -> 138-140 us (same bits; the whole forward,
processes alternated, 1 thread min 9.17-9.32 -> 8.99-9.12 ms).

y goes in planes, or, before a depthwise step on its channel-block path (``depthwise.PaddedInput``, set by the plan:
``net.plan_steps.hand_over_expand``), straight into that step's padded blocks of 16 channels: pixel p's channels
16b..16b+15 as one aligned store at block b's row p // W + ph, column p % W + pw, no transposes; the depthwise reads
the blocks in place (no fill, none of its transposes from planes). There the kernel runs any plane size (the expands
before the depthwise layers, K >= MIN_K_BLOCKS: without the transposing epilogue a tile of K = 16 is still 80%
FMAs). The same bits as the planes path. EfficientNet-Lite0 in-process A/B, two nets with the handoff off / on
(blocks of 8 channels at first): 1 thread batch 1 1.04-1.06x, 2 threads 1.03x (K = 16 included: 1.01x more than
from K = 24); blocks of 16 against 8 (the depthwise on zmm tiles, handing blocks of 16 on): 1.056x and 1.07x more.

Tasks are (image, panel, pixel chunk), image-major, claimed from per-CPU queues (``gemm.claim_near``): images at
batch 2+ a thread, so each core keeps its images from layer to layer (without the queues EfficientNet-Lite0 at batch
32 on 2 threads was 0.84x ORT, with them 0.92-0.93x); at batch 1 the tasks go chunk-major, so a queue is a run of
pixel chunks over all panels and a core writes the same pixels in every such layer, which the next one reads
(in-process A/B against panel runs, 2 threads: 1.01-1.025x).

Alone, 1 thread, hot, against ``pointwise.PointwiseRunner``: K = 480, M = 80, 14 x 14 108 -> 93 us (139 -> 161
GFLOP/s); K = 672, M = 112 1.17x; K = 1152, M = 192, 7 x 7 1.23x; the head (K = 320, M = 1280, 7 x 7) 1.08x; batch 32
(x from memory) 0.99x. In EfficientNet-Lite0 (the projections from 14 x 14 on and the head), old/new processes
alternated, ORT/crema medians: 1 thread batch 1 0.811 -> 0.848, batch 32 0.898 -> 0.932; 2 threads batch 32
0.836-0.863 -> 0.923-0.932; 2 threads batch 1 unchanged (in-process A/B 1.002-1.009x). With the expands at K >= 112
too (MIN_K): 1 thread batch 1 0.827-0.837 -> 0.838, batch 32 0.874 -> 0.905; 2 threads batch 32 0.882 -> 0.915, batch 1
0.672 / 0.582 -> 0.703 / 0.696 (a noisy hour).

Each output is one FMA chain over k in order from 0, then + bias, then the clip: the same bits as ``pointwise``'s
main tiles (tested), and its residual sum (one float32 addition). ``pointwise``'s dot tiles (its edge pixels) sum in
partial sums, so those pixels may differ in the last bits.

The weights are packed on the first call with a given weight array and kept: the plan uses this kernel only for
weights that do not change under it (``ConvolutionLayer.frozen``: a BatchNorm folded in, ``folded`` made once, or a
frozen net's, ``Net.freeze``; ``Net.refold`` makes new plans, whose runners pack again).

Public: ``applies(x_shape, w_shape, blocks=False, xblk=False) -> bool``, ``pack(w)`` and ``PointwiseTRunner(x_shape,
w_shape, act, blocks=None, xblk=False)``, called as ``runner(x, w, bias, y[, res, z, relu])`` like
``pointwise.PointwiseRunner`` (with blocks, a ``depthwise.PaddedInput``: y is not written, no residual);
``conv_applies(x_shape, w_shape, stride) -> bool`` and ``ConvTRunner(x_shape, w_shape, stride, act, blocks=None)``,
called as ``runner(x, w, bias, y)`` (y not written with blocks).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels.depthwise import LANES, PaddedInput, check_act
from kernels.gemm import accumulators, as64, claim_near, flat_f32, image_counters, queue_sizes, splat, transpose8
from kernels.pointwise import ADD_RELU, SUM_ONLY, add_mode
from kernels.tasks import Task
from kernels.tiling import VW

NP = 7  # pixels a tile (7 x 7 and 14 x 14 planes: whole tiles)
MIN_K = 112  # input channels at least: the transposing epilogue costs a tile ~130 cycles (expands alone, 1 / 2
# threads: K = 192, 7 x 7 1.13 / 1.23x; K = 112, 14 x 14 1.04 / 1.05x; K = 80 0.97 / 1.03x, left to pointwise)
MAX_P = 196  # pixels an image at most (larger planes: pointwise's tiles are at their best there, for K < MIN_K_LARGE)
# input channels at least for planes larger than MAX_P: there a tile's 14 pixels x 32 channels read one line of x per
# k and 16 output channels, where pointwise's 12 x 32 tile reads two and broadcasts 12 weights; alone, hot, 2 / 1
# threads, Zen 4 EPYC, GFLOP/s pointwise -> pointwise_t: 256 -> 64 on 56 x 56 192 -> 218 / 100 -> 109, 512 -> 128
# on 28 x 28 195 -> 225 / 95 -> 111, 256 -> 128 198 -> 219 / 109 -> 111, 256 -> 512 216 -> 220 / 111 -> 110;
# with fewer input channels it loses (64 -> 256 with a residual sum 163 -> 146, 192 -> 96 213 -> 165)
MIN_K_LARGE = 256
MIN_K_BLOCKS = 16  # input channels at least where the output goes to a depthwise in its blocks (no transposes)
CHUNK = 7  # pixel tiles a task at most
W_PREFETCH = 1  # a task's first tile prefetches the next panel's weights into L2
HALF_TILES = True  # a panel with 8 real channels in its last 16 on tiles with an 8-lane vector there (M = 24, 40)
P_PREFETCH = 4  # x in planes: a tile prefetches row k + P_PREFETCH (its first and last pixel) at row k (0: none)
X_PREFETCH = 2  # x in blocks: a tile prefetches the lines of the block this many blocks ahead (0: none)
POOL = 8  # or'ed into the tiles' `add`: each pixel's channels summed in pixel order into z (a global average
# pooling's output, (N, M) floats), divided by the plane's pixels at its last tile (PointwiseTRunner.pool_into)
ENABLED = VW == 16  # AVX-512 only (the tile is written for 16-lane vectors)
assert not ENABLED or LANES == 16, "the depthwise's blocks are 16 channels where this kernel runs"


def applies(x_shape, w_shape, blocks: bool = False, xblk: bool = False) -> bool:
    """A 1x1 convolution this kernel runs: AVX-512, K >= MIN_K, M a multiple of 16, H*W a multiple of NP up to MAX_P
    (K >= MIN_K_LARGE on larger planes);
    blocks (the output written in a depthwise's blocks, ``depthwise.PaddedInput``): K >= MIN_K_BLOCKS, any H*W; xblk
    (x handed over in blocks by a depthwise step, ``depthwise.Handoff``, the output in planes): K a multiple of 16, any
    H*W and M (a last panel padded with zero weights, its padding channels not stored)."""
    if not ENABLED or len(x_shape) != 4 or len(w_shape) != 4 or tuple(w_shape[2:]) != (1, 1):
        return False
    n, k, h, wd = (int(v) for v in x_shape)
    m, p = int(w_shape[0]), h * wd
    if blocks:
        fits = k >= MIN_K_BLOCKS and m % 16 == 0
    elif xblk:
        fits = k % LANES == 0
    else:
        fits = k >= (MIN_K if p <= MAX_P else MIN_K_LARGE) and m % 16 == 0
    return fits and n > 0 and int(w_shape[1]) == k and m > 0 and p > 0 and p % NP == 0


def _tile_codegen(nv: int, npx: int, conv: bool = False, sx_const: int = 0, half: bool = False):
    def codegen(context, builder, signature, args):
        def data(i):
            return context.make_array(signature.args[i])(context, builder, args[i]).data

        xd, wd, yd, bd, rd, zd = (data(i) for i in range(6))
        k, p, xo, wo, yo, o0 = (as64(builder, a) for a in args[6:12])
        add = args[14]  # 0: no residual, 1: z = y + res, 2: z = max(y + res, 0) (ADD_RELU); or POOL: z the pooled
        # sums (planes, full-width tiles); | SUM_ONLY: no y
        i64, i32, f32 = ir.IntType(64), ir.IntType(32), ir.FloatType()
        vec = ir.VectorType(f32, 16)
        v8 = ir.VectorType(f32, 8)
        vptr, v8ptr = vec.as_pointer(), v8.as_pointer()

        def c(v):
            return ir.Constant(i64, v)

        # slot j*nv + v: pixel j, channels o0 + 16v ..; with half, the last vector (v = nv - 1) 8 lanes: a panel's
        # 8 real channels of 16 (HALF_TILES)
        slots, fma = accumulators(builder, vec, npx * nv)
        if half:
            slots8, fma8 = accumulators(builder, v8, npx)
            for j in range(npx):
                slots[j * nv + nv - 1] = slots8[j]

        def lanes_of(v):  # the vector type of accumulator column v
            return v8 if half and v == nv - 1 else vec

        i8p = ir.IntType(8).as_pointer()
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
        )

        def fetch(base, at, locality: int) -> None:  # a read prefetch of base[at]'s line (3: into L1, 2: into L2)
            ptr = builder.bitcast(builder.gep(base, [at]), i8p)
            builder.call(prefetch, [ptr, ir.Constant(i32, 0), ir.Constant(i32, locality), ir.Constant(i32, 1)])

        pw = as64(builder, args[15])
        xpf = as64(builder, args[16])  # x in blocks: 1 + blocks ahead to prefetch; in planes: -(rows ahead)

        if conv:  # tap k's offset in the padded image (toff[k]) and the pixels' stride in it (ConvTRunner)
            toff_d, sx = data(21), as64(builder, args[22])
            joff = [c(j * sx_const) if sx_const else builder.mul(c(j), sx) for j in range(npx)]

        def k_loop(lanes: int) -> None:
            # x[k, p0 + j] at xo + k*p + j (planes, lanes 0), or at xo + (k // L)*Lp + k % L + Lj (L = lanes = 16
            # channels interleaved per pixel, a depthwise Handoff: the L channels of a pixel on one line); a
            # convolution's tap k = (c, i, j) at xo + toff[k] + j*sx (conv: the padded image itself, no im2col)
            with cgutils.for_range(builder, k) as loop:
                kk = loop.index
                if conv:
                    xb = builder.add(xo, builder.load(builder.gep(toff_d, [kk])))
                elif lanes:
                    blk = builder.lshr(kk, c(lanes.bit_length() - 1))
                    xb = builder.add(xo, builder.mul(blk, builder.mul(p, c(lanes))))
                    xb = builder.add(xb, builder.and_(kk, c(lanes - 1)))
                    # at a block's first k, the tile's pixels' lines xpf - 1 blocks ahead (X_PREFETCH)
                    ahead = builder.sub(xpf, c(1))
                    first = builder.icmp_unsigned("==", builder.and_(kk, c(lanes - 1)), c(0))
                    with builder.if_then(builder.and_(first, builder.icmp_signed(">", ahead, c(0)))):
                        base = builder.add(xb, builder.mul(ahead, builder.mul(p, c(lanes))))
                        for j in range(npx):
                            fetch(xd, builder.add(base, c(lanes * j)), 3)
                else:
                    xb = builder.add(xo, builder.mul(kk, p))
                    ahead = builder.neg(xpf)  # row k + ahead's first and last pixel of the tile (P_PREFETCH)
                    with builder.if_then(builder.icmp_signed(">", ahead, c(0))):
                        base = builder.add(xb, builder.mul(ahead, p))
                        for j in (0, npx - 1):
                            fetch(xd, builder.add(base, c(j)), 3)
                wb = builder.add(wo, builder.mul(kk, c(16 * nv)))
                with builder.if_then(builder.icmp_unsigned("!=", pw, c(0))):  # the next panel's row k, into L2
                    for line in range(nv):
                        fetch(wd, builder.add(pw, builder.add(builder.mul(kk, c(32)), c(16 * line))), 2)
                wv = [
                    builder.load(
                        builder.bitcast(builder.gep(wd, [builder.add(wb, c(16 * v))]), lanes_of(v).as_pointer()),
                        align=4,
                    )
                    for v in range(nv)
                ]
                for j in range(npx):
                    xj = joff[j] if conv else c(lanes * j if lanes else j)
                    xs = builder.load(builder.gep(xd, [builder.add(xb, xj)]))
                    xv = splat(builder, xs, vec)
                    xv8 = splat(builder, xs, v8) if half else None
                    for v in range(nv):
                        s = slots[j * nv + v]
                        if half and v == nv - 1:
                            builder.store(builder.call(fma8, [xv8, wv[v], builder.load(s)]), s)
                        else:
                            builder.store(builder.call(fma, [xv, wv[v], builder.load(s)]), s)

        if conv:
            k_loop(0)
        else:
            with builder.if_else(builder.icmp_signed(">", xpf, c(0))) as (blocks, planes):
                with blocks:
                    k_loop(16)
                with planes:
                    k_loop(0)
        lo, hi = (builder.fptrunc(a, f32) if a.type != f32 else a for a in args[12:14])
        mask = ir.Constant(ir.VectorType(ir.IntType(1), 8), [1] * NP + [0] * (8 - NP))
        mstore = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [v8, v8ptr, i32, mask.type]), "llvm.masked.store.v8f32.p0"
        )
        mload = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v8, [v8ptr, i32, mask.type, v8]), "llvm.masked.load.v8f32.p0"
        )
        zero8 = ir.Constant(v8, [0.0] * 8)
        # bias and clip on the accumulators: a pixel's 16 channels at once (the same operations on each value as
        # after the transposes)
        bounds = {t.count: (splat(builder, lo, t), splat(builder, hi, t)) for t in (vec, v8)}
        done = []
        for j in range(npx):
            for v in range(nv):
                t = lanes_of(v)
                lo_v, hi_v = bounds[t.count]
                bptr = builder.bitcast(builder.gep(bd, [builder.add(o0, c(16 * v))]), t.as_pointer())
                r = builder.fadd(builder.load(slots[j * nv + v]), builder.load(bptr, align=4))
                r = builder.select(builder.fcmp_ordered("<", r, lo_v), lo_v, r)
                done.append(builder.select(builder.fcmp_ordered(">", r, hi_v), hi_v, r))

        def half_of(val, half):  # lanes 8 half .. 8 half + 7 of a 16-lane vector
            idx = ir.Constant(ir.VectorType(i32, 8), list(range(8 * half, 8 * half + 8)))
            return builder.shuffle_vector(val, ir.Constant(vec, ir.Undefined), idx)

        bplane = as64(builder, args[18])
        m_real = as64(builder, args[20])  # output channels (a last panel of M % 16 != 0 is padded with zeros)

        def blocks() -> None:  # a depthwise's blocks of 16 channels (depthwise.PaddedInput): channels 16b.. of pixel j
            # at y[yo + b*bplane + po[pb + j]], one aligned store, no transpose
            po_d, pb = data(17), as64(builder, args[19])
            b0 = builder.lshr(o0, c(4))
            for j in range(npx):
                pj = builder.load(builder.gep(po_d, [builder.add(pb, c(j))]))
                for v in range(nv):
                    at = builder.add(builder.mul(builder.add(b0, c(v)), bplane), pj)
                    ptr = builder.bitcast(builder.gep(yd, [builder.add(yo, at)]), vptr)
                    val = done[j * nv + v]
                    if val.type == v8:  # a half vector: the block's padding channels zero (applies() gives blocks
                        # out whole panels of 16 only, so no half tile writes blocks today)
                        val = builder.shuffle_vector(val, zero8, ir.Constant(ir.VectorType(i32, 16), list(range(16))))
                    builder.store(val, ptr, align=64)

        def planes() -> None:  # 7 pixels x 8 channels at a time: one 8 x 8 transpose (8th row zero)
            none = ir.Constant(mask.type, [0] * 8)
            only, zero_add = ir.Constant(add.type, SUM_ONLY), ir.Constant(add.type, 0)
            add_kind = builder.and_(add, ir.Constant(add.type, SUM_ONLY - 1))  # 0, ADD or ADD_RELU (POOL: 0)
            halves = [(v, g, hv) for v in range(nv) for g in range(npx // NP) for hv in range(2)]
            for v, g, hv in [(v, g, hv) for v, g, hv in halves if not (lanes_of(v) == v8 and hv == 1)]:
                rows = [
                    done[j * nv + v] if lanes_of(v) == v8 else half_of(done[j * nv + v], hv)
                    for j in range(g * NP, g * NP + NP)
                ]
                rows.append(zero8)
                cols = transpose8(builder, rows)  # cols[l]: channel o0 + 16v + 8hv + l, pixels 0..6
                for lane, r in enumerate(cols):
                    oc = builder.add(o0, c(16 * v + 8 * hv + lane))
                    off = builder.add(builder.add(yo, builder.mul(oc, p)), c(g * NP))
                    # a last panel's padding channels (oc >= M) are not stored: an all-false mask
                    lanes = builder.select(builder.icmp_signed("<", oc, m_real), mask, none)
                    yptr = builder.bitcast(builder.gep(yd, [off]), v8ptr)
                    with builder.if_then(builder.icmp_signed("==", builder.and_(add, only), zero_add)):
                        builder.call(mstore, [r, yptr, ir.Constant(i32, 4), lanes])
                    with builder.if_then(builder.icmp_signed("!=", add_kind, zero_add)):
                        rptr = builder.bitcast(builder.gep(rd, [off]), v8ptr)
                        rv = builder.call(mload, [rptr, ir.Constant(i32, 4), lanes, zero8])
                        zv = builder.fadd(r, rv)
                        relu = builder.icmp_signed("==", add_kind, ir.Constant(add.type, ADD_RELU))
                        # the fused ReLU's compare and select (a NaN stays NaN), as the clip above
                        clipped = builder.select(builder.fcmp_ordered("<", zv, zero8), zero8, zv)
                        zptr = builder.bitcast(builder.gep(zd, [off]), v8ptr)
                        builder.call(mstore, [builder.select(relu, clipped, zv), zptr, ir.Constant(i32, 4), lanes])

        def pooled() -> None:  # POOL (planes, whole panels, the task's tiles in pixel order from pixel 0): z[img *
            # M + o] = ((0 + y[o, 0]) + y[o, 1]) + ..., the global average pooling's sum in its order, / P at the end
            p0 = as64(builder, args[19])
            zo = builder.udiv(builder.sub(yo, p0), p)  # yo = img * M * P + p0: img * M
            first = builder.icmp_unsigned("==", p0, c(0))
            last = builder.icmp_unsigned("==", builder.add(p0, c(npx)), p)
            area = splat(builder, builder.uitofp(p, f32), vec)
            zero = ir.Constant(vec, [0.0] * 16)
            for v in range(nv):
                zptr = builder.bitcast(builder.gep(zd, [builder.add(zo, builder.add(o0, c(16 * v)))]), vptr)
                acc = builder.select(first, zero, builder.load(zptr, align=4))
                for j in range(npx):
                    acc = builder.fadd(acc, done[j * nv + v])
                builder.store(builder.select(last, builder.fdiv(acc, area), acc), zptr, align=4)

        if not half:
            pool_bit = builder.and_(add, ir.Constant(add.type, POOL))
            with builder.if_then(builder.icmp_unsigned("!=", pool_bit, ir.Constant(add.type, 0))):
                pooled()
        # y in a depthwise's blocks, or in planes (PointwiseTRunner; ConvTRunner with or without blocks)
        with builder.if_else(builder.icmp_unsigned("!=", bplane, c(0))) as (blocks_out, planes_out):
            with blocks_out:
                blocks()
            with planes_out:
                planes()
        return context.get_dummy_value()

    return codegen


def _make_tile(nv: int, npx: int, half: bool = False):
    @intrinsic
    def tile(typingctx, x, wt, y, bias, res, z, k, p, xo, wo, yo, o0, lo, hi, add, pw, xblk, po, bplane, pb, m):
        flat_f32(x, wt, y, bias, res, z)
        sig = types.void(x, wt, y, bias, res, z, k, p, xo, wo, yo, o0, lo, hi, add, pw, xblk, po, bplane, pb, m)
        return sig, _tile_codegen(nv, npx, half=half)

    return tile


# y[yo + (o0 + o)*p + j] for o < 16 nv, j < npx (xo, yo already at the tile's first pixel): clip(bias + sum_k
# x[xo + k*p + j] * wt[wo + 16 nv k + o]) (xblk > 0: x in blocks of 16 channels, see k_loop; xblk also gives x's
# prefetch distance, see _pt_worker); with add, also z = y + res at the same places (add & POOL: each channel's
# pixels added to z[img * M + o] instead, / P at the plane's last tile: PointwiseTRunner.pool_into); pw != 0: the tile
# also prefetches the weights from wt[pw] on (the next panel's) into L2; bplane != 0: y in a depthwise's blocks of 16
# channels instead (depthwise.PaddedInput: pixel j's channels 16b.. at y[yo + b*bplane + po[pb + j]])
_ptile2, _ptile1 = _make_tile(2, NP), _make_tile(1, NP)  # 7 pixels
_ptile2w, _ptile1w = _make_tile(2, 2 * NP), _make_tile(1, 2 * NP)  # 14 pixels: row k's line feeds 28 FMAs
# 14 pixels x 24 or 8 channels (a 16-lane vector and an 8-lane one, or one of 8): a panel with 8 real channels in its
# last 16 (M = 24, 40: EfficientNet-Lite0's projections on 56 x 56 and 28 x 28 planes; HALF_TILES)
_ptile15w, _ptile05w = _make_tile(2, 2 * NP, half=True), _make_tile(1, 2 * NP, half=True)


def _make_ctile(sx_const: int):
    @intrinsic
    def ctile(
        typingctx, x, wt, y, bias, res, z, k, p, xo, wo, yo, o0, lo, hi, add, pw, xblk, po, bplane, pb, m, toff, sx
    ):
        flat_f32(x, wt, y, bias, res, z)
        sig = types.void(
            x, wt, y, bias, res, z, k, p, xo, wo, yo, o0, lo, hi, add, pw, xblk, po, bplane, pb, m, toff, sx
        )
        return sig, _tile_codegen(2, 2 * NP, conv=True, sx_const=sx_const)

    return ctile


# The 14-pixel, 32-channel tile on a convolution's taps: x[xo + toff[k] + j*sx] for tap k and output pixel j, y in a
# depthwise's blocks or in planes (ConvTRunner; one tile shape); the arguments as the 1x1 tiles'
# (res, z, add and xblk unread), then toff and sx. _ctile2w_s2 / _s4: sx is 2 / 4 and the pixels' offsets constants.
_ctile2w, _ctile2w_s2, _ctile2w_s4 = _make_ctile(0), _make_ctile(2), _make_ctile(4)


@numba.njit(cache=True, boundscheck=False, inline="always")
def _task_queues(counter, n, npan, nch):  # pragma: no cover - compiled
    """(items, granule, queue sizes) of a worker's tasks (gemm.image_counters, gemm.claim_near): with 2+ images a
    thread, queue u the images u*N/Q..; with one image, its tasks in Q runs, chunk-major (each core the same pixels in
    every layer); image-major tasks."""
    per_image = npan * nch
    items, granule = (n, per_image) if n > 1 else (per_image, 1)
    return items, granule, queue_sizes(counter, items, granule, 1)


@numba.njit(cache=True, boundscheck=False, inline="always")
def _next_task(counter, sizes, items, granule, n, npan, nch):  # pragma: no cover - compiled
    """(image, panel, pixel chunk) of the next task claimed (gemm.claim_near), or (-1, 0, 0) when none is left; with
    one image chunk-major: a queue is a run of pixel chunks over all panels (see the module docstring)."""
    u, i = claim_near(counter, sizes)
    if u < 0:
        return -1, 0, 0
    task = u * items // sizes.shape[0] * granule + i
    if n == 1:
        return task // (nch * npan), task % npan, (task // npan) % nch
    return task // (nch * npan), (task // nch) % npan, task % nch


@numba.njit(cache=True, boundscheck=False, inline="always")
def ahead_at(aoff, alen, share, shares, k):  # pragma: no cover - compiled
    """Where tile call `share` of `shares` prefetches the next step's weights (aoff, alen: aim_ahead's plan entries):
    an even spread over them, a region of 32 * k floats each."""
    return aoff + max(0, min(share * alen // shares, alen - 32 * k))


def _pt_worker(t, x, wt, bias, y, res, z, plan, lo, hi, add, counter, po):  # pragma: no cover - compiled
    """Worker t: claims (image, panel, pixel chunk) tasks (gemm.claim_near). plan: n, K, M (whole panels of 16), P,
    panels, chunks, W_PREFETCH, x's layout and prefetch distance (> 0: 16-channel blocks interleaved per pixel, a
    depthwise Handoff, the tiles prefetching plan[7] - 1 blocks ahead; <= 0: planes, -plan[7] rows ahead), the
    block size of a depthwise's padded blocks y goes to (depthwise.PaddedInput, po its pixel offsets; 0: y in planes),
    the real output channels. (A convolution's tiles: _ct_worker.)"""
    n, k, m, p, npan, nch = plan[0], plan[1], plan[2], plan[3], plan[4], plan[5]
    xblk, bplane, mr = plan[7], plan[8], plan[9]  # mr: the real output channels (m: whole panels of 16)
    half_tiles = plan[14] != 0  # HALF_TILES
    ntiles = p // NP
    # the next step's weights (PointwiseTRunner.ahead): plan[15] their offset from wt's first float, plan[16] floats
    # (0: none); the tile calls after a task's first spread over them, each a region of 32 * k floats
    aoff, alen = plan[15], plan[16]
    calls = (-(-ntiles // nch) + 1) // 2 - 1  # tile calls a task makes after its first, at most
    spread = n * npan * nch * calls
    items, granule, sizes = _task_queues(counter, n, npan, nch)
    while True:
        img, pan, c = _next_task(counter, sizes, items, granule, n, npan, nch)
        if img < 0:
            break
        o0, wo = pan * 32, pan * 32 * k
        wide = o0 + 32 <= m
        t0, t1 = c * ntiles // nch, (c + 1) * ntiles // nch
        tt = t0
        while tt < t1:
            p0 = tt * NP
            yo = img * (m // 16) * bplane if bplane else img * mr * p + p0
            # the first tile of a task prefetches the next panel's weights (a line per k and 16 channels), the
            # others their share of the next step's, in task order (a core's tasks: a run of it)
            pw = 0
            if tt == t0:
                if plan[6] > 0 and pan + 1 < npan:
                    pw = (pan + 1) * 32 * k
            elif alen > 0 and spread > 0:
                r = ((img * npan + pan) * nch + c) * calls + (tt - t0) // 2 - 1
                pw = ahead_at(aoff, alen, r, spread, k)
            xo = img * k * p + p0 * (16 if xblk > 0 else 1)
            two = tt + 1 < t1  # two 7-pixel tiles as one of 14
            if two and half_tiles and (mr - o0 == 24 or mr - o0 == 8):  # 8 real channels in the last 16
                if wide:
                    _ptile15w(x, wt, y, bias, res, z, k, p, xo, wo, yo, o0, lo, hi, add, pw, xblk, po, bplane, p0, mr)
                else:
                    _ptile05w(x, wt, y, bias, res, z, k, p, xo, wo, yo, o0, lo, hi, add, pw, xblk, po, bplane, p0, mr)
            elif two and wide:
                _ptile2w(x, wt, y, bias, res, z, k, p, xo, wo, yo, o0, lo, hi, add, pw, xblk, po, bplane, p0, mr)
            elif two:
                _ptile1w(x, wt, y, bias, res, z, k, p, xo, wo, yo, o0, lo, hi, add, pw, xblk, po, bplane, p0, mr)
            elif wide:
                _ptile2(x, wt, y, bias, res, z, k, p, xo, wo, yo, o0, lo, hi, add, pw, xblk, po, bplane, p0, mr)
            else:
                _ptile1(x, wt, y, bias, res, z, k, p, xo, wo, yo, o0, lo, hi, add, pw, xblk, po, bplane, p0, mr)
            tt += 2 if two else 1


def _ct_worker(t, x, wt, bias, y, plan, lo, hi, counter, po, toff):  # pragma: no cover - compiled
    """Worker t of ConvTRunner: claims (image, panel, chunk of output rows) tasks as _pt_worker (plan the same, less
    x's layout, then OW, the input floats between output rows (sh*WP), sw and the input image's floats (C*HP*WP)); tap
    k at toff[k] in the (padded) image. Its own task (compiled only for nets with such a convolution), so the 1x1
    tiles' task does not carry the three convolution tiles (0.3-0.4 s of its compile)."""
    n, k, m, p, npan, nch = plan[0], plan[1], plan[2], plan[3], plan[4], plan[5]
    bplane, mr = plan[8], plan[9]
    ow, rowstep, sx, img_in = plan[10], plan[11], plan[12], plan[13]
    items, granule, sizes = _task_queues(counter, n, npan, nch)
    while True:
        img, pan, c = _next_task(counter, sizes, items, granule, n, npan, nch)
        if img < 0:
            break
        o0, wo = pan * 32, pan * 32 * k
        # the chunk's output rows, each ceil(OW / 14) tiles of 14 pixels (conv_applies), the last one ending at the
        # row's end (it may recompute pixels of the one before: the same values)
        per_row = -(-ow // (2 * NP))
        rows = p // ow
        first = c * rows // nch * per_row
        for u in range(first, (c + 1) * rows // nch * per_row):
            oh = u // per_row
            col = min((u - oh * per_row) * 2 * NP, ow - 2 * NP)
            p0 = oh * ow + col
            yo = img * (m // 16) * bplane if bplane else img * mr * p + p0
            # the first tile of a task prefetches the next panel's weights (a line per k and 16 channels)
            pw = (pan + 1) * 32 * k if u == first and plan[6] > 0 and pan + 1 < npan else 0
            xo = img * img_in + oh * rowstep + col * sx
            if sx == 2:
                _ctile2w_s2(
                    x, wt, y, bias, y, y, k, p, xo, wo, yo, o0, lo, hi, False, pw, 0, po, bplane, p0, mr, toff, sx
                )
            elif sx == 4:
                _ctile2w_s4(
                    x, wt, y, bias, y, y, k, p, xo, wo, yo, o0, lo, hi, False, pw, 0, po, bplane, p0, mr, toff, sx
                )
            else:
                _ctile2w(x, wt, y, bias, y, y, k, p, xo, wo, yo, o0, lo, hi, False, pw, 0, po, bplane, p0, mr, toff, sx)


_F1, _I1 = types.float32[::1], types.int64[::1]
_PT = Task(
    _pt_worker,
    (_F1, _F1, _F1, _F1, _F1, _F1, _I1, types.float64, types.float64, types.int64, _I1, _I1),
    opt=1,  # explicit vector tiles: -O1 compiles in a fifth less time, same code speed (kernels.tasks)
    compile_s=1.7,
    boundscheck=False,
)
_CT = Task(
    _ct_worker,
    (_F1, _F1, _F1, _F1, _I1, types.float64, types.float64, _I1, _I1, _I1),
    opt=1,
    compile_s=1.2,
    boundscheck=False,
)


_NO_OFFSETS = np.empty(0, np.int64)


def pack(w: np.ndarray, width: int = 32) -> np.ndarray:
    """W (M, K, 1, 1) as W^T panels: panel q (output channels width q..) at [width q K:], (K, width) row-major (K, 16
    for a last panel of 16); M rounded up to a multiple of 16 with zero rows. width 32 or 16 (``kernels.mbconv``'s
    one-block tasks)."""
    m, k = w.shape[0], w.shape[1]
    w2 = w.reshape(m, k)
    if m % 16:
        w2 = np.concatenate([w2, np.zeros((-m % 16, k), np.float32)])
    return np.ascontiguousarray(np.concatenate([w2[o : o + width].T.reshape(-1) for o in range(0, len(w2), width)]))


def _params(w: np.ndarray, bias: np.ndarray) -> tuple:
    """(w, its panels, bias, bias padded with zeros to whole panels of 16) for a runner's call: W (M, ...) taken as
    (M, K) (a convolution's taps in (c, i, j) order)."""
    m = w.shape[0]
    padded = bias if m % 16 == 0 else np.concatenate([bias, np.zeros(-m % 16, np.float32)])
    return w, pack(w.reshape(m, -1, 1, 1)), bias, padded


def aim_ahead(runner, plan: np.ndarray, at: int, wt: np.ndarray) -> None:
    """plan[at], plan[at + 1]: the offset of ``runner.ahead()`` (the next step's weights, which the runner's tiles
    prefetch a share of: net.plan_steps.prefetch_ahead) from wt's first float, and its floats (0: none); worked out
    again only when wt or that array changed (``runner.aimed``). PointwiseTRunner's and mbconv's fused runners'."""
    arr = runner.ahead()
    if runner.aimed[0] is wt and runner.aimed[1] is arr:
        return
    runner.aimed = (wt, arr)
    plan[at + 1] = 0
    if isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.flags.c_contiguous and arr.size:
        gap = arr.ctypes.data - wt.ctypes.data
        if gap % 4 == 0:
            plan[at], plan[at + 1] = gap // 4, arr.size


class PointwiseTRunner:
    """The transposed 1x1 forward for fixed shapes (``applies``); see the module docstring. ``runner(x, w, bias, y[,
    res, z])`` as ``pointwise.PointwiseRunner``'s; the weights are packed on the first call with a given array and
    kept (the caller guarantees they do not change in place)."""

    __slots__ = (
        "ahead",
        "aimed",
        "blocks",
        "counter_args",
        "handoff",
        "lo_hi",
        "out_shape",
        "packed",
        "plan",
        "pool",
        "pool_only",
        "serial",
        "workers",
        "xpf",
    )

    def __init__(self, x_shape, w_shape, act=None, blocks: PaddedInput | None = None, xblk: bool = False) -> None:
        if not applies(x_shape, w_shape, blocks is not None, xblk):
            raise ValueError(f"pointwise_t: does not apply to x {tuple(x_shape)}, w {tuple(w_shape)}")
        n, k, h, wd = (int(v) for v in x_shape)
        mr, p = int(w_shape[0]), h * wd
        m = -(-mr // 16) * 16  # whole panels of 16 (the padding channels' weights and bias zero, not stored)
        self.out_shape = (n, mr, h, wd)
        self.lo_hi = check_act(act, "pointwise_t")
        self.workers = threads = numba.get_num_threads()
        npan = -(-m // 32)
        ntiles = p // NP
        nch = max(1, min(-(-ntiles // CHUNK), -(-4 * threads // max(1, n * npan))))  # 4+ tasks a thread if it can
        self.plan = np.array(
            [n, k, m, p, npan, nch, W_PREFETCH, -P_PREFETCH, 0, mr, 0, 0, 0, 0, int(HALF_TILES), 0, 0], np.int64
        )
        self.xpf = (1 + X_PREFETCH, -P_PREFETCH)  # plan[7] for x in blocks / planes
        self.handoff = None  # a depthwise.Handoff from the step before (set by the plan), or None: x in planes
        # blocks: the output goes to the depthwise step after in its blocks (y is not written), set by the plan
        self.blocks = blocks
        if blocks is not None:
            if blocks.geometry[:4] != self.out_shape:
                raise ValueError(f"pointwise_t: blocks of {blocks.geometry[:4]} for an output of {self.out_shape}")
            self.plan[8] = blocks.plane
        self.serial = threads == 1
        self.counter_args = (n, 1 if self.serial else threads, npan * nch if n == 1 else 0)  # image_counters'
        self.packed: tuple | None = None  # (w, its panels, bias, bias padded to whole panels) of the last call
        self.pool: np.ndarray | None = None  # pool_into's
        self.pool_only = False
        # the next step's weights as its kernel reads them, or None (a callable, set by the plan:
        # net.plan_steps.prefetch_ahead): the tiles after a task's first prefetch them into L2, a share each
        self.ahead = None
        self.aimed: tuple = (None, None)  # (packed panels, ahead array) plan[15:17] were set for

    def pool_applies(self) -> bool:
        """Can this runner sum its output planes into a global average pooling (pool_into)? Output in planes, no
        handoff to a depthwise step, whole panels of 32 channels (no half tiles)."""
        return ENABLED and self.blocks is None and self.out_shape[1] % 32 == 0

    def pool_into(self, pool: np.ndarray, pool_only: bool) -> None:
        """Every call also writes the global average pooling of its output into `pool` (C-contiguous float32 of N x M
        elements, not overlapping the output): per channel the pixels summed in order from 0.0, then divided by H*W,
        the operations of ``kernels.pool``'s global AVE pooling (``_global_ave_worker``), so the same bits; pool_only:
        the output itself is not stored (no step reads it). A channel's pixels in one task (one chunk an image), so
        each sum runs in pixel order on one thread. The plan sets it: ``net.plan_steps.fuse_global_pool``."""
        n, m = self.out_shape[:2]
        if not self.pool_applies():
            raise ValueError("pointwise_t: pool_into needs the output in planes and whole panels of 32 channels")
        if pool.dtype != np.float32 or pool.size != n * m or not pool.flags.c_contiguous:
            raise ValueError(f"pointwise_t: pool_into needs a C-contiguous float32 array of {n * m} elements")
        self.pool, self.pool_only = pool, bool(pool_only)
        npan = int(self.plan[4])
        self.plan[5] = 1  # one chunk: a panel's pixels in one task, in order
        self.counter_args = (n, self.counter_args[1], npan if n == 1 else 0)

    def __call__(self, x, w, bias, y, res=None, z=None, relu: bool = False, sum_only: bool = False) -> None:
        """sum_only (with res): z alone is written, y is left as it was (no step reads it)."""
        packed = self.packed
        if packed is None or packed[0] is not w or packed[2] is not bias:
            packed = self.packed = _params(w, bias)
        if self.ahead is not None:
            aim_ahead(self, self.plan, 15, packed[1])
        add = add_mode(res, relu, sum_only)
        if add and self.blocks is not None:
            raise ValueError("pointwise_t: a residual sum with the output in a depthwise's blocks")
        if self.pool is not None:
            if add or self.plan[5] != 1:
                raise ValueError("pointwise_t: a pooled output with a residual sum, or over several pixel chunks")
            add = POOL | (SUM_ONLY if self.pool_only else 0)
            res, z = y, self.pool  # res unread
        elif not add:
            res = z = y  # unread
        handoff = self.handoff
        if handoff is not None:  # x as the depthwise step before wrote it this time
            self.plan[7] = self.xpf[0] if handoff.interleaved != 0 else self.xpf[1]  # in blocks of 16 channels
            handoff.interleaved = 0
        lo, hi = self.lo_hi
        workers = 1 if self.serial else self.workers
        run = _PT.serial if self.serial else _PT.parallel
        blocks = self.blocks
        yf, po = (y.reshape(-1), _NO_OFFSETS) if blocks is None else (blocks.buf, blocks.poff)
        run(_PT.address, workers, x.reshape(-1), packed[1], packed[3], yf, res.reshape(-1), z.reshape(-1),
            self.plan, lo, hi, add, image_counters(*self.counter_args), po)  # fmt: skip
        if blocks is not None:
            blocks.ready = True  # the depthwise step after reads its blocks, not y


def conv_applies(x_shape, w_shape, stride) -> bool:
    """A group-1 convolution with pad 0 and dilation 1 that ConvTRunner runs: AVX-512, M a multiple of 32, OW at least
    14 (tiles of 14 pixels of a row x 32 channels; where OW is not a multiple of 14, a row's last tile ends at its end
    and recomputes pixels of the one before)."""
    if not ENABLED or len(x_shape) != 4 or len(w_shape) != 4:
        return False
    n, c, hp, wp = (int(v) for v in x_shape)
    m, cw, kh, kw = (int(v) for v in w_shape)
    sh, sw = (int(v) for v in stride)
    if n <= 0 or cw != c or m <= 0 or m % 32 or min(sh, sw) < 1 or not (1 <= kh <= hp and 1 <= kw <= wp):
        return False
    return (wp - kw) // sw + 1 >= 2 * NP


class ConvTRunner:
    """A group-1 convolution with pad 0 (``conv_applies``; the plan uses it for EfficientNet-Lite0's stem, 3 -> 32
    channels 3 x 3 / 2 on the padded image, when it hands its output to the depthwise step after in that step's
    blocks) on this module's tiles: 14 output pixels of a row x 32 output channels, per tap (c, i, j) 14 broadcasts
    of the image's pixels (sw apart) and two vector loads of the packed weights; no im2col. Each output is one FMA
    chain over the taps in (c, i, j) order, then bias and clip: the same bits as ``pointwise.Im2colRunner`` (and
    ``conv``'s im2col + GEMM with one K panel). The output goes straight into a depthwise's padded blocks of 16
    channels (``blocks``, a ``depthwise.PaddedInput``), as ``PointwiseTRunner``'s with blocks: y is not written; or,
    without blocks, into y's planes (``net.plan_steps.convt_step``: convolutions with few taps, as ResNet-50's and
    GoogLeNet's 7 x 7 / 2 first layer, 3 -> 64 channels: 1.91 -> 1.17 ms at batch 1, 14.5 -> 9.5 ms at batch 8, 2
    threads, against ``conv.ForwardRunner``'s im2col + GEMM, the same bits; CaffeNet's conv1, 11 x 11 / 4, 3 -> 96 channels
    on 55 x 55, on the tile with stride 4 constant: 1.10 -> 0.96 ms at batch 1, 11.7 -> 9.7-10.0 ms at batch 10; on the
    tile with the stride a run-time value it took 1.44 ms). The weights are packed on the first call
    with a given array and kept (the caller makes sure they do not change in place, or sets ``packed`` to None when
    they did). ``runner(x, w, bias, y)``, w (M, C, kh, kw)."""

    __slots__ = ("blocks", "counter_args", "lo_hi", "out_shape", "packed", "plan", "serial", "toff", "workers")

    def __init__(self, x_shape, w_shape, stride, act, blocks: PaddedInput | None = None) -> None:
        if not conv_applies(x_shape, w_shape, stride):
            raise ValueError(
                f"pointwise_t: does not apply to the convolution of x {tuple(x_shape)}, w {tuple(w_shape)}"
            )
        n, c, hp, wp = (int(v) for v in x_shape)
        mr, _, kh, kw = (int(v) for v in w_shape)
        sh, sw = (int(v) for v in stride)
        m = mr  # whole panels of 32 (conv_applies)
        oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
        k, p = c * kh * kw, oh * ow
        self.out_shape = (n, mr, oh, ow)
        self.lo_hi = check_act(act, "pointwise_t")
        self.workers = threads = numba.get_num_threads()
        npan = -(-m // 32)
        nch = max(1, min(-(-oh // 2), -(-4 * threads // max(1, n * npan))))  # chunks of 2+ output rows
        while nch < -(-oh // 2) and n * npan * nch % threads:  # as many tasks a thread (CaffeNet's conv1 at batch 1,
            nch += 1  # 3 panels: 9 tasks on 2 threads took 1.045 ms, 12 0.964)
        self.blocks = blocks
        if blocks is not None and blocks.geometry[:4] != self.out_shape:
            raise ValueError(f"pointwise_t: blocks of {blocks.geometry[:4]} for an output of {self.out_shape}")
        plane = 0 if blocks is None else blocks.plane
        self.plan = np.array(
            [n, k, m, p, npan, nch, W_PREFETCH, 0, plane, mr, ow, sh * wp, sw, c * hp * wp, 0], np.int64
        )  # _ct_worker's
        self.toff = np.array(
            [(ci * hp + i) * wp + j for ci in range(c) for i in range(kh) for j in range(kw)], np.int64
        )
        self.serial = threads == 1
        self.counter_args = (n, 1 if self.serial else threads, npan * nch if n == 1 else 0)  # image_counters'
        self.packed: tuple | None = None  # (w, its panels, bias, bias padded to whole panels) of the last call

    def __call__(self, x, w, bias, y) -> None:
        packed = self.packed
        if packed is None or packed[0] is not w or packed[2] is not bias:
            packed = self.packed = _params(w, bias)
        lo, hi = self.lo_hi
        workers = 1 if self.serial else self.workers
        run = _CT.serial if self.serial else _CT.parallel
        blocks, counters = self.blocks, image_counters(*self.counter_args)
        out, po = (y.reshape(-1), _NO_OFFSETS) if blocks is None else (blocks.buf, blocks.poff)  # blocks: y unwritten
        run(_CT.address, workers, x.reshape(-1), packed[1], packed[3], out, self.plan, lo, hi, counters, po, self.toff)
        if blocks is not None:
            blocks.ready = True  # the depthwise step after reads its blocks, not y
