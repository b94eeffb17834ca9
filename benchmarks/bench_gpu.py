"""GPU benchmarks: crema's CUDA kernels against cuBLAS (cupy.matmul) and cuDNN (PyTorch), in one process on one device.

    python -m benchmarks.bench_gpu                 # sgemm, CaffeNet conv layers, LeNet, CaffeNet, EfficientNet-Lite0
    python -m benchmarks.bench_gpu --only sgemm --sizes 1024,2048,4096,8192 [--naive]
    python -m benchmarks.bench_gpu --only conv --batches 1,64,256
    python -m benchmarks.bench_gpu --only nets --json benchmarks/results/gpu.json

Needs CuPy and a CUDA device: without them it prints why and exits with status 2. PyTorch with CUDA is the conv and
net reference (those lines show n/a without it); EfficientNet-Lite0 runs with its real weights (crema's conversion
against the PyTorch port `efficientnet-lite-pytorch` on the same .pth), LeNet and CaffeNet with random ones. Every
result is checked against its reference before it is timed; a mismatch or an error is reported and the next
configuration runs (exit status 1 at the end: GEMM and conv max abs err <= 1e-4 * sqrt(K) * max|ref|; net softmax
<= 1e-5 against the same net in PyTorch in float64, PyTorch FP32's own error printed beside it: cuDNN's FP32 Winograd
and FFT convolutions are less exact, and were 1.0e-5 to 1.5e-5 from crema at CaffeNet batch 64 and 256).
Timing: CUDA events around each call after --warmup calls, min and mean of --iters, ours and the reference in
alternating rounds. FP32 on both sides: CUPY_TF32=0, torch.backends.cuda.matmul.allow_tf32 = False,
torch.backends.cudnn.allow_tf32 = False (cudnn.benchmark on, so cuDNN picks its fastest algorithm). GFLOP/s counts
2*M*N*K per GEMM (convolution: its implicit GEMM; nets: their conv and InnerProduct layers); "% peak" divides by
--peak-tflops (default 67, the H100 SXM FP32 datasheet figure; measure it once and pass it). Net timings include
the host -> device copy of the input and the copy of the output back, on both sides. NVRTC compile time (the first
call of each constant set) is reported on its own line.

One fixed-width line per configuration, the reference on the same line (figures: benchmarks/gpu_notes.md):
    sgemm 4096x4096x4096     |  <mean> ms (min <min>) | <GFLOP/s> GFLOP/s | <%> peak | <ref min / our min>x cublas
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"lenet": ROOT / "models/lenet/deploy.prototxt", "caffenet": ROOT / "models/caffenet/deploy.prototxt"}
NET_BATCHES = {"lenet": [64, 10000], "caffenet": [1, 64, 256], "efficientnet": [1, 64, 256]}
# name, C, H, M (output channels), k, stride, pad, group
CAFFENET_CONV = [
    ("conv1", 3, 227, 96, 11, 4, 0, 1),
    ("conv2", 96, 27, 256, 5, 1, 2, 2),
    ("conv3", 256, 13, 384, 3, 1, 1, 1),
    ("conv4", 384, 13, 384, 3, 1, 1, 2),
    ("conv5", 384, 13, 256, 3, 1, 1, 2),
]
RESULTS: list[dict] = []
FAILURES: list[str] = []  # mismatches and errors: reported as they happen, exit status 1 at the end
SAVE: list = []  # the --json writer, once main has made it


def _save() -> None:
    for write in SAVE:
        write()


def _models(text: str) -> str:
    unknown = [m for m in text.split(",") if m not in NET_BATCHES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model {', '.join(unknown)} (have: {', '.join(NET_BATCHES)})")
    return text


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["sgemm", "conv", "nets"], help="run one group only")
    p.add_argument("--sizes", default="1024,2048,4096,8192", help="square SGEMM sizes")
    p.add_argument("--batches", default="1,64,256", help="batches for the CaffeNet conv layers")
    p.add_argument("--models", default="lenet,caffenet,efficientnet", type=_models, help="nets of the nets group")
    p.add_argument("--naive", action="store_true", help="also time the one-thread-per-output sgemm_naive")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--peak-tflops", type=float, default=67.0, help="FP32 peak of the device, TFLOP/s")
    p.add_argument("--json", help="also write the raw results there (e.g. benchmarks/results/gpu.json)")
    return p.parse_args(argv)


# -- timing and reporting --------------------------------------------------------------------------------
def _time(cp, fn, warmup: int, iters: int) -> list[float]:
    """Seconds of each of `iters` calls of fn, by CUDA events on the current stream, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    return times


def _versus(cp, ours, ref, args: argparse.Namespace, rounds: int = 3) -> tuple[float, float, float]:
    """(mean, min) seconds of ours and min seconds of ref (nan without one), timed in alternating rounds."""
    per = max(1, args.iters // rounds)
    mine, theirs = [], []
    for _ in range(rounds):
        mine += _time(cp, ours, args.warmup, per)
        if ref is not None:
            theirs += _time(cp, ref, args.warmup, per)
    return float(np.mean(mine)), min(mine), min(theirs) if theirs else float("nan")


def _report(cp, label: str, ours, ref, flops: float, ref_name: str, args: argparse.Namespace) -> None:
    mean, best, ref_best = _versus(cp, ours, ref, args)
    gflops = flops / best / 1e9
    peak = 100 * gflops / (args.peak_tflops * 1e3)
    ratio = f"{ref_best / best:5.2f}x {ref_name}" if ref is not None else f"  n/a {ref_name}"
    times = f"{mean * 1e3:8.3f} ms (min {best * 1e3:8.3f})"
    print(f"{label:<46} | {times} | {gflops:8.1f} GFLOP/s | {peak:3.0f}% peak | {ratio}")
    RESULTS.append(
        {"label": label, "mean_ms": mean * 1e3, "min_ms": best * 1e3, "ref_min_ms": ref_best * 1e3, "gflops": gflops}
    )


def _check(name: str, got: np.ndarray, want: np.ndarray, tol: float) -> bool:
    err = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    status = "ok" if err <= tol else "MISMATCH"
    print(f"check {name:<40} max abs err {err:.3e} (tol {tol:.3e}) {status}")
    if status != "ok":
        FAILURES.append(f"{name}: max abs err {err:.3e} > {tol:.3e}")
    return status == "ok"


def _guarded(label: str, fn) -> None:
    """Run one configuration; an exception is reported (one line) and counted, and the next configuration runs."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - one broken configuration must not hide the others' figures
        print(f"ERROR {label}: {type(exc).__name__}: {exc}")
        FAILURES.append(f"{label}: {type(exc).__name__}: {exc}")
    _save()


def _first_call(label: str, fn) -> None:
    """Time the first call (NVRTC compile of its constant set, module load) on its own line."""
    t0 = time.perf_counter()
    fn()
    print(f"compile+first call {label:<30} {1e3 * (time.perf_counter() - t0):8.1f} ms")


# -- groups ----------------------------------------------------------------------------------------------
def bench_sgemm(cp, gpu, args: argparse.Namespace) -> None:
    from kernels.gpu import gemm as gpu_gemm

    rng = np.random.default_rng(0)

    def one(n: int) -> None:
        a, b = (cp.asarray(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
        ours_c, ref_c = cp.empty((n, n), cp.float32), cp.empty((n, n), cp.float32)
        _first_call(f"sgemm {n}", lambda a=a, b=b, c=ours_c: gpu_gemm.gemm(a, b, out=c))
        cp.matmul(a, b, out=ref_c)
        ref_host = cp.asnumpy(ref_c)
        tol = 1e-4 * math.sqrt(n) * float(np.abs(ref_host).max())
        _check(f"sgemm {n} vs cublas", cp.asnumpy(ours_c), ref_host, tol)
        flops = 2.0 * n**3
        ours = lambda a=a, b=b, c=ours_c: gpu_gemm.gemm(a, b, out=c)
        ref = lambda a=a, b=b, c=ref_c: cp.matmul(a, b, out=c)
        _report(cp, f"sgemm {n}x{n}x{n}", ours, ref, flops, "cublas", args)
        if args.naive and n <= 4096:
            _check(f"sgemm_naive {n}", cp.asnumpy(gpu_gemm.sgemm_naive(a, b)), ref_host, tol)
            naive = lambda a=a, b=b: gpu_gemm.sgemm_naive(a, b)
            _report(cp, f"sgemm_naive {n}x{n}x{n}", naive, ref, flops, "cublas", args)

    for n in (int(s) for s in args.sizes.split(",")):
        _guarded(f"sgemm {n}", lambda n=n: one(n))
        cp.get_default_memory_pool().free_all_blocks()


def conv_inputs(cp, rng, batch: int, c: int, h: int, m: int, k: int, s: int, p: int, g: int) -> tuple:
    """Device x (batch, c, h, h), w (m, c/g, k, k) scaled by 0.1 and bias (m,), N(0, 1) from `rng` in that order, and
    the launcher's keywords: one layer of CAFFENET_CONV (or any such shape) for the GPU benchmarks."""
    x = cp.asarray(rng.standard_normal((batch, c, h, h), dtype=np.float32))
    w = cp.asarray(rng.standard_normal((m, c // g, k, k), dtype=np.float32) * 0.1)
    bias = cp.asarray(rng.standard_normal(m, dtype=np.float32))
    return x, w, bias, {"stride": (s, s), "pad": (p, p), "group": g}


def bench_conv(cp, gpu, torch, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(1)

    def one(batch: int, name: str, c: int, h: int, m: int, k: int, s: int, p: int, g: int) -> None:
        x, w, bias, kw = conv_inputs(cp, rng, batch, c, h, m, k, s, p, g)
        ours = lambda: gpu.conv2d_forward(x, w, bias, **kw)
        _first_call(f"{name} N={batch}", ours)
        y = ours()
        oh = y.shape[2]
        ref = None
        if torch is not None:
            xt, wt, bt = (torch.from_dlpack(v) for v in (x, w, bias))
            tkw = {"stride": s, "padding": p, "groups": g}
            ref = lambda: torch.nn.functional.conv2d(xt, wt, bt, **tkw)
            want = cp.asnumpy(cp.from_dlpack(ref()))
            scale = float(np.abs(want).max())
            _check(f"{name} N={batch} vs cudnn", cp.asnumpy(y), want, 1e-4 * math.sqrt(c // g * k * k) * scale)
        flops = 2.0 * batch * m * oh * oh * (c // g) * k * k
        label = f"{name} fwd gpu N={batch} C={c} H={h} K={m} k={k} g={g}"
        _report(cp, label, ours, ref, flops, "cudnn", args)

    for batch in (int(s) for s in args.batches.split(",")):
        for spec in CAFFENET_CONV:
            _guarded(f"{spec[0]} N={batch}", lambda batch=batch, spec=spec: one(batch, *spec))
            cp.get_default_memory_pool().free_all_blocks()


def _randomize(net, seed: int) -> None:
    """He-scaled weights, the last layer scaled down so logits span about +-30 as a trained net's do."""
    rng = np.random.default_rng(seed)
    names = list(net.params)
    for name in names:
        w, *rest = net.params[name]
        w[...] = rng.normal(0.0, (0.1 if name == names[-1] else 1.0) * np.sqrt(2.0 / w[0].size), size=w.shape)
        for b in rest:
            b[...] = rng.normal(0.0, 0.1, size=b.shape)


def _torch_net(net, torch, dtype=None):
    """The same net in PyTorch on CUDA (the layer types of LeNet and CaffeNet), from the net's host weights; in
    `dtype` (default float32; float64: the accuracy reference) with float32 results."""
    f = torch.nn.functional
    dev = torch.device("cuda")
    dtype = dtype or torch.float32
    steps = []
    for layer in net.layers:
        params = [torch.from_numpy(np.array(b.data)).to(dev, dtype) for b in layer.blobs]
        if layer.type == "Convolution":
            conv = {"stride": layer.stride, "padding": layer.pad, "dilation": layer.dilation, "groups": layer.group}
            steps.append(lambda t, p=params, conv=conv: f.conv2d(t, *p, **conv))
        elif layer.type == "Pooling":
            pool = f.max_pool2d if layer.method == "MAX" else f.avg_pool2d
            steps.append(lambda t, L=layer, pool=pool: pool(t, L.kernel, L.stride, L.pad, ceil_mode=True))
        elif layer.type == "LRN":
            kw = layer.kw
            steps.append(lambda t, kw=kw: f.local_response_norm(t, kw["local_size"], kw["alpha"], kw["beta"], kw["k"]))
        elif layer.type == "ReLU":
            steps.append(lambda t: f.relu(t, inplace=True))
        elif layer.type == "InnerProduct":
            steps.append(lambda t, p=params: f.linear(t.reshape(t.shape[0], -1), *p))
        elif layer.type == "Softmax":
            steps.append(lambda t: f.softmax(t, dim=1))
        elif layer.type not in ("Input", "Dropout", "Split"):
            raise ValueError(f"torch reference: layer type {layer.type} is not supported")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x).to(dev, dtype)
            for step in steps:
                t = step(t)
            return t.float().cpu().numpy()

    return run


def _net_flops(net) -> float:
    total = 0.0
    for layer, top in zip(net.layers, net.tops):
        if layer.type in ("Convolution", "InnerProduct"):
            w = layer.blobs[0]
            per_output = w.count // w.shape[0] if layer.type == "Convolution" or not layer.transpose else w.shape[0]
            total += 2.0 * sum(t.count for t in top) * per_output
    return total


@functools.cache
def _efficientnet(torch):
    """EfficientNet-Lite0 with its real ImageNet weights: crema's GPU net from the Caffe files crema converts (into a
    temporary cache), and the PyTorch port (`efficientnet-lite-pytorch`) on CUDA with the same .pth, + softmax. Made
    once, for every batch."""
    import tempfile

    from net import Net
    from net.zoo import efficientnet_lite0

    files = efficientnet_lite0(cache=Path(tempfile.mkdtemp(prefix="crema-bench-gpu-")), say=lambda _msg: None)
    net = Net.load(str(files.prototxt), str(files.weights), phase="test", device="gpu")
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        print("efficientnet-lite-pytorch is not installed: EfficientNet-Lite0 lines show no PyTorch reference")
        torch = None
    if torch is not None:
        from net.pth import load_state_dict
        from net.zoo import efficientnet_pth

        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict({k: torch.from_numpy(v) for k, v in load_state_dict(efficientnet_pth()).items()})
        model = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval().to("cuda")
        model64 = copy.deepcopy(model).double()

        def ref(x, model=model):
            with torch.inference_mode():
                return model(torch.from_numpy(x).to("cuda")).cpu().numpy()

        def ref64(x, model=model64):
            with torch.inference_mode():
                return model(torch.from_numpy(x).to("cuda", torch.float64)).float().cpu().numpy()

        return net, ref, ref64
    return net, None, None


def bench_nets(cp, torch, args: argparse.Namespace) -> None:
    from net import Net

    def one(name: str, batch: int) -> None:
        if name == "efficientnet":
            net, ref, ref64 = _efficientnet(torch)
            x = np.random.default_rng(4).uniform(-1.0, 1.0, (batch, 3, 224, 224)).astype(np.float32)
        else:
            net = Net.load(str(MODELS[name]), phase="test", device="gpu")
            _randomize(net, seed=3)
            x = np.random.default_rng(4).random((batch, *net.blob(net.inputs[0]).shape[1:]), dtype=np.float32)
            x = x if name == "lenet" else x * 255 - 120
            ref = _torch_net(net, torch) if torch is not None else None
            ref64 = _torch_net(net, torch, torch.float64) if torch is not None else None
        feed = {net.inputs[0]: x}
        _first_call(f"{name} N={batch}", lambda: net.forward(**feed))
        out = net.forward(**feed)[net.outputs[-1]]
        if ref is not None:  # the gate: crema against float64; PyTorch FP32's own error on the same line, for scale
            want = ref64(x).reshape(batch, -1)
            theirs = float(np.abs(ref(x).reshape(batch, -1).astype(np.float64) - want).max())
            _check(f"{name} N={batch} vs torch fp64 (torch fp32: {theirs:.1e})", out.reshape(batch, -1), want, 1e-5)
        label = f"{name} fwd gpu N={batch}"
        ours = lambda: net.forward(**feed)
        theirs = (lambda: ref(x)) if ref is not None else None
        _report(cp, label, ours, theirs, _net_flops(net), "torch", args)

    for name in args.models.split(","):
        for batch in NET_BATCHES[name]:
            _guarded(f"{name} N={batch}", lambda name=name, batch=batch: one(name, batch))
            cp.get_default_memory_pool().free_all_blocks()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("CUPY_TF32", "0")  # cuBLAS in FP32, as our kernels
    from kernels import gpu

    reason = gpu.unavailable_reason()
    if reason is not None:
        print(f"bench_gpu: no GPU to benchmark on: {reason}", file=sys.stderr)
        return 2
    import cupy as cp

    try:
        import torch

        if not torch.cuda.is_available():
            raise ImportError("torch without CUDA")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    except ImportError as exc:
        print(f"PyTorch CUDA reference unavailable ({exc}): conv and net lines show n/a")
        torch = None
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    print(f"device {props['name'].decode()} ({gpu.runtime().sm_count} SMs), cupy {cp.__version__}, ", end="")
    print(f"torch {getattr(torch, '__version__', 'absent')}, peak {args.peak_tflops} TFLOP/s FP32")
    meta = {"device": props["name"].decode(), "peak_tflops": args.peak_tflops, "iters": args.iters}
    if args.json:  # rewritten after every configuration: a run stopped by a time limit keeps what it measured
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        SAVE.append(lambda: Path(args.json).write_text(
            json.dumps({"meta": {**meta, "failures": FAILURES}, "results": RESULTS}, indent=1)
        ))  # fmt: skip
    if args.only in (None, "sgemm"):
        bench_sgemm(cp, gpu, args)
    if args.only in (None, "conv"):
        bench_conv(cp, gpu, torch, args)
    if args.only in (None, "nets"):
        bench_nets(cp, torch, args)
    if args.json:
        _save()
        print(f"raw results: {args.json}")
    if FAILURES:
        print(f"{len(FAILURES)} configuration(s) failed:")
        for line in FAILURES:
            print(f"  {line}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
