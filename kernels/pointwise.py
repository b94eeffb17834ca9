"""1x1 convolution (pointwise: kernel 1x1, stride 1, pad 0, group 1), Caffe semantics, NCHW float32.

EfficientNet-Lite / MobileNet expand, project and head convolutions: y[n] = W (M, K) @ x[n] (K, P) + b, then an
optional clip min(max(y, lo), hi) (ReLU6: (0, 6)), with K = C_in, M = C_out, P = H*W. The image already is the
row-major B matrix of that GEMM, so nothing is packed (``kernels.conv`` copies it into im2col slivers first, splits K
into panels that store and reload the output, and clips in a second pass over it).

Kernels, in order:

0. ``pointwise_forward_ref`` - plain NumPy in float64: one rank-1 update per input channel (no BLAS call).
1. ``_pw_tile``    - the micro-kernel, in LLVM IR like ``kernels.gemm``'s: MR output channels x 16 pixels (x 32, two
                     slivers, with AVX-512: ``gemm.PAIR``), W's rows read in place (one broadcast per row and k) and
                     row k of B straight from the image (x[k*P + p0 :], unaligned vector loads), over the whole of K
                     with the accumulators in registers (AVX2: 12 + 2 + 1 of the 16 ymm; AVX-512: 24 + 2 + 1 of the
                     32 zmm), then bias, clip (compare and select: a NaN stays NaN) and the stores straight into y, so
                     the output is written once. The bottom edge (M % MR rows) re-reads the last row of W and stores
                     only the rows that exist.
2. ``_dot_tile``   - the edge pixels that fill no 16-pixel tile (196 = 12 x 16 + 4, 49 = 3 x 16 + 1): R x C dot
                     products over k (C <= DOT_COLS pixels, R = DOT_ACC / C rows, at most MR), <8 x float> vectors of
                     W's rows and of the pixels' columns (copied into a (t, K) buffer once per task, ``_pack_edge``),
                     two partial sums per output where 6 would leave the FMAs waiting on their latency, summed across
                     lanes, then the K % 8 remainder, bias, clip and scalar stores. A 16-wide tile for P = 49's last
                     pixel would add a third to the layer.
                     When P is a multiple of 16, every row of x starts at the same place in a cache line: the main
                     tiles then start at the first pixel on a line boundary (``_head``: 12 pixels into NumPy's arrays,
                     which start 16 bytes into a line; loads split across lines made the 56 x 56 and 28 x 28 layers
                     7-17% slower), and the pixels before it and the tail after the last tile, 16 together, are packed
                     into one sliver for the same tile (``_sliver_edge``). So which pixels the dot tiles compute
                     depends on P alone, and every other output is one FMA chain over k in order, then the bias and
                     the clip, whichever tile computes it: the bits do not depend on where x starts (which differs
                     from process to process), on the thread count or on the task split.
3. ``_pw_worker`` -  (image, pixel chunk, row block) tasks claimed by one worker per thread (``gemm.claim``: dynamic
                     scheduling; the worker body is a ``kernels.tasks.Task``, see there). With 2+ images a thread
                     (``gemm.image_counters``) the images are split into one queue per thread, and a worker claims
                     from its CPU's queue first (``gemm.claim_near``), then steals: an image's activations then stay
                     in one core's caches from layer to layer (the depthwise and im2col kernels do the same).
                     EfficientNet-Lite0 batch 32, 2 threads, old/new processes alternated: the 1x1 layers summed
                     63.5-64.1 -> 54.8-55.7 ms, the depthwise 54.3-54.6 -> 50.2-51.7, the net's steps 194-197 ->
                     177-181 ms; in-process A/B (``gemm.IMAGE_QUEUES``) 1.045x. One image split into row blocks only:
                     one queue of row blocks (output channels) per thread, so the depthwise layer after, with one
                     queue of channel blocks per thread, reads its input where it was written: batch 1, 2 threads,
                     in-process A/B 1.02-1.04x. A task walks its row
                     tiles, each one's edge pixels first (they stream the tile's W rows into L1 for the main tiles'
                     broadcasts), then its main tiles left to right: W is read from L1, and x (a chunk of at most
                     X_CHUNK_FLOATS, in L2) once per row tile. When x is over PREFETCH_MIN_X_BYTES (not all in L2:
                     batch 32, the larger layers at batch 1), the first row tile of a task also prefetches, for
                     every k, row k of x one tile ahead (PREFETCH_FLOATS): the K rows are P floats apart, a page or
                     more at 56 x 56, and the hardware prefetchers do not cross pages, so each line was a miss
                     (batch 32, 2 threads: the 56 x 56 and 112 x 112 projections 1.13-1.33x faster). Chunks and
                     blocks are chosen once per shape (``_split``): enough tasks for the threads, and of those splits
                     the one that re-reads least (W once per chunk, x once per block). Below SERIAL_MACS one worker
                     runs them on the calling thread (the task's serial driver), where a fork-join costs more than it
                     saves.
4. ``_pack_chunk`` - (PACK) a task's main pixels copied into contiguous (K, 16) slivers on 64-byte lines first, each
                     row of x read once, when x is over PACK_MIN_X_BYTES (no longer in L2 from the layer before: all
                     of them at batch 32) and the task's row block is PACK_MIN_ROWS or more: the row tiles then read
                     one line per k instead of rows P floats apart (on pages apart at 56 x 56; split across lines at
                     7 x 7 and 14 x 14). The main tiles start at pixel 0 (no ``_head``), so the same FMA chains and
                     bits as in place. 1 thread, CPU time, batch 32 (a loaded machine): the 1x1 layers summed 194 ->
                     178 ms, the deep projections 1.13-1.20x. With AVX-512 in (K, 32) pair slivers:
                     EfficientNet-Lite0 batch 32, in-process A/B 1.004-1.011x (1 and 2 threads).
   ``_pack_shared`` - (SHARED_PACK) a smaller x (not PACK) whose rows start off the cache lines (P not a multiple of 16,
                     and at most SHARED_PACK_MAX_P pixels: 7 x 7; each 16-pixel load then splits across two lines, 17%
                     slower on a line-aligned x moved 4 bytes) is packed once per call, every worker its share of the
                     rows (one fork-join more), into slivers all tasks read, and each image's P % 16 edge pixels with
                     them (no task packs its own: one did so per row block). The same bits. Batch 1, 2 threads,
                     same-runner A/B: 1.19-1.31x on the 7 x 7 layers, 0.99-1.18x at 14 x 14; EfficientNet-Lite0 batch 1
                     in-process A/B: 2 threads 1.06-1.07x, 1 thread 1.04x. With AVX-512 the slivers go in (K, 32) pairs
                     for the paired tile (a 64-byte load off a line always splits): EfficientNet-Lite0 batch 1
                     in-process A/B 1.00-1.01x (1 thread), 1.02-1.03x (2 threads), the layers alone 0.97-1.02x. At 14 x
                     14 the paired tile now reads x in place (SHARED_PACK_MAX_P): 1.01x at batch 1, 1 and 2 threads.
5. residual sum    - ``runner(x, w, bias, y, res, z)`` also writes z = y + res, each row tile's rows as soon as they
                     are stored (``_add_span``, over the task's own pixels): an Eltwise SUM after the convolution
                     without a second pass or launch (``net.plan_steps.fuse_residual_sums``), the same bits; with
                     ``relu=True`` an in-place ReLU after the sum as well (ResNet), z = max(y + res, 0).
6. ``Im2colRunner`` - a group-1 convolution with pad 0 and a multiple of 16 output pixels (``im2col_applies``) on
                     the same tiles: each task gathers its chunk's im2col slivers (``_pack_im2col``) into its buffer
                     and runs its row tiles over them, so no im2col matrix goes through memory; the bits of
                     ``conv``'s im2col + GEMM with one K panel. EfficientNet-Lite0's stem, 3x3/2 on the padded image
                     (``net.plan_steps``), 1 thread, CPU time: batch 1 0.58 -> 0.47 ms, batch 32 27 -> 19 ms. A
                     sliver within one output row at stride 1 or 2 is copied as a run of x (no offset table: the
                     loads vectorise): the stem 0.44 -> 0.38 ms at batch 1, 15.7 -> 13.5 ms at batch 32 (1 thread).
                     With AVX-512 too; there it replaced conv's im2col + GEMM for the stem (0.49 -> 0.30 ms at batch
                     1, 1 thread), and a cold `crema serve` no longer compiles conv's kernels for EfficientNet-Lite0
                     (10.1-10.2 -> 8.0 s to healthy, 2 cores). Its slivers go in (K, 32) pairs there, for the paired
                     tile (the single-sliver tile is bound by its 12 broadcasts a k): the stem, old/new processes
                     alternated, batch 1 1 thread min 0.306-0.313 -> 0.270-0.283 ms, batch 32 16.7-17.5 -> 10.4-14.6
                     ms (1 thread), 6.9-7.0 -> 6.0-6.3 ms (2 threads), the same bits.

On AVX-512, a net's plan runs the 1x1 convolutions with frozen (folded) weights on ``kernels.pointwise_t`` instead
(the output channels in the vector lanes) on 7 x 7 and 14 x 14 planes with K >= 112 (no edge pixels there), and on any
plane with K >= 16 where the output goes straight into the next depthwise layer's blocks.

Public: ``pointwise_applies(x_shape, w_shape, stride, pad, dilation, group) -> bool``,
``pointwise_forward(x, w, b, *, act, out) -> y`` and ``PointwiseRunner(x_shape, w_shape, act)`` (the shape work done
once, for a Net's execution plan; ``runner(x, w, bias, y[, res, z])``). Shapes: x (N, K, H, W), w (M, K, 1, 1), b (M,),
y (N, M, H, W); act None or (lo, hi).

Numba caches compiled code per source file: the tile constants of ``kernels/gemm.py`` (MR, NR, VW, PAIR) are frozen
into this module's cache as into conv's (Numba keys the cache on the CPU, so a machine that picks the other tile shape
compiles its own).

Benchmark: per layer (EfficientNet-Lite0's 1x1 convolutions at batch 1 and 32, checked against the float64 reference
first, then interleaved against ``conv.ForwardRunner``, ONNX Runtime on one Conv node and torch), the script
bench_pointwise.py handed over with this module (not yet in benchmarks/); in the whole net,
``python -m benchmarks --only efficientnet``.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit
from numba import types as nt
from numba.core import cgutils, errors, types
from numba.extending import intrinsic

from kernels.depthwise import check_act
from kernels.gemm import Workspace, accumulators, as64, claim_near, flat_f32, image_counters, queue_sizes, splat
from kernels.tasks import Task
from kernels.tiling import MR, NR, PAIR, VW

Act = tuple[float, float] | None  # (lo, hi) of the fused clip, or None

ADD, ADD_RELU = 1, 2  # the tiles' `add` (here and in pointwise_t): z = y + res, or z = max(y + res, 0) (relu)
SUM_ONLY = 4  # or'ed into pointwise_t's `add`: z only, y not stored (no step reads it: net.plan_steps.sums_only)
SLIVERS = 2 if PAIR else 1  # 16-pixel slivers per main tile: MR x 32 with AVX-512 (24 zmm accumulators), else MR x 16
DOT_ACC = 12  # accumulators of a _dot_tile (R rows x C pixels x partial sums), <8 x float> on either CPU
DOT_COLS = 2  # pixels per _dot_tile at most (3 or 4 spilled: 12 accumulators + C pixel vectors + 1 > 16 ymm)
TASKS_PER_THREAD = 8  # parallel tasks per thread at most (claimed dynamically: a slow thread takes fewer)
TASK_MACS = 1 << 18  # multiply-adds per task at least (a claim and a task's cold start cost ~1-2 us)
ALIGN_MIN_P = 4 * NR  # pixels per image at least before the main tiles are moved onto cache lines (_head)
X_CHUNK_FLOATS = 64 * 1024  # floats of x a task re-reads per row tile (256 KB: half of Zen 3's L2)
# one image on several threads, and at least this many row tiles a thread: tasks of whole row blocks over all pixels
# (each task's outputs MR-row runs of y, not MR x M short row pieces of a pixel chunk; EfficientNet-Lite0 batch 1, 2
# threads, in-process A/B: 1.03-1.05x; the 56 x 56 expand 171 -> 92 us alone; at batch 32, 0.96x: not there)
ROW_TASKS = 4
SERIAL_MACS = 1 << 18  # below this many multiply-adds a call runs on the calling thread (fork-join: ~2.5 us)
PACK = True  # copy a task's pixel chunk into contiguous 16-pixel slivers (K, NR) before its row tiles read it
PACK_MIN_ROWS = 8 * MR  # ... when a task's row block reads each packed sliver this many rows' worth at least
# the tile's loop over k also prefetches row k of x this far ahead, a line per sliver (AVX2: the next tile; AVX-512,
# 4 lines, both lines of the pair tile two tiles on: the projections at batch 32 with x from memory, 1 thread,
# K = 144 16.8 -> 14.9 ms with one line, 15.1-21.4 -> 11.6-14.3 ms with both; K = 96 11.7 -> 10.1 -> 7.7-9.5) ...
PREFETCH_FLOATS = 64 if SLIVERS == 2 else 16
PREFETCH_MIN_X_BYTES = 512 << 10  # ... when x is larger than this (x from memory or L3, not all in L2 from the layer
# before: 4 MB until EfficientNet-Lite0 batch 1, 1 thread, in-process A/B with the 14 x 14 change of SHARED_PACK_MAX_P
# below: 1.02-1.05x min, 1.02x median), or the call runs on several threads: each task then reads rows of x that
# another core wrote (the depthwise layer before splits by channels); batch 1, 2 threads, in-process A/B 1.04-1.06x
PACK_MIN_X_BYTES = 1 << 20  # ... and x is larger than this (smaller ones are still in L2 from the layer before)
# a tile first prefetches (for writing) its rows of y this many floats on, the next main tile's: in a net the outputs
# land in arena lines not in cache, and every store missed (EfficientNet-Lite0 batch 1, in-process A/B, same bits:
# 1 thread 1.12x, 2 threads 1.06-1.07x; batch 32 1.14x; distances 32 / 128 floats 1.11x / 1.06-1.10x)
Y_PREFETCH = 32 * SLIVERS
# the first main tile of a row tile prefetches the next row tile's W (12 rows, contiguous: a line per k) into L2: in a
# net, W comes from L3 (EfficientNet-Lite0's 19 MB of weights pass through each forward); batch 1, in-process A/B,
# same bits: 1 thread 1.03-1.04x, 2 threads 1.01-1.02x (L1 as the target: 1.02-1.03x both); batch 32 1.00x
W_PREFETCH = 1
SHARED_PACK = True  # smaller x whose rows are off the cache lines (P % 16): packed once a call, shared by the tasks
# ... up to this many pixels an image (7 x 7: 1.19-1.31x; at 14 x 14 the paired tile reads x in place faster: K = 480,
# M = 72 alone 111 -> 97 us, 1 thread; EfficientNet-Lite0 batch 1 in-process A/B without it there 1.01x at 1 and 2
# threads)
SHARED_PACK_MAX_P = 128
assert NR == 16 and NR % VW == 0, "the tile stores NR = 16 pixels as NR / VW vectors"
assert MR * SLIVERS * (NR // VW) + SLIVERS * (NR // VW) + 1 <= (32 if VW == 16 else 16), "accumulators + B + A"
assert DOT_ACC + max(DOT_COLS, 2) + 1 <= 16, "dot tile: accumulators + pixel vectors (2 for 2 partial sums) + W"
assert DOT_ACC % DOT_COLS == 0 and DOT_ACC // DOT_COLS <= MR, "a dot tile's rows fit in a row tile"


def _dot_rows(cols: int) -> int:
    """Rows of a _dot_tile over `cols` pixels: at most DOT_ACC accumulators, at most one row tile (MR)."""
    return min(MR, DOT_ACC // cols)


# --------------------------------------------------------------------------------------------- reference
def pointwise_forward_ref(x, w, b, *, act: Act = None) -> np.ndarray:
    """Reference 1x1 convolution in float64, returned as float64.

    x: (N, K, H, W); w: (M, K, 1, 1); b: (M,) or None. Returns y: (N, M, H, W),
    y[n, m] = b[m] + sum_k w[m, k, 0, 0] * x[n, k], then min(max(y, lo), hi) when act = (lo, hi).
    """
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, k, h, wd = x64.shape
    m = w64.shape[0]
    y = np.zeros((n, m, h, wd))
    for c in range(k):  # rank-1 updates: obviously a sum over input channels, without calling BLAS
        y += w64[:, c, 0, 0].reshape(1, m, 1, 1) * x64[:, c : c + 1]
    if b is not None:
        y += np.asarray(b, np.float64).reshape(1, m, 1, 1)
    if act is not None:
        y = np.minimum(np.maximum(y, act[0]), act[1])
    return y


# --------------------------------------------------------------------------------------------- micro-kernels
def _clip(builder, v, lo, hi):
    """min(max(v, lo), hi) by compare and select (v < lo ? lo : v, then > hi), so a NaN stays NaN."""
    v = builder.select(builder.fcmp_ordered("<", v, lo), lo, v)
    return builder.select(builder.fcmp_ordered(">", v, hi), hi, v)


def _f32(builder, v):
    return v if isinstance(v.type, llvm_ir.FloatType) else builder.fptrunc(v, llvm_ir.FloatType())


def _tile_codegen(edge: bool, slivers: int):
    """LLVM IR of _pw_tile (edge: rows past mr re-read row mr - 1 and are not stored; slivers: 1 or 2)."""

    def codegen(context, builder, signature, args):
        def data(i):  # pointer to the elements of array argument i
            return context.make_array(signature.args[i])(context, builder, args[i]).data

        w_data, x_data, y_data, b_data = data(0), data(1), data(2), data(3)
        r0, xo, yo, k64, xs, ys, mr, pf, py, pw = (as64(builder, v) for v in (*args[4:10], *args[12:16]))
        i64 = llvm_ir.IntType(64)

        def c64(v):
            return llvm_ir.Constant(i64, v)

        a0 = builder.mul(r0, k64)
        if edge:  # row i of the tile reads row min(i, mr - 1) of W
            last = builder.sub(mr, c64(1))
            rows = [builder.select(builder.icmp_unsigned("<", c64(i), mr), c64(i), last) for i in range(MR)]
            offs = [builder.add(a0, builder.mul(r, k64)) for r in rows]
        else:
            offs = [builder.add(a0, builder.mul(c64(i), k64)) for i in range(MR)]
        nv = NR // VW  # vectors per row of one sliver
        vec = llvm_ir.VectorType(llvm_ir.FloatType(), VW)
        vptr = vec.as_pointer()
        slots, fma = accumulators(builder, vec, slivers * MR * nv)  # slot (h*MR + i)*nv + v
        i8p, i32 = llvm_ir.IntType(8).as_pointer(), llvm_ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(llvm_ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
        )
        with builder.if_then(builder.icmp_unsigned("!=", py, c64(0))):  # y's lines py floats on, for writing
            for i in range(MR):
                yrow = builder.add(builder.add(yo, builder.mul(c64(i), ys)), py)
                for h in range(slivers):
                    ahead = builder.gep(y_data, [builder.add(yrow, c64(h * NR))])
                    hint = (llvm_ir.Constant(i32, v) for v in (1, 3, 1))
                    builder.call(prefetch, [builder.bitcast(ahead, i8p), *hint])
        with cgutils.for_range(builder, k64) as loop:
            kk = loop.index
            boff = builder.add(xo, builder.mul(kk, xs))
            with builder.if_then(builder.icmp_unsigned("!=", pw, c64(0))):  # line k of W from pw (the next row tile's)
                ahead = builder.gep(w_data, [builder.add(pw, builder.mul(kk, c64(16)))])
                builder.call(prefetch, [builder.bitcast(ahead, i8p), *(llvm_ir.Constant(i32, v) for v in (0, 2, 1))])
            with builder.if_then(builder.icmp_unsigned("!=", pf, c64(0))):  # row k of x pf floats ahead (a hint)
                for h in range(slivers):  # a line per sliver: the pair's two lines of the row, both
                    ahead = builder.gep(x_data, [builder.add(boff, builder.add(pf, c64(h * NR)))])
                    hint = (llvm_ir.Constant(i32, v) for v in (0, 3, 1))
                    builder.call(prefetch, [builder.bitcast(ahead, i8p), *hint])
            bv = [
                builder.load(
                    builder.bitcast(builder.gep(x_data, [builder.add(boff, c64(h * NR + v * VW))]), vptr), align=4
                )
                for h in range(slivers)
                for v in range(nv)
            ]
            for i in range(MR):
                av = splat(builder, builder.load(builder.gep(w_data, [builder.add(offs[i], kk)])), vec)
                for q in range(slivers * nv):
                    s_ = slots[(q // nv * MR + i) * nv + q % nv]
                    builder.store(builder.call(fma, [av, bv[q], builder.load(s_)]), s_)
        lo, hi = (splat(builder, _f32(builder, v), vec) for v in (args[10], args[11]))
        for i in range(MR):
            if edge:
                with builder.if_then(builder.icmp_unsigned("<", c64(i), mr), likely=True):
                    _store_row(builder, slots, i, nv, slivers, b_data, y_data, r0, yo, ys, lo, hi)
            else:
                _store_row(builder, slots, i, nv, slivers, b_data, y_data, r0, yo, ys, lo, hi)
        return context.get_dummy_value()

    return codegen


def _store_row(builder, slots, i, nv, slivers, b_data, y_data, r0, yo, ys, lo, hi):
    """y[yo + i*ys + j] = clip(acc[i, j] + bias[r0 + i]) for the tile's NR * slivers pixels of row i."""
    i64 = llvm_ir.IntType(64)
    vec = slots[0].type.pointee
    bias = splat(builder, builder.load(builder.gep(b_data, [builder.add(r0, llvm_ir.Constant(i64, i))])), vec)
    row = builder.add(yo, builder.mul(llvm_ir.Constant(i64, i), ys))
    for q in range(slivers * nv):
        v = _clip(builder, builder.fadd(builder.load(slots[(q // nv * MR + i) * nv + q % nv]), bias), lo, hi)
        p = builder.gep(y_data, [builder.add(row, llvm_ir.Constant(i64, q // nv * NR + q % nv * VW))])
        builder.store(v, builder.bitcast(p, vec.as_pointer()), align=4)


def _tile_typing(w, x, y, bias, r0, xo, yo, k, xs, ys, lo, hi, mr, pf, py, pw):
    flat_f32(w, x, y, bias)
    return types.void(w, x, y, bias, r0, xo, yo, k, xs, ys, lo, hi, mr, pf, py, pw)


@intrinsic
def _pw_tile(typingctx, w, x, y, bias, r0, xo, yo, k, xs, ys, lo, hi, mr, pf, py, pw):
    """y[yo + i*ys + j] = clip(bias[r0 + i] + sum_{c < k} w[(r0 + i)*k + c] * x[xo + c*xs + j]) for i < MR, j < NR:
    one MR x NR tile of y[n] = W @ x[n] with W (M, K) and x[n] (K, P) row-major and flat (xs = ys = P), or of a
    packed sliver (x: (K, NR), xs = NR). Each output is one FMA chain over c in order from 0, then + bias, then
    clip(v) = min(max(v, lo), hi): the same bits wherever the tile sits. `mr` is unused (one signature with
    _pw_tile_edge); pf != 0: each k also prefetches x[xo + c*xs + pf]; py != 0: first, y[yo + i*ys + py] for writing
    (a sliver's line per row); pw != 0: each k also prefetches w[pw + 16k] into L2 (hints, no fault past the end)."""
    return _tile_typing(w, x, y, bias, r0, xo, yo, k, xs, ys, lo, hi, mr, pf, py, pw), _tile_codegen(False, 1)


@intrinsic
def _pw_tile_edge(typingctx, w, x, y, bias, r0, xo, yo, k, xs, ys, lo, hi, mr, pf, py, pw):
    """_pw_tile for the bottom edge: rows i >= mr compute row mr - 1 again and are not stored."""
    return _tile_typing(w, x, y, bias, r0, xo, yo, k, xs, ys, lo, hi, mr, pf, py, pw), _tile_codegen(True, 1)


@intrinsic
def _pw_tile2(typingctx, w, x, y, bias, r0, xo, yo, k, xs, ys, lo, hi, mr, pf, py, pw):
    """_pw_tile over two adjacent slivers (MR x 2NR, PAIR)."""
    return _tile_typing(w, x, y, bias, r0, xo, yo, k, xs, ys, lo, hi, mr, pf, py, pw), _tile_codegen(False, 2)


@intrinsic
def _pw_tile2_edge(typingctx, w, x, y, bias, r0, xo, yo, k, xs, ys, lo, hi, mr, pf, py, pw):
    """_pw_tile_edge over two adjacent slivers (MR x 2NR, PAIR)."""
    return _tile_typing(w, x, y, bias, r0, xo, yo, k, xs, ys, lo, hi, mr, pf, py, pw), _tile_codegen(True, 2)


def _hsum(builder, v):
    """The sum of the lanes of v (a tree: halves added until one lane is left; a fixed order, so fixed bits)."""
    i32 = llvm_ir.IntType(32)
    n = v.type.count
    while n > 1:
        n //= 2
        lo = builder.shuffle_vector(v, v, llvm_ir.Constant(llvm_ir.VectorType(i32, n), list(range(n))))
        hi = builder.shuffle_vector(v, v, llvm_ir.Constant(llvm_ir.VectorType(i32, n), list(range(n, 2 * n))))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, llvm_ir.Constant(i32, 0))


@intrinsic
def _dot_tile(typingctx, w, xt, y, bias, r0, xo, yo, k, p, lo, hi, mr, cols):
    """y[yo + i*p + j] = clip(bias[r0 + i] + sum_{c < k} w[(r0 + i)*k + c] * xt[xo + j*k + c]) for i < mr rows
    (mr <= R = _dot_rows(cols); rows past mr re-read row mr - 1 and are not stored) and j < cols (a literal,
    1..DOT_COLS) pixels, xt the tail of x[n] transposed ((t, K), one row per pixel): R x C dot products over
    <8 x float> vectors of W's rows and of the pixels' rows (per 8 k: R + C vector loads for R*C FMAs), each summed
    across its lanes, the K % 8 remainder added one product at a time, then bias, clip and scalar stores."""
    if not isinstance(cols, types.IntegerLiteral):
        raise errors.RequireLiteralValue(cols)
    ncol = cols.literal_value
    nrow = _dot_rows(ncol)
    flat_f32(w, xt, y, bias)
    sig = types.void(w, xt, y, bias, r0, xo, yo, k, p, lo, hi, mr, cols)

    def codegen(context, builder, signature, args):
        def data(i):
            return context.make_array(signature.args[i])(context, builder, args[i]).data

        w_data, xt_data, y_data, b_data = data(0), data(1), data(2), data(3)
        r0_v, xo_v, yo_v, k64, p64 = (as64(builder, v) for v in args[4:9])
        lo, hi = _f32(builder, args[9]), _f32(builder, args[10])
        mr_v = as64(builder, args[11])
        i64, f32 = llvm_ir.IntType(64), llvm_ir.FloatType()

        def c64(v):
            return llvm_ir.Constant(i64, v)

        vec = llvm_ir.VectorType(f32, 8)
        vptr = vec.as_pointer()
        last = builder.sub(mr_v, c64(1))
        rows = [
            builder.add(r0_v, builder.select(builder.icmp_unsigned("<", c64(i), mr_v), c64(i), last))
            for i in range(nrow)
        ]
        offs = [builder.mul(r, k64) for r in rows]  # W's row of tile row i
        xoffs = [builder.add(xo_v, builder.mul(c64(j), k64)) for j in range(ncol)]
        chains = max(1, min(2, DOT_ACC // (nrow * ncol)))  # independent sums per output (FMA latency: 6 is too few)
        slots, fma = accumulators(builder, vec, chains * nrow * ncol)  # slot (i*ncol + j)*chains + q

        def step(c, nq):  # 8*nq k from c: chain q takes c + 8q
            def load(ptr, off, q):
                return builder.load(
                    builder.bitcast(builder.gep(ptr, [builder.add(off, builder.add(c, c64(8 * q)))]), vptr), align=4
                )

            xv = [[load(xt_data, xoffs[j], q) for q in range(nq)] for j in range(ncol)]
            for i in range(nrow):
                for q in range(nq):
                    wv = load(w_data, offs[i], q)
                    for j in range(ncol):
                        s_ = slots[(i * ncol + j) * chains + q]
                        builder.store(builder.call(fma, [wv, xv[j][q], builder.load(s_)]), s_)

        k8 = builder.and_(k64, c64(-8))
        kc = builder.and_(k64, c64(-8 * chains))
        with cgutils.for_range_slice(builder, c64(0), kc, c64(8 * chains)) as (c, _):
            step(c, chains)
        with cgutils.for_range_slice(builder, kc, k8, c64(8)) as (c, _):  # at most one 8-k step left over
            step(c, 1)
        for q in range(1, chains):
            for s0 in range(0, len(slots), chains):
                builder.store(builder.fadd(builder.load(slots[s0]), builder.load(slots[s0 + q])), slots[s0])
        slots = slots[::chains]
        sums = [cgutils.alloca_once_value(builder, _hsum(builder, builder.load(s_))) for s_ in slots]
        with cgutils.for_range_slice(builder, k8, k64, c64(1)) as (c, _):  # the K % 8 remainder

            def scalar(ptr, off):
                return builder.load(builder.gep(ptr, [builder.add(off, c)]))

            for i in range(nrow):
                wv = scalar(w_data, offs[i])
                for j in range(ncol):
                    s_ = sums[i * ncol + j]
                    builder.store(builder.fadd(builder.load(s_), builder.fmul(wv, scalar(xt_data, xoffs[j]))), s_)
        for i in range(nrow):
            with builder.if_then(builder.icmp_unsigned("<", c64(i), mr_v), likely=True):
                bi = builder.load(builder.gep(b_data, [rows[i]]))
                row = builder.add(yo_v, builder.mul(c64(i), p64))
                for j in range(ncol):
                    v = _clip(builder, builder.fadd(builder.load(sums[i * ncol + j]), bi), lo, hi)
                    builder.store(v, builder.gep(y_data, [builder.add(row, c64(j))]))
        return context.get_dummy_value()

    return sig, codegen


# --------------------------------------------------------------------------------------------- drivers
@intrinsic
def _address(typingctx, a):
    """The address of a's first element (an unsigned integer)."""
    sig = types.uint64(a)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.ptrtoint(data, llvm_ir.IntType(64))

    return sig, codegen


@njit(cache=True, boundscheck=False, inline="always")
def _head(xf, p):  # pragma: no cover - compiled
    """Pixels before the first main tile: when every row of x starts at the same offset in a cache line (P a multiple
    of NR), as many as move the tiles' loads onto line boundaries (NumPy's arrays start 16 bytes into a line: 12
    pixels); else 0."""
    if p % NR != 0 or p < ALIGN_MIN_P:
        return 0
    return np.int64((np.uint64(NR * 4) - _address(xf) % np.uint64(NR * 4)) % np.uint64(NR * 4) // np.uint64(4))


@njit(cache=True, boundscheck=False)
def _pack_edge(xf, x_off, k, p, p0, t, xt):  # pragma: no cover - compiled
    """xt[j*k + c] = x[x_off + c*p + p0 + j] for j < t, c < k: t pixels of an image, one row per pixel (_dot_tile)."""
    for c in range(k):
        for j in range(t):
            xt[np.uint64(j * k + c)] = xf[np.uint64(x_off + c * p + p0 + j)]


@njit(cache=True, boundscheck=False)
def _edge(wf, xt, bias, yf, y_off, r, mr, k, p, p0, t, lo, hi):  # pragma: no cover - compiled
    """Rows r..r + mr - 1 (mr <= MR), pixels p0..p0 + t - 1 of one image (y_off: y[n, 0, 0]) from their columns packed
    in xt (_pack_edge): _dot_tiles of up to DOT_COLS pixels."""
    ku, pu = np.uint64(k), np.uint64(p)
    for j0 in range(0, t, DOT_COLS):
        cols = min(DOT_COLS, t - j0)
        rows = min(MR, DOT_ACC // cols)  # _dot_rows(cols)
        xo = np.uint64(j0 * k)
        for r0 in range(r, r + mr, rows):
            nr = np.uint64(min(rows, r + mr - r0))
            yo = np.uint64(y_off + r0 * p + p0 + j0)
            ru = np.uint64(r0)
            if cols == 1:
                _dot_tile(wf, xt, yf, bias, ru, xo, yo, ku, pu, lo, hi, nr, 1)
            else:
                _dot_tile(wf, xt, yf, bias, ru, xo, yo, ku, pu, lo, hi, nr, 2)


@njit(cache=True, boundscheck=False)
def _pack_sliver(xf, x_off, k, p, h, xs):  # pragma: no cover - compiled
    """xs[c*NR + j]: row c of an image's edge pixels as one packed sliver (K, NR) when P is a multiple of NR and the
    main tiles start at pixel h > 0 (_head): its last NR - h pixels (j < NR - h), then its first h."""
    t = NR - h
    for c in range(k):
        for j in range(t):
            xs[np.uint64(c * NR + j)] = xf[np.uint64(x_off + c * p + p - t + j)]
        for j in range(h):
            xs[np.uint64(c * NR + t + j)] = xf[np.uint64(x_off + c * p + j)]


@njit(cache=True, boundscheck=False)
def _sliver_edge(wf, xs, out, bias, yf, y_off, r, mr, k, p, h, lo, hi):  # pragma: no cover - compiled
    """Rows r..r + mr - 1 of the packed edge sliver xs (_pack_sliver) by the main tile into out (MR x NR), then each
    pixel to its place in y: the FMA chains of a tile in place, so the same bits as when x starts on a line boundary
    and these pixels are in main tiles."""
    ru, ku, nru, mru, zero = np.uint64(r), np.uint64(k), np.uint64(NR), np.uint64(mr), np.uint64(0)
    if mr == MR:
        _pw_tile(wf, xs, out, bias, ru, zero, zero, ku, nru, nru, lo, hi, mru, zero, zero, zero)
    else:
        _pw_tile_edge(wf, xs, out, bias, ru, zero, zero, ku, nru, nru, lo, hi, mru, zero, zero, zero)
    t = NR - h
    for i in range(mr):
        row = y_off + (r + i) * p
        for j in range(t):
            yf[np.uint64(row + p - t + j)] = out[i * NR + j]
        for j in range(h):
            yf[np.uint64(row + j)] = out[i * NR + t + j]


@njit(cache=True, boundscheck=False, inline="always")
def _sliver_row(i, ns, k, c):  # pragma: no cover - compiled
    """Where row c of sliver i (of ns) of a packed chunk starts: (K, NR) slivers one after another; with the paired
    tile (SLIVERS == 2) slivers 2g and 2g + 1 < ns as one (K, 2NR) pair sliver from sliver 2g's place, the second's
    row c NR floats into the pair's (what _tile_row reads when packed)."""
    if SLIVERS == 2 and (i | 1) < ns:
        return (i - i % 2) * k * NR + c * 2 * NR + i % 2 * NR
    return (i * k + c) * NR


@njit(cache=True, boundscheck=False)
def _pack_chunk(xf, x_off, k, p, s_begin, s_end, xp):  # pragma: no cover - compiled
    """xp[((s - s_begin)*k + c)*NR + j] = x[x_off + c*p + s*NR + j] for slivers s_begin <= s < s_end, c < k, j < NR:
    the chunk's main pixels as contiguous (K, NR) slivers, each row of x read once (rows in order: one stream); with
    the paired tile (SLIVERS == 2) slivers s_begin + 2g and s_begin + 2g + 1 < s_end as one (K, 2NR) pair sliver
    from the first one's place (_sliver_row)."""
    ns = s_end - s_begin
    for c in range(k):
        src = x_off + c * p + s_begin * NR
        for s in range(ns):
            d, o = _sliver_row(s, ns, k, c), src + s * NR
            for j in range(NR):
                xp[np.uint64(d + j)] = xf[np.uint64(o + j)]


@njit(cache=True, boundscheck=False, inline="always")
def _task_span(task, plan, ns):  # pragma: no cover - compiled
    """(image n, pixel chunk pc, rows r_begin..r_end - 1, slivers s_begin..s_end - 1) of task `task` (row block
    fastest, then pixel chunk, then image; plan: see PointwiseRunner, ns: the main slivers of an image)."""
    npc, nrb, chunk, block = plan[4], plan[5], plan[6], plan[7]
    rb = task % nrb
    pc = (task // nrb) % npc
    n = task // (nrb * npc)
    r_begin = rb * block
    s_begin = pc * chunk
    return n, pc, r_begin, min(plan[2], r_begin + block), s_begin, min(ns, s_begin + chunk)


@njit(cache=True, boundscheck=False, inline="always")
def _pw_task(xf, wf, bias, yf, plan, lo, hi, xt, h, task, rf, zf, add, sp):  # pragma: no cover - compiled
    """Task `task` (see _pw_worker): image n, pixel chunk pc, row block rb; MR rows at a time, a row tile's edge
    pixels (in the last chunk) then its main tiles. Edge pixels: the h before the first main tile (_head) and the tail
    after the last; when h > 0 they are one packed sliver, else the P % NR pixels of the tail (_dot_tile). Main
    tiles: x in place, or the chunk packed by this task (PACK), or every image's slivers packed once for the whole
    call into sp (SHARED_PACK, _pack_shared)."""
    k, m, p, npc = plan[1], plan[2], plan[3], plan[4]
    ns = (p - h) // NR  # main slivers, from pixel h
    t = p - h - ns * NR  # pixels after them
    n, pc, r_begin, r_end, s_begin, s_end = _task_span(task, plan, ns)
    x_off = n * k * p
    y_off = n * m * p
    flo, fhi = np.float32(lo), np.float32(hi)
    edges = (h > 0 or t > 0) and pc == npc - 1
    shared = plan[11] > 0
    packed = plan[9] > 0 or shared
    xp = sp[(n * ns + s_begin) * k * NR :] if shared else xt[: plan[9]]  # the chunk's slivers (PACK, SHARED_PACK)
    et = xt[plan[9] :]  # the edge pixels and one tile
    out = et[NR * k : NR * k + MR * NR]  # _sliver_edge's tile, after the packed edge pixels
    if shared:  # the edge pixels packed with the slivers
        et = sp[(plan[0] * ns * NR + n * t) * k :]
    if packed and not shared and s_end > s_begin:
        _pack_chunk(xf, x_off + h, k, p, s_begin, s_end, xp)
    if edges and not shared:
        if h > 0:
            _pack_sliver(xf, x_off, k, p, h, et)
        else:
            _pack_edge(xf, x_off, k, p, ns * NR, t, et)
    for r in range(r_begin, r_end, MR):
        mr = min(MR, r_end - r)
        pw = (r + MR) * k if plan[13] > 0 and r + MR < plan[2] else 0  # the next row tile's W, while this one runs
        if edges:  # first: they stream the tile's W rows into L1 for the main tiles' broadcasts
            if h > 0:
                _sliver_edge(wf, et, out, bias, yf, y_off, r, mr, k, p, h, flo, fhi)
            else:
                _edge(wf, et, bias, yf, y_off, r, mr, k, p, ns * NR, t, flo, fhi)
        # in place, the first row tile brings the chunk in (pf); the others find it in L2
        pf = plan[10] if r == r_begin else 0
        src = xp if packed else xf
        xo, yo = x_off + h, y_off + h
        _tile_row(src, wf, bias, yf, xo, packed, yo, r, mr, s_begin, s_end, k, p, flo, fhi, pf, plan[12], pw)
        if add:  # the residual sum of the rows just stored (in L1), over this task's pixels only
            relu = add == ADD_RELU
            for i in range(mr):
                row = y_off + (r + i) * p
                _add_span(yf, rf, zf, row + h + s_begin * NR, row + h + s_end * NR, relu)
                if edges:
                    _add_span(yf, rf, zf, row, row + h, relu)
                    _add_span(yf, rf, zf, row + h + ns * NR, row + p, relu)


@njit(cache=True, boundscheck=False, inline="always")
def _add_span(yf, rf, zf, start, stop, relu):  # pragma: no cover - compiled
    """z[i] = y[i] + r[i] for start <= i < stop (Eltwise SUM's one addition per element: the same bits); relu: then
    0 where the sum is below 0 (the fused ReLU's compare and select, as the tiles' clip: a NaN stays NaN)."""
    if relu:
        zero = np.float32(0.0)
        for i in range(np.uint64(start), np.uint64(stop)):
            v = yf[i] + rf[i]
            zf[i] = zero if v < zero else v  # noqa: FURB136 (max() would turn a NaN sum into 0)
    else:
        for i in range(np.uint64(start), np.uint64(stop)):  # unsigned: no wraparound code, so the loop vectorises
            zf[i] = yf[i] + rf[i]


@njit(cache=True, boundscheck=False, inline="always")
def _tile_row(
    src, wf, bias, yf, x_off, packed, y_off, r, mr, s_begin, s_end, k, p, lo, hi, pf, py, pw
):  # pragma: no cover - compiled
    """The main tiles of rows r.. over slivers s_begin..s_end - 1 of one image: x in place (src the image's x from
    x_off, row stride P), or packed (src the chunk's slivers: sliver s at src[(s - s_begin)*k*NR:], row stride NR;
    with the paired tile slivers s, s + 1 (s - s_begin even) as one (K, 2NR) pair sliver from sliver s's place:
    _pack_chunk, _pack_shared, _pack_im2col). pf: x's prefetch distance (in place only), py: y's, pw: where in w the
    next row tile's weights start (0: none; the first tile prefetches them). One call site of each tile (the body
    compiles each once), and the same FMA chains either way, so the same bits."""
    ru, ku, pu, mru = np.uint64(r), np.uint64(k), np.uint64(p), np.uint64(mr)
    s = s_begin
    while s < s_end:
        two = SLIVERS == 2 and s + 1 < s_end
        xo = np.uint64((s - s_begin) * k * NR if packed else x_off + s * NR)
        xs = np.uint64((2 * NR if two else NR) if packed else p)
        yo = np.uint64(y_off + r * p + s * NR)
        # y's prefetch only within the chunk: past it are another task's pixels (maybe another thread's: a prefetch
        # for writing takes their lines away from it)
        pyu = np.uint64(py if s + py // NR + (2 if two else 1) <= s_end else 0)
        pwu = np.uint64(pw if s == s_begin else 0)
        pfu = np.uint64(0 if packed else pf)
        if mr == MR:
            if two:
                _pw_tile2(wf, src, yf, bias, ru, xo, yo, ku, xs, pu, lo, hi, mru, pfu, pyu, pwu)
            else:
                _pw_tile(wf, src, yf, bias, ru, xo, yo, ku, xs, pu, lo, hi, mru, pfu, pyu, pwu)
        elif two:
            _pw_tile2_edge(wf, src, yf, bias, ru, xo, yo, ku, xs, pu, lo, hi, mru, pfu, pyu, pwu)
        else:
            _pw_tile_edge(wf, src, yf, bias, ru, xo, yo, ku, xs, pu, lo, hi, mru, pfu, pyu, pwu)
        s += 2 if two else 1


@njit(cache=True, boundscheck=False)
def _pack_shared(xf, n_img, k, p, c_begin, c_end, sp):  # pragma: no cover - compiled
    """sp[((n*ns + s)*k + c)*NR + j] = x[n, c, s*NR + j] for rows c_begin <= c < c_end of every image, s < ns = P // NR:
    the main pixels of the whole call as contiguous (K, NR) slivers on 64-byte lines (SHARED_PACK); with the paired
    tile (SLIVERS == 2) slivers 2g and 2g + 1 < ns as one (K, 2NR) pair sliver from sliver 2g's place (x[n, c, 2g*NR
    + j] at sp[(n*ns + 2g)*k*NR + c*2NR + j], j < 2NR); after them, each image's t = P % NR edge pixels one row per
    pixel (as _pack_edge: sp[E + (n*t + j)*k + c], E = N*ns*K*NR)."""
    ns = p // NR
    t = p - ns * NR
    e0 = n_img * ns * k * NR
    for n in range(n_img):
        for c in range(c_begin, c_end):
            src = (n * k + c) * p
            for s in range(ns):
                d = n * ns * k * NR + _sliver_row(s, ns, k, c)
                for j in range(NR):
                    sp[np.uint64(d + j)] = xf[np.uint64(src + s * NR + j)]
            for j in range(t):
                sp[np.uint64(e0 + (n * t + j) * k + c)] = xf[np.uint64(src + ns * NR + j)]


@njit(cache=True, boundscheck=False, inline="always")
def _task_queues(counter, plan):  # pragma: no cover - compiled
    """(items, tasks an item, tasks in each queue) of a call whose tasks are image-major (_task_span): items are the
    images, or with one image its tasks (row blocks only: gemm.image_counters gives such a call queues)."""
    per_image = plan[4] * plan[5]
    items, granule = (plan[0], per_image) if plan[0] > 1 else (per_image, 1)
    return items, granule, queue_sizes(counter, items, granule, 1)


@njit(cache=True, boundscheck=False, inline="always")
def _next_task(counter, items, granule, sizes, ntask):  # pragma: no cover - compiled
    """The next task (gemm.claim_near: from the queue of this thread's CPU first), ntask when none is left."""
    u, i = claim_near(counter, sizes)
    return ntask if u < 0 else u * items // sizes.shape[0] * granule + i


def _pw_worker(t, x, w, bias, y, plan, lo, hi, ws, workers, counter, res, z, add):  # pragma: no cover - compiled
    """Worker t of `workers` (kernels.tasks: one per thread, or one on the calling thread): claims the call's tasks
    (image, pixel chunk, row block; ``gemm.claim``) until none is left; its edge pixels are packed into
    ws[t*plan[8]:], the shared pack (SHARED_PACK, _pw_pack_worker) is ws[workers*plan[8]:]. x, w, y, res, z:
    C-contiguous (N, K, H, W) / (M, K, 1, 1) / (N, M, H, W); plan: see PointwiseRunner."""
    xf, wf, yf, rf, zf = x.reshape(-1), w.reshape(-1), y.reshape(-1), res.reshape(-1), z.reshape(-1)
    ntask = plan[0] * plan[4] * plan[5]
    h = 0 if plan[9] > 0 or plan[11] > 0 else _head(xf, plan[3])
    size = plan[8]
    sp = ws[workers * size :]
    xt = ws[t * size : (t + 1) * size]
    items, granule, sizes = _task_queues(counter, plan)
    task = _next_task(counter, items, granule, sizes, ntask)
    while task < ntask:
        _pw_task(xf, wf, bias, yf, plan, lo, hi, xt, h, task, rf, zf, add, sp)
        task = _next_task(counter, items, granule, sizes, ntask)


def _pw_pack_worker(t, x, plan, ws, workers):  # pragma: no cover - compiled
    """Worker t's share of x's channels packed into the shared slivers (SHARED_PACK), before any task runs."""
    k = plan[1]
    _pack_shared(x.reshape(-1), plan[0], k, plan[3], t * k // workers, (t + 1) * k // workers, ws[workers * plan[8] :])


_F4, _F1, _I1 = nt.float32[:, :, :, ::1], nt.float32[::1], nt.int64[::1]
_PW = Task(
    _pw_worker,
    (_F4, _F4, _F1, _F4, _I1, nt.float64, nt.float64, _F1, nt.int64, _I1, _F4, _F4, nt.int64),
    opt=1,  # explicit vector tiles: -O1 compiles in a fifth less time, same code speed (kernels.tasks)
    compile_s=3.9,
    boundscheck=False,
)
_PW_PACK = Task(_pw_pack_worker, (_F4, _I1, _F1, nt.int64), opt=1, boundscheck=False)


# --------------------------------------------------------------------------------------------- public
_WORKSPACE = Workspace()


def _pair(v, name: str) -> tuple[int, int]:
    if np.isscalar(v):
        return int(v), int(v)
    t = tuple(int(e) for e in v)
    if len(t) != 2:
        raise ValueError(f"pointwise: expected {name} as an int or an (h, w) pair, got {v!r}")
    return t


def pointwise_applies(x_shape, w_shape, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group: int = 1) -> bool:
    """Is this convolution a pointwise one that ``PointwiseRunner`` computes: x (N, K, H, W), w (M, K, 1, 1), stride
    1, pad 0, group 1 (any dilation: a 1x1 kernel has no gaps)?"""
    del dilation
    return (
        len(x_shape) == 4
        and len(w_shape) == 4
        and tuple(w_shape[1:]) == (x_shape[1], 1, 1)
        and _pair(stride, "stride") == (1, 1)
        and _pair(pad, "pad") == (0, 0)
        and int(group) == 1
    )


def _split(n: int, k: int, m: int, p: int, threads: int) -> tuple[int, int, int, int]:
    """(pixel chunks, row blocks, slivers per chunk, rows per block) of one image. A task reads its chunk of x (K rows
    of the chunk's pixels) once per row tile, so a chunk is kept to X_CHUNK_FLOATS (L2); and there should be enough
    tasks for the threads (TASKS_PER_THREAD at most, TASK_MACS each at least). Of the splits that allow, the one that
    re-reads the least: W once per pixel chunk (M*K floats), x once per row block (K*P floats). One image on several
    threads with ROW_TASKS row tiles a thread or more: row blocks over all pixels, one row tile each up to
    TASKS_PER_THREAD a thread (claimed dynamically, so the threads' shares differ by one tile at most)."""
    ns = p // NR
    groups = -(-m // MR)
    units = max(1, -(-ns // SLIVERS))  # main tiles per row tile: chunks at most
    if n == 1 and threads > 1 and groups >= ROW_TASKS * threads:  # one image: row blocks over all its pixels
        block = -(-groups // (TASKS_PER_THREAD * threads)) * MR  # one row tile a task up to 8 a thread (balance)
        return 1, -(-m // block), units * SLIVERS, block
    want = max(1, min(TASKS_PER_THREAD * threads, n * m * k * p // TASK_MACS))
    per_image = -(-want // max(n, 1))
    fewest = min(units, max(1, -(-k * ns * NR // X_CHUNK_FLOATS)))
    best = None
    for chunks in range(fewest, units + 1):
        chunk = -(-units // chunks) * SLIVERS  # slivers per chunk: whole main tiles
        npc = max(1, -(-ns // chunk))
        nrb = min(groups, -(-per_image // npc))
        block = -(-groups // nrb) * MR
        nrb = -(-m // block)
        key = (npc * nrb < per_image, npc * m + nrb * p)
        if best is None or key < best[0]:
            best = (key, npc, nrb, chunk, block)
    return best[1:]


def _aligned_workspace(size: int) -> np.ndarray:
    """This thread's workspace (at least `size` floats) from a 64-byte boundary (float32 buffers start 4-byte aligned):
    the aligned view is kept with the buffer it was cut from (finding the address costs ~1.5 us a call)."""
    buf = _WORKSPACE.buf
    if buf.size < size + NR:
        _WORKSPACE.get(size + NR)
        buf = _WORKSPACE.buf
    cut = getattr(_WORKSPACE, "aligned", None)
    if cut is None or cut[0] is not buf:
        cut = _WORKSPACE.aligned = (buf, buf[(-buf.ctypes.data // 4) % NR :])
    return cut[1]


def add_mode(res, relu: bool, sum_only: bool = False) -> int:
    """The tiles' `add` for a call with the residual `res` (None: 0, no sum) and `relu` (PointwiseRunner,
    pointwise_t.PointwiseTRunner); sum_only (pointwise_t's tiles only) or's in SUM_ONLY: with a sum, z alone is
    written."""
    return 0 if res is None else (ADD_RELU if relu else ADD) | (SUM_ONLY if sum_only else 0)


class PointwiseRunner:
    """A 1x1 convolution forward with everything that depends only on the shapes worked out once; calling it runs the
    compiled kernel with no further checks (like conv.ForwardRunner and depthwise.DepthwiseRunner).

    x_shape (N, K, H, W), w_shape (M, K, 1, 1); act None or (lo, hi), the clip after the bias (ReLU6: (0, 6)).
    ``runner(x, w, bias, y)``: x C-contiguous float32 of x_shape, w C-contiguous float32 of w_shape, bias (M,) float32
    (zeros for none), y the C-contiguous float32 output of ``runner.out_shape`` (N, M, H, W), not overlapping x. The
    thread split follows the thread count when the runner is made. ``runner(x, w, bias, y, res, z)`` also writes
    z = y + res (an Eltwise SUM after the convolution, fused: each row tile's sums while its outputs are in L1); res
    and z of y's shape and layout, z overlapping neither x nor y; res overlapping neither y nor z. With relu=True,
    z = max(y + res, 0) (ResNet's ReLU after the sum; compare and select as the clip: a NaN stays NaN).
    """

    __slots__ = ("lo_hi", "out_shape", "plan", "row_tasks", "serial", "shared", "workers", "ws_size")

    def __init__(self, x_shape, w_shape, act: Act = None) -> None:
        x_shape, w_shape = tuple(int(v) for v in x_shape), tuple(int(v) for v in w_shape)
        if len(x_shape) != 4 or min(x_shape) < 0:
            raise ValueError(f"pointwise: expected x of shape (N, K, H, W), got {x_shape}")
        if len(w_shape) != 4 or w_shape[2:] != (1, 1) or w_shape[1] != x_shape[1]:
            raise ValueError(
                f"pointwise: expected w of shape (M, {x_shape[1]}, 1, 1) for x of {x_shape[1]} channels, got {w_shape}"
            )
        n, k, h, wd = x_shape
        m, p = w_shape[0], h * wd
        self.out_shape = (n, m, h, wd)
        self.lo_hi = check_act(act, "pointwise")
        self.workers = threads = numba.get_num_threads()
        macs = n * m * k * p
        self.serial = threads == 1 or macs < SERIAL_MACS
        npc, nrb, chunk, block = _split(n, k, m, p, 1 if self.serial else threads)
        # floats of a worker's buffer: the packed chunk (PACK; a multiple of NR: slivers stay on 64-byte lines), its
        # edge pixels (NR at most) and one tile, rounded up to whole lines
        big = 4 * n * k * p > PACK_MIN_X_BYTES
        packed = chunk * k * NR if PACK and big and block >= PACK_MIN_ROWS else 0
        # x's rows off the cache lines (P not a multiple of NR), x small: every image's slivers packed once a call
        small_p = NR < p <= SHARED_PACK_MAX_P and p % NR != 0
        shared = n * p * k if SHARED_PACK and not big and small_p else 0  # slivers + edges
        size = -(-(packed + NR * k + MR * NR) // NR) * NR
        # x from memory, or (several threads) partly from the other cores' caches, where the layer before left it
        pf = PREFETCH_FLOATS if 4 * n * k * p > PREFETCH_MIN_X_BYTES or not self.serial else 0
        # plan: images (0: nothing to do), K, M, P, pixel chunks, row blocks, slivers a chunk, rows a block, floats of
        # a worker's buffer, of its packed chunk (PACK), x's prefetch distance, floats of the shared pack, y's prefetch
        # distance, the next row tile's W prefetched (1) or not (0)
        self.plan = np.array(
            [n if m * p else 0, k, m, p, npc, nrb, chunk, block, size, packed, pf, shared, Y_PREFETCH, W_PREFETCH],
            np.int64,
        )
        self.ws_size = size * (1 if self.serial else threads) + shared
        self.shared = shared > 0
        self.row_tasks = nrb if npc == 1 else 0  # one image: its tasks are row blocks (image_counters' queues)

    def __call__(
        self,
        x: np.ndarray,
        w: np.ndarray,
        bias: np.ndarray,
        out: np.ndarray,
        res: np.ndarray | None = None,
        out2: np.ndarray | None = None,
        relu: bool = False,
        sum_only: bool = False,
    ) -> None:
        """sum_only: y may be left unwritten (pointwise_t's tiles then skip it); these tiles sum from y's rows in L1,
        so they write it all the same."""
        add = add_mode(res, relu)
        if not add:
            res = out2 = out  # unread
        ws = _aligned_workspace(self.ws_size)
        lo, hi = self.lo_hi
        workers = 1 if self.serial else self.workers
        if self.shared:
            (_PW_PACK.serial if self.serial else _PW_PACK.parallel)(
                _PW_PACK.address, workers, x, self.plan, ws, workers
            )
        counters = image_counters(int(self.plan[0]), workers, self.row_tasks)
        (_PW.serial if self.serial else _PW.parallel)(
            _PW.address, workers, x, w, bias, out, self.plan, lo, hi, ws, workers, counters, res, out2, add
        )


@njit(cache=True, boundscheck=False)
def _pack_im2col(xf, x_off, toff, wp, ow, sh, sw, k, s_begin, s_end, xp):  # pragma: no cover - compiled
    """xp[((s - s_begin)*k + c)*NR + j] = x_pad[x_off + toff[c] + oh*sh*wp + ow*sw] for output pixel
    p = s*NR + j = oh*OW + ow: the im2col slivers of a chunk (tap c at offset toff[c] in the padded image), built
    where the row tiles read them (L1/L2), not as a whole im2col matrix; in pair slivers with the paired tile
    (_sliver_row)."""
    base = np.empty(NR, np.int64)
    for s in range(s_begin, s_end):
        d0 = _sliver_row(s - s_begin, s_end - s_begin, k, 0)
        rs = _sliver_row(s - s_begin, s_end - s_begin, k, 1) - d0  # floats from one row of the sliver to the next
        q0 = s * NR
        if q0 % ow + NR <= ow and (sw == 1 or sw == 2):  # the sliver within one output row: a (strided) run of x
            b0 = x_off + (q0 // ow) * sh * wp + (q0 % ow) * sw
            for c in range(k):
                src, d = np.uint64(b0 + toff[c]), np.uint64(d0 + c * rs)
                if sw == 1:
                    for j in range(NR):
                        xp[d + np.uint64(j)] = xf[src + np.uint64(j)]
                else:  # stride 2: the even floats of 2 * NR (vector loads and shuffles)
                    for j in range(NR):
                        xp[d + np.uint64(j)] = xf[src + np.uint64(2 * j)]
            continue
        for j in range(NR):
            q = s * NR + j
            base[j] = x_off + (q // ow) * sh * wp + (q % ow) * sw
        for c in range(k):
            t = toff[c]
            d = d0 + c * rs
            for j in range(NR):
                xp[np.uint64(d + j)] = xf[np.uint64(base[j] + t)]


def _im2col_worker(t, x, w, bias, y, plan, geo, toff, lo, hi, ws, counter):  # pragma: no cover - compiled
    """Worker t (kernels.tasks): claims tasks (image, pixel chunk, row block) as _pw_worker, each packing its chunk's
    im2col slivers from the padded image x (N, C, HP, WP) into ws[t*plan[8]:] first; P a multiple of NR (no edge
    pixels). geo: (C*HP*WP, WP, OW, sh, sw)."""
    xf, wf, yf = x.reshape(-1), w.reshape(-1), y.reshape(-1)
    k, m, p, size = plan[1], plan[2], plan[3], plan[8]
    ntask = plan[0] * plan[4] * plan[5]
    ns = p // NR
    flo, fhi = np.float32(lo), np.float32(hi)
    xp = ws[t * size : (t + 1) * size]
    items, granule, sizes = _task_queues(counter, plan)
    task = _next_task(counter, items, granule, sizes, ntask)
    while task < ntask:
        n, _, r_begin, r_end, s_begin, s_end = _task_span(task, plan, ns)
        if s_end > s_begin:
            _pack_im2col(xf, n * geo[0], toff, geo[1], geo[2], geo[3], geo[4], k, s_begin, s_end, xp)
            for r in range(r_begin, r_end, MR):
                mr = min(MR, r_end - r)
                _tile_row(xp, wf, bias, yf, 0, True, n * m * p, r, mr, s_begin, s_end, k, p, flo, fhi, 0, plan[10], 0)
        task = _next_task(counter, items, granule, sizes, ntask)


_IM2COL = Task(
    _im2col_worker,
    (_F4, _F4, _F1, _F4, _I1, _I1, _I1, nt.float64, nt.float64, _F1, _I1),
    opt=1,
    compile_s=2.0,
    boundscheck=False,
)


def im2col_applies(x_shape, w_shape, stride, pad, dilation, group: int) -> bool:
    """Does ``Im2colRunner`` compute this convolution: group 1, pad 0 (pad the image first: ``kernels.pad``), any
    kernel, stride and dilation, output pixels a multiple of 16 per image?"""
    from kernels.conv import conv2d_output_shape

    if len(x_shape) != 4 or len(w_shape) != 4 or int(group) != 1 or w_shape[1] != x_shape[1]:
        return False
    if _pair(pad, "pad") != (0, 0) or min(_pair(stride, "stride")) < 1:
        return False
    try:
        oh, ow = conv2d_output_shape(
            x_shape[2:], w_shape[2:], _pair(stride, "stride"), (0, 0), _pair(dilation, "dilation")
        )
    except ValueError:
        return False
    return oh * ow > 0 and (oh * ow) % NR == 0


class Im2colRunner:
    """A group-1 convolution with pad 0 (``im2col_applies``) on the pointwise tiles: each task builds the im2col
    slivers of its pixel chunk in its own buffer (K = C*kh*kw taps x 16 pixels each) and runs its row tiles over
    them, so no whole im2col matrix goes through memory (EfficientNet-Lite0's stem: K = 27, 12544 pixels). Each
    output is one FMA chain over the taps in (c, i, j) order, then bias and clip, as ``conv``'s im2col + GEMM with
    one K panel computes it. With AVX-512 too, on the paired tile (the slivers packed in (K, 32) pairs). The stem
    alone, 1 thread, CPU time, on an AVX-512 Xeon against ``conv.ForwardRunner`` (on the single-sliver tile then):
    batch 1 0.49 -> 0.30 ms, batch 32 17.9 -> 11.5 ms, the same bits. ``runner(x, w, bias, y)`` as
    ``PointwiseRunner``'s; w (M, C, kh, kw)."""

    __slots__ = ("args", "lo_hi", "out_shape", "plan", "workers", "ws_size")

    def __init__(self, x_shape, w_shape, stride, dilation=(1, 1), act: Act = None) -> None:
        from kernels.conv import conv2d_output_shape

        n, c, hp, wp = (int(v) for v in x_shape)
        m, _, kh, kw = (int(v) for v in w_shape)
        (sh, sw), (dh, dw) = _pair(stride, "stride"), _pair(dilation, "dilation")
        oh, ow = conv2d_output_shape((hp, wp), (kh, kw), (sh, sw), (0, 0), (dh, dw))
        k, p = c * kh * kw, oh * ow
        self.out_shape = (n, m, oh, ow)
        self.lo_hi = check_act(act, "im2col")
        self.workers = threads = numba.get_num_threads()
        npc, nrb, chunk, block = _split(n, k, m, p, threads)
        size = -(-(chunk * k * NR) // NR) * NR
        self.plan = np.array([n if m * p else 0, k, m, p, npc, nrb, chunk, block, size, size, Y_PREFETCH], np.int64)
        self.ws_size = size * threads
        toff = np.array([(ci * hp + i * dh) * wp + j * dw for ci in range(c) for i in range(kh) for j in range(kw)])
        self.args = (np.array([c * hp * wp, wp, ow, sh, sw], np.int64), toff.astype(np.int64))

    def __call__(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray, out: np.ndarray) -> None:
        ws = _aligned_workspace(self.ws_size)
        lo, hi = self.lo_hi
        geo, toff = self.args
        counters = image_counters(int(self.plan[0]), self.workers)
        _IM2COL.parallel(_IM2COL.address, self.workers, x, w, bias, out, self.plan, geo, toff, lo, hi, ws, counters)


def _check_out(arr, shape: tuple[int, ...], name: str) -> np.ndarray:
    """`arr` if it is a writeable C-contiguous float32 array of `shape`, else ValueError naming it."""
    if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != np.float32 or not arr.flags.c_contiguous:
        got = f"{arr.dtype} {arr.shape} (c_contiguous={arr.flags.c_contiguous})" if isinstance(arr, np.ndarray) else arr
        raise ValueError(
            f"pointwise_forward: expected {name} to be a C-contiguous float32 array of shape {shape}, got {got}"
        )
    if not arr.flags.writeable:
        raise ValueError(f"pointwise_forward: {name} is read-only")
    return arr


def pointwise_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, *, act: Act = None, out: np.ndarray | None = None
) -> np.ndarray:
    """1x1 convolution forward (stride 1, pad 0, group 1), float32, with the bias and an optional clip fused.

    x: (N, K, H, W); w: (M, K, 1, 1); b: (M,) or None; act: None, or (lo, hi) for y = min(max(y, lo), hi) (ReLU6:
    (0, 6)). Returns y: (N, M, H, W) float32, written into `out` when given (C-contiguous float32 of that shape, not
    overlapping x).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"pointwise_forward: expected x of rank 4 (N, K, H, W), got shape {x.shape}")
    if w.ndim != 4 or w.shape[1:] != (x.shape[1], 1, 1):
        raise ValueError(
            f"pointwise_forward: expected w of shape (M, {x.shape[1]}, 1, 1) for x of {x.shape[1]} channels, "
            f"got {w.shape}"
        )
    m = w.shape[0]
    if b is not None:
        b = np.ascontiguousarray(b, dtype=np.float32)
        if b.shape != (m,):
            raise ValueError(f"pointwise_forward: expected bias of shape ({m},), got {b.shape}")
    run = PointwiseRunner(x.shape, w.shape, act)
    if out is None:
        out = np.empty(run.out_shape, np.float32)
    else:
        _check_out(out, run.out_shape, "out")
        if np.shares_memory(out, x):
            raise ValueError("pointwise_forward: out shares memory with x; pass a separate out array")
    run(x, w, np.zeros(m, np.float32) if b is None else b, out)
    return out
