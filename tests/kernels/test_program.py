"""kernels.program: a recorded task call, replayed natively, does what the task's driver does with the same arguments
(every argument kind a task declares: 1-D and 2-D arrays, int64 arrays, float64, boolean, int64), in parallel and
serially; restores put an array's contents back before each run; bad calls are refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
from numba import types as nt

from kernels import program
from kernels.gemm import claim
from kernels.tasks import Task


def _body(t, x, y, plan, scale, flag, counter, offset):  # pragma: no cover - compiled
    """Claims rows of y (dynamic, as the kernels do): y[r, j] = x[j] * scale + plan[r] + offset (+1 when flag)."""
    while True:
        r = claim(counter)
        if r >= y.shape[0]:
            break
        for j in range(x.shape[0]):
            y[r, j] = x[j] * scale + plan[r] + offset + (1.0 if flag else 0.0)


_TASK = Task(_body, (nt.float32[::1], nt.float32[:, ::1], nt.int64[::1], nt.float64, nt.boolean, nt.int64[::1],
                     nt.int64))  # fmt: skip


def _args(rows: int = 6):
    x = np.linspace(-1, 1, 37, dtype=np.float32)
    y = np.zeros((rows, 37), np.float32)
    plan = np.arange(rows, dtype=np.int64) * 10
    return x, y, plan, 0.75, True, np.zeros(1, np.int64), 3


@pytest.mark.parametrize("kind", ["parallel", "serial"])
def test_a_replayed_call_writes_what_the_driver_writes(kind) -> None:
    x, y, plan, scale, flag, counter, offset = _args()
    driver = getattr(_TASK, kind)
    driver(_TASK.address, 2, x, y, plan, scale, flag, counter, offset)
    want = y.copy()
    np.testing.assert_allclose(want, x[None, :] * scale + plan[:, None] + offset + 1.0, rtol=1e-6)
    y[...] = np.nan
    ops = program.Program()
    ops.restore(counter, np.zeros(1, np.int64))  # the claim counter zeroed before the call
    ops.call(_TASK, kind, 2, _TASK.address, (x, y, plan, scale, flag, counter, offset))
    for _ in range(3):  # every run the same
        ops.run()
        np.testing.assert_array_equal(y, want)
        y[...] = np.nan
    assert len(ops) == 2


def test_ops_run_by_range_do_what_the_whole_run_does() -> None:
    """run_range(first, end) runs those ops only, in order (a call with its restore: what profiling runs); names
    tells each op's task, or "restore"; a range outside the ops is refused."""
    x, y, plan, scale, flag, counter, offset = _args()
    y2, counter2 = np.zeros_like(y), np.zeros(1, np.int64)
    ops = program.Program()
    for yy, cc in ((y, counter), (y2, counter2)):
        ops.restore(cc, np.zeros(1, np.int64))
        ops.call(_TASK, "parallel", 2, _TASK.address, (x, yy, plan, scale, flag, cc, offset))
    assert ops.names == ["restore", _TASK.name, "restore", _TASK.name]
    ops.run()
    want, want2 = y.copy(), y2.copy()
    y[...] = y2[...] = np.nan
    ops.run_range(2, 4)  # the second call only
    assert np.isnan(y).all()
    np.testing.assert_array_equal(y2, want2)
    ops.run_range(0, 2)
    np.testing.assert_array_equal(y, want)
    ops.run_range(1, 1)  # nothing
    with pytest.raises(ValueError, match="ops 3..5 of 4"):
        ops.run_range(3, 5)


def test_the_arguments_are_read_at_the_recorded_places_each_run() -> None:
    """The record holds pointers: new values in the same arrays are seen; the scalars are those recorded."""
    x, y, plan, scale, _, counter, offset = _args()
    ops = program.Program()
    ops.restore(counter, np.zeros(1, np.int64))
    ops.call(_TASK, "parallel", 2, _TASK.address, (x, y, plan, scale, False, counter, offset))
    x[:] = 2.0
    plan[:] = 7
    ops.run()
    np.testing.assert_allclose(y, np.full_like(y, 2.0 * 0.75 + 7 + 3), rtol=1e-6)


def test_restore_without_contents_keeps_the_present_ones() -> None:
    counter = np.array([5], np.int64)
    ops = program.Program()
    ops.restore(counter)
    counter[0] = 9
    ops.run()
    assert counter[0] == 5


def test_bad_calls_are_refused() -> None:
    x, y, plan, scale, flag, counter, offset = _args()
    ops = program.Program()
    with pytest.raises(ValueError, match="kind"):
        ops.call(_TASK, "sideways", 2, _TASK.address, (x, y, plan, scale, flag, counter, offset))
    with pytest.raises(ValueError, match="address 0"):
        ops.call(_TASK, "serial", 1, 0, (x, y, plan, scale, flag, counter, offset))
    with pytest.raises(TypeError, match="non-contiguous"):
        ops.call(_TASK, "serial", 1, _TASK.address, (x[::2], y, plan, scale, flag, counter, offset))
    with pytest.raises(TypeError, match="float32"):
        ops.call(_TASK, "serial", 1, _TASK.address, (x.astype(np.float64), y, plan, scale, flag, counter, offset))
    with pytest.raises(ValueError):  # one argument short
        ops.call(_TASK, "serial", 1, _TASK.address, (x, y, plan, scale, flag, counter))
    with pytest.raises(ValueError, match="contiguous"):
        ops.restore(np.zeros((4, 4), np.int64)[:, 1])
    assert len(ops) == 0
