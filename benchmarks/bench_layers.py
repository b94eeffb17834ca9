"""Benchmark crema's pooling, LRN and ReLU kernels (forward and backward) against PyTorch CPU.

    python -m benchmarks.bench_layers --threads 2 [--warmup 3] [--iters 60] [--only lenet|caffenet]

Shapes: LeNet at batch 64 (pool1 64x20x24x24, pool2 64x50x8x8, relu1 64x500) and CaffeNet at batch 10 (pool1/2/5,
norm1/2, relu1 on conv1's output). "fwd" is the TRAIN forward (MAX pooling records its argmax mask; torch's
max_pool2d_with_indices keeps indices too), "fwd-inf" the inference forward without a mask, "bwd" the backward
alone (torch: the aten backward op with the saved indices / output; LRN: autograd's backward of
local_response_norm, timed as fwd+bwd minus fwd). Every kernel is first checked against its NumPy reference (exit
status 1 on a mismatch); JIT compile (or cache load) time is printed on its own line. Ours and torch run in
alternating rounds with pauses between, so neither's spinning worker threads slow the other and a noisy spell on a
shared machine lands on both. The ratio is torch's best time over ours (> 1: crema is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before each timed batch")
    p.add_argument("--iters", type=int, default=60, help="timed runs per configuration and side")
    p.add_argument("--threads", type=int, default=2, help="threads for numba and torch")
    p.add_argument("--only", choices=["lenet", "caffenet"], default=None, help="run one group only")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args()


ARGS = _parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np

from kernels.activations import relu_backward, relu_backward_ref, relu_forward
from kernels.lrn import lrn_backward, lrn_backward_ref, lrn_forward, lrn_forward_ref
from kernels.pool import pool2d_backward, pool2d_backward_ref, pool2d_forward, pool2d_forward_ref

try:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(ARGS.threads)
except ImportError:  # torch is optional: lines then show no ratio
    torch = None

# name, input shape, kernel, stride (MAX pooling, pad 0, CEIL)
POOLS = {
    "lenet": [("pool1", (64, 20, 24, 24), 2, 2), ("pool2", (64, 50, 8, 8), 2, 2)],
    "caffenet": [
        ("pool1", (10, 96, 55, 55), 3, 2),
        ("pool2", (10, 256, 27, 27), 3, 2),
        ("pool5", (10, 256, 13, 13), 3, 2),
    ],
}
RELUS = {"lenet": [("relu1", (64, 500))], "caffenet": [("relu1", (10, 96, 55, 55))]}
LRNS = {"caffenet": [("norm1", (10, 96, 27, 27)), ("norm2", (10, 256, 13, 13))]}
LRN_KW = {"local_size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}
RESULTS: list[dict] = []


def _time(fn, warmup: int, iters: int) -> float:
    """Best seconds of fn() over iters runs after warmup runs."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _versus(ours, ref, rounds: int = 3) -> tuple[float, float]:
    """Best seconds of ours and of ref (callables; ref may be None), in alternating rounds with pauses."""
    per = max(1, ARGS.iters // rounds)
    mine, theirs = [], []
    for _ in range(rounds):
        mine.append(_time(ours, ARGS.warmup, per))
        time.sleep(0.05)
        if ref is not None:
            theirs.append(_time(ref, ARGS.warmup, per))
            time.sleep(0.05)
    return min(mine), min(theirs) if theirs else float("nan")


def _report(label: str, ours, ref, ref_minus=None) -> None:
    """One line: label | our best | torch best | torch / ours. ref_minus: a torch part to subtract (LRN bwd)."""
    best, ref_best = _versus(ours, ref)
    if ref_minus is not None:
        ref_best -= _versus(ref_minus, None)[0]
    ratio = f"{ref_best / best:6.2f}x torch" if ref is not None else "   n/a torch"
    print(f"{label:<40} | {best * 1e3:8.3f} ms | torch {ref_best * 1e3:8.3f} ms | {ratio}")
    RESULTS.append({"label": label, "min_ms": best * 1e3, "torch_min_ms": ref_best * 1e3})


def _check(name: str, got: np.ndarray, want: np.ndarray, tol: float) -> None:
    err = float(np.abs(got.astype(np.float64) - want).max())
    scale = float(np.abs(want).max()) or 1.0
    status = "ok" if err <= tol * scale else "MISMATCH"
    print(f"check {name:<34} max abs err {err:.3e} (scale {scale:.3e}, tol {tol * scale:.3e}) {status}")
    if status != "ok":
        sys.exit(1)


def check_all(rng: np.random.Generator, groups: list[str]) -> None:
    t0 = time.perf_counter()
    x = rng.standard_normal((2, 3, 12, 12), dtype=np.float32)
    for k in (2, 3):
        m = np.empty(pool2d_forward(x, kernel=k, stride=2).shape, np.int32)
        y = pool2d_forward(x, kernel=k, stride=2, mask=m)
        pool2d_backward(y, x.shape, kernel=k, stride=2, mask=m)
    t1 = time.perf_counter()
    lrn_backward(x, lrn_forward(x, **LRN_KW), **LRN_KW)
    t2 = time.perf_counter()
    relu_backward(x, relu_forward(x))
    relu_backward(x[:1, :1], relu_forward(x[:1, :1].copy()))
    t3 = time.perf_counter()
    print(f"jit compile (or cache load): pool {t1 - t0:.2f} s, lrn {t2 - t1:.2f} s, relu {t3 - t2:.2f} s")
    for group in groups:
        for name, shape, k, s in POOLS[group]:
            small = (2, *shape[1:])
            x = rng.standard_normal(small, dtype=np.float32)
            m = np.empty(pool2d_forward(x, kernel=k, stride=s).shape, np.int32)
            y = pool2d_forward(x, kernel=k, stride=s, mask=m)
            _check(f"{group} {name} fwd", y, pool2d_forward_ref(x, kernel=k, stride=s), 0.0)
            dy = rng.standard_normal(y.shape, dtype=np.float32)
            got = pool2d_backward(dy, x.shape, kernel=k, stride=s, mask=m)
            _check(f"{group} {name} bwd", got, pool2d_backward_ref(dy, x, kernel=k, stride=s), 1e-6)
        for name, shape in LRNS.get(group, []):
            x = rng.standard_normal((2, *shape[1:]), dtype=np.float32) * 10
            dy = rng.standard_normal(x.shape, dtype=np.float32)
            _check(f"{group} {name} fwd", lrn_forward(x, **LRN_KW), lrn_forward_ref(x, **LRN_KW), 1e-5)
            _check(f"{group} {name} bwd", lrn_backward(dy, x, **LRN_KW), lrn_backward_ref(dy, x, **LRN_KW), 2e-6)
        for name, shape in RELUS[group]:
            x = rng.standard_normal(shape, dtype=np.float32)
            dy = rng.standard_normal(shape, dtype=np.float32)
            _check(f"{group} {name} bwd", relu_backward(dy, x), relu_backward_ref(dy, x), 0.0)


def bench_pool(rng: np.random.Generator, group: str) -> None:
    for name, shape, k, s in POOLS[group]:
        x = rng.standard_normal(shape, dtype=np.float32)
        y = pool2d_forward(x, kernel=k, stride=s)
        mask = np.empty(y.shape, np.int32)
        dy = rng.standard_normal(y.shape, dtype=np.float32)
        dx = np.empty_like(x)
        tag = f"{group} {name} N={shape[0]} k{k}s{s}"
        refs = [None, None, None]
        if torch is not None:
            tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
            args = ([k, k], [s, s], [0, 0], [1, 1], True)  # kernel, stride, pad, dilation, ceil_mode
            with_indices = torch.no_grad()(torch.ops.aten.max_pool2d_with_indices)
            _, idx = with_indices(tx, *args)
            refs = [
                partial(with_indices, tx, *args),
                partial(torch.inference_mode()(F.max_pool2d), tx, k, s, ceil_mode=True),
                partial(torch.ops.aten.max_pool2d_with_indices_backward, tdy, tx, *args, idx),
            ]
        kw = {"kernel": k, "stride": s}
        _report(f"{tag} fwd", partial(pool2d_forward, x, **kw, out=y, mask=mask), refs[0])
        _report(f"{tag} fwd-inf", partial(pool2d_forward, x, **kw, out=y), refs[1])
        _report(f"{tag} bwd", partial(pool2d_backward, dy, x.shape, **kw, mask=mask, out=dx), refs[2])


def bench_relu(rng: np.random.Generator, group: str) -> None:
    for name, shape in RELUS[group]:
        x = rng.standard_normal(shape, dtype=np.float32)
        y, dy, dx = relu_forward(x), rng.standard_normal(shape, dtype=np.float32), np.empty_like(x)
        refs = [None, None]
        if torch is not None:
            tx, ty, tdy = torch.from_numpy(x), torch.from_numpy(y.copy()), torch.from_numpy(dy)
            refs = [partial(torch.clamp_min, tx, 0, out=ty), partial(torch.ops.aten.threshold_backward, tdy, ty, 0)]
        tag = f"{group} {name} {'x'.join(map(str, shape))}"
        _report(f"{tag} fwd", partial(relu_forward, x, out=y), refs[0])
        _report(f"{tag} bwd", partial(relu_backward, dy, y, out=dx), refs[1])


def _torch_lrn(tx, dy=None) -> None:
    n, a, b, k = LRN_KW["local_size"], LRN_KW["alpha"], LRN_KW["beta"], LRN_KW["k"]
    if dy is None and not tx.requires_grad:
        with torch.inference_mode():
            F.local_response_norm(tx, n, alpha=a, beta=b, k=k)
        return
    y = F.local_response_norm(tx.detach().requires_grad_(), n, alpha=a, beta=b, k=k)
    if dy is not None:
        y.backward(dy)


def bench_lrn(rng: np.random.Generator, group: str) -> None:
    for name, shape in LRNS.get(group, []):
        x = rng.standard_normal(shape, dtype=np.float32) * 10
        dy = rng.standard_normal(shape, dtype=np.float32)
        dx = np.empty_like(x)
        refs = [None, None, None]
        if torch is not None:
            tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
            tx_grad = tx.clone().requires_grad_()
            refs = [partial(_torch_lrn, tx), partial(_torch_lrn, tx_grad, tdy), partial(_torch_lrn, tx_grad)]
        tag = f"{group} {name} N={shape[0]} C={shape[1]} {shape[2]}x{shape[3]}"
        _report(f"{tag} fwd", partial(lrn_forward, x, **LRN_KW), refs[0])
        _report(f"{tag} bwd", partial(lrn_backward, dy, x, **LRN_KW, out=dx), refs[1], ref_minus=refs[2])


def main() -> None:
    rng = np.random.default_rng(0)
    groups = [ARGS.only] if ARGS.only else ["lenet", "caffenet"]
    check_all(rng, groups)
    print(f"threads: {ARGS.threads}; best of {ARGS.iters} runs per side")
    for group in groups:
        bench_pool(rng, group)
        bench_relu(rng, group)
        bench_lrn(rng, group)
    if ARGS.json is not None:
        ARGS.json.write_text(json.dumps({"threads": ARGS.threads, "results": RESULTS}, indent=1) + "\n")


if __name__ == "__main__":
    main()
