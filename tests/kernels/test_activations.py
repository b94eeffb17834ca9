"""Activations: Numba kernels vs NumPy references. ReLU is exact; sigmoid/tanh max abs error <= 1e-6; softmax
max relative error <= 1e-5 (and rows sum to 1); dropout statistics and determinism.

Backward: each float64 reference against central differences of the float64 reference forward (h = 1e-6, ReLU inputs
kept 1e-3 away from the kink; |a - n| <= 1e-7 + 1e-6 * max(|a|, |n|, 1)); the Numba backward against the reference:
ReLU and Dropout exact (one float32 product), Sigmoid/TanH/Softmax max abs error <= 1e-6 on N(0, 1) dy; in-place
(dx aliasing dy, and ReLU given its own output in place of x) equal to out-of-place."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.activations import (
    SERIAL_BELOW,
    dropout_backward,
    dropout_backward_ref,
    dropout_forward,
    dropout_forward_ref,
    relu_backward,
    relu_backward_ref,
    relu_forward,
    relu_forward_ref,
    sigmoid_backward,
    sigmoid_backward_ref,
    sigmoid_forward,
    sigmoid_forward_ref,
    softmax_backward,
    softmax_backward_ref,
    softmax_forward,
    softmax_forward_ref,
    tanh_backward,
    tanh_backward_ref,
    tanh_forward,
    tanh_forward_ref,
)
from tests.gradcheck import assert_grad_close, numeric_grad

SHAPES = [(7,), (3, 1000), (2, 5, 7, 9), (1, 3, 1, 1, 4)]
GRAD_ATOL = 1e-6  # Numba backward vs float64 reference, N(0, 1) dy (Sigmoid, TanH, Softmax)
FD_H, FD_ATOL, FD_RTOL = 1e-6, 1e-7, 1e-6


def _data(shape: tuple[int, ...], seed: int = 0, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# -- ReLU ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu(shape: tuple[int, ...], slope: float) -> None:
    x = _data(shape)
    y = relu_forward(x, slope)
    np.testing.assert_array_equal(y, relu_forward_ref(x, slope))
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_array_equal(relu_forward(x, slope), np.where(x > 0, x, np.float32(slope) * x))


def test_relu_in_place_and_out() -> None:
    x = _data((4, 6, 5, 5))
    want = relu_forward_ref(x, 0.2)
    out = np.empty_like(x)
    assert relu_forward(x, 0.2, out=out) is out
    np.testing.assert_array_equal(out, want)
    assert relu_forward(x, 0.2, out=x) is x
    np.testing.assert_array_equal(x, want)


def test_relu_bad_input() -> None:
    with pytest.raises(ValueError, match="float32"):
        relu_forward(np.zeros(3))
    with pytest.raises(ValueError, match="C-contiguous"):
        relu_forward(np.zeros((4, 4), np.float32).T)
    x = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="expected shape"):
        relu_forward(x, out=np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        relu_forward(x[:2], out=x[1:3])
    same = x.reshape(16).reshape(4, 4)  # another view of the same memory counts as in place
    assert relu_forward(x, out=same) is same


# -- Sigmoid and TanH ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_sigmoid_tanh(shape: tuple[int, ...]) -> None:
    x = _data(shape, scale=8.0)
    x.reshape(-1)[:3] = [-200.0, 200.0, 0.0]  # no overflow at the extremes
    assert np.max(np.abs(sigmoid_forward(x) - sigmoid_forward_ref(x))) <= 1e-6
    assert np.max(np.abs(tanh_forward(x) - tanh_forward_ref(x))) <= 1e-6
    y = x.copy()
    assert sigmoid_forward(y, out=y) is y
    np.testing.assert_array_equal(y, sigmoid_forward(x))


# -- Softmax -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "axis"),
    [((10, 1000), 1), ((4, 10, 3, 5), 1), ((2, 3, 4), 2), ((2, 3, 4), -1), ((5, 7), 0), ((1, 1), 1), ((6,), 0)],
)
def test_softmax(shape: tuple[int, ...], axis: int) -> None:
    x = _data(shape, scale=10.0)
    y = softmax_forward(x, axis=axis)
    ref = softmax_forward_ref(x, axis=axis)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.max(np.abs(y - ref) / np.maximum(ref, 1e-30)) <= 1e-5
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=0, atol=1e-5)


def test_softmax_large_logits_and_in_place() -> None:
    x = np.array([[1000.0, 1000.0, -1000.0], [-5e4, 0.0, 5e4]], np.float32)  # would overflow without the max
    y = softmax_forward(x)
    np.testing.assert_allclose(y, [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], atol=1e-7)
    z = x.copy()
    assert softmax_forward(z, out=z) is z
    np.testing.assert_array_equal(z, y)
    with pytest.raises(ValueError, match="axis 2 out of range"):
        softmax_forward(x, axis=2)


def test_softmax_exp_within_an_ulp_and_its_edges() -> None:
    """The softmax's own exp (`_exp_nonpositive`, vectorised): within 1 ulp of the float64 exp on [-87.3, 0], 1 at 0,
    0 at -inf and below the normal floats, NaN for NaN; a row of -inf logits but one gives that one 1."""
    from numba import njit

    from kernels.activations import _exp_nonpositive

    @njit
    def run(x, y):
        for i in range(x.size):
            y[i] = _exp_nonpositive(x[i])

    x = -np.random.default_rng(0).uniform(0, 87.3, 200_000).astype(np.float32)
    y = np.empty_like(x)
    run(x, y)
    want = np.exp(x.astype(np.float64))
    assert float((np.abs(y - want) / np.spacing(want.astype(np.float32))).max()) <= 1.0
    edges = np.array([0.0, -0.0, -1e-30, -np.inf, np.nan, -87.4, -1e4], np.float32)
    out = np.empty_like(edges)
    run(edges, out)
    np.testing.assert_array_equal(out[:4], [1.0, 1.0, 1.0, 0.0])
    assert np.isnan(out[4]) and out[5] == 0.0 and out[6] == 0.0
    logits = np.array([[-np.inf, 3.0, -np.inf]], np.float32)
    np.testing.assert_array_equal(softmax_forward(logits), [[0.0, 1.0, 0.0]])


# -- Dropout -------------------------------------------------------------------------------------
def test_dropout_test_phase_is_a_copy() -> None:
    x = _data((3, 4, 5))
    y, mask = dropout_forward(x, 0.5)
    assert mask is None and y is not x
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dropout_forward_ref(x, 0.5), x)


def test_dropout_train() -> None:
    x = _data((64, 1000))
    y, mask = dropout_forward(x, 0.3, train=True, rng=np.random.default_rng(5))
    assert mask.dtype == np.bool_ and mask.shape == x.shape
    assert abs(mask.mean() - 0.7) < 0.01
    np.testing.assert_array_equal(y, dropout_forward_ref(x, 0.3, mask))
    np.testing.assert_allclose(y[mask], x[mask] / np.float32(0.7), rtol=1e-6)
    assert (y[~mask] == 0).all()
    _y2, mask2 = dropout_forward(x, 0.3, train=True, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(mask, mask2)  # the rng decides everything
    y0, mask0 = dropout_forward(x, 0.0, train=True)
    assert mask0.all()
    np.testing.assert_array_equal(y0, x)
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        dropout_forward(x, 1.0, train=True)


# -- backward -------------------------------------------------------------------------------------
def _numeric_grad(f, x: np.ndarray, h: float = FD_H) -> np.ndarray:
    return numeric_grad(f, x, h)


def _assert_fd(analytic: np.ndarray, numeric: np.ndarray) -> None:
    assert_grad_close(analytic, numeric, atol=FD_ATOL, rtol=FD_RTOL)


def _fd_case(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2.0
    x[np.abs(x) < 1e-3] = 0.5  # away from ReLU's kink
    return x, rng.standard_normal(shape)


@pytest.mark.parametrize("slope", [0.0, 0.1, -0.3])
def test_relu_backward_finite_differences(slope: float) -> None:
    x, dy = _fd_case((3, 4, 5))
    numeric = _numeric_grad(lambda v: float(np.sum(relu_forward_ref(v, slope) * dy)), x)
    _assert_fd(relu_backward_ref(dy, x, slope), numeric)


def test_sigmoid_tanh_backward_finite_differences() -> None:
    x, dy = _fd_case((2, 3, 7), seed=1)
    y = sigmoid_forward_ref(x)
    _assert_fd(sigmoid_backward_ref(dy, y), _numeric_grad(lambda v: float(np.sum(sigmoid_forward_ref(v) * dy)), x))
    y = tanh_forward_ref(x)
    _assert_fd(tanh_backward_ref(dy, y), _numeric_grad(lambda v: float(np.sum(tanh_forward_ref(v) * dy)), x))


@pytest.mark.parametrize(("shape", "axis"), [((3, 6), 1), ((2, 4, 3, 2), 1), ((2, 3, 4), -1), ((5, 3), 0)])
def test_softmax_backward_finite_differences(shape: tuple[int, ...], axis: int) -> None:
    x, dy = _fd_case(shape, seed=2)
    y = softmax_forward_ref(x, axis)
    numeric = _numeric_grad(lambda v: float(np.sum(softmax_forward_ref(v, axis) * dy)), x)
    _assert_fd(softmax_backward_ref(dy, y, axis), numeric)


def test_dropout_backward_finite_differences() -> None:
    x, dy = _fd_case((4, 9), seed=3)
    mask = np.random.default_rng(4).random(x.shape) < 0.6
    numeric = _numeric_grad(lambda v: float(np.sum(dropout_forward_ref(v, 0.4, mask) * dy)), x)
    _assert_fd(dropout_backward_ref(dy, 0.4, mask), numeric)
    _assert_fd(
        dropout_backward_ref(dy, 0.4), _numeric_grad(lambda v: float(np.sum(dropout_forward_ref(v, 0.4) * dy)), x)
    )


@pytest.mark.parametrize("shape", [*SHAPES, (64, 500), (8, 20, 24, 24)])  # both sides of SERIAL_BELOW
@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu_backward(shape: tuple[int, ...], slope: float) -> None:
    x = _data(shape)
    x.reshape(-1)[:2] = [0.0, -0.0]  # the gradient at exactly 0 uses the slope
    dy = _data(shape, seed=1, scale=1.0)
    dx = relu_backward(dy, x, slope)
    np.testing.assert_array_equal(dx, relu_backward_ref(dy, x, slope).astype(np.float32))
    assert dx.reshape(-1)[0] == dy.reshape(-1)[0] * np.float32(slope)
    # In place, as a Caffe net runs it: the forward overwrote x with y, the backward overwrites dy with dx.
    y = x.copy()
    relu_forward(y, slope, out=y)
    g = dy.copy()
    assert relu_backward(g, y, slope, out=g) is g
    np.testing.assert_array_equal(g, dx)


def test_relu_sizes_straddle_serial_threshold() -> None:
    assert 64 * 500 < SERIAL_BELOW < 8 * 20 * 24 * 24


@pytest.mark.parametrize("shape", SHAPES)
def test_sigmoid_tanh_backward(shape: tuple[int, ...]) -> None:
    x = _data(shape, scale=4.0)
    dy = _data(shape, seed=1, scale=1.0)
    for forward, backward, ref in (
        (sigmoid_forward, sigmoid_backward, sigmoid_backward_ref),
        (tanh_forward, tanh_backward, tanh_backward_ref),
    ):
        y = forward(x)
        dx = backward(dy, y)
        assert dx.dtype == np.float32 and dx.shape == x.shape
        assert np.max(np.abs(dx - ref(dy, y))) <= GRAD_ATOL
        g = dy.copy()
        assert backward(g, y, out=g) is g
        np.testing.assert_array_equal(g, dx)


@pytest.mark.parametrize(("shape", "axis"), [((10, 1000), 1), ((4, 10, 3, 5), 1), ((2, 3, 4), -1), ((5, 7), 0)])
def test_softmax_backward(shape: tuple[int, ...], axis: int) -> None:
    x = _data(shape, scale=3.0)
    dy = _data(shape, seed=1, scale=1.0)
    y = softmax_forward(x, axis=axis)
    dx = softmax_backward(dy, y, axis=axis)
    assert np.max(np.abs(dx - softmax_backward_ref(dy, y, axis))) <= GRAD_ATOL
    np.testing.assert_allclose(dx.sum(axis=axis), 0.0, atol=1e-6)  # the gradient of a sum-to-one map
    g = dy.copy()
    assert softmax_backward(g, y, axis=axis, out=g) is g
    np.testing.assert_array_equal(g, dx)


def test_dropout_backward() -> None:
    x = _data((64, 1000))
    dy = _data(x.shape, seed=1, scale=1.0)
    _y, mask = dropout_forward(x, 0.3, train=True, rng=np.random.default_rng(5))
    dx = dropout_backward(dy, 0.3, mask)
    np.testing.assert_array_equal(dx, dropout_backward_ref(dy, 0.3, mask).astype(np.float32))
    assert (dx[~mask] == 0).all()
    g = dy.copy()
    assert dropout_backward(g, 0.3, mask, out=g) is g
    np.testing.assert_array_equal(g, dx)
    test = dropout_backward(dy, 0.3)  # TEST phase: identity
    assert test is not dy
    np.testing.assert_array_equal(test, dy)
    assert dropout_backward(g, 0.3, out=g) is g


def test_backward_bad_input() -> None:
    dy = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="expected a C-contiguous array of dy's shape"):
        relu_backward(dy, np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="float32"):
        sigmoid_backward(dy.astype(np.float64), dy)
    with pytest.raises(ValueError, match="not overlap dy"):
        tanh_backward(dy[:2], dy[1:3].copy(), out=dy[1:3])  # out overlapping dy but not dy itself
    with pytest.raises(ValueError, match="overlaps y"):
        tanh_backward(dy[:2].copy(), dy[1:3], out=dy[:2])  # out overlapping y but not y itself
    with pytest.raises(ValueError, match="bool"):
        dropout_backward(dy, 0.5, mask=np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="axis 2 out of range"):
        softmax_backward(dy, dy, axis=2)
