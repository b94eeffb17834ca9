"""Startup and memory: a new process's first classification, cold and warm starts of `crema serve` and `crema train`,
and CaffeNet's peak memory.

    python -m benchmarks.bench_startup                        # everything
    python -m benchmarks.bench_startup --only serve,train     # classify, serve, train, memory
    python -m benchmarks.bench_startup --only serve --profile # + where a cold start's compile time goes
Classify: wall time of `crema classify` (LeNet, random weights) in a new process, first run (fills the Numba cache)
and warm cache (target < 3 s). Serve: `crema serve` (EfficientNet-Lite0, its Caffe files converted beforehand) from
the process start to the first answer of GET /api/health (the model is warmed up before the server answers), with an
empty NUMBA_CACHE_DIR (cold: a new machine; target < 10 s) and again with the cache it filled (warm). Train: `crema
train` of the shipped LeNet solver (examples/mnist/lenet_solver.prototxt; `crema data mnist` first) from the process
start to its first "Iteration 0, loss" line (after the test pass Caffe runs before the first iteration), cold (target
< 15 s) and warm; the process is stopped there. Each start's compile time is the one `crema` prints ("compiled N
kernels in S s", net.warm). --profile: one more cold start of each, serial and in one process, with a listener on
Numba's compile events: seconds per compiled function, self (its own) and total (with the callees it compiled).
Memory: VmHWM of a new process that runs CaffeNet forward at batch 10 twice (target < 1.5 GB). Nothing is written
under benchmarks/results/ unless asked (--json, --publish). Speed against the reference frameworks is
`python -m benchmarks`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.subjects import randomize

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"lenet": ROOT / "models/lenet/deploy.prototxt", "caffenet": ROOT / "models/caffenet/deploy.prototxt"}
SOLVER = ROOT / "examples/mnist/lenet_solver.prototxt"
PARTS = ("classify", "serve", "train", "memory")
SERVE_TARGET_S, TRAIN_TARGET_S = 10.0, 15.0


def bench_startup(workdir: Path) -> dict:
    """Wall time of `crema classify` in a new process, cold (first, fills the Numba cache) and warm."""
    from PIL import Image

    from net import Net

    net = Net.load(MODELS["lenet"])
    randomize(net, seed=0)
    weights = workdir / "lenet.caffemodel"
    net.save(weights)
    image = workdir / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(image)
    cmd = [sys.executable, "-m", "crema", "classify", str(MODELS["lenet"]), str(weights), str(image)]
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


# -- cold and warm starts of `crema serve` and `crema train` ------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _compile_s(output: str) -> float:
    """The seconds `crema` printed for compiling (net.warm's "compiled N kernels in S s"), 0 when it compiled none."""
    found = re.findall(r"compiled \d+ kernels in ([0-9.]+) s", output)
    return float(found[-1]) if found else 0.0


def _start(cmd: list[str], cache: Path, log: Path) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, t0


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_start(cache: Path, log: Path, timeout: float = 600.0) -> dict:
    """Seconds from starting `crema serve` (the default model) to its first /api/health answer, and its compile time."""
    port = _free_port()
    cmd = [sys.executable, "-m", "crema", "serve", "--port", str(port), "--no-web", "--no-personal-gallery"]
    proc, t0 = _start(cmd, cache, log)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"crema serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"crema serve not healthy after {timeout:.0f} s: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        healthy = time.perf_counter() - t0
    finally:
        _stop(proc)
    return {"healthy_s": healthy, "compile_s": _compile_s(log.read_text())}


def train_start(cache: Path, log: Path, workdir: Path, timeout: float = 600.0) -> dict:
    """Seconds from starting `crema train` of the LeNet solver to its first "Iteration 0, loss" line."""
    cmd = [sys.executable, "-m", "crema", "train", "--solver", str(SOLVER), "--iterations", "1", "--no-progress",
           "--prefix", str(workdir / "lenet")]  # fmt: skip
    proc, t0 = _start(cmd, cache, log)
    try:
        while "Iteration 0, loss" not in log.read_text():
            if proc.poll() is not None:
                raise RuntimeError(f"crema train exited with {proc.returncode}: {log.read_text()[-2000:]}")
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"crema train: no first iteration after {timeout:.0f} s")
            time.sleep(0.05)
        first = time.perf_counter() - t0
    finally:
        _stop(proc)
    return {"first_iteration_s": first, "compile_s": _compile_s(log.read_text())}


def _line(what: str, cold: float, cold_compile: float, warm: float, target: float) -> str:
    met = "met" if cold < target else "not met"
    return (
        f"cold start: {what:<46} | cold {cold:6.1f} s (compiling {cold_compile:5.1f} s) | warm {warm:5.1f} s | "
        f"target cold < {target:.0f} s: {met}"
    )


def bench_serve(workdir: Path) -> dict:
    from net.zoo import resolve

    resolve("efficientnet-lite0", say=print)  # the Caffe files converted first: not part of the start
    cache = workdir / "numba-serve"
    cold = serve_start(cache, workdir / "serve-cold.log")
    warm = serve_start(cache, workdir / "serve-warm.log")
    print(_line("crema serve efficientnet-lite0 -> healthy", cold["healthy_s"], cold["compile_s"], warm["healthy_s"],
                SERVE_TARGET_S))  # fmt: skip
    return {"cold": cold, "warm": warm, "target_s": SERVE_TARGET_S}


def bench_train(workdir: Path) -> dict | None:
    from net.datasets import data_dir

    if not any((data_dir() / "mnist").glob("train-images-idx3-ubyte*")):
        print(f"cold start: crema train skipped: no MNIST training set in {data_dir() / 'mnist'} (`crema data mnist`)")
        return None
    cache = workdir / "numba-train"
    cold = train_start(cache, workdir / "train-cold.log", workdir)
    warm = train_start(cache, workdir / "train-warm.log", workdir)
    print(_line("crema train lenet_solver -> first iteration", cold["first_iteration_s"], cold["compile_s"],
                warm["first_iteration_s"], TRAIN_TARGET_S))  # fmt: skip
    return {"cold": cold, "warm": warm, "target_s": TRAIN_TARGET_S}


# A cold start done the old way (one process, kernels compiled on first call) with a listener on Numba's compile
# events: (function, self seconds, total seconds) per compile. Self: total less the callees compiled inside it.
_PROFILE_CHILD = r"""
import json, sys, time
from numba.core import event
rows, stack = [], []

class Listener(event.Listener):
    def on_start(self, ev):
        stack.append([time.perf_counter(), 0.0])

    def on_end(self, ev):
        t0, inner = stack.pop()
        total = time.perf_counter() - t0
        if stack:
            stack[-1][1] += total
        f = ev.data["dispatcher"].py_func
        rows.append((f"{f.__module__}.{f.__qualname__}", total - inner, total, not stack))

event.register("numba:compile", Listener())
import numpy as np
if sys.argv[1] == "serve":
    from net.zoo import resolve
    from server.model import Model
    files = resolve("efficientnet-lite0")
    model = Model.load(files.prototxt, files.weights, files.labels, preset=files.preset)
    model.infer(np.zeros((1, *model.input_shape), np.float32))
else:
    from net.prototxt_loader import load_solver_prototxt
    from net.solver import Solver
    solver = Solver(load_solver_prototxt(sys.argv[2]), source=sys.argv[2], log=lambda _: None, progress=False)
    solver.step(1)  # the test pass first (test_initialization), then the iteration
print(json.dumps(rows))
"""


def bench_profile(what: str, workdir: Path, top: int = 12) -> list:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(workdir / f"numba-profile-{what}")}
    out = subprocess.run([sys.executable, "-c", _PROFILE_CHILD, what, str(SOLVER)], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)  # fmt: skip
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    by: dict[str, list] = {}
    for name, self_s, total_s, top_level in rows:
        entry = by.setdefault(name, [0.0, 0.0, 0, top_level])
        entry[0] += self_s
        entry[1] += total_s
        entry[2] += 1
    whole = sum(t for _, _, t, top_level in rows if top_level)
    print(
        f"compile profile, cold {what} in one process: {len(rows)} compiles, {whole:.1f} s (the top-level ones' total)"
    )
    for name, (self_s, total_s, n, top_level) in sorted(by.items(), key=lambda kv: -kv[1][0])[:top]:
        mark = "called from Python" if top_level else "compiled as a callee"
        print(f"  {self_s:6.2f} s self {total_s:6.2f} s total x{n:<2d} {name}  ({mark})")
    return [{"name": k, "self_s": v[0], "total_s": v[1], "compiles": v[2]} for k, v in by.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)} (default all)")
    parser.add_argument("--profile", action="store_true", help="also the per-function compile profile of a cold "
                        "serve / train (whichever --only names)")  # fmt: skip
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--publish", action="store_true", help="write them to benchmarks/results/startup.json")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    if args.publish and not args.json:
        args.json = str(ROOT / "benchmarks/results/startup.json")
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "classify" in parts:
            result["startup"] = bench_startup(work)
        if "serve" in parts:
            result["serve"] = bench_serve(work)
        if "train" in parts:
            result["train"] = bench_train(work)
        if args.profile:
            for what in ("serve", "train"):
                if what in parts:
                    result[f"profile_{what}"] = bench_profile(what, work)
        if "memory" in parts:
            result["memory"] = bench_memory()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"raw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
