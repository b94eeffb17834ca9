"""SGEMM on our own Numba loops and one LLVM IR micro-kernel: C = op(A) @ op(B) for float32 matrices.

Kernels, in order of optimisation (NumPy's BLAS, ``a @ b``, is "kernel 0", the reference we time against):

1. ``gemm_ref``      - a sum of K rank-1 updates in float64 (no BLAS call), the obviously-correct reference.
2. ``_block``        - the macro kernel: every MR x NR tile of a block of C in turn, each by ``_micro_tile`` /
                       ``_micro_tile_reg``, a micro-kernel written in LLVM IR (a Numba intrinsic). AVX2: 6 x 16,
                       twelve 8-float accumulators in ymm registers; per k step 6 broadcasts of A and 2 vector loads
                       of B feed 12 FMAs, which covers the FMA latency x 2 pipes with 12 + 2 + 1 of the 16 ymm
                       registers.
                       AVX-512 (``tiling.tile_shape``): 12 x 16 tiles, two at a time (``PAIR``: 12 x 32, 24 16-float
                       accumulators in zmm registers, two loads of B and 12 broadcasts of A per k for 24 FMAs: one
                       broadcast per FMA, a single 12 x 16 tile, is bound by the loads). The tile loop is inline in
                       the macro kernel (no Python-level call per tile). At C's edges (``_micro_cases``, for gemm's own
                       tasks: ``_block``'s edges) tiles of 4 or 8 rows, and a last sliver of one 8-float vector (its
                       columns fit: half the FMA issue) or of masked loads (``llvm.masked.load``: B read in place up to
                       its last column). Measured figures: benchmarks/perf_notes.md.
3. ``_pack_panel_worker`` - copy op(A) into MR-row slivers ``(ceil(M/MR), K, MR)`` and op(B) into NR-column
                       slivers ``(ceil(N/NR), K, NR)``, zero padded, so the micro-kernel reads contiguous memory
                       whatever the transposes are (whole B slivers as <8 x float> copies, ``_copy8``).
                       ``kernels.conv`` writes im2col straight into the B format.
                       An untransposed operand that is used once per block (one column block of C for A, one row
                       block or one K panel for B) is read in place instead (``_block``'s lda/ldb > 0).
4. ``_gemm_worker`` - cache blocking (KC deep panels; MC x NC blocks of C as parallel tasks) claimed by one
                       worker per thread (a ``kernels.tasks`` body, like 3.); ``_gemm_tiles_serial`` is the same loop
                       nest for callers that are themselves parallel (convolution over a batch). A C of fewer than 8
                       blocks a thread takes blocks of rows and columns that split evenly over the threads
                       (``blocking``: 256^3 on 2 threads, 0.204 -> 0.175-0.192 ms, 0.91x -> 1.02-1.13x NumPy's BLAS
                       on a Zen 4 EPYC; LeNet ip1's data gradient 64 x 800 x 500: see benchmarks/perf_notes.md).
                       Where C has few blocks of rows, each task packs its own columns' K panels of B (``FUSED_B``)
                       instead of reading a B that both threads packed whole first. Large products with C rows of
                       1024-2048 columns go in row order instead (``_gemm_rows_worker``, ``ROW_ORDER``): each thread
                       packs MC rows of A at a time and runs them over every column.

Public: ``gemm(a, b, *, trans_a=False, trans_b=False, out=None, accumulate=False) -> out``; ``Workspace``, the
per-thread scratch buffers the packing uses (also used by ``kernels.conv``).

Benchmark: ``python -m benchmarks --only gemm`` (checks against the reference first).
"""

from __future__ import annotations

import functools
import platform
import threading

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import carray, literally, njit, types
from numba.core import cgutils, errors
from numba.extending import intrinsic

from kernels.tasks import Task
from kernels.tiling import ACC, KC, MC, MN, MR, NC, NR, PAIR, VW  # the tile shape and blocking, with their rules


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


def _as64(builder, v):
    """An integer LLVM value widened (zero-extended) to i64: offsets and counts are unsigned."""
    return v if v.type.width == 64 else builder.zext(v, llvm_ir.IntType(64))


def _prefetch(builder, data, off) -> None:
    """A read prefetch of data[off] (a float pointer and an i64 offset) into every cache level (llvm.prefetch,
    locality 3: prefetcht0); it never faults, so it may point past the operand's end."""
    i8p, i32 = llvm_ir.IntType(8).as_pointer(), llvm_ir.IntType(32)
    fn = cgutils.get_or_insert_function(
        builder.module, llvm_ir.FunctionType(llvm_ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8"
    )
    at = builder.bitcast(builder.gep(data, [off]), i8p)
    builder.call(fn, [at, llvm_ir.Constant(i32, 0), llvm_ir.Constant(i32, 3), llvm_ir.Constant(i32, 1)])


def _splat(builder, x, vec):
    """`x` (a float) in every lane of the vector type `vec` (insertelement + zero shuffle: one broadcast)."""
    i32 = llvm_ir.IntType(32)
    v = builder.insert_element(llvm_ir.Constant(vec, llvm_ir.Undefined), x, llvm_ir.Constant(i32, 0))
    zeros = llvm_ir.Constant(llvm_ir.VectorType(i32, vec.count), [0] * vec.count)
    return builder.shuffle_vector(v, llvm_ir.Constant(vec, llvm_ir.Undefined), zeros)


def _accumulators(builder, vec, n):
    """n zeroed accumulators of type `vec` (stack slots that LLVM keeps in registers) and the llvm.fma of that type."""
    slots = [cgutils.alloca_once_value(builder, llvm_ir.Constant(vec, [0.0] * vec.count)) for _ in range(n)]
    fma = cgutils.get_or_insert_function(
        builder.module, llvm_ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{vec.count}f32"
    )
    return slots, fma


def _store_accumulators(builder, slots, acc_data):
    """acc[q*w : (q+1)*w] = slot q (w lanes each), unaligned vector stores."""
    vec = slots[0].type.pointee
    for q, slot in enumerate(slots):
        p = builder.gep(acc_data, [llvm_ir.Constant(llvm_ir.IntType(64), vec.count * q)])
        builder.store(builder.load(slot), builder.bitcast(p, vec.as_pointer()), align=4)


ROWS = (MR // 3, 2 * MR // 3, MR)  # the tile heights the micro-kernel comes in (12: 4, 8, 12; 6: 2, 4, 6)
NARROW = 8  # lanes of the last sliver's vectors in a narrow tile (its valid columns fit one 8-float vector)


@njit(cache=True, inline="always")
def tile_shape_code(mr: int, cols: int) -> np.uint64:  # pragma: no cover - compiled
    """The micro-kernel's `shape` argument for a tile of mr valid rows whose last sliver has `cols` valid columns
    (1..NR): the shortest height in ROWS that holds mr, and the kind of the last sliver (0: whole, 1: narrow, 2:
    ragged; see _micro_codegen), with cols in the bits from 8 up."""
    rows = 0 if mr <= ROWS[0] else (1 if mr <= ROWS[1] else 2)
    kind = 0 if cols >= NR else (1 if cols <= NARROW else 2)
    return np.uint64(min(cols, NR) * 256 + 3 * rows + kind)


def _micro_cases(regular: bool, pair: bool, edges: bool) -> list[tuple[int, int]]:
    """The (height index, kind) variants a micro-kernel compiles (see _micro_codegen). Without edges (callers whose
    A and B are packed, zero-padded: kernels.conv, kernels.winograd): the MR-row whole tile only, as before the
    edge variants (each variant is a loop of its own to compile, in every kernel that inlines _block). With edges
    (kernels.gemm's own tasks): a pair of slivers read through a row stride every height and kind; a single sliver
    (the last of an odd count) every kind at MR rows; an A row table (a row-major A's bottom edge) only the MR-row
    masked one. Any shape code without a variant of its own runs the MR-row masked one, which computes every tile
    (a narrow or whole last sliver as a masked NR-wide one)."""
    every = [(r, kind) for r in range(len(ROWS)) for kind in range(3)]
    if not edges:
        return [(len(ROWS) - 1, 0)]
    if not regular:
        return [(len(ROWS) - 1, 2)]
    return every if pair else [(len(ROWS) - 1, kind) for kind in range(3)]


def _micro_codegen(regular: bool, pair: bool = False, to_c: bool = False):
    """LLVM IR of the micro-kernel for arguments (ap, a_rows, aks, bp, bo, bks, kc, acc, [ars], [b2], shape) (see
    _micro_tile): regular: row i of A at a_rows + i*ars instead of a table a_rows[i]; pair: two NR-wide column
    slivers at once, the second's B at bo + b2 and its results at acc[MN:].

    shape (``tile_shape_code``, a run-time value; the variants of _micro_cases behind a switch) = cols * 256 + 3h + kind:
    the tile's height ROWS[h] (rows past it are neither computed nor stored: a short tile at the bottom edge costs
    its height, not MR) and its last sliver's cols valid columns. kind 0: all NR; kind 1 (narrow, cols <= NARROW):
    one <NARROW x float> vector a row, half the FMA issue of a 16-float one on AVX-512 (a 512-bit FMA takes both
    256-bit FMA units); kind 2: NR lanes. Kinds 1 and 2 load that sliver's B with llvm.masked.load (lanes past cols
    are not read, so B can be read in place up to its last column; they compute zeros and are never stored)."""

    def codegen(context, builder, signature, args):
        ap_v, rows_v, aks_v, bp_v, bo_v, bks_v, kc_v, acc_v, *extra = args
        tys = signature.args
        if to_c:  # (..., c, co, ldc, ars, [b2], load_c, bias, b_row, ahead): the tile's results straight into C
            co_v, ldc_v = extra.pop(0), extra.pop(0)
            load_c_v, bias_v, brow_v, ahead_v = extra[-4:]
            del extra[-4:]
            edges = False
        else:
            extra.pop()  # edges (a literal: its value is in the signature)
            edges = signature.args[-1].literal_value
            shape_v = extra.pop()
        i64 = llvm_ir.IntType(64)
        i32 = llvm_ir.IntType(32)
        a_data = context.make_array(tys[0])(context, builder, ap_v).data
        b_data = context.make_array(tys[3])(context, builder, bp_v).data
        acc_data = context.make_array(tys[7])(context, builder, acc_v).data
        if regular:
            a0, ars = _as64(builder, rows_v), _as64(builder, extra.pop(0))
            offs = [builder.add(a0, builder.mul(ars, llvm_ir.Constant(i64, i))) for i in range(MR)]
        else:
            ao_data = context.make_array(tys[1])(context, builder, rows_v).data
            offs = [_as64(builder, builder.load(builder.gep(ao_data, [llvm_ir.Constant(i64, i)]))) for i in range(MR)]

        def a_rows(packed: bool):
            """f(i, ka) -> pointer to row i of A at k (ka = k * aks). packed (ars == 1, the caller's branch): one
            base and constant row offsets. Otherwise rows ars apart: given a0 + i * ars, LLVM walked one pointer
            through the rows, an add after each broadcast, a chain of MR adds a k step: 12 cycles at MR 12, as long as
            the pair's 24 FMAs take on a core with two 512-bit FMA ports (Intel; Zen 4's one hid it). Each row's
            offset passes through an empty inline asm, which LLVM cannot see through, so it keeps them apart in
            registers (index + ka, no chain)."""
            if packed:
                base = builder.gep(a_data, [a0])
                return lambda i, ka: builder.gep(base, [builder.add(ka, c64(i))])
            if not regular or not PAIR:  # (AVX2's 6 x 16 tiles: the chain is half as long; 0.97-0.99x without it)
                return lambda i, ka: builder.gep(a_data, [builder.add(offs[i], ka)])
            fty = llvm_ir.FunctionType(i64, [i64])
            opaque = [builder.asm(fty, "", "=r,0", [o], side_effect=False, name=f"row{i}") for i, o in enumerate(offs)]
            return lambda i, ka: builder.gep(a_data, [builder.add(opaque[i], ka)])

        aks64, bks64, bo64, kc64 = (_as64(builder, v) for v in (aks_v, bks_v, bo_v, kc_v))
        halves = [llvm_ir.Constant(i64, 0)] + ([_as64(builder, extra.pop(0))] if pair else [])  # each sliver's B
        if not to_c:  # (to_c: whole tiles only, no shape code)
            shape64 = _as64(builder, shape_v)
            cols = builder.trunc(builder.lshr(shape64, llvm_ir.Constant(i64, 8)), i32)

        def c64(x):
            return llvm_ir.Constant(i64, x)

        def variant(rows, kind, packed=False, ahead=False):
            a_at = a_rows(packed)
            # per half: (lanes, vectors per row); the last half narrow: one NARROW-lane vector
            widths = [(VW, NR // VW)] * len(halves)
            if kind == 1:
                widths[-1] = (NARROW, 1)
            vecs = [llvm_ir.VectorType(llvm_ir.FloatType(), w) for w, _ in widths]
            slots = {}  # (h, i, v) -> accumulator slot
            fmas = {}
            for h, (w, nv) in enumerate(widths):
                s_, fmas[h] = _accumulators(builder, vecs[h], rows * nv)
                for i in range(rows):
                    for v in range(nv):
                        slots[h, i, v] = s_[i * nv + v]
            masks = {}  # (h, v) -> the lanes of vector v of the last half that hold valid columns (kinds 1, 2)
            if kind:
                h = len(halves) - 1
                w, nv = widths[h]
                limit = _splat(builder, cols, llvm_ir.VectorType(i32, w))
                for v in range(nv):
                    lanes = llvm_ir.Constant(llvm_ir.VectorType(i32, w), [v * w + q for q in range(w)])
                    masks[h, v] = builder.icmp_unsigned("<", lanes, limit)

            def load_vec(off, h, v):  # vecs[h].count floats of B from bp[off], unaligned (masked: masks[h, v])
                vec = vecs[h]
                ptr = builder.bitcast(builder.gep(b_data, [off]), vec.as_pointer())
                if (h, v) not in masks:
                    return builder.load(ptr, align=4)
                fn = cgutils.get_or_insert_function(
                    builder.module,
                    llvm_ir.FunctionType(vec, [vec.as_pointer(), i32, masks[h, v].type, vec]),
                    f"llvm.masked.load.v{vec.count}f32.p0v{vec.count}f32",
                )
                return builder.call(fn, [ptr, llvm_ir.Constant(i32, 4), masks[h, v], llvm_ir.Constant(vec, None)])

            with cgutils.for_range(builder, kc64) as loop:
                k = loop.index
                boff = builder.add(bo64, builder.mul(k, bks64))
                bv = {
                    (h, v): load_vec(builder.add(boff, builder.add(hoff, c64(w * v))), h, v)
                    for h, (hoff, (w, nv)) in enumerate(zip(halves, widths))
                    for v in range(nv)
                }
                ka = builder.mul(k, aks64)
                if ahead:  # the lines PREFETCH_B / PREFETCH_A k steps on, into L1 (one B line a sliver a k step)
                    b_on = builder.add(boff, builder.mul(bks64, c64(PREFETCH_B)))
                    for hoff in halves:
                        _prefetch(builder, b_data, builder.add(b_on, hoff))
                    _prefetch(builder, a_data, builder.add(a0, builder.add(ka, builder.mul(aks64, c64(PREFETCH_A)))))
                for i in range(rows):
                    a = builder.load(a_at(i, ka))
                    av = {w: _splat(builder, a, vecs[h]) for h, (w, _) in enumerate(widths)}
                    for h, (w, nv) in enumerate(widths):
                        for v in range(nv):
                            s_ = slots[h, i, v]
                            builder.store(builder.call(fmas[h], [av[w], bv[h, v], builder.load(s_)]), s_)
            if to_c:  # C[i, h*NR + v*lanes :] = acc + C (load_c) or acc + bias[b_row + i]: _tile_out's fadd per
                # value, without the tile's trip through the stack (a 12 x 32 pair at K = 50: ~15% of its cycles)
                c0, ldc = _as64(builder, co_v), _as64(builder, ldc_v)
                bias_data = context.make_array(tys[-3])(context, builder, bias_v).data
                brow = _as64(builder, brow_v)
                add_c = builder.icmp_unsigned("!=", load_c_v, llvm_ir.Constant(load_c_v.type, 0))

                def out(with_c: bool) -> None:  # bias is read only without load_c
                    for (h, i, v), s_ in slots.items():
                        vec = vecs[h]
                        at = builder.add(c0, builder.add(builder.mul(ldc, c64(i)), c64(h * NR + v * widths[h][0])))
                        cp = builder.bitcast(builder.gep(acc_data, [at]), vec.as_pointer())
                        if with_c:
                            other = builder.load(cp, align=4)
                        else:
                            bi = builder.load(builder.gep(bias_data, [builder.add(brow, c64(i))]))
                            other = _splat(builder, bi, vec)
                        builder.store(builder.fadd(builder.load(s_), other), cp, align=4)

                with builder.if_else(add_c) as (then, otherwise):
                    with then:
                        out(True)
                    with otherwise:
                        out(False)
                return
            for (h, i, v), s_ in slots.items():  # -> acc[h*MN + i*NR + v*lanes :]
                p = builder.gep(acc_data, [c64(h * MN + i * NR + v * widths[h][0])])
                builder.store(builder.load(s_), builder.bitcast(p, vecs[h].as_pointer()), align=4)

        if to_c:  # the whole MR-row tile only (no shape switch); packed A (rows 1 apart) on its own loop
            with builder.if_else(builder.icmp_unsigned("==", ars, c64(1))) as (packed, strided):
                with packed, builder.if_else(builder.icmp_unsigned("!=", ahead_v, c64(0))) as (far, near):
                    with far:
                        variant(MR, 0, True, True)
                    with near:
                        variant(MR, 0, True)
                with strided:
                    variant(MR, 0)
            return context.get_dummy_value()
        done = builder.append_basic_block("tile_done")
        cases = _micro_cases(regular, pair, edges)
        blocks = [builder.append_basic_block(f"tile_{ROWS[r]}_{kind}") for r, kind in cases]
        sel = builder.and_(shape64, c64(255))
        switch = builder.switch(sel, blocks[-1] if not edges else blocks[cases.index((len(ROWS) - 1, 2))])
        for (r, kind), bb in zip(cases, blocks):
            switch.add_case(c64(3 * r + kind), bb)
        for (r, kind), bb in zip(cases, blocks):
            builder.position_at_end(bb)
            variant(ROWS[r], kind)
            builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return codegen


def _literal_bool(edges) -> None:
    """The micro-kernels' edges argument must be a compile-time constant (its variants are chosen at compile time)."""
    if not isinstance(edges, types.BooleanLiteral):
        raise errors.RequireLiteralValue(edges)


@intrinsic
def _micro_tile(typingctx, ap, ao, aks, bp, bo, bks, kc, acc, shape, edges):
    """acc[i*NR + j] = sum_k A[i, k] * B[k, j] over k < kc for one MR x NR tile, written in LLVM IR:
    A[i, k] = ap[ao[i] + k*aks], B[k, j] = bp[bo + k*bks + j]. MR * NR / VW vector accumulators that LLVM keeps in
    registers, NR / VW unaligned vector loads of B and MR broadcasts of A per k (AVX2: 6 x 16, twelve <8 x float>;
    written in IR because Numba's own loops spill at 6 x 16). The row table serves tiles whose rows are irregular (a
    bottom edge of a row-major A, whose missing rows re-read the last one); _micro_tile_reg serves the others."""
    _literal_bool(edges)
    return types.void(ap, ao, aks, bp, bo, bks, kc, acc, shape, edges), _micro_codegen(False)


@intrinsic
def _micro_tile_reg(typingctx, ap, a0, aks, bp, bo, bks, kc, acc, ars, shape, edges):
    """_micro_tile with row i of A at ap[a0 + i*ars + k*aks]: one pointer and a stride instead of MR table entries.
    At 12 x 16 (AVX-512) a table's 12 row pointers do not fit in the general registers (LLVM would reload one from
    the stack for every FMA); packed A (ars = 1) addresses every row from one register, row-major A from a few."""
    _literal_bool(edges)
    return types.void(ap, a0, aks, bp, bo, bks, kc, acc, ars, shape, edges), _micro_codegen(True)


@intrinsic
def _micro_tile2_c(typingctx, ap, a0, aks, bp, bo, bks, kc, c, co, ldc, ars, b2, load_c, bias, b_row, ahead):
    """_micro_tile2_reg for a whole MR x 2NR pair with its results added straight into C (flat, row stride ldc, from
    co): C += tile (load_c) or C = tile + bias[b_row + i] per row i, the same float additions as _tile_out's.
    ahead (uint64, not 0) with packed A (ars = 1): each k step also prefetches A and B PREFETCH_A / PREFETCH_B k
    steps on (see PREFETCH_B)."""
    sig = types.void(ap, a0, aks, bp, bo, bks, kc, c, co, ldc, ars, b2, load_c, bias, b_row, ahead)
    return sig, _micro_codegen(True, True, to_c=True)


@intrinsic
def _micro_tile2(typingctx, ap, ao, aks, bp, bo, bks, kc, acc, b2, shape, edges):
    """_micro_tile over two column slivers at once (PAIR): B of the second at bo + b2, its tile at acc[MN:]."""
    _literal_bool(edges)
    return types.void(ap, ao, aks, bp, bo, bks, kc, acc, b2, shape, edges), _micro_codegen(False, True)


@intrinsic
def _micro_tile2_reg(typingctx, ap, a0, aks, bp, bo, bks, kc, acc, ars, b2, shape, edges):
    """_micro_tile_reg over two column slivers at once (PAIR): see _micro_tile2."""
    _literal_bool(edges)
    return types.void(ap, a0, aks, bp, bo, bks, kc, acc, ars, b2, shape, edges), _micro_codegen(True, True)


def _vec8_codegen(add_c: bool):
    """LLVM IR for c[c_off:c_off+8] = acc[a_off:a_off+8] + (c[c_off:c_off+8] if add_c else splat(bias)): one
    unaligned <8 x float> load/add/store. Numba's own 16-element loops here stayed scalar (it cannot rule out that C
    and the stack tile overlap): 96 scalar load/add/stores per 6 x 16 tile, as much as the FMAs at LeNet's K = 25."""

    def codegen(context, builder, signature, args):
        c_v, co_v, acc_v, ao_v, extra_v = args
        f32 = llvm_ir.FloatType()
        vec = llvm_ir.VectorType(f32, 8)
        vptr = vec.as_pointer()
        co64, ao64 = _as64(builder, co_v), _as64(builder, ao_v)
        c_data = context.make_array(signature.args[0])(context, builder, c_v).data
        a_data = context.make_array(signature.args[2])(context, builder, acc_v).data
        cp = builder.bitcast(builder.gep(c_data, [co64]), vptr)
        v = builder.load(builder.bitcast(builder.gep(a_data, [ao64]), vptr), align=4)
        if add_c:
            other = builder.load(cp, align=4)
        else:
            other = _splat(builder, extra_v if extra_v.type == f32 else builder.fptrunc(extra_v, f32), vec)
        builder.store(builder.fadd(v, other), cp, align=4)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _store8_bias(typingctx, c, c_off, acc, a_off, bias):
    """c[c_off:c_off+8] = acc[a_off:a_off+8] + bias (a float32 scalar), as vector ops (see _vec8_codegen)."""
    _flat_f32(c, acc)
    return types.void(c, c_off, acc, a_off, bias), _vec8_codegen(False)


@intrinsic
def _store8_add(typingctx, c, c_off, acc, a_off, unused):
    """c[c_off:c_off+8] += acc[a_off:a_off+8], as vector ops (see _vec8_codegen); `unused` keeps one signature."""
    _flat_f32(c, acc)
    return types.void(c, c_off, acc, a_off, unused), _vec8_codegen(True)


@intrinsic
def _copy8(typingctx, dst, d_off, src, s_off):
    """dst[d_off:d_off+8] = src[s_off:s_off+8] as one unaligned <8 x float> load and store (LLVM IR): Numba's own
    8-element loop between two arrays stays scalar (it cannot rule out that they overlap)."""
    sig = types.void(dst, d_off, src, s_off)

    def codegen(context, builder, signature, args):
        dst_v, do_v, src_v, so_v = args
        vptr = llvm_ir.VectorType(llvm_ir.FloatType(), 8).as_pointer()
        do64, so64 = _as64(builder, do_v), _as64(builder, so_v)
        d_data = context.make_array(signature.args[0])(context, builder, dst_v).data
        s_data = context.make_array(signature.args[2])(context, builder, src_v).data
        v = builder.load(builder.bitcast(builder.gep(s_data, [so64]), vptr), align=4)
        builder.store(v, builder.bitcast(builder.gep(d_data, [do64]), vptr), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, boundscheck=False, inline="always")
def _copy_run(dst, d_off, src, s_off, n):  # pragma: no cover - compiled
    """dst[d_off:d_off+n] = src[s_off:s_off+n] (flat float32), 8 floats at a time (_copy8: Numba's own copy loop
    between two arrays stays scalar), then the rest; offsets unsigned (no wraparound code)."""
    full = n - n % 8
    for j in range(0, full, 8):
        _copy8(dst, np.uint64(d_off + j), src, np.uint64(s_off + j))
    for j in range(full, n):
        dst[np.uint64(d_off + j)] = src[np.uint64(s_off + j)]


@intrinsic
def _claim(typingctx, counter):
    """The next task index: atomically counter[0] += 1, returning the value before (an LLVM ``atomicrmw add``).

    Dynamic scheduling for the parallel kernels: ``for _ in prange(workers)``, workers = ``numba.get_num_threads()``
    passed in (calling it inside a kernel makes the kernel uncacheable), starts one worker per thread, and `counter` is
    a zeroed array the caller passes in (Numba does not see the intrinsic write an array made inside the kernel: a
    read of it after the loop was folded to its initial 0)
    and each worker claims tasks until none are left. Numba's own prange splits the tasks into equal static ranges,
    and on a shared machine one virtual CPU often runs at half speed for seconds: with static ranges the fast thread
    then idles while the slow one finishes; claimed tasks keep both busy to the end (benchmarks/perf_notes.md)."""
    _check_counter("_claim", counter)
    return types.int64(counter), _atomic_add_codegen(by_argument=False)


def _check_counter(name: str, counter) -> None:
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and counter.ndim == 1):
        raise errors.TypingError(f"{name}: expected a 1-D int64 array, got {counter}")


def _atomic_add_codegen(by_argument: bool):
    """counter[0] += 1 (or += the second argument) as one LLVM ``atomicrmw add``, returning the value before."""

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        inc = args[1] if by_argument else llvm_ir.Constant(llvm_ir.IntType(64), 1)
        return builder.atomic_rmw("add", data, inc, "monotonic")

    return codegen


_RDTSCP = platform.machine().lower() in ("x86_64", "amd64")  # the instruction that tells _this_cpu where it runs


@intrinsic
def _fetch_add(typingctx, counter, inc):
    """counter[0] += inc atomically, returning the value before (an LLVM ``atomicrmw add``; inc 0: an atomic read of a
    counter that other threads add to, as `_claim` does with 1)."""
    _check_counter("_fetch_add", counter)
    if not isinstance(inc, types.Integer):
        raise errors.TypingError(f"_fetch_add: expected an integer increment, got {inc}")
    return types.int64(counter, types.int64), _atomic_add_codegen(by_argument=True)


@intrinsic
def _this_cpu(typingctx):
    """The CPU the calling thread runs on now, for locality only (never for correctness): on x86-64 the low 12 bits
    of the TSC_AUX register that RDTSCP returns (Linux keeps the CPU number there, as its vDSO getcpu reads it; other
    systems keep something else there, and then the queues are merely arbitrary); elsewhere 0. No call, no system
    call: a symbol such as libc's sched_getcpu would not exist on every system the kernels are built on."""
    sig = types.int64()

    def codegen(context, builder, signature, args):
        i32, i64 = llvm_ir.IntType(32), llvm_ir.IntType(64)
        if not _RDTSCP:
            return llvm_ir.Constant(i64, 0)
        fnty = llvm_ir.FunctionType(llvm_ir.LiteralStructType([i64, i32]), [])
        out = builder.call(cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.rdtscp"), [])
        aux = builder.extract_value(out, 1)  # {TSC, TSC_AUX}
        return builder.zext(builder.and_(aux, llvm_ir.Constant(i32, 0xFFF)), i64)

    return sig, codegen


@njit(cache=True, boundscheck=False, inline="always")
def _queue_sizes(counters, items, granule, per):  # pragma: no cover - compiled
    """Tasks in each queue of a call (image_counters: one queue per 8 counters, or one plain counter): queue u holds
    items u*I/Q .. (u+1)*I/Q - 1 (I = items, Q = queues), `granule` units each, `per` units a task."""
    nq = counters.shape[0] // 8 if counters.shape[0] >= 16 else 1
    sizes = np.empty(nq, np.int64)
    for u in range(nq):
        sizes[u] = -(-(((u + 1) * items // nq - u * items // nq) * granule) // per)
    return sizes


@njit(cache=True, boundscheck=False, inline="always")
def _claim_near(counters, sizes):  # pragma: no cover - compiled
    """(queue u, index i) of the next task, sizes[u] tasks in queue u (_queue_sizes); (-1, 0) when all are taken. One
    plain counter: a plain claim. Queues (counters 8 apart, a line each): from the queue of the CPU this thread runs on
    first (_this_cpu mod the queues), then from the others in turn (a worker that is done steals). Kernels give queue u
    the images (or channels) a worker on that CPU wrote in the layer before, so activations stay in one core's caches
    from layer to layer; the results do not depend on who runs a task."""
    nq = sizes.shape[0]
    if nq == 1:
        i = _claim(counters)
        return (0, i) if i < sizes[0] else (-1, 0)
    home = max(_this_cpu(), 0) % nq
    for j in range(nq):
        u = (home + j) % nq
        i = _claim(counters[u * 8 : u * 8 + 1])
        if i < sizes[u]:
            return u, i
    return -1, 0


IMAGE_QUEUES = True  # kernels that take queues (claim_near) get one per thread where image_counters says


def image_counters(n: int, workers: int, channel_tasks: int = 0) -> np.ndarray:
    """The zeroed counters of a call over n images: one queue per worker (8 int64 apart) when IMAGE_QUEUES and the
    batch has 2+ images a worker, or it is one image with `channel_tasks` (the kernel's tasks within one image: row
    tiles, channel blocks, pointwise_t's pixel chunks; 0 where it cannot split so) 2+ a worker, else the one counter of
    plain dynamic claims. With one image a kernel's queue u is its u-th share of those tasks: the layer after reads
    what it needs from the core that wrote it where the two split alike."""
    many = n >= 2 * workers or (n == 1 and channel_tasks >= 2 * workers)
    queues = workers if IMAGE_QUEUES and workers > 1 and many else 1
    return np.zeros(8 * queues if queues > 1 else 1, np.int64)


def _flat_f32(*arrays) -> None:
    """Typing check of the vector intrinsics: they address memory as flat float32 (C-contiguous 1-D arrays only)."""
    for a in arrays:
        if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == types.float32):
            raise errors.TypingError(f"expected a C-contiguous 1-D float32 array, got {a}")


def _transpose8(builder, rows):
    """The 8 x 8 transpose of eight <8 x float> values: column j = [rows[0][j], ..., rows[7][j]] (unpack, shuffle,
    128-bit permute: 24 shuffles, the AVX idiom). Eight <16 x float> values are two 8 x 8 blocks side by side (lanes
    0-7 and 8-15), transposed at once by the same 24 shuffles: column j = [rows[0..7][j], rows[0..7][8 + j]]."""
    width = rows[0].type.count

    def sh(a, b, idx):  # an 8-lane pattern (0-7 from a, 8-15 from b), on each 8-lane half of wider vectors
        wide = [(v if v < 8 else v + width - 8) + 8 * h for h in range(width // 8) for v in idx]
        return builder.shuffle_vector(a, b, llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(32), width), wide))

    lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    t = [sh(rows[i & ~1], rows[i | 1], lo if i % 2 == 0 else hi) for i in range(8)]  # t[2m], t[2m+1] from rows 2m, 2m+1
    a, b = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    s_ = [sh(t[q], t[q + 2], a if k == 0 else b) for g in (0, 4) for q in (g, g + 1) for k in (0, 1)]
    # s_ = [s0, s1, s2, s3, s4, s5, s6, s7]: s0/s1 from t0, t2; s2/s3 from t1, t3; s4..s7 the same from t4..t7
    low, high = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    return [sh(s_[j % 4], s_[4 + j % 4], low if j < 4 else high) for j in range(8)]


def _tpack_codegen(nrows: int):
    """LLVM IR of _tpack8 / _tpack4: nrows (8 or 4) rows of 8 floats in, an 8 x 8 transpose (_transpose8, the rows
    past nrows zero), 8 columns of nrows floats out."""

    def codegen(context, builder, signature, args):
        d_data = context.make_array(signature.args[0])(context, builder, args[0]).data
        s_data = context.make_array(signature.args[3])(context, builder, args[3]).data
        d0, ds, s0, ls = (_as64(builder, args[i]) for i in (1, 2, 4, 5))
        i64 = llvm_ir.IntType(64)
        v8 = llvm_ir.VectorType(llvm_ir.FloatType(), 8)
        out = llvm_ir.VectorType(llvm_ir.FloatType(), nrows)

        def row(r):  # 8 floats of source row r
            ptr = builder.gep(s_data, [builder.add(s0, builder.mul(ls, llvm_ir.Constant(i64, r)))])
            return builder.load(builder.bitcast(ptr, v8.as_pointer()), align=4)

        rows = [row(r) for r in range(nrows)]
        rows += [llvm_ir.Constant(v8, [0.0] * 8)] * (8 - nrows)
        for j, col in enumerate(_transpose8(builder, rows)):
            if nrows < 8:
                idx = llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(32), nrows), list(range(nrows)))
                col = builder.shuffle_vector(col, llvm_ir.Constant(v8, llvm_ir.Undefined), idx)
            ptr = builder.gep(d_data, [builder.add(d0, builder.mul(ds, llvm_ir.Constant(i64, j)))])
            builder.store(col, builder.bitcast(ptr, out.as_pointer()), align=4)
        return context.get_dummy_value()

    return codegen


def _tpack_intrinsic(nrows: int):
    """_tpack8 / _tpack4: dst[d_off + j*d_step + r] = src[s_off + r*s_step + j] for r < nrows, j < 8: nrows rows of 8
    floats stored as eight columns (an 8 x 8 transpose in registers, LLVM IR); offsets unsigned, nothing checked."""

    @intrinsic
    def tpack(typingctx, dst, d_off, d_step, src, s_off, s_step):
        _flat_f32(dst, src)
        return types.void(dst, d_off, d_step, src, s_off, s_step), _tpack_codegen(nrows)

    return tpack


_tpack8, _tpack4 = _tpack_intrinsic(8), _tpack_intrinsic(4)


# _block: where B is packed whole (ldb == 0) and A packed, each k step of a whole pair of tiles (_micro_tile2_c)
# prefetches the B lines PREFETCH_B k steps on (one a sliver) and the A line PREFETCH_A k steps on: those products
# stream A and B from L3 and memory (K panels of other blocks), where the hardware's prefetchers left the FMAs
# waiting. Emerald Rapids, processes in lockstep, paired medians: one thread 4096^3 1.16x (161 -> 187 GFLOP/s; B alone
# 8 steps on 1.035x); two threads 4096^3 1.07-1.12x, 1024^3 1.05-1.08x, 2048^3 1.02-1.03x; the nets' convolutions
# (CaffeNet, GoogLeNet, ResNet-50, LeNet) within noise. Not where each task packs its own B panels (in L2 by then:
# ResNet-50's 3x3 GEMMs 0.95-1.01x with it). Same bits: a prefetch changes no arithmetic. benchmarks/perf_notes.md,
# twenty-third round.
PREFETCH = True
PREFETCH_B = 16
PREFETCH_A = 32
TILE_TO_C = True  # _block: a whole MR x 2NR pair (AVX-512) adds its results into C from registers (_micro_tile2_c)
# gemm: large products on _gemm_rows_worker (A blocks packed by their worker, tiles over all columns), for C rows of
# ROW_ORDER_N[0] to [1] columns: an A block's K panel then stays in L2 across all of them (SGEMM on 2 threads against
# MC x NC blocks, in-process, min of 9: 1024^3 1.05-1.15x, 1536^3 1.03x, 2048^3 0.91-1.12x over six runs, four of
# them 1.04-1.12x; same bits). Wider C rows
# lose (3072^3 0.64x, 4096^3 0.84x: the block's rows of C, read and written for every K panel, no longer stay in L2).
ROW_ORDER = True
ROW_ORDER_N = (1024, 2048)
SCRATCH_C = True  # _gemm_worker sums C's blocks in a scratch block where C's rows are 4 KB apart (see there)
# gemm: C of one block of rows (m <= MC) whose column count is not a multiple of NR: B read in place, its ragged last
# sliver by the micro-kernel's masked loads (False: all of B packed). Before the masked loads its last n % NR columns
# went into a sliver of their own, computed on the calling thread alone after the rest: LeNet ip1's 64 x 800 x 500
# 0.315 -> 0.265-0.285 ms with the masked loads (the tail was 7.5 us of NumPy copying and 14 us on one thread).
RAGGED_B = True
# gemm: where B would be packed whole before the product (several blocks of rows and K panels) but C has few blocks of
# rows (FUSED_ROW_BLOCKS) or B one K panel, each task packs the K panels of its own columns itself, into its thread's
# part of a workspace, right before its tiles read them (a panel is packed once per block, or once per thread and
# column block when B has one panel); blocks of at most FUSED_COLS columns, each panel's packing counted as
# FUSED_PACK tile units in `blocking` (measured: a KC x NR panel of CaffeNet conv2's B, 1.1 us, against ~1.3-1.5 us
# of FMAs for a 12 x 16 tile over KC). B packed whole first by both threads was read by each task from the other
# core's cache half the time: ResNet-50's 3x3 on 14 x 14 (256 x 2304 x 196) 1.30 -> 1.18 ms, on 7 x 7 (512 x 4608 x
# 49) 1.44 -> 1.36 ms, in-process A/B on 2 threads of the Zen 4 (benchmarks/perf_notes.md). The same blocks with one
# K panel: CaffeNet conv1's im2col shape, 96 x 363 x 3025, had taken blocks of 48 x 512, so both row blocks packed
# the same columns; now 96 x 128: 0.816 -> 0.749 ms (medians, one process; NumPy 0.723).
FUSED_B = True
FUSED_ROW_BLOCKS = 3
FUSED_COLS = 128
FUSED_PACK = 0.75
# ... and row blocks of up to this many rows (else 2 MC; an A block's K panel 432 KB): ResNet-50's 3x3 on 7 x 7 as a
# GEMM, 512 x 4608 x 49, 192 x 32 -> 288 x 32 blocks, 1.113-1.168 -> 0.996 ms (medians, one process; NumPy 1.07-1.10;
# 264 x 64 0.98-1.02); 1024 x 256 x 196 (ResNet-50's 1x1 on 14 x 14), 180 x 112 -> 264 x 112 within noise
FUSED_MAX_ROWS = 3 * MC
# gemm packs B (FUSED_B: each task its own panels) on rows of at least this many floats (4 KB: every k step of a
# sliver on another page), whatever M (Emerald Rapids, 2 threads, in-process A/B: CaffeNet fc6's 64 x 9216 x 4096 101
# -> 180 GFLOP/s, 64 x 4096 x 4096 127 -> 211, the data gradient 10 x 4096 x 9216 57 -> 89; 10 x 4096 x 4096
# 0.86-1.04x), and so with one K panel too (rows 16 or 10 KB apart put every k step's line in the same few L1 sets,
# a ragged row's slivers straddle two lines; medians, in-process A/B: 96 x 363 x 4096 1.59 -> 0.94 ms, 128 x 256 x
# 2560 0.85 -> 0.75, CaffeNet conv1's im2col shape 96 x 363 x 3025 1.08-1.11 -> 0.98-1.01; 96 x 363 x 3024 and 128
# x 128 x 2048 within noise, 0.93-0.94 and 0.32 ms either way)
PAGE_B = 1024
# gemm: B read in place with rows a multiple of 64 bytes long but its data not on a 64-byte line (NumPy's large arrays
# start 16 bytes into a page): its first (64 - offset) / 4 columns are computed on their own and the rest from there,
# so that no vector load of B straddles two lines. CaffeNet fc6 at 64 rows (64 x 9216 x 4096, B's rows 16 KB apart;
# packed now, PAGE_B) on the Zen 4: 41.5 ms with B 16 bytes off a line, 23.2 ms on one (NumPy's BLAS: 31 ms). Same
# bits: each output's FMA chain is the same whichever tile computes it.
ALIGN_B = True
PACK_GROUP = 4  # _pack_cols_range: whole slivers of a column source packed 4 at a time over the K rows ...
PACK_WIDE = 16  # ... where there are more than this many (else all together, row by row)
TPACK = True  # whole slivers of a row source packed by 8 x 8 transposes in registers (False: element by element)
# gemm: with A read in place (row-major) and 1 to TAIL_DOTS columns past whole slivers of NR, those last columns are
# not a narrow or masked sliver of the tiles (one FMA per A element and k step for one or two valid lanes: a narrow
# sliver costs half a whole one on Zen 4, a masked one all of it) but dot products along k (_tail_dots), in the tasks
# of the last block of columns, after each K panel's tiles (the panel's A rows then in L2), for products of at least
# TAIL_MIN_MACS (below, preparing the tail costs more than it saves). In-process A/B, 2 threads, Zen 4 EPYC: 512 x
# 4608 x 49 (ResNet-50's 3x3 on 7 x 7 as a GEMM) 1.13-1.16x, 512 x 4608 x 50 1.08x, 100 x 300 x 17 1.37x; three
# columns past 1.01x, left to the tiles. The tail columns sum in another order than a tile's (within 1e-6 of
# |A| |B|); the other columns keep their bits. The pass costs ~0.3 s more of the GEMM task's first compile.
TAIL_DOTS = 2
TAIL_MIN_MACS = 1 << 18


@njit(cache=True, boundscheck=False)
def _pack_rows_sliver(src, r0, nrows, dst, width, s, k_all):
    """Sliver s of a row source: dst[(s*K + k)*width + i] = src[r0 + s*width + i, k], zero past row nrows.

    src: (rows, K) C-contiguous; used for op(A) without transpose (width MR) and op(B) = b.T (width NR). A whole
    sliver of a width that is a multiple of 4 goes 8 values of k at a time through 8 x 8 transposes in registers
    (_tpack8, _tpack4: 1024^2 A, one thread, 0.55 -> 0.2 ms); the rest element by element (the same values).
    """
    base = s * k_all * width
    k8 = k_all - k_all % 8 if TPACK and width % 4 == 0 and (s + 1) * width <= nrows else 0
    if k8 > 0:
        flat = src.reshape(-1)
        ld = np.uint64(src.shape[1])
        w = np.uint64(width)
        for i0 in range(0, width, 8):
            so = np.uint64((r0 + s * width + i0) * src.shape[1])
            do = np.uint64(base + i0)
            if i0 + 8 <= width:
                for k in range(0, k8, 8):
                    _tpack8(dst, do + np.uint64(k) * w, w, flat, so + np.uint64(k), ld)
            else:
                for k in range(0, k8, 8):
                    _tpack4(dst, do + np.uint64(k) * w, w, flat, so + np.uint64(k), ld)
    for i in range(width):
        row = s * width + i
        if row < nrows:
            for k in range(k8, k_all):
                dst[base + k * width + i] = src[r0 + row, k]
        else:
            for k in range(k8, k_all):
                dst[base + k * width + i] = 0.0


@njit(cache=True, boundscheck=False)
def _pack_cols_range(src, c0, ncols, dst, width, k_begin, k_end, k_all):
    """Rows k_begin..k_end of a column source: dst[(s*K + k)*width + j] = src[k, c0 + s*width + j].

    src: (K, cols) C-contiguous; used for op(B) without transpose (width NR) and op(A) = a.T (width MR).
    More than PACK_WIDE whole slivers go in groups of PACK_GROUP, each group over every row k of the range in turn: a
    row's few lines in, the group's slivers out (each k row of every sliver at once wrote one line into each of N/width
    slivers K * width floats apart, the same L1 sets: B of 2048^2 / 4096^2 on one thread 2.07 / 27.8 -> 1.37 / 10.2
    ms, the same values); fewer (a task's panel, FUSED_B) row by row, each row's page visited once. The rest row by
    row, zero padding past column ncols.
    """
    nt = (ncols + width - 1) // width
    full = ncols // width if width % 8 == 0 else 0  # whole slivers copied as <8 x float> vectors (_copy8)
    flat = src.reshape(-1)
    ld = src.shape[1]
    group = max(1, full if full <= PACK_WIDE else PACK_GROUP)
    for s0 in range(0, full, group):
        for k in range(k_begin, k_end):
            for s in range(s0, min(s0 + group, full)):
                o = np.uint64((s * k_all + k) * width)
                so = np.uint64(k * ld + c0 + s * width)
                for v in range(width // 8):
                    _copy8(dst, o + np.uint64(8 * v), flat, so + np.uint64(8 * v))
    for k in range(k_begin, k_end):
        for s in range(full, nt):  # (unsigned offsets: no wraparound code in the element loops)
            o = np.uint64((s * k_all + k) * width)
            so = np.uint64(k * ld + c0 + s * width)
            w = min(width, ncols - s * width)
            for j in range(w):
                dst[o + np.uint64(j)] = flat[so + np.uint64(j)]
            for j in range(w, width):
                dst[o + np.uint64(j)] = 0.0


def _pack_panel_worker(t, src, rows_major, n, dst, width, workers):  # pragma: no cover - compiled
    """Worker t's share (kernels.tasks) of packing n rows of src (rows_major: src is (rows, K)) or n columns (src is
    (K, cols)) into width-wide slivers (flat (ceil(n/width), K, width)): slivers (row source) or chunks of 64 k
    (column source), split evenly between `workers` workers."""
    if rows_major:
        k_all = src.shape[1]
        ns = (n + width - 1) // width
        for s in range(t * ns // workers, (t + 1) * ns // workers):
            _pack_rows_sliver(src, 0, n, dst, width, s, k_all)
    else:
        k_all = src.shape[0]
        chunk = 64
        nc = (k_all + chunk - 1) // chunk
        for c in range(t * nc // workers, (t + 1) * nc // workers):
            _pack_cols_range(src, 0, n, dst, width, c * chunk, min(k_all, (c + 1) * chunk), k_all)


_PACK_PANEL = Task(
    _pack_panel_worker,
    (types.float32[:, ::1], types.boolean, types.int64, types.float32[::1], types.int64, types.int64),
    boundscheck=False,
)


def _pack_panel_parallel(src, rows_major: bool, n: int, dst, width: int) -> None:
    """_pack_panel_worker over every thread: src C-contiguous float32 (2-D), dst float32 (1-D)."""
    workers = numba.get_num_threads()
    _PACK_PANEL.parallel(_PACK_PANEL.address, workers, src, bool(rows_major), n, dst, width, workers)


@njit(cache=True, fastmath=True, boundscheck=False)
def _block(ap, lda, bp, ldb, c, c_off, ldc, m, n, k_all, pc, kc, i0, i1, j0, j1, load_c, bias, bias_off, edges):
    """C[i0:i1, j0:j1] (+)= op(A)[i0:i1, pc:pc+kc] @ op(B)[pc:pc+kc, j0:j1]; i0, j0 multiples of MR, NR.

    The macro kernel: every MR x NR tile of the block in turn, with the micro-kernel written inline (no call per
    tile: a call cost ~100 cycles, a third of a tile at LeNet's K = 25..50). C is flat (m x n valid, row stride ldc,
    from c_off). load_c: C += A@B; otherwise C = A@B + bias[bias_off + row].
    Operands (K = k_all): lda == 0: A packed, ap[(ir*K + k)*MR + i] = op(A)[ir*MR + i, k]; lda > 0: A row-major,
    ap[r*lda + k] (rows past m re-read row m-1, never stored). ldb == 0: B packed, bp[(jr*K + k)*NR + j] =
    op(B)[k, jr*NR + j]; ldb == -1: this panel of the block's columns packed, bp[((jr - j0/NR)*kc + k - pc)*NR + j];
    ldb > 0: B row-major, bp[k*ldb + col] (a ragged last sliver is read with masked loads).
    Offsets are unsigned, so Numba's negative-index wraparound folds away and LLVM emits plain vector loads, and
    no array views are made (each costs atomic reference counting).
    edges (a compile-time constant: ``numba.literally``): True, the micro-kernel's short and narrow tiles at C's
    edges (``_micro_cases``; B may then be read in place with a ragged last sliver); False, whole MR x NR tiles only,
    for callers whose A and B are packed and zero-padded (fewer loops to compile in their kernels).
    """
    literally(edges)
    acc = carray(_stack_empty(ACC, np.float32), (ACC,))
    ao = carray(_stack_empty(MR, np.uint64), (MR,))
    aks = np.uint64(MR if lda == 0 else 1)
    bks = np.uint64(NR if ldb <= 0 else ldb)
    b2 = np.uint64(k_all * NR if ldb == 0 else (kc * NR if ldb < 0 else NR))  # from one column sliver's B to the next
    ars = np.uint64(1 if lda == 0 else lda)  # from one row of A to the next (_micro_tile_reg)
    kcu = np.uint64(kc)
    ahead = np.uint64(PREFETCH and ldb == 0)
    jr = j0 // NR
    j_end = (j1 + NR - 1) // NR
    while jr < j_end:
        two = PAIR and jr + 1 < j_end  # two slivers per tile (AVX-512): half the broadcasts of A per FMA
        cols = n - (jr + 1 if two else jr) * NR  # valid columns of the tile's last sliver (more than NR: all)
        if ldb == 0:
            bo = np.uint64((jr * k_all + pc) * NR)
        elif ldb < 0:  # one panel of the block's slivers, packed
            bo = np.uint64((jr - j0 // NR) * kc * NR)
        else:
            bo = np.uint64(pc * ldb + jr * NR)
        for ir in range(i0 // MR, (i1 + MR - 1) // MR):
            mr = min(MR, m - ir * MR)
            shape = tile_shape_code(mr, cols) if edges else np.uint64(0)
            a0 = np.uint64((ir * k_all + pc) * MR if lda == 0 else ir * MR * lda + pc)  # row 0 of the tile's A
            # a whole pair of tiles (AVX-512): its results straight into C (a lone sliver, at most one a row block,
            # keeps the stack tile: one variant less to compile in every kernel that inlines this one; AVX2's single
            # 6 x 16 tiles too: 0.94-0.98x on some layer shapes, Zen 4 emulating AVX2)
            if TILE_TO_C and two and mr == MR and cols >= NR:
                co = np.uint64(c_off + ir * MR * ldc + jr * NR)
                _micro_tile2_c(ap, a0, aks, bp, bo, bks, kcu, c, co, np.uint64(ldc), ars, b2, load_c, bias,
                               np.uint64(bias_off + ir * MR), ahead)  # fmt: skip
                continue
            # packed A (row i at base + i), or row-major rows (base + i*lda) that fill a tile with a variant of their
            # height (short ones: pairs only, _micro_cases)
            if lda == 0 or mr == MR or (edges and two and (mr == ROWS[0] or mr == ROWS[1])):
                if two:
                    _micro_tile2_reg(ap, a0, aks, bp, bo, bks, kcu, acc, ars, b2, shape, edges)
                else:
                    _micro_tile_reg(ap, a0, aks, bp, bo, bks, kcu, acc, ars, shape, edges)
            else:  # bottom edge of a row-major A: rows past m re-read row m-1 (never stored)
                for i in range(MR):
                    ao[i] = np.uint64((ir * MR + min(i, mr - 1)) * lda + pc)
                if two:
                    _micro_tile2(ap, ao, aks, bp, bo, bks, kcu, acc, b2, shape, edges)
                else:
                    _micro_tile(ap, ao, aks, bp, bo, bks, kcu, acc, shape, edges)
            for h in range(2 if two else 1):
                jh = jr + h
                co = np.uint64(c_off + ir * MR * ldc + jh * NR)
                _tile_out(c, co, ldc, acc, h * MN, mr, min(NR, n - jh * NR), load_c, bias, bias_off + ir * MR)
        jr += 2 if two else 1


@njit(cache=True, fastmath=True, boundscheck=False, inline="always")
def _tile_out(c, co, ldc, acc, t0, mr, nr, load_c, bias, b_row):
    """The first mr x nr of the MR x NR tile at acc[t0:] into C at c[co:] (row stride ldc): C += tile (load_c) or
    C = tile + bias[b_row + row]."""
    if nr == NR:  # a full row of the tile: two <8 x float> stores per row (NR == 16)
        for i in range(mr):
            r = co + np.uint64(i * ldc)
            t = np.uint64(t0 + i * NR)
            if load_c:
                _store8_add(c, r, acc, t, np.float32(0.0))
                _store8_add(c, r + np.uint64(8), acc, t + np.uint64(8), np.float32(0.0))
            else:
                bi = bias[b_row + i]
                _store8_bias(c, r, acc, t, bi)
                _store8_bias(c, r + np.uint64(8), acc, t + np.uint64(8), bi)
    else:
        for i in range(mr):
            r = co + np.uint64(i * ldc)
            if load_c:
                for j in range(nr):
                    c[r + np.uint64(j)] += acc[t0 + i * NR + j]
            else:
                bi = bias[b_row + i]
                for j in range(nr):
                    c[r + np.uint64(j)] = acc[t0 + i * NR + j] + bi


@njit(cache=True, boundscheck=False)
def _gemm_tiles_serial(ap, bp, c, c_off, ldc, m, n, k_all, accumulate, bias, bias_off, lda=0, edges=False):
    """Whole C (m x n, flat, row stride ldc) from packed bp and packed ap (lda 0) or row-major ap (lda > 0), on the
    calling thread (see _block; edges a literal: True computes a short last row of tiles at its height instead of
    MR rows, more variants to compile)."""
    for pc in range(0, k_all, KC):
        kc = min(KC, k_all - pc)
        for i0 in range(0, m, MC):
            _block(
                ap,
                lda,
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
                edges,
            )


def _gemm_worker(
    t, ap, lda, bp, ldb, c, c_off, ldc, m, n, k_all, accumulate, bias, bias_off, counter, mc, nc, panels, tail
):  # pragma: no cover - compiled
    """Worker t (kernels.tasks: one per thread) of the whole C from ap/bp (packed, or row-major: see _block): claims
    mc x nc blocks of C (``_claim``) until none is left; each block walks all K panels. panels not empty: B is
    row-major (bp, ldb) and each block packs each K panel of its own columns first, into worker t's part of panels
    (``FUSED_B``). tail: see _gemm_task."""
    bm = (m + mc - 1) // mc
    bn = (n + nc - 1) // nc
    # C's rows a multiple of 4 KB apart (1024^2, 2048^2): a tile's 12 rows fall in one L1 set (8 ways) and its
    # epilogue misses on every row; such blocks are summed in a scratch block with a padded stride, then copied.
    lds = nc + 16 if SCRATCH_C and not accumulate and ldc % 1024 == 0 and k_all > KC else 0
    scratch = np.empty(mc * lds, np.float32) if lds else c  # (c: unread, no allocation)
    per = KC * ((nc + NR - 1) // NR) * NR  # floats of one panel of a block's slivers (as gemm allots them)
    own = panels[t * per : (t + 1) * per] if panels.size else panels
    held = -1  # the column block whose only K panel is in own (k_all <= KC: packed once per worker and block)
    task = _claim(counter)
    while task < bm * bn:
        _gemm_task(ap, lda, bp, ldb, c, c_off, ldc, m, n, k_all, accumulate, bias, bias_off, task, bm, mc, nc,
                   scratch, lds, own, held, tail)  # fmt: skip
        held = task // bm if k_all <= KC else -1
        task = _claim(counter)


_F1, _i = types.float32[::1], types.int64
_GEMM = Task(
    _gemm_worker,
    (_F1, _i, _F1, _i, _F1, _i, _i, _i, _i, _i, types.boolean, _F1, _i, types.int64[::1], _i, _i, _F1, _F1),
    opt=1,
    boundscheck=False,
)


def _gemm_rows_worker(t, a, bp, c, m, n, k_all, accumulate, bias, own, size, workers):  # pragma: no cover - compiled
    """Worker t of C = A @ B for large squares (``ROW_ORDER``), B packed whole (bp), A row-major (M, K): the workers
    split A's tile rows evenly; each packs MC rows of its share at a time into its own `size` floats of `own` (an A
    block that stays in its L2) and runs the tiles over every column (``_gemm_tiles_serial``: per K panel the block's
    A panel in L2, B's panel streamed), instead of MC x NC blocks that read A's rows from L3 again for each block of
    columns."""
    mine = own[t * size : (t + 1) * size]
    tiles = (m + MR - 1) // MR
    r0 = (t * tiles // workers) * MR
    r1 = min(m, ((t + 1) * tiles // workers) * MR)
    for i0 in range(r0, r1, MC):
        rows = min(MC, r1 - i0)
        for s in range((rows + MR - 1) // MR):
            _pack_rows_sliver(a, i0, rows, mine, MR, s, k_all)
        _gemm_tiles_serial(mine, bp, c, i0 * n, n, rows, n, k_all, accumulate, bias, i0, 0, True)


_GEMM_ROWS = Task(
    _gemm_rows_worker,
    (types.float32[:, ::1], _F1, _F1, _i, _i, _i, types.boolean, _F1, _F1, _i, _i),
    opt=1,
    boundscheck=False,
)


def _gemm_tiles_parallel(
    ap, lda, bp, ldb, c, c_off, ldc, m, n, k_all, accumulate, bias, bias_off, workers, counter, mc, nc, panels,
    tail=None,
):  # fmt: skip
    """_gemm_worker on `workers` threads (the thread count), blocks of mc x nc of C; panels, tail: see there."""
    _GEMM.parallel(
        _GEMM.address, workers, ap, lda, bp, ldb, c, c_off, ldc, m, n, k_all, bool(accumulate), bias, bias_off,
        counter, mc, nc, panels, _NO_TAIL if tail is None else tail,
    )  # fmt: skip


_NO_TAIL = np.zeros(0, np.float32)


def _makespan(tiles: int, per: int, slivers: int, per_n: int, workers: int, pack: float = 0.0) -> float:
    """Tile-sliver units of work on the busiest of `workers` threads that claim blocks of per x per_n (row tiles x
    column slivers) in _gemm_worker's order (row blocks first) as each finishes its last, plus one unit a block and
    `pack` units per sliver a block packs (FUSED_B: each block packs its own B panels)."""
    bm, bn = -(-tiles // per), -(-slivers // per_n)
    done = [0.0] * workers
    for t in range(bm * bn):
        i, j = t % bm, t // bm
        rows = min(per, tiles - i * per)
        cols = min(per_n, slivers - j * per_n)
        w = done.index(min(done))
        done[w] += rows * cols + 1 + pack * cols
    return max(done)


def few_blocks(m: int, n: int, workers: int, per_thread: int = 4) -> bool:
    """Does C (m x n) have fewer than `per_thread` MC x NC blocks a thread on `workers` threads (more than one), so
    that `blocking` looks for blocks of other sizes? (`blocking` itself asks below 8 a thread: 11 blocks of ResNet-50's
    1x1 GEMM on 14 x 14, 1024 x 196, left one thread a block behind, 0.547 -> 0.496 ms split otherwise; kernels.conv
    asks below 4, as its figures were measured.)"""
    return workers > 1 and m > 0 and n > 0 and -(-m // MC) * -(-n // NC) < per_thread * workers


@functools.lru_cache(maxsize=256)  # called on every gemm(): LeNet's inner products ask the same few shapes
def blocking(m: int, n: int, workers: int, cols: int = 2 * NC, pack: float = 0.0) -> tuple[int, int]:
    """(rows, columns) of the blocks of C that parallel tasks take: MC x NC, unless C has fewer than 8 such blocks a
    thread, where whole blocks claimed by the threads in turn would leave one idle at the end: 256 x 256 on 2 threads
    as blocks of 96, 96, 64 rows (16 tile rows of work on the busier thread against 11 each for two blocks of 132);
    LeNet ip1's data gradient, 64 x 800, as column blocks of 256, 256, 256, 32 (512 columns on one thread, 288 on
    the other; two blocks of 400 instead). Then the blocks of MR-row tiles (up to 2 MC rows; FUSED_MAX_ROWS where
    `pack` is given) and of NR-column slivers
    (NC, or the columns split evenly in 1-4 rounds of `workers`) whose tasks end soonest (`_makespan`); on a tie the
    ones that read A and B the fewest times, then the larger. At most `cols` columns a block (2 NC: its B slivers
    stay in L2); where each task packs its own B panels (FUSED_B) gemm asks blocks of at most FUSED_COLS columns, and
    `pack` units of work per sliver a block packs. C's values do not depend on it: each tile sums the same K panels
    in the same order."""
    if not few_blocks(m, n, workers, 8):
        return MC, NC
    tiles, slivers = -(-m // MR), -(-n // NR)
    widths = {min(NC // NR, cols // NR, slivers)} | {-(-slivers // (workers * r)) for r in range(1, 5)}
    best, best_key = (MC, NC), None
    for per_n in sorted(widths):
        if per_n > cols // NR:
            continue
        for per in range(1, min(tiles, (FUSED_MAX_ROWS if pack else 2 * MC) // MR) + 1):
            bm, bn = -(-tiles // per), -(-slivers // per_n)
            # then the least reading of A and B: each column block reads A's rows again, each row block B's columns
            key = (_makespan(tiles, per, slivers, per_n, workers, pack), bn * m + bm * n, -per * per_n)
            if best_key is None or key < best_key:
                best, best_key = (per * MR, per_n * NR), key
    return best


@njit(cache=True, fastmath=True, boundscheck=False)
def _tail_dots(a, lda, tail, k_all, c, c_off, ldc, n, i0, i1, pc, kc, load_c, bias, bias_off):
    """C[i0:i1, n:n+r] (+)= A[i0:i1, pc:pc+kc] @ B[pc:pc+kc, n:n+r], A row-major (a[i*lda + k]), B's r = tail.size /
    k_all columns stored as rows (tail[j*k_all + k]): a dot product along k per output (vectorised over k by
    fastmath's reassociation), four rows of A at a time (four sums in flight); C = sum + bias[bias_off + i] on the
    first panel unless load_c."""
    r = tail.size // k_all
    kcu = np.uint64(kc)
    for j in range(r):
        bo = np.uint64(j * k_all + pc)
        for i in range(i0, i1, 4):
            a0 = np.uint64(i * lda + pc)  # (fewer than 4 rows left: the last one read again, its sums not stored)
            a1 = np.uint64(min(i + 1, i1 - 1) * lda + pc)
            a2 = np.uint64(min(i + 2, i1 - 1) * lda + pc)
            a3 = np.uint64(min(i + 3, i1 - 1) * lda + pc)
            s0 = s1 = s2 = s3 = np.float32(0.0)
            for k in range(kcu):
                u = tail[bo + k]
                s0 += a[a0 + k] * u
                s1 += a[a1 + k] * u
                s2 += a[a2 + k] * u
                s3 += a[a3 + k] * u
            for h in range(min(4, i1 - i)):
                o = np.uint64(c_off + (i + h) * ldc + n + j)
                v = s0 if h == 0 else (s1 if h == 1 else (s2 if h == 2 else s3))
                c[o] = (c[o] if load_c else bias[bias_off + i + h]) + v


@njit(cache=True, boundscheck=False)
def _gemm_task(ap, lda, bp, ldb, c, c_off, ldc, m, n, k_all, accumulate, bias, bias_off, t, bm, mc, nc, scratch, lds,
               own, held, tail):  # fmt: skip
    """Task t of _gemm_worker: the mc x nc block (t % bm, t // bm) of C over all K panels; lds > 0: summed in
    scratch (rows lds apart) and then copied into C (not with accumulate: the same sums, the same bits); own not
    empty: B row-major, each panel of the block's columns packed into own first (the same sums as packed B). tail not
    empty (A row-major, lda > 0): C's columns n to n + tail.size / k_all too, B's columns stored as rows (tail[j*K +
    k]), as dot products per K panel in the tasks of the last block of columns (``_tail_dots``, TAIL_DOTS)."""
    i0 = (t % bm) * mc
    j0 = (t // bm) * nc
    i1 = min(i0 + mc, m)
    j1 = min(j0 + nc, n)
    to, to_off, to_ld = (scratch, -(i0 * lds + j0), lds) if lds > 0 else (c, c_off, ldc)
    src, ld = (own, -1) if own.size else (bp, ldb)
    for pc in range(0, k_all, KC):
        kc = min(KC, k_all - pc)
        if own.size and held != t // bm:  # (held: this column block's only panel is in own already)
            _pack_cols_range(bp[pc * ldb : (pc + kc) * ldb].reshape((kc, ldb)), j0, j1 - j0, own, NR, 0, kc, kc)
        _block(ap, lda, src, ld, to, to_off, to_ld, m, n, k_all, pc, kc, i0, i1, j0, j1, accumulate or pc > 0, bias,
               bias_off, True)  # fmt: skip
        if tail.size and j1 == n:
            _tail_dots(ap, lda, tail, k_all, c, c_off, ldc, n, i0, i1, pc, kc, accumulate or pc > 0, bias, bias_off)
    if lds > 0:
        for r in range(i1 - i0):
            _copy_run(c, c_off + (i0 + r) * ldc + j0, scratch, r * lds, j1 - j0)


ALIGN_FLOATS = 16  # Workspace views start on 64-byte lines (one zmm): see Workspace.get


class Workspace(threading.local):
    """Per-Python-thread float32 scratch memory, grown on demand and reused across calls: fresh large arrays
    come from mmap, and first-touch page faults on every call cost more than packing small operands."""

    buf: np.ndarray = np.empty(0, np.float32)
    head = 0  # floats from buf's start to its first 64-byte line

    def get(self, *sizes: int) -> list[np.ndarray]:
        """Disjoint uninitialised float32 views of the given sizes (valid until the next get on this thread), each
        starting on a 64-byte line. NumPy's large arrays start 16 bytes past one (mmap behind a header), so every
        16-float vector of a packed sliver straddled two lines: on an AVX-512 Xeon two split loads a k step of the
        micro-kernel, 1.05-1.10x slower SGEMM (1024^3, ResNet-50's 3x3 and 1x1 shapes, conv2's; in-process A/B)."""
        a = ALIGN_FLOATS
        total = a
        for size in sizes:
            total += -(-size // a) * a
        if self.buf.size < total:
            self.buf = np.empty(total, np.float32)
            self.head = -(self.buf.__array_interface__["data"][0] // 4) % a
        views, o = [], self.head
        for size in sizes:
            views.append(self.buf[o : o + size])
            o += -(-size // a) * a
        return views


_WORKSPACE = Workspace()
_ZEROS = [np.zeros(0, np.float32)]  # zero_bias: grown, never written


def zero_bias(size: int) -> np.ndarray:
    """`size` float32 zeros that nothing writes (a GEMM's bias when it has none): one array, grown on demand, shared by
    every call. Not workspace memory: a replayed pass (net.replay, net.train_replay) reads the array it was recorded
    with, and a workspace's zeros were written by each call's Python, which a replay does not run."""
    z = _ZEROS[0]
    if z.size < size:
        z = np.zeros(max(size, 2 * z.size), np.float32)  # (writeable: the tasks are compiled for writeable arrays)
        _ZEROS[0] = z
    return z[:size]


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
    # (each A row then streams once); op(B) = b (row-major) when there is one block of rows or one K panel (few rows
    # of B): there, packing costs as much as the GEMM (LeNet's ip1). Its last columns need not fill a sliver: the
    # micro-kernel reads a ragged last sliver with masked loads. Large square products keep both packed (read in
    # place, B's rows would thrash L1 and the TLB). So do products on B's rows of PAGE_B floats or more (each k step
    # on another 4 KB page): there each task packs its own panels (FUSED_B). Figures: benchmarks/perf_notes.md.
    pack_a = trans_a or n > 3 * NC
    pack_b = trans_b or (m > MC and k > KC) or (n % NR != 0 and not (RAGGED_B and m <= MC)) or n >= PAGE_B
    workers = numba.get_num_threads()
    low, high = ROW_ORDER_N
    if ROW_ORDER and not trans_a and pack_b and k > KC and m >= 2 * MC * workers and low <= n <= high:
        own_size = packed_a_size(MC, k)
        bp, own = _WORKSPACE.get(packed_b_size(k, n), workers * own_size)
        zeros = zero_bias(-(-m // MR) * MR)
        _pack_panel_parallel(b, trans_b, n, bp, NR)
        _GEMM_ROWS.parallel(_GEMM_ROWS.address, workers, a, bp, out.reshape(-1), m, n, k, bool(accumulate), zeros,
                            own, own_size, workers)  # fmt: skip
        return out
    r = n % NR  # (TAIL_DOTS: its last r columns as dot products)
    tail = None
    if not pack_a and n > NR and 0 < r <= TAIL_DOTS and m * n * k >= TAIL_MIN_MACS:
        tail = np.ascontiguousarray(b[n - r :, :] if trans_b else b[:, n - r :].T).reshape(-1)
        pack_b = trans_b or (m > MC and k > KC) or n >= PAGE_B
    cols = n - r if tail is not None else n  # the columns the tiles compute
    mc, nc = blocking(m, cols, workers)
    fused = FUSED_B and pack_b and not trans_b and (k <= KC or -(-m // mc) <= FUSED_ROW_BLOCKS)
    if fused:  # (each block packs its own columns: blocks of fewer rows pack B's columns more times)
        mc, nc = blocking(m, cols, workers, FUSED_COLS, FUSED_PACK)
    per = KC * -(-nc // NR) * NR
    ap, bp, panels = _WORKSPACE.get(
        packed_a_size(m, k) if pack_a else 0,
        packed_b_size(k, cols) if pack_b and not fused else 0,
        workers * per if fused else 0,
    )
    zeros = zero_bias(-(-m // MR) * MR)
    if pack_a:
        _pack_panel_parallel(a, not trans_a, m, ap, MR)
    if pack_b and not fused:
        _pack_panel_parallel(b, trans_b, cols, bp, NR)
    a_arg, lda = (ap, 0) if pack_a else (a.reshape(-1), k)
    b_arg, ldb = (bp, 0) if pack_b and not fused else (b.reshape(-1), n)
    c = out.reshape(-1)
    head = _aligning_columns(b) if ldb > 0 and not fused and ALIGN_B else 0
    if head:  # the first columns on their own, so that the slivers of the others start on 64-byte lines
        _gemm_tiles_parallel(a_arg, lda, b_arg, ldb, c, 0, n, m, head, k, accumulate, zeros, 0, workers,
                             np.zeros(1, np.int64), mc, NR, panels)  # fmt: skip
        b_arg = b_arg[head:]
        mc, nc = blocking(m, cols - head, workers)
    _gemm_tiles_parallel(
        a_arg, lda, b_arg, ldb, c, head, n, m, cols - head, k, accumulate, zeros, 0, workers,
        np.zeros(1, np.int64), mc, nc, panels, tail,
    )  # fmt: skip
    return out


def _aligning_columns(b: np.ndarray) -> int:
    """How many first columns of a row-major b (read in place) to take apart so that the rest start on a 64-byte
    line in every row, or 0: rows a multiple of 64 bytes long and b's data 4 but not 64 bytes aligned (NumPy's large
    arrays come from mmap behind a 16-byte header), and more than one sliver of columns."""
    n = b.shape[1]
    if (n * 4) % 64 or n <= NR:  # (before the address: b.ctypes costs a microsecond, on every small product)
        return 0
    shift = b.ctypes.data % 64
    return 0 if shift % 4 else (64 - shift) // 4 % 16


# Public names of the LLVM IR helpers and the task claim, for kernels built on this micro-kernel's machinery
# (kernels.pointwise, depthwise, winograd); the same objects as the underscored names.
as64, splat, accumulators, flat_f32, claim, copy8 = _as64, _splat, _accumulators, _flat_f32, _claim, _copy8
fetch_add = _fetch_add
copy_run = _copy_run
transpose8 = _transpose8
tpack8, tpack4 = _tpack8, _tpack4  # 8 x 8 (4 x 8) blocks transposed in registers (kernels.fc's epilogue)
claim_near, queue_sizes = _claim_near, _queue_sizes
block, stack_empty = _block, _stack_empty  # the micro-kernel and its stack buffer, for kernels.winograd
