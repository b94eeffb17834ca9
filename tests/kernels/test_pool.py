"""Pooling: Caffe's output-size rule, Numba kernels vs the NumPy reference, hand-checked edges, torch where it
agrees. Tolerances: MAX is exact (a selection), AVE max abs error <= 1e-6 on N(0, 1) data."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.pool import NEG_FLT_MAX, global_pool_forward, pool2d_forward, pool2d_forward_ref, pool2d_output_shape

AVE_ATOL = 1e-6


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
