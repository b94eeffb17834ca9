"""Benchmark crema's GEMM and convolution kernels against NumPy's BLAS and PyTorch CPU.

    python -m benchmarks.bench_kernels --threads 2 [--warmup 2] [--iters 10] [--only gemm|conv]

Every kernel is first checked against its plain reference (exit status 1 on a mismatch); JIT compile time is
reported on its own line; then one fixed-width line per configuration, reference on the same line. Ours and the
reference are timed in alternating rounds with pauses between, so neither's spinning worker threads slow the other
and a noisy spell on a shared machine does not land on one side only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    p.add_argument("--iters", type=int, default=10, help="timed runs per configuration")
    p.add_argument("--threads", type=int, default=2, help="threads for numba, BLAS and torch")
    p.add_argument("--only", choices=["gemm", "conv"], default=None, help="run one group only")
    return p.parse_args()


ARGS = _parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np

from kernels.conv import conv2d_forward, conv2d_forward_ref
from kernels.gemm import gemm, gemm_ref

try:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(ARGS.threads)
except ImportError:  # torch is optional: lines then show no reference ratio
    torch = None

# name, N, C, H, M (output channels), k, stride, pad, group
CAFFENET = [
    ("conv1", 3, 227, 96, 11, 4, 0, 1),
    ("conv2", 96, 27, 256, 5, 1, 2, 2),
    ("conv3", 256, 13, 384, 3, 1, 1, 1),
    ("conv4", 384, 13, 384, 3, 1, 1, 2),
    ("conv5", 384, 13, 256, 3, 1, 1, 2),
]
LENET = [("lenet1", 1, 28, 20, 5, 1, 0, 1), ("lenet2", 20, 12, 50, 5, 1, 0, 1)]


def _time(fn, args: tuple, kwargs: dict, warmup: int, iters: int) -> tuple[float, float]:
    """(mean, min) seconds of fn(*args, **kwargs) over iters runs after warmup runs."""
    for _ in range(warmup):
        fn(*args, **kwargs)
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn(*args, **kwargs)
        ts.append(time.perf_counter() - t)
    return float(np.mean(ts)), float(np.min(ts))


def _versus(ours: tuple, ref: tuple | None, warmup: int, iters: int, rounds: int = 3) -> tuple[float, float, float]:
    """(mean, min) seconds of ours and min seconds of ref, each (fn, args, kwargs). They run in alternating rounds
    (a pause between) so a noisy spell on a shared machine hits both sides rather than one."""
    per = max(1, iters // rounds)
    means, mins, refs = [], [], []
    for _ in range(rounds):
        mean, best = _time(*ours, warmup, per)
        means.append(mean)
        mins.append(best)
        time.sleep(0.1)
        if ref is not None:
            refs.append(_time(*ref, warmup, per)[1])
            time.sleep(0.1)
    return float(np.mean(means)), min(mins), min(refs) if refs else float("nan")


def _line(label: str, mean: float, best: float, flops: float, ratio: str) -> str:
    return f"{label:<44} | {mean * 1e3:8.2f} ms (min {best * 1e3:8.2f}) | {flops / best / 1e9:7.1f} GFLOP/s | {ratio}"


def _check(name: str, got: np.ndarray, want: np.ndarray, rtol: float = 1e-4) -> None:
    err = float(np.abs(got.astype(np.float64) - want).max())
    scale = float(np.abs(want).max()) or 1.0
    status = "ok" if err <= rtol * scale else "MISMATCH"
    print(f"check {name:<38} max abs err {err:.3e} (scale {scale:.3e}, tol {rtol * scale:.3e}) {status}")
    if status != "ok":
        sys.exit(1)


def check_all(rng: np.random.Generator) -> None:
    """Compare every kernel path with its reference before timing; compile time is the first call's."""
    t0 = time.perf_counter()
    a = rng.standard_normal((67, 45), dtype=np.float32)
    b = rng.standard_normal((45, 83), dtype=np.float32)
    gemm(a, b)
    t1 = time.perf_counter()
    x = rng.standard_normal((2, 4, 9, 9), dtype=np.float32)
    w = rng.standard_normal((6, 2, 3, 3), dtype=np.float32)
    conv2d_forward(x, w, None, pad=(1, 1), group=2)
    conv2d_forward(x[:1], w, None, pad=(1, 1), group=2)
    t2 = time.perf_counter()
    print(f"jit compile (or cache load): gemm {t1 - t0:.2f} s, conv {t2 - t1:.2f} s")
    for ta in (False, True):
        for tb in (False, True):
            _check(
                f"gemm 67x45x83 ta={ta:d} tb={tb:d}",
                gemm(a.T.copy() if ta else a, b.T.copy() if tb else b, trans_a=ta, trans_b=tb),
                gemm_ref(a, b),
            )
    for name, c, h, m, k, s, p, g in CAFFENET[:2] + LENET:
        for n in (1, 3):
            x = rng.standard_normal((n, c, h, h), dtype=np.float32)
            w = rng.standard_normal((m, c // g, k, k), dtype=np.float32)
            bias = rng.standard_normal(m, dtype=np.float32)
            kw = {"stride": (s, s), "pad": (p, p), "group": g}
            _check(f"{name} N={n}", conv2d_forward(x, w, bias, **kw), conv2d_forward_ref(x, w, bias, **kw))


def bench_gemm(rng: np.random.Generator) -> None:
    for n in (256, 1024, 2048):
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        out = np.empty((n, n), np.float32)
        iters = max(3, ARGS.iters // (4 if n == 2048 else 1))
        mean, best, ref = _versus((gemm, (a, b), {"out": out}), (np.matmul, (a, b), {"out": out}), ARGS.warmup, iters)
        print(_line(f"gemm cpu M=N=K={n}", mean, best, 2.0 * n**3, f"{ref / best:5.2f}x numpy BLAS"))


def bench_conv(rng: np.random.Generator) -> None:
    configs = [(name, n, *rest) for n in (1, 10) for name, *rest in CAFFENET]
    configs += [(name, n, *rest) for n in (64,) for name, *rest in LENET]
    for name, n, c, h, m, k, s, p, g in configs:
        x = rng.standard_normal((n, c, h, h), dtype=np.float32)
        w = rng.standard_normal((m, c // g, k, k), dtype=np.float32) * 0.1
        b = rng.standard_normal(m, dtype=np.float32)
        kw = {"stride": (s, s), "pad": (p, p), "group": g}
        y = conv2d_forward(x, w, b, **kw)
        flops = 2.0 * y.size * (c // g) * k * k
        ours = (conv2d_forward, (x, w, b), {**kw, "out": y})
        ratio = "  n/a torch"
        if torch is None:
            mean, best, _ = _versus(ours, None, ARGS.warmup, ARGS.iters)
        else:
            tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
            with torch.inference_mode():
                ref = (F.conv2d, (tx, tw, tb), {"stride": s, "padding": p, "groups": g})
                mean, best, ref_best = _versus(ours, ref, ARGS.warmup, ARGS.iters)
            ratio = f"{ref_best / best:5.2f}x torch"
        label = f"{name} fwd cpu N={n} C={c} H={h} K={m} k={k} g={g}"
        print(_line(label, mean, best, flops, ratio))


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"threads={ARGS.threads} torch={getattr(torch, '__version__', 'absent')} numpy={np.__version__}")
    check_all(rng)
    if ARGS.only in (None, "gemm"):
        bench_gemm(rng)
    if ARGS.only in (None, "conv"):
        bench_conv(rng)


if __name__ == "__main__":
    main()
