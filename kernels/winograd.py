"""Winograd convolution F(m x m, r x r) forward: F(2x2, 3x3), F(4x4, 3x3), F(2x2, 5x5) and F(4x4, 5x5); stride 1,
dilation 1, any pad, groups; NCHW float32.

The output is cut into m x m tiles; each reads an alpha x alpha patch of the (zero padded) input, alpha = m + r - 1.
With the transforms of Lavin & Gray (arXiv:1509.09308), for every input channel c, output channel k and tile:

    Y = A^T [ sum_c (G g_kc G^T) * (B^T d_c B) ] A        (* element-wise over the alpha x alpha points)

so the channel sum becomes alpha^2 independent GEMMs, one per transform point xi: M_xi (K x T) = U_xi (K x C) @
V_xi (C x T), T the tiles. F(4x4, 3x3) (alpha 6) does 36 multiplies per 16 outputs where a direct convolution does
144 (4x fewer, less the part-tiles at the edges: CaffeNet's 13 x 13 maps take 4 x 4 tiles of 16 outputs, 169 of 256
used, so 2.6x); F(2x2, 3x3) (alpha 4: its error is within 2x of the direct convolution's, F(4x4)'s 20x) does 16 per 4
(2.25x, 169 of 196 used on 13 x 13). F(2x2, 5x5) (alpha 6, on the same points as F(4x4, 3x3), so the same B^T)
does 36 per 4 where the direct convolution does 100 (2.8x; CaffeNet's conv2, 27 x 27: 729 of 784 used, 2.6x); its
error is within 3x of the direct convolution's. F(4x4, 5x5) (alpha 8, points 0, +-1, +-2, +-1/2) does 64 per 16
against 400 (6.25x; 27 x 27 in 7 x 7 tiles: 729 of 784 used, 5.8x); its error is about F(4x4, 3x3)'s (10x the direct
convolution's). Which one a layer takes: `choose`.

Kernels:

0. ``winograd_forward_ref`` - the transforms in float64 NumPy (the matrices below, einsum per tile): the reference of
                              the transform arithmetic; ``kernels.conv.conv2d_forward_ref`` is the reference of the
                              convolution (tests compare both).
1. ``transform_weights``    - U = G g G^T for every filter, in float64, rounded once to float32 (a task on the
                              threads, ``_transform_worker``: LeNet's conv2 96 us, CaffeNet's conv3 1.3 ms, against
                              1.2 and 19 ms in NumPy, ``transform_weights_ref``; a value may differ from the NumPy
                              one in its last bit: einsum sums in another order): (group, alpha^2,
                              K/group, C/group) row-major; ``pack_weights`` lays each U_xi out as the GEMM
                              micro-kernel's packed A (``kernels.gemm.block`` with lda = 0: tiles of MR rows, (C/group,
                              MR) each, zero rows past K/group), so a tile reads its weights as one stream of MR floats
                              per k instead of MR rows C/group floats apart (PACKED_U; the same bits). Made once per
                              weight array and kept while its bits are unchanged, or while it is the same array for
                              frozen weights (``WinogradRunner``). At batch 1 a U_xi serves 16 to 64 tiles, so the
                              GEMMs stream U (ResNet-50's 14 x 14 layers: 9.4 MB each, F(4x4)): packed, 256 -> 256 on
                              14 x 14 hot 0.99 -> 0.71 ms in-process (2 threads); whole nets, two plans alternated in
                              one process, 2 threads: ResNet-50 batch 1 / 16 1.06 / 1.07x, GoogLeNet 1.09-1.11 /
                              1.09x, CaffeNet batch 10 1.01x, batch 1 1.00x; ResNet-50 1 thread 1.07x.
2. ``_transform_inputs``     - one 16-tile sliver (NR = 16 tiles, one per vector lane) of one channel at a time:
                              ``_gather_transform8``, an LLVM IR intrinsic, reads element (r, q) of 8 tiles' patches
                              as one masked vector gather (``llvm.masked.gather``: vgatherqps; lanes outside the plane,
                              the padding, are masked off and read 0: it is never materialised), then B^T d B on the 8
                              lanes in <8 x float> registers with the coefficients of ``matrices`` folded in (the code
                              ``_transform8`` emits; Numba's own lane loops stayed scalar: it cannot rule out that
                              source and destination overlap; ~1.8x slower in a micro-benchmark). The gathers replaced
                              a scalar copy of the patches into a staging block: the input transforms alone 1.4x (F(2x2,
                              5x5), F(4x4)) to 2.0x (F(2x2, 3x3)) faster, 1 thread; with AVX2 (emulated) 1.1-2.0x.
                              The same bits as the copy, both compiled without fastmath (see Bits below). Written
                              straight into the packed-B layout of ``kernels.gemm`` (``(sliver, C/group, NR)`` per xi).
3. ``block``               - ``kernels.gemm``'s macro kernel and LLVM IR micro-kernel, unchanged: per xi,
                              M_xi[rows, tiles] = U_xi[rows, :] @ V_xi (one K panel for C/group <= KC).
4. ``_output_transform`` + ``_scatter`` - A^T M A per (output channel, 16-tile sliver) by ``_transform8``, + bias, the
                              fused ReLU (the conv kernels' expression, optionally capped), stored where the tile is
                              inside the output (partial tiles at the right and bottom edges).
5. ``_winograd_tasks_worker`` - tasks (chunk of up to SLIVERS x 16 tiles of the whole batch, or of all of them where
                              they fill 2 to FEW_SLIVERS slivers; group; block of output channels) claimed by one worker
                              per thread (``gemm.claim``); each task runs 2, then 3 and 4 for KB_INNER output channels
                              at a time, in its own workspace (V: alpha^2 x C/group x 16 x the chunk's slivers floats,
                              M: alpha^2 x KB_INNER rows, or the block's, x 16 x slivers), so the transformed data stays
                              in the core's caches (a FEW_SLIVERS chunk's M: up to 384 KB at F(2x2) in 2 MR-row
                              blocks). Blocks of output channels only when chunks x groups leave threads idle
                              (batch 1); then ``_winograd_inputs_worker`` runs 2 first as its own parallel pass
                              (tasks of channels) and the blocks share its result.

Every tile is a column of the GEMMs computed by the same instructions whatever the chunk, block or batch size:
an image gives the same bits alone and in a batch, on any thread count.

Error: the transforms are exact in real arithmetic; in float32 the rounding of the transformed values grows with the
transform's coefficients (A^T up to 8, B^T up to 2.5 for F(4x4, 3x3)). ``tests/kernels/test_winograd.py`` asserts,
against ``conv2d_forward_ref`` in float64, |y - y64| <= 2e-5 * S + 1e-7 for the F(4x4) tiles, 1e-6 * S + 1e-7 for
F(2x2, 3x3) and 2e-6 * S + 1e-7 for F(2x2, 5x5), S the convolution of the absolute values (|x| conv |w| + |b|);
observed maxima of |y - y64| / S on its cases: F(4x4, 3x3) 1.24e-5 (one corner output of a 4-channel map with pad 2,
where S is small and the tile's transform mixes in its larger neighbours; the next 3.3e-6; 5.6e-6 before this round's
changes; over 12 random shapes the maximum, 99.9th percentile and RMS 2.7e-6, 7.6e-7 and 1.0e-7, before 2.5e-6, 7.3e-7
and 1.0e-7), F(4x4, 5x5) 3.4e-6, F(2x2, 3x3) 4.4e-7, F(2x2, 5x5) 6.9e-7, kernels.conv's im2col 2.8e-7 (of max |y|:
1.9e-6, 6.0e-6, 3.6e-7, 1.6e-6, 5.2e-7). The 5x5 tiles' points: see POINTS. CaffeNet (random He weights, inputs *255
- 120, batch 4 and 10): softmax within 8.7e-6 of OpenCV DNN with F(2x2), 1.9e-5 with F(4x4), 3.5e-6 without (3x3
layers only); with conv2 on F(4x4, 5x5) (the test's seed-3 weights, batch 4) 1.01e-5 from the float64 net (7.6e-6
with F(2x2, 5x5) or without), 1.36e-5 from OpenCV DNN, itself 2.38e-5 from the float64 net; over 8 seeds at batch 10
see `choose`.

Where it runs: ``choose`` (stride 1, dilation 1; 3x3 with C/group and K/group >= 64 and enough output pixels, the
tile per layer, F(4x4) on the larger maps, F(2x2) on the smaller; 5x5 from 16 channels per group and 196 output
pixels in the batch F(4x4, 5x5), else from 24 channels and 49 pixels F(2x2, 5x5); ``CREMA_WINOGRAD=2`` / ``4``
force a tile, ``0`` turns it off); taken by ``net.layers.convolution`` in the CPU plan and forward of TEST-phase
layers (``layer.winograd = False`` turns it off for one layer; make a new plan after, e.g. ``net.reshape()``).
A TRAIN-phase net takes it only with ``net.layers.convolution.WINOGRAD_TRAIN`` (off: see
``ConvolutionLayer.winograd_tile`` for what it gains and what it costs a new machine's first training iteration).

Bits: the transforms' sums are taken in the order ``_linear`` emits them (the input transform's plain, the output
transform's with llvm.fma for the coefficients other than +-1): ``_transform_inputs`` and ``_output_transform`` say
fastmath=False, as Numba's callees otherwise inherit the caller's fastmath, and LLVM then reordered the sums
differently where it inlined or cloned them (an image alone and in a batch differed in the last bit with F(2x2,
5x5): test_each_image_same_bits_alone_and_in_a_batch).

Public: ``winograd_forward(x, w, b, *, pad, group, out, relu, relu_max, m) -> y`` (checks its arguments),
``WinogradRunner`` (the shape work once, kept by a Net's plan), ``choose``, ``winograd_applies``, ``transform_weights``,
``transform_packed`` (transform_weights' U as ``pack_weights`` lays it), ``transform_weights_ref``,
``pack_weights``, ``winograd_forward_ref``, ``matrices(m, r)``, ``kernel_size``.

Benchmark (checks against the reference first): ``python -m benchmarks --only layers --filter winograd``.
"""

from __future__ import annotations

import functools
import math
import os
from fractions import Fraction

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import carray, njit
from numba.core import cgutils, errors, types
from numba.extending import intrinsic

from kernels.conv import check_conv2d_args, conv2d_geometry
from kernels.gemm import Workspace, as64, block, claim, flat_f32, splat, stack_empty
from kernels.tasks import Task
from kernels.tiling import KC, MR, NR

PACKED_U = True  # U as the micro-kernel's packed A (pack_weights), else row-major in place (read when a runner is made)
SLIVERS = 2  # 16-tile slivers per task at most: the GEMMs reuse each U_xi block (in L2) for SLIVERS B slivers
# a batch whose tiles fill 2 to this many 16-tile slivers is one chunk, its tasks blocks of 2 MR output channels or
# more, so each U_xi is read once a forward: CaffeNet's 13 x 13 maps at batch 1 (49 tiles at F(2x2)) were 4 chunks of
# 16 tiles, each reading its group's whole U, the fourth for one tile (0: off)
FEW_SLIVERS = 4
KB_INNER = 96  # output channels per pass inside a task (a multiple of MR): M is alpha^2 x KB_INNER x 16 x slivers
TILE = 2  # the tile of the functions' defaults, F(2x2, 3x3); the nets' layers get theirs from `choose`
MIN_CHANNELS = 64  # choose: C/group and K/group at least this (smaller GEMMs lose to the transforms)
MIN_OUTPUT = {2: 7, 4: 8}  # choose: output height and width at least this, per tile
MIN_PIXELS = {2: 640, 4: 196}  # choose: output pixels of the batch at least this (13 x 13 maps: batch 4 / 2)
FROZEN_MIN_PIXELS = 49  # choose: ... for F(2x2) with frozen weights (no per-call compare): one 7 x 7 map
MIN_CHANNELS_5 = {2: 24, 4: 16}  # choose, 5x5 kernels, per tile: C/group and K/group at least this
MIN_OUTPUT_5 = 7  # ... output height and width at least this (both tiles)
MIN_PIXELS_5 = {2: 49, 4: 196}  # ... output pixels of the batch at least this
AUTO_F4_MIN_OUTPUT = 14  # choose, CREMA_WINOGRAD unset: F(4x4) on outputs of at least 14 x 14, else F(2x2)


def cook_toom(points, m: int, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of F(m, r) on the finite interpolation points `points` (m + r - 2 of them, exact numbers such as
    ints and Fractions) and infinity, by the Cook-Toom construction (Lavin & Gray; A. Lavin's wincnn), computed in
    exact rational arithmetic and returned as float64: A^T[i, j] = p_j^i; G[j, k] = p_j^k / prod_{l != j} (p_j - p_l);
    row j of B^T = the coefficients of prod_{l != j} (x - p_l); the last row/column of each the point at infinity."""
    n = m + r - 1
    p = [Fraction(x) for x in points]
    if len(p) != n - 1 or len(set(p)) != len(p):
        raise ValueError(f"winograd: F({m}, {r}) needs {n - 1} distinct finite points, got {points!r}")

    def poly(roots):  # coefficients (lowest first) of prod (x - root)
        c = [Fraction(1)]
        for root in roots:
            c = [Fraction(0), *c]
            for i in range(len(c) - 1):
                c[i] -= root * c[i + 1]
        return c

    at = [[p[j] ** i for j in range(n - 1)] + [Fraction(int(i == m - 1))] for i in range(m)]
    f = [math.prod(p[j] - p[q] for q in range(n - 1) if q != j) for j in range(n - 1)]
    g = [[p[j] ** k / f[j] for k in range(r)] for j in range(n - 1)] + [[Fraction(int(k == r - 1)) for k in range(r)]]
    bt = [[*poly(p[:j] + p[j + 1 :]), Fraction(0)][:n] for j in range(n - 1)] + [poly(p)[:n]]
    return (np.array(bt, np.float64), np.array(g, np.float64), np.array(at, np.float64))


# F(4x4, 3x3)'s points: 0, 1, -1, 1/2, -2 (and infinity). Lavin & Gray's 0, +-1, +-2 gave 2-3x the float32 error
# (|y - y64| / max |y| 9.4e-6 vs 3.2e-6 at C = 192; CaffeNet's softmax 1.7e-5 from OpenCV DNN's at batch 10); 1/2 and
# -2 keep every coefficient of B^T and A^T a power-of-two fraction (exact in float32), as Barabasz et al. recommend
# (arXiv:1803.10986).
# F(2x2, 5x5) (alpha 6, as F(4x4, 3x3): the same points, so the same B^T): 0, 1, -1, 1/2, -2 gave |y - y64| / S
# 4.7e-7 on CaffeNet's conv2 (48 -> 128 per group, 27 x 27, a float32 NumPy model of the transforms), im2col 2.7e-7;
# 0, +-1, +-2 and 0, +-1, +-1/2 2.7x that (1.2e-6, 1.3e-6). F(4x4, 5x5) (alpha 8): 0, +-1, +-2, +-1/2 1.7e-6 in that
# model; 3 or 1/4 in place of one of them 6-7e-5.
POINTS = {
    (2, 3): (0, 1, -1),
    (4, 3): (0, 1, -1, Fraction(1, 2), -2),
    (2, 5): (0, 1, -1, Fraction(1, 2), -2),
    (4, 5): (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)),
}


def matrices(m: int = TILE, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of F(m x m, r x r) in float64: B^T (alpha, alpha), G (alpha, r), A^T (m, alpha), alpha = m + r -
    1, on the points POINTS[m, r] (``cook_toom``): F(2x2, 3x3), F(4x4, 3x3), F(2x2, 5x5) and F(4x4, 5x5)."""
    if (m, r) not in POINTS:
        raise ValueError(
            f"winograd: (output tile, kernel) must be (2, 3), (4, 3), (2, 5) or (4, 5) (F(2x2, 3x3), F(4x4, 3x3), "
            f"F(2x2, 5x5), F(4x4, 5x5)), got ({m!r}, {r!r})"
        )
    return _matrices(m, r)


@functools.cache
def _matrices(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cook_toom's exact rational arithmetic once per tile (0.66 ms a call for F(4x4, 5x5)); read-only arrays."""
    out = cook_toom(POINTS[m, r], m, r)
    for a in out:
        a.flags.writeable = False
    return out


def kernel_size(w_shape) -> int:
    """r of an r x r filter Winograd takes (3 or 5), else ValueError."""
    kh, kw = w_shape[2:4]
    if kh != kw or kh not in (3, 5):
        raise ValueError(f"winograd: 3x3 or 5x5 kernels only, got {kh}x{kw}")
    return int(kh)


def _tiles(oh: int, ow: int, m: int) -> tuple[int, int]:
    return -(-oh // m), -(-ow // m)


def winograd_forward_ref(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, *, pad=(0, 0), group: int = 1, m: int = TILE
) -> np.ndarray:
    """The Winograd algorithm in float64 NumPy (returned as float64): x (N, C, H, W), w (K, C/group, r, r), b (K,) or
    None -> y (N, K, OH, OW), stride 1. Equal to the direct convolution up to float64 rounding."""
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    (n, c, h, wd), (k, cg, _, _), _, (ph, pw), _, (oh, ow) = conv2d_geometry(x64.shape, w64.shape, 1, pad, 1)
    r = kernel_size(w64.shape)
    bt, gm, at = matrices(m, r)
    alpha = m + r - 1
    th, tw = _tiles(oh, ow, m)
    xp = np.zeros((n, c, th * m + r - 1, tw * m + r - 1))
    rows, cols = min(h, th * m + r - 1 - ph), min(wd, tw * m + r - 1 - pw)
    xp[:, :, ph : ph + rows, pw : pw + cols] = x64[:, :, :rows, :cols]
    # patches d[n, c, ty, tx, i, j] = xp[n, c, ty*m + i, tx*m + j]
    idx_r = (np.arange(th) * m)[:, None] + np.arange(alpha)[None, :]
    idx_c = (np.arange(tw) * m)[:, None] + np.arange(alpha)[None, :]
    d = xp[:, :, idx_r[:, None, :, None], idx_c[None, :, None, :]]  # (n, c, th, tw, alpha, alpha)
    v = np.einsum("ai,ncyxij,bj->ncyxab", bt, d, bt)
    u = np.einsum("ai,kcij,bj->kcab", gm, w64, gm)
    kg = k // group
    mm = np.zeros((n, k, th, tw, alpha, alpha))
    for g in range(group):
        mm[:, g * kg : (g + 1) * kg] = np.einsum(
            "kcab,ncyxab->nkyxab", u[g * kg : (g + 1) * kg], v[:, g * cg : (g + 1) * cg]
        )
    yt = np.einsum("pa,nkyxab,qb->nkypxq", at, mm, at).reshape(n, k, th * m, tw * m)[:, :, :oh, :ow]
    if b is not None:
        yt = yt + np.asarray(b, np.float64).reshape(1, k, 1, 1)
    return yt


def transform_weights(w: np.ndarray, group: int, m: int = TILE) -> np.ndarray:
    """U = G g G^T of every filter, float64 arithmetic rounded once to float32: w (K, C/group, r, r) -> flat
    (group, alpha^2, K/group, C/group), each (group, xi) block a row-major (K/group, C/group) matrix. On the threads
    (`_transform_worker`); the sums' order: see there."""
    return _transformed(w, group, m, packed=False)


def transform_packed(w: np.ndarray, group: int, m: int = TILE) -> np.ndarray:
    """transform_weights' U laid out as pack_weights lays it (the micro-kernel's packed A), written so directly:
    the same values."""
    return _transformed(w, group, m, packed=True)


def transform_weights_ref(w: np.ndarray, group: int, m: int = TILE) -> np.ndarray:
    """transform_weights in NumPy (einsum in float64, rounded once to float32), the reference its tests compare
    with: the sums in einsum's order, so a value may differ from transform_weights' in its last bit."""
    r = kernel_size(w.shape)
    _, gm, _ = matrices(m, r)
    k, cg = w.shape[:2]
    alpha = m + r - 1
    u = np.einsum("ai,kcij,bj->abkc", gm, np.asarray(w, np.float64), gm).reshape(alpha * alpha, group, k // group, cg)
    return np.ascontiguousarray(u.transpose(1, 0, 2, 3), dtype=np.float32).reshape(-1)


def _transformed(w: np.ndarray, group: int, m: int, packed: bool) -> np.ndarray:
    """U of w on the threads (`_transform_worker`), laid out as pack_weights lays it when `packed`."""
    r = kernel_size(w.shape)
    _, gm, _ = matrices(m, r)
    k, cg = w.shape[:2]
    kg = k // group
    a2 = (m + r - 1) ** 2
    rows = -(-kg // MR) * MR if packed else kg
    u = np.empty(group * a2 * rows * cg, np.float32)
    wf = np.ascontiguousarray(w, np.float32).reshape(-1)
    jobs = group * -(-kg // MR)
    workers = max(1, min(numba.get_num_threads(), jobs))
    run = _TRANSFORM.parallel if workers > 1 else _TRANSFORM.serial
    run(_TRANSFORM.address, workers, wf, gm.copy(), group, kg, cg, packed, u, workers)
    return u


T_MAX = 8 * 5 * 16  # _transform_worker's rows of G g: alpha x r x MR doubles at most (F(4x4, 5x5), MR <= 16)
W_MAX = 5 * 5 * 16  # ... and its filters of one channel: r x r x MR doubles at most


def _transform_worker(t, w, gm, group, kg, cg, packed, u, workers):  # pragma: no cover - compiled
    """Worker t's share of the (group, MR-row tile) jobs of U = G g G^T (kernels.tasks): per input channel, the MR
    filters of the tile side by side (the loops over them vectorise), in float64: T = G g (T[a, j] = the sum over i
    ascending of G[a, i] g[i, j]), then U[a, b] = the sum over j ascending of T[a, j] G[b, j], zero coefficients
    skipped, rounded once to float32. `packed`: U as pack_weights lays it (zero rows past K/group), else
    transform_weights' layout. w flat (K, C/group, r, r) float32, gm (alpha, r) float64."""
    alpha, r = gm.shape
    a2 = alpha * alpha
    taps = r * r
    tiles = (kg + MR - 1) // MR
    jobs = group * tiles
    tb = carray(stack_empty(T_MAX, np.float64), (T_MAX,))
    wl = carray(stack_empty(W_MAX, np.float64), (W_MAX,))
    ub = carray(stack_empty(16, np.float64), (16,))
    for job in range(t * jobs // workers, (t + 1) * jobs // workers):
        g = job // tiles
        tile = job - g * tiles
        k0 = tile * MR
        rows = min(MR, kg - k0)
        for c in range(cg):
            for p in range(taps):  # the tile's filters of channel c, tap by tap (zeros past K/group)
                for q in range(MR):
                    wl[p * MR + q] = np.float64(w[((g * kg + k0 + q) * cg + c) * taps + p]) if q < rows else 0.0
            for a in range(alpha):
                for j in range(r):
                    base = (a * r + j) * MR
                    for q in range(MR):
                        tb[base + q] = 0.0
                    for i in range(r):
                        gv = gm[a, i]
                        if gv != 0.0:
                            at = (i * r + j) * MR
                            for q in range(MR):
                                tb[base + q] += gv * wl[at + q]
            for a in range(alpha):
                for b in range(alpha):
                    for q in range(MR):
                        ub[q] = 0.0
                    for j in range(r):
                        gv = gm[b, j]
                        if gv != 0.0:
                            base = (a * r + j) * MR
                            for q in range(MR):
                                ub[q] += tb[base + q] * gv
                    xi = a * alpha + b
                    if packed:
                        o = (((g * a2 + xi) * tiles + tile) * cg + c) * MR
                        for q in range(MR):
                            u[o + q] = np.float32(ub[q])
                    else:
                        o = ((g * a2 + xi) * kg + k0) * cg + c
                        for q in range(rows):
                            u[o + q * cg] = np.float32(ub[q])


_TRANSFORM = Task(
    _transform_worker,
    (types.float32[::1], types.float64[:, ::1], types.int64, types.int64, types.int64, types.boolean,
     types.float32[::1], types.int64),
    boundscheck=False,
)  # fmt: skip


def pack_weights(u: np.ndarray, group: int, m: int, kg: int, cg: int, r: int = 3) -> np.ndarray:
    """transform_weights' U as the GEMM micro-kernel's packed A (``kernels.gemm.block`` with lda = 0): per (group, xi)
    block, K/group rows rounded up to MR with zero rows, then (row tile, C/group, MR) row-major, so a tile reads its
    rows' weights as one stream, 48 consecutive bytes per k (PACKED_U)."""
    a2 = (m + r - 1) * (m + r - 1)
    kgp = -(-kg // MR) * MR
    out = np.zeros((group * a2, kgp, cg), np.float32)
    out[:, :kg] = u.reshape(group * a2, kg, cg)
    return np.ascontiguousarray(out.reshape(group * a2, kgp // MR, MR, cg).transpose(0, 1, 3, 2)).reshape(-1)


# ------------------------------------------------------------------------------------------------ Numba kernels
V_PAD = 16  # floats after each V_xi: the alpha^2 V_xi a sliver's transform writes are not a power of two apart


@njit(cache=True, inline="always")
def _v_stride(nsl, cg):
    """Floats from one V_xi to the next: nsl slivers x C/group x NR, and V_PAD (the input transform writes each
    channel's 16 tiles to alpha^2 places v_xi apart: 64 KB apart for CaffeNet's conv3 at batch 1, all in one L1 set)."""
    return nsl * cg * NR + V_PAD


def _linear(builder, coeffs, values, fused: bool = False):
    """sum_k coeffs[k] * values[k] as LLVM float vector ops, left to right, skipping zero coefficients (a coefficient
    +-1 is an fadd / fsub, others an fmul by the float32 constant and an fadd, or with `fused` an llvm.fma onto the
    sum so far)."""
    out = None
    vec = values[0].type
    fma = cgutils.get_or_insert_function(
        builder.module, llvm_ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{vec.count}f32"
    )
    for c, v in zip(coeffs, values):
        c = float(c)
        if c == 0.0:
            continue
        if fused and out is not None and c not in (1.0, -1.0):
            out = builder.call(fma, [llvm_ir.Constant(vec, [float(np.float32(c))] * vec.count), v, out])
            continue
        if c not in (1.0, -1.0):
            v = builder.fmul(llvm_ir.Constant(v.type, [float(np.float32(abs(c)))] * v.type.count), v)
        if out is None:
            out = v if c > 0 else builder.fsub(llvm_ir.Constant(v.type, [0.0] * v.type.count), v)
        else:
            out = builder.fadd(out, v) if c > 0 else builder.fsub(out, v)
    return out


_VARIANTS = ((4, 3), (2, 3), (2, 5), (4, 5))  # _transform8's `which` // 2: (m, r)
LANE_ROWS = 4 * NR  # _gather_transform8's lanes: 4 rows of NR


@intrinsic
def _transform8(typingctx, which, src, s_off, s_stride, dst, d_off, d_stride):
    """One 2-D Winograd transform T X T^T for 8 tiles at once (8 vector lanes), in LLVM IR: element p of X (row-major,
    r x r) for lanes 0..7 at src[s_off + p * s_stride:][:8], element p of the result at dst[d_off + p * d_stride:][:8].
    which (a literal): 0 the input transform of F(4x4, 3x3) (T = B^T, 6 x 6), 1 its output transform (T = A^T,
    6 -> 4), 2 and 3 the same for F(2x2, 3x3), 4 and 5 for F(2x2, 5x5) (T = B^T, 6 x 6; A^T, 6 -> 2), 6 and 7 for
    F(4x4, 5x5) (8 x 8; 8 -> 4). The coefficients come from ``matrices`` at compile time; an output transform's
    (odd `which`) other than +-1 as FMAs (`_linear`'s `fused`). Numba's own loops over the
    lanes stayed scalar or under runtime overlap checks (it cannot rule out that src and dst overlap)."""
    if not isinstance(which, types.IntegerLiteral):
        raise errors.RequireLiteralValue(which)
    m, r = _VARIANTS[which.literal_value // 2]
    bt, _, at = matrices(m, r)
    t = bt if which.literal_value % 2 == 0 else at
    flat_f32(src, dst)
    sig = types.void(which, src, s_off, s_stride, dst, d_off, d_stride)

    def codegen(context, builder, signature, args):
        _, src_v, so_v, ss_v, dst_v, do_v, ds_v = args
        vec = llvm_ir.VectorType(llvm_ir.FloatType(), 8)
        s_data = context.make_array(signature.args[1])(context, builder, src_v).data
        d_data = context.make_array(signature.args[4])(context, builder, dst_v).data
        so, ss, do, ds = (as64(builder, v) for v in (so_v, ss_v, do_v, ds_v))
        i64 = llvm_ir.IntType(64)
        cols = t.shape[1]
        x = []
        for p in range(cols * cols):
            o = builder.add(so, builder.mul(ss, llvm_ir.Constant(i64, p)))
            x.append(builder.load(builder.bitcast(builder.gep(s_data, [o]), vec.as_pointer()), align=4))
        _emit_transform(builder, t, x, d_data, do, ds, fused=which.literal_value % 2 == 1)
        return context.get_dummy_value()

    return sig, codegen


def _emit_transform(builder, t, x, d_data, do, ds, fused: bool = False):
    """T X T^T of the <8 x float> values x (row-major, X cols x cols), element p of the result stored at
    d_data[do + p * ds:][:8] (do, ds i64 values); `fused`: _linear's FMAs."""
    vec = llvm_ir.VectorType(llvm_ir.FloatType(), 8)
    i64 = llvm_ir.IntType(64)
    rows, cols = t.shape
    y = [
        [_linear(builder, t[i], [x[k * cols + j] for k in range(cols)], fused) for j in range(cols)]
        for i in range(rows)
    ]
    for i in range(rows):  # (T X) T^T: row i of T X against the rows of T
        for j in range(rows):
            z = _linear(builder, t[j], y[i], fused)
            o = builder.add(do, builder.mul(ds, llvm_ir.Constant(i64, i * rows + j)))
            builder.store(z, builder.bitcast(builder.gep(d_data, [o]), vec.as_pointer()), align=4)


@intrinsic
def _gather_transform8(typingctx, which, xf, lanes, lane0, h, wd, dst, d_off, d_stride):
    """_transform8's input transform (which 0, 2, 4 or 6) of 8 tiles, their patches read straight from the input, with no
    staging copy. lanes: int64, LANE_ROWS = 4 rows of NR lanes: the flat index in xf of the patch's first element, its
    first row and first column in the (h, wd) plane (negative in the padding), and > 0 for a live lane (0 past the
    chunk's tiles); lanes lane0 .. lane0 + 7 are read. Element (r, q) of the 8 patches is one masked vector gather
    (``llvm.masked.gather``: vgatherqps with AVX-512): a lane whose element lies outside the plane (the padding, never
    materialised) or that is not live reads nothing and takes 0. The result as _transform8 stores it."""
    if not isinstance(which, types.IntegerLiteral):
        raise errors.RequireLiteralValue(which)
    m, r = _VARIANTS[which.literal_value // 2]
    t = matrices(m, r)[0]
    alpha = m + r - 1
    flat_f32(xf, dst)
    sig = types.void(which, xf, lanes, lane0, h, wd, dst, d_off, d_stride)

    def codegen(context, builder, signature, args):
        _, xf_v, lanes_v, l0_v, h_v, wd_v, dst_v, do_v, ds_v = args
        f32, i64, i32 = llvm_ir.FloatType(), llvm_ir.IntType(64), llvm_ir.IntType(32)
        vf, vi = llvm_ir.VectorType(f32, 8), llvm_ir.VectorType(i64, 8)
        vp, vb = llvm_ir.VectorType(llvm_ir.PointerType(), 8), llvm_ir.VectorType(llvm_ir.IntType(1), 8)
        module = builder.module
        name = "llvm.masked.gather.v8f32.v8p0"
        gather = module.globals.get(name) or llvm_ir.Function(module, llvm_ir.FunctionType(vf, [vp, i32, vb, vf]), name)
        x_data = context.make_array(signature.args[1])(context, builder, xf_v).data
        l_data = context.make_array(signature.args[2])(context, builder, lanes_v).data
        d_data = context.make_array(signature.args[6])(context, builder, dst_v).data
        l0, hh, ww, do, ds = (as64(builder, v) for v in (l0_v, h_v, wd_v, do_v, ds_v))

        def lane_vec(row):  # lanes[row, lane0 : lane0 + 8]
            o = builder.add(l0, llvm_ir.Constant(i64, row * NR))
            return builder.load(builder.bitcast(builder.gep(l_data, [o]), vi.as_pointer()), align=8)

        def splat_i64(v):
            return splat(builder, v, vi)

        base, y0, x0, valid = lane_vec(0), lane_vec(1), lane_vec(2), lane_vec(3)
        zero_i = llvm_ir.Constant(vi, [0] * 8)
        live = builder.icmp_signed(">", valid, zero_i)
        hv, wv = splat_i64(hh), splat_i64(ww)

        def inside(start, k, size):  # 0 <= start + k < size, per lane
            at = builder.add(start, llvm_ir.Constant(vi, [k] * 8))
            return builder.and_(builder.icmp_signed(">=", at, zero_i), builder.icmp_signed("<", at, size))

        row_ok = [builder.and_(inside(y0, k, hv), live) for k in range(alpha)]
        col_ok = [inside(x0, k, wv) for k in range(alpha)]
        addr = builder.add(splat_i64(builder.ptrtoint(x_data, i64)), builder.mul(base, llvm_ir.Constant(vi, [4] * 8)))
        row_step = splat_i64(builder.mul(ww, llvm_ir.Constant(i64, 4)))
        zeros = llvm_ir.Constant(vf, [0.0] * 8)
        x = []
        for rr in range(alpha):
            for q in range(alpha):
                at = builder.add(addr, llvm_ir.Constant(vi, [4 * q] * 8)) if q else addr
                mask = builder.and_(row_ok[rr], col_ok[q])
                x.append(builder.call(gather, [builder.inttoptr(at, vp), llvm_ir.Constant(i32, 4), mask, zeros]))
            addr = builder.add(addr, row_step)
        _emit_transform(builder, t, x, d_data, do, ds)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, boundscheck=False, fastmath=False)
def _output_transform(mb, m_off, m_xi, m, r, res, bias, epilogue):
    """res[(p * m + q) * NR + j] = (A^T M A)[p, q] + bias for the 16 lanes (tiles) of one output channel, M_xi of lane
    j at mb[xi * m_xi + m_off + j] (two _transform8 calls, their non-unit coefficients as FMAs); then the fused ReLU
    (kernels.conv's expression, capped when relu_max is finite). fastmath=False said, not inherited from the task: with
    it LLVM reordered the sums differently in the copies it made of the task's loops (see the module's Bits)."""
    relu, relu_max = epilogue
    zero = np.float32(0.0)
    if m == 4 and r == 5:
        _transform8(7, mb, m_off, m_xi, res, 0, NR)
        _transform8(7, mb, m_off + 8, m_xi, res, 8, NR)
    elif m == 4:
        _transform8(1, mb, m_off, m_xi, res, 0, NR)
        _transform8(1, mb, m_off + 8, m_xi, res, 8, NR)
    elif r == 5:
        _transform8(5, mb, m_off, m_xi, res, 0, NR)
        _transform8(5, mb, m_off + 8, m_xi, res, 8, NR)
    else:
        _transform8(3, mb, m_off, m_xi, res, 0, NR)
        _transform8(3, mb, m_off + 8, m_xi, res, 8, NR)
    for i in range(np.uint64(m * m * NR)):  # one array: this loop vectorises
        v = res[i] + bias
        if relu:  # kernels.conv's ReLU expression (same as kernels.activations), then the cap when finite
            v = max(v, zero) + zero * min(v, zero)
            if relu_max != np.inf and v > relu_max:
                v = np.float32(relu_max)
        res[i] = v


@njit(cache=True, boundscheck=False, inline="always")
def _scatter_lane(res, m, y, o, ow, j):  # pragma: no cover - compiled
    """A whole m x m tile of lane j into y[o + p * ow + q]: inlined with a constant m (see _scatter), unrolled."""
    for p in range(m):
        for q in range(m):
            y[np.uint64(o + p * ow + q)] = res[np.uint64((p * m + q) * NR + j)]


@njit(cache=True, boundscheck=False)
def _scatter(res, m, y, ybase, ty, tx, oh, ow, valid):
    """The m x m outputs of lanes j < valid (res[(p * m + q) * NR + j]) into y[ybase[j] + p * ow + q], where pixel
    (ty[j] * m + p, tx[j] * m + q) lies inside the (oh, ow) output."""
    for j in range(valid):
        rows = min(m, oh - ty[j] * m)
        cols = min(m, ow - tx[j] * m)
        if rows == m and cols == m:  # a whole tile: constant trip counts
            if m == 4:
                _scatter_lane(res, 4, y, ybase[j], ow, j)
            else:
                _scatter_lane(res, 2, y, ybase[j], ow, j)
            continue
        for p in range(rows):
            o = np.uint64(ybase[j] + p * ow)
            for q in range(cols):
                y[o + np.uint64(q)] = res[np.uint64((p * m + q) * NR + j)]


@njit(cache=True, boundscheck=False)
def _tile_lanes(geometry, t_first, s, valid, tyv, txv, img):
    """Tile row, tile column and image of the 16 lanes of sliver s of the chunk starting at tile t_first (lanes past
    `valid` repeat the last tile)."""
    m, oh, ow = geometry[10], geometry[8], geometry[9]
    tw = (ow + m - 1) // m
    tpi = ((oh + m - 1) // m) * tw
    for j in range(NR):
        t = t_first + s * NR + min(j, valid - 1)
        ni = t // tpi
        r = t - ni * tpi
        tyv[j] = r // tw
        txv[j] = r - tyv[j] * tw
        img[j] = ni


@njit(cache=True, boundscheck=False)
def _chunk_tiles(geometry, chunk):
    """(first tile, tiles, 16-tile slivers) of a chunk."""
    n_img, m, oh, ow, per = geometry[0], geometry[10], geometry[8], geometry[9], geometry[11]
    total = n_img * ((oh + m - 1) // m) * ((ow + m - 1) // m)
    t_first = chunk * per
    ntiles = min(per, total - t_first)
    return t_first, ntiles, (ntiles + NR - 1) // NR


@njit(cache=True, boundscheck=False, fastmath=False)
def _transform_inputs(xf, geometry, chunk, g, c0, c1, v):
    """V of channels c0..c1 of group g for the tiles of a chunk: v[xi * v_xi + (s * C/group + c) * NR + j], v_xi =
    slivers * C/group * NR + V_PAD (_v_stride; the packed-B layout of each xi), by _gather_transform8 (two calls of 8
    lanes per sliver and channel). fastmath=False said, not inherited: its callers differ (the task with fastmath, the
    pre-pass without), and with reassociation allowed LLVM ordered the transform's sums differently in each
    (different bits for an image alone and in a batch)."""
    _, c_all, h, wd, _, group, ph, pw, _, _, m, _, _, _, _, r = geometry
    cg = c_all // group
    t_first, ntiles, nsl = _chunk_tiles(geometry, chunk)
    v_xi = _v_stride(nsl, cg)
    lanes = carray(stack_empty(LANE_ROWS, np.int64), (LANE_ROWS,))  # per lane: patch start in xf, row, column, live
    tyv = carray(stack_empty(NR, np.int64), (NR,))
    txv = carray(stack_empty(NR, np.int64), (NR,))
    img = carray(stack_empty(NR, np.int64), (NR,))
    plane = h * wd
    for s in range(nsl):
        valid = min(NR, ntiles - s * NR)
        _tile_lanes(geometry, t_first, s, valid, tyv, txv, img)
        for j in range(NR):
            lanes[NR + j] = tyv[j] * m - ph
            lanes[2 * NR + j] = txv[j] * m - pw
            lanes[3 * NR + j] = 1 if j < valid else 0
        for ci in range(c0, c1):
            ch = g * cg + ci
            for j in range(NR):
                lanes[j] = (img[j] * c_all + ch) * plane + lanes[NR + j] * wd + lanes[2 * NR + j]
            o = (s * cg + ci) * NR
            if m == 4 and r == 5:
                _gather_transform8(6, xf, lanes, 0, h, wd, v, o, v_xi)
                _gather_transform8(6, xf, lanes, 8, h, wd, v, o + 8, v_xi)
            elif m == 4:
                _gather_transform8(0, xf, lanes, 0, h, wd, v, o, v_xi)
                _gather_transform8(0, xf, lanes, 8, h, wd, v, o + 8, v_xi)
            elif r == 5:
                _gather_transform8(4, xf, lanes, 0, h, wd, v, o, v_xi)
                _gather_transform8(4, xf, lanes, 8, h, wd, v, o + 8, v_xi)
            else:
                _gather_transform8(2, xf, lanes, 0, h, wd, v, o, v_xi)
                _gather_transform8(2, xf, lanes, 8, h, wd, v, o + 8, v_xi)


def _winograd_inputs_worker(t, xf, n, c, h, wd, k, group, ph, pw, oh, ow, m, per, kb, chunks, kblocks, r, cblocks,
                            vall, vblock, counter):  # fmt: skip  # pragma: no cover - compiled
    """Worker t (kernels.tasks: one per thread) of the input transform of every (chunk, group) into
    vall[(chunk * group + g) * vblock:], claiming (chunk, group, block of channels) tasks (``gemm.claim``): the
    pre-pass when output channels are split into blocks (batch 1), so the blocks share one input transform. The
    geometry (N, C, H, W, K, group, pad_h, pad_w, OH, OW, m, tiles per chunk, k-block rows, chunks, k-blocks, r)
    comes as separate numbers (a task's arguments)."""
    geometry = (n, c, h, wd, k, group, ph, pw, oh, ow, m, per, kb, chunks, kblocks, r)
    cg = c // group
    ntask = chunks * group * cblocks
    task = claim(counter)
    while task < ntask:
        cb = task % cblocks
        cg_task = task // cblocks
        c0 = cb * cg // cblocks
        c1 = (cb + 1) * cg // cblocks
        v = vall[cg_task * vblock : (cg_task + 1) * vblock]
        _transform_inputs(xf, geometry, cg_task // group, cg_task % group, c0, c1, v)
        task = claim(counter)


def _winograd_tasks_worker(t, xf, u, bias, y, n, c, h, wd, k, group, ph, pw, oh, ow, m, per, kb, chunks, kblocks, r,
                           relu, relu_max, work, vall, vblock, zeros, counter, packed):  # fmt: skip  # pragma: no cover - compiled
    """Worker t (kernels.tasks: one per thread) of all tasks of a forward (see the module docstring, 5), claimed
    (``gemm.claim``): the geometry as in _winograd_inputs_worker; epilogue (relu, relu_max); work[t]: the worker's
    floats; vall: the inputs transformed by _winograd_inputs_worker (vblock floats per (chunk, group)) when there are
    k-blocks."""
    geometry = (n, c, h, wd, k, group, ph, pw, oh, ow, m, per, kb, chunks, kblocks, r)
    epilogue = (relu, relu_max)
    ntask = chunks * group * kblocks
    task = claim(counter)
    while task < ntask:
        _winograd_task(xf, u, bias, y, geometry, epilogue, work[t], vall, vblock, zeros, task, packed)
        task = claim(counter)


_F1, _F2, _I, _I1 = types.float32[::1], types.float32[:, ::1], types.int64, types.int64[::1]
# tasks, not prange loops: a plan with no OpenMP loop runs on kernels.taskpool's threads (CaffeNet's conv3-5)
_WINOGRAD_INPUTS = Task(_winograd_inputs_worker, (_F1, *(_I,) * 17, _F1, _I, _I1), boundscheck=False)
_WINOGRAD_TASKS = Task(
    _winograd_tasks_worker,
    (_F1, _F1, _F1, _F1, *(_I,) * 16, types.boolean, types.float64, _F2, _F1, _I, _F1, _I1, _I),
    boundscheck=False,
)


@njit(cache=True, fastmath=True, boundscheck=False)
def _winograd_task(xf, u, bias, y, geometry, epilogue, ws, vall, vblock, zeros, task, packed):
    """One (chunk, group, k-block) task: the chunk's inputs transformed (or read from vall), then per KB_INNER rows of
    output channels the alpha^2 GEMMs into M and the output transform."""
    _, c_all, _, _, k_all, group, _, _, oh, ow, m, _, kb, chunks, kblocks, r = geometry
    a2 = (m + r - 1) * (m + r - 1)
    cg, kg = c_all // group, k_all // group
    kgp = (kg + MR - 1) // MR * MR if packed else kg  # U's rows per (group, xi) block (packed: pack_weights)
    lda = 0 if packed else cg
    chunk = task % chunks
    g = (task // chunks) % group
    k0 = (task // (chunks * group)) * kb
    k1 = min(kg, k0 + kb)
    t_first, ntiles, nsl = _chunk_tiles(geometry, chunk)
    ldc = nsl * NR
    v_xi = _v_stride(nsl, cg)  # floats from one V_xi to the next: nsl slivers (cg, NR) and V_PAD
    res = ws[: m * m * NR]
    mb_all = ws[m * m * NR :]
    if kblocks > 1:
        v = vall[(chunk * group + g) * vblock : (chunk * group + g + 1) * vblock]
    else:
        v = mb_all[: a2 * v_xi]
        mb_all = mb_all[a2 * v_xi :]
        _transform_inputs(xf, geometry, chunk, g, 0, cg, v)
    base = carray(stack_empty(NR, np.int64), (NR,))
    tyv = carray(stack_empty(NR, np.int64), (NR,))
    txv = carray(stack_empty(NR, np.int64), (NR,))
    img = carray(stack_empty(NR, np.int64), (NR,))
    for i0 in range(k0, k1, KB_INNER):  # KB_INNER rows at a time: M (alpha^2 x rows x tiles) stays in L2
        i1 = min(k1, i0 + KB_INNER)
        m_xi = (i1 - i0) * ldc  # floats of one M_xi: rows x ldc
        mb = mb_all[: a2 * m_xi]
        for xi in range(a2):  # M_xi[i0:i1] = U_xi[i0:i1] @ V_xi, the GEMM micro-kernel (A packed: pack_weights)
            ap = u[(g * a2 + xi) * kgp * cg : (g * a2 + xi + 1) * kgp * cg]
            bp = v[xi * v_xi : (xi + 1) * v_xi - V_PAD]
            c_off = xi * m_xi - i0 * ldc  # block addresses rows from 0: row k lands at c_off + k * ldc
            for pc in range(0, cg, KC):
                kc = min(KC, cg - pc)
                block(ap, lda, bp, 0, mb, c_off, ldc, kg, ntiles, cg, pc, kc, i0, i1, 0, ntiles, pc > 0, zeros, 0,
                      False)  # fmt: skip
        for s in range(nsl):  # output transform, bias and ReLU, per output channel
            valid = min(NR, ntiles - s * NR)
            _tile_lanes(geometry, t_first, s, valid, tyv, txv, img)
            for kk in range(i0, i1):
                ko = g * kg + kk
                for j in range(NR):
                    base[j] = ((img[j] * k_all + ko) * oh + tyv[j] * m) * ow + txv[j] * m
                _output_transform(mb, (kk - i0) * ldc + s * NR, m_xi, m, r, res, bias[ko], epilogue)
                _scatter(res, m, y, base, tyv, txv, oh, ow, valid)


SAME_BLOCK = 4096  # _same: words compared a block at a time before it looks for a difference


@njit(cache=True, boundscheck=False)
def _same(a, b):
    """Do the flat uint32 arrays a and b (float32 weights viewed as their bits) hold the same words? The per-call
    check that the weights are the ones transformed: blocks of SAME_BLOCK words OR-ed together without a branch (the
    loop vectorises), stopping after the first block that differs; no temporary array. Bits, not values: -0.0 and 0.0
    differ, a NaN equals itself (its transform is the same). 2.4 MB of weights (a 256 -> 256 3x3 layer), hot: 0.24 ->
    0.056 ms, once per forward (CaffeNet's conv3: 3.5 MB; folded weights are not compared at all: `frozen`)."""
    if a.size != b.size:
        return False
    n = a.size
    for start in range(0, n, SAME_BLOCK):
        stop = min(n, start + SAME_BLOCK)
        diff = np.uint32(0)
        for i in range(np.uint64(start), np.uint64(stop)):  # unsigned: no wraparound test, so the loop vectorises
            diff |= a[i] ^ b[i]
        if diff != 0:
            return False
    return True


# ------------------------------------------------------------------------------------------------ public
def tile() -> int | None:
    """The output tile the environment asks for: CREMA_WINOGRAD unset (or any other value: auto, on, 1, ...) -> None,
    each layer's by `choose`; 2 -> F(2x2, 3x3) and 4 -> F(4x4, 3x3) wherever Winograd applies; 0 (or off / false /
    no) -> 0, Winograd off: every convolution takes kernels.conv's path. (Before the tile per layer, unset and 1 / on
    meant F(2x2).)"""
    v = os.environ.get("CREMA_WINOGRAD", "").strip().lower()
    if v in ("0", "off", "false", "no"):
        return 0
    return 4 if v == "4" else 2 if v == "2" else None


def enabled() -> bool:
    """False when CREMA_WINOGRAD=0 (see tile)."""
    return tile() != 0


def choose(x_shape, w_shape, stride, pad, dilation, group: int = 1, frozen: bool = False) -> int:
    """The Winograd tile of a forward of these shapes, 2 or 4, or 0 where it takes kernels.conv's path. 5x5 kernels,
    stride 1, dilation 1: tile m where there are at least MIN_CHANNELS_5[m] input and output channels per group, an
    output of at least MIN_OUTPUT_5 x MIN_OUTPUT_5 and MIN_PIXELS_5[m] output pixels in the batch, F(4x4, 5x5) first
    (or the environment's tile). 3x3 kernels,
    stride 1, dilation 1, at least MIN_CHANNELS input and output channels per group, and for tile m an output of at
    least MIN_OUTPUT[m] x MIN_OUTPUT[m] and MIN_PIXELS[m] output pixels in the batch (F(2x2) with frozen weights,
    `WinogradRunner(frozen=True)`: FROZEN_MIN_PIXELS). Which tile: the environment's (`tile`), else F(4x4) where it
    applies on an output of at least AUTO_F4_MIN_OUTPUT x AUTO_F4_MIN_OUTPUT, else F(2x2) where that applies.

    Why MIN_PIXELS: the transformed weights are alpha^2 / 9 times the size of the filters (16/9 for F(2x2), 4x for
    F(4x4)) and each is used once per 16 tiles, so with few pixels the GEMMs stream weights instead of computing.
    Measured on CaffeNet's conv3-5 (13 x 13 outputs; 2 threads, AVX2, interleaved, medians) against the im2col path:
    F(2x2) batch 1 0.81-0.86x, 2 0.93-1.06x, 4 1.05-1.17x, 10 1.16-1.45x, 64 1.17-1.41x; F(4x4) batch 1 0.96-0.97x,
    2 1.00-1.16x, 4 1.2-1.5x, 10 1.4-1.7x, 64 1.6-1.7x (README). Why the automatic choice: whole forwards, 2 threads,
    Zen 4 (AVX-512), medians, one tile rule against another (README, Winograd): ResNet-50 batch 1 41.4 ms with
    F(2x2) on the 56 x 56 and 28 x 28 maps (the old rule) -> 37.5-38.2 with F(4x4) on the 56, 28 and 14 (its 14 x 14
    maps, 196 pixels, took im2col before), batch 16 639 -> 573 ms (F(2x2) on the 7 x 7 maps too); GoogLeNet batch
    1 21.2 -> 19.9-20.2 ms, 16 319 -> 306 ms. CaffeNet's 13 x 13 maps keep F(2x2): with F(4x4) its softmax is 1.9e-5
    from OpenCV DNN's, past the 1e-5 asked (its logits are the largest of the nets here). Why FROZEN_MIN_PIXELS:
    without the compare of the weights each call (a BatchNorm folded in, or `Net.freeze`), F(2x2) wins from one
    image (hot, batch 1, 2 threads: ResNet-50's 7 x 7 layer 1.57 -> 1.25 ms, CaffeNet's conv3 1.56 -> 1.41 ms);
    ResNet-50 batch 1, in the net: 37.7-38.8 -> 36.2-37.2 ms. Weights compared each call keep 640 (CaffeNet at
    batch 1, in the net: 13.9-14.5 ms without, 14.6-14.8 with F(2x2); again with U packed, twelfth round, as the
    replay compares them too: 0.96-0.97x, two plans alternated in one process; frozen, with FEW_SLIVERS, thirty-second
    round: 1.07x). F(4x4)'s error (about 10x F(2x2)'s) is taken on the 14 x 14 and
    larger maps: a net whose softmax must stay within 1e-5 of another framework's may need CREMA_WINOGRAD=2.

    Why the 5x5 rule: against the im2col path, one layer, 2 threads, Zen 4, in one process, F(2x2, 5x5) / F(4x4, 5x5)
    at batch 1, then at 16: CaffeNet's conv2 (48 -> 128 per group, 27 x 27) 1.41 / 2.36x, 1.46 / 2.86x; GoogLeNet's
    5x5 layers: 16 -> 32 channels on 28 x 28 0.91 / 1.62x, 0.89 / 1.85x; 32 -> 96 1.23 / 2.14x, 1.26 / 2.58x; 16 -> 48
    on 14 x 14 1.15 / 1.16x, 1.13 / 1.73x; 24 -> 64 1.14 / 1.20x, 1.29 / 2.13x; 32 -> 128 1.26 / 2.11x, 1.41 / 2.24x;
    48 -> 128 on 7 x 7 1.49 / 0.92x (49 tiles' worth of U streamed for 4 tiles), 1.74 / 3.57x. Whole nets, two plans
    alternated (the module before the 5x5 tiles and after both): CaffeNet batch 1 / 10 / 64 1.03 / 1.105 / 1.16x with
    F(2x2, 5x5) alone; F(4x4, 5x5) on top of it: CaffeNet batch 1 / 10 1.06 / 1.09-1.13x, GoogLeNet batch 1 1.01x,
    LeNet (conv2, 20 -> 50 channels on 8 x 8) batch 64 / 1000 1.19-1.27 / 1.34x. F(4x4, 5x5)'s error in CaffeNet
    (random weights, batch 10, 8 seeds; the softmax against the float64 net): 2.3e-8 to 4.2e-5, against 1.1e-8 to
    2.9e-5 with F(2x2, 5x5) and 1.1e-8 to 3.4e-5 without Winograd; OpenCV DNN's own 2.8e-8 to 6.5e-5."""
    forced = tile()
    if forced == 0 or len(x_shape) != 4 or len(w_shape) != 4:
        return 0
    (n, _, _, _), (k, cg, kh, kw), st, _, dil, (oh, ow) = conv2d_geometry(x_shape, w_shape, stride, pad, dilation)
    if st != (1, 1) or dil != (1, 1) or n <= 0:
        return 0
    if (kh, kw) == (5, 5):  # F(4x4, 5x5) where it applies, else F(2x2, 5x5) (or the tile CREMA_WINOGRAD asks for)
        channels = min(cg, k // max(group, 1))
        fits5 = [
            m
            for m in (4, 2)
            if channels >= MIN_CHANNELS_5[m] and min(oh, ow) >= MIN_OUTPUT_5 and n * oh * ow >= MIN_PIXELS_5[m]
        ]
        if forced is not None:
            return forced if forced in fits5 else 0
        return fits5[0] if fits5 else 0
    if (kh, kw) != (3, 3) or min(cg, k // max(group, 1)) < MIN_CHANNELS:
        return 0
    least = {4: MIN_PIXELS[4], 2: min(MIN_PIXELS[2], FROZEN_MIN_PIXELS) if frozen else MIN_PIXELS[2]}
    fits = [m for m in (4, 2) if min(oh, ow) >= MIN_OUTPUT[m] and n * oh * ow >= least[m]]
    if forced is not None:
        return forced if forced in fits else 0
    if 4 in fits and min(oh, ow) >= AUTO_F4_MIN_OUTPUT:
        return 4
    return 2 if 2 in fits else 0


def winograd_applies(x_shape, w_shape, stride, pad, dilation, group: int = 1, frozen: bool = False) -> bool:
    """Does a forward of these shapes take the Winograd path (with the tile `choose` picks)?"""
    return choose(x_shape, w_shape, stride, pad, dilation, group, frozen) != 0


_WORKSPACES = Workspace()


def _split(total: int, kg: int, group: int, threads: int, per: int, least: int, shrink: bool = True) -> tuple:
    """WinogradRunner's tasks: (tiles a chunk, output channels a block, chunks, blocks) for `total` tiles, K/group kg;
    chunks of `per` tiles (`shrink`: fewer, down to one sliver, while chunks x groups leave threads idle), then blocks
    of output channels (whole MR-row slivers, `least` channels at least) until there are 4 tasks a thread."""
    while shrink and per > NR and -(-total // per) * group < 4 * threads:
        per -= NR
    chunks = -(-total // per)
    kblocks = 1
    while chunks * group * kblocks < 4 * threads and -(-kg // (kblocks * 2)) >= least:
        kblocks *= 2
    kb = -(-kg // kblocks)  # rows per block, rounded up to whole MR-row slivers (block starts them at MR rows)
    kb = -(-kb // MR) * MR
    return per, kb, chunks, -(-kg // kb)


class WinogradRunner:
    """The shape work of a Winograd forward, done once; ``runner(x, w, bias, y)`` like ``kernels.conv.ForwardRunner``
    (x, w, bias (K,) float32, y C-contiguous float32, y not overlapping x). The transformed weights are kept with a
    copy of the weights they came from and made again when the weights differ (a solver updates them in place);
    frozen=True (a plan's folded BatchNorm weights or a frozen net's, never changed in place): made again only for
    another array.

    Tasks: chunks of up to SLIVERS x 16 tiles of the batch (all the tiles in one chunk where they fill 2 to FEW_SLIVERS
    slivers and that makes as many tasks) x groups; when those are fewer than 4 per thread (batch 1) the output
    channels of a group are split into blocks (multiples of MR) as well, and the input transform runs first as its own
    parallel pass (_winograd_inputs_worker) whose result the blocks share."""

    __slots__ = (
        "cblocks",
        "frozen",
        "geometry",
        "m",
        "out_shape",
        "packed",
        "relu",
        "relu_max",
        "u",
        "vblock",
        "w_seen",
        "work",
        "workers",
        "zeros",
    )

    def __init__(
        self,
        x_shape,
        w_shape,
        pad,
        group: int,
        relu: bool,
        relu_max: float = math.inf,
        m: int = TILE,
        *,
        frozen: bool = False,
    ) -> None:
        (n, c, h, wd), (k, cg, _, _), _, (ph, pw), _, (oh, ow) = conv2d_geometry(x_shape, w_shape, 1, pad, 1)
        r = kernel_size(w_shape)
        if not (float(relu_max) >= 0.0) or (relu_max != math.inf and not relu):
            raise ValueError(
                f"winograd: relu_max caps the fused ReLU: expected relu=True and relu_max >= 0, got "
                f"relu={relu!r}, relu_max={relu_max!r}"
            )
        matrices(m, r)  # checks m and r
        self.m = m
        # frozen: the caller never changes a weight array in place (a plan's folded BatchNorm or Net.freeze, as for
        # the depthwise runner): the transformed weights are kept while the same array comes, with no compare
        self.frozen = bool(frozen)
        self.out_shape = (n, k, oh, ow)
        self.relu, self.relu_max = bool(relu), float(relu_max)
        self.workers = threads = numba.get_num_threads()
        kg = k // group
        th, tw = _tiles(oh, ow, m)
        total = n * th * tw
        per, kb, chunks, kblocks = _split(total, kg, group, threads, SLIVERS * NR, 4 * MR)
        if NR < total <= FEW_SLIVERS * NR:  # one chunk of all the tiles, in blocks of output channels (FEW_SLIVERS)
            few = _split(total, kg, group, threads, -(-total // NR) * NR, 2 * MR, shrink=False)
            if few[2] * few[3] * group >= min(chunks * kblocks * group, 4 * threads):  # not fewer tasks (8+ threads)
                per, kb, chunks, kblocks = few
        self.geometry = (n, c, h, wd, k, group, ph, pw, oh, ow, m, per, kb, chunks, kblocks, r)
        alpha2 = (m + r - 1) ** 2
        nsl = per // NR
        v_xi = _v_stride.py_func(nsl, cg)  # (its Python function: nothing compiled here)
        self.vblock = alpha2 * v_xi if kblocks > 1 else 0  # floats of one (chunk, group)'s shared V
        self.cblocks = max(1, min(-(-4 * threads // (chunks * group)), cg // 8))
        own_v = 0 if kblocks > 1 else alpha2 * v_xi
        self.work = own_v + alpha2 * nsl * NR * min(kb, KB_INNER) + m * m * NR
        self.zeros = np.zeros(kg + MR, np.float32)
        self.u: np.ndarray | None = None
        self.w_seen: np.ndarray | None = None
        self.packed = PACKED_U

    def weights(self, w: np.ndarray) -> np.ndarray:
        """The transformed weights of w, made again only when w differs from the copy kept (frozen: when w is another
        array than the one transformed)."""
        if not self.current(w):
            self.u = _transformed(w, self.geometry[5], self.m, self.packed)  # geometry[5]: group
            self.w_seen = w if self.frozen else w.copy().view(np.uint32)
        return self.u

    def current(self, w: np.ndarray) -> bool:
        """Are the transformed weights kept those of w as it is now (frozen: w is the array transformed; else its bits
        equal the copy kept)? What `weights` and a replayed forward (net.replay's checks) ask before using them."""
        if self.u is None or self.w_seen is None:
            return False
        if self.frozen:
            return self.w_seen is w
        return _same(self.w_seen.reshape(-1), w.reshape(-1).view(np.uint32))

    def __call__(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray, out: np.ndarray) -> None:
        if out.size == 0:
            return
        u = self.weights(w)
        chunks, group = self.geometry[13], self.geometry[5]
        buf, vall = _WORKSPACES.get(self.workers * self.work, chunks * group * self.vblock)
        work = buf.reshape(self.workers, self.work)
        xf = x.reshape(-1)
        if self.vblock:
            _WINOGRAD_INPUTS.parallel(
                _WINOGRAD_INPUTS.address, self.workers, xf, *self.geometry, self.cblocks, vall, self.vblock,
                np.zeros(1, np.int64)
            )  # fmt: skip
        _WINOGRAD_TASKS.parallel(
            _WINOGRAD_TASKS.address, self.workers, xf, u, bias, out.reshape(-1), *self.geometry, self.relu,
            self.relu_max, work, vall, self.vblock, self.zeros, np.zeros(1, np.int64), int(self.packed)
        )  # fmt: skip


def winograd_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    *,
    pad=(0, 0),
    group: int = 1,
    out: np.ndarray | None = None,
    relu: bool = False,
    relu_max: float = math.inf,
    m: int = TILE,
    runner: WinogradRunner | None = None,
) -> np.ndarray:
    """Convolution forward by Winograd F(m x m, r x r) (stride 1, dilation 1), float32: x (N, C, H, W), w (K, C/group,
    r, r) with r 3 (m 2 or 4) or 5 (m 2), b (K,) or None -> y (N, K, OH, OW), into `out` when given; relu / relu_max as kernels.conv.conv2d_forward.
    runner: a WinogradRunner the caller keeps for these shapes and arguments (e.g. one with frozen weights, whose
    transform it keeps), used instead of a new one."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    b = None if b is None else np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    group = int(group)
    check_conv2d_args(x, w, b, group)
    run = runner if runner is not None else WinogradRunner(x.shape, w.shape, pad, group, relu, relu_max, m)
    if runner is not None:
        ph, pw = conv2d_geometry(x.shape, w.shape, 1, pad, 1)[3]
        asked = (m, bool(relu), float(relu_max), (*x.shape, w.shape[0], group, ph, pw))
        if (run.m, run.relu, run.relu_max, run.geometry[:8]) != asked:
            raise ValueError(f"winograd: the runner given was made for other shapes or arguments than x {x.shape}")
    if out is None:
        out = np.empty(run.out_shape, np.float32)
    elif out.shape != run.out_shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"winograd: expected out C-contiguous float32 of shape {run.out_shape}, got {out.dtype} {out.shape}"
        )
    run(x, w, np.zeros(w.shape[0], np.float32) if b is None else b, out)
    return out
