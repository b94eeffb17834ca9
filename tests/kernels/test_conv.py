"""kernels.conv against its float64 NumPy reference (and torch.nn.functional.conv2d when torch imports)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.conv import conv2d_forward, conv2d_forward_ref, conv2d_output_shape

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
