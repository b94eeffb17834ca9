"""Concat, Eltwise, BatchNorm (inference), Scale, Bias: Numba/NumPy fast paths vs references. Exact where the
fast path does the same float32 operations in the same order; BatchNorm max relative error <= 1e-5."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.elementwise import (
    batchnorm_forward_inference,
    batchnorm_forward_inference_ref,
    bias_forward,
    bias_forward_ref,
    concat_forward,
    concat_forward_ref,
    eltwise_forward,
    eltwise_forward_ref,
    scale_forward,
    scale_forward_ref,
)


def _data(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- Concat --------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1])
def test_concat(axis: int) -> None:
    base = (2, 3, 4, 5)
    xs = []
    for i, size in enumerate((1, 4, 2)):
        shape = list(base)
        shape[axis] = size
        xs.append(_data(tuple(shape), seed=i))
    y = concat_forward(xs, axis=axis)
    np.testing.assert_array_equal(y, concat_forward_ref(xs, axis=axis))
    assert y.shape[axis % 4] == 7


def test_concat_single_and_errors() -> None:
    x = _data((2, 3))
    y = concat_forward([x])
    assert y is not x
    np.testing.assert_array_equal(y, x)
    with pytest.raises(ValueError, match="except on axis 1"):
        concat_forward([x, _data((3, 3))])
    with pytest.raises(ValueError, match="at least one"):
        concat_forward([])
    with pytest.raises(ValueError, match="axis 2 out of range"):
        concat_forward([x, x], axis=2)
    with pytest.raises(ValueError, match="float32"):
        concat_forward([x, x.astype(np.float64)])


# -- Eltwise -------------------------------------------------------------------------------------
@pytest.mark.parametrize("operation", ["SUM", "PROD", "MAX"])
@pytest.mark.parametrize("count", [2, 3, 4])
def test_eltwise(operation: str, count: int) -> None:
    xs = [_data((2, 3, 5, 7), seed=i) for i in range(count)]
    coeffs = [1.0, -0.5, 2.0, 0.25][:count] if operation == "SUM" else None
    y = eltwise_forward(xs, operation, coeffs)
    np.testing.assert_array_equal(y, eltwise_forward_ref(xs, operation, coeffs))
    if operation == "SUM":
        np.testing.assert_allclose(y, sum(c * x for c, x in zip(coeffs, xs)), rtol=1e-6, atol=1e-6)
    elif operation == "MAX":
        np.testing.assert_array_equal(y, np.max(xs, axis=0))


def test_eltwise_max_tie_rule() -> None:
    # Values that compare equal but differ in sign (+0 / -0) reveal which bottom won a tie.
    a = np.array([0.0, -0.0, 1.0], np.float32)
    b = np.array([-0.0, 0.0, 1.0], np.float32)
    y = eltwise_forward([a, b], "MAX")
    np.testing.assert_array_equal(np.signbit(y), np.signbit(b))  # tie between bottom 0 and 1: bottom 1
    c = np.array([0.0, -0.0, 1.0], np.float32)
    y3 = eltwise_forward([a, b, c], "MAX")
    np.testing.assert_array_equal(np.signbit(y3), np.signbit(b))  # later bottoms need strictly greater
    np.testing.assert_array_equal(np.signbit(eltwise_forward_ref([a, b, c], "MAX")), np.signbit(b))


def test_eltwise_in_place_and_errors() -> None:
    xs = [_data((3, 4), seed=i) for i in range(3)]
    want = eltwise_forward_ref(xs, "SUM")
    x0 = xs[0].copy()
    assert eltwise_forward([x0, xs[1], xs[2]], "SUM", out=x0) is x0
    np.testing.assert_array_equal(x0, want)
    with pytest.raises(ValueError, match="overlaps input 2"):
        eltwise_forward(xs, "SUM", out=xs[2])
    with pytest.raises(ValueError, match="only allowed with operation SUM"):
        eltwise_forward(xs, "PROD", coeffs=[1, 1, 1])
    with pytest.raises(ValueError, match="one coeff per input"):
        eltwise_forward(xs, "SUM", coeffs=[1, 1])
    with pytest.raises(ValueError, match="at least 2"):
        eltwise_forward(xs[:1], "SUM")
    with pytest.raises(ValueError, match=r"expected shape \(3, 4\)"):
        eltwise_forward([xs[0], _data((4, 3))], "SUM")
    with pytest.raises(ValueError, match="operation"):
        eltwise_forward(xs, "MIN")


# -- BatchNorm -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (3, 8), (2, 3, 4, 5, 2)])
@pytest.mark.parametrize("s", [999.0, 1.0, 0.0])
def test_batchnorm_inference(shape: tuple[int, ...], s: float) -> None:
    rng = np.random.default_rng(7)
    x = _data(shape) * 3 + 1
    c = shape[1]
    mean_sum = rng.standard_normal(c).astype(np.float32) * s
    var_sum = rng.uniform(0.5, 2.0, c).astype(np.float32) * s
    y = batchnorm_forward_inference(x, mean_sum, var_sum, np.array([s], np.float32), eps=1e-5)
    ref = batchnorm_forward_inference_ref(x, mean_sum, var_sum, s, eps=1e-5)
    assert np.max(np.abs(y - ref) / np.maximum(np.abs(ref), 1e-3)) <= 1e-5
    if s == 0:  # factor 0: mean 0, var 0 -> x / sqrt(eps)
        np.testing.assert_allclose(y, x / np.sqrt(np.float32(1e-5)), rtol=1e-6)
    else:
        m = (mean_sum / s).reshape((1, c) + (1,) * (len(shape) - 2))
        v = (var_sum / s).reshape(m.shape)
        np.testing.assert_allclose(y, (x - m) / np.sqrt(v + 1e-5), rtol=1e-4, atol=1e-5)


def test_batchnorm_in_place_and_errors() -> None:
    x = _data((2, 3, 4, 4))
    m, v = np.zeros(3, np.float32), np.ones(3, np.float32)
    want = batchnorm_forward_inference(x, m, v, 1.0)
    assert batchnorm_forward_inference(x, m, v, 1.0, out=x) is x
    np.testing.assert_array_equal(x, want)
    with pytest.raises(ValueError, match="expected 3 values"):
        batchnorm_forward_inference(x, np.zeros(4, np.float32), v, 1.0)
    with pytest.raises(ValueError, match="channel axis"):
        batchnorm_forward_inference(np.zeros(3, np.float32), m, v, 1.0)


# -- Scale and Bias ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "axis", "pshape"),
    [
        ((2, 3, 4, 5), 1, (3,)),  # per channel (Caffe default)
        ((2, 3, 4, 5), 1, (3, 4)),  # two axes
        ((2, 3, 4, 5), 0, (2, 3, 4, 5)),  # full shape
        ((2, 3, 4, 5), 3, (5,)),  # last axis
        ((2, 3, 4, 5), -2, (4,)),  # negative axis
        ((2, 3, 4, 5), 1, ()),  # num_axes 0: one scalar
        ((6, 10), 1, (10,)),
    ],
)
def test_scale_and_bias(shape, axis: int, pshape) -> None:
    x = _data(shape)
    gamma, beta = _data(pshape, seed=1), _data(pshape, seed=2)
    np.testing.assert_array_equal(scale_forward(x, gamma, axis=axis), scale_forward_ref(x, gamma, axis=axis))
    np.testing.assert_array_equal(scale_forward(x, gamma, beta, axis=axis), scale_forward_ref(x, gamma, beta, axis))
    np.testing.assert_array_equal(bias_forward(x, beta, axis=axis), bias_forward_ref(x, beta, axis=axis))
    a = axis % len(shape)
    bshape = (1,) * a + tuple(pshape) + (1,) * (len(shape) - a - len(pshape))
    np.testing.assert_array_equal(
        scale_forward(x, gamma, beta, axis=axis), x * gamma.reshape(bshape) + beta.reshape(bshape)
    )


def test_scale_bias_in_place_and_errors() -> None:
    x = _data((2, 3, 4))
    g = _data((3,), seed=1)
    want = scale_forward_ref(x, g)
    assert scale_forward(x, g, out=x) is x
    np.testing.assert_array_equal(x, want)
    with pytest.raises(ValueError, match=r"expected parameter shape \(3,\)"):
        scale_forward(x, _data((4,)))
    with pytest.raises(ValueError, match=r"expected parameter shape \(3, 4\)"):
        bias_forward(x, _data((3, 5)))
    with pytest.raises(ValueError, match="beta shape"):
        scale_forward(x, g, _data((1,)))
    with pytest.raises(ValueError, match="float32"):
        bias_forward(x, np.zeros(3))
    with pytest.raises(ValueError, match="axis 3 out of range"):
        bias_forward(x, g, axis=3)
