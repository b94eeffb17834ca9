"""GPU training benchmark: crema's GPU training path against PyTorch on the same GPU, in one process.

    python -m benchmarks.bench_gpu_train                          # LeNet 10,000 iterations + CaffeNet conv layers
    python -m benchmarks.bench_gpu_train --only lenet --iters 2000 [--skip-torch]
    python -m benchmarks.bench_gpu_train --only conv --batch 256 --json benchmarks/results/gpu_train.json

1. LeNet on MNIST (examples/mnist/lenet_solver.prototxt: batch 64, SGD momentum 0.9, inv policy, weight decay 5e-4,
   lr_mult 2 on biases, test every 500 iterations on the 10,000 test digits): crema's Solver(device="gpu") against
   PyTorch on CUDA with the same net, initial weights, schedule and update rule (V <- mu V + lr (g + wd w); w -= V).
   Reported: wall time of each training loop (tests excluded; CUDA synchronised at the ends) and of the whole run,
   final test accuracy. Exit status 1 when crema's accuracy after the full 10,000 iterations is below 99.0%.
2. CaffeNet-shaped convolution layers (conv1..conv5) forward + backward (dx, dW, db) at --batch (256): images/s of
   crema's kernels and of cuDNN through PyTorch autograd, after checking ours against PyTorch's gradients
   (max abs err <= 1e-4 * sqrt(K) * max|ref|, K the reduction length; exit status 1 on a mismatch).
FP32 on both sides: torch.backends.cuda.matmul.allow_tf32 = False, torch.backends.cudnn.allow_tf32 = False.
Timing: CUDA events after --warmup calls, min and mean of --reps.

Needs CuPy and a CUDA device: without them it prints why and exits with status 2 (nothing runs on the CPU). PyTorch
with CUDA is the reference (the reference columns show n/a without it). No figures have been measured yet: this
script has only been run without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOLVER = ROOT / "examples/mnist/lenet_solver.prototxt"
TARGET_ACCURACY = 0.99


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["lenet", "conv"], help="run one part only")
    p.add_argument("--iters", type=int, default=10000, help="LeNet training iterations")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch", type=int, default=256, help="batch of the CaffeNet conv layers")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--skip-torch", action="store_true", help="no PyTorch reference")
    p.add_argument("--json", type=Path, help="also write the raw results there")
    return p.parse_args(argv)


# -- LeNet ----------------------------------------------------------------------------------------------
def run_crema_gpu(iters: int, seed: int, workdir: Path, sync) -> dict:
    from net.device import host
    from net.prototxt_loader import load_solver_prototxt
    from net.solver import Solver

    param = load_solver_prototxt(str(SOLVER))
    param.max_iter = iters
    param.random_seed = seed
    param.snapshot = 0
    param.snapshot_prefix = str(workdir / "lenet")
    lines: list[str] = []
    solver = Solver(param, source=str(SOLVER), log=lines.append, progress=False, device="gpu")
    init = {name: [np.array(host(b)) for b in solver.net.params[name]] for name in solver.net.params}
    test_time = 0.0
    original_test = solver.test

    def timed_test(index: int = 0):
        nonlocal test_time
        sync()
        t = time.perf_counter()
        r = original_test(index)
        sync()
        test_time += time.perf_counter() - t
        return r

    solver.test = timed_test
    sync()
    t0 = time.perf_counter()
    solver.solve()
    sync()
    total = time.perf_counter() - t0
    tests = [r for r in solver.records if r["phase"] == "test0"]
    return {
        "framework": "crema-gpu",
        "iters": iters,
        "wall_s": total,
        "train_loop_s": total - test_time,
        "final_test_accuracy": tests[-1].get("accuracy") if tests else None,
        "final_test_loss": tests[-1].get("loss") if tests else None,
        "tests": tests,
        "init": init,
    }


def run_torch_gpu(iters: int, seed: int, init: dict, torch) -> dict:
    import torch.nn.functional as F

    from net.datasets import load_mnist

    dev = torch.device("cuda")
    torch.manual_seed(seed)
    xtr, ytr = load_mnist("train")
    xte, yte = load_mnist("test")
    xtr = torch.from_numpy(xtr.astype(np.float32)[:, None] * np.float32(0.00390625)).to(dev)
    xte = torch.from_numpy(xte.astype(np.float32)[:, None] * np.float32(0.00390625)).to(dev)
    ytr, yte = torch.from_numpy(ytr.astype(np.int64)).to(dev), torch.from_numpy(yte.astype(np.int64)).to(dev)
    params = []
    for name in ["conv1", "conv2", "ip1", "ip2"]:
        w, b = init[name]
        params += [torch.tensor(w, device=dev, requires_grad=True), torch.tensor(b, device=dev, requires_grad=True)]
    lr_mult = [1.0, 2.0] * 4
    hist = [torch.zeros_like(p) for p in params]

    def forward(x):
        x = F.max_pool2d(F.conv2d(x, params[0], params[1]), 2, 2)
        x = F.max_pool2d(F.conv2d(x, params[2], params[3]), 2, 2)
        x = F.relu(F.linear(x.reshape(x.shape[0], -1), params[4], params[5]))
        return F.linear(x, params[6], params[7])

    def test() -> tuple[float, float]:
        with torch.no_grad():
            correct, loss = 0, 0.0
            for i in range(0, 10000, 100):
                out = forward(xte[i : i + 100])
                loss += float(F.cross_entropy(out, yte[i : i + 100]))
                correct += int((out.argmax(1) == yte[i : i + 100]).sum())
        return correct / 10000, loss / 100

    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(60000), 0
    test_time, tests = 0.0, []
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for it in range(iters):
        if it % 500 == 0:
            t = time.perf_counter()
            acc, tl = test()
            tests.append({"iter": it, "accuracy": acc, "loss": tl})
            test_time += time.perf_counter() - t
        if pos + 64 > 60000:
            order, pos = rng.permutation(60000), 0
        idx = torch.from_numpy(order[pos : pos + 64]).to(dev)
        pos += 64
        loss = F.cross_entropy(forward(xtr[idx]), ytr[idx])
        for p in params:
            p.grad = None
        loss.backward()
        rate = 0.01 * (1 + 0.0001 * it) ** -0.75
        with torch.no_grad():
            for p, h, m in zip(params, hist, lr_mult):
                h.mul_(0.9).add_(p.grad + 0.0005 * p, alpha=rate * m)
                p.sub_(h)
        float(loss.detach())  # crema reads its loss back every iteration too
    t = time.perf_counter()
    acc, tl = test()
    tests.append({"iter": iters, "accuracy": acc, "loss": tl})
    torch.cuda.synchronize()
    test_time += time.perf_counter() - t
    total = time.perf_counter() - t0
    return {
        "framework": "torch-gpu",
        "iters": iters,
        "wall_s": total,
        "train_loop_s": total - test_time,
        "final_test_accuracy": acc,
        "final_test_loss": tl,
        "tests": tests,
    }


def bench_lenet(cp, torch, args: argparse.Namespace, results: dict) -> bool:
    """Returns False when crema's accuracy misses the target after a full-length run."""
    with tempfile.TemporaryDirectory() as tmp:
        crema = run_crema_gpu(args.iters, args.seed, Path(tmp), cp.cuda.Device().synchronize)
    init = crema.pop("init")
    acc = crema["final_test_accuracy"]
    print(f"lenet train gpu crema  {args.iters} it | loop {crema['train_loop_s']:8.1f} s | run {crema['wall_s']:8.1f} s"
          f" | test accuracy {acc:.4f}")  # fmt: skip
    results["lenet"] = {"crema": crema}
    if torch is not None:
        ref = run_torch_gpu(args.iters, args.seed, init, torch)
        results["lenet"]["torch"] = ref
        ratio = ref["train_loop_s"] / crema["train_loop_s"]
        print(f"lenet train gpu torch  {args.iters} it | loop {ref['train_loop_s']:8.1f} s | run {ref['wall_s']:8.1f} s"
              f" | test accuracy {ref['final_test_accuracy']:.4f} | crema {ratio:.2f}x torch")  # fmt: skip
    ok = args.iters < 10000 or (acc is not None and acc >= TARGET_ACCURACY)
    if not ok:
        print(
            f"bench_gpu_train: LeNet accuracy {acc} < {TARGET_ACCURACY} after {args.iters} iterations", file=sys.stderr
        )
    return ok


# -- CaffeNet conv layers, forward + backward ------------------------------------------------------------------
def bench_conv(cp, torch, args: argparse.Namespace, results: dict) -> bool:
    from benchmarks.bench_gpu import CAFFENET_CONV, _time, conv_inputs
    from kernels import gpu

    rng = np.random.default_rng(2)
    batch, ok, rows = args.batch, True, []
    for name, c, h, m, k, s, p, g in CAFFENET_CONV:
        x, w, b, kw = conv_inputs(cp, rng, batch, c, h, m, k, s, p, g)
        y = gpu.conv2d_forward(x, w, b, **kw)
        dy = cp.asarray(rng.standard_normal(y.shape, dtype=np.float32))
        dw, db = cp.zeros_like(w), cp.zeros_like(b)

        def ours(x=x, w=w, b=b, dy=dy, dw=dw, db=db, kw=kw):
            gpu.conv2d_forward(x, w, b, **kw)
            return gpu.conv2d_backward(dy, x, w, dw=dw, db=db, **kw)

        ref = None
        if torch is not None:
            xt = torch.from_dlpack(x).requires_grad_(True)
            wt = torch.from_dlpack(w).requires_grad_(True)
            bt = torch.from_dlpack(b).requires_grad_(True)
            dyt = torch.from_dlpack(dy)

            def ref(xt=xt, wt=wt, bt=bt, dyt=dyt, s=s, p=p, g=g):
                out = torch.nn.functional.conv2d(xt, wt, bt, stride=s, padding=p, groups=g)
                return torch.autograd.grad(out, (xt, wt, bt), dyt)

            dw.fill(0)
            db.fill(0)
            got = ours()
            want = ref()
            npix = batch * y.shape[2] * y.shape[3]
            for what, a, r, depth in zip(("dx", "dw", "db"), got, want, (m // g * k * k, npix, npix)):
                r = cp.asnumpy(cp.from_dlpack(r.detach()))
                tol = 1e-4 * math.sqrt(depth) * float(np.abs(r).max())
                err = float(np.abs(cp.asnumpy(a) - r).max())
                if err > tol:
                    print(
                        f"bench_gpu_train: {name} {what} differs from PyTorch: {err:.3e} > {tol:.3e}", file=sys.stderr
                    )
                    ok = False
        mine = _time(cp, ours, args.warmup, args.reps)
        theirs = _time(cp, ref, args.warmup, args.reps) if ref is not None else [float("nan")]
        ips, ref_ips = batch / min(mine), batch / min(theirs)
        line = f"{name} fwd+bwd gpu N={batch} C={c} H={h} K={m} k={k} g={g} | {1e3 * np.mean(mine):8.2f} ms"
        line += f" (min {1e3 * min(mine):.2f}) | {ips:9.1f} img/s | torch {ref_ips:9.1f} img/s | {ips / ref_ips:.2f}x"
        print(line)
        rows.append({"layer": name, "batch": batch, "ms_min": 1e3 * min(mine), "img_s": ips, "torch_img_s": ref_ips})
        del x, w, b, y, dy, dw, db
        cp.get_default_memory_pool().free_all_blocks()
    results["conv"] = rows
    return ok


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("CUPY_TF32", "0")
    from kernels import gpu

    reason = gpu.unavailable_reason()
    if reason is not None:
        print(f"bench_gpu_train: no GPU to benchmark on: {reason}", file=sys.stderr)
        return 2
    import cupy as cp

    torch = None
    if not args.skip_torch:
        try:
            import torch

            if not torch.cuda.is_available():
                raise ImportError("torch without CUDA")
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cudnn.benchmark = True
        except ImportError as exc:
            print(f"PyTorch CUDA reference unavailable ({exc}): reference columns show n/a")
            torch = None
    results: dict = {"device": cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"].decode()}
    ok = True
    if args.only in (None, "lenet"):
        ok &= bench_lenet(cp, torch, args, results)
    if args.only in (None, "conv"):
        ok &= bench_conv(cp, torch, args, results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=float))
        print(f"raw results: {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
