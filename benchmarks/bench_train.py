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

The two trainings run in turns of --chunk iterations (500: one test interval), crema first in one turn and PyTorch
first in the next, each picking up where it stopped: this host's slow spells last seconds to minutes, and run one
after the other a 10,000-iteration run of each (~1.5 and ~2.5 minutes) met different hosts (the ratio moved between
1.92x and 2.09x from one run to the next). The ratio is the sum of each side's loop times; the median of the turns'
ratios is printed beside it. --chunk 0 runs them one after the other, as before.
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


class _Turns:
    """A training run in turns: `run(n)` advances it n iterations (`_advance`) and adds the turn's wall time, and
    that time less its tests (`test_s`, which the subclass's tests add to) to the training loop's."""

    test_s = loop_s = wall_s = 0.0

    def _advance(self, n: int) -> None:
        raise NotImplementedError

    def run(self, n: int) -> float:
        """The next n iterations; returns their loop time in seconds."""
        tests_before = self.test_s
        t0 = time.perf_counter()
        self._advance(n)
        wall = time.perf_counter() - t0
        self.wall_s += wall
        loop = wall - (self.test_s - tests_before)
        self.loop_s += loop
        return loop


class CremaTraining(_Turns):
    """crema's Solver on the shipped LeNet solver, run in turns (`run`): each turn's wall time, tests excluded, is
    added to the training loop's; the last turn is the Solver's `solve` (the rest of the iterations, then its final
    test)."""

    def __init__(self, iters: int, seed: int, workdir: Path) -> None:
        from net.prototxt_loader import load_solver_prototxt
        from net.solver import Solver

        param = load_solver_prototxt(str(SOLVER))
        param.max_iter = iters
        param.random_seed = seed
        param.snapshot = 0
        param.snapshot_prefix = str(workdir / "lenet")
        self.iters = iters
        self.lines: list[str] = []
        self.solver = solver = Solver(param, source=str(SOLVER), log=self.lines.append, progress=False)
        self.init = {name: [b.copy() for b in solver.net.params[name]] for name in solver.net.params}
        original_test = solver.test

        def timed_test(index: int = 0):
            t = time.perf_counter()
            r = original_test(index)
            self.test_s += time.perf_counter() - t
            return r

        solver.test = timed_test

    def _advance(self, n: int) -> None:  # (the last turn: through `solve`)
        if self.solver.iter + n >= self.iters:
            self.solver.solve()
        else:
            self.solver.step(n)

    def result(self, out: Path | None) -> dict:
        solver = self.solver
        tests = [r for r in solver.records if r["phase"] == "test0"]
        trains = [r for r in solver.records if r["phase"] == "train"]
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            solver.net.save(out / "lenet.caffemodel")
        return {
            "framework": "crema",
            "iters": self.iters,
            "wall_s": self.wall_s,
            "train_loop_s": self.loop_s,
            "final_test_accuracy": tests[-1].get("accuracy") if tests else None,
            "final_test_loss": tests[-1].get("loss") if tests else None,
            "final_train_loss": trains[-1]["loss"] if trains else None,
            "tests": tests,
            "log_tail": self.lines[-12:],
        }


class TorchTraining(_Turns):
    """The same training in PyTorch (see the module docstring), run in turns like CremaTraining."""

    def __init__(self, iters: int, seed: int, init: dict, threads: int) -> None:
        import torch
        import torch.nn.functional as F

        from net.datasets import load_mnist

        self.torch, self.F = torch, F
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        xtr, ytr = load_mnist("train")
        xte, yte = load_mnist("test")
        self.xtr = torch.from_numpy(xtr.astype(np.float32)[:, None] * np.float32(0.00390625))
        self.xte = torch.from_numpy(xte.astype(np.float32)[:, None] * np.float32(0.00390625))
        self.ytr, self.yte = torch.from_numpy(ytr.astype(np.int64)), torch.from_numpy(yte.astype(np.int64))
        self.params = []
        for name in ["conv1", "conv2", "ip1", "ip2"]:
            w, b = init[name]
            self.params += [torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)]
        self.lr_mult = [1.0, 2.0] * 4
        self.hist = [torch.zeros_like(p) for p in self.params]
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(60000)
        self.pos = self.it = 0
        self.iters = iters
        self.tests: list[dict] = []
        self.loss = float("nan")

    def forward(self, x):
        F, params = self.F, self.params
        x = F.max_pool2d(F.conv2d(x, params[0], params[1]), 2, 2)
        x = F.max_pool2d(F.conv2d(x, params[2], params[3]), 2, 2)
        x = F.relu(F.linear(x.reshape(x.shape[0], -1), params[4], params[5]))
        return F.linear(x, params[6], params[7])

    def test(self) -> None:
        F = self.F
        t = time.perf_counter()
        with self.torch.no_grad():
            correct, loss = 0, 0.0
            for i in range(0, 10000, 100):
                out = self.forward(self.xte[i : i + 100])
                loss += float(F.cross_entropy(out, self.yte[i : i + 100]))
                correct += int((out.argmax(1) == self.yte[i : i + 100]).sum())
        self.tests.append({"iter": self.it, "accuracy": correct / 10000, "loss": loss / 100})
        self.test_s += time.perf_counter() - t

    def _advance(self, n: int) -> None:  # (a test every 500 iterations, and after the last)
        torch, F = self.torch, self.F
        for _ in range(min(n, self.iters - self.it)):
            it = self.it
            if it % 500 == 0:
                self.test()
            if self.pos + 64 > 60000:
                self.order, self.pos = self.rng.permutation(60000), 0
            idx = torch.from_numpy(self.order[self.pos : self.pos + 64])
            self.pos += 64
            out = self.forward(self.xtr[idx])
            loss = F.cross_entropy(out, self.ytr[idx])
            for p in self.params:
                p.grad = None
            loss.backward()
            rate = 0.01 * (1 + 0.0001 * it) ** -0.75
            with torch.no_grad():
                for p, h, m in zip(self.params, self.hist, self.lr_mult):
                    h.mul_(0.9).add_(p.grad + 0.0005 * p, alpha=rate * m)
                    p.sub_(h)
            self.loss = float(loss.detach())
            self.it += 1
        if self.it == self.iters:
            self.test()

    def result(self) -> dict:
        last = self.tests[-1]
        return {
            "framework": "torch",
            "iters": self.iters,
            "wall_s": self.wall_s,
            "train_loop_s": self.loop_s,
            "final_test_accuracy": last["accuracy"],
            "final_test_loss": last["loss"],
            "final_train_loss": self.loss,
            "tests": self.tests,
        }


def train_both(iters: int, seed: int, threads: int, chunk: int, workdir: Path, torch: bool = True):
    """(crema's training, PyTorch's or None, the turns' (crema, torch) loop times): in turns of `chunk` iterations,
    crema first in even turns and PyTorch first in odd ones; chunk 0: crema's whole run, then PyTorch's."""
    crema = CremaTraining(iters, seed, workdir)
    ref = TorchTraining(iters, seed, crema.init, threads) if torch else None
    step = chunk if chunk > 0 and ref is not None else iters  # chunk 0 (or crema alone): one turn
    turns = []
    for k, start in enumerate(range(0, iters, step)):
        n = min(step, iters - start)
        if ref is None:
            turns.append((crema.run(n), None))
        elif k % 2 == 0:
            a = crema.run(n)
            turns.append((a, ref.run(n)))
        else:
            b = ref.run(n)
            turns.append((crema.run(n), b))
    return crema, ref, turns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument(
        "--chunk",
        type=int,
        default=500,
        help="iterations per turn, the two trainings alternating (0: one after the other)",
    )
    parser.add_argument("--out", type=Path, help="save crema's trained lenet.caffemodel into this folder")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--publish", action="store_true", help="write them to benchmarks/results/train.json")
    args = parser.parse_args(argv)
    import tempfile

    from benchmarks.references import set_threads

    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        crema_run, torch_run, turns = train_both(
            args.iters, args.seed, args.threads, args.chunk, Path(tmp), torch=not args.skip_torch
        )
        crema = crema_run.result(args.out)
    print(f"crema: {args.iters} iterations in {crema['wall_s']:.1f} s (training loop {crema['train_loop_s']:.1f} s)")
    print(f"crema: final test accuracy {crema['final_test_accuracy']}, test loss {crema['final_test_loss']}")
    print(f"crema: final smoothed train loss {crema['final_train_loss']}")
    results = {"threads": args.threads, "crema": crema}
    if torch_run is not None:
        torch_r = torch_run.result()
        results["torch"] = torch_r
        ratio = torch_r["train_loop_s"] / crema["train_loop_s"]
        per_turn = [b / a for a, b in turns if a > 0]
        results["speed_ratio_vs_torch"] = ratio
        results["turns"] = {"iterations": args.chunk, "loop_s": turns, "ratio_median": float(np.median(per_turn))}
        print(f"torch: {args.iters} iterations in {torch_r['wall_s']:.1f} s (loop {torch_r['train_loop_s']:.1f} s)")
        print(f"torch: final test accuracy {torch_r['final_test_accuracy']}, test loss {torch_r['final_test_loss']}")
        how = f"in {len(turns)} turns of {args.chunk} iterations" if args.chunk > 0 else "one after the other"
        print(
            f"crema speed = {ratio:.2f}x torch (training loops, {args.threads} threads, {how}; "
            f"turns {min(per_turn):.2f}-{max(per_turn):.2f}x, median {np.median(per_turn):.2f}x)"
        )
    if args.publish and args.json is None:
        args.json = ROOT / "benchmarks/results/train.json"
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=float))
        print(f"raw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
