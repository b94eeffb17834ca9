"""server.pools: WorkPool runs cheapest first on a fixed number of threads, refuses past its queue and after its
longest wait, drops a cancelled job without running it; ByteBudget reserves and gives back."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from server.pools import Busy, ByteBudget, WorkPool


def pool(**kw) -> WorkPool:
    kw = {"workers": 1, "max_waiting": 8, "max_wait_s": 10.0, "what": "tests", **kw}
    return WorkPool("test-pool", **kw)


async def until(condition, timeout_s: float = 10.0) -> None:
    """Poll `condition` (no fixed sleeps: a busy 2-core machine can take longer than any guess)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the pool"
        await asyncio.sleep(0.005)


def test_cheapest_waiting_job_runs_first():
    p = pool()
    gate = threading.Event()
    order: list[str] = []

    async def go():
        first = asyncio.ensure_future(p.run(gate.wait, 10))  # holds the only thread
        await until(lambda: p.stats()["running"] == 1)
        jobs = [asyncio.ensure_future(p.run(order.append, name, cost=cost))
                for name, cost in (("bomb", 40e6), ("photo", 12e6), ("digit", 784), ("bomb2", 40e6))]  # fmt: skip
        await until(lambda: p.stats()["waiting"] == 4)
        gate.set()
        await asyncio.gather(first, *jobs)

    asyncio.run(go())
    assert order == ["digit", "photo", "bomb", "bomb2"]  # ties in arrival order
    assert p.stats() == {"workers": 1, "max_waiting": 8, "running": 0, "waiting": 0, "done": 5, "refused": 0}
    p.close()


def test_full_queue_refuses_at_once():
    p = pool(max_waiting=1)
    gate = threading.Event()

    async def go():
        held = [asyncio.ensure_future(p.run(gate.wait, 10)) for _ in range(2)]  # 1 running + 1 waiting
        await until(lambda: p.stats()["running"] == 1 and p.stats()["waiting"] == 1)
        refused = p.run(time.sleep, 0)
        with pytest.raises(Busy, match=r"busy with other tests \(2 in progress\)"):
            refused.send(None)  # its first step raises: refused at once, without waiting (no clock involved)
        gate.set()
        await asyncio.gather(*held)

    asyncio.run(go())
    assert p.stats()["refused"] == 1
    p.close()


def test_job_that_waited_too_long_is_dropped():
    p = pool(max_wait_s=0.5)
    gate = threading.Event()
    ran: list[int] = []

    async def go():
        await p.run(lambda: None)  # the thread exists: the blocker does not wait on its start
        blocker = asyncio.ensure_future(p.run(gate.wait, 30))
        await until(lambda: p.stats()["running"] == 1)
        late = asyncio.ensure_future(p.run(ran.append, 1))
        await until(lambda: p.stats()["waiting"] == 1)
        await asyncio.sleep(0.6)  # past max_wait_s (any extra delay only makes the job later)
        gate.set()
        with pytest.raises(Busy, match=r"waited \d+\.\d s"):
            await late
        await blocker

    asyncio.run(go())
    assert ran == [] and p.stats()["refused"] == 1 and p.stats()["waiting"] == 0
    p.close()


def test_cancelled_waiting_job_frees_its_slot_and_never_runs():
    p = pool(max_waiting=1)
    gate = threading.Event()
    ran: list[int] = []

    async def go():
        held = asyncio.ensure_future(p.run(gate.wait, 10))
        await until(lambda: p.stats()["running"] == 1)
        waiting = asyncio.ensure_future(p.run(ran.append, 1))
        await until(lambda: p.stats()["waiting"] == 1)
        waiting.cancel()  # the client went away
        await asyncio.sleep(0)
        assert p.stats()["waiting"] == 0
        again = asyncio.ensure_future(p.run(ran.append, 2))  # the slot is free again
        gate.set()
        await asyncio.gather(held, again)

    asyncio.run(go())
    assert ran == [2]
    p.close()


def test_errors_reach_the_caller_and_the_thread_survives():
    p = pool()

    def boom() -> None:
        raise ValueError("bad image")

    async def go():
        with pytest.raises(ValueError, match="bad image"):
            await p.run(boom)
        return await p.run(lambda: 42)

    assert asyncio.run(go()) == 42
    p.close()


def test_at_most_workers_threads_run_at_once():
    p = pool(workers=3, max_waiting=20)
    lock = threading.Lock()
    now, peak = [0], [0]

    def job() -> None:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.02)
        with lock:
            now[0] -= 1

    async def go():
        await asyncio.gather(*[p.run(job) for _ in range(12)])

    asyncio.run(go())
    assert peak[0] == 3
    p.close()


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers >= 1"):
        pool(workers=0)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        ByteBudget(0)


def test_byte_budget():
    b = ByteBudget(100)
    assert b.take(60) and not b.take(41) and b.take(40)
    b.give(100)
    assert b.stats() == {"limit": 100, "held": 0, "refused": 1}
