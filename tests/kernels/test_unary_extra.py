"""kernels.unary (ELU, Power, Exp, Log, AbsVal, BNLL, Threshold, Swish, PReLU) against float64 NumPy references and
float64 central differences (tests/gradcheck.py).

Tolerances: forward |crema - ref| <= 2e-6 * max(|ref|, 1) (float32 transcendental functions); backward against the
float64 reference within 3e-6 * max(|ref|, 1); the references' gradients against central differences (h = 1e-6,
float64) within 1e-6 + 1e-6 * max(|a|, |n|, 1), away from kinks. The parallel kernel and its serial twin give the
same bits."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import unary
from tests.gradcheck import assert_grad_close, numeric_grad

RTOL_F, RTOL_B = 2e-6, 3e-6

# name -> (forward, forward_ref, backward, backward_ref, kwargs, backward reads "x" or "y", input scale)
OPS = {
    "elu": (unary.elu_forward, unary.elu_forward_ref, unary.elu_backward, unary.elu_backward_ref, {"alpha": 0.7}, "y"),
    "power": (
        unary.power_forward,
        unary.power_forward_ref,
        unary.power_backward,
        unary.power_backward_ref,
        {"power": 2.5, "scale": 0.5, "shift": 3.0},
        "x",
    ),
    "power_int": (
        unary.power_forward,
        unary.power_forward_ref,
        unary.power_backward,
        unary.power_backward_ref,
        {"power": 3.0, "scale": -1.5, "shift": 0.25},
        "x",
    ),
    "exp": (
        unary.exp_forward,
        unary.exp_forward_ref,
        unary.exp_backward,
        unary.exp_backward_ref,
        {"base": 2.0, "scale": 0.5, "shift": 1.0},
        "y",
    ),
    "exp_e": (unary.exp_forward, unary.exp_forward_ref, unary.exp_backward, unary.exp_backward_ref, {}, "y"),
    "log": (
        unary.log_forward,
        unary.log_forward_ref,
        unary.log_backward,
        unary.log_backward_ref,
        {"base": 10.0, "scale": 0.5, "shift": 4.0},
        "x",
    ),
    "absval": (
        unary.absval_forward,
        unary.absval_forward_ref,
        unary.absval_backward,
        unary.absval_backward_ref,
        {},
        "x",
    ),
    "bnll": (unary.bnll_forward, unary.bnll_forward_ref, unary.bnll_backward, unary.bnll_backward_ref, {}, "x"),
    "swish": (
        unary.swish_forward,
        unary.swish_forward_ref,
        unary.swish_backward,
        unary.swish_backward_ref,
        {"beta": 1.5},
        "x",
    ),
}


def _x(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 2
    x.reshape(-1)[:3] = [0.0, 60.0, -60.0]  # zero and BNLL/Swish/ELU far tails
    return x


def _close(a: np.ndarray, ref: np.ndarray, rtol: float) -> None:
    err = np.abs(a.astype(np.float64) - ref)
    bound = rtol * np.maximum(np.abs(ref), 1.0)
    assert a.dtype == np.float32 and np.all(err <= bound), float(np.max(err / bound))


@pytest.mark.parametrize("name", sorted(OPS))
def test_forward_backward_match_reference(name: str) -> None:
    fwd, fref, bwd, bref, kw, reads = OPS[name]
    x = _x((3, 4, 5))
    if name in ("exp", "exp_e", "power", "power_int"):
        x.reshape(-1)[1:3] = [3.0, -3.0]  # keep exp/pow in range for a relative comparison
    if name == "log":
        x = np.abs(x)  # inside the domain (4 + 0.5 x > 0)
    y = fwd(x, **kw)
    _close(y, fref(x, **kw), RTOL_F)
    dy = _x((3, 4, 5), 1)
    dx = bwd(dy, y if reads == "y" else x, **kw)
    _close(dx, bref(dy, x, **kw), RTOL_B)
    # in place: forward into x's memory, backward over dy
    x2, dy2 = x.copy(), dy.copy()
    fwd(x2, **kw, out=x2)
    np.testing.assert_array_equal(x2, y)
    bwd(dy2, y if reads == "y" else x, **kw, out=dy2)
    np.testing.assert_array_equal(dy2, dx)


@pytest.mark.parametrize("name", sorted(OPS))
def test_reference_gradient_is_the_derivative(name: str) -> None:
    _, fref, _, bref, kw, _ = OPS[name]
    x = np.random.default_rng(3).standard_normal((2, 7)) * 1.5
    x[np.abs(x) < 0.05] += 0.2  # away from AbsVal's and ELU's kinks
    dy = np.random.default_rng(4).standard_normal(x.shape)
    num = numeric_grad(lambda v: float(np.sum(dy * fref(v, **kw))), x.copy())
    ana = bref(dy, x, **kw)
    assert_grad_close(ana, num, atol=1e-6, rtol=1e-6, what=name)


def test_parallel_and_serial_kernels_give_the_same_bits() -> None:
    x = _x((unary.SERIAL_BELOW + 7,), 5)
    for name in ("elu", "swish", "bnll", "log"):
        fwd, _, _, _, kw, _ = OPS[name]
        big = fwd(x, **kw)
        small = np.concatenate([fwd(np.ascontiguousarray(part), **kw) for part in np.array_split(x, 4)])
        np.testing.assert_array_equal(big, small)


def test_threshold() -> None:
    x = np.array([-1.0, 0.5, 0.5000001, 2.0, np.nan], np.float32)
    np.testing.assert_array_equal(unary.threshold_forward(x, 0.5), [0, 0, 1, 1, 0])
    np.testing.assert_array_equal(unary.threshold_forward_ref(x[:4], 0.5), [0, 0, 1, 1])


def test_power_constant_cases() -> None:
    x = _x((4,))
    np.testing.assert_array_equal(unary.power_forward(x, power=0.0, scale=2.0, shift=3.0), np.ones(4))
    np.testing.assert_array_equal(unary.power_forward(x, power=2.0, scale=0.0, shift=3.0), np.full(4, 9.0))
    np.testing.assert_array_equal(unary.power_backward(x, x, power=2.0, scale=0.0, shift=3.0), np.zeros(4))


@pytest.mark.parametrize("shared", [False, True])
def test_prelu(shared: bool) -> None:
    x = _x((2, 3, 4, 5), 6)
    slope = np.float32([0.25]) if shared else np.float32([0.1, -0.3, 0.6])
    y = unary.prelu_forward(x, slope)
    _close(y, unary.prelu_forward_ref(x, slope), 1e-7)
    dy = _x(x.shape, 7)
    acc = np.full(slope.shape, 0.5, np.float32)
    dx, da = unary.prelu_backward(dy, x, slope, dslope=acc)
    rdx, rda = unary.prelu_backward_ref(dy, x, slope)
    _close(dx, rdx, 1e-7)
    assert da is acc and np.allclose(da, 0.5 + rda, rtol=1e-6, atol=1e-6)  # accumulated
    # the reference against central differences, for x and the slopes
    x64, s64, dy64 = x.astype(np.float64), slope.astype(np.float64), dy.astype(np.float64)
    num_x = numeric_grad(lambda v: float(np.sum(dy64 * unary.prelu_forward_ref(v, s64))), x64.copy())
    num_a = numeric_grad(lambda v: float(np.sum(dy64 * unary.prelu_forward_ref(x64, v))), s64.copy())
    assert np.max(np.abs(num_x - rdx)) <= 1e-6 and np.max(np.abs(num_a - rda)) <= 1e-5


def test_bad_arguments() -> None:
    x = _x((2, 3))
    with pytest.raises(ValueError, match="base must be strictly positive"):
        unary.exp_forward(x, base=-2.0)
    with pytest.raises(ValueError, match="not 1"):
        unary.log_forward(x, base=1.0)
    with pytest.raises(ValueError, match="3 slopes"):
        unary.prelu_forward(x, np.float32([1, 2]))
    with pytest.raises(ValueError, match="float32"):
        unary.elu_forward(x.astype(np.float64))
    buf = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        unary.swish_forward(buf[:6], out=buf[1:])
