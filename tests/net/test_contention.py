"""net.contention: the CPUs other processes keep busy, and the thread count a forward takes for them (issue 20's
busy machine). The arithmetic on injected clocks; a real spinning process seen as about one busy CPU; a Net forward
on fewer threads while the monitor says so, with the same bits, and training never adapted."""

from __future__ import annotations

import subprocess
import sys
import time

import numba
import numpy as np
import pytest

from net import Net, contention
from tests.conftest import ROOT


class _Fake:
    """Injected /proc/stat busy seconds, clock and own CPU time."""

    def __init__(self) -> None:
        self.now, self.busy, self.own = 100.0, 1000.0, 5.0

    def advance(self, wall: float, others: float, own: float = 0.0) -> None:
        self.now += wall
        self.own += own
        self.busy += others * wall + own


def _monitor(fake: _Fake, cpus: int = 2) -> contention.Monitor:
    return contention.Monitor(lambda: fake.busy, lambda: fake.now, lambda: fake.own, cpus=cpus)


def test_others_are_the_busy_cpus_less_this_process() -> None:
    fake = _Fake()
    mon = _monitor(fake)
    assert mon.threads_for(2) == 2  # the first sample: nothing to compare with yet
    fake.advance(0.5, others=1.0, own=0.9)  # another process on one CPU while this one worked 0.9 CPU-seconds
    assert mon.threads_for(2) == 1 and mon.others == pytest.approx(1.0)
    fake.advance(0.1, others=0.0)  # within WINDOW_S: the last decision stands, no sample taken
    assert mon.threads_for(2) == 1 and mon.others == pytest.approx(1.0)
    fake.advance(0.3, others=0.0, own=0.6)  # the other process ended
    assert mon.threads_for(2) == 2 and mon.others == pytest.approx(0.0)
    fake.advance(0.5, others=0.2, own=1.0)  # under BUSY_FRACTION of a core: not a busy core
    assert mon.threads_for(2) == 2
    fake.advance(0.5, others=0.4, own=1.0)  # a process starved by this one's threads still holds up their joins
    assert mon.threads_for(2) == 1
    fake.advance(0.5, others=4.0, own=0.5)  # a load of 4 on 2 CPUs: one thread, never none
    assert mon.threads_for(2) == 1
    assert mon.threads_for(1) == 1


def test_many_cores_lose_one_thread_per_busy_core() -> None:
    fake = _Fake()
    mon = _monitor(fake, cpus=16)
    mon.threads_for(16)
    fake.advance(1.0, others=3.2, own=12.0)
    assert mon.threads_for(16) == 13  # 3.2 cores: 3 busy (the 0.2 left is under BUSY_FRACTION)
    assert mon.threads_for(8) == 8  # fewer requested than the free cores: as requested


def test_switched_off_or_unreadable(monkeypatch) -> None:
    fake = _Fake()
    mon = _monitor(fake)
    mon.threads_for(2)
    fake.advance(1.0, others=2.0)
    assert mon.threads_for(2) == 1
    monkeypatch.setenv(contention.ENV, "0")
    assert _monitor(fake).threads_for(2) == 2  # read when the monitor is made (one per process)
    mon.enabled = False
    assert mon.threads_for(2) == 2
    blind = contention.Monitor(lambda: None, lambda: fake.now, lambda: fake.own, cpus=2)
    assert blind.threads_for(2) == 2 and blind.others == 0.0


def test_a_spinning_process_is_seen_as_one_busy_cpu() -> None:
    mon = contention.Monitor()
    mon.sample()
    code = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass"
    spin = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.3)
        mon._last, mon._next = None, -1.0  # the window starts with the process already running
        mon.sample()
        time.sleep(0.6)
        others = mon.sample()
    finally:
        spin.kill()
        spin.wait()
    assert others >= 0.6  # about 1.0; more where other jobs share this machine


def _lenet() -> Net:
    from benchmarks.subjects import randomize

    net = Net.load(ROOT / "models/lenet/deploy.prototxt")
    randomize(net, seed=0)
    return net


@pytest.fixture
def two_threads(monkeypatch):
    """LeNet, an input, 2 Numba threads and a quiet machine (the monitor's answer set by hand)."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    saved = numba.get_num_threads()
    numba.set_num_threads(2)
    monkeypatch.setattr(contention.MONITOR, "threads_for", lambda requested: requested)
    yield _lenet(), np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    numba.set_num_threads(saved)


def test_forward_takes_fewer_threads_with_the_same_bits(two_threads, monkeypatch) -> None:
    net, x = two_threads
    quiet = net.forward(data=x)["prob"]
    quiet_plan = net._plan
    assert quiet_plan.threads == 2
    monkeypatch.setattr(contention.MONITOR, "threads_for", lambda requested: 1)
    busy = net.forward(data=x)["prob"]
    assert net._plan.threads == 1 and numba.get_num_threads() == 2  # the caller's count is back
    np.testing.assert_array_equal(busy, quiet)
    monkeypatch.setattr(contention.MONITOR, "threads_for", lambda requested: requested)
    again = net.forward(data=x)["prob"]
    assert net._plan is quiet_plan  # the 2-thread plan was kept, not made again
    np.testing.assert_array_equal(again, quiet)
    net.forward_loss()  # training and timing forwards keep the requested count (their bits depend on it)
    assert net._plan is quiet_plan


def test_every_shipped_net_forward_has_the_same_bits_on_1_and_2_threads() -> None:
    """What makes adapting safe: a forward's bits do not depend on the thread count (LeNet, EfficientNet-Lite0)."""
    from net.zoo import efficientnet_lite0

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    files = efficientnet_lite0(say=lambda _msg: None)
    cases = [(_lenet(), (64, 1, 28, 28)), (Net.load(files.prototxt, files.weights), (2, 3, 224, 224))]
    saved = numba.get_num_threads()
    try:
        for net, shape in cases:
            net.forward(data=np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32))
            outs = []
            for threads in (1, 2):
                numba.set_num_threads(threads)
                net._run(None)  # not adapted: exactly `threads`
                outs.append({name: np.array(net.blobs[name]) for name in net.blobs})
            for name in outs[0]:
                np.testing.assert_array_equal(outs[0][name], outs[1][name], err_msg=name)
    finally:
        numba.set_num_threads(saved)


def test_ended_child_processes_are_this_process_work() -> None:
    """net.warm's compile workers: once they have ended, their CPU time is this process's, not another's load."""
    with_children = contention.Monitor()
    without = contention.Monitor(own_cpu=time.process_time)
    t0 = time.monotonic()
    with_children.sample()
    without.sample()
    code = "import time\nwhile time.process_time() < 0.6: pass"  # 0.6 s of its own CPU, however loaded the machine
    subprocess.run([sys.executable, "-c", code], check=True)  # waited for: its times are in os.times()
    with_children._next = without._next = -1.0
    got, base = with_children.sample(), without.sample()
    wall = time.monotonic() - t0
    assert (base - got) * wall >= 0.4  # the child's ~0.6 CPU-seconds moved from "others" to "own"


def test_a_long_forward_on_the_pool_keeps_every_thread(two_threads, monkeypatch) -> None:
    """A plan on kernels.taskpool whose last forward on every thread took LONG_POOL_FORWARD_S or more keeps every
    thread while other processes keep a core busy (its tasks are long against the shared core's time slices); a
    short one takes fewer. The plan's own time is what counts (here set by hand: LeNet is short)."""
    import net.net as net_module
    from kernels import tasks

    if not tasks.pool_enabled():
        pytest.skip("kernels.taskpool: x86-64 Linux only")
    net, x = two_threads
    net.forward(data=x)  # the first forward decides the launcher (its time is not kept: it may have compiled)
    net.forward(data=x)
    full = net._plan
    assert full.pool is True and full.threads == 2 and 0 < full.seconds < net_module.LONG_POOL_FORWARD_S
    monkeypatch.setattr(contention.MONITOR, "threads_for", lambda requested: 1)
    net.forward(data=x)
    assert net._plan.threads == 1  # short: one thread
    full.seconds = net_module.LONG_POOL_FORWARD_S  # as if it had taken that long on 2 threads
    net.forward(data=x)
    assert net._plan is full  # long: every thread, busy or not
    assert full.seconds < net_module.LONG_POOL_FORWARD_S  # a forward while busy can lower it (here: LeNet's)
    net.forward(data=x)
    assert net._plan.threads == 1  # short again
