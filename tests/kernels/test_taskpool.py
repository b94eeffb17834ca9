"""kernels.taskpool: crema's thread pool for the tasks' parallel launches. Every slot of a launch runs exactly once,
whoever runs it; two callers at once, and a forked child, still get every slot; idle threads go to sleep; the OpenMP
loops of Numba's own parallel kernels are counted, and a Net runs a plan on the pool only when its forward ran none;
a forward's bits are the same on either launcher."""

from __future__ import annotations

import ctypes
import os
import threading
import time

import numpy as np
import pytest
from numba import njit, prange, types

from kernels import taskpool, tasks
from kernels.tasks import Task

pytestmark = pytest.mark.skipif(not tasks.pool_enabled(), reason="kernels.taskpool: x86-64 Linux only")


def _count_body(t, counts, spin):  # pragma: no cover - compiled
    """counts[t] += 1 (slot t's own element: two runs of one slot would show), after `spin` iterations of work."""
    acc = 0.0
    for i in range(spin):
        acc += i * 0.5
    counts[t] += 1 if acc >= 0.0 else 2


COUNT = Task(_count_body, (types.int64[::1], types.int64))


@pytest.fixture(autouse=True)
def _on_the_pool():
    tasks.use_pool(True)
    yield
    tasks.use_pool(True)


def _launch(workers: int, counts: np.ndarray, spin: int = 0) -> None:
    COUNT.parallel(COUNT.address, workers, counts, spin)


@pytest.mark.parametrize("workers", [2, 3, 5, 17, 64])
def test_every_slot_runs_exactly_once(workers) -> None:
    counts = np.zeros(64, dtype=np.int64)
    for rep in range(300):
        _launch(workers, counts, spin=(rep % 7) * 50)
    assert counts[:workers].tolist() == [300] * workers and not counts[workers:].any()
    assert taskpool.state()["busy"] == 0 and taskpool.state()["done"] == workers


def test_two_callers_at_once_each_get_every_slot() -> None:
    """A launch from another thread while one is in progress runs its slots on its own thread (nothing lost, nothing
    run twice)."""
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            counts = np.zeros(8, dtype=np.int64)
            for _ in range(400):
                _launch(8, counts, spin=200)
            results.append(counts)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors and len(results) == 3
    for counts in results:
        assert counts.tolist() == [400] * 8


def test_idle_threads_sleep() -> None:
    _launch(2, np.zeros(2, dtype=np.int64))
    deadline = time.monotonic() + 10
    while taskpool.state()["sleepers"] < taskpool.state()["threads"]:
        assert time.monotonic() < deadline, taskpool.state()
        time.sleep(0.01)
    # asleep, not spinning. The process's CPU time counts every thread, and OpenMP's threads spin for a while after
    # an earlier test's loop (up to 200 ms with some runtimes): the least of three windows
    spent = []
    for _ in range(3):
        t0 = time.process_time()
        time.sleep(0.2)
        spent.append(time.process_time() - t0)
    assert min(spent) < 0.05, spent
    counts = np.zeros(4, dtype=np.int64)
    _launch(4, counts)  # woken (or not needed: the caller runs what nobody claims)
    assert counts.tolist() == [1] * 4


_libc_getcpu = ctypes.CDLL(None).sched_getcpu
_libc_getcpu.restype, _libc_getcpu.argtypes = ctypes.c_int, ()


def _cpu_body(t, cpus, rounds):  # pragma: no cover - compiled
    """Slot t records its CPU; slot 0 then waits (a bounded spin) until slot 1 has recorded its own, so both slots run
    at once and slot 1 on another thread (the caller runs slot 0 or 1, a pool thread the other)."""
    cpus[t] = _libc_getcpu()
    if t == 0:
        for _ in range(rounds):
            if cpus[1] >= 0:  # the call below is opaque to the compiler: cpus[1] is read again every round
                break
            _libc_getcpu()


CPUS = Task(_cpu_body, (types.int64[::1], types.int64))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="steering needs two CPUs")
@pytest.mark.filterwarnings("ignore:Cannot cache compiled function")  # the body calls libc through ctypes
def test_a_woken_thread_runs_beside_the_caller_not_behind_it() -> None:
    """The pool threads asleep, a launch wakes them: the caller first gives each the process's CPUs less its own
    (steer), so the kernel cannot queue the woken thread behind the caller on the caller's CPU (a forward after
    20 ms or more of idleness ran at one thread's speed: EfficientNet-Lite0 batch 1, 2 threads, 12 ms against 5);
    the woken thread then takes every CPU back. Ten wakes: the two slots ran on two CPUs at least eight times (a
    busy machine may keep a pool thread off its CPU until the caller has run both slots; on the 2-vCPU EPYC without
    steering 15 of 20 such wakes put the woken thread behind the caller, 3-5 ms late)."""
    if not taskpool.state().get("steer", True):
        pytest.skip("steering off on this machine (a CPU number past 1023)")
    allowed = os.sched_getaffinity(0)
    apart = 0
    for _ in range(10):
        _launch(2, np.zeros(2, dtype=np.int64))
        deadline = time.monotonic() + 10
        while taskpool.state()["sleepers"] < taskpool.state()["threads"]:
            assert time.monotonic() < deadline, taskpool.state()
            time.sleep(0.005)
        time.sleep(0.03)  # idle long enough for a halted CPU
        cpus = np.full(2, -1, dtype=np.int64)
        CPUS.parallel(CPUS.address, 2, cpus, 50_000_000)
        assert cpus[0] >= 0 and cpus[1] >= 0, cpus
        apart += cpus[0] != cpus[1]
    assert apart >= 8, apart
    tids = taskpool.state()["tids"]
    assert tids and len(tids) == taskpool.state()["threads"]
    deadline = time.monotonic() + 10
    while any(os.sched_getaffinity(tid) != allowed for tid in tids):  # each takes every CPU back once it runs
        assert time.monotonic() < deadline, [os.sched_getaffinity(tid) for tid in tids]
        _launch(2, np.zeros(2, dtype=np.int64))
        time.sleep(0.01)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_launches_on_a_pool_of_its_own() -> None:
    _launch(2, np.zeros(2, dtype=np.int64))  # the parent's pool is running
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            counts = np.zeros(8, dtype=np.int64)
            for _ in range(50):
                _launch(8, counts)
            ok = counts.tolist() == [50] * 8 and taskpool.state()["threads"] >= 1
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _parallel_sum():
    """A new OpenMP kernel (not compiled yet): sum(x) in a prange loop."""

    @njit(parallel=True, cache=False)
    def total(x):  # pragma: no cover - compiled
        s = 0.0
        for i in prange(x.shape[0]):
            s += x[i]
        return s

    return total


_omp_sum = _parallel_sum()


def test_openmp_loops_are_counted() -> None:
    assert taskpool.omp_probe_installed()
    x = np.ones(1000)
    _omp_sum(x)
    before = taskpool.omp_loops()
    for _ in range(3):
        assert _omp_sum(x) == 1000.0
    assert taskpool.omp_loops() - before == 3
    before = taskpool.omp_loops()
    _launch(2, np.zeros(2, dtype=np.int64))
    assert taskpool.omp_loops() == before  # a task on the pool is no OpenMP loop


def _lenet():
    from pathlib import Path

    from net import Net

    root = Path(__file__).resolve().parents[2]
    net = Net.load(root / "models/lenet/deploy.prototxt", phase="test")  # its fillers: the bits, not accuracy
    net.share_activations()
    return net


MIXED = """
name: "mixed"
input: "data"
input_shape { dim: 64 dim: 8 dim: 14 dim: 14 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 16 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "elu" type: "ELU" bottom: "conv" top: "elu" }
"""  # ELU over 200k elements: an OpenMP (prange) loop


def test_a_net_runs_on_the_pool_only_when_its_forward_runs_no_openmp_loop() -> None:
    """LeNet (batch 1 and 64) is tasks and serial kernels only: its plans run on the pool. A plan with an OpenMP loop
    (ELU's elementwise loop) launches its tasks on OpenMP too, from its second forward (the first decides): the two
    kinds of threads would spin against each other."""
    from net import Net

    net = _lenet()
    for batch in (1, 64):
        x = np.random.default_rng(batch).uniform(0, 1, (batch, 1, 28, 28)).astype(np.float32)
        net.forward(data=x)
        assert net._plan.pool is True and tasks._pooled
    mixed = Net.from_string(MIXED, phase="test")
    x = np.random.default_rng(0).standard_normal((64, 8, 14, 14), dtype=np.float32)
    before = taskpool.omp_loops()
    mixed.forward(data=x)
    assert mixed._plan.pool is False and taskpool.omp_loops() > before
    mixed.forward(data=x)
    assert not tasks._pooled
    net.forward(data=np.zeros((64, 1, 28, 28), np.float32))  # each net its own plan's choice
    assert tasks._pooled


@pytest.mark.parametrize("batch", [1, 64])
def test_a_forward_has_the_same_bits_on_either_launcher(batch) -> None:
    net = _lenet()
    x = np.random.default_rng(2).uniform(0, 1, (batch, 1, 28, 28)).astype(np.float32)
    net.forward(data=x)
    outs = {}
    for pooled in (True, False):
        net._plan.pool = pooled  # forced
        outs[pooled] = {name: np.array(v) for name, v in net.forward(data=x).items()}
        assert tasks._pooled == pooled
    for name in outs[True]:
        np.testing.assert_array_equal(outs[True][name], outs[False][name], err_msg=name)


def test_warm_compiles_the_openmp_launcher_for_a_pass_that_runs_openmp_loops(monkeypatch) -> None:
    """A plan with OpenMP loops launches its tasks on OpenMP from its second forward: net.warm records that launcher
    with the pass's kernels (else a new machine would compile it in the middle of serving); a pass without any does
    not need it."""
    from net import warm

    monkeypatch.setattr(tasks._LAUNCH, "_address", 0)  # as on a machine whose cache lacks it
    monkeypatch.setattr(tasks._LAUNCH, "load_cached", lambda: False)
    monkeypatch.setattr(tasks._LAUNCH, "compile", lambda: pytest.fail("compiled while recording"))

    fresh = _parallel_sum()
    calls, error = warm.collect(lambda: fresh(np.ones(10)))
    assert error is None and fresh in calls and tasks._LAUNCH in calls
    calls, error = warm.collect(lambda: None)
    assert error is None and tasks._LAUNCH not in calls


TRAIN = """
name: "train"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 16 dim: 1 dim: 12 dim: 12 } shape { dim: 16 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 5 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: POOL kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _train_step(net, x, labels):
    net.clear_param_diffs()
    net.blob("data").data[...] = x
    net.blob("label").data[...] = labels
    loss = net.forward_loss()
    net.backward()
    return loss, {f"{name}/{i}": np.array(blob.diff) for name, i, blob, _, _ in net.learnable()}


def test_training_runs_on_the_pool_while_no_pass_runs_an_openmp_loop() -> None:
    """A training net's forward_loss and backward launch their tasks on the pool while neither pass has run an OpenMP
    loop (each pass's first run on the pool decides), with the same loss and gradients bit for bit as on OpenMP. MAX
    pooling records its argmax in a task; AVE pooling's backward is an OpenMP loop: from then on both passes of that
    net launch on OpenMP."""
    from net import Net

    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 1, 12, 12), dtype=np.float32)
    labels = rng.integers(0, 10, 16).astype(np.float32)
    net = Net.from_string(TRAIN.replace("POOL", "MAX"), phase="train")
    first = _train_step(net, x, labels)
    assert net._train_pool is True and tasks._pooled
    before = taskpool.omp_loops()
    again = _train_step(net, x, labels)
    assert taskpool.omp_loops() == before and tasks._pooled
    net._train_pool = False  # forced onto OpenMP
    omp = _train_step(net, x, labels)
    assert not tasks._pooled
    for got in (again, omp):
        assert got[0] == first[0]
        for name in first[1]:
            np.testing.assert_array_equal(first[1][name], got[1][name], err_msg=name)
    ave = Net.from_string(TRAIN.replace("POOL", "AVE"), phase="train")
    before = taskpool.omp_loops()
    _train_step(ave, x, labels)
    assert ave._train_pool is False and taskpool.omp_loops() > before  # its backward ran one
    _train_step(ave, x, labels)
    assert not tasks._pooled
