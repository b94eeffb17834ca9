"""kernels.fc against its float64 reference, both the small-batch kernels and the GEMM path."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.fc import SMALL_M, inner_product_forward, inner_product_forward_ref

RTOL = 1e-5  # relative to max|ref|, times sqrt(K): float32 sums of K products


@pytest.mark.parametrize(
    "shape,axis,n",
    [
        ((10, 256, 2, 3), 1, 33),
        ((SMALL_M + 3, 50, 4, 4), 1, 70),
        ((2, 3, 4, 5), 2, 7),
        ((3, 4), 0, 5),
        ((1, 800), 1, 1),
        ((5, 6, 7), -1, 9),
    ],
)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_reference(shape: tuple, axis: int, n: int, transpose: bool, with_bias: bool) -> None:
    rng = np.random.default_rng(len(shape) * 100 + n)
    x = rng.standard_normal(shape, dtype=np.float32)
    k = int(np.prod(shape[axis:]))
    w = rng.standard_normal((k, n) if transpose else (n, k), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32) if with_bias else None
    got = inner_product_forward(x, w, b, axis=axis, transpose=transpose)
    want = inner_product_forward_ref(x, w, b, axis=axis, transpose=transpose)
    assert got.shape == shape[: axis % len(shape)] + (n,) == want.shape and got.dtype == np.float32
    tol = RTOL * np.sqrt(k) * max(float(np.abs(want).max()), 1.0)
    assert float(np.abs(got - want).max()) <= tol


def test_reference_formula() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2))
    w = rng.standard_normal((5, 6))
    b = rng.standard_normal(5)
    np.testing.assert_allclose(inner_product_forward_ref(x, w, b), x.reshape(4, 6) @ w.T + b, rtol=1e-5)


def test_out_argument() -> None:
    x = np.ones((2, 6), np.float32)
    w = np.ones((3, 6), np.float32)
    out = np.empty((2, 3), np.float32)
    assert inner_product_forward(x, w, None, out=out) is out
    assert np.all(out == 6)
    with pytest.raises(ValueError, match="out"):
        inner_product_forward(x, w, None, out=np.empty((3, 2), np.float32))


def test_k_mismatch_message() -> None:
    with pytest.raises(ValueError, match=r"expected 10 inputs per sample.*got 12"):
        inner_product_forward(np.zeros((2, 3, 4), np.float32), np.zeros((7, 10), np.float32), None)
    with pytest.raises(ValueError, match="bias"):
        inner_product_forward(np.zeros((2, 10), np.float32), np.zeros((7, 10), np.float32), np.zeros(6))
