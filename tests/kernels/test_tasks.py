"""kernels.tasks: a worker body compiled once as a C callback, run by its parallel and serial drivers: the numbers of
a NumPy reference, arguments of other types refused at compile time (never a call with mismatched arguments), a task
recorded (not compiled) while net.warm records, and a worker process finds it by name."""

from __future__ import annotations

import numpy as np
import pytest
from numba import types

from kernels import tasks
from kernels.tasks import Task


def _affine_body(t, x, y, s, workers):  # pragma: no cover - compiled
    """y = x * s + 1 over worker t's share of x."""
    n = x.shape[0]
    for i in range(t * n // workers, (t + 1) * n // workers):
        y[i] = x[i] * s + np.float32(1.0)


AFFINE = Task(_affine_body, (types.float32[::1], types.float32[::1], types.float32, types.int64), boundscheck=False)


def _inputs(n: int = 1003):
    x = np.random.default_rng(3).standard_normal(n).astype(np.float32)
    return x, np.zeros_like(x)


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_parallel_and_serial_drivers_compute_the_reference(workers) -> None:
    x, y = _inputs()
    want = x * np.float32(1.5) + np.float32(1.0)  # float32 multiply, then add: the body's operations in order
    AFFINE.parallel(AFFINE.address, workers, x, y, np.float32(1.5), workers)
    np.testing.assert_array_equal(y, want)
    y2 = np.zeros_like(x)
    AFFINE.serial(AFFINE.address, workers, x, y2, np.float32(1.5), workers)
    np.testing.assert_array_equal(y2, want)


def test_other_argument_types_are_refused_at_compile_time() -> None:
    from numba.core.errors import TypingError

    x, y = _inputs()
    with pytest.raises(
        (TypeError, TypingError), match=r"task tests\.kernels\.test_tasks\._affine_body: compiled for arguments"
    ):
        AFFINE.parallel(AFFINE.address, 2, x.astype(np.float64), y, np.float32(1.5), 2)
    with pytest.raises((TypeError, TypingError), match="compiled for arguments"):
        AFFINE.serial(AFFINE.address, 1, x, y, 1.5, 1)  # a float64 scale
    assert not y.any()


def test_recording_records_instead_of_compiling(monkeypatch) -> None:
    task = Task(_affine_body, (types.float32[::1], types.float32[::1], types.float32, types.int64), boundscheck=False)
    monkeypatch.setattr(task, "load_cached", lambda: False)  # as on a machine whose cache lacks it
    monkeypatch.setattr(task, "compile", lambda: pytest.fail("compiled while recording"))
    with tasks.recording() as recorded:
        assert task.address == 0
        assert task.address == 0
    assert recorded[0] is task and set(recorded) <= {task, tasks._LAUNCH}  # OpenMP's launcher too where not cached
    x, y = _inputs()
    task.parallel(0, 2, x, y, np.float32(1.5), 2)  # address 0: the driver skips the body
    assert not y.any()


def test_the_openmp_launcher_is_recorded_and_armed_like_a_task(monkeypatch) -> None:
    """Where the pool is off (CREMA_TASK_POOL=0, not x86-64 Linux, training), every parallel driver runs its body's
    threads through one OpenMP launcher (a parallel C callback compiled once): reading a task's address loads it (or
    records it, for net.warm to compile), and until it is in place the drivers launch nothing."""
    monkeypatch.setattr(tasks, "_pool_ok", False)
    monkeypatch.setattr(tasks, "_armed", False)
    assert AFFINE.address and tasks._armed and tasks._LAUNCHER_SLOT.value == tasks._LAUNCH.address
    assert not tasks._pooled
    with monkeypatch.context() as m:  # as on a machine whose cache has the body but not the launcher
        m.setattr(tasks, "_armed", False)
        m.setattr(tasks._LAUNCH, "_address", 0)
        m.setattr(tasks._LAUNCH, "load_cached", lambda: False)
        m.setattr(tasks._LAUNCH, "compile", lambda: pytest.fail("compiled while recording"))
        with tasks.recording() as recorded:
            assert AFFINE.address  # the body is loaded; the launcher is not
        assert recorded == [tasks._LAUNCH] and not tasks._armed
    saved = tasks._LAUNCHER_SLOT.value
    tasks._LAUNCHER_SLOT.value = 0
    try:
        x, y = _inputs()
        AFFINE.parallel(AFFINE.address, 2, x, y, np.float32(1.5), 2)
        assert not y.any()  # no launcher: nothing ran (never a call through address 0)
    finally:
        tasks._LAUNCHER_SLOT.value = saved
    AFFINE.parallel(AFFINE.address, 2, x, y, np.float32(1.5), 2)
    np.testing.assert_array_equal(y, x * np.float32(1.5) + np.float32(1.0))
    monkeypatch.undo()
    tasks.use_pool(True)  # as the other tests found it


@pytest.mark.skipif(not tasks.pool_enabled(), reason="kernels.taskpool: x86-64 Linux only")
def test_the_pool_launches_where_enabled_and_nothing_starts_while_recording(monkeypatch) -> None:
    from kernels import taskpool

    assert tasks.use_pool(True) and tasks._LAUNCHER_SLOT.value == tasks._pool_address == taskpool.launcher(1)
    for pooled in (True, False, True):
        assert tasks.use_pool(pooled) == pooled
        for workers in (1, 2, 3, 8):
            x, y = _inputs()
            AFFINE.parallel(AFFINE.address, workers, x, y, np.float32(1.5), workers)
            np.testing.assert_array_equal(y, x * np.float32(1.5) + np.float32(1.0))
    monkeypatch.setattr(tasks, "_pool_address", 0)  # as in a process that has not started it
    monkeypatch.setattr(tasks, "_armed", False)
    monkeypatch.setattr(taskpool, "launcher", lambda n: pytest.fail("pool started while recording"))
    with tasks.recording() as recorded:
        assert not tasks.use_pool(True) and not tasks._armed
    assert recorded == []  # nor the OpenMP launcher: net.warm does not compile it for an inference pass


def test_a_worker_process_finds_a_task_by_name() -> None:
    assert AFFINE.reference() == ("tests.kernels.test_tasks", "AFFINE")
    assert tasks.resolve(*AFFINE.reference()) is AFFINE
    loose = Task(_affine_body, (types.float32[::1],))
    with pytest.raises(LookupError, match="not a module-level name"):
        loose.reference()
    with pytest.raises(TypeError, match="is not a Task"):
        tasks.resolve("tests.kernels.test_tasks", "_inputs")


def test_drivers_are_keyed_on_the_declared_types() -> None:
    """Two declarations of one body: drivers of other names (their cache entries never mix)."""
    other = Task(_affine_body, (types.float64[::1], types.float64[::1], types.float64, types.int64))
    assert other.parallel.py_func.__qualname__ != AFFINE.parallel.py_func.__qualname__
    assert other.serial.py_func.__qualname__ != AFFINE.serial.py_func.__qualname__


def test_tuples_are_refused_as_arguments() -> None:
    with pytest.raises(TypeError, match="as separate arguments"):
        Task(_affine_body, (types.UniTuple(types.int64, 2),))


def test_bodies_compile_with_numpys_error_model_as_prange_bodies_do() -> None:
    """A prange body's gufunc is compiled with NumPy's error model (no zero test around integer // and %); the task
    bodies that replaced them keep it unless a task says otherwise."""
    assert AFFINE.options["error_model"] == "numpy"
    assert Task(_affine_body, (types.float32[::1],), error_model="python").options["error_model"] == "python"


def test_llvm_opt_lowers_the_level_inside_and_restores_it() -> None:
    from numba.core import config

    saved = config.OPT
    with tasks.llvm_opt(1):
        assert int(config.OPT) == min(int(saved), 1)
    assert config.OPT is saved
    with pytest.raises(RuntimeError), tasks.llvm_opt(1):
        raise RuntimeError("a failed compile")
    assert config.OPT is saved
    with tasks.llvm_opt(None):
        assert config.OPT is saved


def test_bodies_and_drivers_compile_at_their_levels(monkeypatch) -> None:
    """A task's body compiles at its `opt` level, its drivers at DRIVER_OPT, Numba's level outside; the numbers are
    the reference's (the bit-equality tests of every kernel run on bodies compiled so)."""
    import contextlib

    from numba.core import config
    from numba.core.ccallback import CFunc

    seen: list[int] = []
    plain_compile = CFunc.compile

    def spy_compile(self):
        seen.append(int(config.OPT))
        return plain_compile(self)

    levels: list[int | None] = []
    plain_opt = tasks.llvm_opt

    @contextlib.contextmanager
    def spy_opt(level):
        levels.append(level)
        with plain_opt(level):
            yield

    monkeypatch.setattr(CFunc, "compile", spy_compile)
    monkeypatch.setattr(tasks, "llvm_opt", spy_opt)
    task = Task(_affine_body, (types.float32[::1], types.float32[::1], types.float32, types.int64), opt=1)
    x, y = _inputs()
    task.parallel(task.address, 2, x, y, np.float32(1.5), 2)
    np.testing.assert_array_equal(y, x * np.float32(1.5) + np.float32(1.0))
    assert seen == [min(int(config.OPT), 1)]
    assert [v for v in levels if v is not None] == [1, tasks.DRIVER_OPT]  # the body, then the parallel driver
