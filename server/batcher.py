"""Micro-batching: concurrent single-image requests share one forward pass.

    batcher = MicroBatcher(model.infer, max_batch=32, window_ms=5.0)
    probs, feats, n, ms = await batcher.run(x)  # x: (C, H, W); this request's rows; batch size; fn's milliseconds

One daemon thread owns the model (Net.forward is not re-entrant). It blocks for the first queued request,
then gathers more until the batch holds `max_batch` requests or `window_ms` has passed since the first
arrived, stacks them into (N, C, H, W), calls `fn` once and hands each caller its row of every output.
Requests that queue while a batch runs are taken at once by the next batch, so under load batches fill
without waiting.

Adaptive waiting (`adaptive=True`, the server's choice): callers announce a request with `expect()` when it
arrives (before its image is decoded); the batcher then waits, up to the window, only while announced
requests have not been submitted yet. A lone request runs at once instead of idling for the window, and
a burst still shares one forward. With `adaptive=False` every batch waits the full window for company.

`enabled=False` (or max_batch=1) gives one forward per request on the same thread: the baseline that the
load benchmark compares against. An exception in `fn` is raised in every caller of that batch.

    maps = await batcher.call(inside.maps, key, layer)  # any other work on the model, on the same thread

`call` runs a function on that thread between batches (a request's feature maps, server.inside: never at the
same time as a forward); one that arrives while a batch gathers runs right after that batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["MicroBatcher"]

_STOP = object()


class _Job:
    """A `call` on the inference thread: fn(*args) -> fut."""

    __slots__ = ("args", "fn", "fut")

    def __init__(self, fn: Callable, args: tuple) -> None:
        self.fn, self.args = fn, args
        self.fut: concurrent.futures.Future = concurrent.futures.Future()

    def run(self) -> None:
        if not self.fut.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.fut.set_exception(exc)
        else:
            self.fut.set_result(result)


class MicroBatcher:
    """See the module docstring. `fn(x: (N, C, H, W)) -> tuple of arrays, each with N rows`."""

    def __init__(
        self,
        fn: Callable[[np.ndarray], Sequence[np.ndarray]],
        *,
        max_batch: int = 32,
        window_ms: float = 5.0,
        enabled: bool = True,
        adaptive: bool = False,
        name: str = "crema-infer",
        on_start: Callable[[], object] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"MicroBatcher: max_batch must be >= 1, got {max_batch}")
        if window_ms < 0:
            raise ValueError(f"MicroBatcher: window_ms must be >= 0, got {window_ms}")
        self.fn = fn
        self.enabled = enabled and max_batch > 1
        self.max_batch = max_batch if self.enabled else 1
        self.window = window_ms / 1000.0 if self.enabled else 0.0
        self.adaptive = adaptive
        self._expected = 0  # announced requests not yet submitted (adaptive mode)
        self.name = name
        self.on_start = on_start  # run first on the thread (e.g. its Numba thread count)
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.sizes: Counter[int] = Counter()  # batch size -> how many batches

    # -- client side -----------------------------------------------------------------------------------
    def expect(self) -> None:
        """Announce a request that will be submitted soon (adaptive mode waits for it, within the window).
        Follow it by `submit(x, expected=True)` or, if the request fails first, by `unexpect()`."""
        with self._lock:
            self._expected += 1

    def unexpect(self) -> None:
        with self._lock:
            self._expected = max(0, self._expected - 1)

    def submit(self, x: np.ndarray, *, expected: bool = False) -> concurrent.futures.Future:
        """Queue one input (C, H, W); the future resolves to (*rows, batch_size, fn_ms): this input's row of
        every output, how many inputs shared the call, and the call's wall time in ms. `expected`: announced."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._put((x, fut), expected)
        return fut

    def submit_call(self, fn: Callable, *args) -> concurrent.futures.Future:
        """Queue fn(*args) for the inference thread (between batches); the future resolves to its result."""
        job = _Job(fn, args)
        self._put(job, False)
        return job.fut

    async def call(self, fn: Callable, *args):
        """`submit_call` awaited from the event loop."""
        return await asyncio.wrap_future(self.submit_call(fn, *args))

    def _put(self, item, expected: bool) -> None:
        with self._lock:
            if expected:
                self._expected = max(0, self._expected - 1)
            if self._closed:
                raise RuntimeError("MicroBatcher: closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
        self._queue.put(item)

    async def run(self, x: np.ndarray, *, expected: bool = False) -> tuple:
        """`submit` awaited from the event loop (which stays free while the batch runs)."""
        return await asyncio.wrap_future(self.submit(x, expected=expected))

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued requests, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)

    def stats(self) -> dict:
        """{"enabled", "adaptive", "max_batch", "window_ms", "requests", "batches", "mean_batch", "sizes": {size: count}}."""
        sizes = dict(sorted(self.sizes.items()))
        batches = sum(sizes.values())
        requests = sum(k * v for k, v in sizes.items())
        return {
            "enabled": self.enabled,
            "adaptive": self.adaptive,
            "max_batch": self.max_batch,
            "window_ms": 1000.0 * self.window,
            "requests": requests,
            "batches": batches,
            "mean_batch": requests / batches if batches else 0.0,
            "sizes": {str(k): v for k, v in sizes.items()},
        }

    # -- worker side -----------------------------------------------------------------------------------
    def _gather(self, first: tuple) -> tuple[list[tuple], list[_Job], bool]:
        items, jobs, stop = [first], [], False
        deadline = time.monotonic() + self.window
        while len(items) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                wait = deadline - time.monotonic()
                if wait <= 0 or (self.adaptive and self._expected <= 0):
                    break
                try:  # adaptive: re-check the announced count every millisecond
                    item = self._queue.get(timeout=min(wait, 0.001) if self.adaptive else wait)
                except queue.Empty:
                    continue
            if item is _STOP:
                stop = True
                break
            if isinstance(item, _Job):
                jobs.append(item)
                continue
            items.append(item)
        return items, jobs, stop

    def _loop(self) -> None:
        if self.on_start is not None:
            try:
                self.on_start()
            except Exception:  # the thread still serves (its setting left as it was)
                logging.getLogger("crema.batcher").warning("%s: on_start failed", self.name, exc_info=True)
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            if isinstance(first, _Job):
                first.run()
                continue
            items, jobs, stop = self._gather(first)
            live = [(x, f) for x, f in items if f.set_running_or_notify_cancel()]
            if live:
                self._run(live)
            for job in jobs:
                job.run()
            if stop:
                return

    def _run(self, items: list[tuple[np.ndarray, concurrent.futures.Future]]) -> None:
        n = len(items)
        try:
            x = np.stack([x for x, _ in items])
            t0 = time.perf_counter()
            outs = self.fn(x)
            ms = 1000.0 * (time.perf_counter() - t0)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
            for _, fut in items:
                fut.set_exception(exc)
            return
        self.sizes[n] += 1
        for i, (_, fut) in enumerate(items):
            fut.set_result((*(o[i] for o in outs), n, ms))
