"""2-D convolution (Caffe semantics: cross-correlation, zero padding, groups, dilation), NCHW float32.

Kernels (forward, then backward):

0. ``conv2d_forward_ref`` / ``conv2d_backward_ref`` - plain NumPy in float64: one tensordot per kernel offset
                          (i, j) and group, forward and its transpose.
1. ``_im2col_sliver``   - one NR-pixel sliver of im2col, written straight into the packed-B layout of
                          ``kernels.gemm`` (``(ceil(P/NR), K, NR)``, K = C/g*kh*kw, P = OH*OW), so there is no
                          separate im2col matrix and no second packing pass. The source is the image with its
                          padding made explicit (``_pad_copy``, skipped when pad is 0), so every copy is an
                          unclipped gather ``dst[k, j] = src[koff(k) + base(j)]`` through a per-sliver offset table
                          (no clipped runs): 8-pixel runs of one output row as vector copies (stride 1) or loads and
                          a shuffle (stride 2, 4); at stride 1 a sliver over up to 3 output rows as 3 masked loads
                          (``_segments16``); else one float at a time.
1b. ``_im2col_sliver_unpadded`` - the same sliver at stride 1 on outputs 8+ wide (``unpadded_applies``), read from
                          the image itself, its zero border as ``_segments16``'s masks: no padded copy (the
                          one-image path, ``_im2col_unpadded_worker``; the same values). Not in ``_conv_batch_worker``,
                          whose compile it made 1.7 s longer for a gain within noise (CaffeNet at batch 10).
2. ``_conv_batch_worker`` - forward, images claimed one at a time by one worker per thread (``gemm._claim``: dynamic
                          scheduling; each worker owns its workspaces), serial GEMM tiles per image and group: for
                          batches (LeNet 64, CaffeNet 10).
3. ``_im2col_groups_worker`` + ``_conv_tiles_worker`` - forward of one image at a time: im2col slivers over
                          threads, then (group, row block, column block) GEMM tasks claimed by the threads: batch 1
                          and uneven batches.
                          The blocks: ``tile_blocks`` (one group: gemm.blocking's where there are few; several: a
                          group's rows in one block), else MC_CONV x NC_CONV, column blocks shrinking
                          (``_column_block``) where they would leave threads idle (LeNet conv2 at batch 1: 64 output
                          pixels, two tasks of 32 instead of one).
3b. ``_direct_worker`` - forward without im2col where output rows are a multiple of 8 pixels wide at horizontal stride 1
                          and an image fits in L2 (``direct_applies``: LeNet's convolutions): ``_direct_tile``, the
                          GEMM micro-kernel's MR x 16 register tile with B's rows read from the (padded) image through
                          a table of tap offsets, RUNS 8-pixel runs per tile (2, or 4 with AVX-512); tasks (image,
                          part of its pixel tiles). A last block of channels that fills a third or two thirds of MR
                          takes a tile of that many rows (``SHORT_ROWS``; LeNet conv2's 50 = 4 x 12 + 2: at batch 64
                          1.24 -> 1.10 ms, conv1's 20 = 12 + 8: 0.29 -> 0.26 ms, Zen 4, 2 threads).
                          Same bits as im2col + GEMM when K fits one K panel, and faster on LeNet's layers at every
                          batch size (benchmarks/perf_notes.md).
4. ``_bwd_params_worker`` - dW += dy_g @ cols_g^T and db += sum(dy) as (image chunk, group, part of K) tasks over
                          threads: big batches give each thread a chunk of images and its own partial dW (summed at
                          the end); small ones split the columns of dW (parts of K) instead. Several images go into
                          one GEMM (inner dimension nb*P ~ KC: LeNet conv2 6 x 64 pixels) from a transposed packed
                          im2col (``_im2col_t_sliver``: NR kernel offsets per sliver; at stride 1 eight pixels at
                          a time, 8 x 8 transposes in registers, ``_gather_t8``: 46 -> 25 us for LeNet conv2's 6
                          images; with 16-float vectors ``_gather_t16``, both halves of a zmm transposed at once, 32
                          images on one thread 164 -> 127 us; else one gather per pixel) and dy rows packed as A
                          (``_pack_dy_rows``, which also sums db; whole slivers by 8 x 8 transposes: 102 -> 23 us for
                          32 images); a short last row of tiles at its height (LeNet conv2's 50 rows: 4 x 12 + 4, not
                          5 x 12: 164 -> 171 GFLOP/s a core). Where ``conv_dw.applies``
                          (few weights a channel: LeNet's conv1, K = 25) dW and db come from ``conv_dw`` instead,
                          without im2col (LeNet's conv1 at batch 64, 2 threads: 1.08-1.15 -> 0.25 ms).
5. ``_bwd_data_worker`` - dx as (image, group, block of input channels) tasks over threads: dcols = W_g^T @ dy_g for
                          the block's rows (W^T packed once, ``_pack_weights_t``), then ``_col2im`` scatter-adds them
                          into a zeroed (padded) image; channel blocks only when images x groups are fewer than
                          threads. Workspaces are per worker (row t of each workspace array).
3b, 4 and 5 are worker bodies of ``kernels.tasks`` (compiled once as C callbacks, run by a small parallel driver).

The forward reads the weights in place, row-major (M, K) = w.reshape(M, -1), through the micro-kernel's row-offset
mode (``PACK_WEIGHTS = False``: no per-call packing pass);
``_pack_weights`` packs them into MR-row slivers when PACK_WEIGHTS is True. Bias is added when the first K panel
is stored, so the output is written once per K panel and never pre-filled. Workspaces are kept per Python
thread and reused across calls (one set per thread).

Numba caches compiled code per source file: the GEMM constants (MR, NR, KC) are frozen into this module's cache,
so after changing them in ``kernels/gemm.py`` delete ``kernels/__pycache__/conv.*`` as well.

Public: ``conv2d_output_shape(in_hw, kernel, stride, pad, dilation) -> (oh, ow)``,
``conv2d_forward(x, w, b, *, stride, pad, dilation, group, out) -> y`` (``ForwardRunner``: its shape work done
once, kept by a CPU Net's execution plan) and
``conv2d_backward(dy, x, w, *, stride, pad, dilation, group, dx, dw, db, need_dx, need_dw, need_db) -> (dx, dw, db)``.

Benchmark (checks against the reference first, then times each CaffeNet/LeNet layer against torch):
``python -m benchmarks --only layers --filter conv``.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import carray, njit, prange
from numba.core import cgutils, types
from numba.extending import intrinsic

from kernels import conv_dw
from kernels.gemm import (
    Workspace,
    _accumulators,
    _as64,
    _block,
    _claim,
    _copy8,
    _flat_f32,
    _gemm_tiles_serial,
    _pack_rows_sliver,
    _splat,
    _stack_empty,
    _store8_bias,
    _store_accumulators,
    _tpack4,
    _tpack8,
    _transpose8,
    blocking,
    few_blocks,
    packed_a_size,
    packed_b_size,
)
from kernels.tasks import Task
from kernels.tiling import DIRECT_MAX_INPUT, KC, KC_CONV, MC_CONV, MN_DIRECT, MR, NC_CONV, NR, TILE_PX, VW
from kernels.tiling import DIRECT_RUNS as RUNS  # 8-pixel runs per direct-convolution tile


def _make_direct_tile(rows: int):
    """The direct convolution's micro-kernel for `rows` output channels (see _direct_tile)."""

    def tile(typingctx, wp, ao, xp, xo, toff, ntaps, acc):
        _flat_f32(wp, xp, acc)
        sig = types.void(wp, ao, xp, xo, toff, ntaps, acc)

        def codegen(context, builder, signature, args):
            def data(i):  # pointer to the elements of array argument i
                return context.make_array(signature.args[i])(context, builder, args[i]).data

            w_data, ao_data, x_data, xo_data, t_data, acc_data = data(0), data(1), data(2), data(3), data(4), data(6)
            nt_v = args[5]
            f32, i64 = llvm_ir.FloatType(), llvm_ir.IntType(64)
            vptr = llvm_ir.VectorType(f32, 8).as_pointer()
            offs = [_as64(builder, builder.load(builder.gep(ao_data, [llvm_ir.Constant(i64, i)]))) for i in range(rows)]
            xos = [_as64(builder, builder.load(builder.gep(xo_data, [llvm_ir.Constant(i64, v)]))) for v in range(RUNS)]
            nv = RUNS * 8 // VW  # accumulators per channel: one per run (ymm) or per two runs (zmm)
            wvec = llvm_ir.VectorType(f32, VW)
            slots, fma = _accumulators(builder, wvec, nv * rows)  # slot nv*i + v -> acc[i*TILE_PX + v*VW :]
            concat = llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(32), 16), list(range(16)))
            with cgutils.for_range(builder, _as64(builder, nt_v)) as loop:
                t = loop.index
                o = _as64(builder, builder.load(builder.gep(t_data, [t])))
                runs = [
                    builder.load(builder.bitcast(builder.gep(x_data, [builder.add(xos[v], o)]), vptr), align=4)
                    for v in range(RUNS)
                ]
                bv = (
                    runs
                    if VW == 8
                    else [builder.shuffle_vector(runs[2 * h], runs[2 * h + 1], concat) for h in range(nv)]
                )
                for i in range(rows):
                    av = _splat(builder, builder.load(builder.gep(w_data, [builder.add(offs[i], t)])), wvec)
                    for v in range(nv):
                        s_ = slots[nv * i + v]
                        builder.store(builder.call(fma, [av, bv[v], builder.load(s_)]), s_)
            _store_accumulators(builder, slots, acc_data)
            return context.get_dummy_value()

        return sig, codegen

    tile.__name__ = tile.__qualname__ = f"_direct_tile_{rows}"
    return intrinsic(tile)


_direct_tile = _make_direct_tile(MR)
_direct_tile.__doc__ = """acc[i*TILE_PX + v*8 + j] = sum_t wp[ao[i] + t] * xp[xo[v] + toff[t] + j] over taps
    t < ntaps, for i < MR output channels and RUNS runs of 8 output pixels (v < RUNS; each run 8 consecutive floats
    of one input row): the direct convolution's micro-kernel, in LLVM IR like ``kernels.gemm._micro_tile``, with B's
    rows read from the image itself through the tap table toff (toff[t] = c*HP*WP + i*dh*WP + j*dw for tap
    t = (c*kh + i)*kw + j) instead of from a packed im2col. AVX2: 2 runs, twelve <8 x float> accumulators, 6
    broadcasts and 2 vector loads per tap. AVX-512: 4 runs, two zmm of two runs each per channel (24 accumulators),
    12 broadcasts per 24 FMAs."""
# The last channel block of a layer whose channels are not a multiple of MR: a tile of fewer rows instead of a whole
# one that recomputes its last row (LeNet conv2's 50 channels: 4 x 12 + 2, a sixth of its FMAs wasted).
SHORT_ROWS = (MR // 3, 2 * MR // 3)  # zmm: 4 and 8 rows; ymm: 2 and 4
_direct_tile_s1 = _make_direct_tile(SHORT_ROWS[0])
_direct_tile_s2 = _make_direct_tile(SHORT_ROWS[1])


DIRECT = True  # forward: the direct path where it applies (direct_applies); False: always im2col + GEMM
TILE_BLOCKS = True  # forward, one image at a time: tasks' blocks by tile_blocks; False: MC_CONV x NC_CONV blocks
GROUP_ROWS = 256  # tile_blocks: a group's rows in one block up to this many (its weights' K panel: 384 KB at most)
GROUP_COLUMNS = 176  # ... and columns in blocks of at most this many
PACK_WEIGHTS = False  # forward: pack W into MR-row slivers per call (True) or let the micro-kernel read it in place
PAD_IN_IM2COL = True  # one-image im2col at stride 1 from the image itself, its border as masks (unpadded_applies)
CHUNKS = True  # forward of one image: (group, pixel block) tasks, im2col + GEMM each in L2, where chunk_block says
CHUNK_MAX_A = 256 << 10  # ... a group's weights at most this many bytes (read again by every pixel block)
CHUNK_B_BYTES = 192 << 10  # ... a block's packed im2col (K x columns) about this many bytes


def conv2d_geometry(x_shape, w_shape, stride, pad, dilation):
    """Shapes of a convolution: (n, c, h, wd), (m, cg, kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow)."""
    n, c, h, wd = x_shape
    m, cg, kh, kw = w_shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride, "stride"), _pair(pad, "pad"), _pair(dilation, "dilation")
    oh, ow = conv2d_output_shape((h, wd), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    return (n, c, h, wd), (m, cg, kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow)


def _offset_slices(i: int, j: int, kh_step: tuple[int, int], out_hw: tuple[int, int], stride: tuple[int, int]):
    """(rows, cols) slices of the padded input seen by kernel offset (i, j): x_pad[.., i*dh + oh*sh, j*dw + ow*sw]."""
    (dh, dw), (oh, ow), (sh, sw) = kh_step, out_hw, stride
    return slice(i * dh, i * dh + (oh - 1) * sh + 1, sh), slice(j * dw, j * dw + (ow - 1) * sw + 1, sw)


def conv2d_forward_ref(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    *,
    stride=(1, 1),
    pad=(0, 0),
    dilation=(1, 1),
    group: int = 1,
    dtype: type = np.float32,
) -> np.ndarray:
    """Reference convolution computed in float64, returned as `dtype` (float32 unless asked otherwise).

    x: (N, C, H, W); w: (M, C/group, kh, kw); b: (M,) or None. Returns y: (N, M, OH, OW) with
    y[n,m,oh,ow] = b[m] + sum_{c,i,j} w[m,c,i,j] * x_pad[n, g(m)*C/group + c, oh*sh + i*dh, ow*sw + j*dw].
    """
    x64 = np.asarray(x, np.float64)
    w64 = np.asarray(w, np.float64)
    (n, c, h, wd), (m, cg, kh, kw), st, (ph, pw), dil, out_hw = conv2d_geometry(
        x64.shape, w64.shape, stride, pad, dilation
    )
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph : ph + h, pw : pw + wd] = x64
    mg = m // group
    y = np.zeros((n, m, *out_hw))
    for g in range(group):
        xg = xp[:, g * cg : (g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                xs = xg[(slice(None), slice(None), *_offset_slices(i, j, dil, out_hw, st))]
                # (Mg, Cg) . (N, Cg, OH, OW) over Cg -> (Mg, N, OH, OW)
                y[:, g * mg : (g + 1) * mg] += np.tensordot(
                    w64[g * mg : (g + 1) * mg, :, i, j], xs, axes=([1], [1])
                ).transpose(1, 0, 2, 3)
    if b is not None:
        y += np.asarray(b, np.float64).reshape(1, m, 1, 1)
    return y.astype(dtype)


def conv2d_backward_ref(
    dy: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    *,
    stride=(1, 1),
    pad=(0, 0),
    dilation=(1, 1),
    group: int = 1,
    bias: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reference gradients of conv2d_forward_ref in float64: returns (dx, dw, db) as float64 arrays.

    dy: (N, M, OH, OW), the gradient of a scalar loss with respect to y; x: (N, C, H, W); w: (M, C/group, kh, kw).
    dx: (N, C, H, W) = sum over (i, j) of w[:, :, i, j]^T dy scattered back to the input pixels each offset read
    (padding cropped); dw: (M, C/group, kh, kw) = sum_{n,oh,ow} dy * x_pad window; db: (M,) = sum_{n,oh,ow} dy,
    or None when `bias` is False.
    """
    dy64 = np.asarray(dy, np.float64)
    x64 = np.asarray(x, np.float64)
    w64 = np.asarray(w, np.float64)
    (n, c, h, wd), (m, cg, kh, kw), st, (ph, pw), dil, out_hw = conv2d_geometry(
        x64.shape, w64.shape, stride, pad, dilation
    )
    if dy64.shape != (n, m, *out_hw):
        raise ValueError(f"conv2d_backward_ref: expected dy of shape {(n, m, *out_hw)}, got {dy64.shape}")
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph : ph + h, pw : pw + wd] = x64
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w64)
    mg = m // group
    for g in range(group):
        dyg = dy64[:, g * mg : (g + 1) * mg]  # (N, Mg, OH, OW)
        for i in range(kh):
            for j in range(kw):
                win = (slice(None), slice(g * cg, (g + 1) * cg), *_offset_slices(i, j, dil, out_hw, st))
                # (N, Mg, OH, OW) . (N, Cg, OH, OW) over N, OH, OW -> (Mg, Cg)
                dw[g * mg : (g + 1) * mg, :, i, j] = np.tensordot(dyg, xp[win], axes=([0, 2, 3], [0, 2, 3]))
                # (N, Mg, OH, OW) . (Mg, Cg) over Mg -> (N, OH, OW, Cg)
                dxp[win] += np.tensordot(dyg, w64[g * mg : (g + 1) * mg, :, i, j], axes=([1], [0])).transpose(
                    0, 3, 1, 2
                )
    db = dy64.sum(axis=(0, 2, 3)) if bias else None
    return dxp[:, :, ph : ph + h, pw : pw + wd].copy(), dw, db


# --------------------------------------------------------------------------------------------- im2col / col2im
@njit(cache=True, boundscheck=False)
def _pad_copy(xf, x_off, cg, h, wd, ph, pw, dst):
    """dst[:cg*HP*WP] = the cg channels at xf[x_off:] (each (H, W)) inside a zero border of (ph, pw)."""
    hp, wp = h + 2 * ph, wd + 2 * pw
    for t in range(cg * hp * wp):
        dst[t] = 0.0
    for c in range(cg):
        for r in range(h):
            d = (c * hp + ph + r) * wp + pw
            s = x_off + (c * h + r) * wd
            for t in range(wd):
                dst[np.uint64(d + t)] = xf[np.uint64(s + t)]


def _strided8_intrinsic(step: int):
    """dst[d_off + j] = src[s_off + step*j] for j < 8 (step 2 or 4) as whole-vector loads of the 8*step floats and
    one shuffle (LLVM IR): the im2col of a strided convolution's 8 pixels in one output row, without a gather. The
    caller makes sure src holds all 8*step floats."""

    @intrinsic
    def strided8(typingctx, dst, d_off, src, s_off):
        _flat_f32(dst, src)
        sig = types.void(dst, d_off, src, s_off)

        def codegen(context, builder, signature, args):
            d_data = context.make_array(signature.args[0])(context, builder, args[0]).data
            s_data = context.make_array(signature.args[2])(context, builder, args[2]).data
            d0, s0 = _as64(builder, args[1]), _as64(builder, args[3])
            f32, i32, i64 = llvm_ir.FloatType(), llvm_ir.IntType(32), llvm_ir.IntType(64)
            v16 = llvm_ir.VectorType(f32, 16)

            def load16(at):
                ptr = builder.gep(s_data, [builder.add(s0, llvm_ir.Constant(i64, at))])
                return builder.load(builder.bitcast(ptr, v16.as_pointer()), align=4)

            lo = load16(0)
            hi = load16(16) if step == 4 else llvm_ir.Constant(v16, llvm_ir.Undefined)
            mask = llvm_ir.Constant(llvm_ir.VectorType(i32, 8), [step * j for j in range(8)])
            v = builder.shuffle_vector(lo, hi, mask)
            out = builder.bitcast(builder.gep(d_data, [d0]), llvm_ir.VectorType(f32, 8).as_pointer())
            builder.store(v, out, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return strided8


_strided8_2, _strided8_4 = _strided8_intrinsic(2), _strided8_intrinsic(4)


@intrinsic
def _segments16(typingctx, dst, d_off, src, s0, s1, s2, masks):
    """dst[d_off + j] = src[s_g + j] for the lanes j of segment g's 16-bit mask (bits 16g..16g+15 of masks), g < 3,
    zero in the lanes of none (LLVM IR: three llvm.masked.load into one <16 x float>, one store): the im2col of a
    16-pixel sliver at stride 1 that spans up to three output rows (13 x 13 and 14 x 14 maps), where the two 8-pixel
    halves were gathers a float at a time. A lane outside its mask is not read, so s_g + j may lie outside src there."""
    _flat_f32(dst, src)
    sig = types.void(dst, d_off, src, s0, s1, s2, masks)

    def codegen(context, builder, signature, args):
        f32, i16, i32, i64 = llvm_ir.FloatType(), llvm_ir.IntType(16), llvm_ir.IntType(32), llvm_ir.IntType(64)
        vec = llvm_ir.VectorType(f32, 16)
        vptr, mty = vec.as_pointer(), llvm_ir.VectorType(llvm_ir.IntType(1), 16)
        mload = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(vec, [vptr, i32, mty, vec]), "llvm.masked.load.v16f32.p0"
        )
        d_data = context.make_array(signature.args[0])(context, builder, args[0]).data
        s_data = context.make_array(signature.args[2])(context, builder, args[2]).data
        bits = _as64(builder, args[6])
        v = llvm_ir.Constant(vec, [0.0] * 16)
        for g in range(3):
            m = builder.bitcast(builder.trunc(builder.lshr(bits, llvm_ir.Constant(i64, 16 * g)), i16), mty)
            ptr = builder.bitcast(builder.gep(s_data, [_as64(builder, args[3 + g])]), vptr)
            v = builder.call(mload, [ptr, llvm_ir.Constant(i32, 4), m, v])
        out = builder.bitcast(builder.gep(d_data, [_as64(builder, args[1])]), vptr)
        builder.store(v, out, align=4)
        return context.get_dummy_value()

    return sig, codegen


SEGMENTS = True  # im2col at stride 1: a 16-pixel sliver over up to 3 output rows by _segments16 (False: gathers)
STRIDED_RUNS = True  # im2col: 8 pixels of one output row at stride 2 or 4 by _strided8_* (False: a gather)


@njit(cache=True, boundscheck=False, inline="always")
def _run_kind(base, j0, valid, sw, last, size):  # pragma: no cover - compiled
    """How _im2col_sliver copies the 8 pixels j0..j0+7 of a sliver (source offsets base[j0:]) for every k: 1, a vector copy
    where they lie in one output row at stride 1 (8 consecutive source floats: LeNet conv2 at batch 64, every group);
    2 or 4, vector loads of their 16 / 32 source floats and a shuffle at stride 2 / 4 (_strided8_*), where the loads
    stay inside src for every k; else 0, a gather. Only where all 8 pixels are real: past the last one, base repeats
    the last real pixel's offset, and the ends alone could then match a group that spans two output rows."""
    if valid < j0 + 8 or base[j0 + 7] != base[j0] + 7 * sw:
        return 0
    if sw == 1:
        return 1
    if STRIDED_RUNS and (sw == 2 or sw == 4) and last + base[j0] + 8 * sw <= size:
        return sw
    return 0


@njit(cache=True, boundscheck=False)
def _im2col_sliver(src, s_off, hp, wp, cg, kh, kw, sh, sw, dh, dw, ow_n, npix, dst, d_off, s):
    """Sliver s (pixels p = s*NR + j) of the packed im2col of one image and group, into dst[d_off:].

    src[s_off + (c*HP + ih)*WP + iw] is the padded input (HP, WP) of channel c of the group; writes
    dst[d_off + (s*K + k)*NR + j] = src[.., oh*sh + i*dh, ow*sw + jj*dw] for k = (c*kh + i)*kw + jj,
    p = oh*OW + ow, and zero for p >= P.
    """
    base = carray(_stack_empty(NR, np.int64), (NR,))
    valid = min(NR, npix - s * NR)
    for j in range(NR):
        p = s * NR + min(j, valid - 1)
        oh = p // ow_n
        base[j] = s_off + oh * sh * wp + (p - oh * ow_n) * sw
    k_all = cg * kh * kw
    dv = dst[d_off + s * k_all * NR :]
    last = ((cg - 1) * hp + (kh - 1) * dh) * wp + (kw - 1) * dw  # the offset the last k adds: it reads furthest
    kind0 = _run_kind(base, 0, valid, sw, last, src.size)
    kind1 = _run_kind(base, 8, valid, sw, last, src.size)
    # stride 1, not two whole-row runs: the sliver as up to 3 row segments (lane j of segment g reads b_g + j)
    nseg, b0, b1, b2, masks = 0, 0, 0, 0, 0
    if SEGMENTS and sw == 1 and not (kind0 == 1 and kind1 == 1):
        j = 0
        while j < valid:
            oh = (s * NR + j) // ow_n
            jend = min(valid, (oh + 1) * ow_n - s * NR)
            if nseg == 0:
                b0 = base[j] - j
            elif nseg == 1:
                b1 = base[j] - j
            elif nseg == 2:
                b2 = base[j] - j
            if nseg < 3:
                masks |= ((1 << (jend - j)) - 1) << (j + 16 * nseg)
            nseg += 1
            j = jend
    if nseg > 3:
        nseg = 0
    o = 0
    for c in range(cg):
        for i in range(kh):
            row = (c * hp + i * dh) * wp
            for jj in range(kw):
                off = row + jj * dw
                if nseg > 0:
                    _segments16(dv, np.uint64(o), src, off + b0, off + b1, off + b2, masks)
                    o += NR
                    continue
                # Unsigned indices: no negative-index wraparound code, so the copies and gathers vectorise.
                if kind0 == 1:
                    _copy8(dv, np.uint64(o), src, np.uint64(off + base[0]))
                elif kind0 == 4:
                    _strided8_4(dv, np.uint64(o), src, np.uint64(off + base[0]))
                elif kind0 == 2:
                    _strided8_2(dv, np.uint64(o), src, np.uint64(off + base[0]))
                else:
                    for j in range(8):
                        dv[np.uint64(o + j)] = src[np.uint64(off + base[j])]
                if kind1 == 1:
                    _copy8(dv, np.uint64(o + 8), src, np.uint64(off + base[8]))
                elif kind1 == 4:
                    _strided8_4(dv, np.uint64(o + 8), src, np.uint64(off + base[8]))
                elif kind1 == 2:
                    _strided8_2(dv, np.uint64(o + 8), src, np.uint64(off + base[8]))
                else:
                    for j in range(8, 16):
                        dv[np.uint64(o + j)] = src[np.uint64(off + base[j])]
                o += NR
    if valid < NR and nseg == 0:
        for k in range(k_all):
            for j in range(valid, NR):
                dv[k * NR + j] = 0.0


MAX_TAPS_UNPADDED = 64  # _im2col_sliver_unpadded: kernel taps (kh * kw) at most (its tables: 4 x 64 int64 on the stack)
assert 4 * MAX_TAPS_UNPADDED == 256, "_im2col_sliver_unpadded's tap table is 256 entries"


@njit(cache=True, boundscheck=False)
def _im2col_sliver_unpadded(src, s_off, h, wd, ph, pw, cg, kh, kw, dh, dw, ow_n, npix, dst, d_off, s):
    """Sliver s of the packed im2col of a stride-1 convolution (output width ow_n >= 8) read from the image itself,
    not a padded copy: what _im2col_sliver writes from the image with its zero border made explicit, the same values.
    The sliver's 16 pixels lie in up to 3 output rows (segments); for each kernel offset (i, jj), a segment reads the
    input row oh + i*dh - ph, none where that row is outside the image, and the lanes whose columns ow + jj*dw - pw
    fall inside it, zeros elsewhere (_segments16's masks); the offsets and masks made once per (i, jj) and used for
    every channel. src[s_off + (c*H + iy)*W + ix] is the input of channel c of the group."""
    valid = min(NR, npix - s * NR)
    seg = carray(_stack_empty(12, np.int64), (12,))  # per segment: first lane, output row, first column, length
    nseg = 0
    j = 0
    while j < valid:
        p = s * NR + j
        oh = p // ow_n
        ow0 = p - oh * ow_n
        ln = min(valid - j, ow_n - ow0)
        seg[4 * nseg], seg[4 * nseg + 1], seg[4 * nseg + 2], seg[4 * nseg + 3] = j, oh, ow0, ln
        nseg += 1
        j += ln
    taps = kh * kw
    tab = carray(_stack_empty(256, np.int64), (256,))  # per tap (MAX_TAPS_UNPADDED): 3 offsets, the masks
    for i in range(kh):
        for jj in range(kw):
            t = i * kw + jj
            masks = 0
            for g in range(3):
                tab[4 * t + g] = 0
                if g < nseg:
                    j0, oh, ow0, ln = seg[4 * g], seg[4 * g + 1], seg[4 * g + 2], seg[4 * g + 3]
                    iy = oh + i * dh - ph
                    shift = jj * dw - pw  # input column = output column + shift
                    lo, hi = max(ow0, -shift), min(ow0 + ln, wd - shift)
                    if 0 <= iy < h and lo < hi:
                        masks |= ((1 << (hi - lo)) - 1) << (j0 + lo - ow0 + 16 * g)
                        tab[4 * t + g] = s_off + iy * wd + ow0 + shift - j0
            tab[4 * t + 3] = masks
    dv = dst[d_off + s * cg * taps * NR :]
    o = 0
    for c in range(cg):
        off = c * h * wd
        for t in range(taps):
            _segments16(
                dv, np.uint64(o), src, off + tab[4 * t], off + tab[4 * t + 1], off + tab[4 * t + 2], tab[4 * t + 3]
            )
            o += NR


def _im2col_unpadded_worker(t, src, h, wd, ph, pw, group, cg, kh, kw, dh, dw, oh_n, ow_n, bp, b_size,
                            workers):  # fmt: skip  # pragma: no cover - compiled
    """Worker t's share (kernels.tasks) of the packed im2col of every group of one image src (C, H, W, flat, not
    padded: _im2col_sliver_unpadded) into bp[g*b_size:]: (group, sliver) items split evenly."""
    npix = oh_n * ow_n
    nt = (npix + NR - 1) // NR
    total = group * nt
    for q in range(t * total // workers, (t + 1) * total // workers):
        g = q // nt
        _im2col_sliver_unpadded(
            src, g * cg * h * wd, h, wd, ph, pw, cg, kh, kw, dh, dw, ow_n, npix, bp, g * b_size, q - g * nt
        )


def unpadded_applies(stride, kernel, ow_n: int) -> bool:
    """Does the forward take its im2col from the image itself (_im2col_sliver_unpadded), no padded copy? Stride 1, an
    output at least 8 wide (a sliver over at most 3 rows: the kernel's segment table), at most MAX_TAPS_UNPADDED
    taps (its tap table)."""
    return bool(
        PAD_IN_IM2COL and SEGMENTS and tuple(stride) == (1, 1) and ow_n >= 8
        and kernel[0] * kernel[1] <= MAX_TAPS_UNPADDED
    )  # fmt: skip


@njit(cache=True, boundscheck=False)
def _im2col_packed(src, s_off, hp, wp, cg, kh, kw, sh, sw, dh, dw, oh_n, ow_n, dst, d_off):
    """All slivers of one image and group (see _im2col_sliver): dst[d_off:] gets (ceil(P/NR), K, NR)."""
    npix = oh_n * ow_n
    for s in range((npix + NR - 1) // NR):
        _im2col_sliver(src, s_off, hp, wp, cg, kh, kw, sh, sw, dh, dw, ow_n, npix, dst, d_off, s)


@intrinsic
def _gather_t8(typingctx, dst, d_off, src, base, koff, j0):
    """dst[d_off + c*NR + r] = src[base + koff[j0 + r] + c] for r, c < 8: eight runs of 8 floats, from eight offsets
    of a table, stored as eight rows of 8 (an 8 x 8 transpose in registers, LLVM IR); offsets unsigned, nothing
    checked. Eight kernel offsets of a transposed im2col sliver for eight pixels of an output row at stride 1."""
    _flat_f32(dst, src)

    def codegen(context, builder, signature, args):
        d_data = context.make_array(signature.args[0])(context, builder, args[0]).data
        s_data = context.make_array(signature.args[2])(context, builder, args[2]).data
        k_data = context.make_array(signature.args[4])(context, builder, args[4]).data
        d0, b0, j = (_as64(builder, args[i]) for i in (1, 3, 5))
        i64 = llvm_ir.IntType(64)
        v8 = llvm_ir.VectorType(llvm_ir.FloatType(), 8)
        rows = []
        for r in range(8):
            off = builder.load(builder.gep(k_data, [builder.add(j, llvm_ir.Constant(i64, r))]))
            ptr = builder.gep(s_data, [builder.add(b0, _as64(builder, off))])
            rows.append(builder.load(builder.bitcast(ptr, v8.as_pointer()), align=4))
        for c, col in enumerate(_transpose8(builder, rows)):
            ptr = builder.gep(d_data, [builder.add(d0, llvm_ir.Constant(i64, c * NR))])
            builder.store(col, builder.bitcast(ptr, v8.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(dst, d_off, src, base, koff, j0), codegen


@intrinsic
def _gather_t16(typingctx, dst, d_off, src, base, koff):
    """dst[d_off + c*16 + r] = src[base + koff[r] + c] for r < 16, c < 8: sixteen runs of 8 floats, from the sixteen
    offsets of a table, stored as eight rows of 16 (one 64-byte store each), in LLVM IR; offsets unsigned, nothing
    checked. Runs r and r + 8 share a 16-float vector (low and high half), and _transpose8 transposes both halves at
    once: 32 shuffles for 128 floats where two _gather_t8 take 48 (the shuffle port bounds the transposed im2col)."""
    _flat_f32(dst, src)

    def codegen(context, builder, signature, args):
        d_data = context.make_array(signature.args[0])(context, builder, args[0]).data
        s_data = context.make_array(signature.args[2])(context, builder, args[2]).data
        k_data = context.make_array(signature.args[4])(context, builder, args[4]).data
        d0, b0 = _as64(builder, args[1]), _as64(builder, args[3])
        i64, i32 = llvm_ir.IntType(64), llvm_ir.IntType(32)
        v8 = llvm_ir.VectorType(llvm_ir.FloatType(), 8)
        v16 = llvm_ir.VectorType(llvm_ir.FloatType(), 16)

        def run(r):
            off = builder.load(builder.gep(k_data, [llvm_ir.Constant(i64, r)]))
            ptr = builder.gep(s_data, [builder.add(b0, _as64(builder, off))])
            return builder.load(builder.bitcast(ptr, v8.as_pointer()), align=4)

        runs = [run(r) for r in range(16)]
        cat = llvm_ir.Constant(llvm_ir.VectorType(i32, 16), list(range(16)))
        rows = [builder.shuffle_vector(runs[r], runs[r + 8], cat) for r in range(8)]
        for c, col in enumerate(_transpose8(builder, rows)):  # [run 0..7 at c, run 8..15 at c]
            ptr = builder.gep(d_data, [builder.add(d0, llvm_ir.Constant(i64, c * NR))])
            builder.store(col, builder.bitcast(ptr, v16.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(dst, d_off, src, base, koff), codegen


# _im2col_t_sliver: at stride 1, eight pixels at a time by _gather_t16 (16-float vectors) or two _gather_t8 (8-float)
T16_GATHER = VW == 16
T8_GATHER = True  # _im2col_t_sliver: at stride 1, eight pixels at a time by _gather_t8 (False: one gather per pixel)


@njit(cache=True, boundscheck=False)
def _im2col_t_sliver(src, s_off, img_stride, n_imgs, hp, wp, kh, kw, sh, sw, dh, dw, oh_n, ow_n, k_all, dst, d_off, s):
    """Sliver s (kernel offsets k = s*NR + j) of the transposed im2col of n_imgs images, packed as GEMM B.

    src[s_off + img*img_stride + (c*HP + ih)*WP + iw] is the padded input of image img, channel c of the group.
    Writes dst[d_off + q*NR + j] = cols[k, q] for q = (img*OH + oh)*OW + ow < Q = n_imgs*OH*OW, zero for k >= K.
    """
    koff = carray(_stack_empty(NR, np.int64), (NR,))
    valid = min(NR, k_all - s * NR)
    khw = kh * kw
    for j in range(NR):
        k = s * NR + min(j, valid - 1)
        c = k // khw
        i = (k - c * khw) // kw
        koff[j] = (c * hp + i * dh) * wp + (k - c * khw - i * kw) * dw
    q_all = n_imgs * oh_n * ow_n
    dv = dst[d_off:]
    o = 0
    runs = ow_n // 8 if T8_GATHER and sw == 1 else 0  # (NR == 16: one transpose of 16 offsets, or two of 8)
    for img in range(n_imgs):
        for oh in range(oh_n):
            b0 = s_off + img * img_stride + oh * sh * wp
            for r in range(runs):
                if T16_GATHER:
                    _gather_t16(dv, np.uint64(o), src, np.uint64(b0 + 8 * r), koff)
                else:
                    _gather_t8(dv, np.uint64(o), src, np.uint64(b0 + 8 * r), koff, np.uint64(0))
                    _gather_t8(dv, np.uint64(o + 8), src, np.uint64(b0 + 8 * r), koff, np.uint64(8))
                o += 8 * NR
            for ow in range(8 * runs, ow_n):
                b = b0 + ow * sw
                for j in range(NR):
                    dv[np.uint64(o + j)] = src[np.uint64(b + koff[j])]
                o += NR
    if valid < NR:
        for q in range(q_all):
            for j in range(valid, NR):
                dv[q * NR + j] = 0.0


@njit(cache=True, fastmath=True, boundscheck=False)
def _col2im(dcols, npix, cg, kh, kw, sh, sw, dh, dw, oh_n, ow_n, hp, wp, tgt, t_off):
    """tgt[t_off + (c*HP + oh*sh + i*dh)*WP + ow*sw + jj*dw] += dcols[k*P + oh*OW + ow], k = (c*kh + i)*kw + jj.

    Row by row of dcols (consecutive adds never overlap: overlapping ones stall store forwarding), unsigned offsets
    and no views (instead of slicing a view per row).
    """
    k = 0
    for c in range(cg):
        for i in range(kh):
            for jj in range(kw):
                off = t_off + (c * hp + i * dh) * wp + jj * dw
                for oh in range(oh_n):
                    to = np.uint64(off + oh * sh * wp)
                    so = np.uint64(k * npix + oh * ow_n)
                    if sw == 1:
                        for ow in range(ow_n):
                            tgt[to + np.uint64(ow)] += dcols[so + np.uint64(ow)]
                    else:
                        for ow in range(ow_n):
                            tgt[to + np.uint64(ow * sw)] += dcols[so + np.uint64(ow)]
                k += 1


COL2IM_ROW = 16  # _col2im_rows: target rows of at most this many floats (one <16 x float>: a zmm, or two ymm)
COL2IM_CHAINS = 4  # _col2im_rows: channels summed side by side (each row's sum is a chain of dependent adds)


@intrinsic
def _col2im_rows(typingctx, dcols, npix, nc, kh, kw, oh_n, ow_n, th, tw, tgt, t_off):
    """tgt[t_off + (c*th + y)*tw + x] = sum over i < kh, j < kw (in that order, from 0.0) of
    dcols[((c*kh + i)*kw + j)*npix + (y-i)*ow_n + (x-j)] where 0 <= y-i < oh_n and 0 <= x-j < ow_n, for c < nc,
    y < th, x < tw <= COL2IM_ROW: _col2im at stride and dilation 1 into a target it overwrites (no zeroing first),
    each target row summed in a vector register from masked loads of dcols (a lane outside a row adds 0.0, which
    changes no sum) and stored once, COL2IM_CHAINS channels' rows at a time (independent chains of adds): the same
    sums in the same order as zeroing and _col2im, without its overlapping read-modify-writes of the target
    (consecutive taps' rows overlap shifted by a float: store-forwarding stalls)."""
    _flat_f32(dcols, tgt)
    sig = types.void(dcols, npix, nc, kh, kw, oh_n, ow_n, th, tw, tgt, t_off)

    def codegen(context, builder, signature, args):
        f32, i1, i32, i64 = llvm_ir.FloatType(), llvm_ir.IntType(1), llvm_ir.IntType(32), llvm_ir.IntType(64)
        vec = llvm_ir.VectorType(f32, COL2IM_ROW)
        vptr, mty = vec.as_pointer(), llvm_ir.VectorType(i1, COL2IM_ROW)
        ity = llvm_ir.VectorType(i32, COL2IM_ROW)
        mload = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(vec, [vptr, i32, mty, vec]), f"llvm.masked.load.v{COL2IM_ROW}f32.p0"
        )
        mstore = cgutils.get_or_insert_function(
            builder.module,
            llvm_ir.FunctionType(llvm_ir.VoidType(), [vec, vptr, i32, mty]),
            f"llvm.masked.store.v{COL2IM_ROW}f32.p0",
        )
        d_data = context.make_array(signature.args[0])(context, builder, args[0]).data
        t_data = context.make_array(signature.args[9])(context, builder, args[9]).data
        npix_, nc_, kh_, kw_, oh_, ow_, th_, tw_, toff_ = (
            _as64(builder, args[i]) for i in (1, 2, 3, 4, 5, 6, 7, 8, 10)
        )
        zero = llvm_ir.Constant(vec, [0.0] * COL2IM_ROW)
        iota = llvm_ir.Constant(ity, list(range(COL2IM_ROW)))
        four = llvm_ir.Constant(i32, 4)

        def splat32(v):
            return _splat(builder, builder.trunc(v, i32), ity)

        in_row = builder.icmp_unsigned("<", iota, splat32(tw_))  # lanes of a target row
        c64 = functools.partial(llvm_ir.Constant, i64)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(COL2IM_CHAINS)]
        ncb = builder.udiv(builder.add(nc_, c64(COL2IM_CHAINS - 1)), c64(COL2IM_CHAINS))
        last = builder.sub(nc_, c64(1))
        with cgutils.for_range(builder, ncb) as lc:
            c0 = builder.mul(lc.index, c64(COL2IM_CHAINS))
            here = [builder.icmp_unsigned("<", builder.add(c0, c64(u)), nc_) for u in range(COL2IM_CHAINS)]
            # channels c0 .. c0 + CHAINS - 1 side by side (past the last channel: it again, not stored)
            cs = [builder.select(h, builder.add(c0, c64(u)), last) for u, h in enumerate(here)]
            with cgutils.for_range(builder, th_) as ly:
                y = ly.index
                for a in accs:
                    builder.store(zero, a)
                with cgutils.for_range(builder, kh_) as li:
                    i = li.index
                    oh = builder.sub(y, i)  # unsigned: wraps past oh_n when i > y
                    with builder.if_then(builder.icmp_unsigned("<", oh, oh_)):
                        ks = [builder.mul(builder.add(builder.mul(cu, kh_), i), kw_) for cu in cs]
                        with cgutils.for_range(builder, kw_) as lj:
                            j = lj.index
                            lo = splat32(j)
                            mask = builder.and_(
                                in_row,
                                builder.and_(
                                    builder.icmp_unsigned(">=", iota, lo),
                                    builder.icmp_unsigned("<", iota, builder.add(lo, splat32(ow_))),
                                ),
                            )
                            rest = builder.sub(builder.mul(oh, ow_), j)  # lane x reads (k + j)*npix + oh*ow_n + x - j
                            for k0, a in zip(ks, accs):
                                at = builder.add(builder.mul(builder.add(k0, j), npix_), rest)
                                v = builder.call(
                                    mload, [builder.bitcast(builder.gep(d_data, [at]), vptr), four, mask, zero]
                                )
                                builder.store(builder.fadd(builder.load(a), v), a)
                for h, cu, a in zip(here, cs, accs):
                    with builder.if_then(h):
                        row = builder.add(toff_, builder.mul(builder.add(builder.mul(cu, th_), y), tw_))
                        dst = builder.bitcast(builder.gep(t_data, [row]), vptr)
                        builder.call(mstore, [builder.load(a), dst, four, in_row])
        return context.get_dummy_value()

    return sig, codegen


# --------------------------------------------------------------------------------------------- packing
@njit(cache=True, parallel=True, boundscheck=False)
def _pack_weights(w2, group, ap, a_size):
    """Pack each group's rows of w2 (M, K) into MR-row slivers at ap[g*a_size:], (group, sliver) over threads."""
    mg = w2.shape[0] // group
    k_all = w2.shape[1]
    mt = (mg + MR - 1) // MR
    for q in prange(group * mt):
        g = q // mt
        _pack_rows_sliver(w2, g * mg, mg, ap[g * a_size :], MR, q - g * mt, k_all)


def _pack_weights_t_worker(t, w2, group, apt, at_size, workers):  # pragma: no cover - compiled
    """Worker t's share (kernels.tasks) of W_g^T (K x Mg) of every group as GEMM A:
    apt[g*at_size + (s*Mg + r)*MR + i] = w2[g*Mg + r, s*MR + i]."""
    mg = w2.shape[0] // group
    k_all = w2.shape[1]
    st = (k_all + MR - 1) // MR
    for q in range(t * group * st // workers, (t + 1) * group * st // workers):
        g = q // st
        s = q - g * st
        for r in range(mg):
            o = g * at_size + (s * mg + r) * MR
            for i in range(MR):
                k = s * MR + i
                apt[o + i] = w2[g * mg + r, k] if k < k_all else 0.0


_PACK_WEIGHTS_T = Task(
    _pack_weights_t_worker,
    (types.float32[:, ::1], types.int64, types.float32[::1], types.int64, types.int64),
    boundscheck=False,
)


def _pack_weights_t(w2: np.ndarray, group: int, apt: np.ndarray, at_size: int) -> None:
    """`_pack_weights_t_worker` for every group and K block, shared by the threads; w2 (M, K) float32, apt float32."""
    w2 = np.require(w2, np.float32, ["C", "W"])
    workers = max(1, min(numba.get_num_threads(), group * -(-w2.shape[1] // MR)))
    _PACK_WEIGHTS_T.parallel(_PACK_WEIGHTS_T.address, workers, w2, int(group), apt, int(at_size), workers)


TPACK_DY = True  # _pack_dy_rows: whole slivers of dy rows packed by 8 x 8 transposes in registers (False: one by one)


@njit(cache=True, boundscheck=False)
def _pack_dy_rows(dyf, n0, n_imgs, m_all, g0, mg, npix, pack, add_db, dst, db):
    """dy rows of channels g0.. g0+mg of images n0.. as GEMM A (Mg x Q, Q = n_imgs*P), and their sums into db.

    pack: dst[(s*Q + q)*MR + i] = dy[n0 + img, g0 + s*MR + i, p] (q = img*P + p, zero past row mg). A whole sliver
    (MR rows) goes 8 pixels at a time through 8 x 8 transposes in registers (gemm's _tpack8 and, for rows 8-11 of
    a 12-row sliver, _tpack4), the rest element by element (the same values): LeNet conv2's dy at batch 64, 32
    images on one thread, 102 -> 23 us.
    add_db: db[g0 + r] += sum over images and pixels of dy[., g0 + r, .], as 8 running partial sums (pixel p into
    partial p % 8, images in order) added up in a fixed order at the end. The order is written out, not left to
    fastmath: with fastmath LLVM chose the reduction's vector shape per compilation, so a process that compiled the
    kernel and one that loaded it from Numba's cache summed differently (issue 14: trained weights differed by
    up to 7.6e-3 after 400 iterations). The lane-wise partials still vectorise without reassociation.
    """
    if not (pack or add_db):
        return
    q_all = n_imgs * npix
    part = np.zeros(8, np.float32)
    whole = mg // MR if TPACK_DY and MR % 4 == 0 else 0  # slivers of MR real rows, packed by transposes
    p8 = npix - npix % 8
    mrs = np.uint64(MR)
    ld = np.uint64(npix)
    for s in range((mg + MR - 1) // MR):
        if pack and s < whole:
            for img in range(n_imgs):
                src = np.uint64(((n0 + img) * m_all + g0 + s * MR) * npix)
                qb = s * q_all * MR + img * npix * MR
                for i0 in range(0, MR, 8):
                    for p in range(0, p8, 8):
                        d = np.uint64(qb + p * MR + i0)
                        so = src + np.uint64(i0 * npix + p)
                        if i0 + 8 <= MR:
                            _tpack8(dst, d, mrs, dyf, so, ld)
                        else:
                            _tpack4(dst, d, mrs, dyf, so, ld)
                for i in range(MR):
                    for p in range(p8, npix):
                        dst[np.uint64(qb + p * MR + i)] = dyf[np.uint64(src + i * npix + p)]
        for i in range(MR):
            r = s * MR + i
            o = s * q_all * MR + i
            if r >= mg:
                if pack:
                    for q in range(q_all):
                        dst[o + q * MR] = 0.0
                continue
            if not add_db and s < whole:
                continue
            part[:] = 0.0
            for img in range(n_imgs):
                src = ((n0 + img) * m_all + g0 + r) * npix
                qb = o + img * npix * MR
                for p in range(npix):
                    v = dyf[np.uint64(src + p)]
                    part[p & 7] += v
                    if pack and s >= whole:
                        dst[np.uint64(qb + p * MR)] = v
            if add_db:
                db[g0 + r] += ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]))


@njit(cache=True, boundscheck=False)
def _pack_dy_cols(dyf, off, mg, npix, dst):
    """dy (Mg x P at dyf[off:], row stride P) as GEMM B: dst[(s*Mg + r)*NR + j] = dy[r, s*NR + j], zero past P."""
    for s in range((npix + NR - 1) // NR):
        j0 = s * NR
        wdt = min(NR, npix - j0)
        for r in range(mg):
            o = (s * mg + r) * NR
            src = off + r * npix + j0
            for j in range(wdt):
                dst[np.uint64(o + j)] = dyf[np.uint64(src + j)]
            for j in range(wdt, NR):
                dst[o + j] = 0.0


# --------------------------------------------------------------------------------------------- forward drivers
def _conv_batch_worker(t, xf, n_img, c, h, wd, ap, bias, y, ws, pads, counter, group, kh, kw, sh, sw, ph, pw, dh, dw,
                       oh_n, ow_n, a_size, lda, relu, relu_max):  # fmt: skip  # pragma: no cover - compiled
    """Worker t (kernels.tasks: one per thread) of the forward of all images, claimed one at a time (dynamic
    scheduling, ``gemm._claim``); ws[t] is worker t's packed-B workspace and pads[t] its padded-image buffer
    (cg*HP*WP, unused when pad is 0). With relu, each image's output gets max(y, 0) (capped at relu_max) right after
    its GEMMs, while it is still in cache (the fused conv + bias + ReLU).

    xf: the input (N, C, H, W) flat; ap: (group * a_size,) packed weights (or W in place, lda its row length); bias:
    (M,); y: (N*M*OH*OW,) flat output; counter: the workers' task counter; the window (group, kh, kw, sh, sw, ph, pw,
    dh, dw) and output size (OH, OW).
    """
    cg = c // group
    m = bias.shape[0]
    mg = m // group
    k_all = cg * kh * kw
    npix = oh_n * ow_n
    padded = ph > 0 or pw > 0
    hp, wp = h + 2 * ph, wd + 2 * pw
    n = _claim(counter)
    while n < n_img:
        for g in range(group):
            x_off = (n * c + g * cg) * h * wd
            if padded:
                _pad_copy(xf, x_off, cg, h, wd, ph, pw, pads[t])
            src = pads[t] if padded else xf
            _im2col_packed(src, 0 if padded else x_off, hp, wp, cg, kh, kw, sh, sw, dh, dw, oh_n, ow_n, ws[t], 0)
            _gemm_tiles_serial(
                ap[g * a_size :], ws[t], y, (n * m + g * mg) * npix, npix, mg, npix, k_all, False, bias, g * mg, lda
            )
        if relu:
            _relu_span(y, n * m * npix, (n + 1) * m * npix, relu_max)
        n = _claim(counter)


def _im2col_groups_worker(t, src, hp, wp, group, cg, kh, kw, sh, sw, dh, dw, oh_n, ow_n, bp, b_size,
                          workers):  # fmt: skip  # pragma: no cover - compiled
    """Worker t's share (kernels.tasks) of the packed im2col of every group of one padded image src (C, HP, WP, flat)
    into bp[g*b_size:]: (group, sliver) items split evenly (the padding is already in src)."""
    npix = oh_n * ow_n
    nt = (npix + NR - 1) // NR
    total = group * nt
    for q in range(t * total // workers, (t + 1) * total // workers):
        g = q // nt
        _im2col_sliver(
            src, g * cg * hp * wp, hp, wp, cg, kh, kw, sh, sw, dh, dw, ow_n, npix, bp, g * b_size, q - g * nt
        )


def _conv_chunks_worker(t, src, hp, wp, ap, bias, y, ws, counter, group, cg, kh, kw, sh, sw, dh, dw, oh_n, ow_n,
                        a_size, lda, y_off, nc, relu, relu_max):  # fmt: skip  # pragma: no cover - compiled
    """Worker t (kernels.tasks: one per thread) of the forward of one image whose weights fit in L2 (``chunk_block``):
    (group, block of nc output pixels) tasks claimed one at a time (``gemm._claim``), each the block's im2col slivers
    into the worker's own packed-B buffer ws[t] (K x nc floats, in L2) and the block's GEMM right after
    (``_gemm_tiles_serial``: W read in place, every row of the group), then its ReLU. No image-sized im2col goes
    through L3 or memory (CaffeNet's conv1 at batch 1: 4.4 MB written and read back each forward, cold after the fc
    layers' weights went through the caches). The same K panels and micro-kernel as _conv_tiles_worker: the same bits.

    src: the (padded) image, flat (C, HP, WP); ap: W in place (lda its row length) or packed (a_size a group's);
    y: flat output, the image's first at y_off; the window and output size as _im2col_groups_worker's."""
    m = bias.shape[0]
    mg = m // group
    k_all = cg * kh * kw
    npix = oh_n * ow_n
    bn = (npix + nc - 1) // nc
    buf = ws[t]
    task = _claim(counter)
    while task < group * bn:
        g = task // bn
        j0 = (task - g * bn) * nc
        j1 = min(j0 + nc, npix)
        s0 = j0 // NR
        for s in range(s0, (j1 + NR - 1) // NR):  # sliver s at buf[(s - s0) * K * NR:]
            _im2col_sliver(
                src, g * cg * hp * wp, hp, wp, cg, kh, kw, sh, sw, dh, dw, ow_n, npix, buf, -s0 * k_all * NR, s
            )
        c_off = y_off + g * mg * npix + j0
        _gemm_tiles_serial(ap[g * a_size :], buf, y, c_off, npix, mg, j1 - j0, k_all, False, bias, g * mg, lda)
        if relu:
            for i in range(mg):
                _relu_span(y, c_off + i * npix, c_off + i * npix + j1 - j0, relu_max)
        task = _claim(counter)


def _conv_tiles_worker(t, ap, bp, bias, y, counter, a_size, lda, b_size, y_off, group, k_all, npix, nc, mc, workers,
                       relu, relu_max):  # fmt: skip  # pragma: no cover - compiled
    """Worker t (kernels.tasks: one per thread) of the GEMM of every group for one image, claiming (group x row blocks x
    column blocks) tasks (``gemm._claim``), column block fastest; with relu, each task's block of the output gets
    max(y, 0) after its last K panel (the fused conv + bias + ReLU).

    ap: packed weights (or W in place); bp: the packed im2col of every group; counter: the workers' task counter;
    layout (a_size, lda, b_size, y_off: the image's first output); shape (group, K, P, nc, mc, workers), nc x mc the
    columns and rows per task (``tile_blocks``); epilogue (relu, relu_max)."""
    mg = bias.shape[0] // group
    bm = (mg + mc - 1) // mc
    bn = (npix + nc - 1) // nc
    layout = (a_size, lda, b_size, y_off)
    shape = (group, k_all, npix, nc, mc, workers)
    epilogue = (relu, relu_max)
    task = _claim(counter)
    while task < group * bm * bn:
        _conv_tile_task(ap, bp, bias, y, layout, shape, epilogue, task, (mg, bm, bn))
        task = _claim(counter)


@njit(cache=True, boundscheck=False)
def _conv_tile_task(ap, bp, bias, y, layout, shape, epilogue, t, blocks):
    """Task t of _conv_tiles_worker: group g, row block and column block of the output, all K panels, then the ReLU.
    blocks (rows per group, row blocks, column blocks)."""
    a_size, lda, b_size, y_off = layout
    _, k_all, npix, nc, mc, _ = shape
    relu, relu_max = epilogue
    mg, bm, bn = blocks
    g = t // (bm * bn)
    r = t - g * bm * bn
    i0 = (r // bn) * mc
    j0 = (r % bn) * nc
    for pc in range(0, k_all, KC_CONV):
        _block(
            ap[g * a_size :],
            lda,
            bp[g * b_size :],
            0,
            y,
            y_off + g * mg * npix,
            npix,
            mg,
            npix,
            k_all,
            pc,
            min(KC_CONV, k_all - pc),
            i0,
            min(i0 + mc, mg),
            j0,
            min(j0 + nc, npix),
            pc > 0,
            bias,
            g * mg,
            False,
        )
    if relu:
        base = y_off + g * mg * npix
        for i in range(i0, min(i0 + mc, mg)):
            _relu_span(y, base + i * npix + j0, base + i * npix + min(j0 + nc, npix), relu_max)


@njit(cache=True, boundscheck=False, inline="always")
def _relu_span(y, start, stop, hi):  # pragma: no cover - compiled
    """y[start:stop] = ReLU(y), the same expression as kernels.activations' ReLU with slope 0 (same bits), then
    min(., hi) when hi is finite (ReLU6: hi = 6; by compare and select, so a NaN stays NaN)."""
    zero = np.float32(0.0)
    if hi == np.inf:
        for i in range(np.uint64(start), np.uint64(stop)):  # unsigned: no wraparound code, so the loop vectorises
            v = y[i]
            y[i] = max(v, zero) + zero * min(v, zero)
    else:
        cap = np.float32(hi)
        for i in range(np.uint64(start), np.uint64(stop)):
            v = y[i]
            r = max(v, zero) + zero * min(v, zero)
            y[i] = cap if r > cap else r  # noqa: FURB136 - min(r, cap) need not keep a NaN


def _pad_all_worker(t, xf, n_img, c, h, wd, ph, pw, dst, workers):  # pragma: no cover - compiled
    """Worker t's share of the images (kernels.tasks): dst[n*C*HP*WP:] = image n of xf (N, C, H, W) inside a zero
    border of (ph, pw)."""
    size = c * (h + 2 * ph) * (wd + 2 * pw)
    for n in range(t * n_img // workers, (t + 1) * n_img // workers):
        _pad_copy(xf, n * c * h * wd, c, h, wd, ph, pw, dst[n * size :])


def _direct_worker(t, src, w, bias, y, toff, counter, n_img, group, cg, hp, wp, sh, oh, ow, img_stride, per, relu,
                   relu_max):  # fmt: skip  # pragma: no cover - compiled
    """Direct convolution for stride-1 rows of a multiple of 8 output pixels (``_direct_tile``): no im2col. Tasks
    (image, part `q` of its pixel tiles) over threads, `per` parts per image; each walks its 16-pixel tiles (two
    8-pixel runs, each inside one output row) and, per tile, every MR-channel block of every group, so the tile's
    input window stays in L1 and the weights (read in place, row-major (M, K)) in L2. Bias is added in the store;
    with relu, max(y, 0) (capped at relu_max) once the task's tiles are done, over its pixels of every channel (the
    fused conv + bias + ReLU).

    src: flat input, image n at n*img_stride, channel c at c*HP*WP (padded when the layer pads); w: flat (M, K);
    bias: (M,); y: flat (N, M, OH, OW); toff: (K,) tap offsets (see _direct_tile); the geometry (N, group, C/group,
    HP, WP, sh, OH, OW, image stride of src), `per` tasks an image, the epilogue (relu, relu_max). Tasks are claimed
    by one worker per thread (``gemm._claim``, through `counter`); this is worker t (kernels.tasks)."""
    geometry = (n_img, group, cg, hp, wp, sh, oh, ow, img_stride)
    epilogue = (relu, relu_max)
    task = _claim(counter)
    while task < n_img * per:
        _direct_task(src, w, bias, y, toff, geometry, per, epilogue, task)
        task = _claim(counter)


_F1, _F2, _F4, _I1 = types.float32[::1], types.float32[:, ::1], types.float32[:, :, :, ::1], types.int64[::1]
_I, _B, _D = types.int64, types.boolean, types.float64
_CONV_BATCH = Task(
    _conv_batch_worker, (_F1, _I, _I, _I, _I, _F1, _F1, _F1, _F2, _F2, _I1, *(_I,) * 13, _B, _D), boundscheck=False
)
_IM2COL_GROUPS = Task(_im2col_groups_worker, (_F1, *(_I,) * 12, _F1, _I, _I), boundscheck=False)
_IM2COL_UNPADDED = Task(_im2col_unpadded_worker, (_F1, *(_I,) * 12, _F1, _I, _I), boundscheck=False)
_CONV_TILES = Task(_conv_tiles_worker, (_F1, _F1, _F1, _F1, _I1, *(_I,) * 10, _B, _D), boundscheck=False)
_PAD_ALL = Task(_pad_all_worker, (_F1, *(_I,) * 6, _F1, _I), boundscheck=False)
_CONV_CHUNKS = Task(_conv_chunks_worker, (_F1, _I, _I, _F1, _F1, _F1, _F2, _I1, *(_I,) * 14, _B, _D), boundscheck=False)
_DIRECT = Task(
    _direct_worker,
    (_F1, _F1, _F1, _F1, _I1, _I1, *(types.int64,) * 10, types.boolean, types.float64),
    boundscheck=False,
)


@njit(cache=True, boundscheck=False)
def _direct_task(src, w, bias, y, toff, geometry, per, epilogue, task):
    """Task `task` of _direct_worker: part q = task % per of image task // per."""
    _, group, cg, hp, wp, sh, oh_n, ow_n, img_stride = geometry
    relu, relu_max = epilogue
    m = bias.shape[0]
    mg = m // group
    k_all = toff.shape[0]
    npix = oh_n * ow_n
    nrun = npix // 8
    ntile = (nrun + RUNS - 1) // RUNS
    mt = (mg + MR - 1) // MR
    n = task // per
    q = task - n * per
    acc = carray(_stack_empty(MN_DIRECT, np.float32), (MN_DIRECT,))
    ao = carray(_stack_empty(MR, np.uint64), (MR,))
    xo = carray(_stack_empty(RUNS, np.uint64), (RUNS,))
    pv = carray(_stack_empty(RUNS, np.int64), (RUNS,))
    for jt in range(q * ntile // per, (q + 1) * ntile // per):
        nv = min(RUNS, nrun - RUNS * jt)  # runs of this tile that exist (the missing ones recompute the last)
        for v in range(RUNS):
            pv[v] = (RUNS * jt + min(v, nv - 1)) * 8
        for g in range(group):
            xb = n * img_stride + g * cg * hp * wp
            for v in range(RUNS):
                ohv = pv[v] // ow_n
                xo[v] = np.uint64(xb + ohv * sh * wp + (pv[v] - ohv * ow_n))
            for ir in range(mt):
                c0 = g * mg + ir * MR
                mr = min(MR, mg - ir * MR)
                for i in range(MR):
                    ao[i] = np.uint64((c0 + min(i, mr - 1)) * k_all)
                if mr <= SHORT_ROWS[0]:
                    _direct_tile_s1(w, ao, src, xo, toff, np.uint64(k_all), acc)
                elif mr <= SHORT_ROWS[1]:
                    _direct_tile_s2(w, ao, src, xo, toff, np.uint64(k_all), acc)
                else:
                    _direct_tile(w, ao, src, xo, toff, np.uint64(k_all), acc)
                for i in range(mr):
                    row = (n * m + c0 + i) * npix
                    bi = bias[c0 + i]
                    for v in range(nv):
                        _store8_bias(y, np.uint64(row + pv[v]), acc, np.uint64(i * TILE_PX + 8 * v), bi)
    if relu:  # once over the task's pixels of every channel: per 8-pixel run it cost more than LeNet conv1's FMAs
        lo = min(npix, TILE_PX * (q * ntile // per))  # tile jt holds pixels TILE_PX jt .. TILE_PX (jt + 1) - 1
        hi = min(npix, TILE_PX * ((q + 1) * ntile // per))
        for ch in range(m):
            _relu_span(y, (n * m + ch) * npix + lo, (n * m + ch) * npix + hi, relu_max)


def direct_applies(x_shape, w_shape, stride, pad, dilation, group: int = 1) -> bool:
    """Does the forward take the direct path (``_direct_worker``)? Horizontal stride 1, output rows a multiple of 8
    pixels wide (each 8-pixel run one vector of one input row), and one padded image group small enough to stay in
    L2 (DIRECT_MAX_INPUT floats): LeNet's convolutions, small images."""
    (_, _, h, wd), (_, cg, _, _), (_, sw), (ph, pw), _, (oh, ow) = conv2d_geometry(
        x_shape, w_shape, stride, pad, dilation
    )
    return sw == 1 and ow % 8 == 0 and ow > 0 and oh > 0 and cg * (h + 2 * ph) * (wd + 2 * pw) <= DIRECT_MAX_INPUT


# --------------------------------------------------------------------------------------------- backward drivers
def _bwd_params_worker(t, x, dy, group, kh, kw, sh, sw, ph, pw, dh, dw, nb, need_dw, need_db, nchunks, nkp, dwp, dbp,
                       ws_a, ws_b, pads, workers):  # fmt: skip  # pragma: no cover - compiled
    """dW and db, as (image chunk, group, K part) tasks split evenly between `workers` workers (this is worker t,
    kernels.tasks; its buffers are row t of each workspace array): dwp[c] (M*K,) += dy_g @ cols_g^T over chunk c's
    images, in the columns of the task's part of K (slivers of NR kernel offsets); dbp[c] (M,) += sum(dy).

    x: (N, C, H, W); dy: (N, M, OH, OW). Images go nb at a time into one GEMM (inner dimension nb*P); the running
    thread's ws_a, ws_b hold the packed dy rows and transposed im2col, pads its nb padded images (pad > 0).
    Chunks of images give each thread its own partial dW (big batches); parts of K split one chunk (batch 1).
    The window (kh, kw, sh, sw, ph, pw, dh, dw); the split (nb, need_dw, need_db, nchunks, nkp); the workspace (ws_a,
    ws_b, pads).
    """
    n_img, c, h, wd = x.shape
    _, m, oh_n, ow_n = dy.shape
    cg = c // group
    mg = m // group
    k_all = cg * kh * kw
    npix = oh_n * ow_n
    ns = (k_all + NR - 1) // NR
    padded = ph > 0 or pw > 0
    hp, wp = h + 2 * ph, wd + 2 * pw
    xf = x.reshape(-1)
    dyf = dy.reshape(-1)
    total = nchunks * group * nkp
    for q in range(t * total // workers, (t + 1) * total // workers):
        ch = q // (group * nkp)
        g = (q // nkp) % group
        kp = q % nkp
        s0 = kp * ns // nkp
        s1 = (kp + 1) * ns // nkp
        n_end = (ch + 1) * n_img // nchunks
        for n0 in range(ch * n_img // nchunks, n_end, nb):
            cnt = min(nb, n_end - n0)
            q_all = cnt * npix
            # db once per (chunk, group): by the task holding the first part of K
            _pack_dy_rows(dyf, n0, cnt, m, g * mg, mg, npix, need_dw, need_db and kp == 0, ws_a[t], dbp[ch])
            if not need_dw or s1 == s0:
                continue
            x_off = (n0 * c + g * cg) * h * wd
            if padded:
                for img in range(cnt):
                    _pad_copy(xf, x_off + img * c * h * wd, cg, h, wd, ph, pw, pads[t][img * cg * hp * wp :])
            src = pads[t] if padded else xf
            s_off = 0 if padded else x_off
            img_stride = cg * hp * wp if padded else c * h * wd
            for s in range(s0, s1):
                _im2col_t_sliver(
                    src,
                    s_off,
                    img_stride,
                    cnt,
                    hp,
                    wp,
                    kh,
                    kw,
                    sh,
                    sw,
                    dh,
                    dw,
                    oh_n,
                    ow_n,
                    k_all,
                    ws_b[t],
                    (s - s0) * q_all * NR,
                    s,
                )
            n_cols = min(k_all, s1 * NR) - s0 * NR
            # (edges: a short last row of tiles at its height: LeNet conv2's 50 rows as 4 x 12 + 4, not 5 x 12)
            _gemm_tiles_serial(
                ws_a[t], ws_b[t], dwp[ch], g * mg * k_all + s0 * NR, k_all, mg, n_cols, q_all, True, dbp[ch], 0, 0, True
            )


def _bwd_data_worker(t, dy, apt, at_size, zeros, group, cg, h, wd, kh, kw, sh, sw, ph, pw, dh, dw, cb, dx, ws_b, ws_c,
                     pads, workers):  # fmt: skip  # pragma: no cover - compiled
    """dx (N, C, H, W), overwritten, as (image, group, block of cb channels) tasks split evenly between `workers`
    workers (this is worker t, kernels.tasks; its buffers are row t of each workspace array): dcols = rows of
    W_g^T @ dy_g for the block's channels (the running thread's ws_c), then col2im into a zeroed image (its pads
    when pad > 0, cropped into dx; dx itself otherwise), or at stride and dilation 1 with rows of at most COL2IM_ROW
    floats, _col2im_rows, which writes the image's rows whole (no zeroing; the same bits; LeNet conv2's dx at batch
    64 on 1 thread 2.57 -> 2.33 ms).

    apt: W^T of every group packed as GEMM A (at_size each, see _pack_weights_t); zeros: >= ceil(K/MR)*MR zeros;
    cb * kh * kw is a multiple of MR (so blocks start on a sliver of apt), or cb = C/group. The image (group, C/group,
    H, W); the window (kh, kw, sh, sw, ph, pw, dh, dw); the workspace (ws_b, ws_c, pads).
    """
    n_img, m, oh_n, ow_n = dy.shape
    c = cg * group
    mg = m // group
    khw = kh * kw
    npix = oh_n * ow_n
    nblk = (cg + cb - 1) // cb
    padded = ph > 0 or pw > 0
    hp, wp = h + 2 * ph, wd + 2 * pw
    rows = sh == 1 and sw == 1 and dh == 1 and dw == 1 and wp <= COL2IM_ROW  # _col2im_rows: rows in registers
    dyf = dy.reshape(-1)
    dxf = dx.reshape(-1)
    total = n_img * group * nblk
    for q in range(t * total // workers, (t + 1) * total // workers):
        n = q // (group * nblk)
        g = (q // nblk) % group
        c0 = (q % nblk) * cb
        nc = min(cb, cg - c0)
        _pack_dy_cols(dyf, (n * m + g * mg) * npix, mg, npix, ws_b[t])
        _gemm_tiles_serial(
            apt[g * at_size + c0 * khw * mg :], ws_b[t], ws_c[t], 0, npix, nc * khw, npix, mg, False, zeros, 0
        )
        x_off = (n * c + g * cg + c0) * h * wd
        if rows and not padded:
            _col2im_rows(ws_c[t], npix, nc, kh, kw, oh_n, ow_n, h, wd, dxf, x_off)
        elif padded:
            tgt = pads[t]
            if rows:
                _col2im_rows(ws_c[t], npix, nc, kh, kw, oh_n, ow_n, hp, wp, tgt, 0)
            else:
                for i in range(nc * hp * wp):
                    tgt[i] = 0.0
                _col2im(ws_c[t], npix, nc, kh, kw, sh, sw, dh, dw, oh_n, ow_n, hp, wp, tgt, 0)
            for ci in range(nc):
                for r in range(h):
                    src = (ci * hp + ph + r) * wp + pw
                    dst = x_off + (ci * h + r) * wd
                    for i in range(wd):
                        dxf[dst + i] = tgt[src + i]
        else:
            for i in range(nc * h * wd):
                dxf[x_off + i] = 0.0
            _col2im(ws_c[t], npix, nc, kh, kw, sh, sw, dh, dw, oh_n, ow_n, h, wd, dxf, x_off)


_i, _b = types.int64, types.boolean
_BWD_PARAMS = Task(
    _bwd_params_worker,
    (_F4, _F4, *(_i,) * 10, _b, _b, _i, _i, _F2, _F2, _F2, _F2, _F2, _i),
    boundscheck=False,
)
_BWD_DATA = Task(
    _bwd_data_worker,
    (_F4, _F1, _i, _F1, *(_i,) * 13, _F4, _F2, _F2, _F2, _i),
    boundscheck=False,
)


# --------------------------------------------------------------------------------------------- public
_WORKSPACE = Workspace()  # conv's own buffers: separate from gemm's, which an IP layer may use in between


def _pair(v, name: str) -> tuple[int, int]:
    if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return v  # the layers' own form: no conversion on the hot path
    if np.isscalar(v):
        return int(v), int(v)
    t = tuple(int(e) for e in v)
    if len(t) != 2:
        raise ValueError(f"conv2d: expected {name} as an int or an (h, w) pair, got {v!r}")
    return t


def conv2d_output_shape(in_hw, kernel, stride, pad, dilation) -> tuple[int, int]:
    """Output (OH, OW) of a convolution: floor((in + 2*pad - (dilation*(k-1) + 1)) / stride) + 1 per axis.

    Every argument is an (h, w) pair (or an int for both). Raises ValueError if an output size would be <= 0.
    """
    (h, w), (kh, kw) = _pair(in_hw, "in_hw"), _pair(kernel, "kernel")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride, "stride"), _pair(pad, "pad"), _pair(dilation, "dilation")
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(
            f"conv2d: kernel, stride and dilation must be >= 1 and pad >= 0, got kernel {(kh, kw)}, "
            f"stride {(sh, sw)}, pad {(ph, pw)}, dilation {(dh, dw)}"
        )
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    oh = (h + 2 * ph - ext_h) // sh + 1
    ow = (w + 2 * pw - ext_w) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(
            f"conv2d: output would be {oh}x{ow}: input {h}x{w} padded by {(ph, pw)} is smaller than "
            f"the dilated kernel {ext_h}x{ext_w}"
        )
    return oh, ow


def check_conv2d_args(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, group: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"conv2d: expected x of rank 4 (N, C, H, W), got shape {x.shape}")
    if w.ndim != 4:
        raise ValueError(f"conv2d: expected w of rank 4 (M, C/group, kh, kw), got shape {w.shape}")
    m = w.shape[0]
    if group < 1 or m % group:
        raise ValueError(f"conv2d: group must be >= 1 and divide the {m} output channels, got group={group}")
    if x.shape[1] != w.shape[1] * group:
        raise ValueError(
            f"conv2d: expected {w.shape[1] * group} input channels (w.shape[1]*group), got x shape {x.shape}"
        )
    if b is not None and b.shape != (m,):
        raise ValueError(f"conv2d: expected bias of shape ({m},), got {b.shape}")


def _check_out(arr: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """`arr` if it is a C-contiguous float32 array of `shape`, else ValueError naming it."""
    if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != np.float32 or not arr.flags.c_contiguous:
        got = f"{arr.dtype} {arr.shape} (c_contiguous={arr.flags.c_contiguous})" if isinstance(arr, np.ndarray) else arr
        raise ValueError(f"conv2d: expected {name} to be a C-contiguous float32 array of shape {shape}, got {got}")
    if not arr.flags.writeable:
        raise ValueError(f"conv2d: {name} is read-only")
    return arr


def conv2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    *,
    stride=(1, 1),
    pad=(0, 0),
    dilation=(1, 1),
    group: int = 1,
    out: np.ndarray | None = None,
    relu: bool = False,
    relu_max: float = math.inf,
) -> np.ndarray:
    """Convolution forward (Caffe semantics), float32.

    x: (N, C, H, W); w: (M, C/group, kh, kw); b: (M,) or None; stride/pad/dilation: (h, w) pairs or ints.
    Returns y: (N, M, OH, OW) float32, written into `out` when given (C-contiguous float32 of that shape).
    relu: apply a ReLU (negative slope 0) to the output in the same pass (Caffe's conv + in-place ReLU); relu_max:
    with relu, cap it there too, min(max(y, 0), relu_max) (ReLU6: 6.0; inf, the default: no cap).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    b = None if b is None else np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    group = int(group)
    check_conv2d_args(x, w, b, group)
    run = ForwardRunner(x.shape, w.shape, stride, pad, dilation, group, relu, relu_max)
    if out is None:
        out = np.empty(run.out_shape, np.float32)
    else:
        _check_out(out, run.out_shape, "out")
    run(x, w, np.zeros(w.shape[0], np.float32) if b is None else b, out)
    return out


class ForwardRunner:
    """Everything of a forward that depends only on the shapes, worked out once (geometry, workspace sizes, which
    kernel, the thread split); calling it runs the compiled kernels with no further checks. ``conv2d_forward`` makes
    one per call; a CPU Net's execution plan keeps one per layer across calls (``net.net``).

    relu: fuse max(y, 0) into the epilogue; relu_max: with relu, also cap the output there, min(max(y, 0), relu_max)
    (ReLU6: 6; the default inf is the plain ReLU, the same bits as before the cap existed).

    ``runner(x, w, bias, y)``: x C-contiguous float32 of the shape given here, w (M, C/group, kh, kw) C-contiguous
    float32, bias (M,) float32 (zeros for none), y the C-contiguous float32 output of ``runner.out_shape``, not
    overlapping x. The thread split follows the thread count when the runner is made.
    """

    __slots__ = (
        "args",
        "b_size",
        "batch",
        "block",
        "chunks",
        "direct",
        "group",
        "out_shape",
        "relu",
        "relu_max",
        "sizes",
        "unpadded",
        "workers",
    )

    def __init__(
        self, x_shape, w_shape, stride, pad, dilation, group: int, relu: bool, relu_max: float = math.inf
    ) -> None:
        (n, c, h, wd), (m, cg, kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = conv2d_geometry(
            x_shape, w_shape, stride, pad, dilation
        )
        self.out_shape = (n, m, oh, ow)
        self.relu = bool(relu)
        self.relu_max = float(relu_max)
        if not self.relu_max >= 0.0 or (self.relu_max != math.inf and not self.relu):
            raise ValueError(
                f"conv2d: relu_max caps the fused ReLU: expected relu=True and relu_max >= 0 (ReLU6: 6.0), "
                f"got relu={relu!r}, relu_max={relu_max!r}"
            )
        self.group = group
        mg, k_all, npix = m // group, cg * kh * kw, oh * ow
        self.b_size = b_size = packed_b_size(k_all, npix)
        hp, wp = h + 2 * ph, wd + 2 * pw
        threads = numba.get_num_threads()
        self.workers = threads
        self.chunks = 0
        self.block = 0  # one image: pixels per task of _conv_chunks_worker (0: the row-block tasks)
        self.unpadded = False  # one image, row-block tasks: im2col from the image itself (_IM2COL_UNPADDED), no pad
        self.direct = None
        if n * m * npix == 0:
            self.batch, self.sizes, self.args = None, (), ()
        elif DIRECT and direct_applies(x_shape, w_shape, stride, pad, dilation, group):
            # Direct convolution (no im2col): tasks (image, part of its pixel tiles); parts only when images are
            # too few to keep the threads busy.
            self.batch = False
            ntile = -(-npix // TILE_PX)
            per = 1 if n >= 2 * threads else min(ntile, -(-4 * threads // n))
            toff = np.array(
                [(ci * hp + i * dh) * wp + j * dw for ci in range(cg) for i in range(kh) for j in range(kw)], np.int64
            )
            padded = bool(ph or pw)
            self.sizes = (n * c * hp * wp if padded else 0,)
            self.direct = (toff, per, padded, (n, c, h, wd, ph, pw))
            img_stride = c * hp * wp if padded else c * h * wd
            self.args = (n, group, cg, hp if padded else h, wp if padded else wd, sh, oh, ow, img_stride)
        elif n >= 4 * threads or n % threads == 0:  # chunks of images over threads, serial GEMMs per image
            self.batch = True
            self.chunks = chunks = min(threads, n)
            self.sizes = (chunks * b_size, chunks * (cg * hp * wp if ph or pw else 1))
            self.args = (group, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
        else:  # one image at a time: im2col slivers over threads, then (group, row block, column block) GEMM tasks
            self.batch = False
            nc = chunk_block(group, mg, k_all, npix, threads) if CHUNKS else 0
            if nc:  # ... or (group, pixel block) tasks, each its im2col and GEMM in L2
                self.block = nc
                self.sizes = (threads * k_all * nc, c * hp * wp)
                mc = mg
            else:
                self.unpadded = bool(ph or pw) and unpadded_applies((sh, sw), (kh, kw), ow)
                self.sizes = (group * b_size, c * hp * wp if (ph or pw) and not self.unpadded else 1)
                mc, nc = tile_blocks(group, mg, npix, threads)
            window = (kh, kw, sh, sw, ph, pw, dh, dw)
            self.args = (n, c, h, wd, m, group, cg, window, oh, ow, hp, wp, k_all, npix, (mc, nc))

    def __call__(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray, out: np.ndarray) -> None:
        if self.batch is None:
            return
        m, group = w.shape[0], self.group
        if PACK_WEIGHTS:
            k_all = w.size // m
            a_size, lda = packed_a_size(m // group, k_all), 0
            ap = np.empty(group * a_size, np.float32)
            _pack_weights(w.reshape(m, k_all), group, ap, a_size)
        else:  # the weights read in place, row-major (M, K): group g's rows start at g * mg * K
            ap = w.reshape(-1)
            a_size, lda = ap.size // group, ap.size // m
        y = out.reshape(-1)
        if self.direct is not None:
            toff, per, padded, (n, c, h, wd, ph, pw) = self.direct
            xf = x.reshape(-1)
            if padded:
                (src,) = _WORKSPACE.get(*self.sizes)
                workers = max(1, min(self.workers, n))
                _PAD_ALL.parallel(_PAD_ALL.address, workers, xf, n, c, h, wd, ph, pw, src, workers)
            else:
                src = xf
            _DIRECT.parallel(
                _DIRECT.address, self.workers, src, w.reshape(-1), bias, y, toff, np.zeros(1, np.int64), *self.args,
                per, self.relu, self.relu_max
            )  # fmt: skip
            return
        if self.batch:
            ws, pads = _WORKSPACE.get(*self.sizes)
            chunks = self.chunks
            ws, pads = ws.reshape(chunks, self.b_size), pads.reshape(chunks, -1)
            n, c, h, wd = x.shape
            _CONV_BATCH.parallel(
                _CONV_BATCH.address, chunks, x.reshape(-1), n, c, h, wd, ap, bias, y, ws, pads, np.zeros(1, np.int64),
                *self.args, a_size, lda, self.relu, self.relu_max
            )  # fmt: skip
            return
        n, c, h, wd, m, group, cg, window, oh, ow, hp, wp, k_all, npix, (mc, nc) = self.args
        kh, kw, sh, sw, ph, pw, dh, dw = window
        b_size, epilogue = self.b_size, (self.relu, self.relu_max)
        bp, pbuf = _WORKSPACE.get(*self.sizes)
        xf = x.reshape(-1)
        i2c_workers = max(1, min(self.workers, group * -(-npix // NR)))
        for i in range(n):
            if self.unpadded:  # the border as masks in the im2col itself: no padded copy
                img = xf[i * c * h * wd : (i + 1) * c * h * wd]
                _IM2COL_UNPADDED.parallel(
                    _IM2COL_UNPADDED.address, i2c_workers, img, h, wd, ph, pw, group, cg, kh, kw, dh, dw, oh, ow, bp,
                    b_size, i2c_workers
                )  # fmt: skip
                _CONV_TILES.parallel(
                    _CONV_TILES.address, self.workers, ap, bp, bias, y, np.zeros(1, np.int64), a_size, lda, b_size,
                    i * m * npix, group, k_all, npix, nc, mc, self.workers, *epilogue
                )  # fmt: skip
                continue
            if ph or pw:  # a task (on this thread), so that net.replay records it with the calls after it
                img = xf[i * c * h * wd : (i + 1) * c * h * wd]
                _PAD_ALL.serial(_PAD_ALL.address, 1, img, 1, c, h, wd, ph, pw, pbuf, 1)
                src = pbuf
            else:
                src = xf[i * c * h * wd : (i + 1) * c * h * wd]
            if self.block:
                _CONV_CHUNKS.parallel(
                    _CONV_CHUNKS.address, self.workers, src, hp, wp, ap, bias, y, bp.reshape(self.workers, -1),
                    np.zeros(1, np.int64), group, cg, kh, kw, sh, sw, dh, dw, oh, ow, a_size, lda, i * m * npix, nc,
                    *epilogue
                )  # fmt: skip
                continue
            _IM2COL_GROUPS.parallel(
                _IM2COL_GROUPS.address, i2c_workers, src, hp, wp, group, cg, kh, kw, sh, sw, dh, dw, oh, ow, bp, b_size,
                i2c_workers
            )  # fmt: skip
            _CONV_TILES.parallel(
                _CONV_TILES.address, self.workers, ap, bp, bias, y, np.zeros(1, np.int64), a_size, lda, b_size,
                i * m * npix, group, k_all, npix, nc, mc, self.workers, *epilogue
            )  # fmt: skip


def chunk_block(group: int, mg: int, k_all: int, npix: int, threads: int) -> int:
    """Output pixels per task of the one-image chunked forward (``_conv_chunks_worker``), or 0 where it does not
    apply: a group's weights of at most CHUNK_MAX_A bytes (every block reads them again; CaffeNet's conv1: 139 KB,
    its conv3-5 2.6-3.5 MB stay on the row-block tasks) and at least 2 blocks a thread. Blocks are whole slivers of
    NR pixels, about CHUNK_B_BYTES of packed im2col each."""
    if mg * k_all * 4 > CHUNK_MAX_A:
        return 0
    nc = max(NR, CHUNK_B_BYTES // (4 * k_all) // NR * NR)
    return nc if group * -(-npix // nc) >= 2 * threads else 0


def tile_blocks(group: int, mg: int, npix: int, threads: int) -> tuple[int, int]:
    """(rows, columns) of the output blocks _conv_tiles_worker's tasks take for one image. One group: the blocks
    whose tasks end soonest on `threads` threads (``gemm.blocking``, as a GEMM of mg x npix: ResNet-50's 14 x 14 and
    7 x 7 layers at batch 1 were 6 tasks of 3 sizes on 2 threads). Several groups: each group's rows in one block (up
    to GROUP_ROWS), so every column block of its im2col is read once, not once per row block (CaffeNet's conv2 at
    batch 1, 27 x 27, 128 rows a group: 96 + 32 rows read its 3.5 MB im2col twice; 1.02x quiet, 1.25x while the
    machine's memory was busy), and columns in blocks of at most GROUP_COLUMNS, enough of them for the threads.
    Otherwise MC_CONV rows and NC_CONV columns, fewer columns where the tasks would leave threads idle
    (``_column_block``). The values do not depend on it: every output sums the same K panels in the same order."""
    if TILE_BLOCKS and group == 1:
        if few_blocks(mg, npix, threads):  # where gemm.blocking looks for a split of its own
            return blocking(mg, npix, threads)
    elif TILE_BLOCKS and -(-mg // MR) * MR <= GROUP_ROWS:
        slivers = -(-npix // NR)
        bn = max(-(-threads // group), -(-npix // GROUP_COLUMNS))
        return -(-mg // MR) * MR, -(-slivers // bn) * NR
    return MC_CONV, _column_block(group * -(-mg // MC_CONV), npix, threads)


def _column_block(row_tasks: int, npix: int, threads: int) -> int:
    """Columns per _conv_tiles_worker task: NC_CONV, halved (in whole NR slivers) while that many tasks leave threads
    idle."""
    nc = NC_CONV
    while nc > NR and row_tasks * -(-npix // nc) < threads:
        nc = max(NR, (nc // 2 + NR - 1) // NR * NR)
    return nc


def conv2d_backward(
    dy: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    *,
    stride=1,
    pad=0,
    dilation=1,
    group: int = 1,
    dx: np.ndarray | None = None,
    dw: np.ndarray | None = None,
    db: np.ndarray | None = None,
    need_dx: bool = True,
    need_dw: bool = True,
    need_db: bool = True,
    overwrite_dw: bool = False,
    overwrite_db: bool = False,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Convolution backward (Caffe semantics), float32: gradients of a loss L given dy = dL/dy.

    dy: (N, M, OH, OW); x: (N, C, H, W), the forward input; w: (M, C/group, kh, kw); stride/pad/dilation as in
    conv2d_forward. Returns (dx, dw, db):
      dx: (N, C, H, W), OVERWRITTEN: written into `dx` when given, else a new array; None when need_dx is False.
          dx must not share memory with dy.
      dw: (M, C/group, kh, kw), ACCUMULATED: dw += dL/dw (a zeroed array is allocated when dw is None);
          None when need_dw is False.
      db: (M,), ACCUMULATED like dw; None when need_db is False (pass need_db=False for a convolution without bias).
    overwrite_dw / overwrite_db: that output OVERWRITTEN instead, with the values accumulating onto zeros gives (a
    solver's cleared diff, ``Blob.diff_to_overwrite``; on the ``conv_dw`` path written by its tasks, nothing in
    NumPy: a replayed training pass, ``net.train_replay``, runs them without Python).
    Arrays passed in must be C-contiguous float32 of those shapes; passing one whose need_* flag is False is an error.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    group = int(group)
    check_conv2d_args(x, w, None, group)
    (n, _, h, wd), (m, cg, kh, kw), (sh, sw), (ph, pw), (dh, dil_w), (oh, ow) = conv2d_geometry(
        x.shape, w.shape, stride, pad, dilation
    )
    if dy.shape != (n, m, oh, ow):
        raise ValueError(f"conv2d_backward: expected dy of shape {(n, m, oh, ow)} (N, M, OH, OW), got {dy.shape}")
    for name, arr, need in (("dx", dx, need_dx), ("dw", dw, need_dw), ("db", db, need_db)):
        if arr is not None and not need:
            raise ValueError(f"conv2d_backward: {name} was given but need_{name} is False")
    if need_dx:
        dx = np.empty(x.shape, np.float32) if dx is None else _check_out(dx, x.shape, "dx")
        if np.shares_memory(dx, dy):
            raise ValueError("conv2d_backward: dx shares memory with dy; pass a separate dx array")
    if need_dw:
        dw = np.zeros(w.shape, np.float32) if dw is None else _check_out(dw, w.shape, "dw")
    if need_db:
        db = np.zeros(m, np.float32) if db is None else _check_out(db, (m,), "db")
    if dy.size == 0:
        if need_dx:
            dx[...] = 0.0
        if need_dw and overwrite_dw:
            dw[...] = 0.0
        if need_db and overwrite_db:
            db[...] = 0.0
        return dx, dw, db
    mg, k_all, npix = m // group, cg * kh * kw, oh * ow
    hp, wp = h + 2 * ph, wd + 2 * pw
    pad_size = cg * hp * wp if ph or pw else 1
    geom = (kh, kw, sh, sw, ph, pw, dh, dil_w)
    threads = numba.get_num_threads()
    if need_dw and conv_dw.applies(x.shape, w.shape, (sh, sw), (ph, pw), (dh, dil_w), group):
        conv_dw.weight_grad(  # few weights a channel: no im2col
            x, dy, kh, kw, dw, db if need_db else None, overwrite_dw=overwrite_dw, overwrite_db=overwrite_db
        )
        need_dw = need_db = False
    if need_dw and overwrite_dw:  # the im2col path accumulates
        dw[...] = 0.0
    if need_db and overwrite_db:
        db[...] = 0.0
    if need_dw or need_db:
        ns = -(-k_all // NR)
        if n >= 4 * threads or n % threads == 0:  # chunks of images, one partial dW each
            chunks, nkp = min(threads, n), 1
        else:  # one chunk; parts of K (disjoint columns of dW) over threads
            chunks, nkp = 1, min(ns, -(-threads // group))
        nb = max(1, min(KC // npix, -(-n // chunks)))  # images per dW GEMM: inner dimension nb*P up to KC
        a_len, b_len = packed_a_size(mg, nb * npix), -(-ns // nkp) * NR * nb * npix
        ws_a, ws_b, pads = _WORKSPACE.get(threads * a_len, threads * b_len, threads * nb * pad_size)
        direct = chunks == 1  # accumulate straight into dw and db
        dwp = dw.reshape(1, -1) if need_dw and direct else np.zeros((chunks, m * k_all if need_dw else 1), np.float32)
        dbp = db.reshape(1, -1) if need_db and direct else np.zeros((chunks, m), np.float32)
        workspace = (ws_a.reshape(threads, a_len), ws_b.reshape(threads, b_len), pads.reshape(threads, -1))
        _BWD_PARAMS.parallel(
            _BWD_PARAMS.address, threads, x, dy, group, *geom, nb, bool(need_dw), bool(need_db), chunks, nkp, dwp, dbp,
            *workspace, threads
        )  # fmt: skip
        if not direct:
            if need_dw:
                dw2 = dw.reshape(-1)
                for t in range(chunks):
                    dw2 += dwp[t]
            if need_db:
                for t in range(chunks):
                    db += dbp[t]
    if need_dx:
        at_size = packed_a_size(k_all, mg)
        apt = np.empty(group * at_size, np.float32)
        _pack_weights_t(w.reshape(m, k_all), group, apt, at_size)
        zeros = np.zeros(-(-k_all // MR) * MR, np.float32)
        cb = cg  # channels per task: all of the group, or a split when images x groups are too few for the threads
        if n * group < threads:
            unit = MR // math.gcd(kh * kw, MR)  # blocks must start on a packed sliver of W^T: cb*kh*kw % MR == 0
            blocks = -(-threads // (n * group))  # channel blocks per (image, group) to occupy every thread
            per_block = -(-cg // blocks)
            cb = min(cg, -(-per_block // unit) * unit)  # rounded up to the unit
        b_len = packed_b_size(mg, npix)
        pad_len = cb * hp * wp if ph or pw else 1
        ws_b, ws_c, pads = _WORKSPACE.get(threads * b_len, threads * cb * kh * kw * npix, threads * pad_len)
        workspace = (ws_b.reshape(threads, b_len), ws_c.reshape(threads, -1), pads.reshape(threads, pad_len))
        _BWD_DATA.parallel(
            _BWD_DATA.address, threads, dy, apt, at_size, zeros, group, cg, h, wd, *geom, cb, dx, *workspace, threads
        )
    return dx, dw, db
