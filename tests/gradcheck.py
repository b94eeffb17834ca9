"""The gradient checks' shared helpers: central differences (one coordinate at a time) and the tolerance rule.

    num = numeric_grad(lambda v: float(np.sum(dy * forward_ref(v))), x.copy(), h=1e-6)
    assert_grad_close(analytic, num, atol=1e-7, rtol=1e-6, what="dx")

Tolerance per element (tests in this repository state their atol, rtol and h next to the check):
    |analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

__all__ = ["assert_grad_close", "numeric_grad"]


def numeric_grad(
    f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-6, *, at: Iterable[int] | None = None
) -> np.ndarray:
    """d f / d x by central differences: (f(x + h e_i) - f(x - h e_i)) / 2h, in float64 whatever x's dtype.

    x is perturbed in place (f may read it through another reference, e.g. a layer's blob) and restored.
    `at`: only these flat indices (the others stay 0), for checks that sample a large parameter."""
    g = np.zeros(x.shape, np.float64)
    flat, gf = x.reshape(-1), g.reshape(-1)
    assert np.shares_memory(flat, x), "numeric_grad perturbs x in place: pass a contiguous array"
    for i in range(flat.size) if at is None else at:
        old = flat[i]
        flat[i] = old + h
        up = f(x)
        flat[i] = old - h
        down = f(x)
        flat[i] = old
        gf[i] = (up - down) / (2 * h)
    return g


def assert_grad_close(analytic: np.ndarray, numeric: np.ndarray, *, atol: float, rtol: float, what: str = "") -> None:
    """Every element within atol + rtol * max(|analytic|, |numeric|, 1) (the module docstring)."""
    analytic, numeric = np.asarray(analytic), np.asarray(numeric)
    assert analytic.shape == numeric.shape, f"{what}: shapes {analytic.shape} and {numeric.shape}"
    err = np.abs(analytic - numeric)
    bad = err > atol + rtol * np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), 1.0)
    assert not bad.any(), f"{what}: {int(bad.sum())} elements off the finite differences, max diff {err.max():.3e}"
