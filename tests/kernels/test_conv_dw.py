"""kernels.conv_dw: a convolution's weight gradient without im2col (few weights per output channel, or rows of 8
columns: LeNet's conv1 and conv2),
against the float64 reference (conv.conv2d_backward_ref): dW and db within float32 rounding of sums of up to 36,864
products (relative to the largest entry: 2e-6), accumulated into the given arrays, and conv.conv2d_backward taking
it where it applies with dx unchanged."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from kernels import conv, conv_dw

TOL = 2e-6  # max |got - ref| / max |ref|


def _case(n, c, h, w_, m, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w_), dtype=np.float32)
    w = rng.standard_normal((m, c, 5, 5), dtype=np.float32)
    dy = rng.standard_normal((n, m, h - 4, w_ - 4), dtype=np.float32)
    return x, w, dy


def _rel(got, ref) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())


def test_applies() -> None:
    ok = {"stride": (1, 1), "pad": (0, 0), "dilation": (1, 1), "group": 1}
    assert conv_dw.applies((64, 1, 28, 28), (20, 1, 5, 5), **ok)  # LeNet's conv1
    m = 4 * conv_dw.MB
    assert conv_dw.applies((2, 2, 13, 13), (m, 2, 5, 5), **ok)
    # LeNet's conv2: K = 500, rows of 8, where 8-lane FMAs run at full rate (conv_dw.NARROW_FAST)
    assert conv_dw.applies((64, 20, 12, 12), (50, 20, 5, 5), **ok) == conv_dw.NARROW_FAST
    assert not conv_dw.applies((64, 20, 16, 16), (50, 20, 5, 5), **ok)  # K = 500 on rows of 12: the GEMM's
    assert not conv_dw.applies((1, 1, 28, 28), (20, 1, 5, 5), **{**ok, "pad": (2, 2)})
    assert not conv_dw.applies((1, 1, 28, 28), (20, 1, 5, 5), **{**ok, "stride": (2, 2)})
    assert not conv_dw.applies((1, 1, 28, 28), (20, 1, 5, 5), **{**ok, "dilation": (2, 2)})
    assert not conv_dw.applies((1, 2, 28, 28), (20, 1, 5, 5), **{**ok, "group": 2})
    assert not conv_dw.applies((1, 1, 28, 28), (20, 1, 3, 3), **ok)  # kw != 5
    assert not conv_dw.applies((1, 1, 28, 28), (m + 1, 1, 5, 5), **ok)  # M not whole channel blocks
    assert not conv_dw.applies((1, 1, 28, 11), (20, 1, 5, 5), **ok)  # OW = 7 < 8


@pytest.mark.parametrize(
    "n,c,h,w_,m",
    [
        (64, 1, 28, 28, 20),  # LeNet's conv1 (OW = 24: a whole vector and a masked piece with AVX-512)
        (1, 1, 12, 12, 20),  # OW = 8: one masked piece (AVX-512)
        (3, 2, 13, 21, 10),  # OW = 17: two channels, batch below and above the thread count
        (5, 2, 9, 37, 20),  # OW = 33
        (2, 1, 30, 20, 10),  # more rows than columns
        (8, 20, 12, 12, 50),  # LeNet's conv2: K = 500 on rows of 8 columns (8-lane vectors)
    ],
)
def test_matches_the_float64_reference(n, c, h, w_, m) -> None:
    if m % conv_dw.MB:
        m = conv_dw.MB * (m // conv_dw.MB + 1)
    x, w, dy = _case(n, c, h, w_, m, seed=n + c + h)
    narrow = c * 25 > conv_dw.MAX_K  # rows of 8 with a larger K: taken only where NARROW_FAST (the kernel runs anyway)
    assert conv_dw.applies(x.shape, w.shape, (1, 1), (0, 0), (1, 1), 1) == (conv_dw.NARROW_FAST or not narrow)
    _, dw_ref, db_ref = conv.conv2d_backward_ref(dy, x, w)
    dw = np.zeros(w.shape, np.float32)
    db = np.zeros(m, np.float32)
    conv_dw.weight_grad(x, dy, 5, 5, dw, db)
    assert _rel(dw, dw_ref) < TOL and _rel(db, db_ref) < TOL


def test_accumulates_and_either_output_may_be_left_out() -> None:
    x, w, dy = _case(4, 1, 28, 28, 20)
    _, dw_ref, db_ref = conv.conv2d_backward_ref(dy, x, w)
    dw = np.full(w.shape, 1.5, np.float32)
    db = np.full(20, -2.0, np.float32)
    conv_dw.weight_grad(x, dy, 5, 5, dw, db)
    assert _rel(dw - 1.5, dw_ref) < TOL and _rel(db + 2.0, db_ref) < TOL
    db_only = np.zeros(20, np.float32)
    conv_dw.weight_grad(x, dy, 5, 5, None, db_only)
    assert _rel(db_only, db_ref) < TOL


def test_one_thread_and_two_agree_within_rounding() -> None:
    """The images are split in chunks of partial sums, one per thread: the bits depend on the thread count (as the
    im2col path's), the values only within rounding."""
    x, w, dy = _case(16, 1, 28, 28, 20)
    _, dw_ref, _ = conv.conv2d_backward_ref(dy, x, w)
    got = []
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            dw = np.zeros(w.shape, np.float32)
            conv_dw.weight_grad(x, dy, 5, 5, dw, None)
            got.append(dw)
    finally:
        numba.set_num_threads(before)
    for dw in got:
        assert _rel(dw, dw_ref) < TOL


def test_conv2d_backward_takes_it_and_dx_is_unchanged() -> None:
    x, w, dy = _case(6, 1, 28, 28, 20, seed=3)
    dx_ref, dw_ref, db_ref = conv.conv2d_backward_ref(dy, x, w)
    dx, dw, db = conv.conv2d_backward(dy, x, w)
    assert _rel(dw, dw_ref) < TOL and _rel(db, db_ref) < TOL
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5 * float(np.abs(dx_ref).max()))


def test_rows_of_8_only_where_8_lane_fmas_run_at_full_rate(monkeypatch) -> None:
    from numba.core import config

    monkeypatch.setattr(config, "CPU_NAME", "znver4")  # Zen 4: a 512-bit FMA takes both 256-bit units
    assert conv_dw._narrow_fast()
    monkeypatch.setattr(config, "CPU_NAME", "emeraldrapids")  # two 512-bit FMA ports: 8 lanes at half the peak
    assert conv_dw._narrow_fast() == (conv_dw.VW == 8)


def test_overwrite_gives_the_bits_of_accumulating_onto_zeros() -> None:
    """overwrite_dw / overwrite_db (a solver's cleared diff): the outputs written, whatever they held, with the bits
    accumulation onto zeros gives (the chunks' partial sums added by fc.sum_rows's task, no NumPy)."""
    x, w, dy = _case(8, 20, 12, 12, 50 if 50 % conv_dw.MB == 0 else conv_dw.MB * 10)
    m = dy.shape[1]
    dw0, db0 = np.zeros(w.shape, np.float32), np.zeros(m, np.float32)
    conv_dw.weight_grad(x, dy, 5, 5, dw0, db0)
    dw, db = np.full(w.shape, np.nan, np.float32), np.full(m, 7.0, np.float32)
    conv_dw.weight_grad(x, dy, 5, 5, dw, db, overwrite_dw=True, overwrite_db=True)
    np.testing.assert_array_equal(dw.view(np.uint32), dw0.view(np.uint32))
    np.testing.assert_array_equal(db.view(np.uint32), db0.view(np.uint32))


def test_accumulating_adds_the_chunks_partial_sums_one_after_another() -> None:
    """Accumulating (a second backward into the same diff: iter_size > 1, shared weights) adds each chunk's partial
    sums into dw in chunk order, ((dw + p0) + p1): the bits the NumPy loop gave before the sums moved into a task."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 threads")
    x, w, dy = _case(8, 1, 28, 28, 20, seed=9)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        parts = []
        for lo, hi in ((0, 4), (4, 8)):  # the two chunks' images on 2 threads, each summed alone on one thread
            p = np.empty(w.shape, np.float32)
            conv_dw.weight_grad(x[lo:hi], dy[lo:hi], 5, 5, p, None, overwrite_dw=True)
            parts.append(p)
        numba.set_num_threads(2)
        dw0 = np.random.default_rng(2).standard_normal(w.shape).astype(np.float32)
        dw = dw0.copy()
        conv_dw.weight_grad(x, dy, 5, 5, dw, None)
    finally:
        numba.set_num_threads(before)
    want = (dw0 + parts[0]) + parts[1]
    np.testing.assert_array_equal(dw.view(np.uint32), want.view(np.uint32))
