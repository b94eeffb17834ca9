"""The benchmark harness behind `python -m benchmarks` (and `crema bench`): cases, checks, interleaved timing, reports.

A `Case` is one configuration: crema's callable, one callable per reference framework, the FLOPs of one call and a
`check` that compares crema's result with every reference (and with the NumPy reference where one applies). The
harness runs the check first and refuses to time a case whose result is wrong (`Mismatch`: the line says MISMATCH and
no time, the run's exit status is 1). The first call of crema's callable is timed on its own: that is JIT compile (or
Numba cache load) plus one run, reported as ``first``.

Timing: ``rounds`` (7) rounds; in each, every side (crema, then each reference) runs ``per_round`` times back to back
(as many as fit in about 60 ms, 1 to 50) after one untimed call (the first call after another framework ran pays
for waking this one's worker threads, and for the other's still spinning), each call timed with perf_counter. Many short interleaved rounds mean a
noisy spell on a shared machine (this one's virtual CPUs slow down for seconds at a time) lands on every side, not
on one. A side's time is the median of all its calls; the ratio to a reference is ref median / crema median
(> 1: crema is faster). GFLOP/s is FLOPs / crema's median; "% peak" divides by this machine's FP32 peak measured by
`measure_peak` (independent FMA chains in registers on every thread: what the cores can do, not what any GEMM gets).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"
ROUND_S = 0.06  # seconds of one side's calls in one round (7 rounds: about 0.4 s a side)


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

    def median(self, side: str) -> float:
        return statistics.median(self.runs[side]) if self.runs.get(side) else math.nan

    def ratio(self, ref: str) -> float:
        return self.median(ref) / self.median("crema")

    def fastest_ref(self) -> str | None:
        refs = [r for r in self.case.refs if self.runs.get(r)]
        return min(refs, key=self.median) if refs else None

    def target_ratio(self) -> float | None:
        if self.case.target is None or self.error:
            return None
        who = self.case.target[0]
        ref = self.fastest_ref() if who == "fastest" else who
        return self.ratio(ref) if ref and self.runs.get(ref) else None

    def target_met(self) -> bool | None:
        got = self.target_ratio()
        return None if got is None else got >= self.case.target[1]


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


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- running -----------------------------------------------------------------------------------------------------


def run_case(case: Case, *, scale: float = 1.0, pause: float = 0.05) -> Result:
    """Check, then time (interleaved rounds). `scale` multiplies per_round (>= 1 call each)."""
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
    per = case.per_round or min(50, max(1, round(ROUND_S / max(_timed(case.ours), 1e-6))))
    per = max(1, round(per * scale))
    result.runs = {side: [] for side in sides}
    for _ in range(case.rounds):
        for side, fn in sides.items():
            fn()  # untimed: the first call after another framework ran pays for waking this one's threads
            for _ in range(per):
                result.runs[side].append(_timed(fn))
            time.sleep(pause)
    return result


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
        target = f" | target {want:.1f}x {who}: {'met' if got >= want else 'MISSED'}"
    gf = f"{gflops:7.1f}" if not math.isnan(gflops) else f"{'-':>7}"
    pc = f"{pct:5.1f}%" if not math.isnan(pct) else f"{'-':>6}"
    return f"{head} | {ms:10.3f} ms | {gf} GFLOP/s | {pc} peak | " + " | ".join(cols) + target


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
                **r.case.meta,
            }
        )
    return {"meta": meta, "results": rows}


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
            tgt = f"≥{want:.1f}x {who}: {'met' if got >= want else '**missed**'}"
        gfs = f"{gf:.1f}" if gf else ""
        rows.append(f"| {r.case.group} | {r.case.name} | {med * 1e3:.3f} | {gfs} | {pct} | " + " | ".join(ratios))
        rows[-1] += f" | {tgt} |"
    foot = (
        f"\n{meta.get('when', '')} on {meta.get('machine', '')}, {meta.get('threads')} threads for every framework; "
        f"FP32 peak measured {meta.get('peak_gflops', float('nan')):.1f} GFLOP/s. Ratios: reference median time / "
        "crema median time (> 1: crema is faster); every result checked against the references before timing.\n"
    )
    return head + "\n".join(rows) + "\n" + foot


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
