"""2-D convolution (Caffe semantics: cross-correlation, zero padding, groups, dilation), NCHW float32.

Kernels:

0. ``conv2d_forward_ref`` - plain NumPy in float64: one tensordot per kernel offset (i, j) and group.
1. ``_im2col_packed``     - im2col written straight into the packed-B layout of ``kernels.gemm``
                            (``(ceil(P/NR), K, NR)`` with K = C/g*kh*kw, P = OH*OW) one NR-pixel sliver at a
                            time, as runs along output rows (plain copies when stride is 1), so there is no
                            separate im2col matrix and no second packing pass.
2. ``_conv_batch``        - parallel over images (each thread owns one im2col workspace) and serial GEMM
                            tiles per image and group: for batches (LeNet 64/10000, CaffeNet 10).
3. ``_im2col_all_groups`` + ``_conv_tiles`` - one image at a time: im2col of all groups with slivers over
                            threads, then GEMM tiles of all groups as (group, row block, column block) tasks
                            over threads: for batch 1 and batches that do not split evenly over the threads.

Weights are packed per call into MR-row slivers (``_pack_weights``); bias is added when the first K panel
is stored, so the output is written once per K panel and never pre-filled. The packed im2col workspace is
kept per Python thread and reused across calls (CaffeNet conv1 at 2 threads: 2 x 4.4 MB).

Public: ``conv2d_output_shape(in_hw, kernel, stride, pad, dilation) -> (oh, ow)`` and
``conv2d_forward(x, w, b, *, stride, pad, dilation, group, out) -> y``.

Benchmark (checks against the reference first, then times each CaffeNet/LeNet layer against torch):
``python -m benchmarks.bench_kernels --threads 2``.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import carray, njit, prange

from kernels.gemm import (
    MR,
    NR,
    _gemm_tiles_serial,
    _micro,
    _pack_rows_sliver,
    _stack_empty,
    packed_a_size,
    packed_b_size,
)

MC_CONV = 64  # rows of C (output channels) per parallel task in _conv_single (multiple of MR)
NC_CONV = 128  # columns of C (output pixels) per parallel task in _conv_single (multiple of NR)
KC_CONV = 384  # K panel depth
KW_MAX = 16  # kernel widths up to this use a per-sliver table of clipped runs in _im2col_sliver
RUN_TAB = NR * KW_MAX  # entries of that table (a literal for the stack allocation)


def conv2d_forward_ref(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, *, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group: int = 1
) -> np.ndarray:
    """Reference convolution in float64 (returned as float32).

    x: (N, C, H, W); w: (M, C/group, kh, kw); b: (M,) or None. Returns y: (N, M, OH, OW) with
    y[n,m,oh,ow] = b[m] + sum_{c,i,j} w[m,c,i,j] * x_pad[n, g(m)*C/group + c, oh*sh + i*dh, ow*sw + j*dw].
    """
    x64 = np.asarray(x, np.float64)
    w64 = np.asarray(w, np.float64)
    n, c, h, wd = x64.shape
    m, cg, kh, kw = w64.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph : ph + h, pw : pw + wd] = x64
    mg = m // group
    y = np.zeros((n, m, oh, ow))
    for g in range(group):
        xg = xp[:, g * cg : (g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                xs = xg[:, :, i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw]
                # (Mg, Cg) . (N, Cg, OH, OW) over Cg -> (Mg, N, OH, OW)
                y[:, g * mg : (g + 1) * mg] += np.tensordot(
                    w64[g * mg : (g + 1) * mg, :, i, j], xs, axes=([1], [1])
                ).transpose(1, 0, 2, 3)
    if b is not None:
        y += np.asarray(b, np.float64).reshape(1, m, 1, 1)
    return y.astype(np.float32)


@njit(cache=True, boundscheck=False, inline="always")
def _copy_run(dv, o, xv, src, sw, ln, lo, hi):
    """dv[o + t] = xv[src + t*sw] for t in [lo, hi), zero for t in [0, lo) and [hi, ln).

    Indices are cast to unsigned (they are >= 0 here) so Numba emits no negative-index wraparound and the
    stride-1 copy vectorises; no array views are made (each costs atomic reference counting).
    """
    for t in range(lo):
        dv[np.uint64(o + t)] = 0.0
    if sw == 1:
        for t in range(lo, hi):
            dv[np.uint64(o + t)] = xv[np.uint64(src + t)]
    else:
        for t in range(lo, hi):
            dv[np.uint64(o + t)] = xv[np.uint64(src + t * sw)]
    for t in range(hi, ln):
        dv[np.uint64(o + t)] = 0.0


@njit(cache=True, boundscheck=False)
def _im2col_sliver(xf, x_off, h, wd, cg, kh, kw, sh, sw, ph, pw, dh, dw, ow_n, npix, dst, d_off, s):
    """Sliver s (pixels p = s*NR + j) of the packed im2col of one image and group, into dst[d_off:].

    xf[x_off + (c*H + ih)*W + iw] is channel c of the group; writes dst[d_off + (s*K + k)*NR + j] =
    x_pad[c, oh*sh + i*dh, ow*sw + jj*dw] for k = (c*kh + i)*kw + jj, p = oh*OW + ow, zero for p >= P.
    The sliver's pixels are cut into runs along output rows; each run reads one input row (stride sw).
    """
    seg_oh = carray(_stack_empty(NR, np.int64), (NR,))
    seg_ow = carray(_stack_empty(NR, np.int64), (NR,))
    seg_j = carray(_stack_empty(NR, np.int64), (NR,))
    seg_len = carray(_stack_empty(NR, np.int64), (NR,))
    p = s * NR
    end = min(p + NR, npix)
    nseg = 0
    while p < end:
        oh = p // ow_n
        ow = p - oh * ow_n
        seg_oh[nseg], seg_ow[nseg], seg_j[nseg] = oh, ow, p - s * NR
        seg_len[nseg] = min(ow_n - ow, end - p)
        p += seg_len[nseg]
        nseg += 1
    tail = end - s * NR
    # Clipped [lo, hi) of every (run, jj): they depend on neither channel nor kernel row, so the integer
    # divisions are done once per sliver, not once per copied run.
    lo_tab = carray(_stack_empty(RUN_TAB, np.int64), (RUN_TAB,))
    hi_tab = carray(_stack_empty(RUN_TAB, np.int64), (RUN_TAB,))
    for q in range(nseg):
        for jj in range(min(kw, KW_MAX)):
            iw0 = seg_ow[q] * sw + jj * dw - pw
            lo = min(max((sw - 1 - iw0) // sw, 0), seg_len[q])  # first t with iw0 + t*sw >= 0
            lo_tab[q * KW_MAX + jj] = lo
            hi_tab[q * KW_MAX + jj] = max(min((wd - 1 - iw0) // sw + 1, seg_len[q]), lo)  # first t past W
    xv = xf[x_off:]
    dv = dst[d_off + s * cg * kh * kw * NR :]
    for c in range(cg):
        for i in range(kh):
            for jj in range(kw):
                o = ((c * kh + i) * kw + jj) * NR
                for q in range(nseg):
                    ln = seg_len[q]
                    ih = seg_oh[q] * sh - ph + i * dh
                    iw0 = seg_ow[q] * sw + jj * dw - pw  # input column of the run's first pixel
                    if ih < 0 or ih >= h:
                        lo = hi = ln
                    elif jj < KW_MAX:
                        lo = lo_tab[q * KW_MAX + jj]
                        hi = hi_tab[q * KW_MAX + jj]
                    else:
                        lo = min(max((sw - 1 - iw0) // sw, 0), ln)
                        hi = max(min((wd - 1 - iw0) // sw + 1, ln), lo)
                    _copy_run(dv, o + seg_j[q], xv, (c * h + ih) * wd + iw0, sw, ln, lo, hi)
                for j in range(tail, NR):
                    dv[o + j] = 0.0


@njit(cache=True, boundscheck=False)
def _im2col_packed(xf, x_off, h, wd, cg, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, dst, d_off):
    """All slivers of one image and group (see _im2col_sliver): dst[d_off:] gets (ceil(P/NR), K, NR)."""
    npix = oh_n * ow_n
    for s in range((npix + NR - 1) // NR):
        _im2col_sliver(xf, x_off, h, wd, cg, kh, kw, sh, sw, ph, pw, dh, dw, ow_n, npix, dst, d_off, s)


@njit(cache=True, parallel=True, boundscheck=False)
def _conv_batch(x, ap, a_size, bias, y, group, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, ws, nchunks):
    """All images, nchunks contiguous chunks of images in parallel; ws[t] is chunk t's packed-B workspace.

    x: (N, C, H, W); ap: (group * a_size,) packed weights; bias: (M,); y: (N*M*OH*OW,) flat output.
    """
    n_img, c, h, wd = x.shape
    cg = c // group
    xf = x.reshape(-1)
    m = bias.shape[0]
    mg = m // group
    k_all = cg * kh * kw
    npix = oh_n * ow_n
    for t in prange(nchunks):
        for n in range(t * n_img // nchunks, (t + 1) * n_img // nchunks):
            for g in range(group):
                _im2col_packed(
                    xf, (n * c + g * cg) * h * wd, h, wd, cg, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, ws[t], 0
                )
                _gemm_tiles_serial(
                    ap[g * a_size :], ws[t], y, (n * m + g * mg) * npix, npix, mg, npix, k_all, False, bias, g * mg
                )


@njit(cache=True, parallel=True, boundscheck=False)
def _im2col_all_groups(x, n, group, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, bp, b_size):
    """Packed im2col of every group of image n into bp[g*b_size:], (group, sliver) pairs over threads."""
    _, c, h, wd = x.shape
    cg = c // group
    xf = x.reshape(-1)
    npix = oh_n * ow_n
    nt = (npix + NR - 1) // NR
    for q in prange(group * nt):
        g = q // nt
        _im2col_sliver(
            xf,
            (n * c + g * cg) * h * wd,
            h,
            wd,
            cg,
            kh,
            kw,
            sh,
            sw,
            ph,
            pw,
            dh,
            dw,
            ow_n,
            npix,
            bp,
            g * b_size,
            q - g * nt,
        )


@njit(cache=True, parallel=True, fastmath=True, boundscheck=False)
def _conv_tiles(ap, a_size, bp, b_size, bias, y, y_off, group, k_all, npix):
    """GEMM of every group for one image: (group x row blocks x column blocks) tasks over threads."""
    mg = bias.shape[0] // group
    bm = (mg + MC_CONV - 1) // MC_CONV
    bn = (npix + NC_CONV - 1) // NC_CONV
    for t in prange(group * bm * bn):  # column block fastest: contiguous task ranges get equal work
        g = t // (bm * bn)
        r = t - g * bm * bn
        i0 = (r // bn) * MC_CONV
        j0 = (r % bn) * NC_CONV
        for pc in range(0, k_all, KC_CONV):
            kc = min(KC_CONV, k_all - pc)
            for jr in range(j0 // NR, (min(j0 + NC_CONV, npix) + NR - 1) // NR):
                nr = min(NR, npix - jr * NR)
                for ir in range(i0 // MR, (min(i0 + MC_CONV, mg) + MR - 1) // MR):
                    mr = min(MR, mg - ir * MR)
                    _micro(
                        kc,
                        ap,
                        g * a_size + (ir * k_all + pc) * MR,
                        bp,
                        g * b_size + (jr * k_all + pc) * NR,
                        y,
                        y_off + (g * mg + ir * MR) * npix + jr * NR,
                        npix,
                        mr,
                        nr,
                        pc > 0,
                        bias,
                        g * mg + ir * MR,
                    )


@njit(cache=True, parallel=True, boundscheck=False)
def _pack_weights(w2, group, ap, a_size):
    """Pack each group's rows of w2 (M, K) into MR-row slivers at ap[g*a_size:], (group, sliver) over threads."""
    mg = w2.shape[0] // group
    k_all = w2.shape[1]
    mt = (mg + MR - 1) // MR
    for q in prange(group * mt):
        g = q // mt
        _pack_rows_sliver(w2, g * mg, mg, ap[g * a_size :], MR, q - g * mt, k_all)


class _Workspace(threading.local):
    """Per-Python-thread scratch buffer for packed im2col columns, grown on demand and reused across calls."""

    buf: np.ndarray = np.empty(0, np.float32)

    def get(self, size: int) -> np.ndarray:
        if self.buf.size < size:
            self.buf = np.empty(size, np.float32)
        return self.buf[:size]


_WORKSPACE = _Workspace()


def _pair(v, name: str) -> tuple[int, int]:
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


def _check_conv_args(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, group: int) -> None:
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
) -> np.ndarray:
    """Convolution forward (Caffe semantics), float32.

    x: (N, C, H, W); w: (M, C/group, kh, kw); b: (M,) or None; stride/pad/dilation: (h, w) pairs.
    Returns y: (N, M, OH, OW) float32, written into `out` when given (C-contiguous float32 of that shape).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    b = None if b is None else np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    group = int(group)
    _check_conv_args(x, w, b, group)
    n, _, h, wd = x.shape
    m, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride, "stride"), _pair(pad, "pad"), _pair(dilation, "dilation")
    oh, ow = conv2d_output_shape((h, wd), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    if out is None:
        out = np.empty((n, m, oh, ow), np.float32)
    elif out.shape != (n, m, oh, ow) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"conv2d: expected out to be C-contiguous float32 of shape {(n, m, oh, ow)}, got {out.dtype} {out.shape}"
        )
    if out.size == 0:
        return out
    mg, k_all, npix = m // group, cg * kh * kw, oh * ow
    a_size, b_size = packed_a_size(mg, k_all), packed_b_size(k_all, npix)
    ap = np.empty(group * a_size, np.float32)
    _pack_weights(w.reshape(m, k_all), group, ap, a_size)
    bias = np.zeros(m, np.float32) if b is None else b
    geom = (kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    threads = numba.get_num_threads()
    y = out.reshape(-1)
    if n >= 4 * threads or n % threads == 0:
        chunks = min(threads, n)
        ws = _WORKSPACE.get(chunks * b_size).reshape(chunks, b_size)
        _conv_batch(x, ap, a_size, bias, y, group, *geom, ws, chunks)
    else:
        bp = _WORKSPACE.get(group * b_size)
        for i in range(n):
            _im2col_all_groups(x, i, group, *geom, bp, b_size)
            _conv_tiles(ap, a_size, bp, b_size, bias, y, i * m * npix, group, k_all, npix)
    return out
