"""SGEMM on our own Numba loops: C = op(A) @ op(B) for float32 matrices.

Kernels, in order of optimisation (NumPy's BLAS, ``a @ b``, is "kernel 0", the reference we time against):

1. ``gemm_ref``      - a sum of K rank-1 updates in float64 (no BLAS call), the obviously-correct reference.
2. ``_block``        - the macro kernel: every tile of a block of C with the register-blocked micro-kernel inline:
                       an MR x NR = 4 x 16 tile of C held in a stack array that LLVM promotes to 8 ymm registers;
                       per k step it broadcasts 4 values of A and multiplies them by two 8-wide vectors of B (8 FMAs
                       for 2 vector loads + 4 broadcasts). 8 accumulators cover the FMA latency x 2 pipes of AVX2
                       cores, and 8 + 2 + 4 registers fit the 16 ymm registers; larger tiles (8 x 32, 6 x 16) made
                       LLVM spill: 2.5x slower on this AVX2 machine (Zen 3): 77 vs 32 GFLOP/s per core, OpenBLAS ~85.
                       Inline rather than a call per tile: +30% at K = 50 (LeNet conv2's input gradient), +40% at
                       K = 25 (conv1's forward).
3. ``_pack_panel_parallel`` - copy op(A) into MR-row slivers ``(ceil(M/MR), K, MR)`` and op(B) into NR-column
                       slivers ``(ceil(N/NR), K, NR)``, zero padded, so the micro-kernel reads contiguous memory
                       whatever the transposes are. ``kernels.conv`` writes im2col straight into the B format.
                       An untransposed operand that is used once per block (one column block of C for A, one row
                       block or one K panel for B) is read in place instead (``_block``'s lda/ldb > 0).
4. ``_gemm_tiles_parallel`` - cache blocking (KC deep panels; MC x NC blocks of C as parallel tasks) with
                       ``prange`` over the blocks; ``_gemm_tiles_serial`` is the same loop nest for callers that are
                       themselves parallel (convolution over a batch).

Public: ``gemm(a, b, *, trans_a=False, trans_b=False, out=None, accumulate=False) -> out``; ``Workspace``, the
per-thread scratch buffers the packing uses (also used by ``kernels.conv``).

Benchmark: ``python -m benchmarks --only gemm`` (checks against the reference first).
"""

from __future__ import annotations

import threading

import numpy as np
from numba import carray, njit, prange, types
from numba.core import cgutils, errors
from numba.extending import intrinsic

MR = 4  # rows of the micro tile (the four a0..a3 broadcasts in _block are written out for this value)
NR = 16  # columns of the micro tile: two 8-float AVX2 vectors
MN = MR * NR
KC = 384  # depth of one panel: an A sliver (KC x MR, 6 KB) and a B sliver (KC x NR, 24 KB) stay in L1
MC = 64  # rows of C per parallel task (multiple of MR)
NC = 256  # columns of C per parallel task (multiple of NR)


def gemm_ref(a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False) -> np.ndarray:
    """Reference: op(a) @ op(b) by explicit sums in float64, returned as float32.

    a: (M, K), or (K, M) with trans_a; b: (K, N), or (N, K) with trans_b. Returns (M, N). Slow; tests only.
    """
    a64 = np.asarray(a, np.float64)
    b64 = np.asarray(b, np.float64)
    a64 = a64.T if trans_a else a64
    b64 = b64.T if trans_b else b64
    m, k = a64.shape
    n = b64.shape[1]
    out = np.zeros((m, n), np.float64)
    for p in range(k):  # rank-1 updates: obviously a sum over k, without calling BLAS
        out += a64[:, p : p + 1] * b64[p : p + 1, :]
    return out.astype(np.float32)


@intrinsic
def _stack_empty(typingctx, size, dtype):
    """A pointer to `size` (a compile-time constant) elements on the stack, so LLVM can keep them in registers."""
    if not isinstance(size, types.IntegerLiteral):
        raise errors.RequireLiteralValue(size)
    n = size.literal_value

    def impl(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(dtype.dtype), size=n)

    return types.CPointer(dtype.dtype)(size, dtype), impl


@njit(cache=True, boundscheck=False)
def _pack_rows_sliver(src, r0, nrows, dst, width, s, k_all):
    """Sliver s of a row source: dst[(s*K + k)*width + i] = src[r0 + s*width + i, k], zero past row nrows.

    src: (rows, K) C-contiguous; used for op(A) without transpose (width MR) and op(B) = b.T (width NR).
    """
    base = s * k_all * width
    for i in range(width):
        row = s * width + i
        if row < nrows:
            for k in range(k_all):
                dst[base + k * width + i] = src[r0 + row, k]
        else:
            for k in range(k_all):
                dst[base + k * width + i] = 0.0


@njit(cache=True, boundscheck=False)
def _pack_cols_range(src, c0, ncols, dst, width, k_begin, k_end, k_all):
    """Rows k_begin..k_end of a column source: dst[(s*K + k)*width + j] = src[k, c0 + s*width + j].

    src: (K, cols) C-contiguous; used for op(B) without transpose (width NR) and op(A) = a.T (width MR).
    Walking k outermost reads src row by row (few pages at a time), zero padding past column ncols.
    """
    nt = (ncols + width - 1) // width
    for k in range(k_begin, k_end):
        for s in range(nt):
            o = (s * k_all + k) * width
            j0 = s * width
            w = min(width, ncols - j0)
            for j in range(w):
                dst[o + j] = src[k, c0 + j0 + j]
            for j in range(w, width):
                dst[o + j] = 0.0


@njit(cache=True, parallel=True, boundscheck=False)
def _pack_panel_parallel(src, rows_major, n, dst, width):
    """Pack n rows of src (rows_major: src is (rows, K)) or n columns (src is (K, cols)) into width-wide slivers
    (flat (ceil(n/width), K, width)); slivers (row source) or ranges of k (column source) over threads."""
    if rows_major:
        k_all = src.shape[1]
        for s in prange((n + width - 1) // width):
            _pack_rows_sliver(src, 0, n, dst, width, s, k_all)
    else:
        k_all = src.shape[0]
        chunk = 64
        for t in prange((k_all + chunk - 1) // chunk):
            _pack_cols_range(src, 0, n, dst, width, t * chunk, min(k_all, (t + 1) * chunk), k_all)


@njit(cache=True, fastmath=True, boundscheck=False)
def _block(ap, lda, bp, ldb, c, c_off, ldc, m, n, k_all, pc, kc, i0, i1, j0, j1, load_c, bias, bias_off):
    """C[i0:i1, j0:j1] (+)= op(A)[i0:i1, pc:pc+kc] @ op(B)[pc:pc+kc, j0:j1]; i0, j0 multiples of MR, NR.

    The macro kernel: every MR x NR tile of the block in turn, with the micro-kernel written inline (no call per
    tile: a call cost ~100 cycles, a third of a tile at LeNet's K = 25..50). C is flat (m x n valid, row stride ldc,
    from c_off). load_c: C += A@B; otherwise C = A@B + bias[bias_off + row].
    Operands (K = k_all): lda == 0: A packed, ap[(ir*K + k)*MR + i] = op(A)[ir*MR + i, k]; lda > 0: A row-major,
    ap[r*lda + k] (rows past m re-read row m-1, never stored). ldb == 0: B packed, bp[(jr*K + k)*NR + j] =
    op(B)[k, jr*NR + j]; ldb > 0: B row-major, bp[k*ldb + col] (the caller makes sure whole NR-wide rows exist).
    Offsets are unsigned, so Numba's negative-index wraparound folds away and LLVM emits plain vector loads, and
    no array views are made (each costs atomic reference counting).
    """
    acc = carray(_stack_empty(MN, np.float32), (MN,))
    aks = np.uint64(MR if lda == 0 else 1)
    bks = np.uint64(NR if ldb == 0 else ldb)
    for jr in range(j0 // NR, (j1 + NR - 1) // NR):
        nr = min(NR, n - jr * NR)
        bo = np.uint64((jr * k_all + pc) * NR if ldb == 0 else pc * ldb + jr * NR)
        for ir in range(i0 // MR, (i1 + MR - 1) // MR):
            mr = min(MR, m - ir * MR)
            if lda == 0:
                o0 = np.uint64((ir * k_all + pc) * MR)
                o1, o2, o3 = o0 + np.uint64(1), o0 + np.uint64(2), o0 + np.uint64(3)
            else:
                o0 = np.uint64(ir * MR * lda + pc)
                o1 = np.uint64((ir * MR + min(1, mr - 1)) * lda + pc)
                o2 = np.uint64((ir * MR + min(2, mr - 1)) * lda + pc)
                o3 = np.uint64((ir * MR + min(3, mr - 1)) * lda + pc)
            for j in range(MN):
                acc[j] = 0.0
            for k in range(kc):
                ka = np.uint64(k) * aks
                a0 = ap[o0 + ka]
                a1 = ap[o1 + ka]
                a2 = ap[o2 + ka]
                a3 = ap[o3 + ka]
                ob = bo + np.uint64(k) * bks
                for j in range(NR):
                    bj = bp[ob + np.uint64(j)]
                    acc[j] += a0 * bj
                    acc[NR + j] += a1 * bj
                    acc[2 * NR + j] += a2 * bj
                    acc[3 * NR + j] += a3 * bj
            co = np.uint64(c_off + ir * MR * ldc + jr * NR)
            for i in range(mr):
                r = co + np.uint64(i * ldc)
                if load_c:
                    for j in range(nr):
                        c[r + np.uint64(j)] += acc[i * NR + j]
                else:
                    bi = bias[bias_off + ir * MR + i]
                    for j in range(nr):
                        c[r + np.uint64(j)] = acc[i * NR + j] + bi


@njit(cache=True, boundscheck=False)
def _gemm_tiles_serial(ap, bp, c, c_off, ldc, m, n, k_all, accumulate, bias, bias_off):
    """Whole C (m x n, flat, row stride ldc) from packed ap/bp on the calling thread (see _block)."""
    for pc in range(0, k_all, KC):
        kc = min(KC, k_all - pc)
        for i0 in range(0, m, MC):
            _block(
                ap,
                0,
                bp,
                0,
                c,
                c_off,
                ldc,
                m,
                n,
                k_all,
                pc,
                kc,
                i0,
                min(i0 + MC, m),
                0,
                n,
                accumulate or pc > 0,
                bias,
                bias_off,
            )


@njit(cache=True, parallel=True, boundscheck=False)
def _gemm_tiles_parallel(ap, lda, bp, ldb, c, c_off, ldc, m, n, k_all, accumulate, bias, bias_off):
    """Whole C from ap/bp (packed, or row-major: see _block), MC x NC blocks of C spread over threads; each block
    walks all K panels."""
    bm = (m + MC - 1) // MC
    bn = (n + NC - 1) // NC
    for t in prange(bm * bn):
        i0 = (t % bm) * MC
        j0 = (t // bm) * NC
        i1 = min(i0 + MC, m)
        j1 = min(j0 + NC, n)
        for pc in range(0, k_all, KC):
            kc = min(KC, k_all - pc)
            _block(
                ap,
                lda,
                bp,
                ldb,
                c,
                c_off,
                ldc,
                m,
                n,
                k_all,
                pc,
                kc,
                i0,
                i1,
                j0,
                j1,
                accumulate or pc > 0,
                bias,
                bias_off,
            )


class Workspace(threading.local):
    """Per-Python-thread float32 scratch memory, grown on demand and reused across calls: fresh large arrays
    come from mmap, and first-touch page faults on every call cost more than packing small operands."""

    buf: np.ndarray = np.empty(0, np.float32)

    def get(self, *sizes: int) -> list[np.ndarray]:
        """Disjoint uninitialised float32 views of the given sizes (valid until the next get on this thread)."""
        total = sum(sizes)
        if self.buf.size < total:
            self.buf = np.empty(total, np.float32)
        views, o = [], 0
        for size in sizes:
            views.append(self.buf[o : o + size])
            o += size
        return views


_WORKSPACE = Workspace()


def packed_a_size(m: int, k: int) -> int:
    """Number of float32 elements of op(A) (m x k) packed into MR-row slivers."""
    return -(-m // MR) * MR * k


def packed_b_size(k: int, n: int) -> int:
    """Number of float32 elements of op(B) (k x n) packed into NR-column slivers."""
    return -(-n // NR) * NR * k


def _as_f32_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"gemm: expected {name} to be 2-D, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def gemm(
    a: np.ndarray,
    b: np.ndarray,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    out: np.ndarray | None = None,
    accumulate: bool = False,
) -> np.ndarray:
    """out = op(a) @ op(b) (or out += ... when accumulate), float32.

    a: (M, K), or (K, M) with trans_a; b: (K, N), or (N, K) with trans_b; out: (M, N) float32 C-contiguous,
    allocated when None (then accumulate must be False). Inputs are converted to C-contiguous float32.
    """
    a = _as_f32_2d(a, "a")
    b = _as_f32_2d(b, "b")
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != kb:
        raise ValueError(
            f"gemm: inner dimensions differ: op(a) is {m}x{k}, op(b) is {kb}x{n} "
            f"(a shape {a.shape}, trans_a={trans_a}; b shape {b.shape}, trans_b={trans_b})"
        )
    if out is None:
        if accumulate:
            raise ValueError("gemm: accumulate=True needs an `out` array to accumulate into")
        out = np.empty((m, n), np.float32)
    elif out.shape != (m, n) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"gemm: expected out to be C-contiguous float32 of shape {(m, n)}, "
            f"got {out.dtype} {out.shape} (c_contiguous={out.flags.c_contiguous})"
        )
    if m == 0 or n == 0:
        return out
    if k == 0:
        if not accumulate:
            out[...] = 0.0
        return out
    # Pack an operand only where it pays: op(A) = a (row-major) is read in place when there is one block of columns
    # (each A row then streams once); op(B) = b (row-major, whole NR-wide rows) when there is one block of rows or one
    # K panel (few rows of B). Packing W costs as much as the GEMM at LeNet's ip1 (M = 64): 0.8 -> 0.5 ms for dx.
    # Large square products keep both packed (read in place, B's rows would thrash L1 and the TLB: 2x slower).
    pack_a = trans_a or n > NC
    pack_b = trans_b or n % NR != 0 or (m > MC and k > KC)
    a_len = packed_a_size(m, k) if pack_a else 0
    ap, bp, zeros = _WORKSPACE.get(a_len, packed_b_size(k, n) if pack_b else 0, -(-m // MR) * MR)
    zeros[:] = 0.0
    if pack_a:
        _pack_panel_parallel(a, not trans_a, m, ap, MR)
    if pack_b:
        _pack_panel_parallel(b, trans_b, n, bp, NR)
    a_arg, lda = (ap, 0) if pack_a else (a.reshape(-1), k)
    b_arg, ldb = (bp, 0) if pack_b else (b.reshape(-1), n)
    _gemm_tiles_parallel(a_arg, lda, b_arg, ldb, out.reshape(-1), 0, n, m, n, k, accumulate, zeros, 0)
    return out
