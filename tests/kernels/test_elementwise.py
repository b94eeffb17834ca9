"""Concat, Eltwise, BatchNorm (inference), Scale, Bias: Numba/NumPy fast paths vs references. Exact where the
fast path does the same float32 operations in the same order; BatchNorm max relative error <= 1e-5.

Backward: each float64 reference against central differences of the float64 reference forward (h = 1e-6, Eltwise MAX
on distinct values spaced 1e-2 apart; |a - n| <= 1e-7 + 1e-6 * max(|a|, |n|, 1)); the fast backward against the
reference: Concat, Eltwise SUM/MAX, Scale/Bias dx exact (copies or one float32 product); Eltwise PROD and the
parameter sums (float64, rounded once) relative error <= 1e-6; Split (float32 sums in Caffe's order) max abs error
<= 1e-6 on N(0, 1) data. Parameter gradients accumulate into the arrays passed in."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.elementwise import (
    batchnorm_forward_inference,
    batchnorm_forward_inference_ref,
    bias_backward,
    bias_backward_ref,
    bias_forward,
    bias_forward_ref,
    concat_backward,
    concat_backward_ref,
    concat_forward,
    concat_forward_ref,
    eltwise_backward,
    eltwise_backward_ref,
    eltwise_forward,
    eltwise_forward_ref,
    scale_backward,
    scale_backward_ref,
    scale_forward,
    scale_forward_ref,
    split_backward,
    split_backward_ref,
)
from tests.gradcheck import assert_grad_close, numeric_grad

FD_H, FD_ATOL, FD_RTOL = 1e-6, 1e-7, 1e-6
GRAD_RTOL = 1e-6


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


# -- backward -------------------------------------------------------------------------------------
def _assert_fd(analytic: np.ndarray, numeric: np.ndarray) -> None:
    assert_grad_close(analytic, numeric, atol=FD_ATOL, rtol=FD_RTOL)


def _numeric_grad(f, x: np.ndarray) -> np.ndarray:
    """Central differences (tests.gradcheck, step FD_H) of the scalar f(), which reads x as it is perturbed."""
    return numeric_grad(lambda _: f(), x, FD_H)


def _close(a: np.ndarray, ref: np.ndarray, rtol: float = GRAD_RTOL) -> None:
    assert a.dtype == np.float32 and a.shape == ref.shape
    assert np.all(np.abs(a - ref) <= rtol * np.abs(ref) + 1e-30), np.max(np.abs(a - ref))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_backward(axis: int) -> None:
    rng = np.random.default_rng(0)
    sizes = (1, 3, 2)
    xs = []
    for size in sizes:
        shape = [2, 3, 4]
        shape[axis] = size
        xs.append(rng.standard_normal(shape))
    dy = rng.standard_normal(concat_forward_ref(xs, axis=axis).shape)
    refs = concat_backward_ref(dy, sizes, axis)
    for x, ref in zip(xs, refs):
        _assert_fd(ref, _numeric_grad(lambda: float(np.sum(concat_forward_ref(xs, axis=axis) * dy)), x))
    dy32 = dy.astype(np.float32)
    got = concat_backward(dy32, sizes, axis)
    for g, ref in zip(got, concat_backward_ref(dy32, sizes, axis)):
        assert g.flags.c_contiguous and not np.shares_memory(g, dy32)
        np.testing.assert_array_equal(g, ref.astype(np.float32))
    assert concat_backward(dy32, sizes, axis, propagate_down=[False, True, False])[::2] == [None, None]
    with pytest.raises(ValueError, match="must add up"):
        concat_backward(dy32, (1, 2, 2), axis)


@pytest.mark.parametrize("operation", ["SUM", "PROD", "MAX"])
@pytest.mark.parametrize("count", [2, 3])
def test_eltwise_backward_ref_finite_differences(operation: str, count: int) -> None:
    rng = np.random.default_rng(count)
    shape = (2, 3, 4)
    n = int(np.prod(shape))
    if operation == "MAX":  # distinct values across all inputs
        values = (rng.permutation(n * count) - n * count / 2) * 1e-2
        xs = [values[i * n : (i + 1) * n].reshape(shape) for i in range(count)]
    else:
        xs = [rng.standard_normal(shape) for _ in range(count)]
    coeffs = [1.5, -0.5, 2.0][:count] if operation == "SUM" else None
    dy = rng.standard_normal(shape)
    for x, ref in zip(xs, eltwise_backward_ref(dy, xs, operation, coeffs)):
        _assert_fd(ref, _numeric_grad(lambda: float(np.sum(eltwise_forward_ref(xs, operation, coeffs) * dy)), x))


@pytest.mark.parametrize("operation", ["SUM", "PROD", "MAX"])
@pytest.mark.parametrize("count", [2, 3, 4])
def test_eltwise_backward(operation: str, count: int) -> None:
    xs = [_data((2, 3, 5, 7), seed=i) for i in range(count)]
    xs[1].reshape(-1)[::5] = xs[0].reshape(-1)[::5]  # ties between bottoms 0 and 1
    dy = _data((2, 3, 5, 7), seed=9)
    coeffs = [1.0, -0.5, 2.0, 0.25][:count] if operation == "SUM" else None
    refs = eltwise_backward_ref(dy, xs, operation, coeffs)
    mask = None
    if operation == "MAX":
        mask = np.full(dy.shape, -1, np.int32)
        y = eltwise_forward(xs, "MAX", mask=mask)
        np.testing.assert_array_equal(y, eltwise_forward_ref(xs, "MAX"))
        assert (mask.reshape(-1)[::5] >= 1).all()  # a 0/1 tie goes to bottom 1
    grads = eltwise_backward(dy, xs, operation, coeffs, mask=mask)
    for g, ref in zip(grads, refs):
        if operation == "PROD":
            _close(g, ref)
        else:
            np.testing.assert_array_equal(g, ref.astype(np.float32))
    if operation == "MAX":  # without the recorded mask, the winners are recomputed from the inputs
        for g, h in zip(grads, eltwise_backward(dy, xs, "MAX")):
            np.testing.assert_array_equal(g, h)
        np.testing.assert_array_equal(np.sum(grads, axis=0), dy)  # every gradient goes to exactly one bottom
    partial = eltwise_backward(dy, xs, operation, coeffs, propagate_down=[True] + [False] * (count - 1))
    assert partial[1:] == [None] * (count - 1)
    np.testing.assert_array_equal(partial[0], grads[0])


def test_eltwise_mask_errors() -> None:
    xs = [_data((3, 4)), _data((3, 4), seed=1)]
    with pytest.raises(ValueError, match="only MAX"):
        eltwise_forward(xs, "SUM", mask=np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match="int32"):
        eltwise_forward(xs, "MAX", mask=np.zeros((3, 4), np.int64))
    with pytest.raises(ValueError, match="propagate_down"):
        eltwise_backward(xs[0], xs, "SUM", propagate_down=[True])


@pytest.mark.parametrize("count", [1, 2, 4])
def test_split_backward(count: int) -> None:
    dys = [_data((3, 5, 7), seed=i) for i in range(count)]
    ref = split_backward_ref(dys)
    dx = split_backward(dys)
    assert dx.dtype == np.float32 and all(not np.shares_memory(dx, d) for d in dys)
    assert np.max(np.abs(dx - ref)) <= 1e-6
    first = dys[0].copy()
    assert split_backward([first, *dys[1:]], out=first) is first
    np.testing.assert_array_equal(first, dx)
    if count > 1:
        with pytest.raises(ValueError, match="overlaps dy 1"):
            split_backward(dys, out=dys[1])


@pytest.mark.parametrize(
    ("shape", "axis", "pshape"),
    [((2, 3, 4), 1, (3,)), ((2, 3, 4), 1, (3, 4)), ((2, 3, 4), 0, (2, 3, 4)), ((2, 3, 4), -1, (4,)), ((2, 3), 1, ())],
)
def test_scale_bias_backward_ref_finite_differences(shape, axis: int, pshape) -> None:
    rng = np.random.default_rng(len(pshape))
    x, gamma, beta = rng.standard_normal(shape), rng.standard_normal(pshape), rng.standard_normal(pshape)
    dy = rng.standard_normal(shape)
    dx, dgamma, dbeta = scale_backward_ref(dy, x, gamma, axis)

    def loss() -> float:
        return float(np.sum(scale_forward_ref(x, gamma, beta, axis) * dy))

    _assert_fd(dx, _numeric_grad(loss, x))
    _assert_fd(dgamma, _numeric_grad(loss, gamma))
    _assert_fd(dbeta, _numeric_grad(loss, beta))
    dx, dbeta = bias_backward_ref(dy, beta, axis)
    _assert_fd(dx, _numeric_grad(lambda: float(np.sum(bias_forward_ref(x, beta, axis) * dy)), x))
    _assert_fd(dbeta, _numeric_grad(lambda: float(np.sum(bias_forward_ref(x, beta, axis) * dy)), beta))


@pytest.mark.parametrize(
    ("shape", "axis", "pshape"),
    [
        ((2, 3, 4, 5), 1, (3,)),
        ((2, 3, 4, 5), 1, (3, 4)),
        ((2, 3, 4, 5), 0, (2, 3, 4, 5)),
        ((6, 10), 1, (10,)),
        ((2, 3, 4, 5), 1, ()),
    ],
)
def test_scale_bias_backward(shape, axis: int, pshape) -> None:
    x, dy = _data(shape), _data(shape, seed=3)
    gamma = _data(pshape, seed=1)
    rdx, rdg, rdb = scale_backward_ref(dy, x, gamma, axis)
    dx, dg, db = scale_backward(dy, x, gamma, axis, need_dbeta=True)
    np.testing.assert_array_equal(dx, rdx.astype(np.float32))
    _close(dg, rdg)
    _close(db, rdb)
    # parameter gradients accumulate; the input gradient is overwritten (here in place, over dy)
    acc_g, acc_b = np.ones(pshape, np.float32), np.full(pshape, 2.0, np.float32)
    g = dy.copy()
    got = scale_backward(g, x, gamma, axis, need_dbeta=True, out=g, dgamma=acc_g, dbeta=acc_b)
    assert got[0] is g and got[1] is acc_g and got[2] is acc_b
    np.testing.assert_array_equal(g, dx)
    np.testing.assert_array_equal(acc_g, np.float32(1.0) + dg)  # += of the same float32 gradient
    np.testing.assert_array_equal(acc_b, np.float32(2.0) + db)
    assert scale_backward(dy, x, gamma, axis, need_dx=False, need_dgamma=False) == (None, None, None)
    bdx, bdb = bias_backward(dy, gamma, axis)
    np.testing.assert_array_equal(bdx, dy)
    assert not np.shares_memory(bdx, dy)
    _close(bdb, bias_backward_ref(dy, gamma, axis)[1])
    acc = np.ones(pshape, np.float32)
    none, got_acc = bias_backward(dy, gamma, axis, need_dx=False, dbeta=acc)
    assert none is None and got_acc is acc
    np.testing.assert_array_equal(acc, np.float32(1.0) + bdb)
    g = dy.copy()
    assert bias_backward(g, gamma, axis, out=g, need_dbeta=False)[0] is g


def test_scale_backward_errors() -> None:
    x, dy, g = _data((2, 3, 4)), _data((2, 3, 4), seed=1), _data((3,), seed=2)
    with pytest.raises(ValueError, match="expected a float32 array of shape"):
        scale_backward(dy, x, g, dgamma=np.zeros((4,), np.float32))
    with pytest.raises(ValueError, match="x: expected shape"):
        scale_backward(dy, x[:1].copy(), g)
    with pytest.raises(ValueError, match="overlaps x"):
        scale_backward(dy, x, g, out=x)
