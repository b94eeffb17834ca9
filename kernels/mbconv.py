"""An inverted-residual block's expand 1x1 convolution and the depthwise convolution after it, in one pass (AVX-512).

EfficientNet's and MobileNet v2's blocks widen the channels with a 1x1 convolution (the expand, a BatchNorm and a
ReLU6 folded in), run a depthwise kxk convolution on the wide tensor, and project back. Run as two steps, the wide
tensor goes out to memory and comes back: EfficientNet-Lite0's 96 x 112 x 112 (4.8 MB an image) after block 1's
expand does not fit a core's L2, so the depthwise step reads it from L3 (batch 1) or from memory (batch 32: 154 MB),
and runs at the memory's speed, not its tiles' (block 1's 112 x 112 stride-2 layer: 0.12 ms at batch 1, 8 ms at batch
32, 2 threads, Zen 4; its tiles do the same work from L2 in half that).

Here one task is (image, one or two blocks of LANES = 16 expand channels, band of output rows): the expand's
``pointwise_t`` tiles (14 or 7 pixels x 16 or 32 channels, output channels in the lanes) compute the band's input
rows (its output rows' window, a halo of k - 1 rows or so shared with the next band and computed by both) for the
task's channels and store them, clipped, straight into this worker's own padded block buffers (``depthwise.PaddedInput``'s layout: a
pixel's 16 channels one aligned vector, the zero border written once a call); the depthwise's block tiles
(``depthwise._block_tile``) then read that buffer, still in L2, and write the band's outputs, in planes or in the
interleaved blocks the projection after reads (``depthwise.Handoff``). The wide tensor is never stored whole.

Bands: the count that gives the threads the least work each, halo rows counted (at batch 1: 9 blocks of 56 x 56 in
two bands each, 18 tasks for 2 threads, not 5 and 4), and more where a band's input rows of a task's blocks pass
BAND_BYTES (112 x 112: the x rows the expand reads and the buffer rows it writes both stay in L2). Tasks go
band-major: with one image, each CPU's queue (``gemm.claim_near``) holds its share of the bands, the rows that the 1x1
steps before and after (``pointwise_t``, chunk-major) read and write on the same core (EfficientNet-Lite0, batch 1,
2 threads, two plans alternated in one process: 1.013 / 1.030x and 1.035 / 1.032x min / median against
block-major tasks).

The numbers: each expand output is its tile's FMA chain over k from 0, + bias, clip (the bits ``pointwise_t`` and
``pointwise`` give it), and each depthwise output its block tile's chain over the block's taps (the bits of the
depthwise's channel-block path): the same bits as the two steps (tested). Weights: the expand's packed once per array
in panels of 16 or 32 channels (``pointwise_t.pack``; two blocks a task wherever there are PAIR_TASKS such tasks a
thread: the 7 x 7 layers had lost 10% on 16-channel tiles), the depthwise's tap tables once per array
(``depthwise._c8_tables``); both must not change in place (``ConvolutionLayer.frozen``: folded, or Net.freeze).
The expand's top blob keeps its place in the plan's arena (the layer's own forward writes it when the fused step
refuses), unwritten otherwise.

Speed (Zen 4 EPYC, 2 threads, batch 1): block 1's pair, per step in the net, 0.43 -> 0.29 ms; EfficientNet-Lite0,
two plans alternated in one process (``net.plan_steps.FUSE_EXPAND`` off / on): 1.02x at batch 1, 1.02-1.04x at 32;
figures in benchmarks/perf_notes.md (twelfth round).

The next step's weights (the projection's packed panels, ``ExpandDepthwiseRunner.ahead``, set by
``net.plan_steps.prefetch_ahead``): the expand's tile pairs after a task's first prefetch a share of them into L2, as
``pointwise_t``'s tiles do for theirs, so the projection finds them in the caches (prefetches only: the same bits).

Public: ``applies(x_shape, w1_shape, dw_runner) -> bool`` and ``ExpandDepthwiseRunner(x_shape, w1_shape, act1,
dw_runner)``, called as ``runner(x, w1, b1, w2, b2, y)``: x (N, K, H, W) the expand's input, w1 (C, K, 1, 1), b1 (C,),
w2 (C, 1, kh, kw), b2 (C,) the depthwise's, y the depthwise's output (N, C, OH, OW) (or its interleaved blocks, when
the plan set ``dw_runner.handoff``); x may come in blocks of 16 channels interleaved per pixel instead
(``runner.x_blocks``, a ``depthwise.PaddedInput.unpadded`` the 1x1 step before writes and marks ready: set by
``net.plan_steps.hand_over_projection``; the tiles then read a pixel's 16 channels on one line). Used by
``net.plan_steps.fuse_expand_depthwise``.

The same pass for a convolution on ``pointwise_t``'s convolution tiles (32 output channels, on the image with a zero
border that each task writes around its band's rows in its own buffer) and the depthwise after it:
``conv_applies(x_shape, w1_shape, stride, dw_runner, pad)`` and ``ConvDepthwiseRunner(x_shape, w1_shape, stride,
act1, dw_runner, pad)``, called as ``runner(x, w1, b1, w2, b2, y)`` (EfficientNet-Lite0's stem and block 0's
depthwise: ``net.plan_steps.fuse_conv_depthwise``).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types

from kernels import pointwise_t
from kernels.depthwise import LANES, DepthwiseRunner, _block_tile, _c8_tables, _zero_block_border, check_act
from kernels.gemm import Workspace, _copy_run, claim_near, image_counters, queue_sizes
from kernels.pointwise_t import (
    NP,
    P_PREFETCH,
    X_PREFETCH,
    _ctile2w,
    _ctile2w_s2,
    _ptile1,
    _ptile1w,
    _ptile2,
    _ptile2w,
    ahead_at,
    pack,
)
from kernels.tasks import Task

ENABLED = pointwise_t.ENABLED  # AVX-512: the expand's 16-lane tiles
BAND_BYTES = 512 << 10  # a band's input rows of a task's blocks (their padded buffer rows) at most, where bands split
PAIR_TASKS = 1  # tasks of two blocks (32 channels: pointwise_t's tiles of 28 accumulators) from this many a thread
# (the bands split the rows for balance). From 4 to 1, EfficientNet-Lite0's blocks 1-5 (96-240 channels, 112 x 112 to
# 28 x 28) on pairs too, at batch 1: two nets alternated in one process, the Emerald Rapids Xeon, 2 threads 1.020 /
# 1.020x (median / min; 2 -> 1 alone 1.022x), 1 thread 1.017 / 1.011x; the same bits


def applies(x_shape, w1_shape, dw_runner: DepthwiseRunner) -> bool:
    """An expand (a 1x1 convolution of weights w1_shape on x_shape) and the depthwise step after it that run here:
    AVX-512, the expand's output channels a multiple of 16 and K >= pointwise_t.MIN_K_BLOCKS, its pixels a multiple of
    NP, the depthwise on its channel-block path (blocks of 16) with the expand's output as its input."""
    if not ENABLED or len(x_shape) != 4 or len(w1_shape) != 4 or tuple(w1_shape[2:]) != (1, 1):
        return False
    n, k, h, wd = (int(v) for v in x_shape)
    c = int(w1_shape[0])
    args = dw_runner.args
    return (
        dw_runner.c8
        and LANES == 16
        and int(w1_shape[1]) == k >= pointwise_t.MIN_K_BLOCKS
        and c % 16 == 0
        and (h * wd) % NP == 0
        and tuple(args[:4]) == (n, c, h, wd)
        and n > 0
    )


def _bands(n: int, tasks: int, oh: int, in_rows, row_bytes: int, split_rows: bool, threads: int) -> int:
    """Bands of output rows per (image, task's blocks): the count that gives the threads the least work each, a band's
    cost taken as its input rows (the expand's share, halo rows included), ties to fewer bands; then more while a
    band's buffer rows pass BAND_BYTES. See the module docstring."""
    if not split_rows:
        return 1

    def cost(b: int) -> int:
        return -(-n * tasks * b // threads) * max(in_rows(i, b) for i in range(b))

    most = max(1, oh // 2)
    bands = min(range(1, min(most, 4 * threads) + 1), key=cost)
    while bands < most and max(in_rows(b, bands) for b in range(bands)) * row_bytes > BAND_BYTES:
        bands += 1
    return bands


def _band_table(dw_runner: DepthwiseRunner, h: int, tasks: int, per: int, split_rows: bool) -> np.ndarray:
    """(bands, 4) int64: each band's first output row, output rows end, first input row and input rows end of the
    depthwise (`dw_runner`, on an input of h rows), in `_bands`' count of bands for `tasks` tasks an image of `per`
    blocks each on the current thread count."""
    n = dw_runner.args[0]
    oh = dw_runner.out_shape[2]
    ph, wb = dw_runner.args[4], dw_runner.args[6]
    kh, _, sh, _, dh, _ = dw_runner.geometry

    def span(o0: int, o1: int) -> tuple[int, int]:  # the input rows output rows o0 .. o1 - 1 read
        return max(0, o0 * sh - ph), min(h, (o1 - 1) * sh - ph + (kh - 1) * dh + 1)

    def in_rows(b: int, bands: int) -> int:
        first, end = span(b * oh // bands, (b + 1) * oh // bands)
        return end - first

    bands = _bands(n, tasks, oh, in_rows, per * wb * LANES * 4, split_rows, numba.get_num_threads())
    rows = np.zeros((bands, 4), np.int64)
    for b in range(bands):
        o0, o1 = b * oh // bands, (b + 1) * oh // bands
        rows[b] = (o0, o1, *span(o0, o1))
    return rows


def _ed_worker(t, x, wt, b1, y, plan, rows, po, xoff, lo1, hi1, lo2, hi2, ws, counter,
               wt_tab, toff_tab, ntaps, b8_tab, out8, xblk):  # fmt: skip  # pragma: no cover - compiled
    """Worker t: claims (image, channels, band) tasks (gemm.claim_near). plan: N, K, C, P (the expand's input pixels),
    H, W, ph, pw, WB, HB (a block buffer's padded rows and columns), OW, bands, the block buffer's floats, blocks a
    task (1 or 2: 16 or 32 channels, the weights packed in panels of as many), then the next step's weights to
    prefetch (offset, floats, a task's tile pairs after its first: see below). rows[band]: (first output row, output
    rows end, first input row, input rows end). ws: every worker's block buffers, worker t's at t * plan[13] *
    plan[12]; po[p]: input pixel p's offset in a block buffer. y: the depthwise's output, in planes or (out8) each
    block's channels interleaved per pixel. xblk: x in blocks of LANES channels interleaved per pixel (the 1x1 step
    before wrote it so: ``ExpandDepthwiseRunner.x_blocks``), else in planes."""
    n, k, c, p, h, wd = plan[0], plan[1], plan[2], plan[3], plan[4], plan[5]
    ph, pw, wb, hb, ow, bands, bsize, per = plan[6], plan[7], plan[8], plan[9], plan[10], plan[11], plan[12], plan[13]
    # the next step's weights (ExpandDepthwiseRunner.ahead): plan[14] their offset from wt's first float, plan[15]
    # floats (0: none), plan[16] a task's tile pairs (_ptile2w calls) after its first at most; those pairs spread
    # over them, each a region of 32 * k floats (pointwise_t's _pt_worker does the same)
    aoff, alen, calls = plan[14], plan[15], plan[16]
    nblk = c // LANES
    npix = (rows[bands - 1, 1]) * ow
    base = t * per * bsize
    xstep = LANES if xblk else 1  # x's floats from one pixel to the next
    xpf = 1 + X_PREFETCH if xblk else -P_PREFETCH  # the tiles' x mode and prefetch (pointwise_t)
    for v in range(per):  # the expand writes the image's pixels only
        _zero_block_border(ws, base + v * bsize, hb, wb, h, wd, ph, pw, LANES)
    ntc = (nblk + per - 1) // per  # tasks of a band
    per_image = ntc * bands
    spread = n * per_image * calls
    items, granule = (n, per_image) if n > 1 else (per_image, 1)
    sizes = queue_sizes(counter, items, granule, 1)
    nq = sizes.shape[0]
    while True:
        u, i = claim_near(counter, sizes)
        if u < 0:
            break
        task = u * items // nq * granule + i
        # band-major: with one image, queue u (the CPU's: gemm.claim_near) holds the bands u * bands / Q.., the rows
        # the 1x1 steps before and after (pointwise_t, chunk-major) read and write on the same core
        img, band, b0 = task // per_image, (task % per_image) // ntc, (task % ntc) * per
        nb = min(per, nblk - b0)
        o_first, o_end, r_first, r_end = rows[band, 0], rows[band, 1], rows[band, 2], rows[band, 3]
        # the expand: input rows r_first .. r_end - 1 of channels 16 b0 .. 16 (b0 + nb) - 1 into the buffers
        # (pointwise_t's tiles: block b0 + v's pixel j stored at yo + (b0 + v) * bsize + po[j])
        wo = b0 * LANES * k
        yo = base - b0 * bsize
        tt, t1 = r_first * wd // NP, r_end * wd // NP
        # pairs: the task's first tile prefetches the next panel's weights into L2 (pointwise_t's W_PREFETCH), the
        # others their share of the next step's, in task order (a core's tasks: a run of it)
        wpf = (b0 + 2) * LANES * k if nb == 2 and b0 + 2 < nblk else 0
        pair = 0
        while tt < t1:
            p0 = tt * NP
            xo = img * k * p + p0 * xstep
            if tt + 1 < t1 and nb == 2:
                _ptile2w(x, wt, ws, b1, ws, ws, k, p, xo, wo, yo, b0 * LANES, lo1, hi1, 0, wpf, xpf, po,
                         bsize, p0, c)  # fmt: skip
                pair += 1
                wpf = 0
                if alen > 0 and pair <= calls:
                    r = task * calls + pair - 1
                    wpf = ahead_at(aoff, alen, r, spread, k)
            elif tt + 1 < t1:
                _ptile1w(x, wt, ws, b1, ws, ws, k, p, xo, wo, yo, b0 * LANES, lo1, hi1, 0, 0, xpf, po,
                         bsize, p0, c)  # fmt: skip
            elif nb == 2:
                _ptile2(x, wt, ws, b1, ws, ws, k, p, xo, wo, yo, b0 * LANES, lo1, hi1, 0, 0, xpf, po,
                        bsize, p0, c)  # fmt: skip
            else:
                _ptile1(x, wt, ws, b1, ws, ws, k, p, xo, wo, yo, b0 * LANES, lo1, hi1, 0, 0, xpf, po,
                        bsize, p0, c)  # fmt: skip
            tt += 2 if tt + 1 < t1 else 1
        # the depthwise: output rows o_first .. o_end - 1 of each block from its buffer
        q_end = o_end * ow
        for v in range(nb):
            blk = b0 + v
            buf = ws[base + v * bsize :]
            ybase = (img * c + blk * LANES) * npix
            for q0 in range(o_first * ow, q_end, 8):
                _block_tile(buf, xoff, q0, wt_tab[blk], toff_tab[blk], ntaps[blk], y, ybase, npix, LANES,
                            min(8, q_end - q0), b8_tab[blk], lo2, hi2, out8)  # fmt: skip


_F1, _I1, _F2, _I2, _f = types.float32[::1], types.int64[::1], types.float32[:, ::1], types.int64[:, ::1], types.float64
_ED = Task(
    _ed_worker,
    (_F1, _F1, _F1, _F1, _I1, _I2, _I1, _I1, _f, _f, _f, _f, _F1, _I1, _F2, _I2, _I1, _F2, types.int64, types.int64),
    opt=1,  # explicit vector tiles: -O1 compiles in a fifth less time, same code speed (kernels.tasks)
    compile_s=1.5,
    boundscheck=False,
)
_WORKSPACE = Workspace()


def _dw_tables(runner, w2: np.ndarray, b2: np.ndarray) -> tuple:
    """The depthwise's tap tables (``depthwise._c8_tables``) of a fused runner for w2 and b2, made once per pair of
    arrays (kept in runner.tables: the weights do not change in place)."""
    tables = runner.tables
    if tables is None or tables[0] is not w2 or tables[1] is not b2:
        plan_dw = runner.dw.args
        tables = runner.tables = (w2, b2, _c8_tables(w2.reshape(-1), b2, plan_dw[1], plan_dw[8], LANES))
    return tables[2]


class ExpandDepthwiseRunner:
    """The expand + depthwise pair for fixed shapes (``applies``); see the module docstring."""

    __slots__ = (
        "ahead",
        "aimed",
        "args",
        "counter_args",
        "dw",
        "lo_hi",
        "out_shape",
        "packed",
        "tables",
        "workers",
        "ws_floats",
        "x_blocks",
    )

    def __init__(self, x_shape, w1_shape, act1, dw_runner: DepthwiseRunner) -> None:
        if not applies(x_shape, w1_shape, dw_runner):
            raise ValueError(f"mbconv: does not apply to x {tuple(x_shape)}, w {tuple(w1_shape)} and that depthwise")
        n, k, h, wd = (int(v) for v in x_shape)
        c = int(w1_shape[0])
        self.dw = dw_runner
        self.out_shape = dw_runner.out_shape
        ow = self.out_shape[3]
        _, _, _, _, ph, pw, wb, npix, _, xoff, _ = dw_runner.args
        bsize = dw_runner.plane
        hb = bsize // (wb * LANES)
        self.workers = threads = numba.get_num_threads()
        nblk = c // LANES
        per = 2 if n * (nblk // 2) >= PAIR_TASKS * threads else 1  # blocks a task (see the module docstring)
        rows = _band_table(dw_runner, h, -(-nblk // per), per, wd % NP == 0)
        bands = len(rows)
        if wd % NP:  # whole planes only: the tiles run over the image's pixels in sevens
            rows[:, 2], rows[:, 3] = 0, h
        p = np.arange(h * wd)
        po = (((p // wd + ph) * wb + pw + p % wd) * LANES).astype(np.int64)
        pairs = max((r_end * wd // NP - r_first * wd // NP) // 2 for _, _, r_first, r_end in rows)  # _ptile2w calls
        plan = np.array([n, k, c, h * wd, h, wd, ph, pw, wb, hb, ow, bands, bsize, per, 0, 0, pairs - 1], np.int64)
        # a band's runs of 8 output pixels start at its first row, not at a multiple of 8: the offsets of the pixels
        # past the end repeat the last (their results are not stored)
        xoff = np.concatenate([xoff[:npix], np.full(8, xoff[npix - 1], np.int64)])
        self.args = (plan, rows, po, xoff)
        self.lo_hi = check_act(act1, "mbconv") + dw_runner.lo_hi
        self.ws_floats = threads * per * bsize  # every worker's block buffers
        self.counter_args = (n, threads, -(-nblk // per) * bands)  # image_counters': tasks an image
        self.packed: tuple | None = None  # (w1, its panels, b1)
        self.tables: tuple | None = None  # (w2, b2, the depthwise's tap tables)
        # x handed over by the 1x1 step before in blocks of LANES channels interleaved per pixel, no borders
        # (``depthwise.PaddedInput.unpadded``, set by the plan: net.plan_steps.hand_over_projection), or None
        self.x_blocks = None
        # the next step's weights as its kernel reads them, or None (a callable, set by the plan:
        # net.plan_steps.prefetch_ahead): the expand's tile pairs after a task's first prefetch them into L2
        self.ahead = None
        self.aimed: tuple = (None, None)  # (packed expand weights, ahead array) plan[14:16] were set for

    def __call__(self, x, w1, b1, w2, b2, y) -> None:
        packed = self.packed
        if packed is None or packed[0] is not w1 or packed[2] is not b1:
            packed = self.packed = (w1, pack(w1, 16 * self.args[0][13]), b1)  # plan[13]: blocks a task
        if self.ahead is not None:
            pointwise_t.aim_ahead(self, self.args[0], 14, packed[1])
        (ws,) = _WORKSPACE.get(self.ws_floats)  # (64-byte aligned)
        handoff = self.dw.handoff
        counter = image_counters(*self.counter_args)
        xb = self.x_blocks
        xblk = xb is not None and xb.ready  # (else the 1x1 layer's own forward wrote x in planes)
        if xblk:
            xb.ready = False
        _ED.parallel(_ED.address, self.workers, xb.buf if xblk else x.reshape(-1), packed[1], b1, y.reshape(-1),
                     *self.args, *self.lo_hi, ws, counter, *_dw_tables(self, w2, b2), int(handoff is not None),
                     int(xblk))  # fmt: skip
        if handoff is not None:
            handoff.interleaved = LANES  # y holds blocks of LANES channels interleaved per pixel this time


# --------------------------------------------------------------------------------- a convolution + depthwise
def conv_applies(x_shape, w1_shape, stride, dw_runner: DepthwiseRunner, pad=(0, 0, 0, 0)) -> bool:
    """A group-1 convolution of x_shape with a zero border pad = (top, left, bottom, right) that
    ``pointwise_t.ConvTRunner``'s tiles run (on the padded image), with 32 output channels (one panel: a task's two
    blocks), and the depthwise step after it on its channel-block path with the convolution's output as its input:
    EfficientNet-Lite0's stem (3 -> 32 channels, 3 x 3 / 2, one zero row and column after the image: TF's SAME) and
    block 0's depthwise on 112 x 112."""
    if len(x_shape) != 4 or len(w1_shape) != 4 or min(pad) < 0:
        return False
    n, cin, h, wd = (int(v) for v in x_shape)
    padded = (n, cin, h + pad[0] + pad[2], wd + pad[1] + pad[3])
    if not ENABLED or not pointwise_t.conv_applies(padded, w1_shape, stride) or int(w1_shape[0]) != 2 * LANES:
        return False
    _, _, kh, kw = (int(v) for v in w1_shape)
    sh, sw = (int(v) for v in stride)
    oh, ow = (padded[2] - kh) // sh + 1, (padded[3] - kw) // sw + 1
    return dw_runner.c8 and LANES == 16 and tuple(dw_runner.args[:4]) == (n, 2 * LANES, oh, ow) and n > 0


@numba.njit(cache=True, boundscheck=False, inline="always")
def _band_rows(x, xo, xin, cin, h, wd, top, left, wp, rows_max, pr0, pr1):  # pragma: no cover - compiled
    """Rows pr0 .. pr1 - 1 of the zero-bordered image (the image at rows top.., columns left..; x's image at xo, C x
    H x W) of every channel into xin (rows_max x WP a channel, from row pr0): the convolution's input of a band, padded
    in the band's own buffer instead of a padded copy of the whole image."""
    for ci in range(cin):
        for pr in range(pr0, pr1):
            o = (ci * rows_max + pr - pr0) * wp
            ir = pr - top
            if ir < 0 or ir >= h:
                for j in range(wp):
                    xin[o + j] = 0.0
                continue
            for j in range(left):
                xin[o + j] = 0.0
            _copy_run(xin, o + left, x, xo + (ci * h + ir) * wd, wd)  # (8 floats a vector: the task runs at -O1)
            for j in range(left + wd, wp):
                xin[o + j] = 0.0


def _cd_worker(t, x, wt, b1, y, plan, rows, po, xoff, lo1, hi1, lo2, hi2, ws, counter,
               wt_tab, toff_tab, ntaps, b8_tab, out8, toff, xin_all):  # fmt: skip  # pragma: no cover - compiled
    """Worker t of ConvDepthwiseRunner: _ed_worker with the convolution's tiles (``pointwise_t._ctile2w``: 14 pixels
    of a row x 32 channels, tap k at toff[k] in a band's padded input rows) in place of the expand's. plan: N, K
    (taps), C (32), P (the convolution's output pixels), H, W (its output rows and columns: the depthwise's input), ph,
    pw, WB, HB, OW, bands, the block buffer's floats, 2 (blocks a task), sh (the convolution's row stride), sw, the
    input image's C_in, H_in, W_in, the zero border's top and left, WP (padded columns), the band buffer's rows, the
    convolution's kernel rows. xin_all: every worker's band buffer (C_in x rows x WP floats each)."""
    n, k, c, p, h, wd = plan[0], plan[1], plan[2], plan[3], plan[4], plan[5]
    ph, pw, wb, hb, ow, bands, bsize, per = plan[6], plan[7], plan[8], plan[9], plan[10], plan[11], plan[12], plan[13]
    sy, sx, cin, h_in, w_in, top, left = plan[14], plan[15], plan[16], plan[17], plan[18], plan[19], plan[20]
    wp, rows_max, kh1 = plan[21], plan[22], plan[23]
    npix = (rows[bands - 1, 1]) * ow
    base = t * per * bsize
    xsize = cin * rows_max * wp
    xin = xin_all[t * xsize : (t + 1) * xsize]
    for v in range(per):  # the convolution writes the image's pixels only
        _zero_block_border(ws, base + v * bsize, hb, wb, h, wd, ph, pw, LANES)
    items, granule = (n, bands) if n > 1 else (bands, 1)
    sizes = queue_sizes(counter, items, granule, 1)
    nq = sizes.shape[0]
    per_row = -(-wd // (2 * NP))
    while True:
        u, i = claim_near(counter, sizes)
        if u < 0:
            break
        task = u * items // nq * granule + i
        img, band = task // bands, task % bands
        o_first, o_end, r_first, r_end = rows[band, 0], rows[band, 1], rows[band, 2], rows[band, 3]
        # the convolution's output rows r_first .. r_end - 1 (the depthwise's input rows) from the band's padded input
        # rows, into the block buffers
        pr0 = r_first * sy
        _band_rows(x, img * cin * h_in * w_in, xin, cin, h_in, w_in, top, left, wp, rows_max, pr0,
                   (r_end - 1) * sy + kh1)  # fmt: skip
        for r in range(r_first, r_end):
            for s in range(per_row):
                col = min(s * 2 * NP, wd - 2 * NP)  # a row's last tile ends at its end (pointwise_t.ConvTRunner)
                xo = (r * sy - pr0) * wp + col * sx
                if sx == 2:
                    _ctile2w_s2(xin, wt, ws, b1, ws, ws, k, p, xo, 0, base, 0, lo1, hi1, 0, 0, 0, po, bsize,
                                r * wd + col, c, toff, sx)  # fmt: skip
                else:
                    _ctile2w(xin, wt, ws, b1, ws, ws, k, p, xo, 0, base, 0, lo1, hi1, 0, 0, 0, po, bsize,
                             r * wd + col, c, toff, sx)  # fmt: skip
        # the depthwise: output rows o_first .. o_end - 1 of each block from its buffer
        q_end = o_end * ow
        for v in range(per):
            buf = ws[base + v * bsize :]
            ybase = (img * c + v * LANES) * npix
            for q0 in range(o_first * ow, q_end, 8):
                _block_tile(buf, xoff, q0, wt_tab[v], toff_tab[v], ntaps[v], y, ybase, npix, LANES,
                            min(8, q_end - q0), b8_tab[v], lo2, hi2, out8)  # fmt: skip


_CD = Task(
    _cd_worker,
    (_F1, _F1, _F1, _F1, _I1, _I2, _I1, _I1, _f, _f, _f, _f, _F1, _I1, _F2, _I2, _I1, _F2, types.int64, _I1, _F1),
    opt=1,
    compile_s=1.2,
    boundscheck=False,
)


class ConvDepthwiseRunner:
    """A convolution on ``pointwise_t.ConvTRunner``'s tiles (32 output channels, a zero border `pad` = (top, left,
    bottom, right) around the image) and the depthwise step after it in one pass (``conv_applies``): each task (image,
    band of the depthwise's output rows) copies the band's input rows, zero-bordered, into its worker's band buffer
    (no padded copy of the whole image), computes the convolution's rows of the band's window (a halo row or so
    computed by both neighbouring bands) into its worker's padded blocks of 16 channels (``depthwise.PaddedInput``'s
    layout), and runs the depthwise's block tiles on them from L2, instead of the whole 32 x 112 x 112 output (1.6 MB
    an image, EfficientNet-Lite0's stem) going out to L3 or memory and back between two steps. Each output of the
    convolution is the tile's FMA chain over its taps, then bias and clip, each of the depthwise its block tile's
    chain: the same bits as the two steps (``hand_over_expand``'s, tested). The weights must not change in place
    (packed once per array: a plan's folded BatchNorm). ``runner(x, w1, b1, w2, b2, y)``: x the image (N, C, H, W), w1
    (32, C, kh, kw), b1 (32,), w2 (32, 1, kh2, kw2), b2 (32,), y the depthwise's output, in planes or (the plan set
    ``dw_runner.handoff``) its interleaved blocks."""

    __slots__ = ("args", "counter_args", "dw", "lo_hi", "out_shape", "packed", "tables", "toff", "workers",
                 "ws_floats", "x_shape", "xin_floats")  # fmt: skip

    def __init__(self, x_shape, w1_shape, stride, act1, dw_runner: DepthwiseRunner, pad=(0, 0, 0, 0)) -> None:
        if not conv_applies(x_shape, w1_shape, stride, dw_runner, pad):
            raise ValueError(
                f"mbconv: a convolution of x {tuple(x_shape)}, w {tuple(w1_shape)} and that depthwise do not apply"
            )
        n, cin, h_in, w_in = (int(v) for v in x_shape)
        top, left, bottom, right = (int(v) for v in pad)
        hp, wp = h_in + top + bottom, w_in + left + right
        c, _, kh1, kw1 = (int(v) for v in w1_shape)
        sh1, sw1 = (int(v) for v in stride)
        h, wd = (hp - kh1) // sh1 + 1, (wp - kw1) // sw1 + 1  # the convolution's output: the depthwise's input
        self.x_shape = (n, cin, h_in, w_in)
        self.dw = dw_runner
        self.out_shape = dw_runner.out_shape
        ow = self.out_shape[3]
        _, _, _, _, ph, pw, wb, npix, _, xoff, _ = dw_runner.args
        bsize = dw_runner.plane
        hb = bsize // (wb * LANES)
        self.workers = threads = numba.get_num_threads()
        per = 2  # (32 channels: one task's two blocks)
        rows = _band_table(dw_runner, h, 1, per, True)
        bands = len(rows)
        rows_max = int(max((r1 - 1) * sh1 + kh1 - r0 * sh1 for r0, r1 in rows[:, 2:]))  # a band's padded input rows
        p = np.arange(h * wd)
        po = (((p // wd + ph) * wb + pw + p % wd) * LANES).astype(np.int64)
        plan = [n, cin * kh1 * kw1, c, h * wd, h, wd, ph, pw, wb, hb, ow, bands, bsize, per, sh1, sw1,
                cin, h_in, w_in, top, left, wp, rows_max, kh1]  # fmt: skip
        xoff = np.concatenate([xoff[:npix], np.full(8, xoff[npix - 1], np.int64)])  # (see ExpandDepthwiseRunner)
        self.args = (np.array(plan, np.int64), rows, po, xoff)
        self.toff = np.array(  # tap (c, i, j) in a band buffer (rows_max x WP a channel)
            [(ci * rows_max + i) * wp + j for ci in range(cin) for i in range(kh1) for j in range(kw1)], np.int64
        )
        self.lo_hi = check_act(act1, "mbconv") + dw_runner.lo_hi
        self.ws_floats = threads * per * bsize
        self.xin_floats = threads * cin * rows_max * wp
        self.counter_args = (n, threads, bands)  # image_counters': tasks an image
        self.packed: tuple | None = None  # (w1, its panels, b1)
        self.tables: tuple | None = None  # (w2, b2, the depthwise's tap tables)

    def __call__(self, x, w1, b1, w2, b2, y) -> None:
        packed = self.packed
        if packed is None or packed[0] is not w1 or packed[2] is not b1:
            packed = self.packed = pointwise_t._params(w1, b1)[:3]
        ws, xin = _WORKSPACE.get(self.ws_floats, self.xin_floats)  # (64-byte aligned)
        handoff = self.dw.handoff
        counter = image_counters(*self.counter_args)
        _CD.parallel(_CD.address, self.workers, x.reshape(-1), packed[1], b1, y.reshape(-1), *self.args, *self.lo_hi,
                     ws, counter, *_dw_tables(self, w2, b2), int(handoff is not None), self.toff, xin)  # fmt: skip
        if handoff is not None:
            handoff.interleaved = LANES
