"""kernels.fc against its float64 reference, both the small-batch kernels and the GEMM path.

Backward: the NumPy reference against float64 central differences of the NumPy forward, then the Numba
backward (float32) against that reference, then the overwrite (dx) / accumulate (dw, db) contract.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels import fc
from kernels.fc import (
    SMALL_M,
    SMALL_M_DX,
    inner_product_backward,
    inner_product_backward_ref,
    inner_product_forward,
    inner_product_forward_ref,
)
from kernels.gemm import image_counters
from tests.gradcheck import assert_grad_close, numeric_grad

RTOL = 1e-5  # relative to max|ref|, times sqrt(K): float32 sums of K products


@pytest.mark.parametrize(
    "shape,axis,n",
    [
        ((10, 256, 2, 3), 1, 33),
        ((SMALL_M + 3, 50, 4, 4), 1, 70),  # a tiny W: the weight-streaming kernel
        ((SMALL_M + 3, 300), 1, 300),  # the GEMM path
        ((SMALL_M, 300), 1, 300),  # the weight-streaming kernel
        ((2, 3, 4, 5), 2, 7),
        ((3, 4), 0, 5),
        ((1, 800), 1, 1),
        ((5, 6, 7), -1, 9),
    ],
)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_reference(shape: tuple, axis: int, n: int, transpose: bool, with_bias: bool) -> None:
    rng = np.random.default_rng(len(shape) * 100 + n)
    x = rng.standard_normal(shape, dtype=np.float32)
    k = int(np.prod(shape[axis:]))
    w = rng.standard_normal((k, n) if transpose else (n, k), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32) if with_bias else None
    got = inner_product_forward(x, w, b, axis=axis, transpose=transpose)
    want = inner_product_forward_ref(x, w, b, axis=axis, transpose=transpose)
    assert got.shape == shape[: axis % len(shape)] + (n,) == want.shape and got.dtype == np.float32
    tol = RTOL * np.sqrt(k) * max(float(np.abs(want).max()), 1.0)
    assert float(np.abs(got - want).max()) <= tol


@pytest.mark.parametrize("m", range(1, SMALL_M + 1))
def test_small_rows_chunks(m: int) -> None:
    """The weight-streaming kernel over K in several L1 chunks (KC_ROWS) and a short last one, every row count it
    takes (fives, a pair, a lone row), W's rows not a multiple of 4, with the fused ReLU: against the float64
    reference, and the same bits on one and on two workers."""
    rng = np.random.default_rng(m)
    k, n = 2 * fc.KC_ROWS + 37, 4 * 5 + 3
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    want = np.maximum(inner_product_forward_ref(x, w, b), 0.0)
    got = np.empty((m, n), np.float32)
    fc._ip_small_rows(x, w, b, got, True, 2)
    assert float(np.abs(got - want).max()) <= RTOL * np.sqrt(k) * float(np.abs(want).max())
    one = np.empty_like(got)
    fc._ip_small_rows(x, w, b, one, True, 1, serial=True)
    assert np.array_equal(one, got)


@pytest.mark.parametrize("m", [1, 7])
@pytest.mark.parametrize("workers", [2, 3])
def test_small_rows_queues_cover_every_row(m: int, workers: int) -> None:
    """Enough rows of W for one queue of claims a worker (gemm.image_counters: CLAIM_ROWS rows a claim, split by CPU,
    the rest stolen): every row computed once, within the reference's tolerance, with the serial call's bits; the
    counters are those image_counters gives (one queue a worker)."""
    rng = np.random.default_rng(10 * m + workers)
    k, n = 300, fc.CLAIM_ROWS * 7 + 5  # 8 claims: queues of 4 / 2-3 rows blocks, a short last claim and block
    assert image_counters(1, workers, -(-n // fc.CLAIM_ROWS)).size == 8 * workers
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    want = inner_product_forward_ref(x, w, b)
    got = np.full((m, n), np.nan, np.float32)
    fc._ip_small_rows(x, w, b, got, False, workers)
    assert float(np.abs(got - want).max()) <= RTOL * np.sqrt(k) * float(np.abs(want).max())
    one = np.full_like(got, np.nan)
    fc._ip_small_rows(x, w, b, one, False, 1, serial=True)
    assert np.array_equal(one, got)


@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_small_rows_turns_take_w_backwards_every_other_call(m: int, workers: int) -> None:
    """With turns kept from call to call, every other call takes each queue's claims backwards (the rows the call
    before read last first): every row is computed once either way (NaN-filled output), with the bits of the call
    in order, and turns counts the claims done (nclaims a call); on one and on several queues (workers)."""
    rng = np.random.default_rng(100 * m + workers)
    k, n = 260, fc.CLAIM_ROWS * 9 + 3  # 10 claims: queues of 5 / 3-4, a short last claim
    nclaims = -(-n // fc.CLAIM_ROWS)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    want = np.empty((m, n), np.float32)
    fc._ip_small_rows(x, w, b, want, False, 1, serial=True)  # in order (no turns)
    turns = np.zeros(1, np.int64)
    for call in range(4):
        assert fc._turn(turns, nclaims) == (call % 2 == 1)
        got = np.full((m, n), np.nan, np.float32)
        fc._ip_small_rows(x, w, b, got, False, workers, serial=workers == 1, turns=turns)
        assert np.array_equal(got, want), f"call {call}"
        assert turns[0] == (call + 1) * nclaims


def test_a_plan_carries_the_turns_of_its_inner_products_through_a_replay() -> None:
    """LeNet at batch 1, replayed natively (net.replay): the inner products' turns go on counting (a replay does not
    restore an array a task carries on purpose, kernels.tasks.carried), and the probabilities keep their bits."""
    from pathlib import Path

    from kernels.tasks import is_carried
    from net import Net

    root = Path(__file__).resolve().parents[2] / "models" / "lenet"
    net = Net.load(str(root / "deploy.prototxt"), str(root / "lenet.caffemodel"), phase="test")
    x = np.random.default_rng(0).uniform(0, 1, (1, 1, 28, 28)).astype(np.float32)
    first = net.forward(data=x)["prob"]
    for _ in range(8):
        net.forward(data=x)
    plan = net._plan
    assert plan.replay, "LeNet's batch-1 plan is replayed"
    runners = [c.cell_contents for step, *_ in plan.steps for c in (getattr(step, "__closure__", None) or ())
               if isinstance(c.cell_contents, fc.ForwardRunner)]  # fmt: skip
    assert len(runners) == 2 and all(is_carried(r.turns) for r in runners)
    before = [int(r.turns[0]) for r in runners]
    for _ in range(3):
        assert np.array_equal(net.forward(data=x)["prob"], first)
    claims = [-(-r.out_shape[-1] // fc.CLAIM_ROWS) for r in runners]
    assert [int(r.turns[0]) - b for r, b in zip(runners, before)] == [3 * c for c in claims]


@pytest.mark.parametrize("n, m", [(500, 64), (500, 61), (13, 8), (7, 13), (12, 16), (9, 1), (4, 9), (1, 3)])
def test_transpose_epilogue_is_copy_add_relu(n: int, m: int) -> None:
    """The GEMM path's y = (W @ x^T)^T epilogue (8 x 8 blocks in registers, 4-row and scalar edges): the bits of
    NumPy's transposed copy, += b and kernels.activations.relu_forward, with and without each; NaN, -0.0 and inf
    included."""
    from kernels.activations import relu_forward

    rng = np.random.default_rng(n * 100 + m)
    yt = rng.standard_normal((n, m), dtype=np.float32)
    yt.flat[:: max(1, yt.size // 5)] = [np.nan, -0.0, np.inf, -np.inf, 0.0][: len(yt.flat[:: max(1, yt.size // 5)])]
    b = rng.standard_normal(n, dtype=np.float32)
    for with_b in (True, False):
        for relu in (True, False):
            want = yt.T.copy()
            if with_b:
                want += b
            if relu:
                relu_forward(want, out=want)
            got = np.full((m, n), 7.0, np.float32)
            fc._transpose_epilogue(yt, b, with_b, got, relu)
            assert np.array_equal(got, want, equal_nan=True)
            assert np.array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("m", [2, 5, 13, 32])
def test_rowwise_rows_have_their_batch_1_bits(m: int) -> None:
    """ForwardRunner(rowwise=True) (net.per_image's batched tail): any number of rows on the weight-streaming kernel,
    each row with the bits of its own batch-1 forward, on one and on two workers; W's rows not a multiple of 4, the
    fused ReLU; within the reference's tolerance."""
    rng = np.random.default_rng(m)
    k, n = 1280, 4 * 25 + 3
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    one = fc.ForwardRunner((1, k), (n, k), relu=True)
    want = np.empty((m, n), np.float32)
    for i in range(m):
        one(x[i : i + 1], w, b, want[i : i + 1])
    ref = np.maximum(inner_product_forward_ref(x, w, b), 0.0)
    assert float(np.abs(want - ref).max()) <= RTOL * np.sqrt(k) * float(np.abs(ref).max())
    run = fc.ForwardRunner((m, k), (n, k), relu=True, rowwise=True)
    got = np.empty((m, n), np.float32)
    run(x, w, b, got)
    assert np.array_equal(got, want)
    serial = np.empty_like(got)
    fc._ip_small_rows(x, w, b, serial, True, 1, serial=True, rowwise=True)
    assert np.array_equal(serial, want)
    with pytest.raises(ValueError, match="rowwise"):
        fc.ForwardRunner((m, k), (k, n), transpose=True, rowwise=True)


def test_small_rows_choice() -> None:
    """The weight-streaming kernel for a few rows, or up to SMALL_M_TINY_W rows of a tiny W; the GEMM otherwise."""
    assert fc.small_rows(1, 1000, 1280) and fc.small_rows(SMALL_M, 4096, 9216)
    assert not fc.small_rows(SMALL_M + 1, 4096, 9216) and not fc.small_rows(32, 1000, 1280)
    assert fc.small_rows(32, 10, 500) and not fc.small_rows(fc.SMALL_M_TINY_W + 1, 10, 500)


def test_reference_formula() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2))
    w = rng.standard_normal((5, 6))
    b = rng.standard_normal(5)
    np.testing.assert_allclose(inner_product_forward_ref(x, w, b), x.reshape(4, 6) @ w.T + b, rtol=1e-5)


def test_out_argument() -> None:
    x = np.ones((2, 6), np.float32)
    w = np.ones((3, 6), np.float32)
    out = np.empty((2, 3), np.float32)
    assert inner_product_forward(x, w, None, out=out) is out
    assert np.all(out == 6)
    with pytest.raises(ValueError, match="out"):
        inner_product_forward(x, w, None, out=np.empty((3, 2), np.float32))


def test_k_mismatch_message() -> None:
    with pytest.raises(ValueError, match=r"expected 10 inputs per sample.*got 12"):
        inner_product_forward(np.zeros((2, 3, 4), np.float32), np.zeros((7, 10), np.float32), None)
    with pytest.raises(ValueError, match="bias"):
        inner_product_forward(np.zeros((2, 10), np.float32), np.zeros((7, 10), np.float32), np.zeros(6))


# ---------------------------------------------------------------------------------------------- backward
# (a) L = sum(g * y) is linear in each of x, w, b: float64 central differences (step FD_EPS) are exact up to rounding.
# Per element: |analytic - numeric| <= FD_ATOL + FD_RTOL * max(|analytic|, |numeric|, 1).
FD_EPS, FD_ATOL, FD_RTOL = 1e-3, 1e-8, 1e-7
# (b) float32 against the float64 reference: max |err| <= RTOL_BWD * sqrt(n) * max(max|ref|, 1), n = products summed
# per element (dx: N outputs, dw and db: M rows). Measured max |err| / max|ref| over BWD_CASES: 6.6e-7 (dx),
# 2.8e-7 (dw), 2.5e-7 (db), at most 0.22 of this tolerance.
RTOL_BWD = 2e-7


@pytest.mark.parametrize("shape,axis,n,transpose", [((3, 2, 2, 3), 1, 4, False), ((2, 3, 5), 2, 3, True)])
def test_backward_ref_matches_finite_differences(shape: tuple, axis: int, n: int, transpose: bool) -> None:
    rng = np.random.default_rng(n)
    x = rng.standard_normal(shape)
    k = int(np.prod(shape[axis:]))
    w = rng.standard_normal((k, n) if transpose else (n, k))
    b = rng.standard_normal(n)
    g = rng.standard_normal(shape[:axis] + (n,))

    def loss() -> float:
        y = inner_product_forward_ref(x, w, b, axis=axis, transpose=transpose, dtype=np.float64)
        return float(np.sum(g * y))

    analytic = inner_product_backward_ref(g, x, w, axis=axis, transpose=transpose)
    for got, arr, what in zip(analytic, (x, w, b), ("dx", "dw", "db")):
        assert got.shape == arr.shape and got.dtype == np.float64, what
        assert_grad_close(got, numeric_grad(lambda _: loss(), arr, FD_EPS), atol=FD_ATOL, rtol=FD_RTOL, what=what)
    assert inner_product_backward_ref(g, x, w, axis=axis, transpose=transpose, bias=False)[2] is None


BWD_CASES = [  # x shape, axis, N outputs
    ((64, 800), 1, 500),  # LeNet ip1 (GEMM path)
    ((64, 500), 1, 10),  # LeNet ip2
    ((SMALL_M_DX + 3, 50, 4, 4), 1, 70),
    ((10, 256, 2, 3), 1, 33),  # few rows: weight-streaming dx
    ((2, 3, 4, 5), 2, 7),
    ((1, 800), 1, 1),
    ((5, 6, 7), -1, 9),
]


@pytest.mark.parametrize("shape,axis,n", BWD_CASES)
@pytest.mark.parametrize("transpose", [False, True])
def test_backward_matches_reference(shape: tuple, axis: int, n: int, transpose: bool) -> None:
    rng = np.random.default_rng(len(shape) * 100 + n)
    x = rng.standard_normal(shape, dtype=np.float32)
    k = int(np.prod(shape[axis:]))
    w = rng.standard_normal((k, n) if transpose else (n, k), dtype=np.float32)
    dy = rng.standard_normal(shape[: axis % len(shape)] + (n,), dtype=np.float32)
    got = inner_product_backward(dy, x, w, axis=axis, transpose=transpose)
    want = inner_product_backward_ref(dy, x, w, axis=axis, transpose=transpose)
    rows = dy.size // n
    for g, r, terms, what in zip(got, want, (n, rows, rows), ("dx", "dw", "db")):
        assert g.shape == r.shape and g.dtype == np.float32, what
        tol = RTOL_BWD * np.sqrt(terms) * max(float(np.abs(r).max()), 1.0)
        err = float(np.abs(g - r).max())
        assert err <= tol, f"{what}: max abs err {err:.3e} > tol {tol:.3e}"


@pytest.mark.parametrize("rows", [4, 40])  # weight-streaming and GEMM paths
def test_backward_overwrites_dx_and_accumulates_dw_db(rows: int) -> None:
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 30), dtype=np.float32)
    w = rng.standard_normal((20, 30), dtype=np.float32)
    dy = rng.standard_normal((rows, 20), dtype=np.float32)
    fresh = inner_product_backward(dy, x, w)
    dx = np.full(x.shape, np.nan, np.float32)
    dw0 = rng.standard_normal(w.shape).astype(np.float32)
    db0 = rng.standard_normal(20).astype(np.float32)
    dw, db = dw0.copy(), db0.copy()
    for step in (1, 2):
        out = inner_product_backward(dy, x, w, dx=dx, dw=dw, db=db)
        assert out[0] is dx and out[1] is dw and out[2] is db
        np.testing.assert_array_equal(dx, fresh[0])
        np.testing.assert_allclose(dw, dw0 + step * fresh[1], rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(db, db0 + step * fresh[2], rtol=1e-6, atol=1e-5)
    assert inner_product_backward(dy, x, w, need_dx=False, need_dw=False, need_db=False) == (None, None, None)
    dx2, dw2, db2 = inner_product_backward(dy, x, w, need_dx=False, need_db=False)
    assert dx2 is None and db2 is None
    np.testing.assert_allclose(dw2, fresh[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rows", [0, 4, 40, 64])
@pytest.mark.parametrize("transpose", [False, True])
def test_backward_overwrite_dw_equals_accumulating_on_zeros(rows: int, transpose: bool) -> None:
    """overwrite_dw (a solver's lazily cleared diff): dw's old values are ignored, and the result has the bits of
    accumulating into zeros (the same sums: 0 + x == x)."""
    rng = np.random.default_rng(rows + 7)
    x = rng.standard_normal((rows, 96), dtype=np.float32)
    w = rng.standard_normal((96, 50) if transpose else (50, 96), dtype=np.float32)
    dy = rng.standard_normal((rows, 50), dtype=np.float32)
    want = np.zeros_like(w)
    inner_product_backward(dy, x, w, transpose=transpose, dw=want, need_dx=False, need_db=False)
    dw = np.full_like(w, np.nan)
    inner_product_backward(dy, x, w, transpose=transpose, dw=dw, need_dx=False, need_db=False, overwrite_dw=True)
    np.testing.assert_array_equal(dw.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("rows", [0, 4, 64])
def test_backward_overwrite_db_equals_accumulating_on_zeros(rows: int) -> None:
    """overwrite_db, as overwrite_dw: db's old values ignored, the bits of fc.sum_rows accumulating into zeros."""
    rng = np.random.default_rng(rows + 11)
    x = rng.standard_normal((rows, 96), dtype=np.float32)
    w = rng.standard_normal((300, 96), dtype=np.float32)
    dy = rng.standard_normal((rows, 300), dtype=np.float32)
    want = np.zeros(300, np.float32)
    inner_product_backward(dy, x, w, db=want, need_dx=False, need_dw=False)
    db = np.full(300, np.nan, np.float32)
    inner_product_backward(dy, x, w, db=db, need_dx=False, need_dw=False, overwrite_db=True)
    np.testing.assert_array_equal(db.view(np.uint32), want.view(np.uint32))


def test_backward_errors() -> None:
    x = np.zeros((4, 6), np.float32)
    w = np.zeros((3, 6), np.float32)
    dy = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"expected dy of shape \(4, 3\).*got \(4, 2\)"):
        inner_product_backward(np.zeros((4, 2), np.float32), x, w)
    with pytest.raises(ValueError, match=r"dw to be a C-contiguous float32 array of shape \(3, 6\)"):
        inner_product_backward(dy, x, w, dw=np.zeros((6, 3), np.float32))
    with pytest.raises(ValueError, match="dx to be a C-contiguous float32"):
        inner_product_backward(dy, x, w, dx=np.zeros((4, 6)))
    with pytest.raises(ValueError, match="dx was given but need_dx is False"):
        inner_product_backward(dy, x, w, dx=np.zeros((4, 6), np.float32), need_dx=False)
    buf = np.zeros(40, np.float32)
    with pytest.raises(ValueError, match="dx shares memory with dy"):
        inner_product_backward(buf[:12].reshape(4, 3), x, w, dx=buf[10:34].reshape(4, 6))


@pytest.mark.parametrize("m", [1, 5, 40])  # few rows (register-tiled dots) and the GEMM path
def test_fused_relu_is_relu_of_the_output_bit_for_bit(m):
    rng = np.random.default_rng(m)
    x = rng.standard_normal((m, 37), dtype=np.float32)
    w = rng.standard_normal((23, 37), dtype=np.float32)
    b = rng.standard_normal(23, dtype=np.float32)
    plain = inner_product_forward(x, w, b)
    fused = inner_product_forward(x, w, b, relu=True)
    assert (plain < 0).any()
    np.testing.assert_array_equal(fused, np.maximum(plain, 0))
