"""kernels.depthwise against its float64 NumPy reference (and conv2d_forward with group = C, and torch when it imports).

Forward: every depthwise layer of EfficientNet-Lite0 at batch 1 and 2 (stride 2 in Caffe's form of TF's SAME padding:
a (k+1)x(k+1) kernel with a zero first row and column), then odd sizes, pads, strides and dilations; the fused clip.
Backward: the NumPy reference against float64 central differences of the NumPy forward, then the Numba backward
(float32) against that reference, then the overwrite (dx) / accumulate (dw, db) contract.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels.conv import conv2d_forward, conv2d_output_shape
from kernels.depthwise import (
    DepthwiseRunner,
    depthwise_applies,
    depthwise_backward,
    depthwise_backward_ref,
    depthwise_forward,
    depthwise_forward_ref,
)
from tests.gradcheck import assert_grad_close, numeric_grad

# Forward: max |err| <= RTOL * sqrt(T) * max(max|ref|, 1), T = kh*kw products summed in float32 per output. Measured
# over the forward cases below at 2 threads: max |err| / (sqrt(T) * max(max|ref|, 1)) = 1.2e-7, 0.3 of this.
RTOL = 4e-7

# Backward, float32 against the float64 reference: the same form with n the number of products summed into one
# element (dx: kh*kw, dw and db: N*OH*OW; dw and db add each image's float32 sums in float64). Measured over
# BWD_CASES: 4.8e-8 (dx), 8.5e-9 (dw), 1.3e-8 (db), at most 0.25 of this.
RTOL_BWD = 2e-7

# Central differences of the float64 reference: the loss sum(g * y) is linear in x, w and b, so the step only meets
# rounding (~1e-16 * |L| / FD_H). Per element: |analytic - numeric| <= FD_ATOL + FD_RTOL * max(|a|, |n|, 1).
FD_H, FD_ATOL, FD_RTOL = 1e-3, 1e-8, 1e-7

LITE0 = [  # (C, H, k, stride) of EfficientNet-Lite0's depthwise layers at 224 x 224
    (32, 112, 3, 1),
    (96, 112, 3, 2),
    (144, 56, 3, 1),
    (144, 56, 5, 2),
    (240, 28, 5, 1),
    (240, 28, 3, 2),
    (480, 14, 3, 1),
    (480, 14, 5, 1),
    (672, 14, 5, 1),
    (672, 14, 5, 2),
    (1152, 7, 5, 1),
    (1152, 7, 3, 1),
]


def _caffe_weights(rng, c: int, k: int, stride: int) -> tuple[np.ndarray, int]:
    """Weights and pad of a TF SAME depthwise layer in Caffe's form: k x k, pad k//2 at stride 1; at stride 2 a
    (k+1)x(k+1) kernel whose first row and column are zero, pad k//2 (the zero row and column take up the one pixel
    of padding TF puts only at the bottom and right)."""
    w = rng.standard_normal((c, 1, k, k), dtype=np.float32)
    if stride == 2:
        w = np.pad(w, ((0, 0), (0, 0), (1, 0), (1, 0)))
    return w, k // 2


def _inputs(xs, ws, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32)
    b = rng.standard_normal(ws[0], dtype=np.float32) if bias else None
    return x, w, b


def _assert_close(got: np.ndarray, want: np.ndarray, terms: int, rtol: float = RTOL, what: str = "y") -> None:
    assert got.shape == want.shape and got.dtype == np.float32 and got.flags.c_contiguous, what
    tol = rtol * np.sqrt(terms) * max(float(np.abs(want).max()), 1.0)
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= tol, f"{what}: max abs err {err:.3e} > tol {tol:.3e}"


# ---------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("c,h,k,stride", LITE0)
def test_lite0_layers_match_reference(c, h, k, stride, n, path) -> None:
    rng = np.random.default_rng(c + h + k)
    x = rng.standard_normal((n, c, h, h), dtype=np.float32)
    w, pad = _caffe_weights(rng, c, k, stride)
    b = rng.standard_normal(c, dtype=np.float32)
    got = depthwise_forward(x, w, b, stride=stride, pad=pad, act=(0.0, 6.0))
    assert got.shape == (n, c, h // stride, h // stride)
    _assert_close(got, depthwise_forward_ref(x, w, b, stride=stride, pad=pad, act=(0.0, 6.0)), k * k)


@pytest.mark.parametrize("k", [3, 5])
def test_caffe_stride2_form_is_tf_same_padding(k) -> None:
    """The (k+1)x(k+1) kernel with a zero first row and column and symmetric pad k//2 is TF's SAME convolution: the
    k x k kernel over the image padded by k//2 - 1 on top and left and k//2 at the bottom and right."""
    rng = np.random.default_rng(k)
    x = rng.standard_normal((2, 5, 14, 14), dtype=np.float32)
    w, pad = _caffe_weights(rng, 5, k, 2)
    lo = k // 2 - 1
    x_tf = np.pad(x, ((0, 0), (0, 0), (lo, lo + 1), (lo, lo + 1)))
    want = depthwise_forward_ref(x_tf, w[:, :, 1:, 1:], None, stride=2)
    _assert_close(depthwise_forward(x, w, None, stride=2, pad=pad), want, k * k)


ODD_CASES = [  # x shape, w shape, stride, pad, dilation
    ((1, 3, 9, 9), (3, 1, 3, 3), 1, 0, 1),
    ((2, 5, 11, 7), (5, 1, 3, 3), 2, 1, 1),  # odd sizes at stride 2
    ((1, 4, 13, 10), (4, 1, 4, 4), 2, 2, 1),  # k = 4 (random: a nonzero first row), odd H
    ((2, 3, 15, 9), (3, 1, 6, 6), 2, 3, 1),  # k = 6, pad 3
    ((1, 2, 6, 5), (2, 1, 6, 6), 1, 3, 1),  # k = 6 at stride 1, padding past the image
    ((1, 3, 4, 4), (3, 1, 3, 3), 1, 3, 1),  # pad 3 > k - 1: outputs that see only padding
    ((2, 3, 12, 17), (3, 1, 3, 2), 3, 0, (2, 1)),  # stride 3, dilation, rectangular kernel
    ((1, 3, 12, 17), (3, 1, 3, 4), (1, 3), (3, 0), (1, 2)),  # horizontal stride 3: three phases
    ((1, 6, 8, 33), (6, 1, 5, 5), (2, 1), (2, 2), 1),  # vertical stride only; 33-pixel rows: a partial 8-pixel run
    ((3, 7, 1, 1), (7, 1, 1, 1), 1, 0, 1),  # 1 x 1 planes
    ((2, 9, 16, 16), (9, 1, 1, 1), 2, 0, 1),  # 1 x 1 kernel at stride 2
    ((1, 2, 40, 3), (2, 1, 3, 3), 1, 1, 1),  # 3-pixel rows: runs of three, 13 runs of the last row partial
    ((1, 1, 64, 64), (1, 1, 7, 7), 1, 3, 1),  # one channel: a single task
]


@pytest.fixture(params=["default", "plane", "c8"])
def path(request, monkeypatch):
    """The forward path: the default choice, or every shape forced through one path (plane by plane: _dw_worker;
    blocks of 8 channels: _c8_worker)."""
    import kernels.depthwise as dw_module

    if request.param == "plane":
        monkeypatch.setattr(dw_module, "C8", False)
    elif request.param == "c8":
        monkeypatch.setattr(dw_module, "C8_MAX_PIXELS", 1 << 30)
        monkeypatch.setattr(dw_module, "C8_MAX_PIXELS_STRIDED", 1 << 30)
    return request.param


@pytest.mark.parametrize("xs,ws,stride,pad,dil", ODD_CASES)
def test_odd_shapes_match_reference(xs, ws, stride, pad, dil, path) -> None:
    x, w, b = _inputs(xs, ws, seed=sum(xs))
    kw = {"stride": stride, "pad": pad, "dilation": dil}
    want = depthwise_forward_ref(x, w, b, **kw)
    assert want.dtype == np.float64
    _assert_close(depthwise_forward(x, w, b, **kw), want, ws[2] * ws[3])


@pytest.mark.parametrize("pad", [0, 1, 2, 3])
@pytest.mark.parametrize("k", [4, 6])
def test_zero_first_row_and_column_at_every_pad(k, pad, path) -> None:
    """Kernels with zero taps (dropped from the tap table) at pads 0-3, strides 1 and 2, odd sizes."""
    rng = np.random.default_rng(k * 10 + pad)
    x = rng.standard_normal((2, 6, 13, 11), dtype=np.float32)
    w, _ = _caffe_weights(rng, 6, k - 1, 2)
    w[2] = 0.0  # a channel with no taps at all: its output is the bias
    b = rng.standard_normal(6, dtype=np.float32)
    for stride in (1, 2):
        got = depthwise_forward(x, w, b, stride=stride, pad=pad)
        _assert_close(got, depthwise_forward_ref(x, w, b, stride=stride, pad=pad), k * k)
        assert (got[:, 2] == b[2]).all()


@pytest.mark.parametrize("l2", [512 << 10, 2 << 20])
def test_path_choice(monkeypatch, l2) -> None:
    """Blocks of channels for small planes, stride-2 planes whose two buffers take half of L2 at most (56 x 56 with Zen
    3's 512 KB, 112 x 112 with 2 MB) and, with blocks of 16, stride-1 planes whose two take a quarter (56 x 56 with 2
    MB); plane by plane for large ones."""
    from kernels import depthwise as dw

    monkeypatch.setattr(dw, "C8_MAX_PIXELS_STRIDED", max(4096, l2 // 128))
    monkeypatch.setattr(dw, "C8_MAX_PIXELS", max(2048, l2 // 512) if dw.LANES == 16 else 2048)
    rng = np.random.default_rng(0)
    chosen = []
    for c, h, k, stride in LITE0:
        w, pad = _caffe_weights(rng, 1, k, stride)
        chosen.append(DepthwiseRunner((1, c, h, h), (c, *w.shape[1:]), stride, pad).c8)
    big = l2 >= 2 << 20
    assert chosen == [False, big, big and dw.LANES == 16, True, True, True, True, True, True, True, True, True]


def test_reference_by_hand() -> None:
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    w = np.stack([np.ones((1, 2, 2)), np.full((1, 2, 2), 2.0)]).astype(np.float32)
    y = depthwise_forward_ref(x, w, np.array([1.0, -1.0]), stride=2)
    np.testing.assert_array_equal(
        y[0, 0], [[0 + 1 + 4 + 5 + 1, 2 + 3 + 6 + 7 + 1], [8 + 9 + 12 + 13 + 1, 10 + 11 + 14 + 15 + 1]]
    )
    np.testing.assert_array_equal(y[0, 1], 2 * (y[0, 0] - 1 + 4 * 16) - 1)


def test_matches_grouped_convolution_and_torch() -> None:
    """The same numbers as conv2d_forward with group = C (im2col + GEMM per group) and torch's grouped conv2d."""
    x, w, b = _inputs((2, 24, 15, 15), (24, 1, 5, 5), seed=4)
    got = depthwise_forward(x, w, b, stride=2, pad=2)
    _assert_close(got, conv2d_forward(x, w, b, stride=2, pad=2, group=24).astype(np.float64), 25)
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        want = torch.nn.functional.conv2d(*map(torch.from_numpy, (x, w, b)), stride=2, padding=2, groups=24).numpy()
    _assert_close(got, want.astype(np.float64), 25)


@pytest.mark.parametrize("act", [(0.0, 6.0), (0.0, float("inf")), (-0.5, 0.25), (1.0, 1.0)])
def test_fused_clip(act, path) -> None:
    x, w, b = _inputs((2, 8, 10, 10), (8, 1, 3, 3), seed=5)
    plain = depthwise_forward(x, w, b, pad=1)
    got = depthwise_forward(x, w, b, pad=1, act=act)
    lo, hi = act
    assert (plain < lo).any() and (np.isinf(hi) or (plain > hi).any())
    np.testing.assert_array_equal(got, np.minimum(np.maximum(plain, np.float32(lo)), np.float32(hi)))  # same sum
    _assert_close(got, depthwise_forward_ref(x, w, b, pad=1, act=act), 9)


def test_clip_keeps_nan(path) -> None:
    x, w, b = _inputs((1, 2, 6, 6), (2, 1, 3, 3), seed=6)
    x[0, 1, 2, 2] = np.nan
    got = depthwise_forward(x, w, b, pad=1, act=(0.0, 6.0))
    assert np.isnan(got[0, 1, 1:4, 1:4]).all() and np.isnan(got).sum() == 9


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_thread_count(threads, path) -> None:
    numba = pytest.importorskip("numba")
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"numba has {numba.config.NUMBA_NUM_THREADS} threads")
    x, w, b = _inputs((3, 37, 9, 9), (37, 1, 3, 3), seed=7)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        got = [depthwise_forward(x[:n], w, b, stride=2, pad=1, act=(0.0, 6.0)) for n in (1, 3)]
        grads = depthwise_backward(x[:, :, :5, :5], x, w, stride=2, pad=1)
    finally:
        numba.set_num_threads(before)
    for n, g in zip((1, 3), got):
        _assert_close(g, depthwise_forward_ref(x[:n], w, b, stride=2, pad=1, act=(0.0, 6.0)), 9)
    want = depthwise_backward_ref(x[:, :, :5, :5], x, w, stride=2, pad=1)
    for g, r, terms, what in zip(grads, want, (9, 75, 75), ("dx", "dw", "db")):
        _assert_close(g, r, terms, RTOL_BWD, what)


def test_runner_reused_with_new_weights_and_inputs(path) -> None:
    rng = np.random.default_rng(8)
    for n in (1, 4):
        run = DepthwiseRunner((n, 10, 12, 12), (10, 1, 4, 4), 2, 1, (0.0, 6.0))
        out = np.empty(run.out_shape, np.float32)
        assert run.out_shape == (n, 10, 6, 6)
        for _ in range(3):
            x = rng.standard_normal((n, 10, 12, 12), dtype=np.float32)
            w = rng.standard_normal((10, 1, 4, 4), dtype=np.float32)
            w[: n + 2, :, 0] = 0.0  # which taps are zero changes from call to call
            b = rng.standard_normal(10, dtype=np.float32)
            run(x, w, b, out)
            _assert_close(out, depthwise_forward_ref(x, w, b, stride=2, pad=1, act=(0.0, 6.0)), 16)


def test_frozen_runner_keeps_tap_tables_per_weight_arrays() -> None:
    """frozen (a plan's folded weights): the channel-block tap tables are made once per (w, bias) pair of arrays and
    give the same bits as tables made per call; a new array (Net.refold) gets new tables."""
    rng = np.random.default_rng(9)
    xs, ws = (2, 20, 14, 14), (20, 1, 6, 6)  # stride 2, TF SAME form: zero first row and column
    frozen = DepthwiseRunner(xs, ws, 2, 2, (0.0, 6.0), frozen=True)
    fresh = DepthwiseRunner(xs, ws, 2, 2, (0.0, 6.0))
    assert frozen.c8
    got, want = np.empty(frozen.out_shape, np.float32), np.empty(fresh.out_shape, np.float32)
    x = rng.standard_normal(xs, dtype=np.float32)
    for _ in range(2):  # new weight arrays each time; each kept for two calls
        w = rng.standard_normal(ws, dtype=np.float32)
        w[:, :, 0], w[:, :, :, 0] = 0.0, 0.0
        w[3] = 0.0  # a channel with no taps at all
        b = rng.standard_normal(20, dtype=np.float32)
        for _ in range(2):
            frozen(x, w, b, got)
            fresh(x, w, b, want)
            assert np.array_equal(got, want)
            assert frozen.tables[0] is w and frozen.tables[1] is b
        _assert_close(got, depthwise_forward_ref(x, w, b, stride=2, pad=2, act=(0.0, 6.0)), 25)


def test_out_argument_and_bias_none() -> None:
    x, w, _ = _inputs((2, 3, 6, 6), (3, 1, 3, 3))
    got = depthwise_forward(x, w, None)
    out = np.full_like(got, np.nan)
    assert depthwise_forward(x, w, None, out=out) is out
    np.testing.assert_array_equal(out, got)
    _assert_close(got, depthwise_forward_ref(x, w, None), 9)


def test_applies() -> None:
    assert depthwise_applies((1, 32, 112, 112), (32, 1, 3, 3), 32, (1, 1))
    assert depthwise_applies((2, 8, 5, 5), (8, 1, 6, 6), 8, 2)
    assert not depthwise_applies((1, 32, 112, 112), (64, 1, 3, 3), 32, 1)  # channel multiplier 2
    assert not depthwise_applies((1, 32, 112, 112), (32, 32, 3, 3), 1, 1)  # a dense convolution
    assert not depthwise_applies((1, 32, 112, 112), (32, 2, 3, 3), 16, 1)  # groups of 2 channels
    assert not depthwise_applies((1, 1, 28, 28), (20, 1, 5, 5), 1, 1)  # LeNet conv1: one group, 20 filters


@pytest.mark.parametrize(
    "xs,ws,b,kwargs,match",
    [
        ((8, 8, 8), (8, 1, 3, 3), None, {}, r"x of rank 4 \(N, C, H, W\), got shape \(8, 8, 8\)"),
        ((1, 8, 8, 8), (8, 2, 3, 3), None, {}, r"w of shape \(8, 1, kh, kw\) for x of 8 channels.*got \(8, 2, 3, 3\)"),
        ((1, 8, 8, 8), (4, 1, 3, 3), None, {}, r"w of shape \(8, 1, kh, kw\)"),
        ((1, 8, 8, 8), (8, 1, 3), None, {}, r"w of shape \(8, 1, kh, kw\)"),
        ((1, 8, 8, 8), (8, 1, 3, 3), (7,), {}, r"bias of shape \(8,\), got \(7,\)"),
        ((1, 8, 8, 8), (8, 1, 9, 9), None, {}, "output would be 0x0"),
        ((1, 8, 8, 8), (8, 1, 3, 3), None, {"stride": 0}, "stride"),
        ((1, 8, 8, 8), (8, 1, 3, 3), None, {"pad": -1}, "pad >= 0"),
        ((1, 8, 8, 8), (8, 1, 3, 3), None, {"act": (6.0, 0.0)}, r"lo <= hi .*got \(6.0, 0.0\)"),
        ((1, 8, 8, 8), (8, 1, 3, 3), None, {"act": 6.0}, "act as None or a"),
        ((1, 8, 8, 8), (8, 1, 3, 3), None, {"act": (0.0, float("nan"))}, "lo <= hi"),
        ((1, 8, 8, 8), (8, 1, 3, 3), None, {"out": np.zeros((1, 8, 6, 5), np.float32)}, r"out to be .*\(1, 8, 6, 6\)"),
        ((1, 8, 8, 8), (8, 1, 3, 3), None, {"out": np.zeros((1, 8, 6, 6))}, "out to be a C-contiguous float32"),
    ],
)
def test_forward_errors(xs, ws, b, kwargs, match) -> None:
    bias = None if b is None else np.zeros(b, np.float32)
    with pytest.raises(ValueError, match=match):
        depthwise_forward(np.zeros(xs, np.float32), np.zeros(ws, np.float32), bias, **kwargs)


def test_out_overlapping_x_is_an_error() -> None:
    x = np.zeros((1, 4, 6, 6), np.float32)
    with pytest.raises(ValueError, match="out shares memory with x"):
        depthwise_forward(x, np.zeros((4, 1, 1, 1), np.float32), None, out=x)


# ---------------------------------------------------------------------------------------------- backward
FD_CASES = [  # x shape, w shape, stride, pad, dilation
    ((2, 3, 6, 5), (3, 1, 3, 3), 1, 1, 1),
    ((1, 2, 7, 8), (2, 1, 4, 4), 2, 2, 1),  # the Caffe stride-2 shape (random first row here)
    ((2, 2, 7, 7), (2, 1, 2, 3), (1, 2), (1, 0), (2, 1)),  # dilation, rectangular kernel
    ((1, 3, 5, 5), (3, 1, 1, 1), 3, 0, 1),  # stride > kernel: some inputs get no gradient
]


@pytest.mark.parametrize("xs,ws,stride,pad,dil", FD_CASES)
def test_backward_ref_matches_finite_differences(xs, ws, stride, pad, dil) -> None:
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    kw = {"stride": stride, "pad": pad, "dilation": dil}
    g = rng.standard_normal(depthwise_forward_ref(x, w, b, **kw).shape)

    def loss(_) -> float:
        return float(np.sum(g * depthwise_forward_ref(x, w, b, **kw)))

    dx, dw, db = depthwise_backward_ref(g, x, w, **kw)
    assert dx.dtype == dw.dtype == db.dtype == np.float64
    for analytic, arr, what in ((dx, x, "dx"), (dw, w, "dw"), (db, b, "db")):
        assert_grad_close(analytic, numeric_grad(loss, arr, FD_H), atol=FD_ATOL, rtol=FD_RTOL, what=what)


BWD_CASES = [  # x shape, w shape, stride, pad, dilation
    ((2, 32, 28, 28), (32, 1, 3, 3), 1, 1, 1),
    ((1, 16, 28, 28), (16, 1, 4, 4), 2, 1, 1),  # Caffe's stride-2 3x3 (random first row)
    ((3, 8, 14, 14), (8, 1, 6, 6), 2, 2, 1),  # Caffe's stride-2 5x5
    ((2, 5, 11, 7), (5, 1, 5, 5), 1, 2, 1),
    ((1, 3, 12, 17), (3, 1, 3, 4), (1, 3), (3, 0), (1, 2)),  # stride 3, dilation
    ((2, 3, 4, 4), (3, 1, 3, 3), 1, 3, 1),  # padding past the image
    ((4, 2, 9, 9), (2, 1, 1, 1), 3, 0, 1),  # inputs no tap reads
    ((2, 6, 8, 33), (6, 1, 5, 5), (2, 1), (2, 2), 1),
]


@pytest.mark.parametrize("xs,ws,stride,pad,dil", BWD_CASES)
def test_backward_matches_reference(xs, ws, stride, pad, dil) -> None:
    kw = {"stride": stride, "pad": pad, "dilation": dil}
    x, w, _ = _inputs(xs, ws, seed=sum(xs), bias=False)
    oh, ow = conv2d_output_shape(xs[2:], ws[2:], stride, pad, dil)
    dy = np.random.default_rng(1).standard_normal((xs[0], xs[1], oh, ow), dtype=np.float32)
    dx, dw, db = depthwise_backward(dy, x, w, **kw)
    rdx, rdw, rdb = depthwise_backward_ref(dy, x, w, **kw)
    pixels = xs[0] * oh * ow
    _assert_close(dx, rdx, ws[2] * ws[3], RTOL_BWD, "dx")
    _assert_close(dw, rdw, pixels, RTOL_BWD, "dw")
    _assert_close(db, rdb, pixels, RTOL_BWD, "db")


def test_backward_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    x, w, b = _inputs((2, 12, 13, 13), (12, 1, 5, 5), seed=9)
    dy = np.random.default_rng(2).standard_normal((2, 12, 7, 7), dtype=np.float32)
    tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, w, b))
    torch.nn.functional.conv2d(tx, tw, tb, stride=2, padding=2, groups=12).backward(torch.from_numpy(dy))
    dx, dw, db = depthwise_backward(dy, x, w, stride=2, pad=2)
    for got, want, terms, what in ((dx, tx, 25, "dx"), (dw, tw, 98, "dw"), (db, tb, 98, "db")):
        _assert_close(got, want.grad.numpy().astype(np.float64), terms, RTOL_BWD * 4, what)


def test_backward_overwrites_dx_and_accumulates_dw_db() -> None:
    x, w, _ = _inputs((3, 5, 9, 8), (5, 1, 4, 4), seed=10, bias=False)
    w[:, :, 0] = 0.0  # a zero row still gets its gradient
    dy = np.random.default_rng(3).standard_normal((3, 5, 4, 4), dtype=np.float32)
    kw = {"stride": 2, "pad": 1}
    fresh_dx, fresh_dw, fresh_db = depthwise_backward(dy, x, w, **kw)
    assert np.abs(fresh_dw[:, :, 0]).min() > 0
    dx = np.full(x.shape, np.nan, np.float32)
    dw0 = np.random.default_rng(4).standard_normal(w.shape).astype(np.float32)
    db0 = np.random.default_rng(5).standard_normal(5).astype(np.float32)
    dw, db = dw0.copy(), db0.copy()
    got = depthwise_backward(dy, x, w, dx=dx, dw=dw, db=db, **kw)
    assert got[0] is dx and got[1] is dw and got[2] is db
    np.testing.assert_array_equal(dx, fresh_dx)  # overwritten, NaNs gone
    np.testing.assert_allclose(dw, dw0 + fresh_dw, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(db, db0 + fresh_db, rtol=1e-6, atol=1e-5)
    depthwise_backward(dy, x, w, dx=dx, dw=dw, db=db, **kw)  # again: dx the same, dw and db twice the step
    np.testing.assert_array_equal(dx, fresh_dx)
    np.testing.assert_allclose(dw, dw0 + 2 * fresh_dw, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(db, db0 + 2 * fresh_db, rtol=1e-6, atol=1e-5)


def test_backward_need_flags() -> None:
    x, w, _ = _inputs((2, 4, 6, 6), (4, 1, 3, 3), seed=11, bias=False)
    dy = np.random.default_rng(6).standard_normal((2, 4, 6, 6), dtype=np.float32)
    fresh = depthwise_backward(dy, x, w, pad=1)
    dx, dw, db = depthwise_backward(dy, x, w, pad=1, need_dx=False, need_db=False)
    assert dx is None and db is None
    np.testing.assert_array_equal(dw, fresh[1])
    dx, dw, db = depthwise_backward(dy, x, w, pad=1, need_dw=False)
    assert dw is None
    np.testing.assert_array_equal(dx, fresh[0])
    np.testing.assert_array_equal(db, fresh[2])
    assert depthwise_backward(dy, x, w, pad=1, need_dx=False, need_dw=False, need_db=False) == (None, None, None)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dx": np.zeros((2, 4, 6, 5), np.float32)}, r"dx to be a C-contiguous float32 array of shape \(2, 4, 6, 6\)"),
        ({"dx": np.zeros((2, 4, 6, 6), np.float64)}, "dx to be a C-contiguous float32"),
        ({"dw": np.zeros((4, 1, 3, 3), np.float32)[:, :, ::-1]}, "dw to be a C-contiguous"),
        ({"db": np.zeros(5, np.float32)}, r"db to be .* shape \(4,\)"),
        ({"db": np.zeros(4, np.float32), "need_db": False}, "db was given but need_db is False"),
        (
            {"dy": np.zeros((2, 4, 4, 4), np.float32)},
            r"dy of shape \(2, 4, 6, 6\) \(N, C, OH, OW\), got \(2, 4, 4, 4\)",
        ),
    ],
)
def test_backward_errors(kwargs, match) -> None:
    x, w, _ = _inputs((2, 4, 6, 6), (4, 1, 3, 3), bias=False)
    dy = kwargs.pop("dy", np.zeros((2, 4, 6, 6), np.float32))
    with pytest.raises(ValueError, match=match):
        depthwise_backward(dy, x, w, pad=1, **kwargs)


def test_backward_dx_aliasing_dy_is_an_error() -> None:
    x, w, _ = _inputs((1, 2, 5, 5), (2, 1, 3, 3), bias=False)
    dy = np.zeros((1, 2, 5, 5), np.float32)
    with pytest.raises(ValueError, match="dx shares memory with dy"):
        depthwise_backward(dy, x, w, pad=1, dx=dy)


def test_large_inputs_take_the_channel_blocks_at_any_plane_size() -> None:
    """Large planes go plane by plane while x is small (batch 1: from cache), in blocks of channels once x is
    C8_ANY_PLANE_X_BYTES or more (read from memory); which path runs never changes the bits (the forced-path tests)."""
    from kernels import depthwise as dw

    assert not dw.DepthwiseRunner((1, 32, 112, 112), (32, 1, 3, 3), (1, 1), (1, 1)).c8
    assert dw.DepthwiseRunner((1, 96, 112, 112), (96, 1, 4, 4), (2, 2), (1, 1)).c8 == (dw.C8_MAX_PIXELS_STRIDED >= 114**2)
    assert dw.DepthwiseRunner((8, 96, 112, 112), (96, 1, 4, 4), (2, 2), (1, 1)).c8
    assert dw.DepthwiseRunner((1, 144, 56, 56), (144, 1, 3, 3), (1, 1), (1, 1)).c8 == (dw.C8_MAX_PIXELS >= 58**2)
    assert not dw.DepthwiseRunner((1, 144, 96, 96), (144, 1, 3, 3), (1, 1), (1, 1)).c8
    assert dw.DepthwiseRunner((32, 144, 56, 56), (144, 1, 3, 3), (1, 1), (1, 1)).c8
    assert dw.DepthwiseRunner((1, 240, 28, 28), (240, 1, 5, 5), (1, 1), (2, 2)).c8  # small planes: always
