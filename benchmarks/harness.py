"""The benchmark harness behind `python -m benchmarks` (and `crema bench`): cases, checks, interleaved timing, reports.

A `Case` is one configuration: crema's callable, one callable per reference framework, the FLOPs of one call and a
`check` that compares crema's result with every reference (and with the NumPy reference where one applies). The
harness runs the check first and refuses to time a case whose result is wrong (`Mismatch`: the line says MISMATCH and
no time, the run's exit status is 1). The first call of crema's callable is timed on its own: that is JIT compile (or
Numba cache load) plus one run, reported as ``first``.

Timing: ``rounds`` (7) rounds; in each, every side (crema, then each reference) runs ``per_round`` times back to back
(as many as fit in about 60 ms, 1 to 50) after a pause (PAUSE_S, then until the process's threads are idle:
`settle`; another framework's threads still spin after its calls) and one untimed call (the first call after another
framework ran pays for waking this one's worker threads), each call timed with perf_counter. Many short interleaved
rounds mean a noisy spell on a shared machine (this one's virtual CPUs slow down for seconds at a time) lands on every
side, not on one. With a `Calm` probe (`python -m benchmarks` always passes one), a side's round counts only where a
~1 ms FMA loop on every thread ran at CALM of the measured peak right before and right after it: a round that a slow
spell of the host touched is dropped and taken again (for crema and every reference alike) once the probe says calm,
for up to CALM_CASE_S of waiting a case (CALM_RUN_S a run); after that rounds are kept as they come and counted as
slow. The counts are in each line, the JSON and the table's footer.
A side's time is the median of all its calls; the ratio to a reference is ref median / crema median (> 1: crema is
faster). A target's ratio comes with its range over resamplings of the rounds (`Result.spread`: how much of a lead
the run's luck could give or take). GFLOP/s is FLOPs / crema's median; "% peak" divides by this machine's FP32 peak
measured by `measure_peak` (independent FMA chains in registers on every thread: what the cores can do, not what any
GEMM gets).

Busy machine (`run_busy`, ``--busy``): after a case's timing, the harness starts processes that each keep a core busy
(spin loops that end themselves after BUSY_MAX_S or with the harness, killed when the case is done) and times every
side again, with crema on one thread as one more side of the same rounds; reported: each side's slowdown (median with them / without them) and crema's time over its
own single-thread time. The target: crema slows down no more than the fastest reference of the quiet run (the peer
it is measured against; every reference's slowdown is listed), and is not slower than its single-thread run (within
BUSY_SAME).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

BUSY_MAX_S = 600  # a busy process ends itself after this long, whatever becomes of the harness
SINGLE = "crema 1 thread"  # run_busy's extra side
BUSY_SAME = 0.05  # two timings of the same work with a busy process differ by this much: "not slower" allows it
README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"
ROUND_S = 0.06  # seconds of one side's calls in one round (7 rounds: about 0.4 s a side)
# seconds between two sides' calls: ONNX Runtime's threads spin for up to ~50 ms after its calls (EfficientNet-Lite0
# batch 1 on 2 threads, the 2-core Xeon: crema's median 19 ms right after ORT's call, 10 ms 30 ms after, 6 ms from 50 ms
# on), so the next side's first timed calls ran against them with the 50 ms pause there was
PAUSE_S = 0.1
# ... and then until this process's threads are idle: OpenBLAS's (NumPy's) spin for 2^28 TSC ticks after a call, 0.13 s
# at 2.1 GHz (an Emerald Rapids Xeon: crema's 1024^3 GEMM 8.2-11.7 ms 0.02-0.1 s after NumPy's, 7.2-7.5 ms from 0.2 s
# on). `settle` waits for a SETTLE_WINDOW_S in which all of the process's threads used less than SETTLE_IDLE of a core,
# for SETTLE_MAX_S at most.
SETTLE_WINDOW_S = 0.01
SETTLE_IDLE = 0.2
SETTLE_MAX_S = 1.0
# a side's round counts where the probe before and after it ran at this fraction of the measured peak (the 2-vCPU
# EPYC: 222-227 of 234.9 GFLOP/s on 2 threads when the host is quiet, 69-144 in its slow spells)
CALM = 0.85
CALM_CASE_S = 20.0  # seconds a case may wait for calm (and retake rounds); then its rounds are kept as they come
CALM_POLL_S = 0.1  # probe this often while the host is slow
CALM_RUN_S = 600.0  # seconds a whole run may spend so (a host slow for many minutes: the run then goes on as it is)
# the range given with a target's ratio: these percentiles of the ratio over SPREAD_DRAWS resamplings of the rounds
# (`Result.spread`). A lead smaller than that range is one run's luck: the EPYC's EfficientNet-Lite0 batch 1 read 0.85x
# in one run (crema's first four rounds in a slow spell of the host, ONNX Runtime's in the next) and 1.09-1.10x alone
SPREAD = (5, 95)
SPREAD_DRAWS = 2000


class Mismatch(AssertionError):
    """crema's result differs from a reference beyond the stated tolerance: no time is printed for it."""


@dataclass
class Case:
    group: str  # gemm | layer | net | train
    name: str  # e.g. "caffenet conv2 fwd N=10"
    ours: Callable[[], Any]
    refs: dict[str, Callable[[], Any]]
    flops: float = 0.0
    check: Callable[[], list[str]] | None = None  # raises Mismatch; returns one line per comparison made
    target: tuple[str, float] | None = None  # ("fastest" | a reference name, minimum ratio)
    per_round: int = 0  # timed calls per side and round; 0: as many as fit in about ROUND_S (1 to 50)
    rounds: int = 7
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    case: Case
    first_s: float = math.nan
    runs: dict[str, list[float]] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    error: str | None = None
    busy: int = 0  # processes kept busy during busy_runs (run_busy), 0: not run
    busy_runs: dict[str, list[float]] = field(default_factory=dict)
    busy_single: list[float] = field(default_factory=list)  # crema on one thread, with the same busy processes
    dropped: int = 0  # rounds (of any side) taken again because a slow spell of the host touched them
    slow: int = 0  # rounds kept although the probe said slow (the case or the run had waited long enough)

    def median(self, side: str) -> float:
        return statistics.median(self.runs[side]) if self.runs.get(side) else math.nan

    def ratio(self, ref: str) -> float:
        return self.median(ref) / self.median("crema")

    def rounds_of(self, side: str) -> list[list[float]]:
        """A side's calls split by round (each round's calls are consecutive in ``runs``, as many in every round);
        empty where the calls do not split so (no runs, or a count that is not a whole number of rounds)."""
        runs, rounds = self.runs.get(side) or [], self.case.rounds
        per = len(runs) // rounds if rounds else 0
        if not per or per * rounds != len(runs):
            return []
        return [runs[i * per : (i + 1) * per] for i in range(rounds)]

    def spread(self, ref: str, draws: int = SPREAD_DRAWS) -> tuple[float, float] | None:
        """How far the ratio to `ref` moves with the rounds that happened to be drawn: the SPREAD percentiles of the
        ratio over `draws` resamplings of the rounds (with replacement; round i of both sides together, as they ran
        side by side), or None where there is no such pair of runs. A fixed seed: the same runs, the same range."""
        mine, theirs = self.rounds_of("crema"), self.rounds_of(ref)
        if not mine or len(mine) != len(theirs):
            return None
        a, b = np.asarray(mine), np.asarray(theirs)  # (rounds, calls a round)
        pick = np.random.default_rng(0).integers(0, len(a), (draws, len(a)))
        ratios = np.median(b[pick].reshape(draws, -1), axis=1) / np.median(a[pick].reshape(draws, -1), axis=1)
        lo, hi = np.percentile(ratios, SPREAD)
        return float(lo), float(hi)

    def target_spread(self) -> tuple[float, float] | None:
        """`spread` of the target's ratio (None without a target ratio)."""
        return self.spread(self._target_ref()) if self.target_ratio() is not None else None

    def _target_ref(self) -> str | None:
        """The reference the target names (the fastest one, for "fastest")."""
        who = self.case.target[0]
        return self.fastest_ref() if who == "fastest" else who

    def fastest_ref(self) -> str | None:
        refs = [r for r in self.case.refs if self.runs.get(r)]
        return min(refs, key=self.median) if refs else None

    def target_ratio(self) -> float | None:
        if self.case.target is None or self.error:
            return None
        ref = self._target_ref()
        return self.ratio(ref) if ref and self.runs.get(ref) else None

    def target_met(self) -> bool | None:
        got = self.target_ratio()
        return None if got is None else got >= self.case.target[1]

    def slowdown(self, side: str) -> float:
        """Median time with the busy processes / median time without."""
        if not self.busy_runs.get(side) or not self.runs.get(side):
            return math.nan
        return statistics.median(self.busy_runs[side]) / self.median(side)

    def busy_vs_single(self) -> float:
        """crema's median time with the busy processes / crema on one thread with them (> 1: threads hurt)."""
        if not self.busy_runs.get("crema") or not self.busy_single:
            return math.nan
        return statistics.median(self.busy_runs["crema"]) / statistics.median(self.busy_single)

    def busy_target_met(self) -> bool | None:
        """crema slows down no more than the fastest reference (of the quiet run: the peer crema is measured
        against) and is not slower than its own single-thread run with the same busy processes (within BUSY_SAME:
        the same work timed twice)."""
        peer = self.fastest_ref()
        if not self.busy_runs.get("crema") or not peer or not self.busy_runs.get(peer) or not self.busy_single:
            return None
        return self.slowdown("crema") <= self.slowdown(peer) and self.busy_vs_single() <= 1.0 + BUSY_SAME


# -- comparisons -------------------------------------------------------------------------------------------------


def as_arrays(value: Any) -> list[np.ndarray]:
    """A result as a list of float64 arrays (tuples and lists flattened; torch tensors and scalars accepted)."""
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in as_arrays(v)]
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().numpy()
    return [np.asarray(value, dtype=np.float64)]


def compare(label: str, got: Any, want: Any, *, rtol: float = 0.0, atol: float = 0.0) -> str:
    """Max abs error of got vs want; Mismatch above atol + rtol * max|want| (per part); returns the report line."""
    g, w = as_arrays(got), as_arrays(want)
    if len(g) != len(w):
        raise Mismatch(f"{label}: {len(g)} outputs vs {len(w)}")
    parts = []
    for i, (a, b) in enumerate(zip(g, w)):
        if a.shape != b.shape:
            raise Mismatch(f"{label}: output {i} shape {a.shape} vs {b.shape}")
        err = float(np.max(np.abs(a - b))) if a.size else 0.0
        tol = atol + rtol * (float(np.max(np.abs(b))) if b.size else 0.0)
        if not err <= tol:  # NaN fails too
            raise Mismatch(f"{label}: output {i} max abs err {err:.3e} > tol {tol:.3e}")
        parts.append(f"{err:.1e}<={tol:.1e}")
    return f"{label}: max abs err " + ", ".join(parts)


# -- peak --------------------------------------------------------------------------------------------------------


def measure_peak(threads: int, seconds: float = 0.2) -> float:
    """FP32 FLOP/s of this machine on `threads` threads: `threads` x one core's best over peak.fma_chains' lane
    counts (independent vector FMA chains in registers), each timed best of 3 at about `seconds` a run. One core
    times `threads`, rather than all threads at once, so that a busy neighbour on a shared machine does not lower
    the ceiling that every result is divided by."""
    import numba

    from benchmarks import peak

    saved = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return threads * _core_peak(peak, seconds)
    finally:
        numba.set_num_threads(saved)


def _core_peak(peak, seconds: float) -> float:
    best_rate = 0.0
    for lanes in peak.LANE_CHOICES:
        fn = peak.fma_chains(lanes)
        fn(10, 1)  # compile
        reps = 100_000
        while (dt := _timed(partial(fn, reps, 1))) < seconds / 4:
            reps *= 4
        best = min(dt, *(_timed(partial(fn, reps, 1)) for _ in range(2)))
        best_rate = max(best_rate, 2.0 * lanes * reps / best)
    return best_rate


class Calm:
    """Is the host running at full speed right now? `threads` Python threads meet at a barrier, then each times its
    own ~`seconds` FMA loop (`peak.fma_chain_thread`, the GIL released); the slowest thread's rate times `threads` is
    compared with `peak` (FLOP/s on that many threads, `measure_peak`). Every thread at once, because this host's slow
    spells take one vCPU away (a 2-thread loop at 69-144 GFLOP/s for seconds while 1 thread stays at 116). The barrier,
    because waking an idle vCPU here takes up to ~1 ms: without it, one thread often ran both loops in turn. Python
    threads, not an OpenMP loop: they sleep between probes, where OpenMP's threads spin on into the next side's calls.
    """

    def __init__(self, threads: int, peak: float, seconds: float = 1e-3):
        from benchmarks import peak as fma
        from kernels.tiling import VW

        self.threads, self.peak = threads, peak
        self.left = CALM_RUN_S  # seconds of waiting for calm left to the run (run_case counts them down)
        # Vector chains enough to cover the FMA latency on every FMA port without spilling: 8 of AVX2's 16 ymm
        # registers; 16 of AVX-512's 32 zmm (a Xeon with two 512-bit FMA ports reads 84% of its peak with 8 chains,
        # below CALM, so every round there counted as slow; 97% with 16).
        self.lanes = (16 if VW == 16 else 8) * VW
        self.fn = fma.fma_chain_thread(self.lanes)
        self.fn(10, np.float32(1e-7))  # compile
        self.reps = max(1000, int(seconds * peak / (2 * self.lanes * threads)))
        self.barrier = threading.Barrier(threads)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="calm")

    def _one(self, c: np.float32) -> float:
        self.barrier.wait()
        return _timed(partial(self.fn, self.reps, c))

    def rate(self) -> float:
        """FLOP/s: the slowest thread's, times the thread count."""
        jobs = [self.pool.submit(self._one, np.float32(1e-7 * (t + 1))) for t in range(self.threads)]
        slowest = max(job.result() for job in jobs)
        return 2.0 * self.lanes * self.reps * self.threads / slowest

    def __call__(self) -> bool:
        return self.rate() >= CALM * self.peak


def settle(pause: float = PAUSE_S) -> float:
    """Sleep `pause` s, then until every thread of this process is idle (CPU time over a SETTLE_WINDOW_S below
    SETTLE_IDLE of a core: no framework's worker threads still spinning), at most SETTLE_MAX_S more. Returns the
    seconds waited after the pause."""
    time.sleep(pause)
    t0 = time.monotonic()
    while time.monotonic() - t0 < SETTLE_MAX_S:
        c0 = time.process_time()
        time.sleep(SETTLE_WINDOW_S)
        if time.process_time() - c0 < SETTLE_IDLE * SETTLE_WINDOW_S:
            break
    return time.monotonic() - t0


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- running -----------------------------------------------------------------------------------------------------


def run_case(case: Case, *, scale: float = 1.0, pause: float = PAUSE_S, calm: Calm | None = None) -> Result:
    """Check, then time (interleaved rounds). `scale` multiplies per_round (>= 1 call each). With `calm` (a `Calm`
    probe), a side's round counts only where calm() said so right before and right after it; otherwise it is taken
    again (the case waits for calm first), for up to CALM_CASE_S in all; then rounds are kept as they come and counted
    as slow."""
    result = Result(case)
    try:
        result.first_s = _timed(case.ours)
        if case.check is not None:
            result.checks = case.check()
    except Mismatch as exc:
        result.error = f"MISMATCH {exc}"
        return result
    sides = {"crema": case.ours, **case.refs}
    for fn in sides.values():  # warm-up: one untimed call each (first-call costs of the references too)
        fn()
    per = case.per_round
    if not per:  # the best of 3 calls: one slow call (a spell of the host) must not set the count
        per = min(50, max(1, round(ROUND_S / max(min(_timed(case.ours) for _ in range(3)), 1e-6))))
    per = max(1, round(per * scale))
    result.runs = {side: [] for side in sides}

    def take(fn) -> list[float]:  # one side's round: an untimed call (the first call after another framework ran
        fn()  # pays for waking this one's threads), the timed ones, then the pause (ORT's threads spin on after it)
        times = [_timed(fn) for _ in range(per)]
        settle(pause)
        return times

    if calm is None:
        for _ in range(case.rounds):
            for side, fn in sides.items():
                result.runs[side].extend(take(fn))
        return result
    waited = 0.0  # seconds this case spent waiting for calm and on rounds it dropped
    settle(pause)
    calm_now = calm()  # the probe right before the next side's calls (after a pause: a probe reads spinning threads)
    for _ in range(case.rounds):
        for side, fn in sides.items():
            while True:
                t0 = time.monotonic()
                patient = waited < CALM_CASE_S and calm.left > 0
                if not calm_now and patient:  # slow now: wait (cheaply) for a calm moment
                    time.sleep(CALM_POLL_S)
                    calm_now = calm()
                else:
                    times = take(fn)
                    before, calm_now = calm_now, calm()
                    if before and calm_now:
                        break
                    if not patient:  # this case (or the run) waited long enough: keep the round, say so
                        result.slow += 1
                        break
                    result.dropped += 1
                spent = time.monotonic() - t0
                waited += spent
                calm.left -= spent
            result.runs[side].extend(times)
    return result


def start_busy(processes: int) -> list[subprocess.Popen]:
    """`processes` Python processes that each keep a core busy (a spin loop) for BUSY_MAX_S at most, and only while
    the harness lives (a harness killed by a signal runs no `finally`: the loop checks its parent)."""
    code = (
        f"import os, time\nparent = {os.getpid()}\nend = time.monotonic() + {BUSY_MAX_S}\n"
        "while time.monotonic() < end and os.getppid() == parent:\n    pass\n"
    )
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(processes)]


def stop_busy(procs: Sequence[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def run_busy(result: Result, processes: int, *, pause: float = PAUSE_S) -> None:
    """After `run_case`: time every side again while `processes` other processes keep cores busy, and crema on one
    thread (Numba's thread count 1 around each call) as one more side of the same interleaved rounds, the order of the
    sides rotated every round, so that a noisy spell or a reference's still-spinning threads land on both of crema's
    runs alike. The processes are started here and killed before it returns."""
    import numba

    case = result.case
    if result.error or not result.runs:
        return

    def single() -> Any:
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return case.ours()
        finally:
            numba.set_num_threads(threads)

    sides = {"crema": case.ours, **case.refs, SINGLE: single}
    per = max(1, len(result.runs["crema"]) // case.rounds)
    procs = start_busy(processes)
    try:
        time.sleep(0.5)  # the processes run (and net.contention's window sees them) before anything is timed
        for fn in sides.values():
            fn()
        runs: dict[str, list[float]] = {side: [] for side in sides}
        order = list(sides)
        for r in range(case.rounds):
            for side in order[r % len(order) :] + order[: r % len(order)]:  # rotated: no side always follows the
                fn = sides[side]  # same one (a reference's threads spin on for a while after its calls)
                fn()
                for _ in range(per):
                    runs[side].append(_timed(fn))
                settle(pause)
    finally:
        stop_busy(procs)
    result.busy, result.busy_single = processes, runs.pop(SINGLE)
    result.busy_runs = runs


def busy_line(result: Result) -> str:
    """The line under a result's line for its busy run: crema's and each reference's slowdown, crema on one thread."""
    if not result.busy_runs:
        return ""
    crema = statistics.median(result.busy_runs["crema"]) * 1e3
    single = statistics.median(result.busy_single) * 1e3
    peers = ", ".join(f"{r} {result.slowdown(r):.2f}x" for r in result.case.refs if result.busy_runs.get(r))
    met = result.busy_target_met()
    verdict = ""
    if met is not None:
        verdict = f" | target (slowed no more than {result.fastest_ref()}, not slower than 1 thread): "
        verdict += "met" if met else "MISSED"
    return (
        f"      with {result.busy} busy process(es): crema {crema:.3f} ms ({result.slowdown('crema'):.2f}x its quiet "
        f"time; 1 thread {single:.3f} ms, ratio {result.busy_vs_single():.2f}); slowdowns: {peers}{verdict}"
    )


def line(result: Result, peak: float | None, ref_names: Sequence[str]) -> str:
    """The fixed-width line of one result."""
    case = result.case
    head = f"{case.group:<5} {case.name:<44}"
    if result.error:
        return f"{head} | {result.error}"
    ms = result.median("crema") * 1e3
    gflops = case.flops / result.median("crema") / 1e9 if case.flops else math.nan
    pct = 100 * gflops * 1e9 / peak if peak and case.flops else math.nan
    cols = []
    for ref in ref_names:
        cols.append(f"{result.ratio(ref):6.2f}x {ref}" if result.runs.get(ref) else f"{'-':>6}  {ref}")
    target = ""
    if (got := result.target_ratio()) is not None:
        who, want = case.target
        target = f" | target {want:.1f}x {who}: {'met' if got >= want else 'MISSED'}{_range(result.target_spread())}"
    gf = f"{gflops:7.1f}" if not math.isnan(gflops) else f"{'-':>7}"
    pc = f"{pct:5.1f}%" if not math.isnan(pct) else f"{'-':>6}"
    spells = f" | {result.dropped} rounds retaken" if result.dropped else ""
    spells += f", {result.slow} kept slow" if result.slow else ""
    return f"{head} | {ms:10.3f} ms | {gf} GFLOP/s | {pc} peak | " + " | ".join(cols) + target + spells


def _range(spread: tuple[float, float] | None) -> str:
    """A target's `Result.spread`, as shown after its verdict."""
    return f" ({spread[0]:.2f}-{spread[1]:.2f}x)" if spread else ""


def ref_columns(results: Sequence[Result]) -> list[str]:
    names: list[str] = []
    for r in results:
        for ref in r.case.refs:
            if ref not in names:
                names.append(ref)
    return names


# -- reports -----------------------------------------------------------------------------------------------------


def to_json(results: Sequence[Result], meta: dict) -> dict:
    rows = []
    for r in results:
        rows.append(
            {
                "group": r.case.group,
                "name": r.case.name,
                "flops": r.case.flops,
                "first_call_s": r.first_s,
                "checks": r.checks,
                "error": r.error,
                "median_s": {k: statistics.median(v) for k, v in r.runs.items() if v},
                "runs_s": r.runs,
                "target": list(r.case.target) if r.case.target else None,
                "target_ratio": r.target_ratio(),
                "target_met": r.target_met(),
                "target_ratio_spread": r.target_spread(),
                "rounds_retaken": r.dropped,
                "rounds_kept_slow": r.slow,
                **(_busy_json(r) if r.busy_runs else {}),
                **r.case.meta,
            }
        )
    return {"meta": meta, "results": rows}


def _busy_json(r: Result) -> dict:
    return {
        "busy": {
            "processes": r.busy,
            "median_s": {k: statistics.median(v) for k, v in r.busy_runs.items() if v},
            "runs_s": r.busy_runs,
            "crema_one_thread_median_s": statistics.median(r.busy_single),
            "slowdown": {k: r.slowdown(k) for k in r.busy_runs},
            "crema_vs_one_thread": r.busy_vs_single(),
            "target_met": r.busy_target_met(),
        }
    }


def busy_markdown(results: Sequence[Result]) -> str:
    """A table of the busy runs (empty where none ran)."""
    rows = [r for r in results if r.busy_runs]
    if not rows:
        return ""
    refs = ref_columns(rows)
    head = f"\nWith {rows[0].busy} other process(es) keeping cores busy (started by the harness): each side's median "
    head += "time with them / without them, and crema's time with them / crema on one thread with them.\n\n"
    head += "| configuration | crema ms | crema slowdown | " + " | ".join(f"{r} slowdown" for r in refs)
    head += " | crema / crema 1 thread | target |\n|---|---:|---:|" + "---:|" * len(refs) + "---:|---|\n"
    lines = []
    for r in rows:
        ms = statistics.median(r.busy_runs["crema"]) * 1e3
        peers = [f"{r.slowdown(x):.2f}x" if r.busy_runs.get(x) else "" for x in refs]
        met = r.busy_target_met()
        tgt = "" if met is None else ("met" if met else "**missed**")
        lines.append(
            f"| {r.case.name} | {ms:.3f} | {r.slowdown('crema'):.2f}x | "
            + " | ".join(peers)
            + f" | {r.busy_vs_single():.2f} | {tgt} |"
        )
    return head + "\n".join(lines) + "\n"


def markdown(results: Sequence[Result], peak: float | None, meta: dict) -> str:
    refs = ref_columns(results)
    head = "| group | configuration | crema ms | GFLOP/s | % peak | " + " | ".join(f"vs {r}" for r in refs)
    head += " | target |\n"
    head += "|---|---|---:|---:|---:|" + "---:|" * len(refs) + "---|\n"
    rows = []
    for r in results:
        if r.error:
            rows.append(f"| {r.case.group} | {r.case.name} | {r.error} |" + " |" * (len(refs) + 3))
            continue
        med = r.median("crema")
        gf = r.case.flops / med / 1e9 if r.case.flops else None
        pct = f"{100 * gf * 1e9 / peak:.1f}" if gf and peak else ""
        ratios = [f"{r.ratio(x):.2f}x" if r.runs.get(x) else "" for x in refs]
        tgt = ""
        if (got := r.target_ratio()) is not None:
            who, want = r.case.target
            tgt = f"≥{want:.1f}x {who}: {'met' if got >= want else '**missed**'}{_range(r.target_spread())}"
        gfs = f"{gf:.1f}" if gf else ""
        rows.append(f"| {r.case.group} | {r.case.name} | {med * 1e3:.3f} | {gfs} | {pct} | " + " | ".join(ratios))
        rows[-1] += f" | {tgt} |"
    foot = (
        f"\n{meta.get('when', '')} on {meta.get('machine', '')}, {meta.get('threads')} threads for every framework; "
        f"FP32 peak measured {meta.get('peak_gflops', float('nan')):.1f} GFLOP/s. Ratios: reference median time / "
        "crema median time (> 1: crema is faster); every result checked against the references before timing. "
        f"After a target's verdict, in brackets: the {SPREAD[0]}th to {SPREAD[1]}th percentile of its ratio over "
        f"{SPREAD_DRAWS} resamplings of the case's rounds (each round of crema with the same round of the reference): "
        "a lead inside that range is this run's luck, not a result.\n"
    )
    if meta.get("calm"):
        retaken, slow = sum(r.dropped for r in results), sum(r.slow for r in results)
        rounds = sum(len(r.runs) * r.case.rounds for r in results if r.runs)
        foot += (
            f"A side's round counted only where a 1 ms FMA loop on every thread ran at {100 * CALM:.0f}% of that peak "
            f"right before and after it: {retaken} rounds (of {rounds}, every side alike) were taken again because the "
            f"host slowed down; {slow} kept slow after {CALM_CASE_S:g} s of waiting in their case.\n"
        )
    return head + "\n".join(rows) + "\n" + foot + busy_markdown(results)


def update_readme(readme: Path, table: str) -> bool:
    """Replace the text between README_BEGIN and README_END; False (file untouched) where the markers are missing."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_BEGIN) + r".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        return False
    readme.write_text(pattern.sub(lambda _: f"{README_BEGIN}\n{table}{README_END}", text, count=1))
    return True


def bar_chart(results: Sequence[Result], path: Path) -> None:
    """A PNG bar chart (Pillow) of each configuration's ratio to its fastest reference, log scale, 1.0x marked."""
    from PIL import Image, ImageDraw, ImageFont

    rows = []
    for r in results:
        ref = r.fastest_ref()
        if ref and not r.error:
            rows.append((f"{r.case.group} {r.case.name}", ref, r.ratio(ref)))
    font = ImageFont.load_default()
    bar_h, label_w, plot_w, top = 16, 380, 520, 34
    h = top + bar_h * max(1, len(rows)) + 40
    img = Image.new("RGB", (label_w + plot_w + 120, h), "white")
    draw = ImageDraw.Draw(img)
    draw.text(
        (10, 8), "crema speed vs the fastest reference (ref time / crema time; log scale)", fill="black", font=font
    )
    lo, hi = math.log(0.1), math.log(10.0)

    def x_of(ratio: float) -> int:
        v = min(max(math.log(max(ratio, 1e-9)), lo), hi)
        return label_w + int((v - lo) / (hi - lo) * plot_w)

    for tick in (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 10.0):
        x = x_of(tick)
        draw.line([(x, top - 4), (x, h - 30)], fill="black" if tick == 1.0 else (220, 220, 220))
        draw.text((x - 8, h - 26), f"{tick:g}x", fill="black", font=font)
    for i, (label, ref, ratio) in enumerate(rows):
        y = top + i * bar_h
        colour = (46, 139, 87) if ratio >= 1.0 else (205, 92, 92)
        x0, x1 = sorted((x_of(1.0), x_of(ratio)))
        draw.rectangle([x0, y + 2, max(x1, x0 + 1), y + bar_h - 3], fill=colour)
        draw.text((6, y + 2), label[:60], fill="black", font=font)
        draw.text((label_w + plot_w + 6, y + 2), f"{ratio:.2f}x {ref}", fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")
