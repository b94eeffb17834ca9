"""EfficientNet-Lite0 forward, step by step: crema's plan steps against ONNX Runtime's nodes, interleaved in one process.

    python -m benchmarks.bench_efficientnet_steps --batch 1 --rounds 20 --threads 2
    python -m benchmarks.bench_efficientnet_steps --batch 32 --rounds 4 --threads 1 --cpu-time   # a loaded machine

Each round runs one whole forward of crema, then one of ONNX Runtime (the graph exported from the PyTorch port, as in
``python -m benchmarks --only efficientnet``), then crema's plan steps one at a time; ORT's own profiler times its
nodes. Before each of the three, the other engine's threads are left to stop spinning (``harness.settle``) and one
untimed forward of the engine wakes its own, as the harness does (ORT's profiler stays on, so its whole forwards here
are slower than in the harness). Reported: min and median of the whole forwards and their ratio (ORT time / crema
time: > 1 means crema is faster), then per kind of step (stem, depthwise, 1x1 expand / project / head, the rest) the
sum of each step's minimum over the rounds, crema's and ORT's, with --steps every step. The softmax is checked against
ORT's first (1e-5).

--cpu-time times with the process's CPU clock instead of the wall clock: on a machine shared with other jobs, a
2-thread run of either engine waits for descheduled threads (10-100x slower forwards), and the CPU clock counts only
the work; with --threads 1 neither engine spins, so the two are comparable. ORT's node times are always wall clock
(its profiler's), so with --cpu-time they are only indicative. Needs torch and efficientnet-lite-pytorch (to export
the ONNX graph) and onnxruntime.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import settle


def _onnx(path: Path) -> None:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from net.pth import load_state_dict
    from net.zoo import efficientnet_pth

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in load_state_dict(efficientnet_pth()).items()})
    model = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(path), dynamo=False, input_names=["data"],
                      output_names=["prob"], dynamic_axes={"data": {0: "N"}}, opset_version=17)  # fmt: skip


def _kind(layer) -> str:
    """stem, dw, expand, project, head or the layer type."""
    if layer.type != "Convolution":
        return layer.type
    if layer.group > 1:
        return "dw"
    if layer.blobs[0].shape[2] != 1:
        return "stem"
    return "head" if layer.name == "head" else layer.name.rsplit("/", 1)[-1]


def _ort_kind(name: str) -> str:
    """The same kinds for the nodes of the exported graph (Conv + Clip fused into one NCHWc Conv by ORT)."""
    if "project_conv" in name:
        return "project"
    if name.startswith("/0/_blocks."):
        block = int(name.split(".")[1].split("/")[0])
        if "_swish_1/" in name or (block == 0 and "_swish/" in name):
            return "dw"
        return "expand"
    if name.startswith("/0/_swish/"):
        return "stem"
    if name.startswith("/0/_swish_1/"):
        return "head"
    return name.rsplit("/", 1)[-1].split("_")[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cpu-time", action="store_true", help="time with the process CPU clock (a loaded machine)")
    p.add_argument("--steps", action="store_true", help="print every step")
    p.add_argument(
        "--shared",
        action="store_true",
        help="share activations as `crema classify` and the harness run the net (fused steps: expand + depthwise "
        "as one step, reported as the expand's)",
    )
    args = p.parse_args()

    import numba

    numba.set_num_threads(args.threads)
    import onnxruntime as ort

    from net import Net
    from net.zoo import efficientnet_lite0

    files = efficientnet_lite0(say=lambda _msg: None)
    net = Net.load(files.prototxt, files.weights)
    if args.shared:
        net.share_activations(keep=("pool",))
    work = Path(tempfile.mkdtemp(prefix="crema-effnet-"))
    _onnx(work / "efficientnet-lite0.onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
    so.enable_profiling, so.profile_file_prefix = True, str(work / "ort")
    sess = ort.InferenceSession(str(work / "efficientnet-lite0.onnx"), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1.0, 1.0, (args.batch, 3, 224, 224)).astype(np.float32)
    got, want = net.forward(data=x)["prob"], sess.run(None, {"data": x})[0]
    err = float(np.abs(got.reshape(args.batch, -1) - want.reshape(args.batch, -1)).max())
    if err > 1e-5:
        raise SystemExit(f"softmax differs from ONNX Runtime's by {err:.2e} (> 1e-5)")
    clock = time.process_time if args.cpu_time else time.perf_counter
    whole: dict[str, list[float]] = {"crema": [], "ort": []}
    steps: dict[int, list[float]] = collections.defaultdict(list)
    for _ in range(args.rounds):
        # each side after the other's threads stopped spinning (harness.settle) and one untimed call of its own (the
        # first call after a pause wakes its threads): ORT's spin ~50 ms after a call, and crema's forward right
        # after one ran at half speed (batch 1, 2 threads: median 6.7-8.1 ms against a minimum of 4.0)
        settle()
        net.forward(data=x)
        t0 = clock()
        net.forward(data=x)
        whole["crema"].append(clock() - t0)
        settle()
        sess.run(None, {"data": x})
        t0 = clock()
        sess.run(None, {"data": x})
        whole["ort"].append(clock() - t0)
        settle()
        net.forward(data=x)
        for i, (step, layer, bottom, top) in enumerate(net._plan.steps):
            t0 = clock()
            if step is None or not step():
                layer.forward(bottom, top)
            steps[i].append(clock() - t0)
    nodes: dict[str, list[float]] = collections.defaultdict(list)
    profile = sess.end_profiling()
    for e in json.loads(Path(profile).read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            nodes[e["name"][: -len("_kernel_time")]].append(e["dur"] / 1e3)
    os.remove(profile)

    clock_name = "CPU time" if args.cpu_time else "wall clock"
    print(f"EfficientNet-Lite0 N={args.batch}, {args.threads} thread(s), {args.rounds} rounds, {clock_name}")
    for who, ts in whole.items():
        print(f"  {who:6s} min {min(ts) * 1e3:9.2f} ms  median {statistics.median(ts) * 1e3:9.2f} ms")
    ratio_min = min(whole["ort"]) / min(whole["crema"])
    ratio_med = statistics.median(whole["ort"]) / statistics.median(whole["crema"])
    print(f"  ORT / crema: {ratio_min:.3f}x (mins), {ratio_med:.3f}x (medians)")
    theirs: dict[str, float] = collections.Counter()
    ort_steps: dict[str, list[float]] = collections.defaultdict(list)  # per kind, in graph order
    for name, ds in nodes.items():
        theirs[_ort_kind(name)] += min(ds)
        ort_steps[_ort_kind(name)].append(min(ds))
    ours: dict[str, float] = collections.Counter()
    seen: dict[str, int] = collections.Counter()
    for i, (_, layer, bottom, _top) in enumerate(net._plan.steps):
        ms = min(steps[i]) * 1e3
        kind = _kind(layer)
        ours[kind] += ms
        if args.steps:  # beside the ORT node of the same kind and rank (the graphs run the layers in the same order)
            theirs_ms = ort_steps[kind][seen[kind]] if seen[kind] < len(ort_steps[kind]) else math.nan
            seen[kind] += 1
            print(f"    {layer.name:28s} {kind:8s} {bottom[0].shape!s:22s} {ms:8.3f} ms | ORT {theirs_ms:8.3f} ms")
    print("  per kind, sums of per-step minimum ms (crema | ORT nodes):")
    for kind in ("stem", "dw", "expand", "project", "head"):
        print(f"    {kind:8s} {ours.pop(kind, 0.0):9.3f} | {theirs.pop(kind, 0.0):9.3f}")
    print(f"    other    {sum(ours.values()):9.3f} | {sum(theirs.values()):9.3f}")


if __name__ == "__main__":
    main()
