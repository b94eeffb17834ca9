"""kernels.pointwise against its float64 NumPy reference (and conv2d_forward, and torch when it imports).

Every 1x1 convolution of EfficientNet-Lite0 at batch 1 and 2 (a few at 32), odd sizes (P = 1, 7, 49, 196; K = 1;
M = 1, 13), the fused clip, bad inputs; the same bits whatever the thread split (serial, many small tasks) and
wherever x starts in a cache line (the main tiles move onto line boundaries when P is a multiple of 16); then the same
tests compiled for the other micro-tile shape in a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from llvmlite import binding

import kernels.pointwise as pw_module
from kernels.conv import conv2d_forward
from kernels.pointwise import PointwiseRunner, pointwise_applies, pointwise_forward, pointwise_forward_ref

# max |err| <= RTOL * sqrt(K) * max(max|ref|, 1), ref the float64 sum before the clip (the clip only shrinks errors),
# K products summed in float32 per output. Measured over every case below at 1 and 2 threads: at most 5.3e-8 of
# sqrt(K) * max|ref| (a quarter of this).
RTOL = 2e-7

LITE0 = [  # (K, M, H) of EfficientNet-Lite0's 1x1 convolutions at 224 x 224, each once
    (32, 16, 112),
    (16, 96, 112),
    (96, 24, 56),
    (24, 144, 56),
    (144, 24, 56),
    (144, 40, 28),
    (40, 240, 28),
    (240, 40, 28),
    (240, 80, 14),
    (80, 480, 14),
    (480, 80, 14),
    (480, 112, 14),
    (112, 672, 14),
    (672, 112, 14),
    (672, 192, 7),
    (192, 1152, 7),
    (1152, 192, 7),
    (1152, 320, 7),
    (320, 1280, 7),
]


def _inputs(xs, ws, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32)
    b = rng.standard_normal(ws[0], dtype=np.float32) if bias else None
    return x, w, b


def _assert_close(got: np.ndarray, x, w, b, act=None) -> None:
    """got against the reference with act, to RTOL * sqrt(K) of the magnitude of the unclipped sums."""
    plain = pointwise_forward_ref(x, w, b)
    want = plain if act is None else np.minimum(np.maximum(plain, act[0]), act[1])
    assert got.shape == want.shape and got.dtype == np.float32 and got.flags.c_contiguous
    tol = RTOL * np.sqrt(max(w.shape[1], 1)) * max(float(np.abs(plain).max(initial=0.0)), 1.0)
    err = float(np.abs(got.astype(np.float64) - want).max(initial=0.0))
    assert err <= tol, f"max abs err {err:.3e} > tol {tol:.3e}"


def _at_offset(shape, offset_bytes: int) -> np.ndarray:
    """An uninitialised float32 array of `shape` starting `offset_bytes` after a 64-byte boundary."""
    n = int(np.prod(shape))
    buf = np.empty(n + 32, np.float32)
    start = (-buf.ctypes.data % 64 + offset_bytes) // 4
    return buf[start : start + n].reshape(shape)


@pytest.fixture(params=["default", "serial", "small-tasks", "packed"])
def split(request, monkeypatch):
    """The thread split: the default choice, every call on the calling thread, or parallel with tasks as small as the
    shape allows (several pixel chunks, row blocks of one tile); packed: the default split with every task's pixel
    chunk copied into slivers first, whatever the sizes (PACK)."""
    if request.param == "packed":
        monkeypatch.setattr(pw_module, "PACK_MIN_X_BYTES", 0)
        monkeypatch.setattr(pw_module, "PACK_MIN_ROWS", 0)
    elif request.param == "serial":
        monkeypatch.setattr(pw_module, "SERIAL_MACS", 1 << 62)
    elif request.param == "small-tasks":
        monkeypatch.setattr(pw_module, "SERIAL_MACS", 0)
        monkeypatch.setattr(pw_module, "TASK_MACS", 1)
        monkeypatch.setattr(pw_module, "TASKS_PER_THREAD", 64)
        monkeypatch.setattr(pw_module, "X_CHUNK_FLOATS", 1)
    return request.param


# ---------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("k,m,h", LITE0)
def test_lite0_layers_match_reference(k, m, h, n) -> None:
    x, w, b = _inputs((n, k, h, h), (m, k, 1, 1), seed=k + m + h)
    for act in (None, (0.0, 6.0)):  # projections have no activation; expansions and the head a ReLU6
        got = pointwise_forward(x, w, b, act=act)
        assert got.shape == (n, m, h, h)
        _assert_close(got, x, w, b, act)


@pytest.mark.parametrize("k,m,h", [(24, 144, 56), (480, 80, 14), (1152, 192, 7)])
def test_lite0_layers_at_batch_32(k, m, h) -> None:
    x, w, b = _inputs((32, k, h, h), (m, k, 1, 1), seed=k)
    _assert_close(pointwise_forward(x, w, b, act=(0.0, 6.0)), x, w, b, (0.0, 6.0))


ODD_CASES = [  # x shape, M
    ((1, 5, 1, 1), 3),  # P = 1: one edge pixel, no main tile
    ((2, 9, 1, 7), 13),  # P = 7; M = 13: two full row tiles and an edge (MR 6) or one and an edge (MR 12)
    ((1, 1, 7, 7), 8),  # K = 1
    ((3, 17, 7, 7), 1),  # M = 1: one row, re-read by the whole tile
    ((1, 13, 14, 14), 13),  # P = 196: 12 tiles and 4 edge pixels; K % 8 = 5
    ((2, 20, 4, 4), 30),  # P = 16: one tile, no head (too few pixels to move)
    ((1, 33, 8, 8), 7),  # P = 64: the smallest P whose tiles move onto cache lines
    ((1, 40, 6, 16), 37),  # P = 96: an odd number of slivers (AVX-512: a pair and a single)
    ((2, 7, 3, 5), 5),  # everything smaller than a tile
    ((1, 300, 3, 11), 200),  # K = 300 (K % 8 = 4), P = 33
]


@pytest.mark.parametrize("xs,m", ODD_CASES)
def test_odd_shapes_match_reference(xs, m, split) -> None:
    x, w, b = _inputs(xs, (m, xs[1], 1, 1), seed=sum(xs) + m)
    for act in (None, (-0.5, 0.75)):
        _assert_close(pointwise_forward(x, w, b, act=act), x, w, b, act)


@pytest.mark.parametrize("hw", [(8, 8), (28, 28), (16, 4), (7, 7), (3, 5)])
def test_every_start_within_a_cache_line_gives_the_same_bits(hw, split) -> None:
    """x (and y) at each 4-byte offset from a line boundary, as a Net's blobs start wherever the allocator put them,
    which differs from process to process: with P a multiple of 16 the main tiles move to the first pixel of x on a
    line boundary (_head), and the pixels before it join the tail in one packed sliver for the same tile; the results
    are the same to the last bit."""
    n, k, m = 2, 19, 14
    x0, w, b = _inputs((n, k, *hw), (m, k, 1, 1), seed=hw[0])
    want = None
    for offset in range(0, 64, 4):
        x = _at_offset(x0.shape, offset)
        x[...] = x0
        out = _at_offset((n, m, *hw), (offset * 7) % 64)
        assert pointwise_forward(x, w, b, act=(0.0, 6.0), out=out) is out
        if want is None:
            _assert_close(out, x0, w, b, (0.0, 6.0))
            want = out.copy()
        np.testing.assert_array_equal(out, want, err_msg=f"x starting {offset} bytes into a cache line")


def test_split_does_not_change_a_bit(split) -> None:
    """Each output is one tile's sum over k in order, whichever task and thread computes it: every split gives the
    bits of the serial run."""
    numba = pytest.importorskip("numba")
    x, w, b = _inputs((3, 40, 14, 14), (50, 40, 1, 1), seed=9)
    got = pointwise_forward(x, w, b, act=(0.0, 6.0))
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        run = PointwiseRunner(x.shape, w.shape, (0.0, 6.0))
        want = np.empty(run.out_shape, np.float32)
        run(x, w, b, want)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("k,m,h", [(32, 16, 112), (672, 112, 14), (1152, 192, 7), (40, 13, 8)])
def test_packed_slivers_give_the_same_bits(k, m, h, monkeypatch) -> None:
    """A task's pixels copied into contiguous slivers first (PACK) or read in place: the same FMA chains, the same
    bits, packed in any chunk size."""
    x, w, b = _inputs((2, k, h, h), (m, k, 1, 1), seed=k + m)
    monkeypatch.setattr(pw_module, "PACK", False)
    want = pointwise_forward(x, w, b, act=(0.0, 6.0))
    monkeypatch.setattr(pw_module, "PACK", True)
    monkeypatch.setattr(pw_module, "PACK_MIN_X_BYTES", 0)
    monkeypatch.setattr(pw_module, "PACK_MIN_ROWS", 0)
    run = PointwiseRunner(x.shape, w.shape, (0.0, 6.0))
    assert run.plan[9] > 0 or pw_module.SLIVERS == 2  # packed (AVX-512's paired tiles read in place)
    got = np.empty(run.out_shape, np.float32)
    run(x, w, b, got)
    np.testing.assert_array_equal(got, want)
    monkeypatch.setattr(pw_module, "X_CHUNK_FLOATS", 1)  # one sliver a chunk
    np.testing.assert_array_equal(pointwise_forward(x, w, b, act=(0.0, 6.0)), want)


@pytest.mark.parametrize(
    "xs,m", [((1, 1152, 7, 7), 192), ((2, 112, 14, 14), 67), ((1, 13, 1, 17), 8), ((3, 20, 5, 7), 30)]
)
def test_shared_pack_gives_the_same_bits(xs, m, split, monkeypatch) -> None:
    """x's main slivers packed once a call for every task (SHARED_PACK: small x, P not a multiple of 16) or read in
    place: the same FMA chains, the same bits, the residual sum too."""
    x, w, b = _inputs(xs, (m, xs[1], 1, 1), seed=xs[1] + m)
    res = np.random.default_rng(1).standard_normal((xs[0], m, *xs[2:])).astype(np.float32)
    outs = {}
    monkeypatch.setattr(pw_module, "SHARED_PACK_MAX_P", 1 << 30)  # 14 x 14 too
    for shared in (False, True):
        monkeypatch.setattr(pw_module, "SHARED_PACK", shared)
        run = PointwiseRunner(x.shape, w.shape, (0.0, 6.0))
        assert (run.plan[11] > 0) == (shared and x.nbytes <= pw_module.PACK_MIN_X_BYTES)  # x small: shared
        y, z = np.empty(run.out_shape, np.float32), np.empty(run.out_shape, np.float32)
        run(x, w, b, y, res, z)
        outs[shared] = y, z
    _assert_close(outs[True][0], x, w, b, (0.0, 6.0))
    np.testing.assert_array_equal(outs[True][0], outs[False][0])
    np.testing.assert_array_equal(outs[True][1], outs[False][1])
    np.testing.assert_array_equal(outs[True][1], outs[True][0] + res)


@pytest.mark.parametrize("k,m,h", [(32, 16, 112), (144, 24, 56), (1152, 192, 7), (19, 14, 3)])
def test_prefetch_gives_the_same_bits(k, m, h, monkeypatch) -> None:
    """The first row tile of each task prefetching x (large x or several threads: PREFETCH_MIN_X_BYTES) or not, and
    each tile prefetching its rows of y for writing (Y_PREFETCH) or not, and the next row tile's W (W_PREFETCH) or
    not: hints only, the same bits, whatever the distance (past the end of x, y and w too)."""
    x, w, b = _inputs((2, k, h, h), (m, k, 1, 1), seed=k + h)
    monkeypatch.setattr(pw_module, "PREFETCH_MIN_X_BYTES", 1 << 62)
    want = pointwise_forward(x, w, b, act=(0.0, 6.0))
    _assert_close(want, x, w, b, (0.0, 6.0))
    monkeypatch.setattr(pw_module, "PREFETCH_MIN_X_BYTES", 0)
    run = PointwiseRunner(x.shape, w.shape, (0.0, 6.0))
    assert run.plan[10] == pw_module.PREFETCH_FLOATS > 0
    assert run.plan[12] == pw_module.Y_PREFETCH > 0
    for distance in (pw_module.PREFETCH_FLOATS, 1 << 20):
        for y_distance, w_ahead in ((0, 0), (pw_module.Y_PREFETCH, 1), (1 << 20, 1)):
            run.plan[10], run.plan[12], run.plan[13] = distance, y_distance, w_ahead
            got = np.empty(run.out_shape, np.float32)
            run(x, w, b, got)
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "xs,ws,stride",
    [
        ((1, 3, 225, 225), (32, 3, 3, 3), (2, 2)),  # EfficientNet's stem: every sliver a stride-2 run of a row
        ((2, 5, 17, 19), (13, 5, 2, 3), (1, 2)),  # OW = 9: slivers across output rows (the offset table)
        ((3, 2, 8, 8), (7, 2, 1, 1), (1, 1)),
        ((1, 2, 18, 34), (5, 2, 3, 3), (1, 1)),  # OW = 32: stride-1 runs
        ((1, 3, 33, 49), (6, 3, 3, 3), (2, 2)),  # OW = 24: runs and slivers across rows, mixed
    ],
)
def test_im2col_runner_matches_reference_and_conv_bits(xs, ws, stride) -> None:
    """Im2colRunner (im2col slivers built per task): the reference within RTOL, and the bits of conv's im2col + GEMM."""
    from kernels.conv import ForwardRunner, conv2d_forward_ref

    x, w, b = _inputs(xs, ws, seed=xs[1] + ws[0])
    assert pw_module.im2col_applies(xs, ws, stride, (0, 0), (1, 1), 1)  # AVX2 and AVX-512 (single-sliver tiles)
    run = pw_module.Im2colRunner(xs, ws, stride, (1, 1), (0.0, 6.0))
    got = np.empty(run.out_shape, np.float32)
    run(x, w, b, got)
    plain = conv2d_forward_ref(x, w, b, stride=stride)
    want = np.clip(plain, 0.0, 6.0)
    k = ws[1] * ws[2] * ws[3]
    assert np.abs(got - want).max() <= RTOL * np.sqrt(k) * max(1.0, np.abs(plain).max())
    conv = ForwardRunner(xs, ws, stride, (0, 0), (1, 1), 1, True, relu_max=6.0)
    same = np.empty(conv.out_shape, np.float32)
    conv(x, w, b, same)
    np.testing.assert_array_equal(got, same)
    assert pw_module.im2col_applies((1, 3, 10, 10), (4, 3, 3, 3), 1, 0, 1, 1)  # 8 x 8 = 64 pixels
    assert not pw_module.im2col_applies((1, 3, 9, 9), (4, 3, 3, 3), 1, 0, 1, 1)  # 7 x 7 = 49: not a multiple of 16
    assert not pw_module.im2col_applies((1, 3, 9, 9), (4, 3, 3, 3), 1, 1, 1, 1)  # pad must be 0
    assert not pw_module.im2col_applies((1, 4, 9, 9), (4, 2, 3, 3), 1, 0, 1, 2)  # group 1 only


def test_reference_by_hand() -> None:
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)  # channel 0: 0..3, channel 1: 4..7
    w = np.array([1.0, 10.0, -1.0, 0.5], np.float32).reshape(2, 2, 1, 1)
    y = pointwise_forward_ref(x, w, np.array([0.5, 0.0], np.float32))
    np.testing.assert_array_equal(y[0, 0].ravel(), [40.5, 51.5, 62.5, 73.5])
    np.testing.assert_array_equal(y[0, 1].ravel(), [2.0, 1.5, 1.0, 0.5])
    np.testing.assert_array_equal(pointwise_forward_ref(x, w, None, act=(3.0, 50.0))[0, :, 0, 0], [40.0, 3.0])


def test_matches_convolution_and_torch() -> None:
    """The same numbers as conv2d_forward (im2col + GEMM) and torch's conv2d."""
    x, w, b = _inputs((2, 48, 10, 13), (29, 48, 1, 1), seed=4)
    got = pointwise_forward(x, w, b)
    np.testing.assert_allclose(got, conv2d_forward(x, w, b), rtol=0, atol=RTOL * np.sqrt(48) * np.abs(got).max())
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        want = torch.nn.functional.conv2d(*map(torch.from_numpy, (x, w, b))).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * np.sqrt(48) * np.abs(got).max())


@pytest.mark.parametrize("act", [(0.0, 6.0), (0.0, float("inf")), (-0.5, 0.25), (1.0, 1.0)])
def test_fused_clip(act, split) -> None:
    x, w, b = _inputs((2, 12, 9, 9), (20, 12, 1, 1), seed=5)
    plain = pointwise_forward(x, w, b)
    got = pointwise_forward(x, w, b, act=act)
    lo, hi = act
    assert (plain < lo).any() and (np.isinf(hi) or (plain > hi).any())
    np.testing.assert_array_equal(got, np.minimum(np.maximum(plain, np.float32(lo)), np.float32(hi)))  # same sums
    _assert_close(got, x, w, b, act)


def test_clip_keeps_nan_and_clips_infinities() -> None:
    x, w, b = _inputs((1, 10, 7, 9), (15, 10, 1, 1), seed=6)
    w = np.abs(w)
    x[0, 3, 2, 4] = np.nan  # P = 63: pixels in main tiles and edge pixels
    x[0, 7, 6, 8] = np.inf
    x[0, 1, 0, 0] = -np.inf
    got = pointwise_forward(x, w, b, act=(0.0, 6.0))
    assert np.isnan(got[0, :, 2, 4]).all() and np.isnan(got).sum() == 15
    assert (got[0, :, 6, 8] == 6.0).all() and (got[0, :, 0, 0] == 0.0).all()


def test_runner_reused_with_new_weights_and_inputs(split) -> None:
    rng = np.random.default_rng(8)
    for n in (1, 4):
        run = PointwiseRunner((n, 21, 7, 7), (33, 21, 1, 1), (0.0, 6.0))
        assert run.out_shape == (n, 33, 7, 7)
        out = np.full(run.out_shape, np.nan, np.float32)  # every element is written
        for _ in range(3):
            x = rng.standard_normal((n, 21, 7, 7), dtype=np.float32)
            w = rng.standard_normal((33, 21, 1, 1), dtype=np.float32)
            b = rng.standard_normal(33, dtype=np.float32)
            run(x, w, b, out)
            _assert_close(out, x, w, b, (0.0, 6.0))


def test_out_argument_bias_none_and_empty_shapes() -> None:
    x, w, _ = _inputs((2, 3, 6, 6), (5, 3, 1, 1))
    got = pointwise_forward(x, w, None)
    out = np.full_like(got, np.nan)
    assert pointwise_forward(x, w, None, out=out) is out
    np.testing.assert_array_equal(out, got)
    _assert_close(got, x, w, None)
    assert pointwise_forward(np.zeros((0, 3, 4, 4), np.float32), w, None).shape == (0, 5, 4, 4)
    assert pointwise_forward(np.zeros((1, 3, 0, 4), np.float32), w, None).shape == (1, 5, 0, 4)
    b = np.arange(5, dtype=np.float32) - 2.0
    np.testing.assert_array_equal(  # K = 0: the bias alone, clipped
        pointwise_forward(np.zeros((1, 0, 3, 3), np.float32), np.zeros((5, 0, 1, 1), np.float32), b, act=(-1.0, 1.0)),
        np.broadcast_to(np.clip(b, -1, 1).reshape(1, 5, 1, 1), (1, 5, 3, 3)),
    )


def test_applies() -> None:
    assert pointwise_applies((1, 32, 112, 112), (16, 32, 1, 1), (1, 1), (0, 0), (1, 1), 1)
    assert pointwise_applies((2, 8, 5, 5), (3, 8, 1, 1), 1, 0, 2, 1)  # ints; a 1x1 kernel has no gaps to dilate
    assert not pointwise_applies((1, 32, 112, 112), (16, 32, 1, 1), 2, 0, 1, 1)  # stride 2
    assert not pointwise_applies((1, 32, 112, 112), (16, 32, 1, 1), (1, 2), 0, 1, 1)
    assert not pointwise_applies((1, 32, 112, 112), (16, 32, 1, 1), 1, (0, 1), 1, 1)  # padded
    assert not pointwise_applies((1, 32, 112, 112), (16, 16, 1, 1), 1, 0, 1, 2)  # groups
    assert not pointwise_applies((1, 32, 112, 112), (16, 32, 3, 3), 1, 1, 1, 1)  # 3x3
    assert not pointwise_applies((1, 32, 112, 112), (32, 1, 1, 1), 1, 0, 1, 32)  # depthwise 1x1
    assert not pointwise_applies((1, 32, 112, 112), (16, 24, 1, 1), 1, 0, 1, 1)  # channels differ


@pytest.mark.parametrize(
    "xs,ws,b,kwargs,match",
    [
        ((8, 8, 8), (4, 8, 1, 1), None, {}, r"x of rank 4 \(N, K, H, W\), got shape \(8, 8, 8\)"),
        ((1, 8, 8, 8), (4, 7, 1, 1), None, {}, r"w of shape \(M, 8, 1, 1\) for x of 8 channels, got \(4, 7, 1, 1\)"),
        ((1, 8, 8, 8), (4, 8, 3, 3), None, {}, r"w of shape \(M, 8, 1, 1\)"),
        ((1, 8, 8, 8), (4, 8), None, {}, r"w of shape \(M, 8, 1, 1\)"),
        ((1, 8, 8, 8), (4, 8, 1, 1), (5,), {}, r"bias of shape \(4,\), got \(5,\)"),
        ((1, 8, 8, 8), (4, 8, 1, 1), None, {"act": (6.0, 0.0)}, r"lo <= hi .*got \(6.0, 0.0\)"),
        ((1, 8, 8, 8), (4, 8, 1, 1), None, {"act": 6.0}, "act as None or a"),
        ((1, 8, 8, 8), (4, 8, 1, 1), None, {"act": (0.0, float("nan"))}, "lo <= hi"),
        ((1, 8, 8, 8), (4, 8, 1, 1), None, {"out": np.zeros((1, 4, 8, 7), np.float32)}, r"out to be .*\(1, 4, 8, 8\)"),
        ((1, 8, 8, 8), (4, 8, 1, 1), None, {"out": np.zeros((1, 4, 8, 8))}, "out to be a C-contiguous float32"),
        ((1, 8, 8, 8), (4, 8, 1, 1), None, {"out": np.zeros((1, 4, 8, 16), np.float32)[..., ::2]}, "c_contiguous"),
    ],
)
def test_forward_errors(xs, ws, b, kwargs, match) -> None:
    bias = None if b is None else np.zeros(b, np.float32)
    with pytest.raises(ValueError, match=match):
        pointwise_forward(np.zeros(xs, np.float32), np.zeros(ws, np.float32), bias, **kwargs)


def test_out_read_only_or_overlapping_x_is_an_error() -> None:
    x = np.zeros((1, 4, 6, 6), np.float32)
    with pytest.raises(ValueError, match="out shares memory with x"):
        pointwise_forward(x, np.zeros((4, 4, 1, 1), np.float32), None, out=x)
    out = np.zeros((1, 4, 6, 6), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        pointwise_forward(x, np.zeros((4, 4, 1, 1), np.float32), None, out=out)


@pytest.mark.parametrize(
    "xs,ws,act,match",
    [
        ((1, 8, 4, 4), (4, 8, 1, 2), None, r"w of shape \(M, 8, 1, 1\) for x of 8 channels, got \(4, 8, 1, 2\)"),
        ((8, 4, 4), (4, 8, 1, 1), None, r"x of shape \(N, K, H, W\), got \(8, 4, 4\)"),
        ((1, 8, -1, 4), (4, 8, 1, 1), None, r"x of shape \(N, K, H, W\), got \(1, 8, -1, 4\)"),
        ((1, 8, 4, 4), (4, 8, 1, 1), (1.0, 0.0), "lo <= hi"),
    ],
)
def test_runner_errors(xs, ws, act, match) -> None:
    with pytest.raises(ValueError, match=match):
        PointwiseRunner(xs, ws, act)


# ---------------------------------------------------------------------------------------------- the other tile shape
HOST_FEATURES = binding.get_host_cpu_features().flatten().split(",")  # LLVM's "+name" / "-name" entries
ROOT = Path(__file__).resolve().parents[2]


def _child(tmp_path: Path) -> tuple[dict, str]:
    """Environment and code prelude for a child process that compiles the kernels for the tile shape this host does
    not pick by itself, with a Numba cache of its own (compiled code has the tile constants frozen in).

    On an AVX-512 host, as tests/kernels/test_tile_shapes.py: compile for an AVX2 CPU (6 x 16 tiles). On an AVX2 host,
    kernels.gemm is made to see AVX-512 after Numba has taken the host's real features for its own target, so it
    picks 12 x 16 tiles in pairs, and LLVM splits each <16 x float> into two ymm vectors: slower, the same arithmetic,
    and every index of that shape exercised."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"), "CREMA_POINTWISE_CHILD": "1"}
    if "+avx512f" in HOST_FEATURES:
        env["NUMBA_CPU_NAME"] = "haswell"
        env["NUMBA_CPU_FEATURES"] = ",".join("-" + f[1:] if f[1:].startswith("avx512") else f for f in HOST_FEATURES)
        return env, ""
    prelude = (
        "from numba import njit\n"
        "njit(lambda v: v + 1)(1)\n"  # Numba's own target now holds the host's real features
        "from llvmlite import binding\n"
        "real = binding.get_host_cpu_features\n"
        "class Avx512(dict):\n"
        "    def flatten(self):\n"
        "        return real().flatten().replace('-avx512f', '+avx512f')\n"
        "binding.get_host_cpu_features = Avx512\n"
        "import kernels.gemm\n"  # picks its tile shape here
        "binding.get_host_cpu_features = real\n"
    )
    return env, prelude


@pytest.mark.skipif(os.environ.get("CREMA_POINTWISE_CHILD") == "1", reason="already the child")
def test_the_other_tile_shape(tmp_path: Path) -> None:
    env, prelude = _child(tmp_path)

    def child(code: str, timeout: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", prelude + code],
            check=False,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    shape = child("import kernels.gemm as g, kernels.pointwise as p; print(g.MR, g.VW, p.SLIVERS)", 300)
    assert shape.returncode == 0, shape.stderr[-2000:]
    assert shape.stdout.split() == (["6", "8", "1"] if "+avx512f" in HOST_FEATURES else ["12", "16", "2"])
    tests = "not batch_32 and not other_tile_shape"
    args = ["-q", "-p", "no:cacheprovider", "tests/kernels/test_pointwise.py", "-k", tests]
    run = child(f"import sys, pytest; sys.exit(pytest.main({args!r}))", 1800)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]  # 0: tests ran and all passed
