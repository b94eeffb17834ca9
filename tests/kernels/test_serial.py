"""kernels.serial: the serial twins the execution plan uses for small work give the parallel kernels' exact bits,
and the runners pick them only below SMALL_WORK."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import activations, fc, pool
from kernels.serial import SMALL_WORK, serial_twin


def test_twin_is_a_serial_compile_of_the_same_source_made_once() -> None:
    kernel = activations._softmax_grad_slices
    twin = serial_twin(kernel)
    assert twin is serial_twin(kernel)
    assert "parallel" not in twin.targetoptions and kernel.targetoptions["parallel"]
    assert twin.py_func.__code__ is kernel.py_func.__code__
    assert twin.py_func.__qualname__ == "_softmax_grad_slices_serial_twin"  # its own on-disk cache entry


@pytest.mark.parametrize("shape", [(1, 10, 1), (3, 7, 5), (2, 1000, 1)])
def test_softmax_serial_same_bits(shape) -> None:
    """The softmax task on this thread alone (what softmax_runner does below SMALL_WORK) and on the threads."""
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32) * 10
    want, got = np.empty_like(x), np.empty_like(x)
    activations._softmax_slices(x, want)
    activations._softmax_slices(x, got, serial=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, activations.softmax_forward_ref(x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize(
    "kernel,stride,pad", [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 2), (1, 2), (0, 1))]
)
def test_pool_runner_serial_below_small_work_same_bits(method, kernel, stride, pad) -> None:
    """A small pooling (interior and border kernels, closures over the window constants) through the runner's
    serial twins equals pool2d_forward's parallel kernels bit for bit, and the NumPy reference."""
    x = np.random.default_rng(1).standard_normal((1, 6, 11, 13), dtype=np.float32)
    assert x.size < SMALL_WORK
    run = pool.ForwardRunner(x.shape, method=method, kernel=kernel, stride=stride, pad=pad)
    got = np.empty(run.out_shape, np.float32)
    run(x, got)
    want = pool.pool2d_forward(x, method=method, kernel=kernel, stride=stride, pad=pad)
    np.testing.assert_array_equal(got, want)
    ref = pool.pool2d_forward_ref(x, method=method, kernel=kernel, stride=stride, pad=pad)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("m,k,n", [(1, 500, 10), (1, 800, 500), (3, 64, 20), (1, 1280, 1000)])
def test_fc_runner_serial_only_for_small_work_same_bits(m, k, n) -> None:
    """Serial for few multiply-adds only (a weight that fits one core's L2 is shared too: each core keeps its rows of
    it, kernels.fc's queues); the same bits as two workers either way."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    run = fc.ForwardRunner(x.shape, w.shape, relu=True)
    serial = m * k * n < SMALL_WORK
    assert run.serial == serial
    got = np.empty(run.out_shape, np.float32)
    run(x, w, b, got)
    want = np.empty_like(got)
    fc._ip_small_rows(x, w, b, want, True, 2)  # two workers
    np.testing.assert_array_equal(got, want)
    ref = np.maximum(fc.inner_product_forward_ref(x, w, b), 0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.sqrt(k))
