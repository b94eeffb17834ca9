"""Batch-1 latency: where a small forward's time goes besides the kernels' arithmetic.

    python -m benchmarks.bench_overhead                    # LeNet and EfficientNet-Lite0 at batch 1, 2 threads
    python -m benchmarks.bench_overhead --threads 1 --nets lenet

Measured in one process, medians of many calls:
- the whole `Net.forward` (input copied in, outputs copied out), the plan's steps alone (`Net._run`), and the sum of
  each step timed on its own: the difference between the first two is Net.forward's own work;
- `Net.forward` replaying the steps' task calls natively (net.replay, the default once a plan is steady) against the
  Python steps (``replay.ENABLED`` off; the two alternate), and the steps' Python work alone (every task driver a
  no-op);
- per step (LeNet): the step's wall time;
- inside the replayed forward (which times no step): its native task calls one at a time, in order, each with its
  counter restores (``kernels.program.Program.run_range``), summed per task, against the whole replayed programs;
- the two fixed costs every step pays: one Python call through Numba's dispatcher (a compiled function of 10 array
  arguments that does nothing: type checks and unboxing) and, for a parallel kernel, one fork-join of the threads (a
  compiled `prange` over the threads doing nothing); with the step count they bound the overhead of the plan;
- ONNX Runtime on the same LeNet (its graph built from crema's layers, as in ``python -m benchmarks``) for scale,
  where it is installed.
Nothing is written unless --json is given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _median_us(fn, calls: int) -> float:
    fn()
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


def fixed_costs(threads: int, calls: int = 20000) -> dict:
    """Microseconds of one dispatch of a do-nothing compiled function of 10 arrays, and of one do-nothing fork-join."""
    import numba
    from numba import njit, prange

    @njit(cache=False)
    def nothing(a, b, c, d, e, f, g, h, i, j):  # pragma: no cover - compiled
        return a.shape[0]

    @njit(parallel=True, cache=False)
    def fork_join(out):  # pragma: no cover - compiled
        for t in prange(out.shape[0]):
            out[t] += 1.0

    arrays = [np.zeros(4, np.float32) for _ in range(10)]
    out = np.zeros(threads, np.float64)
    numba.set_num_threads(threads)
    dispatch = _median_us(lambda: nothing(*arrays), calls)
    fork = _median_us(lambda: fork_join(out), calls) - dispatch
    return {"dispatch_us": dispatch, "fork_join_us": fork}


def net_overhead(name: str, threads: int, calls: int) -> dict:
    import numba

    from net import Net, replay

    numba.set_num_threads(threads)
    if name == "lenet":
        from benchmarks.subjects import randomize

        net = Net.load(ROOT / "models/lenet/deploy.prototxt")
        randomize(net, seed=0)
        x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    else:
        from net.zoo import efficientnet_lite0

        files = efficientnet_lite0(say=lambda _msg: None)
        net = Net.load(files.prototxt, files.weights)
        x = np.random.default_rng(0).uniform(-1.0, 1.0, (1, 3, 224, 224)).astype(np.float32)
    net.share_activations()  # as crema classify and serve run a net (net.arena)
    net.freeze()  # ... with its weights frozen (Net.freeze)
    for _ in range(replay.RECORD_AT + 2):  # the plan made, its launcher decided, its replay recorded
        net.forward(data=x)
    whole, python = _alternating_us(lambda on: _replay_on(on, lambda: net.forward(data=x)), calls)
    plan_only = _median_us(lambda: net._run(None, adapt=True, pool=True), calls)  # as Net.forward runs it
    rp = net._plan.replay
    native = sum(len(prog) for _, _, prog in rp.segments if prog is not None) if rp else 0
    python_work = _python_work_us(net, x, calls)
    steps = []
    for step, layer, bottom, top in net._plan.steps:
        call = step if step is not None else (lambda layer=layer, bottom=bottom, top=top: layer.forward(bottom, top))
        steps.append({"layer": layer.name, "type": layer.type, "us": _median_us(call, max(50, calls // 10))})
    ort = ort_us(net, x, threads, calls) if name == "lenet" else None
    ops = native_ops(net, max(20, calls // 5) if name == "lenet" else max(20, calls))
    return {
        "native_ops": ops,
        "net": name,
        "onnxruntime_us": ort,
        "threads": threads,
        "forward_us": whole,
        "forward_python_steps_us": python,
        "replayed_ops": native,
        "python_work_us": python_work,
        "plan_us": plan_only,
        "steps": steps,
        "steps_sum_us": sum(s["us"] for s in steps),
    }


def native_ops(net, rounds: int) -> dict | None:
    """The replayed plan's native ops one at a time, in order (each call with the counter restores before it,
    ``kernels.program.Program.run_range``), `rounds` times, against the whole programs run as a forward replays them:
    medians (us) per op summed by task, and in all; None where the plan has no replay. Where the time goes inside a
    replayed forward, which no Python step timing sees (net.replay)."""
    rp = net._plan.replay if net._plan is not None else None
    progs = [prog for _, _, prog in rp.segments if prog is not None] if rp else []
    if not progs:
        return None
    groups = []  # (program, first op, end, task name): a call with the restores before it
    for prog in progs:
        first = 0
        for k, name in enumerate(prog.names):
            if name != "restore":
                groups.append((prog, first, k + 1, name))
                first = k + 1
    times: list[list[float]] = [[] for _ in groups]
    whole = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for prog in progs:
            prog.run()
        whole.append(time.perf_counter() - t0)
        for i, (prog, first, end, _) in enumerate(groups):
            t0 = time.perf_counter()
            prog.run_range(first, end)
            times[i].append(time.perf_counter() - t0)
    # the ops alone skipped any Python step between two programs: one whole forward leaves every blob as it should be
    net.forward(data=net._blobs[net.inputs[0]].data.copy())
    by_task: dict[str, float] = {}
    for (_, _, _, name), ts in zip(groups, times):
        by_task[name] = by_task.get(name, 0.0) + statistics.median(ts) * 1e6
    return {
        "ops": len(groups),
        "whole_us": statistics.median(whole) * 1e6,
        "alone_sum_us": sum(by_task.values()),
        "by_task_us": dict(sorted(by_task.items(), key=lambda kv: -kv[1])),
    }


def _replay_on(on: bool, fn) -> None:
    from net import replay

    saved, replay.ENABLED = replay.ENABLED, on
    try:
        fn()
    finally:
        replay.ENABLED = saved


def _alternating_us(fn, calls: int) -> tuple[float, float]:
    """Medians (us) of fn(True) and fn(False), called alternately (the machine's speed drifts between blocks)."""
    times = {True: [], False: []}
    for i in range(calls):
        for on in (True, False) if i % 2 == 0 else (False, True):
            t0 = time.perf_counter()
            fn(on)
            times[on].append(time.perf_counter() - t0)
    return statistics.median(times[True]) * 1e6, statistics.median(times[False]) * 1e6


def _python_work_us(net, x: np.ndarray, calls: int) -> float:
    """A forward through the Python steps with every task driver a no-op: the steps' own Python work, the Numba
    dispatch excluded (the values computed are then meaningless; the net is run once more after)."""
    from kernels import tasks

    def nothing(*_args):
        return None

    saved = [(t, t.parallel, t.serial) for t in tasks.ALL]
    for t, _, _ in saved:
        t.parallel = t.serial = nothing
    try:
        got = _median_us(lambda: _replay_on(False, lambda: net.forward(data=x)), calls)
    finally:
        for t, par, ser in saved:
            t.parallel, t.serial = par, ser
    net.forward(data=x)
    return got


def ort_us(net, x: np.ndarray, threads: int, calls: int) -> float | None:
    """ONNX Runtime on the same net (built node by node from crema's layers, as ``python -m benchmarks``), or None."""
    try:
        from benchmarks.references import onnx_forward

        run = onnx_forward(net, threads)
    except ImportError:
        return None
    return _median_us(lambda: run(x), calls)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nets", nargs="+", default=["lenet", "efficientnet"], choices=["lenet", "efficientnet"])
    p.add_argument("--calls", type=int, default=2000, help="timed calls per measurement")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    costs = fixed_costs(args.threads)
    print(
        f"fixed costs, {args.threads} thread(s): a compiled call of 10 arrays {costs['dispatch_us']:.2f} us, "
        f"a fork-join {costs['fork_join_us']:.2f} us"
    )
    report = {"fixed": costs, "nets": []}
    for name in args.nets:
        got = net_overhead(name, args.threads, args.calls if name == "lenet" else max(20, args.calls // 50))
        report["nets"].append(got)
        n = len(got["steps"])
        print(
            f"{name} N=1, {args.threads} thread(s): Net.forward {got['forward_us']:.1f} us; its steps {got['plan_us']:.1f}"
            f" us ({n} steps; Net.forward's own work {got['forward_us'] - got['plan_us']:.1f} us); steps timed one by "
            f"one {got['steps_sum_us']:.1f} us; dispatch alone, at {costs['dispatch_us']:.2f} us a step: "
            f"{n * costs['dispatch_us']:.1f} us"
        )
        print(
            f"    replayed (net.replay, {got['replayed_ops']} native ops) {got['forward_us']:.1f} us against the Python"
            f" steps {got['forward_python_steps_us']:.1f} us (medians, alternating); the steps' Python work alone "
            f"(drivers no-ops) {got['python_work_us']:.1f} us"
        )
        ops = got["native_ops"]
        if ops is not None:
            print(
                f"    its {ops['ops']} native calls one at a time, in order (a ctypes call each, ~1 us): "
                f"{ops['alone_sum_us']:.1f} us in all against {ops['whole_us']:.1f} us for the replayed programs whole "
                "(medians); by task:"
            )
            for task, us in ops["by_task_us"].items():
                print(f"      {task:48s} {us:9.1f} us")
        if name == "lenet":
            for s in got["steps"]:
                print(f"    {s['layer']:12s} {s['type']:14s} {s['us']:8.2f} us")
            if got["onnxruntime_us"] is not None:
                print(f"    ONNX Runtime, the same LeNet: {got['onnxruntime_us']:.1f} us")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
