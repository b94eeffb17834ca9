"""kernels.conv against its float64 NumPy reference (and torch.nn.functional.conv2d when torch imports).

Backward: the NumPy reference against float64 central differences of the NumPy forward, then the Numba
backward (float32) against that reference, then the overwrite (dx) / accumulate (dw, db) contract.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels.conv import (
    conv2d_backward,
    conv2d_backward_ref,
    conv2d_forward,
    conv2d_forward_ref,
    conv2d_output_shape,
)
from tests.gradcheck import assert_grad_close, numeric_grad

RTOL = 1e-5  # max |err| <= RTOL * sqrt(K) * max|ref|, K = C/group*kh*kw terms summed in float32


def _run(x_shape, w_shape, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = rng.standard_normal(w_shape, dtype=np.float32)
    b = rng.standard_normal(w_shape[0], dtype=np.float32) if bias else None
    kw = {"stride": stride, "pad": pad, "dilation": dilation, "group": group}
    return x, w, b, kw, conv2d_forward(x, w, b, **kw), conv2d_forward_ref(x, w, b, **kw)


def _assert_close(got: np.ndarray, want: np.ndarray, k: int) -> None:
    assert got.shape == want.shape and got.dtype == np.float32 and got.flags.c_contiguous
    tol = RTOL * np.sqrt(k) * max(float(np.abs(want).max()), 1.0)
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= tol, f"max abs err {err:.3e} > tol {tol:.3e}"


CASES = [  # x shape, w shape, stride, pad, dilation, group, bias
    ((2, 3, 9, 11), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1, True),
    ((1, 4, 10, 9), (6, 2, 3, 2), (2, 1), (1, 2), (1, 1), 2, True),  # batch 1, groups, rectangular kernel
    ((3, 5, 12, 12), (7, 5, 3, 3), (1, 2), (2, 1), (2, 2), 1, False),  # dilation, bias None
    ((1, 6, 7, 7), (4, 6, 1, 1), (3, 3), (0, 0), (1, 1), 1, True),  # stride > kernel
    ((2, 6, 8, 5), (9, 2, 2, 3), (3, 2), (1, 1), (1, 1), 3, True),  # 3 groups, odd sizes
    ((5, 1, 28, 28), (20, 1, 5, 5), (1, 1), (0, 0), (1, 1), 1, True),  # LeNet conv1, odd batch
    ((4, 20, 12, 12), (50, 20, 5, 5), (1, 1), (0, 0), (1, 1), 1, True),  # LeNet conv2
    ((2, 3, 35, 35), (8, 3, 11, 11), (4, 4), (0, 0), (1, 1), 1, True),  # CaffeNet conv1-like
    ((1, 3, 4, 4), (2, 3, 3, 3), (1, 1), (3, 3), (1, 1), 1, True),  # padding larger than the image
    ((3, 40, 6, 6), (70, 40, 3, 3), (1, 1), (1, 1), (1, 1), 1, True),  # M, K not multiples of the tiles
    # rows of 15 pixels at horizontal stride 1 (im2col slivers that cross output rows), vertical stride 2, dilation,
    # groups
    ((2, 4, 20, 17), (6, 2, 3, 3), (2, 1), (1, 1), (2, 2), 2, True),
]


@pytest.mark.parametrize("xs,ws,stride,pad,dil,group,bias", CASES)
def test_matches_reference(xs, ws, stride, pad, dil, group, bias) -> None:
    *_, got, want = _run(xs, ws, stride, pad, dil, group, bias)
    _assert_close(got, want, ws[1] * ws[2] * ws[3])


def test_caffenet_conv2_shape() -> None:
    """One full-size layer (CaffeNet conv2, batch 2): exercises K = 2400 (several K panels) and 729 pixels."""
    *_, got, want = _run((2, 96, 27, 27), (256, 48, 5, 5), pad=(2, 2), group=2, seed=5)
    assert got.shape == (2, 256, 27, 27)
    _assert_close(got, want, 48 * 25)


def test_batch1_and_batch_paths_agree() -> None:
    x, w, b, kw, got, _ = _run((3, 8, 10, 10), (12, 4, 3, 3), pad=(1, 1), group=2, seed=7)
    singles = np.concatenate([conv2d_forward(x[i : i + 1], w, b, **kw) for i in range(3)])
    np.testing.assert_allclose(got, singles, rtol=1e-5, atol=1e-5)


def test_reference_by_hand() -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    w = np.ones((1, 1, 2, 2), np.float32)
    y = conv2d_forward_ref(x, w, np.array([1.0], np.float32), stride=(2, 2))
    np.testing.assert_array_equal(
        y[0, 0], [[0 + 1 + 4 + 5 + 1, 2 + 3 + 6 + 7 + 1], [8 + 9 + 12 + 13 + 1, 10 + 11 + 14 + 15 + 1]]
    )


def test_out_argument_and_reuse() -> None:
    x, w, b, kw, got, _ = _run((2, 3, 6, 6), (4, 3, 3, 3))
    out = np.full_like(got, np.nan)
    assert conv2d_forward(x, w, b, out=out, **kw) is out
    np.testing.assert_array_equal(out, got)
    with pytest.raises(ValueError, match="out"):
        conv2d_forward(x, w, b, out=np.empty((2, 4, 3, 3), np.float32), **kw)


def test_output_shape() -> None:
    assert conv2d_output_shape((227, 227), (11, 11), (4, 4), (0, 0), (1, 1)) == (55, 55)
    assert conv2d_output_shape((27, 27), (5, 5), (1, 1), (2, 2), (1, 1)) == (27, 27)
    assert conv2d_output_shape((10, 9), (3, 2), (2, 1), (1, 2), (2, 1)) == (4, 12)
    with pytest.raises(ValueError, match="output would be"):
        conv2d_output_shape((4, 4), (5, 5), (1, 1), (0, 0), (1, 1))


@pytest.mark.parametrize(
    "xs,ws,group,match",
    [
        (
            (64, 3, 12, 12),
            (50, 20, 5, 5),
            1,
            r"expected 20 input channels \(w.shape\[1\]\*group\), got x shape \(64, 3, 12, 12\)",
        ),
        ((1, 4, 8, 8), (6, 2, 3, 3), 4, "group"),
        ((4, 8, 8), (6, 4, 3, 3), 1, "rank 4"),
        ((1, 4, 8, 8), (6, 4, 3), 1, "rank 4"),
    ],
)
def test_errors(xs, ws, group, match) -> None:
    with pytest.raises(ValueError, match=match):
        conv2d_forward(np.zeros(xs, np.float32), np.zeros(ws, np.float32), None, group=group)


def test_bias_shape_error() -> None:
    with pytest.raises(ValueError, match=r"bias of shape \(6,\)"):
        conv2d_forward(np.zeros((1, 4, 8, 8), np.float32), np.zeros((6, 4, 3, 3), np.float32), np.zeros(5))


def test_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    for xs, ws, stride, pad, dil, group, bias in CASES[:5]:
        x, w, b, _, got, _ = _run(xs, ws, stride, pad, dil, group, bias, seed=11)
        with torch.no_grad():
            want = torch.nn.functional.conv2d(
                torch.from_numpy(x),
                torch.from_numpy(w),
                None if b is None else torch.from_numpy(b),
                stride=stride,
                padding=pad,
                dilation=dil,
                groups=group,
            ).numpy()
        _assert_close(got, want.astype(np.float64), ws[1] * ws[2] * ws[3])


# ---------------------------------------------------------------------------------------------- backward
# (a) Finite differences. L = sum(g * y(x, w, b)) is linear in each of x, w, b, so float64 central differences
# with step FD_EPS are exact up to rounding (~1e-16 * |L| / FD_EPS ~ 1e-11 here). Tolerance per element:
# |analytic - numeric| <= FD_ATOL + FD_RTOL * max(|analytic|, |numeric|, 1).
FD_EPS, FD_ATOL, FD_RTOL = 1e-3, 1e-8, 1e-7

# (b) Numba float32 against the float64 reference: max |err| <= RTOL_BWD * sqrt(n) * max(max|ref|, 1) where n is
# the number of products summed into one element (dx: M/group*kh*kw, dw and db: N*OH*OW). Measured at 2 threads
# over BWD_CASES: max |err| / max|ref| = 2.3e-7 (dx), 5.4e-7 (dw), 3.1e-7 (db), at most 0.2 of this tolerance.
RTOL_BWD = 2e-7

FD_CASES = [  # x shape, w shape, stride, pad, dilation, group
    ((2, 3, 6, 5), (4, 3, 3, 2), (1, 1), (0, 0), (1, 1), 1),
    ((1, 4, 7, 6), (6, 2, 3, 3), (2, 1), (1, 2), (1, 1), 2),  # batch 1, groups, padding
    ((2, 2, 7, 7), (3, 2, 2, 2), (1, 2), (1, 0), (2, 3), 1),  # dilation
    ((2, 3, 5, 5), (2, 3, 1, 1), (3, 3), (0, 0), (1, 1), 1),  # stride > kernel: some inputs get no gradient
]


@pytest.mark.parametrize("xs,ws,stride,pad,dil,group", FD_CASES)
def test_backward_ref_matches_finite_differences(xs, ws, stride, pad, dil, group) -> None:
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x = rng.standard_normal(xs)
    w = rng.standard_normal(ws)
    b = rng.standard_normal(ws[0])
    kw = {"stride": stride, "pad": pad, "dilation": dil, "group": group}
    g = rng.standard_normal(conv2d_forward_ref(x, w, b, dtype=np.float64, **kw).shape)

    def loss() -> float:
        return float(np.sum(g * conv2d_forward_ref(x, w, b, dtype=np.float64, **kw)))

    dx, dw, db = conv2d_backward_ref(g, x, w, **kw)
    assert dx.dtype == dw.dtype == db.dtype == np.float64
    for got, arr, what in ((dx, x, "dx"), (dw, w, "dw"), (db, b, "db")):
        assert_grad_close(got, numeric_grad(lambda _: loss(), arr, FD_EPS), atol=FD_ATOL, rtol=FD_RTOL, what=what)
    assert conv2d_backward_ref(g, x, w, bias=False, **kw)[2] is None


BWD_CASES = [  # x shape, w shape, stride, pad, dilation, group
    ((2, 3, 9, 11), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1),
    ((1, 4, 10, 9), (6, 2, 3, 2), (2, 1), (1, 2), (1, 1), 2),  # batch 1, groups, rectangular kernel
    ((3, 5, 12, 12), (7, 5, 3, 3), (1, 2), (2, 1), (2, 2), 1),  # dilation, 3 images over 2 threads
    ((1, 6, 7, 7), (4, 6, 1, 1), (3, 3), (0, 0), (1, 1), 1),  # stride > kernel
    ((2, 6, 8, 5), (9, 2, 2, 3), (3, 2), (1, 1), (1, 1), 3),  # 3 groups, odd sizes
    ((5, 1, 28, 28), (20, 1, 5, 5), (1, 1), (0, 0), (1, 1), 1),  # LeNet conv1: P = 576 > KC, K = 25
    ((9, 20, 12, 12), (50, 20, 5, 5), (1, 1), (0, 0), (1, 1), 1),  # LeNet conv2: several images per dW GEMM
    ((2, 3, 35, 35), (8, 3, 11, 11), (4, 4), (0, 0), (1, 1), 1),  # CaffeNet conv1-like
    ((1, 3, 4, 4), (2, 3, 3, 3), (1, 1), (3, 3), (1, 1), 1),  # padding larger than the image
    ((3, 40, 6, 6), (70, 40, 3, 3), (1, 1), (1, 1), (1, 1), 1),  # M, K not multiples of the tiles
    ((7, 3, 3, 3), (5, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1),  # 1x1 output: many images per dW GEMM
    ((2, 96, 27, 27), (256, 48, 5, 5), (1, 1), (2, 2), (1, 1), 2),  # CaffeNet conv2: K = 1200, 729 pixels
    ((1, 12, 7, 6), (5, 12, 3, 3), (1, 1), (1, 1), (1, 1), 1),  # batch 1: dx in channel blocks, dW in parts of K
]


def _bwd_inputs(xs, ws, stride, pad, dil, group, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32)
    oh, ow = conv2d_output_shape(xs[2:], ws[2:], stride, pad, dil)
    dy = rng.standard_normal((xs[0], ws[0], oh, ow), dtype=np.float32)
    return dy, x, w, {"stride": stride, "pad": pad, "dilation": dil, "group": group}


def _assert_close_n(got: np.ndarray, want: np.ndarray, n: int, what: str) -> None:
    assert got.shape == want.shape and got.dtype == np.float32 and got.flags.c_contiguous, what
    tol = RTOL_BWD * np.sqrt(n) * max(float(np.abs(want).max()), 1.0)
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= tol, f"{what}: max abs err {err:.3e} > tol {tol:.3e}"


@pytest.mark.parametrize("xs,ws,stride,pad,dil,group", BWD_CASES)
def test_backward_matches_reference(xs, ws, stride, pad, dil, group) -> None:
    dy, x, w, kw = _bwd_inputs(xs, ws, stride, pad, dil, group, seed=len(xs) + ws[0])
    dx, dw, db = conv2d_backward(dy, x, w, **kw)
    rdx, rdw, rdb = conv2d_backward_ref(dy, x, w, **kw)
    pixels = xs[0] * dy.shape[2] * dy.shape[3]
    _assert_close_n(dx, rdx, ws[0] // group * ws[2] * ws[3], "dx")
    _assert_close_n(dw, rdw, pixels, "dw")
    _assert_close_n(db, rdb, pixels, "db")


def test_backward_single_thread_matches_reference() -> None:
    numba = pytest.importorskip("numba")
    dy, x, w, kw = _bwd_inputs((4, 6, 9, 8), (8, 3, 3, 3), (1, 1), (1, 1), (1, 1), 2, seed=3)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        got = conv2d_backward(dy, x, w, **kw)
    finally:
        numba.set_num_threads(before)
    want = conv2d_backward_ref(dy, x, w, **kw)
    for g, r, n, what in zip(got, want, (4 * 9, 4 * 9 * 8, 4 * 9 * 8), ("dx", "dw", "db")):
        _assert_close_n(g, r, n, what)


def test_backward_overwrites_dx_and_accumulates_dw_db() -> None:
    dy, x, w, kw = _bwd_inputs((3, 4, 8, 7), (6, 2, 3, 3), (1, 2), (1, 1), (1, 1), 2, seed=9)
    fresh_dx, fresh_dw, fresh_db = conv2d_backward(dy, x, w, **kw)
    dx = np.full(x.shape, np.nan, np.float32)
    dw0 = np.random.default_rng(1).standard_normal(w.shape).astype(np.float32)
    db0 = np.random.default_rng(2).standard_normal(6).astype(np.float32)
    dw, db = dw0.copy(), db0.copy()
    rdx, rdw, rdb = conv2d_backward(dy, x, w, dx=dx, dw=dw, db=db, **kw)
    assert rdx is dx and rdw is dw and rdb is db
    np.testing.assert_array_equal(dx, fresh_dx)  # overwritten, NaNs gone
    np.testing.assert_allclose(dw, dw0 + fresh_dw, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(db, db0 + fresh_db, rtol=1e-6, atol=1e-5)
    conv2d_backward(dy, x, w, dx=dx, dw=dw, db=db, **kw)  # a second call: dx the same, dw and db twice the step
    np.testing.assert_array_equal(dx, fresh_dx)
    np.testing.assert_allclose(dw, dw0 + 2 * fresh_dw, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(db, db0 + 2 * fresh_db, rtol=1e-6, atol=1e-5)


def test_backward_need_flags() -> None:
    dy, x, w, kw = _bwd_inputs((2, 4, 6, 6), (6, 4, 3, 3), (1, 1), (0, 0), (1, 1), 1, seed=4)
    _, fresh_dw, fresh_db = conv2d_backward(dy, x, w, **kw)
    dx, dw, db = conv2d_backward(dy, x, w, need_dx=False, need_db=False, **kw)
    assert dx is None and db is None
    np.testing.assert_allclose(dw, fresh_dw, rtol=1e-6, atol=1e-6)
    dx, dw, db = conv2d_backward(dy, x, w, need_dx=False, need_dw=False, **kw)
    assert dx is None and dw is None
    np.testing.assert_allclose(db, fresh_db, rtol=1e-6, atol=1e-6)  # summed in another order: not bitwise
    assert conv2d_backward(dy, x, w, need_dx=False, need_dw=False, need_db=False, **kw) == (None, None, None)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dx": np.zeros((2, 4, 6, 5), np.float32)}, r"dx to be a C-contiguous float32 array of shape \(2, 4, 6, 6\)"),
        ({"dx": np.zeros((2, 4, 6, 6), np.float64)}, "dx to be a C-contiguous float32"),
        ({"dw": np.zeros((6, 4, 3, 3), np.float32)[:, :, ::-1]}, "dw to be a C-contiguous"),
        ({"db": np.zeros(5, np.float32)}, r"db to be .* shape \(6,\)"),
        ({"db": np.zeros(6, np.float32), "need_db": False}, "db was given but need_db is False"),
    ],
)
def test_backward_argument_errors(kwargs, match) -> None:
    dy, x, w, kw = _bwd_inputs((2, 4, 6, 6), (6, 4, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    with pytest.raises(ValueError, match=match):
        conv2d_backward(dy, x, w, **kw, **kwargs)


def test_backward_shape_and_alias_errors() -> None:
    dy, x, w, kw = _bwd_inputs((2, 4, 6, 6), (6, 4, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    with pytest.raises(ValueError, match=r"expected dy of shape \(2, 6, 6, 6\).*got \(2, 6, 5, 6\)"):
        conv2d_backward(dy[:, :, :5].copy(), x, w, **kw)
    buf = np.zeros(2 * 6 * 6 * 6 + x.size, np.float32)
    dy_view = buf[: dy.size].reshape(dy.shape)
    dy_view[...] = dy
    with pytest.raises(ValueError, match="dx shares memory with dy"):
        conv2d_backward(dy_view, x, w, dx=buf[dy.size - 1 : dy.size - 1 + x.size].reshape(x.shape), **kw)
    with pytest.raises(ValueError, match="expected 4 input channels"):
        conv2d_backward(dy, x[:, :3].copy(), w, **kw)


def test_backward_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    for xs, ws, stride, pad, dil, group in BWD_CASES[:6]:
        dy, x, w, kw = _bwd_inputs(xs, ws, stride, pad, dil, group, seed=21)
        tx = torch.from_numpy(x.astype(np.float64)).requires_grad_()
        tw = torch.from_numpy(w.astype(np.float64)).requires_grad_()
        tb = torch.zeros(ws[0], dtype=torch.float64, requires_grad=True)
        y = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=pad, dilation=dil, groups=group)
        y.backward(torch.from_numpy(dy.astype(np.float64)))
        dx, dw, db = conv2d_backward(dy, x, w, **kw)
        pixels = xs[0] * dy.shape[2] * dy.shape[3]
        _assert_close_n(dx, tx.grad.numpy(), ws[0] // group * ws[2] * ws[3], "dx")
        _assert_close_n(dw, tw.grad.numpy(), pixels, "dw")
        _assert_close_n(db, tb.grad.numpy(), pixels, "db")


@pytest.mark.parametrize("n", [1, 3, 8])  # 1 and 3: per-image tile path; 8: batch path (2 threads: n % threads == 0)
def test_fused_relu_is_relu_of_the_output_bit_for_bit(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 4, 11, 11), dtype=np.float32)
    w = rng.standard_normal((6, 2, 3, 3), dtype=np.float32)
    b = rng.standard_normal(6, dtype=np.float32)
    kw = {"stride": (2, 1), "pad": (1, 1), "group": 2}
    plain = conv2d_forward(x, w, b, **kw)
    fused = conv2d_forward(x, w, b, relu=True, **kw)
    assert (plain < 0).any()
    np.testing.assert_array_equal(fused, np.maximum(plain, 0))


@pytest.mark.parametrize("n", [1, 4])
def test_packed_weight_path_matches_the_reference(monkeypatch, n):
    """PACK_WEIGHTS = True (weights packed per call) and the default in-place read give the same numbers."""
    import kernels.conv as conv_module

    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, 6, 9, 9), dtype=np.float32)
    w = rng.standard_normal((14, 3, 3, 3), dtype=np.float32)
    b = rng.standard_normal(14, dtype=np.float32)
    kw = {"stride": (1, 2), "pad": (1, 0), "group": 2}
    in_place = conv2d_forward(x, w, b, **kw)
    monkeypatch.setattr(conv_module, "PACK_WEIGHTS", True)
    packed = conv2d_forward(x, w, b, **kw)
    want = conv2d_forward_ref(x, w, b, **kw)
    tol = 1e-5 * float(np.abs(want).max())
    assert float(np.abs(packed - want).max()) <= tol and float(np.abs(in_place - want).max()) <= tol


def test_column_block_splits_small_outputs_over_threads() -> None:
    """_conv_tiles' columns per task: NC_CONV unless that leaves threads idle, then halved in whole NR slivers."""
    from kernels.conv import NC_CONV, NR, _column_block

    assert _column_block(1, 64, 2) == 32  # LeNet conv2 at batch 1: two tasks of 32 pixels, not one of 64
    assert _column_block(1, 64, 8) == NR  # never below one sliver
    assert _column_block(1, 576, 2) == NC_CONV  # LeNet conv1: 5 tasks already
    assert _column_block(4, 169, 2) == NC_CONV  # CaffeNet conv3: 4 row blocks x 2 column blocks


@pytest.mark.parametrize(
    ("c", "hw", "m", "group"), [(64, 14, 256, 1), (96, 7, 512, 1), (16, 13, 60, 1), (32, 27, 96, 2)]
)
def test_tile_blocks_give_the_same_bits(c, hw, m, group, monkeypatch) -> None:
    """One image: the tasks' blocks from tile_blocks (one group: gemm.blocking's; groups: a group's rows in one block)
    sum every output over the same K panels in the same order: the bits of MC_CONV x NC_CONV blocks, and the
    reference's values."""
    import numba

    from kernels import conv as conv_module

    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    saved = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        rng = np.random.default_rng(c + m)
        x = rng.standard_normal((1, c, hw, hw), dtype=np.float32)
        w = (rng.standard_normal((m, c // group, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        b = rng.standard_normal(m).astype(np.float32)
        outs = []
        for flag in (False, True):
            monkeypatch.setattr(conv_module, "TILE_BLOCKS", flag)
            run = conv_module.ForwardRunner(x.shape, w.shape, (1, 1), (1, 1), (1, 1), group, True)
            assert run.batch is False and run.direct is None  # the one-image im2col + GEMM path
            y = np.empty(run.out_shape, np.float32)
            run(x, w, b, y)
            outs.append(y)
        np.testing.assert_array_equal(outs[1], outs[0])
        want = np.maximum(conv2d_forward_ref(x, w, b, stride=(1, 1), pad=(1, 1), group=group), 0)
        assert float(np.abs(outs[1] - want).max()) <= 1e-5 * float(np.abs(want).max())
    finally:
        numba.set_num_threads(saved)


@pytest.mark.parametrize(
    ("xs", "ws", "stride", "pad", "group", "relu_max"),
    [
        ((1, 3, 227, 227), (96, 3, 11, 11), (4, 4), (0, 0), 1, np.inf),  # CaffeNet conv1
        ((1, 32, 27, 27), (96, 16, 3, 3), (1, 1), (1, 1), 2, 6.0),  # groups, padding, ReLU6
        ((1, 5, 160, 33), (20, 5, 5, 5), (2, 1), (2, 2), 1, np.inf),  # ragged last block and sliver
    ],
)
def test_chunked_one_image_path_gives_the_same_bits(xs, ws, stride, pad, group, relu_max, monkeypatch) -> None:
    """One image whose weights fit L2 (chunk_block): (group, pixel block) tasks, each its im2col and GEMM in the
    worker's own buffer, with the bits of the row-block tasks (the same K panels), at 2 and 3 threads (on 1 thread an
    image takes the batch path)."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("the one-image path runs on 2 threads or more")

    from kernels import conv as conv_module

    rng = np.random.default_rng(xs[1] + ws[0])
    x = rng.standard_normal(xs, dtype=np.float32)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    saved = numba.get_num_threads()
    try:
        for threads in sorted({2, min(3, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            outs = []
            for flag in (False, True):
                monkeypatch.setattr(conv_module, "CHUNKS", flag)
                run = conv_module.ForwardRunner(x.shape, w.shape, stride, pad, (1, 1), group, True, relu_max)
                assert run.batch is False and run.direct is None and bool(run.block) == flag
                y = np.full(run.out_shape, np.nan, np.float32)
                run(x, w, b, y)
                outs.append(y)
            np.testing.assert_array_equal(outs[1], outs[0])
        want = np.minimum(np.maximum(conv2d_forward_ref(x, w, b, stride=stride, pad=pad, group=group), 0), relu_max)
        assert float(np.abs(outs[1] - want).max()) <= 1e-5 * float(np.abs(want).max())
    finally:
        numba.set_num_threads(saved)


def test_chunk_block() -> None:
    """Pixels a task of the chunked path, or 0: weights past CHUNK_MAX_A (CaffeNet's conv3), or too few blocks."""
    from kernels import conv as conv_module

    assert conv_module.chunk_block(1, 96, 363, 3025, 2) == 128  # CaffeNet conv1: 24 blocks of 128 pixels
    assert conv_module.chunk_block(1, 384, 2304, 169, 2) == 0
    assert conv_module.chunk_block(1, 16, 16, 64, 2) == 0  # one block


def test_tile_blocks() -> None:
    """(rows, columns) of one image's tasks on 2 threads. One group where there are few MC x NC blocks a thread:
    gemm.blocking's (ResNet-50's 14 x 14 3x3 at batch 1: two tasks of 11 and 10 row tiles with AVX-512, not 96 x 128
    blocks of 3 sizes), else MC_CONV x NC_CONV. Groups: each group's rows in one block (CaffeNet's conv2, conv4 at
    batch 1), enough column blocks for the threads (3 groups on 2 threads: one each), MC_CONV rows past GROUP_ROWS."""
    from kernels import conv as conv_module
    from kernels.gemm import MR, blocking

    for m, p in ((256, 196), (512, 49), (60, 169)):
        assert conv_module.tile_blocks(1, m, p, 2) == blocking(m, p, 2)
    if MR == 12:
        assert conv_module.tile_blocks(1, 256, 196, 2) == (132, 208)
        assert conv_module.tile_blocks(1, 512, 49, 2) == (192, 32)
    assert conv_module.tile_blocks(1, 96, 3025, 2) == (conv_module.MC_CONV, conv_module.NC_CONV)  # many blocks
    assert conv_module.tile_blocks(1, 256, 196, 1) == (conv_module.MC_CONV, conv_module.NC_CONV)  # one thread
    assert conv_module.tile_blocks(2, 128, 729, 2) == (132, 160)
    assert conv_module.tile_blocks(2, 192, 169, 2) == (192, 176)
    assert conv_module.tile_blocks(3, 64, 169, 2) == (-(-64 // MR) * MR, 176)
    assert conv_module.tile_blocks(2, 512, 169, 2) == (conv_module.MC_CONV, conv_module.NC_CONV)  # too many rows


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_batch1_small_output_at_every_thread_count(threads) -> None:
    """The one-image path with its column split (LeNet conv2 at batch 1: 64 output pixels), fused ReLU on, at 1-3
    threads, against the reference."""
    numba = pytest.importorskip("numba")
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"numba has {numba.config.NUMBA_NUM_THREADS} threads")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 20, 12, 12), dtype=np.float32)
    w = rng.standard_normal((50, 20, 5, 5), dtype=np.float32)
    b = rng.standard_normal(50, dtype=np.float32)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        got = conv2d_forward(x, w, b, relu=True)
    finally:
        numba.set_num_threads(before)
    _assert_close(got, np.maximum(conv2d_forward_ref(x, w, b), 0.0), 500)


def test_forward_runner_reused_with_new_weights_and_inputs() -> None:
    """A ForwardRunner (what a Net's execution plan keeps) made once gives the reference for new x, w, b each call."""
    from kernels.conv import ForwardRunner

    rng = np.random.default_rng(12)
    for n in (1, 4):
        run = ForwardRunner((n, 6, 9, 9), (8, 3, 3, 3), (2, 2), (1, 1), (1, 1), 2, False)
        out = np.empty(run.out_shape, np.float32)
        for _ in range(3):
            x = rng.standard_normal((n, 6, 9, 9), dtype=np.float32)
            w = rng.standard_normal((8, 3, 3, 3), dtype=np.float32)
            b = rng.standard_normal(8, dtype=np.float32)
            run(x, w, b, out)
            _assert_close(out, conv2d_forward_ref(x, w, b, stride=(2, 2), pad=(1, 1), group=2), 27)


DIRECT_CASES = [  # shapes that take the direct path (stride-1 rows of a multiple of 8 output pixels): x, w, kwargs
    ((1, 1, 28, 28), (20, 1, 5, 5), {}),  # LeNet conv1 at batch 1 (4 channel blocks, the last of 2 channels)
    ((1, 20, 12, 12), (50, 20, 5, 5), {}),  # LeNet conv2 at batch 1: 64 pixels, 4 tiles
    ((3, 20, 12, 12), (50, 20, 5, 5), {}),  # an odd batch: tiles of an image split over tasks
    ((8, 1, 28, 28), (20, 1, 5, 5), {}),  # one task per image
    ((2, 3, 32, 32), (13, 3, 5, 5), {"pad": (2, 2)}),  # padded, M = 13
    ((2, 6, 10, 16), (8, 3, 3, 3), {"pad": (1, 1), "group": 2, "stride": (2, 1), "dilation": (2, 1)}),
    ((5, 8, 9, 16), (13, 8, 2, 1), {}),  # an odd number of 8-pixel runs (9 rows x 2): a half tile
    ((2, 2, 8, 15), (4, 1, 1, 8), {"group": 2}),  # 1 x 8 kernel, 8 x 8 output
    ((1, 4, 12, 12), (7, 4, 3, 3), {"pad": (1, 1), "dilation": (3, 3)}),  # dilation 3 in both directions: 8 x 8 output
    ((2, 2, 10, 8), (11, 2, 3, 1), {}),  # M = 11: one block of 11 rows (zmm: past the short tiles; ymm: 6 + 5)
    ((2, 2, 10, 8), (5, 2, 3, 1), {}),  # M = 5: a short tile of each size on one shape or the other
]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("xs,ws,kw", DIRECT_CASES)
def test_direct_path_matches_reference(xs, ws, kw, relu) -> None:
    """The direct convolution (no im2col) against the float64 reference, with and without the fused ReLU."""
    from kernels.conv import direct_applies

    args = {"stride": (1, 1), "pad": (0, 0), "dilation": (1, 1), "group": 1, **kw}
    assert direct_applies(xs, ws, args["stride"], args["pad"], args["dilation"], args["group"])
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32)
    b = rng.standard_normal(ws[0], dtype=np.float32)
    want = conv2d_forward_ref(x, w, b, **args)
    got = conv2d_forward(x, w, b, relu=relu, **args)
    _assert_close(got, np.maximum(want, 0.0) if relu else want, ws[1] * ws[2] * ws[3])


@pytest.mark.parametrize("xs,ws,kw", DIRECT_CASES)
def test_direct_and_gemm_paths_give_the_same_bits(monkeypatch, xs, ws, kw) -> None:
    """With K <= one K panel both paths sum the taps in the same order with the same FMAs, then add the bias: the
    direct path is a faster route to the same numbers, not other ones (longer K: equal within the tolerance)."""
    import kernels.conv as conv_module

    rng = np.random.default_rng(3)
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32)
    b = rng.standard_normal(ws[0], dtype=np.float32)
    direct = conv2d_forward(x, w, b, relu=True, **kw)
    monkeypatch.setattr(conv_module, "DIRECT", False)
    gemm_path = conv2d_forward(x, w, b, relu=True, **kw)
    k = ws[1] * ws[2] * ws[3]
    if k <= conv_module.KC_CONV:
        np.testing.assert_array_equal(direct, gemm_path)
    else:  # the GEMM path sums K in panels (LeNet conv2: 384 + 116 taps), then adds the panels: other roundings
        _assert_close(direct, gemm_path.astype(np.float64), k)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_direct_path_at_every_thread_count(threads) -> None:
    numba = pytest.importorskip("numba")
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"numba has {numba.config.NUMBA_NUM_THREADS} threads")
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 20, 12, 12), dtype=np.float32)
    w = rng.standard_normal((50, 20, 5, 5), dtype=np.float32)
    b = rng.standard_normal(50, dtype=np.float32)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        got = [conv2d_forward(x[:n], w, b, relu=True) for n in (1, 3)]
    finally:
        numba.set_num_threads(before)
    for n, g in zip((1, 3), got):
        _assert_close(g, np.maximum(conv2d_forward_ref(x[:n], w, b), 0.0), 500)


def test_direct_applies_only_where_it_can() -> None:
    from kernels.conv import direct_applies

    one = ((1, 1), (0, 0), (1, 1))
    assert direct_applies((1, 1, 28, 28), (20, 1, 5, 5), *one)  # 24-pixel rows
    assert not direct_applies((1, 96, 27, 27), (256, 48, 5, 5), (1, 1), (2, 2), (1, 1), 2)  # CaffeNet conv2: 27
    assert not direct_applies((1, 3, 227, 227), (96, 3, 11, 11), (4, 4), (0, 0), (1, 1))  # horizontal stride 4
    assert not direct_applies((1, 64, 66, 66), (64, 64, 3, 3), *one)  # 64 x 66 x 66 floats: past L2


# ---------------------------------------------------------------------------------------------- capped ReLU
CAP_CASES = [  # x shape, w shape, kwargs: one per forward path, with cap 1.0 so some outputs are cut from above
    ((2, 3, 32, 32), (13, 3, 5, 5), {"pad": (2, 2)}),  # the direct path
    ((1, 4, 11, 11), (6, 2, 3, 3), {"stride": (2, 1), "pad": (1, 1), "group": 2}),  # one image: im2col + GEMM tiles
    ((3, 4, 11, 11), (6, 2, 3, 3), {"stride": (2, 1), "pad": (1, 1), "group": 2}),  # an uneven batch: the same
    ((8, 4, 11, 11), (6, 2, 3, 3), {"stride": (2, 1), "pad": (1, 1), "group": 2}),  # the batch path
    ((1, 8, 9, 9), (8, 1, 3, 3), {"pad": (1, 1), "group": 8}),  # depthwise through the GEMM path
]


@pytest.mark.parametrize("xs,ws,kw", CAP_CASES)
def test_relu_max_clips_the_output(xs, ws, kw) -> None:
    """ForwardRunner(..., relu=True, relu_max=cap) and conv2d_forward(..., relu_max=cap): min(max(y, 0), cap) of the
    reference, on every forward path."""
    from kernels.conv import ForwardRunner, direct_applies

    args = {"stride": (1, 1), "pad": (0, 0), "dilation": (1, 1), "group": 1, **kw}
    assert direct_applies(xs, ws, *(args[k] for k in ("stride", "pad", "dilation", "group"))) == (xs[1] == 3)
    rng = np.random.default_rng(sum(xs))
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32)
    b = rng.standard_normal(ws[0], dtype=np.float32)
    want = conv2d_forward_ref(x, w, b, dtype=np.float64, **args)
    run = ForwardRunner(xs, ws, args["stride"], args["pad"], args["dilation"], args["group"], True, relu_max=1.0)
    got = np.empty(run.out_shape, np.float32)
    run(x, w, b, got)
    clipped = np.minimum(np.maximum(want, 0.0), 1.0)
    assert (want > 1.0).any() and (want < 0.0).any()
    _assert_close(got, clipped, ws[1] * ws[2] * ws[3])
    assert got.max() <= 1.0 and got.min() >= 0.0
    plain = conv2d_forward(x, w, b, relu=True, **args)  # the cap is a min on top of the same ReLU: same bits below
    np.testing.assert_array_equal(got, np.minimum(plain, np.float32(1.0)))
    np.testing.assert_array_equal(conv2d_forward(x, w, b, relu=True, relu_max=1.0, **args), got)


def test_relu_max_inf_is_the_plain_relu() -> None:
    from kernels.conv import ForwardRunner

    rng = np.random.default_rng(21)
    x = rng.standard_normal((1, 6, 9, 9), dtype=np.float32)
    w = rng.standard_normal((8, 3, 3, 3), dtype=np.float32)
    b = rng.standard_normal(8, dtype=np.float32)
    run = ForwardRunner(x.shape, w.shape, (1, 1), (1, 1), (1, 1), 2, True, relu_max=float("inf"))
    got = np.empty(run.out_shape, np.float32)
    run(x, w, b, got)
    np.testing.assert_array_equal(got, conv2d_forward(x, w, b, pad=1, group=2, relu=True))


@pytest.mark.parametrize(
    "relu,relu_max,match",
    [(False, 6.0, "expected relu=True"), (True, -1.0, "relu_max >= 0"), (True, float("nan"), "relu_max >= 0")],
)
def test_relu_max_errors(relu, relu_max, match) -> None:
    from kernels.conv import ForwardRunner

    with pytest.raises(ValueError, match=match):
        ForwardRunner((1, 2, 5, 5), (3, 2, 3, 3), (1, 1), (0, 0), (1, 1), 1, relu, relu_max)
    with pytest.raises(ValueError, match=match):
        conv2d_forward(np.zeros((1, 2, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32), None, relu=relu,
                       relu_max=relu_max)  # fmt: skip


@pytest.mark.parametrize(
    ("nc", "kh", "kw", "oh", "ow"),
    [(20, 5, 5, 8, 8), (3, 3, 3, 5, 7), (5, 1, 1, 4, 16), (1, 2, 4, 6, 13), (7, 5, 3, 1, 1)],
)
def test_col2im_rows_is_zeroing_and_col2im_bit_for_bit(nc, kh, kw, oh, ow) -> None:
    """_col2im_rows (stride and dilation 1, rows of at most COL2IM_ROW floats summed in registers, COL2IM_CHAINS
    channels at a time: 20 = 5 x 4, and 3, 5, 1, 7 channels that leave a partial group) writes what zeroing the
    target and _col2im's scatter-adds write, bit for bit, and nothing past its planes."""
    from numba import njit

    from kernels.conv import COL2IM_ROW, _col2im, _col2im_rows

    th, tw = oh + kh - 1, ow + kw - 1
    assert tw <= COL2IM_ROW

    @njit
    def rows(dcols, tgt, off):
        _col2im_rows(dcols, oh * ow, nc, kh, kw, oh, ow, th, tw, tgt, off)

    rng = np.random.default_rng(nc * 100 + kh * 10 + kw)
    dcols = rng.standard_normal(nc * kh * kw * oh * ow, dtype=np.float32)
    want = np.zeros(nc * th * tw + 10, np.float32)
    want[-7:] = 9.0
    got = np.full_like(want, np.nan)
    got[-7:] = 9.0
    _col2im(dcols, oh * ow, nc, kh, kw, 1, 1, 1, 1, oh, ow, th, tw, want, 3)
    rows(dcols, got, 3)
    assert np.array_equal(got[3:-7], want[3:-7]) and np.isnan(got[:3]).all() and (got[-7:] == 9.0).all()


@pytest.mark.parametrize(
    "stride,kernel,hp,wp,extra",
    [
        (1, 3, 22, 22, 0),
        (2, 3, 35, 35, 0),
        (4, 11, 67, 67, 0),
        (4, 5, 49, 49, 0),
        (2, 1, 4, 5, 64),  # output 2 x 3: a last sliver of 6 pixels over two rows
        (1, 3, 4, 5, 64),
        (2, 3, 25, 7, 500),  # output 12 x 3
        (4, 1, 6, 6, 64),
        (1, 5, 6, 6, 500),
        (2, 3, 9, 41, 500),
        (1, 3, 15, 15, 0),  # 13 x 13 (CaffeNet's conv3-5): slivers over 2-3 output rows, _segments16
        (1, 3, 16, 16, 0),  # 14 x 14
        (1, 3, 10, 12, 64),  # 8 x 10
        (1, 3, 9, 9, 0),  # 7 x 7: a sliver over 4 rows, gathered
        (1, 1, 13, 13, 0),
    ],
)
def test_im2col_slivers_against_numpy(stride: int, kernel: int, hp: int, wp: int, extra: int) -> None:
    """The packed im2col (`_im2col_packed`) of one padded image against the same gather in NumPy: whole 8-pixel runs
    of an output row copied (stride 1) or loaded and shuffled (stride 2, 4: `_strided8_*`), at stride 1 the slivers
    over up to 3 output rows by masked loads (`_segments16`), the others gathered. src
    sized exactly (the last runs must fall back where the vector loads would read past its end) or followed by other
    data (a batch); narrow outputs whose last sliver's pixels span rows (the runs must not be taken there)."""
    from kernels import conv
    from kernels.gemm import NR

    assert conv.STRIDED_RUNS and conv.SEGMENTS
    rng = np.random.default_rng(hp * wp + extra)
    c = 3
    src = rng.standard_normal(c * hp * wp + extra, dtype=np.float32)
    oh, ow = (hp - kernel) // stride + 1, (wp - kernel) // stride + 1
    k_all, npix = c * kernel * kernel, oh * ow
    slivers = -(-npix // NR)
    dst = np.full(slivers * k_all * NR, np.nan, np.float32)
    conv._im2col_packed(src, 0, hp, wp, c, kernel, kernel, stride, stride, 1, 1, oh, ow, dst, 0)
    img = src[: c * hp * wp].reshape(c, hp, wp)
    cols = np.zeros((k_all, slivers * NR), np.float32)
    for ci in range(c):
        for i in range(kernel):
            for j in range(kernel):
                taps = img[ci, i : i + stride * oh : stride, j : j + stride * ow : stride]
                cols[(ci * kernel + i) * kernel + j, :npix] = taps.reshape(-1)
    want = cols.reshape(k_all, slivers, NR).transpose(1, 0, 2).reshape(-1)
    np.testing.assert_array_equal(dst, want)


@pytest.mark.parametrize(
    "h,w,kernel,pad,dil",
    [(13, 13, 3, 1, 1), (14, 14, 3, 1, 1), (8, 10, 3, 1, 1), (13, 13, 5, 2, 1), (9, 12, 3, 2, 2), (13, 13, 3, 0, 1),
     (11, 9, 7, 3, 1), (10, 10, 1, 1, 1), (12, 12, 3, 4, 1)],
)  # fmt: skip
def test_im2col_from_the_unpadded_image(h, w, kernel, pad, dil) -> None:
    """The packed im2col read from the image itself, its zero border as masks (`_im2col_unpadded_worker`), against
    the padded path's (`_pad_copy` + `_im2col_packed`) on the same image: the same values, two groups."""
    from kernels import conv
    from kernels.gemm import NR

    rng = np.random.default_rng(h * w + kernel + pad)
    group, cg = 2, 3
    img = rng.standard_normal(group * cg * h * w, dtype=np.float32)
    hp, wp = h + 2 * pad, w + 2 * pad
    ext = dil * (kernel - 1) + 1
    oh, ow = hp - ext + 1, wp - ext + 1
    assert conv.unpadded_applies((1, 1), (kernel, kernel), ow)
    assert not conv.unpadded_applies((1, 1), (kernel, kernel), 7)  # a sliver over 4 rows: the padded path
    assert not conv.unpadded_applies((2, 2), (kernel, kernel), ow) and not conv.unpadded_applies((1, 1), (9, 9), ow)
    k_all, npix = cg * kernel * kernel, oh * ow
    b_size = -(-npix // NR) * k_all * NR
    got = np.full(group * b_size, np.nan, np.float32)
    conv._IM2COL_UNPADDED.serial(
        conv._IM2COL_UNPADDED.address, 1, img, h, w, pad, pad, group, cg, kernel, kernel, dil, dil, oh, ow, got,
        b_size, 1
    )  # fmt: skip
    want = np.full_like(got, np.nan)
    padded = np.empty(cg * hp * wp, np.float32)
    for g in range(group):
        conv._pad_copy(img, g * cg * h * w, cg, h, w, pad, pad, padded)
        conv._im2col_packed(padded, 0, hp, wp, cg, kernel, kernel, 1, 1, dil, dil, oh, ow, want, g * b_size)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "x_shape,w_shape,stride,pad",
    [
        ((2, 1, 25, 7), (4, 1, 3, 3), 2, 0),
        ((2, 3, 4, 4), (8, 3, 3, 3), 2, 1),
        ((1, 3, 6, 6), (8, 3, 3, 3), 2, 0),
        ((2, 3, 6, 6), (8, 3, 1, 1), 4, 0),
        ((2, 3, 6, 6), (8, 3, 5, 5), 1, 0),
        ((1, 1, 4, 5), (4, 1, 3, 3), 1, 0),
    ],
)
def test_narrow_outputs_match_reference(x_shape, w_shape, stride, pad) -> None:
    """Outputs a few pixels wide, whose last im2col sliver spans output rows (a review found these wrong: the vector
    runs were taken on the clamped offsets of its padding pixels), against the float64 reference."""
    rng = np.random.default_rng(sum(x_shape))
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = rng.standard_normal(w_shape, dtype=np.float32)
    b = rng.standard_normal(w_shape[0], dtype=np.float32)
    got = conv2d_forward(x, w, b, stride=stride, pad=pad)
    want = conv2d_forward_ref(x, w, b, stride=stride, pad=pad)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize(
    "n_imgs,c,h,w_,k,stride,s",
    [
        (6, 20, 12, 12, 5, 1, 0),  # LeNet conv2's chunk of 6 images: rows of 8 (one run of 8 pixels)
        (2, 3, 9, 18, 3, 1, 1),  # OW = 16: two runs; the second sliver's last offsets past K = 27
        (1, 2, 7, 17, 3, 1, 0),  # OW = 15: one run and 7 pixels one at a time
        (2, 2, 9, 21, 3, 2, 0),  # stride 2: every pixel one at a time
    ],
)
def test_transposed_im2col_sliver_matches_numpy(n_imgs, c, h, w_, k, stride, s) -> None:
    """The transposed packed im2col of dW's GEMM (`_im2col_t_sliver`) against the same gather in NumPy: at stride 1
    whole runs of 8 pixels by transposes in registers (`_gather_t16` with 16-float vectors, else two `_gather_t8`),
    the rest and other strides one pixel at a time; the offsets past K zero; nothing written outside the sliver."""
    from numba import njit

    from kernels import conv

    rng = np.random.default_rng(7)
    x = rng.standard_normal((n_imgs, c, h, w_)).astype(np.float32)
    oh, ow = (h - k) // stride + 1, (w_ - k) // stride + 1
    k_all, q_all = c * k * k, n_imgs * oh * ow
    cols = np.zeros((-(-k_all // conv.NR) * conv.NR, q_all), np.float32)  # rows: kernel offsets (c, i, j); zero past K
    for img in range(n_imgs):
        for ci in range(c):
            for i in range(k):
                for j in range(k):
                    win = x[img, ci, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride]
                    cols[(ci * k + i) * k + j, img * oh * ow : (img + 1) * oh * ow] = win.reshape(-1)
    dst = np.full(q_all * conv.NR + 5, np.nan, np.float32)

    @njit
    def sliver(xf, dst):
        conv._im2col_t_sliver(xf, 0, c * h * w_, n_imgs, h, w_, k, k, stride, stride, 1, 1, oh, ow, k_all, dst, 3, s)

    sliver(x.reshape(-1), dst)
    want = cols[s * conv.NR : (s + 1) * conv.NR].T.reshape(-1)  # dst[3 + q*NR + j] = cols[s*NR + j, q]
    assert np.array_equal(dst[3 : 3 + q_all * conv.NR], want)
    assert np.isnan(dst[:3]).all() and np.isnan(dst[3 + q_all * conv.NR :]).all()


@pytest.mark.parametrize(
    "n, m, npix, g0, mg, n0, cnt",
    [
        (64, 50, 64, 0, 50, 4, 6),  # LeNet conv2: 4 whole slivers by transposes, the last (2 rows) one by one
        (5, 96, 13, 24, 48, 1, 3),  # a group's rows; 13 pixels: one run of 8, 5 one by one
        (3, 20, 100, 0, 12, 0, 3),  # one whole sliver
        (2, 40, 9, 20, 20, 1, 1),  # 20 rows: one whole sliver and 8 rows one by one
    ],
)
@pytest.mark.parametrize("pack, add_db", [(True, True), (True, False), (False, True)])
def test_pack_dy_rows_matches_numpy(n, m, npix, g0, mg, n0, cnt, pack, add_db) -> None:
    """dW's A operand (`_pack_dy_rows`: dy rows in MR-row slivers, whole slivers by 8 x 8 transposes) equals the
    same packing in NumPy exactly, zero past the group's rows and nothing written past the slivers; db gets the row
    sums in the kernel's written-out order (8 lane partials, images in order), bit for bit."""
    from kernels import conv
    from kernels.gemm import packed_a_size

    rng = np.random.default_rng(1)
    dy = rng.standard_normal((n, m, npix)).astype(np.float32)
    q = cnt * npix
    slivers = -(-mg // conv.MR)
    dst = np.full(packed_a_size(mg, q) + 5, 7.0, np.float32)
    db = np.ones(m, np.float32)
    conv._pack_dy_rows(dy.reshape(-1), n0, cnt, m, g0, mg, npix, pack, add_db, dst, db)
    rows = np.zeros((slivers * conv.MR, q), np.float32)
    rows[:mg] = dy[n0 : n0 + cnt, g0 : g0 + mg].transpose(1, 0, 2).reshape(mg, q)
    if pack:
        want = rows.reshape(slivers, conv.MR, q).transpose(0, 2, 1).reshape(-1)
        assert np.array_equal(dst[: want.size], want)
        assert (dst[packed_a_size(mg, q) :] == 7.0).all()
    else:
        assert (dst == 7.0).all()
    part = np.zeros((mg, 8), np.float32)
    for img in range(cnt):
        for p in range(npix):
            part[:, p & 7] += dy[n0 + img, g0 : g0 + mg, p]
    want_db = np.ones(m, np.float32)
    if add_db:
        want_db[g0 : g0 + mg] += ((part[:, 0] + part[:, 1]) + (part[:, 2] + part[:, 3])) + (
            (part[:, 4] + part[:, 5]) + (part[:, 6] + part[:, 7])
        )
    assert np.array_equal(db, want_db)
