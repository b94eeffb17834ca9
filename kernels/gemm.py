"""SGEMM on our own Numba loops: C = op(A) @ op(B) for float32 matrices.

Kernels, in order of optimisation (NumPy's BLAS, ``a @ b``, is "kernel 0", the reference we time against):

1. ``gemm_ref``      - a sum of K rank-1 updates in float64 (no BLAS call), the obviously-correct reference.
2. ``_micro``        - the register-blocked micro-kernel: an MR x NR = 8 x 32 tile of C held in a stack array
                       that LLVM promotes to 16 zmm registers; per k step it broadcasts 8 values of A and
                       multiplies them by two 16-wide vectors of B (16 FMAs for 2 vector loads + 8 broadcasts).
3. ``_pack_panel_parallel`` - copy op(A) into MR-row slivers ``(ceil(M/MR), K, MR)`` and op(B) into NR-column
                       slivers ``(ceil(N/NR), K, NR)``, zero padded, so the micro-kernel reads contiguous memory
                       whatever the transposes are. ``kernels.conv`` writes im2col straight into the B format.
4. ``_gemm_tiles_parallel`` - cache blocking (KC deep panels; MC x NC blocks of C as parallel tasks) with
                       ``prange`` over the blocks; ``_gemm_tiles_serial`` is the same loop nest for callers that are
                       themselves parallel (convolution over a batch).

Public: ``gemm(a, b, *, trans_a=False, trans_b=False, out=None, accumulate=False) -> out``.

Benchmark: ``python -m benchmarks.bench_kernels --threads 2`` (checks against the reference first).
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, prange, types
from numba.core import cgutils, errors
from numba.extending import intrinsic

MR = 8  # rows of the micro tile (the eight a0..a7 broadcasts in _micro are written out for this value)
NR = 32  # columns of the micro tile: two 16-float AVX-512 vectors (four AVX2 vectors)
MN = MR * NR
KC = 384  # depth of one panel: an A sliver (KC x MR, 12 KB) stays in L1, a B sliver (KC x NR, 48 KB) in L2
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


@njit(cache=True, fastmath=True, boundscheck=False)
def _micro(kc, ap, a_off, bp, b_off, c, c_off, ldc, mr, nr, load_c, bias, bias_off):
    """One MR x NR tile of C (flat, row stride ldc, valid part mr x nr) from packed slivers.

    ap[a_off + k*MR + i] = op(A)[i, k], bp[b_off + k*NR + j] = op(B)[k, j] for k < kc.
    load_c: C += A@B; otherwise C = A@B + bias[bias_off + i].
    """
    acc = carray(_stack_empty(MN, np.float32), (MN,))
    for j in range(MN):
        acc[j] = 0.0
    # Views starting at the offsets: indices below are then provably >= 0, so Numba's negative-index
    # wraparound folds away and LLVM emits plain vector loads (with signed offsets it emits gathers).
    av = ap[a_off:]
    bv = bp[b_off:]
    cv = c[c_off:]
    for k in range(kc):
        o = k * MR
        a0 = av[o]
        a1 = av[o + 1]
        a2 = av[o + 2]
        a3 = av[o + 3]
        a4 = av[o + 4]
        a5 = av[o + 5]
        a6 = av[o + 6]
        a7 = av[o + 7]
        ob = k * NR
        for j in range(NR):
            bj = bv[ob + j]
            acc[j] += a0 * bj
            acc[NR + j] += a1 * bj
            acc[2 * NR + j] += a2 * bj
            acc[3 * NR + j] += a3 * bj
            acc[4 * NR + j] += a4 * bj
            acc[5 * NR + j] += a5 * bj
            acc[6 * NR + j] += a6 * bj
            acc[7 * NR + j] += a7 * bj
    _write_tile(acc, cv, ldc, mr, nr, load_c, bias[bias_off:])


@njit(cache=True, fastmath=True, boundscheck=False)
def _write_tile(acc, cv, ldc, mr, nr, load_c, bias):
    """cv[i*ldc + j] (+)= acc[i*NR + j] for the valid mr x nr part; bias[i] is added when storing."""
    if mr == MR and nr == NR:
        for i in range(MR):
            r = i * ldc
            if load_c:
                for j in range(NR):
                    cv[r + j] += acc[i * NR + j]
            else:
                bi = bias[i]
                for j in range(NR):
                    cv[r + j] = acc[i * NR + j] + bi
    else:
        for i in range(mr):
            r = i * ldc
            if load_c:
                for j in range(nr):
                    cv[r + j] += acc[i * NR + j]
            else:
                bi = bias[i]
                for j in range(nr):
                    cv[r + j] = acc[i * NR + j] + bi


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
def _block(ap, bp, c, c_off, ldc, m, n, k_all, pc, kc, i0, i1, j0, j1, load_c, bias, bias_off):
    """C[i0:i1, j0:j1] (+)= op(A)[i0:i1, pc:pc+kc] @ op(B)[pc:pc+kc, j0:j1]; i0, j0 multiples of MR, NR.

    C is flat (m x n valid, row stride ldc, starting at c_off). Bias (when not load_c) is bias[bias_off + row].
    """
    for jr in range(j0 // NR, (j1 + NR - 1) // NR):
        nr = min(NR, n - jr * NR)
        b_off = (jr * k_all + pc) * NR
        for ir in range(i0 // MR, (i1 + MR - 1) // MR):
            mr = min(MR, m - ir * MR)
            a_off = (ir * k_all + pc) * MR
            _micro(
                kc,
                ap,
                a_off,
                bp,
                b_off,
                c,
                c_off + ir * MR * ldc + jr * NR,
                ldc,
                mr,
                nr,
                load_c,
                bias,
                bias_off + ir * MR,
            )


@njit(cache=True, boundscheck=False)
def _gemm_tiles_serial(ap, bp, c, c_off, ldc, m, n, k_all, accumulate, bias, bias_off):
    """Whole C (m x n, flat, row stride ldc) from packed ap/bp on the calling thread (see _block)."""
    for pc in range(0, k_all, KC):
        kc = min(KC, k_all - pc)
        for i0 in range(0, m, MC):
            _block(
                ap,
                bp,
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
def _gemm_tiles_parallel(ap, bp, c, c_off, ldc, m, n, k_all, accumulate, bias, bias_off):
    """Whole C from packed ap/bp, MC x NC blocks of C spread over threads; each block walks all K panels."""
    bm = (m + MC - 1) // MC
    bn = (n + NC - 1) // NC
    for t in prange(bm * bn):
        i0 = (t % bm) * MC
        j0 = (t // bm) * NC
        i1 = min(i0 + MC, m)
        j1 = min(j0 + NC, n)
        for pc in range(0, k_all, KC):
            kc = min(KC, k_all - pc)
            _block(ap, bp, c, c_off, ldc, m, n, k_all, pc, kc, i0, i1, j0, j1, accumulate or pc > 0, bias, bias_off)


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
    ap = np.empty(packed_a_size(m, k), np.float32)
    bp = np.empty(packed_b_size(k, n), np.float32)
    _pack_panel_parallel(a, not trans_a, m, ap, MR)
    _pack_panel_parallel(b, trans_b, n, bp, NR)
    zeros = np.zeros(-(-m // MR) * MR, np.float32)
    _gemm_tiles_parallel(ap, bp, out.reshape(-1), 0, n, m, n, k, accumulate, zeros, 0)
    return out
