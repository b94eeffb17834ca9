"""MicroBatcher: rows go back to the caller that sent them, batches respect their limits, errors reach
every caller, and disabled batching runs one request per call."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest

from server.batcher import MicroBatcher


def fn_sum_double(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.reshape(len(x), -1).sum(axis=1), x * 2


def submit_all(b: MicroBatcher, xs: list[np.ndarray]) -> list[tuple]:
    """Submit from one thread each, released together; return the results in input order."""
    out: list = [None] * len(xs)
    start = threading.Barrier(len(xs))

    def worker(i: int) -> None:
        start.wait()
        out[i] = b.submit(xs[i]).result(timeout=30)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_rows_return_to_their_callers():
    b = MicroBatcher(fn_sum_double, max_batch=8, window_ms=100.0)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 3, 3)).astype(np.float32) for _ in range(20)]
    results = submit_all(b, xs)
    for x, (s, doubled, _, _) in zip(xs, results):
        assert s == pytest.approx(float(x.sum()), rel=1e-6)
        np.testing.assert_array_equal(doubled, x * 2)
    st = b.stats()
    assert st["requests"] == 20 and max(int(k) for k in st["sizes"]) <= 8
    # Each caller's batch size and call time are its call's: the n callers of one call report (n, that call's ms),
    # and so the callers reporting size n are n times the calls of that size in the stats.
    calls = Counter((n, ms) for *_, n, ms in results)
    assert all(count == n and 1 <= n <= 8 and ms > 0 for (n, ms), count in calls.items())
    sizes = Counter(n for n, _ in calls.elements())
    assert {n: count // n for n, count in sizes.items()} == {int(k): v for k, v in st["sizes"].items()}
    assert st["batches"] < 20  # 20 simultaneous requests with a 100 ms window share forwards
    b.close()


def test_window_gathers_requests_into_one_batch():
    calls: list[int] = []

    def fn(x):
        calls.append(len(x))
        return (x[:, 0, 0, 0],)

    b = MicroBatcher(fn, max_batch=5, window_ms=10_000.0)  # closed by the fifth request, not by the clock
    futs = [b.submit(np.full((1, 1, 1), i, dtype=np.float32)) for i in range(5)]
    assert [f.result(timeout=10)[0] for f in futs] == [0, 1, 2, 3, 4]
    assert calls == [5]
    b.close()


def test_disabled_runs_one_at_a_time():
    calls: list[int] = []

    def fn(x):
        calls.append(len(x))
        return (x,)

    b = MicroBatcher(fn, max_batch=32, window_ms=50.0, enabled=False)
    submit_all(b, [np.zeros((1, 2, 2), dtype=np.float32) for _ in range(6)])
    assert calls == [1] * 6 and b.stats()["enabled"] is False and b.stats()["max_batch"] == 1
    b.close()


def test_lone_request_waits_at_most_the_window():
    b = MicroBatcher(lambda x: (x,), max_batch=32, window_ms=20.0)
    b.submit(np.zeros((1, 1, 1), dtype=np.float32)).result(timeout=10)  # thread started
    t0 = time.perf_counter()
    b.submit(np.zeros((1, 1, 1), dtype=np.float32)).result(timeout=10)
    assert time.perf_counter() - t0 < 5.0  # generous bound: a lone request is not held for a full batch
    b.close()


def test_error_reaches_every_caller_of_the_batch():
    def boom(x):
        raise ValueError(f"bad batch of {len(x)}")

    b = MicroBatcher(boom, max_batch=3, window_ms=10_000.0)  # closed by the third request, not by the clock
    futs = [b.submit(np.zeros((1, 1, 1), dtype=np.float32)) for _ in range(3)]
    for f in futs:
        with pytest.raises(ValueError, match="bad batch of 3"):
            f.result(timeout=10)
    # the worker survives the error
    b.fn = lambda x: (x + 1,)
    b.window = 0.0  # a lone request: no need to wait
    assert b.submit(np.zeros((1, 1, 1), dtype=np.float32)).result(timeout=10)[0][0, 0, 0] == 1
    b.close()


def test_close_finishes_queue_and_refuses_new_work():
    b = MicroBatcher(lambda x: (x,), max_batch=2, window_ms=0.0)
    futs = [b.submit(np.full((1, 1, 1), i, dtype=np.float32)) for i in range(5)]
    b.close()
    assert [float(f.result(timeout=10)[0][0, 0, 0]) for f in futs] == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="closed"):
        b.submit(np.zeros((1, 1, 1), dtype=np.float32))


@pytest.mark.parametrize("kw", [{"max_batch": 0}, {"window_ms": -1.0}])
def test_bad_arguments(kw):
    with pytest.raises(ValueError, match="MicroBatcher"):
        MicroBatcher(lambda x: (x,), **kw)


def test_adaptive_lone_request_does_not_wait():
    """adaptive=True: nothing announced, so a lone request runs at once even with a long window."""
    b = MicroBatcher(lambda x: (x,), max_batch=32, window_ms=3000.0, adaptive=True)
    b.submit(np.zeros((1, 1, 1), dtype=np.float32)).result(timeout=10)  # thread started
    t0 = time.perf_counter()
    b.submit(np.zeros((1, 1, 1), dtype=np.float32)).result(timeout=10)
    assert time.perf_counter() - t0 < 2.0  # far below the 3 s window
    b.close()


def test_adaptive_waits_for_announced_requests():
    calls: list[int] = []

    def fn(x):
        calls.append(len(x))
        return (x,)

    b = MicroBatcher(fn, max_batch=32, window_ms=3000.0, adaptive=True)
    b.expect()
    b.expect()
    first = b.submit(np.zeros((1, 1, 1), dtype=np.float32), expected=True)
    time.sleep(0.2)  # the second announced request is still "decoding"
    second = b.submit(np.ones((1, 1, 1), dtype=np.float32), expected=True)
    assert first.result(timeout=10)[1] == 2 and second.result(timeout=10)[1] == 2
    assert calls == [2]
    b.expect()
    b.unexpect()  # a request that failed before submitting releases the wait
    t0 = time.perf_counter()
    b.submit(np.zeros((1, 1, 1), dtype=np.float32)).result(timeout=10)
    assert time.perf_counter() - t0 < 2.0 and calls == [2, 1]
    b.close()


def test_call_runs_on_the_inference_thread_between_batches():
    """`call`'s functions run on the batcher's thread, never during a batch: one queued while a batch gathers runs
    right after that batch; its result or exception reaches its caller only."""
    events: list[str] = []

    def fn(x):
        events.append(f"batch {len(x)} on {threading.current_thread().name}")
        return (x[:, 0, 0, 0],)

    def job(tag: str) -> str:
        if tag == "bad":
            raise ValueError("no such layer")
        events.append(f"{tag} on {threading.current_thread().name}")
        return tag.upper()

    b = MicroBatcher(fn, max_batch=3, window_ms=10_000.0, name="crema-infer")
    assert b.submit_call(job, "first").result(timeout=10) == "FIRST"
    futs = [b.submit(np.zeros((1, 1, 1), np.float32))]
    during = b.submit_call(job, "during")  # queued while the batch waits for company
    futs += [b.submit(np.ones((1, 1, 1), np.float32)) for _ in range(2)]
    assert during.result(timeout=10) == "DURING" and [f.result(timeout=10)[1] for f in futs] == [3, 3, 3]
    with pytest.raises(ValueError, match="no such layer"):
        b.submit_call(job, "bad").result(timeout=10)
    assert events == ["first on crema-infer", "batch 3 on crema-infer", "during on crema-infer"]
    b.close()
    with pytest.raises(RuntimeError, match="closed"):
        b.submit_call(job, "late")
