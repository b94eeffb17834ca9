"""`crema train` and `crema test`, as `caffe train` / `caffe test` do them.

    crema train --solver examples/mnist/lenet_solver.prototxt [--weights W.caffemodel] [--snapshot S.solverstate]
                [--device gpu]
    crema test --model examples/mnist/lenet_train_test.prototxt --weights W.caffemodel --iterations 100 [--errors DIR]

`train` prints Caffe's log lines (loss, lr, test outputs), a progress bar on a terminal, and writes
`<snapshot_prefix>_log.csv` and `<snapshot_prefix>_chart.png` (training loss and test accuracy against
iterations). Ctrl-C snapshots and stops; `--snapshot` resumes from a .solverstate (the log keeps the rows before
it). `test` scores a net whose TEST phase reads data (a Data layer), not a deploy prototxt. Both take
`--memory-budget SIZE` (net.memory): a net whose blobs would need more is refused before anything is allocated.
`test --errors DIR` writes the images it got wrong (by its Accuracy layer's rule) as a captioned grid and a CSV, and
the confusion matrix (net.visualize.Mistakes); the count printed matches the accuracy printed.
"""

from __future__ import annotations

import argparse
import sys

from .memory import add_argument as add_memory_budget_argument


def cmd_train(args: argparse.Namespace) -> int:
    from .solver import Solver, SolverError, TrainingDiverged

    if args.weights and args.snapshot:
        raise ValueError("give either --weights (fine-tune) or --snapshot (resume), not both")
    if args.snapshot and args.snapshot.endswith(".caffemodel"):
        raise ValueError(
            f"--snapshot {args.snapshot}: a .caffemodel holds weights only, it cannot resume a run: use --weights "
            f"{args.snapshot} to start from these weights, or --snapshot with the run's <prefix>_iter_N.solverstate"
        )
    from .prototxt_loader import load_solver_prototxt

    param = load_solver_prototxt(args.solver)
    if args.iterations is not None:
        param.max_iter = args.iterations
    if args.seed is not None:
        param.random_seed = args.seed
    if args.prefix:
        param.snapshot_prefix = args.prefix
    prefix = param.snapshot_prefix
    if args.device == "cpu":  # what the first iteration compiles, one process per core (net.warm)
        from .warm import prepare_training

        say = lambda msg: print(msg, flush=True)
        prepare_training(param, source=args.solver, memory_budget=args.memory_budget, say=say)
    solver = Solver(
        param,
        source=args.solver,
        log_csv=f"{prefix}_log.csv",
        progress=not args.no_progress,
        device=args.device,
        memory_budget=args.memory_budget,
    )
    if args.weights:
        for w in args.weights.split(","):
            solver.net.copy_from(w)
    try:
        solver.solve(resume=args.snapshot)
    except TrainingDiverged as exc:
        print(f"crema: error: training diverged: {exc}", file=sys.stderr)
        return 3
    except SolverError:
        raise
    finally:
        if solver.records:
            from .plot import plot_training

            solver.write_csv()
            plot_training(solver.records, f"{prefix}_chart.png")
            print(f"Log: {prefix}_log.csv  Chart: {prefix}_chart.png", flush=True)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    import numpy as np

    from .net import Net

    net = Net.load(args.model, args.weights, phase="test", memory_budget=args.memory_budget)
    if net.inputs:
        raise ValueError(
            f"{args.model}: no data layer in its TEST phase; its input blob(s) {', '.join(net.inputs)} come from "
            f"an Input layer, as in a deploy prototxt, so there is nothing to score: give the train/test prototxt "
            f"(with a Data layer for TEST), or classify images with `crema classify`"
        )
    mistakes = None
    if args.errors:
        from .visualize import Mistakes

        mistakes = Mistakes(net)
    sums: dict[str, np.ndarray] = {}
    weights = {t.name: net.loss_weights[i][j] for i, tops in enumerate(net.tops) for j, t in enumerate(tops)}
    for it in range(args.iterations):
        if mistakes is not None:
            mistakes.before()
        net.forward_loss()
        if mistakes is not None:
            mistakes.add()
        parts = []
        for name in net.outputs:
            value = net.blobs[name].astype(np.float64)
            sums[name] = sums.get(name, 0.0) + value
            if value.size == 1:
                parts.append(f"{name} = {float(value):.6g}")
        print(f"Batch {it}, " + ", ".join(parts), flush=True)
    for name in net.outputs:
        mean = np.ravel(sums[name] / args.iterations)
        for v in mean:
            w = weights.get(name, 0.0)
            tail = f" (* {w:g} = {w * float(v):.6g} loss)" if w else ""
            print(f"{name} = {float(v):.6g}{tail}")
    if mistakes is not None:
        paths = mistakes.write(args.errors)
        n, wrong = mistakes.seen, len(mistakes.rows)
        print(f"Errors: {wrong} of {n} test images misclassified ({100 * wrong / max(n, 1):.2f}%, accuracy "
              f"{(n - wrong) / max(n, 1):.6g})", flush=True)  # fmt: skip
        if getattr(mistakes, "grid", None) is not None and mistakes.grid.note:
            print(f"  errors.png: {mistakes.grid.note}; errors.csv lists all {wrong}")
        for path in paths:
            print(f"Wrote {path}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train a net with a Caffe solver definition, like `caffe train`")
    p.add_argument("--solver", required=True, help="solver .prototxt")
    p.add_argument("--weights", help="initialise from these .caffemodel weights (comma-separated for several)")
    p.add_argument("--snapshot", help="resume from this .solverstate (a .caffemodel goes to --weights)")
    p.add_argument("--iterations", type=int, help="override max_iter")
    p.add_argument("--seed", type=int, help="override random_seed")
    p.add_argument("--prefix", help="override snapshot_prefix")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="train on the CPU (default) or the GPU (CuPy and a CUDA device; SGD and Nesterov solvers)",
    )
    add_memory_budget_argument(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="score a model on its TEST-phase data, like `caffe test`")
    p.add_argument("--model", required=True, help="net .prototxt with TEST-phase data and metrics")
    p.add_argument("--weights", required=True, help=".caffemodel")
    p.add_argument("--iterations", type=int, default=50, help="batches to run (default 50)")
    p.add_argument(
        "--errors",
        metavar="DIR",
        help="write the misclassified test images (errors.png: a grid, true and predicted class with its probability "
        "under each; errors.csv) and the confusion matrix (confusion.png, confusion.csv) into DIR",
    )
    add_memory_budget_argument(p)
    p.set_defaults(func=cmd_test)
