"""Startup and memory: a new process's first classification, and CaffeNet's peak memory.

    python -m benchmarks.bench_startup            # both
Startup: wall time of `crema classify` (LeNet, random weights) in a new process, first run (fills the Numba cache)
and warm cache (target < 3 s). Memory: VmHWM of a new process that runs CaffeNet forward at batch 10 twice (target
< 1.5 GB). Speed against the reference frameworks is `python -m benchmarks`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.subjects import randomize

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"lenet": ROOT / "models/lenet/deploy.prototxt", "caffenet": ROOT / "models/caffenet/deploy.prototxt"}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--publish", action="store_true", help="write them to benchmarks/results/startup.json")
    args = parser.parse_args(argv)
    if args.publish and not args.json:
        args.json = str(ROOT / "benchmarks/results/startup.json")
    with tempfile.TemporaryDirectory() as tmp:
        result = {"startup": bench_startup(Path(tmp)), "memory": bench_memory()}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"raw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
