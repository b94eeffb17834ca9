"""Pooling: Caffe's output-size rule, Numba kernels vs the NumPy reference, hand-checked edges, torch where it
agrees. Tolerances: MAX is exact (a selection), AVE max abs error <= 1e-6 on N(0, 1) data.

Backward: the float64 reference against central differences of the float64 reference forward (h = 1e-6, distinct
values spaced 1e-2 apart for MAX so no perturbation changes an argmax; |a - n| <= 1e-7 + 1e-6 * max(|a|, |n|, 1));
the Numba backward against the reference (MAX masks equal; gradients max abs error <= 1e-6 on N(0, 1) dy)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.pool import (
    NEG_FLT_MAX,
    SPECIALISED,
    global_pool_backward,
    global_pool_forward,
    pool2d_backward,
    pool2d_backward_ref,
    pool2d_forward,
    pool2d_forward_ref,
    pool2d_output_shape,
)
from tests.gradcheck import assert_grad_close, numeric_grad

AVE_ATOL = 1e-6
GRAD_ATOL = 1e-6  # Numba backward vs the float64 reference, N(0, 1) top gradients
FD_H, FD_ATOL, FD_RTOL = 1e-6, 1e-7, 1e-6


# -- output shape ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "k", "s", "p", "mode", "want"),
    [
        (55, 3, 2, 0, "CEIL", 27),  # CaffeNet pool1
        (27, 3, 2, 0, "CEIL", 13),  # pool2
        (13, 3, 2, 0, "CEIL", 6),  # pool5
        (24, 2, 2, 0, "CEIL", 12),  # LeNet pool1
        (64, 3, 2, 1, "CEIL", 33),  # caffe_facts 10.1: conv would give 32
        (64, 3, 2, 1, "FLOOR", 32),
        (6, 2, 4, 1, "CEIL", 2),  # ceil(6/4)+1 = 3, last window would start at 7 >= 6+1: dropped
        (6, 2, 4, 1, "FLOOR", 2),
        (5, 3, 2, 1, "CEIL", 3),  # ceil(5/2)+1 = 4, (4-1)*2 = 6 >= 5+1: dropped
        (6, 3, 2, 1, "CEIL", 4),  # last window overhangs the right padding by one row (AVE divisor clip)
        (4, 1, 2, 0, "CEIL", 3),  # pad 0: no decrement even though the last window starts at 4 = H
        (4, 1, 2, 0, "FLOOR", 2),
        (7, 7, 1, 0, "CEIL", 1),  # global
    ],
)
def test_output_shape(size: int, k: int, s: int, p: int, mode: str, want: int) -> None:
    assert pool2d_output_shape((size, size), k, s, p, mode) == (want, want)


def test_output_shape_rule_properties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        size, k, s = int(rng.integers(1, 40)), int(rng.integers(1, 8)), int(rng.integers(1, 8))
        p = int(rng.integers(0, k))
        if size + 2 * p < k:
            continue
        ceil, floor = (pool2d_output_shape((size, size), k, s, p, m)[0] for m in ("CEIL", "FLOOR"))
        assert floor <= ceil <= floor + 1
        if p > 0:  # every window starts inside the image or the left padding
            assert (ceil - 1) * s < size + p
            assert (ceil - 1) * s - p < size


def test_bad_parameters() -> None:
    x = np.zeros((1, 1, 5, 5), np.float32)
    with pytest.raises(ValueError, match="pad must be smaller"):
        pool2d_forward(x, kernel=2, stride=1, pad=2)
    with pytest.raises(ValueError, match="does not fit"):
        pool2d_forward(x, kernel=7, stride=1)
    with pytest.raises(ValueError, match="method"):
        pool2d_forward(x, method="STOCHASTIC", kernel=2)
    with pytest.raises(ValueError, match="round_mode"):
        pool2d_forward(x, kernel=2, round_mode="ROUND")
    with pytest.raises(ValueError, match="kernel > 0"):
        pool2d_forward(x, kernel=2, stride=0)
    with pytest.raises(ValueError, match="float32"):
        pool2d_forward(x.astype(np.float64), kernel=2)
    with pytest.raises(ValueError, match="4-D"):
        pool2d_forward(x[0], kernel=2)
    with pytest.raises(ValueError, match="C-contiguous"):
        pool2d_forward(np.zeros((1, 1, 5, 10), np.float32)[..., ::2], kernel=2)
    with pytest.raises(ValueError, match="out: expected shape"):
        pool2d_forward(x, kernel=2, out=np.zeros((1, 1, 3, 3), np.float32))


# -- Numba vs reference ---------------------------------------------------------------------------
CONFIGS = [
    # (N, C, H, W, kernel, stride, pad, round_mode)
    (2, 3, 13, 11, (3, 3), (2, 2), (0, 0), "CEIL"),
    (1, 4, 6, 6, (2, 2), (4, 4), (1, 1), "CEIL"),  # last window dropped
    (2, 2, 6, 7, (3, 3), (2, 2), (1, 1), "CEIL"),  # last window overhangs the padding
    (2, 3, 9, 14, (3, 2), (2, 3), (1, 1), "CEIL"),  # rectangular everything
    (1, 5, 17, 17, (2, 2), (3, 3), (0, 0), "CEIL"),  # stride > kernel
    (1, 2, 4, 4, (1, 1), (2, 2), (0, 0), "CEIL"),  # empty last window (pad 0, stride > kernel)
    (3, 2, 15, 10, (4, 3), (3, 2), (2, 1), "FLOOR"),
    (2, 3, 8, 8, (3, 3), (1, 1), (1, 1), "CEIL"),  # stride 1, overlapping
    (1, 1, 1, 1, (1, 1), (1, 1), (0, 0), "CEIL"),
    (2, 4, 7, 5, (7, 5), (1, 1), (0, 0), "CEIL"),  # global
    (4, 8, 55, 55, (3, 3), (2, 2), (0, 0), "CEIL"),  # CaffeNet pool1 plane size
    (2, 3, 24, 24, (2, 2), (2, 2), (0, 0), "CEIL"),  # LeNet pool1: all interior (specialised kernel only)
    (2, 2, 7, 9, (2, 2), (2, 2), (1, 1), "CEIL"),  # specialised interior plus padded border
    (2, 2, 9, 8, (3, 3), (2, 2), (1, 1), "FLOOR"),
    (1, 3, 6, 5, (3, 3), (1, 1), (1, 1), "CEIL"),
    (2, 2, 5, 7, (2, 2), (1, 1), (0, 0), "CEIL"),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "x".join(map(str, c[:4])) + f"-k{c[4]}s{c[5]}p{c[6]}{c[7]}")
def test_forward_matches_reference(method: str, cfg: tuple) -> None:
    n, c, h, w, k, s, p, mode = cfg
    x = np.random.default_rng(1).standard_normal((n, c, h, w)).astype(np.float32)
    kw = {"method": method, "kernel": k, "stride": s, "pad": p, "round_mode": mode}
    y = pool2d_forward(x, **kw)
    ref = pool2d_forward_ref(x, **kw)
    assert y.shape == (n, c, *pool2d_output_shape((h, w), k, s, p, mode))
    assert y.dtype == np.float32 and y.flags.c_contiguous
    if method == "MAX":
        np.testing.assert_array_equal(y, ref)
    else:
        finite = np.isfinite(ref)
        np.testing.assert_array_equal(np.isfinite(y), finite)
        assert np.max(np.abs(y[finite] - ref[finite]), initial=0.0) <= AVE_ATOL


def test_ave_divisor_hand_checked() -> None:
    # H = W = 6, k 3, s 2, pad 1 -> 4x4. Window rows: [-1,2) [1,4) [3,6) [5,8)->end clipped to H+pad = 7.
    y = pool2d_forward(np.ones((1, 1, 6, 6), np.float32), method="AVE", kernel=3, stride=2, pad=1)
    real = np.array([2, 3, 3, 1], np.float32)  # real rows (or columns) per window
    divisor = np.array([3, 3, 3, 2], np.float32)  # padded cells count, the overhang past H+pad does not
    np.testing.assert_allclose(y[0, 0], np.outer(real, real) / np.outer(divisor, divisor), rtol=0, atol=1e-7)


def test_max_ignores_padding_and_empty_window() -> None:
    x = -np.ones((1, 1, 4, 4), np.float32)
    y = pool2d_forward(x, method="MAX", kernel=3, stride=1, pad=1)
    np.testing.assert_array_equal(y, -1.0)  # padding is never a candidate (it is not a zero)
    # pad 0, kernel 1, stride 2 on 4 pixels: the third window starts at 4 = H and is empty, as in Caffe.
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    y = pool2d_forward(x, method="MAX", kernel=1, stride=2)
    np.testing.assert_array_equal(y[0, 0, :2, :2], [[0, 2], [8, 10]])
    assert (y[0, 0, 2, :] == NEG_FLT_MAX).all() and (y[0, 0, :, 2] == NEG_FLT_MAX).all()
    a = pool2d_forward(x, method="AVE", kernel=1, stride=2)
    assert np.isnan(a[0, 0, 2, 2]) and a[0, 0, 1, 1] == 10  # Caffe divides 0 by a 0 divisor there


def test_global_and_out() -> None:
    x = np.random.default_rng(2).standard_normal((3, 5, 6, 7)).astype(np.float32)
    np.testing.assert_array_equal(global_pool_forward(x, "MAX")[..., 0, 0], x.max(axis=(2, 3)))
    np.testing.assert_allclose(global_pool_forward(x, "AVE")[..., 0, 0], x.mean(axis=(2, 3)), rtol=0, atol=1e-6)
    out = np.full((3, 5, 3, 4), np.nan, np.float32)
    y = pool2d_forward(x, kernel=2, stride=2, out=out)
    assert y is out
    np.testing.assert_array_equal(out, pool2d_forward_ref(x, kernel=2, stride=2))


# -- torch, on shapes where its ceil_mode and count_include_pad agree with Caffe ------------------------
def _torch_configs() -> list[tuple]:
    rng = np.random.default_rng(3)
    out = []
    while len(out) < 30:
        h, w = (int(v) for v in rng.integers(1, 20, 2))
        k = tuple(int(v) for v in rng.integers(1, 6, 2))
        s = tuple(int(v) for v in rng.integers(1, 5, 2))
        p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)  # torch needs pad <= kernel // 2
        mode = "CEIL" if rng.random() < 0.7 else "FLOOR"
        if h + 2 * p[0] < k[0] or w + 2 * p[1] < k[1]:
            continue
        out.append((2, 3, h, w, k, s, p, mode))
    return out


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_against_torch(method: str) -> None:
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    compared = 0
    for n, c, h, w, k, s, p, mode in _torch_configs():
        x = np.random.default_rng(compared).standard_normal((n, c, h, w)).astype(np.float32)
        tx, ceil = torch.from_numpy(x), mode == "CEIL"
        if method == "MAX":
            t = f.max_pool2d(tx, k, s, p, ceil_mode=ceil).numpy()
        else:
            t = f.avg_pool2d(tx, k, s, p, ceil_mode=ceil, count_include_pad=True).numpy()
        ours = pool2d_output_shape((h, w), k, s, p, mode)
        if t.shape[2:] != ours:  # torch also drops an empty last window when pad == 0; Caffe keeps it
            continue
        y = pool2d_forward(x, method=method, kernel=k, stride=s, pad=p, round_mode=mode)
        assert np.max(np.abs(y - t)) <= (0.0 if method == "MAX" else AVE_ATOL), (h, w, k, s, p, mode)
        compared += 1
    assert compared >= 20


# -- backward -------------------------------------------------------------------------------------
def _distinct(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Distinct values 1e-2 apart in random order (no ties, no argmax change under a 1e-6 perturbation)."""
    n = int(np.prod(shape))
    return ((np.random.default_rng(seed).permutation(n) - n / 2) * 1e-2).reshape(shape)


def _numeric_grad(f, x: np.ndarray, h: float = FD_H) -> np.ndarray:
    return numeric_grad(f, x, h)


def _assert_fd(analytic: np.ndarray, numeric: np.ndarray) -> None:
    assert_grad_close(analytic, numeric, atol=FD_ATOL, rtol=FD_RTOL)


FD_CONFIGS = [
    (2, 2, 5, 6, (2, 2), (2, 2), (0, 0), "CEIL"),  # ceil: last column window clipped
    (1, 2, 6, 7, (3, 3), (2, 2), (1, 1), "CEIL"),  # padding, window overhanging the padding (AVE divisor clip)
    (2, 1, 7, 5, (3, 2), (1, 2), (1, 0), "FLOOR"),  # overlapping rows
    (1, 2, 9, 9, (2, 2), (3, 3), (0, 0), "CEIL"),  # stride > kernel: pixels in no window
    (1, 1, 4, 4, (1, 1), (2, 2), (0, 0), "CEIL"),  # empty last window
    (1, 2, 5, 4, (5, 4), (1, 1), (0, 0), "CEIL"),  # global
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("cfg", FD_CONFIGS, ids=lambda c: "x".join(map(str, c[:4])) + f"-k{c[4]}s{c[5]}p{c[6]}{c[7]}")
def test_backward_ref_matches_finite_differences(method: str, cfg: tuple) -> None:
    n, c, h, w, k, s, p, mode = cfg
    kw = {"method": method, "kernel": k, "stride": s, "pad": p, "round_mode": mode}
    x = _distinct((n, c, h, w), seed=h * w)
    y = pool2d_forward_ref(x, **kw)
    assert y.dtype == np.float64
    dy = np.random.default_rng(5).standard_normal(y.shape)
    # Windows with no pixel (MAX: -FLT_MAX, AVE: 0/0 = NaN) are constants with no gradient; they are left out of the
    # loss, where -FLT_MAX would swamp the differences.
    live = np.isfinite(y) & (y != NEG_FLT_MAX)
    dy[~live] = 0.0
    numeric = _numeric_grad(lambda v: float(np.sum(np.where(live, pool2d_forward_ref(v, **kw), 0.0) * dy)), x)
    _assert_fd(pool2d_backward_ref(dy, x, **kw), numeric)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "x".join(map(str, c[:4])) + f"-k{c[4]}s{c[5]}p{c[6]}{c[7]}")
def test_backward_matches_reference(method: str, cfg: tuple) -> None:
    n, c, h, w, k, s, p, mode = cfg
    kw = {"method": method, "kernel": k, "stride": s, "pad": p, "round_mode": mode}
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    x[..., ::3, ::2] = np.round(x[..., ::3, ::2])  # ties: the first maximum must win in both
    oh, ow = pool2d_output_shape((h, w), k, s, p, mode)
    dy = rng.standard_normal((n, c, oh, ow)).astype(np.float32)
    ref = pool2d_backward_ref(dy, x, **kw)
    if method == "MAX":
        mask = np.full((n, c, oh, ow), -7, np.int32)
        y = pool2d_forward(x, **kw, mask=mask)
        want_y, want_mask = pool2d_forward_ref(x, **kw, return_mask=True)
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(mask, want_mask)
        dx = pool2d_backward(dy, x.shape, **kw, mask=mask)
        np.testing.assert_array_equal(pool2d_backward(dy, x, **kw), dx)  # argmax recomputed from x
    else:
        dx = pool2d_backward(dy, x.shape, **kw)
    assert dx.shape == x.shape and dx.dtype == np.float32 and dx.flags.c_contiguous
    assert np.max(np.abs(dx - ref)) <= GRAD_ATOL


def test_specialised_shapes_are_covered() -> None:
    covered = {(c[4][0], c[4][1], c[5][0], c[5][1]) for c in CONFIGS}
    assert SPECIALISED <= covered  # every compile-time specialised kernel is checked above
    assert covered - SPECIALISED  # and so is the generic path


def test_max_backward_hand_checked() -> None:
    # Overlapping 3x3 windows, stride 1, pad 1 on a 3x3 plane: the centre maximum wins all nine windows.
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    x[0, 0, 1, 1] = 100.0
    dy = np.ones((1, 1, 3, 3), np.float32)
    dx = pool2d_backward(dy, x, kernel=3, stride=1, pad=1)
    want = np.zeros((3, 3), np.float32)
    want[1, 1] = 9.0
    np.testing.assert_array_equal(dx[0, 0], want)
    # Ties: 2x2 windows of equal values route to the first (top-left) pixel; Caffe's mask index is h * W + w.
    x = np.zeros((1, 1, 4, 4), np.float32)
    mask = np.empty((1, 1, 2, 2), np.int32)
    pool2d_forward(x, kernel=2, stride=2, mask=mask)
    np.testing.assert_array_equal(mask[0, 0], [[0, 2], [8, 10]])
    dx = pool2d_backward(np.ones((1, 1, 2, 2), np.float32), x.shape, kernel=2, stride=2, mask=mask)
    np.testing.assert_array_equal(dx[0, 0], [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])


def test_max_nan_and_empty_window_get_no_gradient() -> None:
    x = np.full((1, 1, 4, 4), np.nan, np.float32)
    x[0, 0, 0, 1] = 1.0
    mask = np.empty((1, 1, 3, 3), np.int32)
    y = pool2d_forward(x, kernel=1, stride=2, mask=mask)  # 3x3 outputs, the last row/column windows are empty
    assert y[0, 0, 0, 0] == NEG_FLT_MAX and mask[0, 0, 0, 0] == -1  # NaN never wins
    assert (mask[0, 0, 2, :] == -1).all() and (mask[0, 0, :, 2] == -1).all()
    dx = pool2d_backward(np.ones((1, 1, 3, 3), np.float32), x.shape, kernel=1, stride=2, mask=mask)
    np.testing.assert_array_equal(dx, np.zeros_like(x))
    mask2 = np.empty((1, 1, 2, 2), np.int32)
    pool2d_forward(x, kernel=2, stride=2, mask=mask2)
    assert mask2[0, 0, 0, 0] == 1 and (mask2.reshape(-1)[1:] == -1).all()


def test_ave_backward_hand_checked() -> None:
    # H = W = 6, k 3, s 2, pad 1 (see test_ave_divisor_hand_checked): window rows [-1, 2) [1, 4) [3, 6) [5, 7) with
    # divisors 3 3 3 2 per axis. Pixel (0, 0) is only in window (0, 0): 1/9. Row 5 is in windows 2 and 3.
    dy = np.ones((1, 1, 4, 4), np.float32)
    dx = pool2d_backward(dy, (1, 1, 6, 6), method="AVE", kernel=3, stride=2, pad=1)
    np.testing.assert_allclose(dx[0, 0, 0, 0], 1 / 9, rtol=1e-6)
    np.testing.assert_allclose(dx[0, 0, 5, 5], (1 / 3 + 1 / 2) ** 2, rtol=1e-6)
    np.testing.assert_allclose(
        dx, pool2d_backward_ref(dy, np.zeros((1, 1, 6, 6)), method="AVE", kernel=3, stride=2, pad=1), rtol=0, atol=1e-7
    )


def test_global_backward() -> None:
    x = np.random.default_rng(8).standard_normal((2, 3, 5, 4)).astype(np.float32)
    dy = np.random.default_rng(9).standard_normal((2, 3, 1, 1)).astype(np.float32)
    dx = global_pool_backward(dy, x, "MAX")
    flat = x.reshape(6, 20)
    want = np.zeros((6, 20), np.float32)
    want[np.arange(6), flat.argmax(axis=1)] = dy.reshape(6)
    np.testing.assert_array_equal(dx.reshape(6, 20), want)
    mask = np.empty((2, 3, 1, 1), np.int32)
    global_pool_forward(x, "MAX", mask=mask)
    np.testing.assert_array_equal(global_pool_backward(dy, x.shape, "MAX", mask=mask), dx)
    dx = global_pool_backward(dy, x.shape, "AVE")
    np.testing.assert_allclose(dx, np.broadcast_to(dy / np.float32(20), x.shape), rtol=0, atol=1e-8)


def test_backward_out_and_bad_arguments() -> None:
    x = np.random.default_rng(10).standard_normal((2, 2, 6, 6)).astype(np.float32)
    dy = np.ones((2, 2, 3, 3), np.float32)
    out = np.full_like(x, np.nan)
    assert pool2d_backward(dy, x, kernel=2, stride=2, out=out) is out
    np.testing.assert_array_equal(out, pool2d_backward_ref(dy, x, kernel=2, stride=2).astype(np.float32))
    with pytest.raises(ValueError, match="expected shape"):
        pool2d_backward(np.ones((2, 2, 2, 2), np.float32), x, kernel=2, stride=2)
    with pytest.raises(ValueError, match="mask or the forward input"):
        pool2d_backward(dy, x.shape, kernel=2, stride=2)
    with pytest.raises(ValueError, match="int32"):
        pool2d_backward(dy, x, kernel=2, stride=2, mask=np.zeros((2, 2, 3, 3), np.int64))
    with pytest.raises(ValueError, match="only MAX"):
        pool2d_forward(x, method="AVE", kernel=2, stride=2, mask=np.zeros((2, 2, 3, 3), np.int32))
    with pytest.raises(ValueError, match="mask: expected shape"):
        pool2d_forward(x, kernel=2, stride=2, mask=np.zeros((2, 2, 2, 2), np.int32))
    with pytest.raises(ValueError, match="overlap"):
        big = np.zeros((2, 2, 6, 6), np.float32)
        pool2d_backward(big[:, :, :3, :3].copy(), x, kernel=2, stride=2, out=big)  # fine: a copy
        pool2d_backward(big.reshape(-1)[:36].reshape(2, 2, 3, 3), x, kernel=2, stride=2, out=big)


def test_backward_against_torch() -> None:
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(11).standard_normal((3, 4, 13, 11)).astype(np.float32)
    compared = 0
    for k, s, p in (((3, 3), (2, 2), (1, 1)), ((2, 2), (2, 2), (0, 0)), ((3, 2), (1, 2), (1, 0))):
        ours = pool2d_output_shape(x.shape[2:], k, s, p)
        tx = torch.from_numpy(x).requires_grad_()
        ty = torch.nn.functional.max_pool2d(tx, k, s, p, ceil_mode=True)
        if tuple(ty.shape[2:]) != ours:
            continue
        dy = np.random.default_rng(12).standard_normal(ty.shape).astype(np.float32)
        ty.backward(torch.from_numpy(dy))
        dx = pool2d_backward(dy, x, kernel=k, stride=s, pad=p)
        assert np.max(np.abs(dx - tx.grad.numpy())) <= GRAD_ATOL
        compared += 1
    assert compared == 3


@pytest.mark.parametrize("shape", [(1, 1280, 7, 7), (32, 96, 7, 7), (3, 5, 4, 6), (2, 3, 1, 1)])
def test_global_average_gives_the_border_kernels_bits(shape) -> None:
    """An AVE window over the whole plane (global pooling) runs its own kernel (serial for small work) in a runner
    and in pool2d_forward: the same sum order and divisor as the generic border kernel, so its bits; and the
    reference."""
    from kernels.pool import _AVE_BORDER, ForwardRunner

    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    run = ForwardRunner(shape, method="AVE", kernel=shape[2:], stride=(1, 1), pad=(0, 0))
    got = np.empty(run.out_shape, np.float32)
    run(x, got)
    n, c, h, w = shape
    border = np.empty((n * c, 1, 1), np.float32)
    # every output a border output (an empty interior rectangle)
    _AVE_BORDER.serial(_AVE_BORDER.address, 1, x.reshape(n * c, h, w), border, h, w, 1, 1, 0, 0, 0, 0, 0, 0, 1)
    np.testing.assert_array_equal(got.reshape(-1), border.reshape(-1))
    np.testing.assert_array_equal(got, pool2d_forward(x, method="AVE", kernel=shape[2:], stride=(1, 1)))
    ref = pool2d_forward_ref(x, method="AVE", kernel=shape[2:], stride=(1, 1), pad=(0, 0))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("window", sorted(SPECIALISED))
@pytest.mark.parametrize("record", [False, True])
def test_vector_max_interior_has_the_scalar_bits(window, record) -> None:
    """The MAX interior on vectors (one output a lane, `pool._max_run`) against the scalar loops it replaced, on
    values made to tie (rounded: the first maximum keeps the argmax), with NaN (never wins), -0.0 / +0.0 (equal:
    the first one stays), -inf and -FLT_MAX (a window of them gives -FLT_MAX, argmax -1 only where nothing beats it);
    widths whose interior rows end at every lane of a vector (the masked last run), padding 0 and 1."""
    from kernels import pool

    if not pool.VECTOR_MAX:
        pytest.skip("the vector MAX interiors run with AVX-512 only (pool.VECTOR_MAX)")
    kh, kw, sh, sw = window
    rng = np.random.default_rng(sum(window) + record)
    for width in range(kw + 2, kw + 2 + 2 * 16 * sw + 1, 3):
        for pad in (0, 1) if kh == 3 else (0,):
            x = np.round(rng.standard_normal((3, kh + 5, width)) * 2).astype(np.float32)
            special = np.array([np.nan, -0.0, 0.0, -np.inf, NEG_FLT_MAX], np.float32)
            pick = rng.random(x.shape) < 0.2
            x[pick] = rng.choice(special, int(pick.sum()))
            x[1, :, : width // 2] = np.nan  # windows of NaN only
            oh, ow = pool.pool2d_output_shape(x.shape[1:], (kh, kw), (sh, sw), (pad, pad))
            (i0, i1), (j0, j1) = pool._interior(x.shape[1], oh, kh, sh, pad), pool._interior(width, ow, kw, sw, pad)
            if i0 == i1 or j0 == j1:
                continue
            outs = []
            for task in (
                pool._interior_worker(kh, kw, sh, sw, "MAX", record),
                pool.MASK_TASKS[window] if record else pool.INTERIOR_TASKS[(*window, "MAX")],  # VECTOR_MAX's
            ):
                y = np.full((3, oh, ow), 7.0, np.float32)
                m = np.full((3, oh, ow), 7, np.int32) if record else np.empty((0, 0, 0), np.int32)
                task.serial(task.address, 1, x, y, m, i0, i1, j0, j1, pad, pad, 1)
                outs.append((y, m))
            (y0, m0), (y1, m1) = outs
            np.testing.assert_array_equal(y1.view(np.uint32), y0.view(np.uint32), err_msg=f"width {width} pad {pad}")
            np.testing.assert_array_equal(m1, m0, err_msg=f"width {width} pad {pad}")
