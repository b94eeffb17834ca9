"""A convolution's weight gradient without im2col, for few weights per output channel (LeNet's conv1: 1 x 5 x 5) or
rows of 8 output columns (LeNet's conv2).

``conv._bwd_params_worker`` computes dW = dy @ cols^T per image from a transposed im2col. With K = C*kh*kw = 25 and
576 output pixels that im2col (one gather per pixel and kernel offset) costs several times the GEMM it feeds: LeNet's
conv1 weight gradient at batch 64 took 1.5 ms on 2 threads (24 GFLOP/s, 0.50x PyTorch).

Here, per output-channel block of MB channels, input channel c and kernel row i, one register tile holds MB x kw
accumulators of VW lanes (VW output columns each); for every image and output row, the tile loads MB rows of dy (VW
pixels each: one vector per channel) and kw vectors of x's row oh + i shifted by j, and does MB * kw FMAs:
acc[m][j] += dy[m, oh, ow:ow+VW] * x[c, oh+i, ow+j:ow+j+VW]. A row's last VW-wide piece is loaded masked (zeros past
OW). After every image and row of the task, each accumulator's lanes are summed (in lane order) into dW[m, c, i, j].
No im2col, no packing; the sums run in another order than the GEMM's (lane-wise, then across lanes), so the bits
differ from ``conv``'s path within float32 rounding (tested against the float64 reference). db = sum(dy) per
channel: per image in VW-lane partial sums, then across lanes, then over the chunk's images.

Rows of 8 columns (LeNet's conv2: 8 x 8 outputs, K = 500) run on 8-lane vectors (with AVX-512 a 16-lane one would
be half padding): there the GEMM's K = 500 does not pay for its im2col (a gather per pixel and kernel offset) either.
LeNet's conv2 weight gradient at batch 64, in-process A/B against the im2col path: 2 threads 1.56 -> 1.21 ms, 1
thread 3.04 -> 2.30 ms (Zen 4 EPYC). Only where 8-lane FMAs run at the rate of 16-lane ones (``NARROW_FAST``: AVX2,
Zen 4): on a Xeon with two 512-bit FMA ports they run at half its peak, and the im2col path wins there.

Tasks (kernels.tasks): chunks of images, one per thread, each with its own partial dW and db (summed in chunk order
by ``fc.sum_rows``'s task), then (channel block, c, i) within the chunk. Applies (``applies``): stride 1,
dilation 1, no padding, one group, kw == KW (5), M a multiple of MB, OW >= 8 (a row fills most of a vector), and K =
C*kh*kw <= MAX_K, or <= MAX_K_NARROW on rows of 8 columns (elsewhere the im2col is cheap against the GEMM, which then
runs at 60-80% of peak).

Public: ``applies(x_shape, w_shape, stride, pad, dilation, group) -> bool`` and ``weight_grad(x, dy, kh, kw, dw,
db)``: dw (M, C, kh, kw) and db (M,) ACCUMULATED (either may be None). Benchmark: ``python -m benchmarks --only
layers --filter "conv1"`` (the bwd(w) row).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels.fc import sum_rows
from kernels.gemm import accumulators, as64, flat_f32, splat
from kernels.tasks import Task
from kernels.tiling import VW

KW = 5  # kernel width the tile is written for (LeNet's 5 x 5)
MB = 5 if VW == 16 else 2  # output channels a tile: MB * KW accumulators + MB dy vectors + 1 x vector <= registers
MAX_K = 64  # C*kh*kw at most, or MAX_K_NARROW for rows of at most 8 columns
MAX_K_NARROW = 512  # LeNet's conv2: K = 500, 8 x 8 outputs (where NARROW_FAST: see there)


def _narrow_fast() -> bool:
    """Do 8-lane FMAs run at the FLOP rate of 16-lane ones on the CPU Numba compiles for? AVX2 (8 lanes is the
    width) and Zen 4 (a 512-bit FMA takes both 256-bit units) yes; a Xeon with two 512-bit FMA ports (Emerald Rapids)
    no: there 8-lane rows run at half its peak, and LeNet conv2's weight gradient at batch 64 took 1.47-1.52 ms on
    2 threads (2.69 on 1) against 1.17-1.29 (1.98) through im2col + GEMM, in-process A/B."""
    from llvmlite import binding
    from numba.core import config

    name = config.CPU_NAME or binding.get_host_cpu_name()
    return VW == 8 or name == "znver4"


NARROW_FAST = _narrow_fast()  # rows of 8 columns (LeNet's conv2) come here only where 8-lane FMAs are not half speed
assert MB * KW + MB + 1 <= (32 if VW == 16 else 16), "accumulators + dy vectors + the x vector fit the registers"


def applies(x_shape, w_shape, stride, pad, dilation, group) -> bool:
    """Whether ``weight_grad`` takes this convolution's weight gradient (see the module docstring)."""
    if len(x_shape) != 4 or len(w_shape) != 4 or int(group) != 1:
        return False
    if tuple(int(v) for v in stride) != (1, 1) or tuple(int(v) for v in dilation) != (1, 1):
        return False
    if tuple(int(v) for v in pad) != (0, 0):
        return False
    n, c, h, wd = (int(v) for v in x_shape)
    m, cg, kh, kw = (int(v) for v in w_shape)
    ow = wd - kw + 1
    k = c * kh * kw
    fits = k <= MAX_K or (NARROW_FAST and ow <= 8 and k <= MAX_K_NARROW)
    return cg == c and kw == KW and m % MB == 0 and ow >= 8 and h >= kh and fits and n > 0


def _lanes(builder, vw: int):
    """The vw-lane float vector type, its pointer, its mask type, zeros, the lane indices 0..vw-1 and
    llvm.masked.load of that type."""
    f32, i32 = llvm_ir.FloatType(), llvm_ir.IntType(32)
    vec = llvm_ir.VectorType(f32, vw)
    vptr, mty = vec.as_pointer(), llvm_ir.VectorType(llvm_ir.IntType(1), vw)
    mload = cgutils.get_or_insert_function(
        builder.module, llvm_ir.FunctionType(vec, [vptr, i32, mty, vec]), f"llvm.masked.load.v{vw}f32.p0"
    )
    zero = llvm_ir.Constant(vec, [0.0] * vw)
    return vec, vptr, zero, llvm_ir.Constant(llvm_ir.VectorType(i32, vw), list(range(vw))), mload


def _rows_codegen(vw: int):
    def codegen(context, builder, signature, args):
        def data(i):
            return context.make_array(signature.args[i])(context, builder, args[i]).data

        xd, dyd, od = data(0), data(4), data(11)
        xo, x_img, wp, dyo, dy_img, npix, ow, oh, nimg, oo = (as64(builder, args[i]) for i in (1, 2, 3, 5, 6, 7, 8, 9,
                                                                                                 10, 12))  # fmt: skip
        f32, i32, i64 = llvm_ir.FloatType(), llvm_ir.IntType(32), llvm_ir.IntType(64)
        vec, vptr, zero, iota, mload = _lanes(builder, vw)

        def c(v):
            return llvm_ir.Constant(i64, v)

        slots, fma = accumulators(builder, vec, MB * KW)  # slot m*KW + j

        def ptr(base, at):
            return builder.bitcast(builder.gep(base, [at]), vptr)

        def tile(xrow, dyrow, q, mask) -> None:  # columns q .. q + vw - 1 of one output row (masked: the last piece)
            def load(base, at):
                if mask is None:
                    return builder.load(ptr(base, at), align=4)
                return builder.call(mload, [ptr(base, at), llvm_ir.Constant(i32, 4), mask, zero])

            dys = [load(dyd, builder.add(builder.add(dyrow, builder.mul(c(m), npix)), q)) for m in range(MB)]
            for j in range(KW):
                xv = load(xd, builder.add(builder.add(xrow, q), c(j)))
                for m in range(MB):
                    s = slots[m * KW + j]
                    builder.store(builder.call(fma, [dys[m], xv, builder.load(s)]), s)

        full = builder.sub(ow, builder.srem(ow, c(vw)))  # columns in whole vectors
        with cgutils.for_range(builder, nimg) as img_loop:
            img = img_loop.index
            with cgutils.for_range(builder, oh) as row_loop:
                r = row_loop.index
                xrow = builder.add(builder.add(xo, builder.mul(img, x_img)), builder.mul(r, wp))
                dyrow = builder.add(builder.add(dyo, builder.mul(img, dy_img)), builder.mul(r, ow))
                with cgutils.for_range_slice(builder, c(0), full, c(vw)) as (q, _):
                    tile(xrow, dyrow, q, None)
                with builder.if_then(builder.icmp_signed("<", full, ow)):
                    left = builder.trunc(builder.sub(ow, full), i32)
                    mask = builder.icmp_signed("<", iota, splat(builder, left, llvm_ir.VectorType(i32, vw)))
                    tile(xrow, dyrow, full, mask)
        reduce = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(f32, [f32, vec]), f"llvm.vector.reduce.fadd.v{vw}f32"
        )
        for k in range(MB * KW):  # an ordered reduction: lane 0, then 1, ... (no reassociation flags)
            total = builder.call(reduce, [llvm_ir.Constant(f32, 0.0), builder.load(slots[k])])
            builder.store(total, builder.gep(od, [builder.add(oo, c(k))]))
        return context.get_dummy_value()

    return codegen


def _make_rows_tile(vw: int):
    @intrinsic
    def rows_tile(typingctx, x, xo, x_img, wp, dy, dyo, dy_img, npix, ow, oh, nimg, out, oo):
        """out[oo + m*KW + j] = sum over images img < nimg, rows r < oh, columns q < ow of dy[dyo + img*dy_img +
        m*npix + r*ow + q] * x[xo + img*x_img + r*wp + q + j], for m < MB and j < KW: MB * KW accumulators of vw
        lanes, summed across lanes at the end and written (not added)."""
        flat_f32(x, dy, out)
        return types.void(x, xo, x_img, wp, dy, dyo, dy_img, npix, ow, oh, nimg, out, oo), _rows_codegen(vw)

    return rows_tile


# vectors of VW lanes; rows of at most 8 columns (LeNet's conv2: 8 x 8) on 8-lane vectors, no lane idle (with
# AVX-512 a 16-lane vector there would be half padding; on Zen 4 an 8-lane FMA also costs half a 16-lane one)
_rows_tile, _rows_tile8 = _make_rows_tile(VW), _make_rows_tile(8)


@intrinsic
def _vsum(typingctx, a, at, count):
    """sum(a[at : at + count]) in VW-lane partial sums (a masked last piece), then across lanes in order."""
    flat_f32(a)
    sig = types.float32(a, at, count)

    def codegen(context, builder, signature, args):
        ad = context.make_array(signature.args[0])(context, builder, args[0]).data
        at, count = as64(builder, args[1]), as64(builder, args[2])
        f32, i32, i64 = llvm_ir.FloatType(), llvm_ir.IntType(32), llvm_ir.IntType(64)
        vec, vptr, zero, iota, mload = _lanes(builder, VW)
        reduce = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(f32, [f32, vec]), f"llvm.vector.reduce.fadd.v{VW}f32"
        )
        acc = cgutils.alloca_once_value(builder, zero)
        vw = llvm_ir.Constant(i64, VW)
        full = builder.sub(count, builder.srem(count, vw))
        with cgutils.for_range_slice(builder, llvm_ir.Constant(i64, 0), full, vw) as (q, _):
            ptr = builder.bitcast(builder.gep(ad, [builder.add(at, q)]), vptr)
            builder.store(builder.fadd(builder.load(acc), builder.load(ptr, align=4)), acc)
        with builder.if_then(builder.icmp_signed("<", full, count)):
            left = builder.trunc(builder.sub(count, full), i32)
            mask = builder.icmp_signed("<", iota, splat(builder, left, llvm_ir.VectorType(i32, VW)))
            ptr = builder.bitcast(builder.gep(ad, [builder.add(at, full)]), vptr)
            v = builder.call(mload, [ptr, llvm_ir.Constant(i32, 4), mask, zero])
            builder.store(builder.fadd(builder.load(acc), v), acc)
        return builder.call(reduce, [llvm_ir.Constant(f32, 0.0), builder.load(acc)])

    return sig, codegen


def _dw_worker(t, x, dy, kh, chunks, dwp, dbp, scratch, workers):  # pragma: no cover - compiled
    """Worker t (kernels.tasks): tasks (chunk, channel block, c, i) split evenly; chunk ch's images ch*N/chunks ..;
    dwp[ch] (M*K,) at (m0 + m, c, i, j) = the tile's sums; the task of c = i = 0 also writes its channels' sum(dy) to
    dbp[ch]. Every element of dwp and dbp is written once (no zeroed partials: the bits of += on zeros, as a sum from
    +0.0 is never -0.0). scratch[t]: the tile's MB * KW sums."""
    n_img, c_in, h, wd = x.shape
    _, m_out, oh, ow = dy.shape
    kk = c_in * kh * KW
    npix = oh * ow
    nblk = m_out // MB
    per_chunk = nblk * c_in * kh
    total = chunks * per_chunk
    xf = x.reshape(-1)
    dyf = dy.reshape(-1)
    out = scratch[t]
    for task in range(t * total // workers, (t + 1) * total // workers):
        ch = task // per_chunk
        rest = task % per_chunk
        blk = rest // (c_in * kh)
        ci = (rest // kh) % c_in
        i = rest % kh
        n0 = ch * n_img // chunks
        n1 = (ch + 1) * n_img // chunks
        m0 = blk * MB
        xo = (n0 * c_in + ci) * h * wd + i * wd
        dyo = (n0 * m_out + m0) * npix
        if ow <= 8:
            _rows_tile8(xf, xo, c_in * h * wd, wd, dyf, dyo, m_out * npix, npix, ow, oh, n1 - n0, out, 0)
        else:
            _rows_tile(xf, xo, c_in * h * wd, wd, dyf, dyo, m_out * npix, npix, ow, oh, n1 - n0, out, 0)
        for m in range(MB):
            base = (m0 + m) * kk + (ci * kh + i) * KW
            for j in range(KW):
                dwp[ch, base + j] = out[m * KW + j]
        if ci == 0 and i == 0:
            for m in range(m0, m0 + MB):
                s = np.float32(0.0)
                for img in range(n0, n1):
                    s += _vsum(dyf, (img * m_out + m) * npix, npix)
                dbp[ch, m] = s


_F4, _F2 = types.float32[:, :, :, ::1], types.float32[:, ::1]
_DW = Task(_dw_worker, (_F4, _F4, types.int64, types.int64, _F2, _F2, _F2, types.int64), opt=1, boundscheck=False)


def weight_grad(
    x: np.ndarray,
    dy: np.ndarray,
    kh: int,
    kw: int,
    dw: np.ndarray | None,
    db: np.ndarray | None,
    *,
    overwrite_dw: bool = False,
    overwrite_db: bool = False,
) -> None:
    """dw += dL/dw (M, C, kh, kw) and db += dL/db (M,) of a convolution that ``applies`` (x (N, C, H, W) and dy (N, M,
    OH, OW) C-contiguous float32); either output may be None (not computed: db's sums are cheap, dw's are the work);
    overwrite_dw / overwrite_db: that output written instead (the bits += gives on zeros). The chunks' partial sums
    are added in chunk order by ``fc.sum_rows``, a task: nothing here runs in NumPy on the data, so a replayed
    training pass (``net.train_replay``) does all of it."""
    if kw != KW:  # pragma: no cover - applies() checks it
        raise ValueError(f"conv_dw: kernel width {kw}, expected {KW}")
    n, m = x.shape[0], dy.shape[1]
    threads = numba.get_num_threads()
    chunks = max(1, min(threads, n))
    kk = x.shape[1] * kh * kw
    dwp = np.empty((chunks, m * kk), np.float32)  # every element written by the task
    dbp = np.empty((chunks, m), np.float32)
    scratch = np.empty((threads, MB * KW), np.float32)
    if threads > 1:
        _DW.parallel(_DW.address, threads, x, dy, int(kh), chunks, dwp, dbp, scratch, threads)
    else:
        _DW.serial(_DW.address, 1, x, dy, int(kh), chunks, dwp, dbp, scratch, 1)
    if dw is not None:  # chained: ((dw + p0) + p1) ..., the order the chunks' sums were always added in
        sum_rows(dwp, dw.reshape(-1), overwrite_dw, chain=True)
    if db is not None:
        sum_rows(dbp, db, overwrite_db, chain=True)
