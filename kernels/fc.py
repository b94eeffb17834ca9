"""InnerProduct (fully connected) forward and backward, Caffe semantics, on crema's own GEMM.

Kernels:

0. ``inner_product_forward_ref`` - plain NumPy in float64.
1. ``_ip_small_rows``            - few samples (``small_rows``: M <= SMALL_M, 12 with AVX-512 and 8 with AVX2, e.g.
                                   EfficientNet-Lite0's fc at batch 1, or a tiny W), W of shape (N, K):
                                   memory-bound on the weight, so the weight is streamed once straight from
                                   the caller's array (no packing copy of a 150 MB matrix), threads over blocks of
                                   4 outputs (claimed from one queue per CPU first, so each core keeps its share
                                   of a W that fits the L2s), each in chunks of k that stay in L1 while every row
                                   of x2 passes, in 4 x 5 register tiles of dot products (``_part_4x5``; 4 x 2 with
                                   AVX2); at batch 1 whole rows of W, 8 at a time (``_dots_8x1``). A row's sums are
                                   taken in another order at batch 1 (whole rows) than at 2-12 (chunks, fives and
                                   pairs): its bits depend on the batch (not on the thread count). A plan's
                                   runner takes W backwards every other call (``_turn``): a W larger than a core's
                                   caches then starts on the rows still there from the call before.
2. ``inner_product_forward``     - otherwise ``kernels.gemm.gemm``: y^T = W @ x2^T for up to NC rows (W read in
                                   place, unpacked; the result transposed into y with + b and the ReLU in one pass,
                                   ``_transpose_epilogue``), else y = x2 @ W.T with the weight read transposed by the
                                   packing; with ``transpose`` y = x2 @ W (W read in place for few rows), + b.
3. ``inner_product_backward_ref`` - plain NumPy in float64.
4. ``inner_product_backward``    - dW += dy2^T @ x2 (x2^T @ dy2 with ``transpose``) with ``gemm(accumulate=True)``,
                                   db += column sums of dy2 (``sum_rows``), dx2 = dy2 @ W with ``gemm`` (W read in
                                   place for few rows), or dy2 @ W.T with ``_ip_small_rows`` for few rows (W
                                   streamed once instead of packing W.T: 150 MB at CaffeNet's fc6).

Measured figures behind these choices: benchmarks/perf_notes.md.

Benchmark: ``python -m benchmarks --only layers --filter ip`` / ``--filter fc`` (LeNet and CaffeNet layers).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, types

from kernels.gemm import NC, claim_near, fetch_add, gemm, image_counters, queue_sizes, tpack4, tpack8
from kernels.serial import SMALL_WORK
from kernels.tasks import Task, carried
from kernels.tiling import VW

CLAIM_ROWS = 16  # rows of W per claimed task in _ip_small_rows (a multiple of 8: whole rows go 8 at a time)
FIVES = VW == 16  # 4 x 5 tiles of dot products (20 vector accumulators: AVX-512's 32 registers, not AVX2's 16)
KC_ROWS = 1024  # floats of k per chunk of a block of 4 rows of W in _ip_small_rows (16 KB: in L1 while x2's rows pass)
# at most this many rows of x2: the weight-streaming kernel for W of shape (N, K) (it reads W once, like the GEMM, and
# keeps each 4-row block's chunk in L1 while the rows pass). Zen 4 EPYC, 2 threads, streaming / GEMM time (2-4 runs,
# the range) at 8 / 10 / 12 / 16 / 32 rows: CaffeNet fc6 0.72-0.75 / 0.71-0.79 / 0.83-0.85 / 1.02 / 1.19, fc7
# 0.65-0.75 / 0.61-0.83 / 0.58-1.16 / 1.30-1.61 / 1.15, fc8 0.23-0.93 / 0.27-0.71 / 0.37-0.93 / 0.85-0.90 / 1.0-1.31;
# a W in L3 (EfficientNet-Lite0's fc, 1000 x 1280) swung both ways: 1.06-1.82 / 0.52-1.56 / 0.52-1.89 / 0.55-1.14 /
# 0.85-0.94 (the GEMM's 16-column tiles fit 16 and 32 rows exactly). AVX2 (16 registers: the 4 x 2 tile, no 4 x 5)
# stays at 8: the GEMM's 6 x 16 tile was faster at 10-12 rows there (Zen 4 with the AVX2 tile: fc6 1.12-1.52). ...
SMALL_M = 12 if VW == 16 else 8
SMALL_M_TINY_W = 32  # ... or this many when W is tiny (TINY_W floats at most: LeNet ip2, 10 x 500, 3 vs 30 us at 32;
# at 64-128 rows 24-31 against 28-54 us on the Xeon, but then a cold `crema train` compiles this kernel too: not
# worth ~13 us a step)
TINY_W = 1 << 16
SMALL_M_DX = 32  # the data gradient dy2 @ W with W (K, N): streamed once at most this many rows, not packed


def small_rows(m: int, n: int, k: int) -> bool:
    """Does y = x2 @ W.T with x2 (m, k), W (n, k) take the weight-streaming kernel (`_ip_small_rows`)?"""
    return m <= SMALL_M or (m <= SMALL_M_TINY_W and n * k <= TINY_W)


def flatten_input(x: np.ndarray, axis: int, k_expected: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """x viewed as (M, K) with M = prod(shape[:axis]), K = prod(shape[axis:]); also returns shape[:axis]."""
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"inner_product: axis {axis} out of range for x of shape {x.shape}")
    axis %= x.ndim
    lead = x.shape[:axis]
    k = math.prod(x.shape[axis:])
    if k != k_expected:
        raise ValueError(
            f"inner_product: expected {k_expected} inputs per sample (weight K), got "
            f"{k} = prod(x.shape[{axis}:]) for x shape {x.shape}"
        )
    return x.reshape(math.prod(lead), k), lead


def weight_dims(w: np.ndarray, transpose: bool) -> tuple[int, int]:
    """(N outputs, K inputs) of the weight: w is (N, K), or (K, N) with transpose."""
    if w.ndim != 2:
        raise ValueError(
            f"inner_product: expected a 2-D weight ({'(K, N)' if transpose else '(N, K)'}), got shape {w.shape}"
        )
    return (w.shape[1], w.shape[0]) if transpose else w.shape


@njit(cache=True, fastmath=True, boundscheck=False, inline="always")
def _part_4x5(w, n0, x2, m0, k0, k1, acc):  # pragma: no cover - compiled
    """acc[m0:m0+5, 0:4] += x2[m0:m0+5, k0:k1] . w[n0:n0+4, k0:k1]: 20 independent dot products in one pass over the
    chunk, each a vector accumulator after LLVM vectorises the k loop (9 vector loads per 20 FMAs)."""
    w0, w1, w2, w3 = w[n0, k0:k1], w[n0 + 1, k0:k1], w[n0 + 2, k0:k1], w[n0 + 3, k0:k1]
    xa, xb, xc = x2[m0, k0:k1], x2[m0 + 1, k0:k1], x2[m0 + 2, k0:k1]
    xd, xe = x2[m0 + 3, k0:k1], x2[m0 + 4, k0:k1]
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = c0 = c1 = c2 = c3 = d0 = d1 = d2 = d3 = e0 = e1 = e2 = e3 = np.float32(0.0)
    for k in range(k1 - k0):
        p, q, r, s = w0[k], w1[k], w2[k], w3[k]
        u = xa[k]
        a0 += p * u
        a1 += q * u
        a2 += r * u
        a3 += s * u
        u = xb[k]
        b0 += p * u
        b1 += q * u
        b2 += r * u
        b3 += s * u
        u = xc[k]
        c0 += p * u
        c1 += q * u
        c2 += r * u
        c3 += s * u
        u = xd[k]
        d0 += p * u
        d1 += q * u
        d2 += r * u
        d3 += s * u
        u = xe[k]
        e0 += p * u
        e1 += q * u
        e2 += r * u
        e3 += s * u
    _add4(acc, m0, a0, a1, a2, a3)
    _add4(acc, m0 + 1, b0, b1, b2, b3)
    _add4(acc, m0 + 2, c0, c1, c2, c3)
    _add4(acc, m0 + 3, d0, d1, d2, d3)
    _add4(acc, m0 + 4, e0, e1, e2, e3)


@njit(cache=True, fastmath=True, boundscheck=False, inline="always")
def _part_4x2(w, n0, x2, m0, two, k0, k1, acc):  # pragma: no cover - compiled
    """_part_4x5 for two rows of x2 (one when `two` is False): the rows left over from the fives."""
    w0, w1, w2, w3 = w[n0, k0:k1], w[n0 + 1, k0:k1], w[n0 + 2, k0:k1], w[n0 + 3, k0:k1]
    xa = x2[m0, k0:k1]
    xb = x2[m0 + 1, k0:k1] if two else xa
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
    for k in range(k1 - k0):
        u = xa[k]
        v = xb[k]
        a0 += w0[k] * u
        a1 += w1[k] * u
        a2 += w2[k] * u
        a3 += w3[k] * u
        b0 += w0[k] * v
        b1 += w1[k] * v
        b2 += w2[k] * v
        b3 += w3[k] * v
    _add4(acc, m0, a0, a1, a2, a3)
    if two:
        _add4(acc, m0 + 1, b0, b1, b2, b3)


@njit(cache=True, boundscheck=False, inline="always")
def _add4(acc, m, a0, a1, a2, a3):  # pragma: no cover - compiled
    acc[m, 0] += a0
    acc[m, 1] += a1
    acc[m, 2] += a2
    acc[m, 3] += a3


@njit(cache=True, fastmath=True, boundscheck=False, inline="always")
def _dots_4x1(w, n0, x2, m0, k_all, bias, y, relu):  # pragma: no cover - compiled
    """y[m0, n0:n0+4] = x2[m0] . w[n0:n0+4] + bias: _part_4x2 for a lone row of x2 (batch 1), whole rows of W, without
    the second row's four dead accumulators."""
    w0, w1, w2, w3 = w[n0], w[n0 + 1], w[n0 + 2], w[n0 + 3]
    xa = x2[m0]
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for k in range(k_all):
        u = xa[k]
        a0 += w0[k] * u
        a1 += w1[k] * u
        a2 += w2[k] * u
        a3 += w3[k] * u
    _store(y, m0, n0, a0 + bias[n0], relu)
    _store(y, m0, n0 + 1, a1 + bias[n0 + 1], relu)
    _store(y, m0, n0 + 2, a2 + bias[n0 + 2], relu)
    _store(y, m0, n0 + 3, a3 + bias[n0 + 3], relu)


@njit(cache=True, fastmath=True, boundscheck=False, inline="always")
def _dots_8x1(w, n0, x2, m0, k_all, bias, y, relu):  # pragma: no cover - compiled
    """_dots_4x1 over 8 rows of W at once (two of its blocks): eight streams of W in flight a thread instead of four,
    for a W that comes from memory or L3 (hot, 2 threads, in one process against _dots_4x1: CaffeNet's fc6 / fc7 / fc8
    at batch 1 1.02-1.07x / 1.01-1.05x / 1.01-1.02x, EfficientNet-Lite0's fc 1.09-1.11x, LeNet's ip1 1.10-1.11x)."""
    w0, w1, w2, w3 = w[n0], w[n0 + 1], w[n0 + 2], w[n0 + 3]
    w4, w5, w6, w7 = w[n0 + 4], w[n0 + 5], w[n0 + 6], w[n0 + 7]
    xa = x2[m0]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
    for k in range(k_all):
        u = xa[k]
        a0 += w0[k] * u
        a1 += w1[k] * u
        a2 += w2[k] * u
        a3 += w3[k] * u
        a4 += w4[k] * u
        a5 += w5[k] * u
        a6 += w6[k] * u
        a7 += w7[k] * u
    for j, a in enumerate((a0, a1, a2, a3, a4, a5, a6, a7)):
        _store(y, m0, n0 + j, a + bias[n0 + j], relu)


@njit(cache=True, boundscheck=False, inline="always")
def _store(y, m, n, v, relu):  # pragma: no cover - compiled
    """y[m, n] = v, or ReLU(v) by kernels.activations' expression (same bits) when relu."""
    zero = np.float32(0.0)
    y[m, n] = max(v, zero) + zero * min(v, zero) if relu else v


@njit(cache=True, boundscheck=False, inline="always")
def _next_claim(counter, sizes, nclaims, back):  # pragma: no cover - compiled
    """The next claim of CLAIM_ROWS rows of W (see _ip_whole_worker), or -1 when none is left; back: each queue's
    claims in reverse order (the rows read last in the call before come first, see _ip_whole_worker)."""
    u, i = claim_near(counter, sizes)
    if u < 0:
        return -1
    return u * nclaims // sizes.shape[0] + (sizes[u] - 1 - i if back else i)


@njit(cache=True, boundscheck=False, inline="always")
def _turn(turns, nclaims):  # pragma: no cover - compiled
    """Does this call take its claims backwards? turns[0] counts the claims done by every call before (each worker
    adds its own when it is done, _ip_whole_worker): odd calls go backwards. Read before a worker's first claim, it
    is the same for every worker that gets a claim in this call: a count that has reached the next multiple of
    nclaims means every claim of this call is done, so a worker that reads it gets none."""
    return (fetch_add(turns, 0) // nclaims) & 1 == 1


def _ip_whole_worker(t, x2, w, bias, y, relu, counter, turns):  # pragma: no cover - compiled
    """y[m, n] = dot(x2[m], w[n]) + bias[n] (then ReLU'd when relu); x2: (M, K), w: (N, K), bias: (N,), y: (M, N).
    Each row of x2 takes the claim's rows of W whole (``_ip_rows_whole``): a row's bits are those of batch 1. Worker t
    of one per thread (kernels.tasks) claims CLAIM_ROWS rows of W at a time from the queue of the CPU it runs on first
    (``gemm.claim_near``: counters from ``gemm.image_counters``): each core's share of W then stays in its L2 from call
    to call where it fits, and a worker that is done takes the others' rows, so a slowed virtual CPU does not hold the
    other one up. One plain counter: dynamic claims over all the rows.

    turns (int64, kept by the caller from call to call, see `_turn`): every other call takes each queue's claims in
    reverse order, so a W larger than what a core's caches keep starts on the rows the call before read last, which
    are still there (LRU-like caches keep none of a W read in the same order each time). A row's bits do not depend on
    the order."""
    n_all = w.shape[0]
    nclaims = (n_all + CLAIM_ROWS - 1) // CLAIM_ROWS
    sizes = queue_sizes(counter, nclaims, 1, 1)
    back = _turn(turns, nclaims)
    done = 0
    c = _next_claim(counter, sizes, nclaims, back)
    while c >= 0:
        _ip_rows_whole(x2, w, bias, y, relu, c * CLAIM_ROWS, min((c + 1) * CLAIM_ROWS, n_all))
        done += 1
        c = _next_claim(counter, sizes, nclaims, back)
    fetch_add(turns, done)


def _ip_chunked_worker(t, x2, w, bias, y, relu, counter, turns):  # pragma: no cover - compiled
    """As _ip_whole_worker, for several rows of x2: blocks of 4 rows of W, each taken in chunks of KC_ROWS floats of k:
    a chunk of the 4 rows (16 KB) comes from memory once and stays in L1 while every row of x2 passes over it, five
    rows at a time (a 4 x 5 register tile of dot products: 9 vector loads per 20 FMAs; two at a time with AVX2), the
    chunks' partial sums added in acc. W itself comes from memory once. A task of its own: a net run at batch 1 only
    compiles just the whole-row one (1.3 s; this one 2.0 s, both together 2.8); `crema serve` warms both when it
    batches requests (net.warm.forward_pass at batches 1 and 2) of a net whose weights dominate (LeNet, CaffeNet);
    heavier nets' plans run their inner products row by row at every batch (``net.per_image.rowwise``)."""
    n_all = w.shape[0]
    nclaims = (n_all + CLAIM_ROWS - 1) // CLAIM_ROWS
    acc = np.empty((x2.shape[0], 4), np.float32)  # the chunks' partial sums
    sizes = queue_sizes(counter, nclaims, 1, 1)
    back = _turn(turns, nclaims)
    done = 0
    c = _next_claim(counter, sizes, nclaims, back)
    while c >= 0:
        for blk in range(c * CLAIM_ROWS // 4, min((c + 1) * CLAIM_ROWS, n_all + 3) // 4):
            _ip_rows_chunked(x2, w, bias, y, relu, blk, acc)
        done += 1
        c = _next_claim(counter, sizes, nclaims, back)
    fetch_add(turns, done)


_F2 = types.float32[:, ::1]
_IP_ARGS = (_F2, _F2, types.float32[::1], _F2, types.boolean, types.int64[::1], types.int64[::1])
_IP_WHOLE = Task(_ip_whole_worker, _IP_ARGS, opt=1, fastmath=True, boundscheck=False, compile_s=1.3)
_IP_CHUNKED = Task(_ip_chunked_worker, _IP_ARGS, opt=1, fastmath=True, boundscheck=False, compile_s=2.0)


def _ip_small_rows(
    x2, w, bias, y, relu: bool, workers: int, serial: bool = False, rowwise: bool = False, turns=None
) -> None:
    """The rows of W shared by `workers` threads (serial: on the calling thread); arrays C-contiguous
    float32: x2 (M, K), w (N, K), bias (N,), y (M, N); rowwise: every row of y with its batch-1 bits; turns: an int64
    array the caller keeps for this W from call to call (zeroed at first), so that every other call reads W
    backwards (``_ip_whole_worker``); None: W in order."""
    task = _IP_CHUNKED if x2.shape[0] > 1 and not rowwise else _IP_WHOLE
    drive = task.serial if serial else task.parallel
    counters = np.zeros(1, np.int64) if serial else image_counters(1, workers, -(-w.shape[0] // CLAIM_ROWS))
    turns = np.zeros(1, np.int64) if turns is None else turns
    drive(task.address, 1 if serial else workers, x2, w, bias, y, relu, counters, turns)


@njit(cache=True, fastmath=True, boundscheck=False)
def _ip_rows_chunked(x2, w, bias, y, relu, blk, acc):  # pragma: no cover - compiled
    """Rows 4 blk .. 4 blk + 3 of W (fewer at the end) against every row of x2 (see _ip_chunked_worker), in chunks
    of KC_ROWS floats of k; acc: (M, 4) scratch."""
    m_all, k_all = x2.shape
    n0 = blk * 4
    if n0 + 4 > w.shape[0]:
        _ip_rows_tail(x2, w, bias, y, relu, n0, w.shape[0])
        return
    acc[:, :] = np.float32(0.0)
    for k0 in range(0, k_all, KC_ROWS):
        k1 = min(k0 + KC_ROWS, k_all)
        m0 = 0
        while FIVES and m0 + 5 <= m_all:
            _part_4x5(w, n0, x2, m0, k0, k1, acc)
            m0 += 5
        while m0 < m_all:
            _part_4x2(w, n0, x2, m0, m0 + 1 < m_all, k0, k1, acc)
            m0 += 2
    for m in range(m_all):
        for j in range(4):
            _store(y, m, n0 + j, acc[m, j] + bias[n0 + j], relu)


@njit(cache=True, fastmath=True, boundscheck=False)
def _ip_rows_whole(x2, w, bias, y, relu, n0, n1):  # pragma: no cover - compiled
    """Rows n0 .. n1 - 1 of W, each row of x2 taking them whole (no chunks; a row's bits do not depend on the others:
    those of batch 1): 8 at a time (_dots_8x1), then 4 (_dots_4x1), then one by one. Its own function, not a flag of
    _ip_rows_chunked: the task compiled the chunked code's 4 x 5 tiles twice then (a cold `crema train` 3.4 s more)."""
    n = n0
    while n + 8 <= n1:
        for m in range(x2.shape[0]):
            _dots_8x1(w, n, x2, m, x2.shape[1], bias, y, relu)
        n += 8
    if n + 4 <= n1:
        for m in range(x2.shape[0]):
            _dots_4x1(w, n, x2, m, x2.shape[1], bias, y, relu)
        n += 4
    _ip_rows_tail(x2, w, bias, y, relu, n, n1)


@njit(cache=True, fastmath=True, boundscheck=False, inline="always")
def _ip_rows_tail(x2, w, bias, y, relu, n0, n1):  # pragma: no cover - compiled
    """Rows n0 .. n1 - 1 of W (fewer than 4: the last ones), one dot product at a time."""
    m_all, k_all = x2.shape
    for n in range(n0, n1):
        wr = w[n]
        for m in range(m_all):
            xr = x2[m]
            a = np.float32(0.0)
            for k in range(k_all):
                a += xr[k] * wr[k]
            _store(y, m, n, a + bias[n], relu)


def inner_product_forward_ref(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    *,
    axis: int = 1,
    transpose: bool = False,
    dtype: type = np.float32,
) -> np.ndarray:
    """Reference computed in float64, returned as `dtype` (float32 unless asked otherwise).

    x: any shape, flattened to (M, K) at `axis`; w: (N, K), or (K, N) with transpose; b: (N,) or None.
    Returns y: x.shape[:axis] + (N,), y = x2 @ W.T + b (x2 @ W + b with transpose).
    """
    x = np.asarray(x)
    n, k = weight_dims(np.asarray(w), transpose)
    x2, lead = flatten_input(x, axis, k)
    w64 = np.asarray(w, np.float64)
    y = x2.astype(np.float64) @ (w64 if transpose else w64.T)
    if b is not None:
        y += np.asarray(b, np.float64).reshape(1, n)
    return y.astype(dtype).reshape(lead + (n,))


def inner_product_backward_ref(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, *, axis: int = 1, transpose: bool = False, bias: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reference gradients of inner_product_forward_ref in float64: returns (dx, dw, db) as float64 arrays.

    dy: x.shape[:axis] + (N,), the gradient of a scalar loss with respect to y; x: any shape, (M, K) at `axis`;
    w: (N, K), or (K, N) with transpose. dx: x.shape = dy2 @ W (dy2 @ W.T with transpose); dw: w.shape =
    dy2.T @ x2 (x2.T @ dy2 with transpose); db: (N,) = column sums of dy2, or None when `bias` is False.
    """
    x = np.asarray(x)
    n, k = weight_dims(np.asarray(w), transpose)
    x2, lead = flatten_input(x, axis, k)
    dy = np.asarray(dy, np.float64)
    if dy.shape != lead + (n,):
        raise ValueError(f"inner_product_backward_ref: expected dy of shape {lead + (n,)}, got {dy.shape}")
    dy2 = dy.reshape(x2.shape[0], n)
    x64 = x2.astype(np.float64)
    w64 = np.asarray(w, np.float64)
    dx = (dy2 @ (w64.T if transpose else w64)).reshape(x.shape)
    dw = x64.T @ dy2 if transpose else dy2.T @ x64
    return dx, dw, dy2.sum(axis=0) if bias else None


def inner_product_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    *,
    axis: int = 1,
    transpose: bool = False,
    out: np.ndarray | None = None,
    relu: bool = False,
) -> np.ndarray:
    """InnerProduct forward, float32; relu: ReLU (slope 0) applied to the output in the same call (fused).

    x: any shape, flattened row-major to (M, K) = (prod(shape[:axis]), prod(shape[axis:])); w: (N, K), or (K, N)
    with transpose; b: (N,) or None. Returns y: x.shape[:axis] + (N,), written into `out` when given
    (C-contiguous float32 of that shape).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    n, k = weight_dims(w, transpose)
    x2, lead = flatten_input(x, axis, k)
    if b is not None:
        b = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
        if b.shape != (n,):
            raise ValueError(f"inner_product: expected bias of shape ({n},), got {b.shape}")
    shape = lead + (n,)
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"inner_product: expected out to be C-contiguous float32 of shape {shape}, got {out.dtype} {out.shape}"
        )
    out2 = out.reshape(x2.shape[0], n)
    if not transpose and small_rows(x2.shape[0], n, k):
        _ip_small_rows(x2, w, np.zeros(n, np.float32) if b is None else b, out2, bool(relu), numba.get_num_threads())
        return out
    if not transpose and x2.shape[0] <= NC:
        # y^T = W @ x2^T: W (N, K) is then read in place, unpacked (gemm packs only the small x2); the (N, M) result
        # is transposed into out with the bias and the ReLU in the same pass (_transpose_epilogue).
        yt = gemm(w, x2, trans_b=True)
        t = _TRANSPOSE_EPILOGUE  # a task on this thread (a replayed training pass records it: net.train_replay)
        t.serial(t.address, 1, yt, _NO_BIAS if b is None else b, b is not None, out2, bool(relu), 1)
        return out
    gemm(x2, w, trans_b=not transpose, out=out2)
    if b is not None or relu:  # one task over the rows (a replayed training pass records it: net.train_replay)
        t = _BIAS_RELU
        workers = 1 if out2.size < SMALL_WORK else numba.get_num_threads()
        run = t.serial if workers == 1 else t.parallel
        run(t.address, workers, out2, _NO_BIAS if b is None else b, b is not None, bool(relu), workers)
    return out


_NO_BIAS = np.zeros(0, np.float32)


@njit(cache=True, boundscheck=False)
def _transpose_epilogue(yt, b, with_b, out, relu):  # pragma: no cover - compiled
    """out[m, n] = yt[n, m] (+ b[n]) (then ReLU'd, by _store's expression): the same float operations as
    ``np.copyto(out, yt.T); out += b; relu_forward(out)``: 8 x 8 blocks transposed in registers (gemm's _tpack8, four
    rows at N's edge _tpack4, the last columns of a ragged M one by one), then one vector pass over out's rows (LeNet's
    ip1 at batch 64, 500 x 64: 67 us for NumPy's transposed copy and the two passes, ~10 us here)."""
    n_all, m_all = yt.shape
    ytf, outf = yt.reshape(-1), out.reshape(-1)
    m8 = m_all - m_all % 8
    for n0 in range(0, n_all - 3, 8):
        rows = min(8, n_all - n0)
        for m0 in range(0, m8, 8):
            d, src = np.uint64(m0 * n_all + n0), np.uint64(n0 * m_all + m0)
            if rows == 8:
                tpack8(outf, d, np.uint64(n_all), ytf, src, np.uint64(m_all))
            else:
                tpack4(outf, d, np.uint64(n_all), ytf, src, np.uint64(m_all))
    done = n_all - n_all % 8 + (4 if n_all % 8 >= 4 else 0)  # rows of yt the blocks above moved
    for n in range(done, n_all):
        for m in range(m8):
            out[m, n] = yt[n, m]
    for m in range(m8, m_all):
        for n in range(n_all):
            out[m, n] = yt[n, m]
    _bias_relu_rows(out, b, with_b, relu, 0, m_all)


@njit(cache=True, boundscheck=False)
def _bias_relu_rows(out, b, with_b, relu, m0, m1):  # pragma: no cover - compiled
    """Rows m0..m1-1 of out: += b (with_b), then ReLU'd (relu), as NumPy's ``out += b`` and ``relu_forward``'s
    expression (the same bits)."""
    n_all = out.shape[1]
    zero = np.float32(0.0)
    for m in range(m0, m1):  # each case its own loop: through _store's run-time flag the ReLU pass ran 3x slower
        if with_b and relu:
            for n in range(n_all):
                v = out[m, n] + b[n]
                out[m, n] = max(v, zero) + zero * min(v, zero)
        elif with_b:
            for n in range(n_all):
                out[m, n] += b[n]
        elif relu:
            for n in range(n_all):
                v = out[m, n]
                out[m, n] = max(v, zero) + zero * min(v, zero)


def _bias_relu_worker(t, out, b, with_b, relu, workers):  # pragma: no cover - compiled
    """Worker t's share of out's rows (``_bias_relu_rows``)."""
    m_all = out.shape[0]
    _bias_relu_rows(out, b, with_b, relu, t * m_all // workers, (t + 1) * m_all // workers)


_BIAS_RELU = Task(_bias_relu_worker, (_F2, types.float32[::1], types.boolean, types.boolean, types.int64),
                  boundscheck=False)  # fmt: skip


def _transpose_epilogue_worker(t, yt, b, with_b, out, relu, workers):  # pragma: no cover - compiled
    """_transpose_epilogue as a task of one worker (kernels.tasks), run on the calling thread."""
    if t == 0:
        _transpose_epilogue(yt, b, with_b, out, relu)


_TRANSPOSE_EPILOGUE = Task(
    _transpose_epilogue_worker,
    (_F2, types.float32[::1], types.boolean, _F2, types.boolean, types.int64),
    boundscheck=False,
)


class ForwardRunner:
    """``inner_product_forward`` with the shape work done once, for a CPU Net's execution plan (``net.net``):
    ``runner(x, w, b, out)`` with C-contiguous float32 x of the shape given here, w of ``w_shape``, b (N,) or None,
    out of ``runner.out_shape`` (not overlapping x). Few rows go straight to the weight-streaming kernel; with
    `rowwise` (no transpose) any number of rows does, each row with its batch-1 bits (``net.per_image``'s batched
    tail: a W that fits L1 4 rows at a time, read once for all the rows)."""

    __slots__ = ("axis", "out_shape", "relu", "rowwise", "serial", "small", "transpose", "turns", "workers", "zeros")

    def __init__(
        self, x_shape, w_shape, *, axis: int = 1, transpose: bool = False, relu: bool = False, rowwise: bool = False
    ) -> None:
        n, k = (w_shape[1], w_shape[0]) if transpose else w_shape
        axis %= len(x_shape)
        if math.prod(x_shape[axis:]) != k:
            raise ValueError(f"inner_product: x shape {x_shape} from axis {axis} does not give the weight's K = {k}")
        m = math.prod(x_shape[:axis])
        self.out_shape = (*x_shape[:axis], n)
        self.axis, self.transpose, self.relu = axis, bool(transpose), bool(relu)
        if rowwise and transpose:
            raise ValueError("inner_product: rowwise bits need W as (N, K) (no transpose)")
        self.rowwise = bool(rowwise)
        self.small = (m, k, n) if not transpose and (rowwise or small_rows(m, n, k)) else None
        # Too few multiply-adds to share between threads (LeNet ip2 at batch 1): on the calling thread (kernels.tasks).
        # The same code either way (one thread claims every row block): the same bits.
        self.serial = m * k * n < SMALL_WORK
        self.workers = numba.get_num_threads()
        self.zeros = np.zeros(n, np.float32)
        # W backwards every other call (_ip_whole_worker), carried from call to call (a replay does not restore it)
        self.turns = carried(np.zeros(1, np.int64))

    def __call__(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, out: np.ndarray) -> None:
        if self.small is None:
            inner_product_forward(x, w, b, axis=self.axis, transpose=self.transpose, out=out, relu=self.relu)
            return
        m, k, n = self.small
        _ip_small_rows(x.reshape(m, k), w, self.zeros if b is None else b, out.reshape(m, n), self.relu, self.workers,
                       self.serial, self.rowwise, self.turns)  # fmt: skip


SUM_ROWS_BLOCK = 256  # columns of db summed together by `_sum_rows_worker` (rows streamed over them)


def _sum_rows_worker(t, dy2, db, overwrite, chain, workers):  # pragma: no cover - compiled
    """Worker t's share of the column blocks (kernels.tasks): db[n] += sum_m dy2[m, n] (db[n] = the sum with
    overwrite: the values += gives on zeros, as a sum from +0.0 is never -0.0; with chain, the rows added to db[n]
    one after another, ((db + r0) + r1) ...: the order of adding per-chunk partial sums into an accumulating
    gradient); dy2 (M, N), rows streamed in order (each column summed in row order, whichever worker has it: the same
    bits for any split)."""
    m_all, n_all = dy2.shape
    nb = SUM_ROWS_BLOCK
    nblk = (n_all + nb - 1) // nb
    acc = np.empty(nb, np.float32)
    for blk in range(t * nblk // workers, (t + 1) * nblk // workers):
        j0 = blk * nb
        j1 = min(j0 + nb, n_all)
        for j in range(j1 - j0):
            acc[j] = db[j0 + j] if chain and not overwrite else np.float32(0.0)
        if chain and not overwrite:
            for m in range(m_all):
                for j in range(j0, j1):
                    acc[j - j0] += dy2[m, j]
            for j in range(j0, j1):
                db[j] = acc[j - j0]
            continue
        for m in range(m_all):
            for j in range(j0, j1):
                acc[j - j0] += dy2[m, j]
        if overwrite:
            for j in range(j0, j1):
                db[j] = acc[j - j0]
        else:
            for j in range(j0, j1):
                db[j] += acc[j - j0]


_SUM_ROWS = Task(_sum_rows_worker, (_F2, types.float32[::1], types.boolean, types.boolean, types.int64),
                 boundscheck=False)  # fmt: skip


def sum_rows(dy2: np.ndarray, db: np.ndarray, overwrite: bool = False, chain: bool = False) -> None:
    """db += the column sums of dy2 (M, N) (db = them with `overwrite`: the bits += gives on zeros; with `chain`, the
    rows added into db one after another, the bits of ``for r in dy2: db += r``), column blocks shared by the threads;
    dy2 any float32 (M, N), db C-contiguous writeable float32 (N,). All of it in one task: a replayed training pass
    (``net.train_replay``) runs it without Python."""
    dy2 = np.require(dy2, np.float32, ["C", "W"])
    workers = max(1, min(numba.get_num_threads(), -(-dy2.shape[1] // SUM_ROWS_BLOCK)))
    _SUM_ROWS.parallel(_SUM_ROWS.address, workers, dy2, db, bool(overwrite), bool(chain), workers)


def _check_grad(arr: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != np.float32 or not arr.flags.c_contiguous:
        got = f"{arr.dtype} {arr.shape} (c_contiguous={arr.flags.c_contiguous})" if isinstance(arr, np.ndarray) else arr
        raise ValueError(
            f"inner_product: expected {name} to be a C-contiguous float32 array of shape {shape}, got {got}"
        )
    if not arr.flags.writeable:
        raise ValueError(f"inner_product: {name} is read-only")
    return arr


def inner_product_backward(
    dy: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    *,
    axis: int = 1,
    transpose: bool = False,
    dx: np.ndarray | None = None,
    dw: np.ndarray | None = None,
    db: np.ndarray | None = None,
    need_dx: bool = True,
    need_dw: bool = True,
    need_db: bool = True,
    overwrite_dw: bool = False,
    overwrite_db: bool = False,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """InnerProduct backward, float32: gradients of a loss L given dy = dL/dy.

    dy: x.shape[:axis] + (N,); x: the forward input, flattened to (M, K) at `axis`; w: (N, K), or (K, N) with
    transpose. Returns (dx, dw, db):
      dx: x.shape, OVERWRITTEN: written into `dx` when given, else a new array; None when need_dx is False.
          dx must not share memory with dy.
      dw: w.shape, ACCUMULATED: dw += dL/dw (a zeroed array is allocated when dw is None); None when need_dw is False.
          With overwrite_dw, OVERWRITTEN: dw = dL/dw, the values dw += dL/dw gives on zeros (a solver's cleared diff:
          LeNet's ip1 skips a 1.6 MB zeroing pass and the GEMM's read of C).
      db: (N,), ACCUMULATED like dw (OVERWRITTEN with overwrite_db); None when need_db is False (pass need_db=False
          for a layer without bias).
    Arrays passed in must be C-contiguous float32 of those shapes; passing one whose need_* flag is False is an error.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    n, k = weight_dims(w, transpose)
    x2, lead = flatten_input(x, axis, k)
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    if dy.shape != lead + (n,):
        raise ValueError(
            f"inner_product_backward: expected dy of shape {lead + (n,)} (x.shape[:{axis}] + (N,)), got {dy.shape}"
        )
    for name, arr, need in (("dx", dx, need_dx), ("dw", dw, need_dw), ("db", db, need_db)):
        if arr is not None and not need:
            raise ValueError(f"inner_product_backward: {name} was given but need_{name} is False")
    dy2 = dy.reshape(x2.shape[0], n)
    if need_dw:
        dw = np.zeros(w.shape, np.float32) if dw is None else _check_grad(dw, w.shape, "dw")
        accumulate = not overwrite_dw  # (no rows: gemm's K = 0 writes the zeros itself)
        if transpose:
            gemm(x2, dy2, trans_a=True, out=dw, accumulate=accumulate)
        else:
            gemm(dy2, x2, trans_a=True, out=dw, accumulate=accumulate)
    if need_db:
        db = np.zeros(n, np.float32) if db is None else _check_grad(db, (n,), "db")
        sum_rows(dy2, db, overwrite_db)
    if need_dx:
        dx = np.empty(x.shape, np.float32) if dx is None else _check_grad(dx, x.shape, "dx")
        if np.shares_memory(dx, dy):
            raise ValueError("inner_product_backward: dx shares memory with dy; pass a separate dx array")
        dx2 = dx.reshape(x2.shape)
        if transpose and x2.shape[0] <= SMALL_M_DX:  # dx2[m, k] = dot(dy2[m], W[k]): W streamed once, not packed
            _ip_small_rows(dy2, w, np.zeros(k, np.float32), dx2, False, numba.get_num_threads())
        else:  # dy2 @ W reads W in place when there are few rows (gemm packs only dy2)
            gemm(dy2, w, trans_b=transpose, out=dx2)
    return dx, dw, db
