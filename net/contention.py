"""Cores that other processes keep busy, and how many threads a forward should use with them.

A parallel kernel forks onto every thread and joins when the last task is done. When another process keeps a core
busy, the thread that shares that core with it runs in time slices of a few milliseconds: the join waits for it,
every layer. On the 2-core machine with one core kept busy, LeNet at batch 64 took 7.4 ms on 2 threads and 5.7 ms on
one; with a load average of 4 a new user saw 64.7 ms on 2 threads and 8.2 ms on one. So a forward asks
`threads_for(requested)` first and runs with that many threads: the requested count, less one for every core the
other processes kept busy over the last quarter second or more.

How busy: /proc/stat's busy time of all CPUs (user, nice, system, irq, softirq, steal: a virtual CPU taken by the
host counts as busy) less this process's own CPU time (`time.process_time`: every thread of this process, the
reference frameworks of a benchmark included; and its children's once they have ended: `net.warm`'s compile
workers), over the time since the last sample, in CPUs; a core counts as busy from BUSY_FRACTION of it. Sampled at most every WINDOW_S (one read of /proc/stat: about 20 us), so a forward between samples pays
a clock read. The kernel accounts /proc/stat in ticks (10 ms per CPU): over a quarter second on 2 CPUs, a tick or
two of error, 0.04-0.08 of a core.

Where /proc/stat cannot be read (not Linux), or with CREMA_ADAPT_THREADS=0 in the environment, the requested count
is used as it is. A forward on kernels.taskpool that took net.net.LONG_POOL_FORWARD_S or more on every thread keeps
them all (its tasks are long against the time slices of the shared core, and the caller takes the slots the other
thread has not claimed: CaffeNet at batch 10 and 64 ran faster on 2 threads than on 1 with a core busy).
`Net.forward` applies it to every CPU inference forward; training keeps its thread count (its gradients' reductions
depend on it, and a run must not depend on the load).
"""

from __future__ import annotations

import os
import threading
import time

WINDOW_S = 0.25  # seconds between two samples at least (shorter windows are a few ticks of /proc/stat)
BUSY_FRACTION = 0.25  # a core counts as busy from this much of it used by others (idle: 0-0.1, tick error included)
ENV = "CREMA_ADAPT_THREADS"  # "0" turns adapting off
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/stat's unit (USER_HZ)


def _read_busy() -> float | None:
    """Busy CPU-seconds of all CPUs since boot from /proc/stat's first line, or None where it cannot be read."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != b"cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def _own_cpu() -> float:
    """CPU seconds of this process (every thread) and of its children that have ended (e.g. `crema warm`'s compile
    workers: their time is this process's work, not another's)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


class Monitor:
    """Estimates the CPUs that other processes keep busy (`others`) and the thread count that leaves them
    (`threads_for`). Thread-safe; one per process (`MONITOR`). `read_busy`, `clock` and `own_cpu` are injectable for
    tests; `enabled` is False with CREMA_ADAPT_THREADS=0 in the environment when it is made."""

    def __init__(self, read_busy=_read_busy, clock=time.monotonic, own_cpu=_own_cpu, cpus: int | None = None):
        self._read_busy, self._clock, self._own_cpu = read_busy, clock, own_cpu
        self.cpus = cpus or os.cpu_count() or 1
        self.enabled = os.environ.get(ENV, "1") != "0"
        self.others = 0.0  # CPUs kept busy by other processes over the last window
        self.busy_cores = 0  # ... in whole cores (BUSY_FRACTION of one counts)
        self._last: tuple[float, float, float] | None = None
        self._next = -1.0  # clock time of the next sample
        self._lock = threading.Lock()

    def sample(self) -> float:
        """Update `others` when WINDOW_S has passed since the last sample; returns it."""
        now = self._clock()
        if now < self._next:
            return self.others
        with self._lock:
            busy = self._read_busy()
            if busy is None:
                self._next = now + WINDOW_S
                return self.others
            own = self._own_cpu()
            last = self._last
            if last is not None and now > last[0]:
                self.others = max(0.0, (busy - last[1]) - (own - last[2])) / (now - last[0])
                self.busy_cores = int(self.others + 1.0 - BUSY_FRACTION)
            self._last = (now, busy, own)
            self._next = now + WINDOW_S
        return self.others

    def threads_for(self, requested: int) -> int:
        """`requested` less one for every core other processes keep busy (BUSY_FRACTION of a core or more counts), 1
        at least: a clock read and a comparison between samples."""
        if requested <= 1 or not self.enabled:
            return max(1, requested)
        if self._clock() >= self._next:
            self.sample()
        free = self.cpus - self.busy_cores
        return requested if requested <= free else (free if free > 1 else 1)  # noqa: FURB136 (max(): +0.5 us a call)


MONITOR = Monitor()


def threads_for(requested: int) -> int:
    """The thread count for a forward that asks for `requested` (see the module's docstring)."""
    return MONITOR.threads_for(requested)
