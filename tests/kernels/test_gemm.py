"""kernels.gemm against a float64 reference (and NumPy's matmul as a second opinion)."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import mmap

import numba
import numpy as np
import pytest

from kernels.gemm import KC, MR, NR, gemm, gemm_ref

RTOL = 1e-5  # float32 accumulation over K <= ~600: max |err| <= RTOL * sqrt(K) * max|ref| holds with margin


def _assert_close(got: np.ndarray, want: np.ndarray, k: int) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    tol = RTOL * np.sqrt(k) * max(float(np.abs(want).max()), 1.0)
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= tol, f"max abs err {err:.3e} > tol {tol:.3e}"


SHAPES = [
    (1, 1, 1),
    (MR, NR, 4),
    (MR + 1, NR + 1, 3),
    (7, 33, KC + 5),
    (67, 45, 83),
    (130, 300, 2 * KC + 1),
    (3, 200, 17),
    (257, 2, 9),
    (5, 4 * NR, 2 * KC + 7),  # B read in place (one row block), two K panels; A in place with a partial row sliver
    (100, 2 * NR, 50),  # B in place (one K panel) under several row blocks
    (130, 8 * NR, 400),  # B packed (several row blocks and K panels), A in place (one column block)
]


@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_matches_reference(m: int, n: int, k: int, trans_a: bool, trans_b: bool) -> None:
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    got = gemm(a.T.copy() if trans_a else a, b.T.copy() if trans_b else b, trans_a=trans_a, trans_b=trans_b)
    want = a.astype(np.float64) @ b.astype(np.float64)
    _assert_close(got, want, k)


def test_reference_is_matmul() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 7), dtype=np.float32)
    b = rng.standard_normal((7, 3), dtype=np.float32)
    np.testing.assert_allclose(gemm_ref(a, b), a @ b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gemm_ref(a.T, b.T, trans_a=True, trans_b=True), a @ b, rtol=1e-5, atol=1e-5)


def test_out_and_accumulate() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((19, 300), dtype=np.float32)
    b = rng.standard_normal((300, 41), dtype=np.float32)
    out = rng.standard_normal((19, 41), dtype=np.float32)
    start = out.astype(np.float64)
    res = gemm(a, b, out=out, accumulate=True)
    assert res is out
    _assert_close(out, start + a.astype(np.float64) @ b, 300)
    gemm(a, b, out=out)  # overwrite
    _assert_close(out, a.astype(np.float64) @ b, 300)


def test_non_contiguous_and_float64_inputs_are_converted() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 30))  # float64
    b = rng.standard_normal((60, 50)).astype(np.float32)[::2, ::2]  # (30, 25), strided
    _assert_close(gemm(a, b), a @ b.astype(np.float64), 30)


def test_k_zero_and_empty() -> None:
    assert np.all(gemm(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32)) == 0)
    assert gemm(np.zeros((0, 5), np.float32), np.zeros((5, 4), np.float32)).shape == (0, 4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"a": np.zeros((3, 4)), "b": np.zeros((5, 2))}, "inner dimensions"),
        ({"a": np.zeros(3), "b": np.zeros((3, 2))}, "2-D"),
        ({"a": np.zeros((3, 4)), "b": np.zeros((4, 2)), "out": np.zeros((3, 2))}, "out"),
        ({"a": np.zeros((3, 4)), "b": np.zeros((4, 2)), "accumulate": True}, "accumulate"),
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gemm(**kwargs)


@pytest.mark.parametrize("rows_major", [False, True])
@pytest.mark.parametrize(
    "n,k,width",
    [
        (64, 5, 16),
        (37, 70, 16),
        (7, 3, 16),
        (40, 9, 6),
        (13, 4, 6),
        (50, 83, 12),
        (24, 16, 12),
        (20, 19, 8),
        (9, 24, 4),
    ],
)
def test_packing_layout(rows_major: bool, n: int, k: int, width: int) -> None:
    """_pack_panel_parallel (its workers) writes dst[(s*K + k)*width + j] = op(src)[k, s*width + j], zero past
    column n: checked against the layout built in NumPy (a column source's whole 16-wide slivers take the vector-copy
    path, a row source's whole slivers of 4, 8, 12, 16 rows the 8 x 8 transposes for 8 values of k at a time, the rest
    the scalar one)."""
    from kernels.gemm import _pack_panel_parallel

    rng = np.random.default_rng(n * k)
    src = rng.standard_normal((n, k) if rows_major else (k, n), dtype=np.float32)
    cols = src.T if rows_major else src  # (K, n): column j of op(src) is what gets packed
    slivers = -(-n // width)
    want = np.zeros((slivers, k, width), np.float32)
    for s in range(slivers):
        part = cols[:, s * width : (s + 1) * width]
        want[s, :, : part.shape[1]] = part
    got = np.full(slivers * k * width, np.nan, np.float32)
    _pack_panel_parallel(src, rows_major, n, got, width)
    np.testing.assert_array_equal(got.reshape(slivers, k, width), want)


def test_claim_hands_out_every_task_exactly_once() -> None:
    """gemm._claim (atomic fetch-add) under a parallel worker loop: each of 10,000 tasks is claimed by exactly one
    worker, whatever the thread count, and the workers that ran are the ones prange started."""
    from numba import njit, prange

    from kernels.gemm import _claim

    @njit(parallel=True)
    def run(ntasks, workers, owner, counter):
        for w in prange(workers):
            t = _claim(counter)
            while t < ntasks:
                owner[t] += w + 1  # += : a task claimed twice would show as a sum
                t = _claim(counter)
        return counter[0]

    for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
        before = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            owner = np.zeros(10_000, np.int64)
            claimed = run(10_000, threads, owner, np.zeros(1, np.int64))
        finally:
            numba.set_num_threads(before)
        assert claimed == 10_000 + threads  # every worker's last claim finds no task
        assert owner.min() >= 1 and owner.max() <= threads


def test_image_queues_change_no_bit(monkeypatch) -> None:
    """Batches of 2+ images a thread: the 1x1, im2col and depthwise kernels take their tasks from one queue of images
    per thread, the queue of the CPU the thread runs on first, the others' after (gemm.claim_near); one image: the
    1x1 (row blocks) and depthwise kernels one queue of channels per thread. Whoever computes a task, the same bits as
    plain claims and as one thread; every queue is done, whatever CPU the threads are on."""
    numba = pytest.importorskip("numba")
    from kernels import gemm
    from kernels.depthwise import DepthwiseRunner
    from kernels.pointwise import Im2colRunner, PointwiseRunner

    rng = np.random.default_rng(5)
    before = numba.get_num_threads()
    try:
        for n, c, m in ((7, 24, 40), (1, 48, 120)):
            x = rng.standard_normal((n, c, 9, 9), dtype=np.float32)
            cases = [
                (PointwiseRunner, (x.shape, (m, c, 1, 1), (0.0, 6.0)), (m, c, 1, 1)),
                (DepthwiseRunner, (x.shape, (c, 1, 3, 3), (1, 1), (1, 1), (0.0, 6.0)), (c, 1, 3, 3)),
            ]
            if n > 1:
                cases.append((Im2colRunner, (x.shape, (20, c, 3, 3), (2, 2), (1, 1), (0.0, 6.0)), (20, c, 3, 3)))
            for make, args, w_shape in cases:
                w = rng.standard_normal(w_shape, dtype=np.float32)
                b = rng.standard_normal(w_shape[0], dtype=np.float32)
                outs = []
                for threads, queues in ((1, False), (2, False), (2, True)):
                    numba.set_num_threads(threads)
                    monkeypatch.setattr(gemm, "IMAGE_QUEUES", queues)
                    run = make(*args)
                    if make is DepthwiseRunner:
                        assert run.c8  # small planes: the channel blocks
                        counters = gemm.image_counters(n, threads, -(-c // 8))
                    elif make is PointwiseRunner:
                        counters = gemm.image_counters(n, threads, run.row_tasks)
                    else:
                        counters = gemm.image_counters(n, threads)
                    assert counters.size == (16 if queues and threads == 2 else 1), (make, n)
                    y = np.full(run.out_shape, np.nan, np.float32)
                    run(x, w, b, y)
                    outs.append(y)
                assert np.isfinite(outs[0]).all()
                for y in outs[1:]:
                    np.testing.assert_array_equal(y, outs[0])
    finally:
        numba.set_num_threads(before)


def test_blocking_splits_the_work_evenly_and_changes_no_bit() -> None:
    """Few blocks a thread: blocks of rows and columns that end together (LeNet ip1's data gradient, 64 x 800 on 2
    threads: two blocks of 400 columns, not 256, 256, 256 and 32), the operands read the fewest times on a tie; C is
    the same bits as one thread's MC x NC blocks (each tile sums the same K panels in the same order)."""
    from kernels.gemm import MC, NC, blocking

    mc, nc = blocking(64, 800, 2)
    assert mc >= 64 and nc == 400  # one row block (the large B, W, read once), two column blocks
    mc, nc = blocking(500, 64, 2)  # LeNet ip1's forward, W @ x^T: rows split, W (the large A) read once
    assert mc < 500 and nc >= 64
    assert blocking(4096, 4096, 2) == (MC, NC) and blocking(64, 800, 1) == (MC, NC)
    rng = np.random.default_rng(5)
    before = numba.get_num_threads()
    try:
        for m, n, k in ((64, 800, 500), (500, 64, 800), (256, 256, 256), (37, 530, 70)):
            a = rng.standard_normal((m, k), dtype=np.float32)
            b = rng.standard_normal((k, n), dtype=np.float32)
            numba.set_num_threads(1)
            one = gemm(a, b)
            numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
            assert np.array_equal(gemm(a, b), one), (m, n, k)
    finally:
        numba.set_num_threads(before)


def test_workspace_views_start_on_64_byte_lines() -> None:
    """Workspace.get: disjoint views of the asked sizes, each starting on a 64-byte line (packed slivers' vectors
    then never straddle two lines), also after the buffer grows and for sizes that are not multiples of 16."""
    from kernels.gemm import Workspace

    ws = Workspace()
    for sizes in [(5, 0, 33, 16), (1000, 7), (3 << 20, 12, 1)]:
        views = ws.get(*sizes)
        assert [v.size for v in views] == list(sizes)
        ends = []
        for v in filter(len, views):  # (an empty view has no data to align)
            assert v.ctypes.data % 64 == 0 and v.dtype == np.float32 and v.flags.c_contiguous
            ends.append((v.ctypes.data, v.ctypes.data + 4 * v.size))
        ends.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(ends))
        assert all(ws.buf.ctypes.data <= lo and hi <= ws.buf.ctypes.data + 4 * ws.buf.size for lo, hi in ends)


def test_blocking_of_an_empty_product() -> None:
    from kernels.gemm import MC, NC, blocking

    assert blocking(64, 0, 2) == (MC, NC) and blocking(0, 64, 2) == (MC, NC)


@pytest.mark.parametrize("m", [130, 50])  # MC x NC blocks; blocking's larger ones (50 x 1024 on 2 threads: 60 x 512)
def test_rows_4kb_apart_sum_in_a_scratch_block_with_the_same_bits(m: int) -> None:
    """C with rows a multiple of 4 KB apart (1024 columns) and more than one K panel: its blocks are summed in a padded
    scratch block and copied (SCRATCH_C); the same bits as the columns of C computed with another stride (1008
    columns: the same K panels in the same order per tile), within float32 rounding of the reference; with
    accumulate the blocks are summed in C itself, C's old values kept."""
    from kernels.gemm import KC, SCRATCH_C

    assert SCRATCH_C
    rng = np.random.default_rng(m)
    k, n = KC + 50, 1024
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    got = gemm(a, b)
    np.testing.assert_array_equal(got[:, :1008], gemm(a, np.ascontiguousarray(b[:, :1008])))
    want = gemm_ref(a, b)
    assert float(np.abs(got - want).max()) <= 1e-5 * np.sqrt(k) * float(np.abs(want).max())
    c = np.ones((m, n), np.float32)
    gemm(a, b, out=c, accumulate=True)
    assert float(np.abs(c - (want + 1)).max()) <= 1e-5 * np.sqrt(k) * float(np.abs(want).max())


def _same_bits_with_switch_off(monkeypatch, switch: str, a: np.ndarray, b: np.ndarray) -> None:
    """gemm(a, b) and C = 1 + a @ b by accumulate: bit-equal to the same with kernels.gemm's `switch` (a module flag,
    on) turned off, and within float32 rounding of the float64 reference."""
    from kernels import gemm as gemm_module

    assert getattr(gemm_module, switch)
    got = gemm(a, b)
    c = np.ones(got.shape, np.float32)
    gemm(a, b, out=c, accumulate=True)
    monkeypatch.setattr(gemm_module, switch, False)
    np.testing.assert_array_equal(got, gemm(a, b))
    c_off = np.ones(got.shape, np.float32)
    gemm(a, b, out=c_off, accumulate=True)
    np.testing.assert_array_equal(c, c_off)
    want = gemm_ref(a, b)
    tol = 1e-5 * np.sqrt(a.shape[1]) * float(np.abs(want).max())
    assert float(np.abs(got - want).max()) <= tol
    assert float(np.abs(c - (want + 1)).max()) <= tol


@pytest.mark.parametrize(("m", "k", "n"), [(64, 800, 500), (96, 363, 3025), (7, 30, 33), (64, 10, 500), (20, 500, 17)])
def test_ragged_columns_read_in_place_with_the_same_bits(monkeypatch, m: int, k: int, n: int) -> None:
    """One block of rows and a column count that is not a multiple of NR: B is read in place, its ragged last sliver
    with masked loads (RAGGED_B); the same bits as with all of B packed (each output the same FMA chain over the same
    K panels), within float32 rounding of the reference; accumulate too."""
    from kernels.gemm import MC, NR

    assert m <= MC and n % NR
    rng = np.random.default_rng(n)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    _same_bits_with_switch_off(monkeypatch, "RAGGED_B", a, b)


@pytest.mark.parametrize("in_place", [True, False])
def test_every_edge_tile_shape_with_the_same_bits(monkeypatch, in_place: bool) -> None:
    """Every bottom edge (m % MR: the micro-kernel's short tiles, ROWS) and right edge (n % NR: a narrow or masked
    last sliver, alone or paired): each output within float32 rounding of the reference, and the same bits as the
    same rows and columns inside a larger product (a tile's height and its last sliver's width change which lanes
    are computed, never the FMA chain of one output). B read in place (one block of rows) and packed."""
    from kernels import gemm as gemm_module
    from kernels.gemm import MC, ROWS

    monkeypatch.setattr(gemm_module, "RAGGED_B", in_place)
    assert ROWS[-1] == MR
    rng = np.random.default_rng(7)
    k = 37
    big_a = rng.standard_normal((2 * MR, k), dtype=np.float32)
    big_b = rng.standard_normal((k, 4 * NR), dtype=np.float32)
    big = gemm(big_a, big_b)
    for m in range(1, 2 * MR + 1):
        for n in range(1, 4 * NR + 1):
            if m > MC:
                continue
            got = gemm(np.ascontiguousarray(big_a[:m]), np.ascontiguousarray(big_b[:, :n]))
            np.testing.assert_array_equal(got, big[:m, :n], err_msg=f"m={m} n={n}")
    want = gemm_ref(big_a, big_b)
    assert float(np.abs(big - want).max()) <= 1e-5 * np.sqrt(k) * float(np.abs(want).max())


def test_whole_tiles_into_c_have_the_stack_tiles_bits() -> None:
    """TILE_TO_C: a whole MR x 2NR pair adds its results into C from registers (bias at the first K panel, C + tile
    at the others); a tile one row or one column short goes through the stack and _tile_out. Three K panels (both
    additions): the rows and columns the two share hold the same bits, and the product is within rounding of the
    reference."""
    from kernels.gemm import KC

    rng = np.random.default_rng(11)
    k = 2 * KC + 5
    a = rng.standard_normal((2 * MR, k), dtype=np.float32)
    b = rng.standard_normal((k, 4 * NR), dtype=np.float32)
    whole = gemm(a, b)
    for m, n in ((MR - 1, 4 * NR), (2 * MR, 4 * NR - 1), (MR + 3, 2 * NR + 5)):
        got = gemm(np.ascontiguousarray(a[:m]), np.ascontiguousarray(b[:, :n]))
        np.testing.assert_array_equal(got, whole[:m, :n], err_msg=f"m={m} n={n}")
    want = gemm_ref(a, b)
    assert float(np.abs(whole - want).max()) <= 1e-5 * np.sqrt(k) * float(np.abs(want).max())


@contextlib.contextmanager
def _at_end_of_mapping(shape: tuple[int, int]):
    """A float32 array whose last byte is the last byte before a page with no access rights (PROT_NONE); the mapping
    goes when the array does."""
    page = mmap.PAGESIZE
    nbytes = shape[0] * shape[1] * 4
    size = -(-nbytes // page) * page
    buf = mmap.mmap(-1, size + page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mprotect(ctypes.c_void_p(base + size), ctypes.c_size_t(page), 0) == 0
    yield np.frombuffer(buf, np.float32, count=shape[0] * shape[1], offset=size - nbytes).reshape(shape)


@pytest.mark.parametrize(("m", "k", "n"), [(20, 30, 17), (16, 30, 49), (4, 30, 20), (28, 40, 500), (5, 30, 3)])
def test_edge_tiles_read_nothing_past_a_or_b(m: int, k: int, n: int) -> None:
    """A and B read in place (one block of rows and of columns: neither is packed), each ending right before a page
    with no access: the ragged last sliver's masked loads and the short tiles' rows touch no byte past B or A (a
    whole-width load or a row past m there would fault); every edge shape: a lone last sliver (17, 49), short
    pairs and singles (m = 4, 16, 20, 28: 4 and 8 rows past the last whole tile)."""
    rng = np.random.default_rng(3)
    with _at_end_of_mapping((m, k)) as a, _at_end_of_mapping((k, n)) as b:
        a[...] = rng.standard_normal((m, k), dtype=np.float32)
        b[...] = rng.standard_normal((k, n), dtype=np.float32)
        got = gemm(a, b)
        want = gemm_ref(np.array(a), np.array(b))
    assert float(np.abs(got - want).max()) <= 1e-5 * np.sqrt(k) * float(np.abs(want).max())


@pytest.mark.parametrize(("m", "k", "n"), [(256, 2304, 196), (512, 900, 49), (300, 200, 100), (130, 8 * NR, 400)])
def test_b_packed_by_each_task_with_the_same_bits(monkeypatch, m: int, k: int, n: int) -> None:
    """B packed panel by panel inside the tasks that use it (FUSED_B: few blocks of rows, or one K panel, where a
    panel is packed once per thread and column block) gives the same bits as B packed whole first, and is within
    float32 rounding of the reference; accumulate too."""
    rng = np.random.default_rng(m + n)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    _same_bits_with_switch_off(monkeypatch, "FUSED_B", a, b)


@pytest.mark.parametrize(("m", "k", "n"), [(777, 1000, 1500), (800, 385, 2048), (1100, 2000, 1030)])
def test_row_order_with_the_same_bits(monkeypatch, m: int, k: int, n: int) -> None:
    """Large products on the row order (ROW_ORDER: each worker packs its A rows block by block and runs the tiles over
    every column) give the bits of the MC x NC blocks, and are within float32 rounding of the reference; accumulate
    too; ragged rows and columns."""
    from kernels import gemm as gemm_module

    if numba.get_num_threads() * 2 * gemm_module.MC > m:
        pytest.skip("the row order takes products of 2 MC rows a thread")
    rng = np.random.default_rng(m + k)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    _same_bits_with_switch_off(monkeypatch, "ROW_ORDER", a, b)


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(10, 800, 1024), (64, 400, 1040), (5, 1000, 2048), (20, 500, 1030), (96, 363, 3025), (13, 100, 1024)],
)
def test_long_rows_of_b_packed_with_the_same_bits(monkeypatch, m: int, k: int, n: int) -> None:
    """B rows of PAGE_B floats or more, over one K panel or several (CaffeNet conv1's im2col shape, 96 x 363 x 3025,
    ragged): B packed panel by panel in the tasks (FUSED_B), the same bits as B read in place (each output the same
    FMA chain over the same K panels) and within float32 rounding of the reference; accumulate too."""
    from kernels import gemm as gemm_module

    assert n >= gemm_module.PAGE_B and m <= gemm_module.MC
    rng = np.random.default_rng(m + n)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    got = gemm(a, b)
    c = np.ones(got.shape, np.float32)
    gemm(a, b, out=c, accumulate=True)
    monkeypatch.setattr(gemm_module, "PAGE_B", 1 << 40)  # B read in place
    np.testing.assert_array_equal(got, gemm(a, b))
    c_off = np.ones(got.shape, np.float32)
    gemm(a, b, out=c_off, accumulate=True)
    np.testing.assert_array_equal(c, c_off)
    want = gemm_ref(a, b)
    assert float(np.abs(got - want).max()) <= 1e-5 * np.sqrt(k) * float(np.abs(want).max())


@pytest.mark.parametrize("shift", [0, 4, 12])  # floats past a 64-byte line
def test_b_off_a_line_read_from_aligned_columns_with_the_same_bits(monkeypatch, shift: int) -> None:
    """B read in place whose data is not on a 64-byte line (rows a multiple of 64 bytes long): its first columns are
    computed on their own so that the others' vector loads start on a line (ALIGN_B); the same bits as without, within
    float32 rounding of the reference; accumulate too."""
    from kernels import gemm as gemm_module

    rng = np.random.default_rng(shift)
    m, k, n = 40, KC + 20, 4 * NR + NR  # one block of rows: B in place; two K panels
    store = np.empty(k * n + 64, np.float32)
    start = (-(store.ctypes.data % 64) // 4) % 16 + shift
    b = store[start : start + k * n].reshape(k, n)
    b[...] = rng.standard_normal((k, n), dtype=np.float32)
    assert b.ctypes.data % 64 == 4 * shift
    assert gemm_module._aligning_columns(b) == (16 - shift) % 16
    a = rng.standard_normal((m, k), dtype=np.float32)
    _same_bits_with_switch_off(monkeypatch, "ALIGN_B", a, b)


@pytest.mark.parametrize(
    ("m", "k", "n", "trans_b"),
    [(512, 900, 49, False), (97, 2 * KC + 5, 50, False), (130, 700, 33, True), (61, 1200, 3 * NR + 2, False)],
)
def test_last_columns_as_dot_products(monkeypatch, m: int, k: int, n: int, trans_b: bool) -> None:
    """1 to TAIL_DOTS columns past whole slivers (A read in place) are dot products along k (_tail_dots): within
    float32 rounding of the float64 reference, relative to |A| |B| (1e-6; several K panels, rows not a multiple of the
    4-row groups, B transposed, accumulate into C); the other columns keep the bits of the tiles (TAIL_DOTS = 0),
    whose blocks then cover all the columns."""
    from kernels import gemm as gemm_module

    r = n % NR
    assert 0 < r <= gemm_module.TAIL_DOTS and m * n * k >= gemm_module.TAIL_MIN_MACS
    rng = np.random.default_rng(n)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    b_op = b.T if trans_b else b
    want = a.astype(np.float64) @ b_op.astype(np.float64)
    scale = np.abs(a).astype(np.float64) @ np.abs(b_op).astype(np.float64)
    got = gemm(a, b, trans_b=trans_b)
    c = np.ones((m, n), np.float32)
    gemm(a, b, trans_b=trans_b, out=c, accumulate=True)
    assert float((np.abs(got - want) / scale).max()) <= 1e-6
    assert float((np.abs(c - 1.0 - want) / (scale + 1.0)).max()) <= 1e-6
    monkeypatch.setattr(gemm_module, "TAIL_DOTS", 0)
    tiles = gemm(a, b, trans_b=trans_b)
    np.testing.assert_array_equal(got[:, : n - r], tiles[:, : n - r])
    assert not np.array_equal(got[:, n - r :], tiles[:, n - r :])  # (the tail did run: another order of sums)
