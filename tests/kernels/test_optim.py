"""kernels.optim.sgd_step (regularize + the SGD or Nesterov update in one pass, over the threads for a large blob)
against the two passes it fuses: the same bits, for every decay kind, sizes on both sides of the parallel split and
odd lengths (the threads' shares are whole 16-float blocks); the two passes themselves are checked by hand in
tests/net/test_solver.py."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from kernels import optim


@pytest.mark.parametrize("n", [1, 17, 1000, optim.PARALLEL_STEP - 1, optim.PARALLEL_STEP, 400_001])
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize(("decay", "l1"), [(0.0, False), (5e-4, False), (1e-3, True)])
def test_sgd_step_is_the_two_passes_bit_for_bit(n, nesterov, decay, l1):
    rng = np.random.default_rng(n)
    w = rng.standard_normal(n).astype(np.float32)
    w[: min(n, 3)] = 0.0  # sign(0) = 0 for L1
    g = (rng.standard_normal(n) * 0.1).astype(np.float32)
    h = (rng.standard_normal(n) * 0.01).astype(np.float32)
    a = [w.copy(), g.copy(), h.copy()]
    b = [w.copy(), g.copy(), h.copy()]
    optim.regularize(a[0], a[1], 0.5, decay, l1)
    (optim.nesterov_update if nesterov else optim.sgd_update)(a[0], a[1], a[2], 0.02, 0.9)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        optim.sgd_step(b[0], b[1], b[2], 0.5, decay, l1, 0.02, 0.9, nesterov)
    finally:
        numba.set_num_threads(threads)
    for name, x, y in zip("wgh", a, b):
        assert np.array_equal(x, y), name


def test_sgd_step_reads_its_rate_from_the_rates_array():
    """With `rates` the rate goes through rates[slot] (a solver's array, read by a recorded update each iteration):
    the same bits as the rate passed alone, and the array holds it afterwards."""
    rng = np.random.default_rng(3)
    w, g, h = (rng.standard_normal(1000).astype(np.float32) for _ in range(3))
    a, b = [w.copy(), g.copy(), h.copy()], [w.copy(), g.copy(), h.copy()]
    optim.sgd_step(*a, 0.5, 5e-4, False, 0.0137, 0.9, False)
    rates = np.zeros(3)
    optim.sgd_step(*b, 0.5, 5e-4, False, 0.0137, 0.9, False, rates, 2)
    assert rates[2] == 0.0137
    for x, y in zip(a, b):
        assert np.array_equal(x.view(np.uint32), y.view(np.uint32))
