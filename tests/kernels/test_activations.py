"""Activations: Numba kernels vs NumPy references. ReLU is exact; sigmoid/tanh max abs error <= 1e-6; softmax
max relative error <= 1e-5 (and rows sum to 1); dropout statistics and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.activations import (
    dropout_forward,
    dropout_forward_ref,
    relu_forward,
    relu_forward_ref,
    sigmoid_forward,
    sigmoid_forward_ref,
    softmax_forward,
    softmax_forward_ref,
    tanh_forward,
    tanh_forward_ref,
)

SHAPES = [(7,), (3, 1000), (2, 5, 7, 9), (1, 3, 1, 1, 4)]


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
