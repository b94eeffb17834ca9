"""Benchmark crema's GEMM, convolution and inner-product kernels, forward and backward, against NumPy's BLAS and
PyTorch CPU.

    python -m benchmarks.bench_kernels --threads 2 [--warmup 2] [--iters 10] [--only gemm|conv|conv-bwd|fc]
                                       [--json benchmarks/results/kernels.json]

Every kernel is first checked against its plain reference (exit status 1 on a mismatch); JIT compile time is
reported on its own line; then one fixed-width line per configuration, reference on the same line. Ours and the
reference are timed in alternating rounds with pauses between, so neither's spinning worker threads slow the other
and a noisy spell on a shared machine does not land on one side only.

Backward lines time what a training step runs: ``bwd`` = dx, dW and db; ``bwd(w)`` = dW and db only (a layer on
the data, like LeNet's conv1). Torch's reference is ``aten.convolution_backward`` with the same output mask (what
autograd calls) and autograd through ``F.linear`` for the inner products. GFLOP/s counts 2*M*N*K per GEMM (the
forward's, plus one more for each of dW and dx).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    p.add_argument("--iters", type=int, default=10, help="timed runs per configuration")
    p.add_argument("--threads", type=int, default=2, help="threads for numba, BLAS and torch")
    p.add_argument("--only", choices=["gemm", "conv", "conv-bwd", "fc"], default=None, help="run one group only")
    p.add_argument(
        "--json", default=None, help="also write the raw results there (e.g. benchmarks/results/kernels.json)"
    )
    return p.parse_args()


ARGS = _parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np

from kernels.conv import conv2d_backward, conv2d_backward_ref, conv2d_forward, conv2d_forward_ref
from kernels.fc import inner_product_backward, inner_product_backward_ref, inner_product_forward
from kernels.gemm import gemm, gemm_ref

try:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(ARGS.threads)
except ImportError:  # torch is optional: lines then show no reference ratio
    torch = None

# name, C, H, M (output channels), k, stride, pad, group
CAFFENET = [
    ("conv1", 3, 227, 96, 11, 4, 0, 1),
    ("conv2", 96, 27, 256, 5, 1, 2, 2),
    ("conv3", 256, 13, 384, 3, 1, 1, 1),
    ("conv4", 384, 13, 384, 3, 1, 1, 2),
    ("conv5", 384, 13, 256, 3, 1, 1, 2),
]
LENET = [("lenet1", 1, 28, 20, 5, 1, 0, 1), ("lenet2", 20, 12, 50, 5, 1, 0, 1)]
# name, batch, K inputs, N outputs
FC = [
    ("lenet ip1", 64, 800, 500),
    ("lenet ip2", 64, 500, 10),
    ("fc6", 10, 9216, 4096),
    ("fc7", 10, 4096, 4096),
    ("fc8", 10, 4096, 1000),
]
RESULTS: list[dict] = []


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


def _report(label: str, ours: tuple, ref: tuple | None, flops: float, ref_name: str, iters: int | None = None) -> None:
    """Time ours against ref and print one line: label | mean (min) | GFLOP/s | ref_min / our_min."""
    mean, best, ref_best = _versus(ours, ref, ARGS.warmup, iters or ARGS.iters)
    ratio = f"{ref_best / best:5.2f}x {ref_name}" if ref is not None else f"  n/a {ref_name}"
    print(f"{label:<46} | {mean * 1e3:8.2f} ms (min {best * 1e3:8.2f}) | {flops / best / 1e9:7.1f} GFLOP/s | {ratio}")
    RESULTS.append({"label": label, "mean_ms": mean * 1e3, "min_ms": best * 1e3, "ref_min_ms": ref_best * 1e3})


def _check(name: str, got: np.ndarray, want: np.ndarray, rtol: float = 1e-4) -> None:
    err = float(np.abs(got.astype(np.float64) - want).max())
    scale = float(np.abs(want).max()) or 1.0
    status = "ok" if err <= rtol * scale else "MISMATCH"
    print(f"check {name:<40} max abs err {err:.3e} (scale {scale:.3e}, tol {rtol * scale:.3e}) {status}")
    if status != "ok":
        sys.exit(1)


def _conv_inputs(rng, n, c, h, m, k, s, p, g):
    x = rng.standard_normal((n, c, h, h), dtype=np.float32)
    w = rng.standard_normal((m, c // g, k, k), dtype=np.float32) * 0.1
    b = rng.standard_normal(m, dtype=np.float32)
    return x, w, b, {"stride": (s, s), "pad": (p, p), "group": g}


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
    conv2d_backward(rng.standard_normal((2, 6, 9, 9), dtype=np.float32), x, w, pad=1, group=2)
    t3 = time.perf_counter()
    inner_product_backward(np.ones((40, 6), np.float32), np.ones((40, 10), np.float32), np.ones((6, 10), np.float32))
    inner_product_backward(np.ones((4, 6), np.float32), np.ones((4, 10), np.float32), np.ones((6, 10), np.float32))
    t4 = time.perf_counter()
    print(
        f"jit compile (or cache load): gemm {t1 - t0:.2f} s, conv fwd {t2 - t1:.2f} s, conv bwd {t3 - t2:.2f} s, "
        f"fc bwd {t4 - t3:.2f} s"
    )
    for ta in (False, True):
        for tb in (False, True):
            _check(
                f"gemm 67x45x83 ta={ta:d} tb={tb:d}",
                gemm(a.T.copy() if ta else a, b.T.copy() if tb else b, trans_a=ta, trans_b=tb),
                gemm_ref(a, b),
            )
    for name, c, h, m, k, s, p, g in CAFFENET[:2] + LENET:
        for n in (1, 3):
            x, w, bias, kw = _conv_inputs(rng, n, c, h, m, k, s, p, g)
            _check(f"{name} fwd N={n}", conv2d_forward(x, w, bias, **kw), conv2d_forward_ref(x, w, bias, **kw))
            dy = rng.standard_normal(conv2d_forward(x, w, bias, **kw).shape, dtype=np.float32)
            got, want = conv2d_backward(dy, x, w, **kw), conv2d_backward_ref(dy, x, w, **kw)
            for part, gt, wt in zip(("dx", "dw", "db"), got, want):
                _check(f"{name} bwd {part} N={n}", gt, wt)
    for name, n, k, nout in FC[:2] + [("fc small", 10, 300, 70)]:
        x = rng.standard_normal((n, k), dtype=np.float32)
        w = rng.standard_normal((nout, k), dtype=np.float32)
        dy = rng.standard_normal((n, nout), dtype=np.float32)
        for part, gt, wt in zip(
            ("dx", "dw", "db"), inner_product_backward(dy, x, w), inner_product_backward_ref(dy, x, w)
        ):
            _check(f"{name} bwd {part}", gt, wt)


def bench_gemm(rng: np.random.Generator) -> None:
    for n in (256, 1024, 2048):
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        out = np.empty((n, n), np.float32)
        iters = max(3, ARGS.iters // (4 if n == 2048 else 1))
        ours, ref = (gemm, (a, b), {"out": out}), (np.matmul, (a, b), {"out": out})
        _report(f"gemm cpu M=N=K={n}", ours, ref, 2.0 * n**3, "numpy BLAS", iters)


def _conv_configs() -> list[tuple]:
    configs = [(name, n, *rest) for n in (1, 10) for name, *rest in CAFFENET]
    return configs + [(name, 64, *rest) for name, *rest in LENET]


def bench_conv(rng: np.random.Generator) -> None:
    for name, n, c, h, m, k, s, p, g in _conv_configs():
        x, w, b, kw = _conv_inputs(rng, n, c, h, m, k, s, p, g)
        y = conv2d_forward(x, w, b, **kw)
        flops = 2.0 * y.size * (c // g) * k * k
        ref = None
        if torch is not None:
            ref = (
                torch.inference_mode()(F.conv2d),
                (torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)),
                {"stride": s, "padding": p, "groups": g},
            )
        _report(
            f"{name} fwd cpu N={n} C={c} H={h} K={m} k={k} g={g}",
            (conv2d_forward, (x, w, b), {**kw, "out": y}),
            ref,
            flops,
            "torch",
        )


def bench_conv_backward(rng: np.random.Generator) -> None:
    configs = [cfg for cfg in _conv_configs() if cfg[1] != 1] + [cfg for cfg in _conv_configs() if cfg[1] == 1]
    for name, n, c, h, m, k, s, p, g in configs:
        x, w, b, kw = _conv_inputs(rng, n, c, h, m, k, s, p, g)
        dy = rng.standard_normal(conv2d_forward(x, w, b, **kw).shape, dtype=np.float32)
        need_dx = c > 3  # conv1 of both nets reads the data layer: no input gradient in training
        dx = np.empty_like(x) if need_dx else None
        dw, db = np.zeros_like(w), np.zeros_like(b)
        ours = (conv2d_backward, (dy, x, w), {**kw, "dx": dx, "dw": dw, "db": db, "need_dx": need_dx})
        flops = 2.0 * dy.size * (c // g) * k * k * (2 if need_dx else 1)
        ref = None
        if torch is not None:
            args = (
                torch.from_numpy(dy),
                torch.from_numpy(x),
                torch.from_numpy(w),
                [m],
                [s, s],
                [p, p],
                [1, 1],
                False,
                [0, 0],
                g,
                [need_dx, True, True],
            )
            ref = (torch.ops.aten.convolution_backward, args, {})
        what = "bwd" if need_dx else "bwd(w)"
        _report(f"{name} {what} cpu N={n} C={c} H={h} K={m} k={k} g={g}", ours, ref, flops, "torch")


def bench_fc(rng: np.random.Generator) -> None:
    for name, n, k, nout in FC:
        x = rng.standard_normal((n, k), dtype=np.float32)
        w = rng.standard_normal((nout, k), dtype=np.float32) * 0.01
        b = rng.standard_normal(nout, dtype=np.float32)
        dy = rng.standard_normal((n, nout), dtype=np.float32)
        y = inner_product_forward(x, w, b)
        flops = 2.0 * n * k * nout
        fwd_ref = bwd_ref = None
        if torch is not None:
            tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
            fwd_ref = (torch.inference_mode()(F.linear), (tx.detach(), tw.detach(), tb.detach()), {})
            bwd_ref = (
                torch.autograd.grad,
                (F.linear(tx, tw, tb), [tx, tw, tb], torch.from_numpy(dy)),
                {"retain_graph": True},
            )
        shape = f"M={n} K={k} N={nout}"
        _report(f"{name} fwd cpu {shape}", (inner_product_forward, (x, w, b), {"out": y}), fwd_ref, flops, "torch")
        dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
        ours = (inner_product_backward, (dy, x, w), {"dx": dx, "dw": dw, "db": db})
        _report(f"{name} bwd cpu {shape}", ours, bwd_ref, 2 * flops, "torch")


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"threads={ARGS.threads} torch={getattr(torch, '__version__', 'absent')} numpy={np.__version__}")
    check_all(rng)
    groups = {"gemm": bench_gemm, "conv": bench_conv, "conv-bwd": bench_conv_backward, "fc": bench_fc}
    for key, fn in groups.items():
        if ARGS.only in (None, key):
            fn(rng)
    if ARGS.json:
        Path(ARGS.json).parent.mkdir(parents=True, exist_ok=True)
        meta = {"threads": ARGS.threads, "torch": getattr(torch, "__version__", None), "iters": ARGS.iters}
        Path(ARGS.json).write_text(json.dumps({"meta": meta, "results": RESULTS}, indent=1))
        print(f"raw results: {ARGS.json}")


if __name__ == "__main__":
    main()
