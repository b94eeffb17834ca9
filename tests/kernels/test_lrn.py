"""LRN: Numba kernels vs the float64 NumPy reference (max relative error <= 1e-5), a hand-computed value, both
regions, the beta fast paths, and torch's local_response_norm (same alpha / n convention) where torch imports.

Backward: the float64 reference against central differences of the float64 reference forward (h = 1e-6,
|a - n| <= 1e-7 + 1e-6 * max(|a|, |n|, 1)); the Numba backward against the reference, max abs error <= 2e-6 times the
largest |dx| (float32 powers and products; measured about 3e-7)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.lrn import lrn_backward, lrn_backward_ref, lrn_forward, lrn_forward_ref
from tests.gradcheck import assert_grad_close, numeric_grad

RTOL = 1e-5
GRAD_RTOL = 2e-6  # Numba backward vs reference, relative to the largest |dx|
FD_H, FD_ATOL, FD_RTOL = 1e-6, 1e-7, 1e-6


def _rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(y - ref) / np.maximum(np.abs(ref), 1e-6), initial=0.0))


def _data(shape: tuple[int, ...], seed: int = 0, scale: float = 10.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def test_hand_computed_across() -> None:
    x = np.array([1, 2, 3], np.float32).reshape(1, 3, 1, 1)
    y = lrn_forward(x, local_size=3, alpha=3.0, beta=0.75, k=2.0)
    sums = np.array([1 + 4, 1 + 4 + 9, 4 + 9], np.float64)  # channel windows, zero outside
    np.testing.assert_allclose(y.ravel(), [1, 2, 3] * (2.0 + sums) ** -0.75, rtol=RTOL)


def test_hand_computed_within() -> None:
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 0, 0], x[0, 0, 1, 1] = 2.0, 1.0
    y = lrn_forward(x, local_size=3, alpha=9.0, beta=1.0, k=100.0, region="WITHIN_CHANNEL")  # k is ignored
    np.testing.assert_allclose(y[0, 0, 0, 0], 2.0 / (1 + 9.0 / 9 * (4 + 1)), rtol=RTOL)
    np.testing.assert_allclose(y[0, 0, 1, 1], 1.0 / (1 + 9.0 / 9 * (4 + 1)), rtol=RTOL)


@pytest.mark.parametrize(
    ("shape", "size", "alpha", "beta", "k"),
    [
        ((2, 96, 27, 27), 5, 1e-4, 0.75, 1.0),  # CaffeNet norm1 parameters
        ((2, 256, 13, 13), 5, 1e-4, 0.75, 1.0),  # norm2
        ((3, 7, 5, 9), 5, 0.3, 0.75, 2.0),  # fewer channels than local_size, odd sizes
        ((2, 11, 3, 50), 3, 0.5, 0.6, 1.5),  # general beta (powf), BLOCK-crossing rows
        ((1, 4, 17, 19), 9, 1.0, 1.0, 1.0),  # beta 1 fast path, window wider than C
        ((2, 6, 2, 2), 1, 2.0, 0.5, 0.5),  # local_size 1, beta 0.5 fast path
    ],
)
@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_matches_reference(shape, size: int, alpha: float, beta: float, k: float, region: str) -> None:
    x = _data(shape, seed=size)
    kw = {"local_size": size, "alpha": alpha, "beta": beta, "k": k, "region": region}
    y = lrn_forward(x, **kw)
    assert y.shape == x.shape and y.dtype == np.float32
    assert _rel_err(y, lrn_forward_ref(x, **kw)) <= RTOL


def test_running_sum_does_not_drift() -> None:
    # One huge channel enters and leaves the window; the small channels after it must still be exact.
    x = _data((1, 64, 4, 4), scale=1.0)
    x[0, 3] = 3e4
    kw = {"local_size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}
    assert _rel_err(lrn_forward(x, **kw), lrn_forward_ref(x, **kw)) <= RTOL


def test_bad_input() -> None:
    x = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="odd"):
        lrn_forward(x, local_size=4)
    with pytest.raises(ValueError, match="region"):
        lrn_forward(x, region="ACROSS")
    with pytest.raises(ValueError, match="4-D float32"):
        lrn_forward(x.astype(np.float64))
    with pytest.raises(ValueError, match="4-D float32"):
        lrn_forward(x[0])
    with pytest.raises(ValueError, match="C-contiguous"):
        lrn_forward(np.zeros((1, 3, 4, 8), np.float32)[..., ::2])


@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_against_torch(beta: float) -> None:
    torch = pytest.importorskip("torch")
    for shape, size in (((2, 96, 27, 27), 5), ((3, 10, 7, 5), 3), ((1, 4, 6, 6), 7)):
        x = _data(shape, seed=size)
        y = lrn_forward(x, local_size=size, alpha=1e-3, beta=beta, k=2.0)
        t = torch.nn.functional.local_response_norm(torch.from_numpy(x), size, alpha=1e-3, beta=beta, k=2.0)
        assert _rel_err(y, t.numpy()) <= RTOL


# -- backward -------------------------------------------------------------------------------------
def _numeric_grad(f, x: np.ndarray, h: float = FD_H) -> np.ndarray:
    return numeric_grad(f, x, h)


@pytest.mark.parametrize(
    ("shape", "size", "alpha", "beta", "k"),
    [
        ((2, 7, 3, 4), 5, 0.8, 0.75, 1.0),
        ((1, 3, 5, 5), 5, 2.0, 0.6, 2.0),  # window wider than C
        ((2, 4, 4, 3), 3, 1.5, 1.0, 1.5),
        ((1, 5, 2, 3), 1, 0.5, 0.5, 0.7),
    ],
)
@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_backward_ref_matches_finite_differences(shape, size: int, alpha: float, beta: float, k: float, region):
    kw = {"local_size": size, "alpha": alpha, "beta": beta, "k": k, "region": region}
    rng = np.random.default_rng(size)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    assert lrn_forward_ref(x, **kw).dtype == np.float64
    numeric = _numeric_grad(lambda v: float(np.sum(lrn_forward_ref(v, **kw) * dy)), x)
    analytic = lrn_backward_ref(dy, x, **kw)
    assert_grad_close(analytic, numeric, atol=FD_ATOL, rtol=FD_RTOL)


@pytest.mark.parametrize(
    ("shape", "size", "alpha", "beta", "k"),
    [
        ((2, 96, 27, 27), 5, 1e-4, 0.75, 1.0),  # CaffeNet norm1 parameters
        ((2, 256, 13, 13), 5, 1e-4, 0.75, 1.0),  # norm2
        ((3, 7, 5, 9), 5, 0.3, 0.75, 2.0),
        ((2, 11, 3, 50), 3, 0.5, 0.6, 1.5),  # general beta, BLOCK-crossing rows
        ((1, 4, 17, 19), 9, 1.0, 1.0, 1.0),  # window wider than C
        ((2, 6, 2, 2), 1, 2.0, 0.5, 0.5),
    ],
)
@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_backward_matches_reference(shape, size: int, alpha: float, beta: float, k: float, region: str) -> None:
    x = _data(shape, seed=size, scale=3.0)
    dy = _data(shape, seed=size + 1, scale=1.0)
    kw = {"local_size": size, "alpha": alpha, "beta": beta, "k": k, "region": region}
    dx = lrn_backward(dy, x, **kw)
    ref = lrn_backward_ref(dy, x, **kw)
    assert dx.shape == x.shape and dx.dtype == np.float32
    assert np.max(np.abs(dx - ref)) <= GRAD_RTOL * np.max(np.abs(ref))


def test_backward_out_and_bad_input() -> None:
    x, dy = _data((1, 5, 3, 3)), _data((1, 5, 3, 3), seed=1)
    out = np.full_like(x, np.nan)
    assert lrn_backward(dy, x, local_size=3, out=out) is out
    np.testing.assert_array_equal(out, lrn_backward(dy, x, local_size=3))
    with pytest.raises(ValueError, match="expected dy of shape"):
        lrn_backward(dy[:, :4].copy(), x)
    with pytest.raises(ValueError, match="dy: expected a 4-D float32"):
        lrn_backward(dy.astype(np.float64), x)
    with pytest.raises(ValueError, match="must not overlap"):
        lrn_backward(dy, x, out=dy)


def test_backward_against_torch() -> None:
    torch = pytest.importorskip("torch")
    x = _data((2, 96, 9, 9), seed=3, scale=5.0)
    dy = _data(x.shape, seed=4, scale=1.0)
    tx = torch.from_numpy(x).requires_grad_()
    torch.nn.functional.local_response_norm(tx, 5, alpha=1e-2, beta=0.75, k=2.0).backward(torch.from_numpy(dy))
    dx = lrn_backward(dy, x, local_size=5, alpha=1e-2, beta=0.75, k=2.0)
    assert np.max(np.abs(dx - tx.grad.numpy())) <= 1e-5 * np.max(np.abs(dx))
