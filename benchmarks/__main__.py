"""crema's benchmarks in one command: every kernel and network on crema and on the reference frameworks, side by side.

    python -m benchmarks                          # everything (15-40 minutes on 2 cores); or: crema bench
    python -m benchmarks --only gemm nets         # some groups: gemm, layers, nets, efficientnet, zoo, train
    python -m benchmarks --filter caffenet        # cases whose name contains this text
    python -m benchmarks --quick                  # fewer timed runs (a smoke test, not for reporting)
    python -m benchmarks --no-calm                # keep the rounds a slow spell of the host touched (retaken by default)
    python -m benchmarks --only nets --busy       # also with another process keeping a core busy (every net line)
    python -m benchmarks --publish                # write benchmarks/results/ (bench.json, bench.md, bench.png)
    python -m benchmarks --readme                 # --publish, and the Markdown table into README.md between its markers

Every framework is pinned to --threads threads (environment variables set before NumPy, Numba, PyTorch, OpenCV
or ONNX Runtime load, and each framework's own setter). Every result is checked against the references before it
is timed; a wrong result prints MISMATCH instead of a time and the exit status is 1. JIT compile (or Numba cache
load) is the "first" column of the JSON, apart from the timings. Outputs: one fixed-width line per configuration on
stdout; raw runs as JSON (--json FILE), a Markdown table (--markdown FILE) and a PNG bar chart of the ratios to the
fastest reference (--chart FILE) only when asked, or all three into benchmarks/results/ with --publish (--readme also
embeds the table). Exit status: 0, or 1 on a mismatch, or 3 when --strict and a target is missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=["gemm", "layers", "nets", "efficientnet", "zoo", "train"],
        help="run these groups only",
    )
    p.add_argument("--filter", default=None, help="run the cases whose name contains this text")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every framework")
    p.add_argument("--quick", action="store_true", help="one round of one timed run per side (smoke test)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the number of timed runs")
    p.add_argument("--json", type=Path, help="write the raw runs here")
    p.add_argument("--markdown", type=Path, help="write the Markdown table here")
    p.add_argument("--chart", type=Path, help="write the PNG bar chart of the ratios here")
    p.add_argument(
        "--publish",
        action="store_true",
        help=f"write the published results ({RESULTS}/bench.json, bench.md, bench.png); not with --quick",
    )
    p.add_argument(
        "--readme", action="store_true", help="--publish, and embed the table in README.md between its markers"
    )
    p.add_argument(
        "--busy",
        type=int,
        nargs="?",
        const=1,
        default=0,
        metavar="N",
        help="also time every network line with N (default 1) other processes keeping cores busy, and crema on one "
        "thread with them (the busy-machine target)",
    )
    p.add_argument(
        "--no-calm",
        dest="calm",
        action="store_false",
        help="keep every round, also those a slow spell of the host touched (by default a round is taken again "
        "where an FMA loop on every thread ran under 85%% of the peak right before or after it)",
    )
    p.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    args = p.parse_args(argv)
    if args.readme:
        args.publish = True
    if args.publish and args.quick:
        p.error("--quick runs are a smoke test: they are not published (drop --publish/--readme or --quick)")
    if args.publish:
        args.json = args.json or RESULTS / "bench.json"
        args.markdown = args.markdown or RESULTS / "bench.md"
        args.chart = args.chart or RESULTS / "bench.png"
    return args


def pin_threads(n: int) -> dict[str, int]:
    """Environment first (read when each library loads), then each framework's own setter; returns what each says."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    import numba

    if n > numba.config.NUMBA_NUM_THREADS:
        raise SystemExit(f"--threads {n}: Numba has {numba.config.NUMBA_NUM_THREADS} threads at most here")
    from benchmarks.references import set_threads

    return set_threads(n)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    pinned = pin_threads(args.threads)

    import numpy as np

    from benchmarks import harness, subjects

    groups = args.only or list(subjects.GROUPS)
    peak = harness.measure_peak(args.threads)
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "cpu": _cpu_name(),
        "threads": args.threads,
        "pinned": pinned,
        "peak_gflops": peak / 1e9,
        "numpy": np.__version__,
        "versions": _versions(),
        "quick": args.quick,
        "calm": args.calm and not args.quick,
    }
    print(f"crema benchmarks: {meta['cpu']}, {args.threads} threads for every framework ({pinned})")
    print(f"measured FP32 peak: {peak / 1e9:.1f} GFLOP/s; versions: {meta['versions']}")
    results = []
    with subjects.temp_workdir() as tmp:
        t0 = time.perf_counter()
        cases = subjects.build(groups, args.threads, Path(tmp))
        if args.filter:
            cases = [c for c in cases if args.filter in c.name]
        print(f"{len(cases)} cases built in {time.perf_counter() - t0:.1f} s")
        refs = harness.ref_columns([harness.Result(c) for c in cases])
        calm = harness.Calm(args.threads, peak) if meta["calm"] else None
        for case in cases:
            if args.quick:
                case.rounds, case.per_round = 1, 1
            result = harness.run_case(case, scale=args.scale, calm=calm)
            results.append(result)
            print(harness.line(result, peak, refs), flush=True)
            if args.busy and case.group == "net":
                harness.run_busy(result, args.busy)
                print(harness.busy_line(result), flush=True)
    compile_s = sum(r.first_s for r in results if r.first_s == r.first_s)
    print(f"first calls (JIT compile or cache load, plus one run): {compile_s:.2f} s in all")
    table = harness.markdown(results, peak, meta)
    if args.json:
        harness.write_json(args.json, harness.to_json(results, meta))
        print(f"raw runs: {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
        print(f"table: {args.markdown}")
    if args.chart:
        harness.bar_chart(results, args.chart)
        print(f"chart: {args.chart}")
    if args.readme:
        if harness.update_readme(ROOT / "README.md", table):
            print("README.md: table updated")
        else:
            print(f"README.md: no {harness.README_BEGIN} ... {harness.README_END} markers; not updated")
    missed = [r for r in results if r.target_met() is False]
    for r in missed:
        who, want = r.case.target
        print(f"target missed: {r.case.name}: {r.target_ratio():.2f}x {who} (target {want:.1f}x)")
    busy_missed = [r for r in results if r.busy_target_met() is False]
    for r in busy_missed:
        print(f"busy-machine target missed: {r.case.name}: {harness.busy_line(r).strip()}")
    if any(r.error for r in results):
        return 1
    return 3 if ((missed or busy_missed) and args.strict) else 0


def _cpu_name() -> str:
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    out = {}
    for mod in ("numba", "torch", "cv2", "onnxruntime"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = "absent"
    return out


if __name__ == "__main__":
    sys.exit(main())
