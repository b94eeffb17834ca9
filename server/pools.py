"""Bounded work for the web app: thread pools with a bounded queue, a byte budget for request bodies, and a gate on
jobs of one kind in flight.

    decode = WorkPool("crema-decode", workers=2, max_waiting=32, max_wait_s=10.0, what="image decodes")
    x = await decode.run(model.preprocess, data, cost=pixels)  # cheapest first; Busy once 2 + 32 jobs are in,
                                                               # or after 10 s in the queue
    bodies = ByteBudget(200_000_000)
    if not bodies.take(n): ...                        # 503: too many request bodies held at once
    maps = Gate(8, "feature-map requests")
    png = await maps.run(lambda: batcher.call(...))   # Busy once 8 are in flight

Why: a decode of a 40 Mpx image holds ~160 MB for about a second, so the number at once must be small, and slow
URL fetches must not take the threads that uploads need (before/after figures: benchmarks/hostile_notes.md). Each
kind of work gets its own pool: decodes one thread per core, URL fetches (threads that mostly wait
on sockets) their own. A pool admits `workers + max_waiting` jobs; the next one is refused at once with Busy, and
a job that waited `max_wait_s` before a thread took it is dropped with Busy instead of running late. Waiting jobs
run cheapest first (`cost`: the app passes the pixels an image's header claims), so a phone photo does not queue
behind a flood of 40 Mpx bombs. A request cancelled while its job waits (the client went away) frees its slot at
once and the job never runs; a running job finishes.

`return_large_frees_to_os()` (called when the app starts serving) keeps the memory of those decodes and bodies from
staying with the process after they are freed.

Exceptions:
    Busy(Exception)     a pool's queue is full, a job waited too long, the byte budget is spent, or a gate is full;
                        answered 503 with Retry-After by the app
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import heapq
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Busy", "ByteBudget", "WorkPool", "return_large_frees_to_os"]

T = TypeVar("T")


class Busy(Exception):
    """Work refused because a bound is reached; `retry_after` seconds is a fair wait before trying again."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WorkPool:
    """`workers` threads behind a queue of at most `max_waiting` jobs, cheapest first (see the module docstring)."""

    def __init__(self, name: str, *, workers: int, max_waiting: int, max_wait_s: float, what: str) -> None:
        if workers < 1 or max_waiting < 0 or max_wait_s <= 0:
            raise ValueError(
                f"WorkPool {name}: need workers >= 1, max_waiting >= 0, max_wait_s > 0; "
                f"got {workers}, {max_waiting}, {max_wait_s}"
            )
        self.name = name
        self.workers = workers
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self.what = what  # "image decodes", "URL fetches": for the Busy message
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, _Job]] = []  # (cost, arrival order, job): a min-heap
        self._seq = 0
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._in = 0  # jobs admitted and not finished or dropped (running + waiting)
        self._running = 0
        self.done = 0
        self.refused = 0

    async def run(self, fn: Callable[..., T], *args: Any, cost: float = 0.0, **kw: Any) -> T:
        """fn(*args, **kw) on one of the pool's threads, jobs of lower `cost` first (ties in arrival order); raises
        Busy when the queue is full or the job waited longer than max_wait_s. Cancelling the await drops a job that
        has not started."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self._closed:
                raise RuntimeError(f"WorkPool {self.name}: closed")
            if self._in >= self.workers + self.max_waiting:
                self.refused += 1
                raise Busy(f"the server is busy with other {self.what} ({self._in} in progress); retry in a moment")
            self._in += 1
            self._seq += 1
            heapq.heappush(self._heap, (cost, self._seq, _Job(fut, fn, args, kw, time.monotonic())))
            if len(self._threads) < self.workers:
                t = threading.Thread(target=self._worker, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()
            self._cv.notify()
        fut.add_done_callback(self._dropped)
        return await asyncio.wrap_future(fut)

    def _dropped(self, fut: concurrent.futures.Future) -> None:
        if fut.cancelled():  # cancelled while waiting: its slot is free now; the worker skips it later
            with self._cv:
                self._in -= 1

    def _worker(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._closed:
                    self._cv.wait()
                if not self._heap:
                    return
                _, _, job = heapq.heappop(self._heap)
                if not job.fut.set_running_or_notify_cancel():
                    continue  # cancelled: counted out by _dropped
                waited = time.monotonic() - job.queued
                late = waited > self.max_wait_s
                if late:
                    self.refused += 1
                    self._in -= 1
                else:
                    self._running += 1
            if late:
                job.fut.set_exception(
                    Busy(f"the server is busy with other {self.what} (waited {waited:.1f} s); retry in a moment")
                )
                continue
            try:
                result = job.fn(*job.args, **job.kw)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                job.fut.set_exception(exc)
            else:
                job.fut.set_result(result)
            finally:
                with self._cv:
                    self._running -= 1
                    self._in -= 1
                    self.done += 1
            del job  # its arguments (an upload's bytes) go now, not when the next job arrives

    def stats(self) -> dict:
        """{"workers", "max_waiting", "running", "waiting", "done", "refused"} (for /api/health)."""
        with self._cv:
            return {
                "workers": self.workers,
                "max_waiting": self.max_waiting,
                "running": self._running,
                "waiting": self._in - self._running,
                "done": self.done,
                "refused": self.refused,
            }

    def close(self) -> None:
        """Drop queued jobs (their callers get CancelledError); running ones finish, their threads then exit."""
        with self._cv:
            self._closed = True
            jobs = [job for _, _, job in self._heap]
            self._heap.clear()
            self._cv.notify_all()
        for job in jobs:
            job.fut.cancel()


@dataclass
class _Job:
    fut: concurrent.futures.Future
    fn: Callable
    args: tuple
    kw: dict
    queued: float


class ByteBudget:
    """Bytes of request bodies held at once across requests; used from the event loop thread only."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"ByteBudget: limit must be >= 1 byte, got {limit}")
        self.limit = limit
        self.held = 0
        self.refused = 0

    def take(self, n: int) -> bool:
        """Reserve n bytes; False (nothing reserved) when that would pass the limit."""
        if self.held + n > self.limit:
            self.refused += 1
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n
        assert self.held >= 0, f"ByteBudget: gave back more than was taken ({self.held})"

    def stats(self) -> dict:
        return {"limit": self.limit, "held": self.held, "refused": self.refused}


class Gate:
    """At most `limit` jobs of one kind in flight (the event loop's count: used from its thread only, no lock); past
    it Busy."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit, self.what, self.running = limit, what, 0

    async def run(self, start: Callable[[], Awaitable]):
        """await start() unless `limit` runs are in flight already (Busy)."""
        if self.running >= self.limit:
            raise Busy(f"too many {self.what} at once ({self.limit}); try again in a moment")
        self.running += 1
        try:
            return await start()
        finally:
            self.running -= 1


_MALLOC_SET = False


def return_large_frees_to_os() -> None:
    """glibc only (elsewhere nothing): allocations of 1 MiB or more always come from mmap, so a freed request body or
    decoded image goes back to the OS. glibc's default threshold is dynamic: once a 16 MiB image block is freed it
    rises to that size, and later images are carved from the heap and stay there after a load (hundreds of MB:
    benchmarks/hostile_notes.md). Process-wide and once per process; costs one mmap and munmap per large block."""
    global _MALLOC_SET
    if _MALLOC_SET or os.name != "posix":
        return
    _MALLOC_SET = True
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: libc's mallopt where libc is glibc
        if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt"):
            libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD (malloc.h); setting it turns the dynamic threshold off
    except OSError:
        pass
