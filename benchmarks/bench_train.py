"""LeNet on MNIST, trained by crema and by PyTorch CPU in the same run: wall time, final loss, test accuracy.

    python -m benchmarks.bench_train                       # 10,000 iterations each (Caffe's lenet_solver)
    python -m benchmarks.bench_train --iters 500 --skip-torch
    python -m benchmarks.bench_train --out models/lenet    # also keep crema's trained weights there

crema runs `examples/mnist/lenet_solver.prototxt` through its own Solver (Data layers, SGD with Caffe's
momentum form, inv policy, weight decay, lr_mult 2 on biases, test every 500 iterations on all 10,000
test images). PyTorch gets the same net, the same initial weights, the same batch size, schedule and
update rule (V <- mu V + lr (g + wd w); w <- w - V, per-parameter lr_mult), data in shuffled epochs,
on the same number of threads. Both report the wall time of the training loop alone (tests excluded)
and of the whole run. Results go to benchmarks/results/train.json with --publish (or --json FILE). Needs `crema data mnist` first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOLVER = ROOT / "examples/mnist/lenet_solver.prototxt"


def run_crema(iters: int, seed: int, out: Path | None, workdir: Path) -> dict:
    from net.prototxt_loader import load_solver_prototxt
    from net.solver import Solver

    param = load_solver_prototxt(str(SOLVER))
    param.max_iter = iters
    param.random_seed = seed
    param.snapshot = 0
    param.snapshot_prefix = str(workdir / "lenet")
    lines: list[str] = []
    solver = Solver(param, source=str(SOLVER), log=lines.append, progress=False)
    init = {name: [b.copy() for b in solver.net.params[name]] for name in solver.net.params}
    test_time = 0.0
    original_test = solver.test

    def timed_test(index: int = 0):
        nonlocal test_time
        t = time.perf_counter()
        r = original_test(index)
        test_time += time.perf_counter() - t
        return r

    solver.test = timed_test
    t0 = time.perf_counter()
    solver.solve()
    total = time.perf_counter() - t0
    tests = [r for r in solver.records if r["phase"] == "test0"]
    trains = [r for r in solver.records if r["phase"] == "train"]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        solver.net.save(out / "lenet.caffemodel")
    return {
        "framework": "crema",
        "iters": iters,
        "wall_s": total,
        "train_loop_s": total - test_time,
        "final_test_accuracy": tests[-1].get("accuracy") if tests else None,
        "final_test_loss": tests[-1].get("loss") if tests else None,
        "final_train_loss": trains[-1]["loss"] if trains else None,
        "tests": tests,
        "init": init,
        "log_tail": lines[-12:],
    }


def run_torch(iters: int, seed: int, init: dict, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from net.datasets import load_mnist

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    xtr, ytr = load_mnist("train")
    xte, yte = load_mnist("test")
    xtr = torch.from_numpy(xtr.astype(np.float32)[:, None] * np.float32(0.00390625))
    xte = torch.from_numpy(xte.astype(np.float32)[:, None] * np.float32(0.00390625))
    ytr, yte = torch.from_numpy(ytr.astype(np.int64)), torch.from_numpy(yte.astype(np.int64))
    names = ["conv1", "conv2", "ip1", "ip2"]
    params = []
    for name in names:
        w, b = init[name]
        params += [torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)]
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
    order = rng.permutation(60000)
    pos = 0
    test_time = 0.0
    tests = []
    t0 = time.perf_counter()
    loss_v = float("nan")
    for it in range(iters):
        if it % 500 == 0:
            t = time.perf_counter()
            acc, tl = test()
            tests.append({"iter": it, "accuracy": acc, "loss": tl})
            test_time += time.perf_counter() - t
        if pos + 64 > 60000:
            order, pos = rng.permutation(60000), 0
        idx = torch.from_numpy(order[pos : pos + 64])
        pos += 64
        out = forward(xtr[idx])
        loss = F.cross_entropy(out, ytr[idx])
        for p in params:
            p.grad = None
        loss.backward()
        rate = 0.01 * (1 + 0.0001 * it) ** -0.75
        with torch.no_grad():
            for p, h, m in zip(params, hist, lr_mult):
                h.mul_(0.9).add_(p.grad + 0.0005 * p, alpha=rate * m)
                p.sub_(h)
        loss_v = float(loss.detach())
    t = time.perf_counter()
    acc, tl = test()
    tests.append({"iter": iters, "accuracy": acc, "loss": tl})
    test_time += time.perf_counter() - t
    total = time.perf_counter() - t0
    return {
        "framework": "torch",
        "iters": iters,
        "wall_s": total,
        "train_loop_s": total - test_time,
        "final_test_accuracy": acc,
        "final_test_loss": tl,
        "final_train_loss": loss_v,
        "tests": tests,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--out", type=Path, help="save crema's trained lenet.caffemodel into this folder")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--publish", action="store_true", help="write them to benchmarks/results/train.json")
    args = parser.parse_args(argv)
    import tempfile

    from benchmarks.references import set_threads

    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        crema = run_crema(args.iters, args.seed, args.out, Path(tmp))
    init = crema.pop("init")
    print(f"crema: {args.iters} iterations in {crema['wall_s']:.1f} s (training loop {crema['train_loop_s']:.1f} s)")
    print(f"crema: final test accuracy {crema['final_test_accuracy']}, test loss {crema['final_test_loss']}")
    print(f"crema: final smoothed train loss {crema['final_train_loss']}")
    results = {"threads": args.threads, "crema": crema}
    if not args.skip_torch:
        torch_r = run_torch(args.iters, args.seed, init, args.threads)
        results["torch"] = torch_r
        ratio = torch_r["train_loop_s"] / crema["train_loop_s"]
        results["speed_ratio_vs_torch"] = ratio
        print(f"torch: {args.iters} iterations in {torch_r['wall_s']:.1f} s (loop {torch_r['train_loop_s']:.1f} s)")
        print(f"torch: final test accuracy {torch_r['final_test_accuracy']}, test loss {torch_r['final_test_loss']}")
        print(f"crema speed = {ratio:.2f}x torch (training loops, {args.threads} threads)")
    if args.publish and args.json is None:
        args.json = ROOT / "benchmarks/results/train.json"
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=float))
        print(f"raw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
