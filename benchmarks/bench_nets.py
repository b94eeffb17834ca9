"""Whole-network forward speed: crema vs PyTorch CPU vs OpenCV DNN, same weights, same run.

    python -m benchmarks.bench_nets                      # LeNet 1/64/10000, CaffeNet 1/10
    python -m benchmarks.bench_nets --nets lenet --batches 64 --iters 20
    python -m benchmarks.bench_nets --startup --memory   # also: new-process latency, peak RSS

Weights are random (He-scaled, fixed seed), written by crema's encoder and read by OpenCV from the
same caffemodel; PyTorch gets the same arrays. Each configuration is checked against both
references before it is timed (softmax within 1e-5): a mismatch exits non-zero without a time.
Runs are interleaved (crema, torch, opencv, crema, ...) and every framework is pinned to the same
thread count. JIT compile time (first call) is reported separately. Raw runs go to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.references import opencv_forward, set_threads, torch_forward

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"lenet": ROOT / "models/lenet/deploy.prototxt", "caffenet": ROOT / "models/caffenet/deploy.prototxt"}
DEFAULT_BATCHES = {"lenet": [1, 64, 10000], "caffenet": [1, 10]}


def _randomize(net, seed: int) -> None:
    """He-scaled random weights; the last layer is scaled down so the logits span about +-30, as a
    trained CaffeNet's do (He scaling all the way gives +-300, where float32 rounding alone moves a
    softmax output by 1e-5 in every framework)."""
    rng = np.random.default_rng(seed)
    names = list(net.params)
    for name in names:
        w, *rest = net.params[name]
        scale = 0.1 if name == names[-1] else 1.0
        w[...] = rng.normal(0.0, scale * np.sqrt(2.0 / w[0].size), size=w.shape)
        for b in rest:
            b[...] = rng.normal(0.0, 0.1, size=b.shape)


def _input(name: str, batch: int, rng: np.random.Generator) -> np.ndarray:
    if name == "lenet":
        return rng.random((batch, 1, 28, 28), dtype=np.float32)
    return (rng.random((batch, 3, 227, 227), dtype=np.float32) * 255 - 120).astype(np.float32)


def _time_interleaved(fns: dict[str, callable], iters: int, budget_s: float) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for i in range(iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - start > budget_s:
            break
    return times


def bench_net(name: str, batches: list[int], iters: int, budget_s: float, workdir: Path) -> list[dict]:
    from net import Net

    net = Net.load(MODELS[name])
    _randomize(net, seed=0)
    weights = workdir / f"{name}.caffemodel"
    net.save(weights)
    refs = {"torch": torch_forward(net), "opencv": opencv_forward(str(MODELS[name]), str(weights))}
    rng = np.random.default_rng(1)
    rows = []
    for batch in batches:
        x = _input(name, batch, rng)
        t0 = time.perf_counter()
        ours = net.forward(data=x)["prob"]
        first = time.perf_counter() - t0
        for ref_name, ref in refs.items():
            err = float(np.max(np.abs(ours - ref(x))))
            if not err <= 1e-5:
                print(f"MISMATCH {name} batch {batch}: crema vs {ref_name} max |dprob| = {err:.3g} > 1e-5")
                sys.exit(1)
        fns = {"crema": lambda x=x: net.forward(data=x)} | {k: (lambda f=f, x=x: f(x)) for k, f in refs.items()}
        n = max(3, min(iters, int(200 / batch) + 3))
        times = _time_interleaved(fns, n, budget_s)
        med = {k: float(np.median(v)) for k, v in times.items()}
        best_ref = min(med[k] for k in refs)
        row = {
            "net": name,
            "batch": batch,
            "first_call_s": first,
            "median_s": med,
            "min_s": {k: float(np.min(v)) for k, v in times.items()},
            "runs": times,
            "ratio_vs_fastest": best_ref / med["crema"],
        }
        rows.append(row)
        ratios = "  ".join(f"{med[k] / med['crema']:.2f}x {k}" for k in refs)
        print(
            f"{name:<8} fwd cpu N={batch:<6}| {1000 * med['crema']:9.2f} ms (min {1000 * row['min_s']['crema']:8.2f})"
            f" | {batch / med['crema']:9.1f} img/s | torch {batch / med['torch']:9.1f} img/s"
            f" | opencv {batch / med['opencv']:9.1f} img/s | {ratios} | first call {first:.2f} s"
        )
    return rows


def bench_startup(workdir: Path) -> dict:
    """Wall time of `crema classify` in a new process, cold (first, fills the Numba cache) and warm."""
    from PIL import Image

    from net import Net

    net = Net.load(MODELS["lenet"])
    _randomize(net, seed=0)
    weights = workdir / "lenet.caffemodel"
    net.save(weights)
    image = workdir / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(image)
    cmd = [sys.executable, "-m", "net.cli", "classify", str(MODELS["lenet"]), str(weights), str(image)]
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        walls.append(time.perf_counter() - t0)
    print(
        f"startup: new process -> first classification: first run {walls[0]:.2f} s, "
        f"warm cache {min(walls[1:]):.2f} s (target < 3 s)"
    )
    return {"first_s": walls[0], "warm_s": min(walls[1:])}


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a child started by this (big)
# benchmark process would report the parent's peak. VmHWM belongs to the new address space.
_MEMORY_CHILD = """
import numpy as np, sys
from net import Net
net = Net.load(sys.argv[1])
x = np.random.default_rng(0).random((10, 3, 227, 227), dtype=np.float32)
net.forward(data=x)
net.forward(data=x)
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0])
"""


def bench_memory() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(MODELS["caffenet"])],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    peak_mb = int(out.stdout.split()[-1]) / 1024
    print(f"memory: CaffeNet forward batch 10 peak RSS {peak_mb:.0f} MB (target < 1536 MB)")
    return {"caffenet_b10_peak_rss_mb": peak_mb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, help="override the batch sizes")
    parser.add_argument("--iters", type=int, default=20, help="max timed runs per framework")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per configuration, at most")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--startup", action="store_true", help="also time a new process's first classification")
    parser.add_argument("--memory", action="store_true", help="also measure CaffeNet batch-10 peak RSS")
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/nets.json"))
    args = parser.parse_args(argv)

    pinned = set_threads(args.threads)
    print(f"threads: {pinned}")
    result: dict = {"threads": pinned, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.nets:
            result["rows"] += bench_net(name, args.batches or DEFAULT_BATCHES[name], args.iters, args.budget, Path(tmp))
        if args.startup:
            result["startup"] = bench_startup(Path(tmp))
    if args.memory:
        result["memory"] = bench_memory()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"raw runs: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
