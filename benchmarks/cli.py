"""`crema bench ARGS...`: runs `python -m benchmarks ARGS...` (see benchmarks/__main__.py) in a new process, so that
the thread counts it pins are in the environment before NumPy, Numba and the reference frameworks load."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(bench_args: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", "benchmarks", *bench_args], cwd=ROOT)


def cmd_bench(args: argparse.Namespace) -> int:
    return run_bench(args.bench_args)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `crema bench`."""
    p = sub.add_parser(
        "bench",
        help="benchmark every kernel and net against PyTorch, OpenCV DNN, ONNX Runtime, NumPy (python -m benchmarks)",
        add_help=False,
    )
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of python -m benchmarks (try --help)")
    p.set_defaults(func=cmd_bench)
