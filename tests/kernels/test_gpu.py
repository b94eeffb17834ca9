"""The GPU backend: kernels/gpu/ (forward launchers), kernels/cuda/*.cu, net/device.py and `--device gpu`.

Everywhere (no GPU needed):
  - launch geometry (tiles, split-K, grids, 32-bit chunks) and the Python mirrors of the CUDA constants;
  - every CUDA source compiles for sm_90 with nvcc (skipped only without nvcc), and with NVRTC the way CuPy
    compiles it (skipped without CuPy's NVRTC);
  - GPUBackendError (a RuntimeError) without CuPy or without a device, from kernels.gpu, Net and the CLI; importing
    crema never imports CuPy.
Same test bodies on two runtimes (fixture `rt`): "emulator" runs the CUDA sources on the CPU (tests/kernels/cuda_emu.py;
needs g++; threads of a block in reverse order, and all three orders for the kernels with barriers), "cuda" on a GPU
(skipped with CuPy's reason when there is none). Each launcher is compared with the CPU kernel or the float64
reference on random shapes. Tolerances, max abs error:
  GEMM, convolution, InnerProduct (N(0, 1) data): <= 1e-5 * sqrt(K) * max(max|ref|, 1) against float64, K = the
      reduction length (as tests/kernels/test_conv.py);
  MAX pooling (and its argmax), ReLU, Concat, Eltwise, Scale, Bias: exact (a selection, or one rounding per element);
  AVE pooling, LRN, BatchNorm, Softmax, Sigmoid, TanH: <= 1e-6 against the CPU kernel (same formulas; the GPU may
      contract a multiply-add, flush denormals, or differ by 2 ulp in expf / tanhf);
  LeNet (batch 3) and CaffeNet (batch 1) softmax outputs, GPU against CPU: <= 1e-5.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from crema import main
from kernels import activations, conv, elementwise, fc, gpu, lrn, pool
from kernels.gemm import gemm as cpu_gemm
from kernels.gpu import GPUBackendError
from kernels.gpu import activations as gpu_activations
from kernels.gpu import backend as gr
from kernels.gpu import fc as gpu_fc
from kernels.gpu import gemm as gpu_gemm
from net import Net
from tests.conftest import ROOT, randomize
from tests.kernels.cuda_emu import EmuRuntime, compiler, default_build_dir, defines_in, runtime_for, synchronising

LENET = str(ROOT / "models/lenet/deploy.prototxt")
CAFFENET = str(ROOT / "models/caffenet/deploy.prototxt")
RTOL = 1e-5  # GEMM-like: max |err| <= RTOL * sqrt(K) * max(max|ref|, 1)
ATOL = 1e-6  # elementwise ops against the CPU kernel
NET_ATOL = 1e-5  # softmax outputs of whole nets


# -- runtimes ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["emulator", "cuda"])
def rt(request):
    return runtime_for(request.param)


@pytest.fixture
def dev(rt):
    """The runtime `rt`, active for the launchers (and for Net(device='gpu'))."""
    with gpu.use_runtime(rt):
        yield rt


def up(a: np.ndarray):
    return gpu.to_device(np.asarray(a))


def down(a) -> np.ndarray:
    return gpu.to_host(a)


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def assert_gemm_close(got: np.ndarray, want: np.ndarray, k: int) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    tol = RTOL * np.sqrt(max(k, 1)) * max(float(np.abs(want).max(initial=0.0)), 1.0)
    err = float(np.abs(got.astype(np.float64) - want).max(initial=0.0))
    assert err <= tol, f"max abs err {err:.3e} > tol {tol:.3e}"


def assert_near(got: np.ndarray, want: np.ndarray, atol: float = ATOL) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


# -- launch geometry and constants (pure Python) ---------------------------------------------------------
def test_python_constants_match_the_cuda_sources() -> None:
    defs = defines_in("gemm")
    for name in ("F_RELU", "F_ACCUMULATE", "F_ATOMIC", "F_VEC_A", "F_VEC_B", "F_VEC_C", "F_BIAS"):
        assert getattr(gpu_gemm, name) == defs[name] == defines_in("conv")[name], name
    assert gpu_fc.GEMV_MAX_M == defines_in("fc")["GEMV_MAX_M"]
    large = gr.LARGE
    assert (large.bm, large.bn, large.bk, large.tm, large.tn, large.min_blocks) == tuple(
        defs[k] for k in ("BM", "BN", "BK", "TM", "TN", "MIN_BLOCKS")
    )
    assert gpu_activations.SOFTMAX_THREADS == defines_in("activations")["SOFTMAX_THREADS"]


def test_kernel_names() -> None:
    names = {src: gr.kernel_names(gr.cuda_source(src)) for src in gr.SOURCES}
    assert names["gemm"] == ["sgemm", "sgemm_naive"]
    assert names["conv"] == ["conv2d_igemm", "conv2d_depthwise", "pack_dy", "im2col", "col2im"]
    assert names["fc"] == ["gemv_rows", "gemv_rows_t"]
    assert names["pool"] == ["pool2d_max", "pool2d_ave", "pool2d_max_backward", "pool2d_ave_backward"]
    assert names["lrn"] == [
        "lrn_across",
        "lrn_within",
        "lrn_across_backward",
        "lrn_within_ratio",
        "lrn_within_backward",
    ]
    assert names["activations"][:6] == ["relu", "sigmoid", "tanh_forward", "softmax_rows", "softmax_strided", "clip"]
    assert len(names["activations"]) == 14 and len(names["elementwise"]) == 10
    assert names["loss"] == ["softmax_loss", "softmax_loss_grad"]
    every = [k for ks in names.values() for k in ks]
    assert len(every) == len(set(every)), "a kernel name in two sources"
    assert synchronising(gr.cuda_source("gemm")) >= {"sgemm"}
    assert synchronising(gr.cuda_source("conv")) >= {"conv2d_igemm"}
    assert synchronising(gr.cuda_source("fc")) >= {"gemv_rows"}
    assert "gemv_rows_t" not in synchronising(gr.cuda_source("fc"))


def test_cuda_sources_inline_their_headers() -> None:
    """gemm.cu and conv.cu share gemm.cuh: `cuda_source` inlines it once (NVRTC and the emulator get one text), and
    no other source includes anything."""
    header = (gr.CUDA_DIR / "gemm.cuh").read_text(encoding="utf-8")
    for source in gr.SOURCES:
        raw, text = (gr.CUDA_DIR / f"{source}.cu").read_text(encoding="utf-8"), gr.cuda_source(source)
        assert not re.search(r"^\s*#\s*include", text, re.MULTILINE), source
        if source in ("gemm", "conv"):
            assert raw.count('\n#include "gemm.cuh"\n') == 1 and text.count("gemm_mainloop(const float*") == 1, source
        else:
            assert not re.search(r"^\s*#\s*include", raw, re.MULTILINE) and text == raw, source
    assert "__global__" not in header


def test_gpu_modules_import_only_public_names_of_the_cpu_modules() -> None:
    """kernels/gpu/*.py share the CPU modules' checks and geometry through their public names, never `_private`
    helpers, and kernels.gpu is one module per CPU op module (plus backend)."""
    import ast

    folder = gr.CUDA_DIR.parent / "gpu"
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kernels"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"
    ops = {p.stem for p in folder.glob("*.py")} - {"__init__", "backend"}
    assert ops <= {p.stem for p in folder.parent.glob("*.py")}, ops
    assert {p.stem for p in gr.CUDA_DIR.glob("*.cu")} <= ops


@pytest.mark.parametrize(
    ("what", "m", "n", "k", "batch", "tile", "splits", "k_chunk"),
    [
        ("sgemm 4096^3", 4096, 4096, 4096, 1, gr.LARGE, 1, 4096),
        ("CaffeNet conv1 N=1", 96, 55 * 55, 363, 1, gr.LARGE, 5, 80),
        ("CaffeNet conv5 N=1 (per group)", 128, 13 * 13, 1728, 2, gr.LARGE, 16, 112),
        ("CaffeNet conv1 N=256", 96, 256 * 55 * 55, 363, 1, gr.LARGE, 1, 363),
        ("CaffeNet fc6 N=256", 256, 4096, 9216, 1, gr.SMALL, 1, 9216),
        ("CaffeNet fc6 N=64", 64, 4096, 9216, 1, gr.SMALL, 4, 2304),
        ("LeNet ip1 N=64", 64, 500, 800, 1, gr.SMALL, 6, 144),
        ("LeNet conv1 N=10000", 20, 10000 * 24 * 24, 25, 1, gr.SKINNY, 1, 25),
        ("LeNet conv2 N=64", 50, 64 * 8 * 8, 500, 1, gr.SMALL, 4, 128),
        ("short K", 64, 64, 100, 1, gr.SMALL, 1, 100),
    ],
)
def test_gemm_plan_for_known_layers(what, m, n, k, batch, tile, splits, k_chunk) -> None:
    plan = gr.gemm_plan(m, n, k, batch, sm_count=132)
    assert (plan.tile, plan.splits, plan.k_chunk) == (tile, splits, k_chunk), what
    assert plan.grid == (-(-n // tile.bn), -(-m // tile.bm), batch * splits)
    assert plan.block == (tile.threads, 1, 1)


def test_split_k_invariants() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        m, n, k = (int(v) for v in rng.integers(1, 3000, size=3))
        batch, sms = int(rng.integers(1, 4)), int(rng.choice([1, 8, 132]))
        plan = gr.gemm_plan(m, n, k, batch, sms)
        s, chunk = plan.splits, plan.k_chunk
        blocks = -(-m // plan.tile.bm) * -(-n // plan.tile.bn) * batch
        panels = -(-k // plan.tile.bk)
        assert s * chunk >= k and (s == 1 or (s - 1) * chunk < k)  # covers K, no empty split
        if blocks >= sms or panels < 16:  # the tiles fill the SMs, or K is shallow: no split
            assert (s, chunk) == (1, k)
        else:  # idle SMs and a deep K: at least two splits of >= 8 whole panels each, at most MAX_SPLITS
            assert 2 <= s <= min(gr.MAX_SPLITS, panels // 8)
            assert chunk % plan.tile.bk == 0 and chunk // plan.tile.bk >= 8


def test_gemm_plan_rejects_grids_beyond_cuda_limits() -> None:
    with pytest.raises(ValueError, match="65535"):
        gr.gemm_plan(64 * 70000, 64, 64, 1, 132, tile=gr.SMALL)


def test_flat_launch_and_chunks() -> None:
    assert gr.flat_launch(1, 132) == ((1, 1, 1), (256, 1, 1))
    assert gr.flat_launch(257, 132) == ((2, 1, 1), (256, 1, 1))
    assert gr.flat_launch(10**9, 132) == ((32 * 132, 1, 1), (256, 1, 1))  # grid-stride covers the rest
    assert gr.chunks(10, 3, 7) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert gr.chunks(5, 1) == [(0, 5)]
    assert gr.chunks(0, 4) == []
    n, per = 300, 3 * 227 * 227 + 1
    ranges = gr.chunks(n, per)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all((b - a) * per <= gr.INDEX_LIMIT for a, b in ranges)
    with pytest.raises(ValueError, match="exceeds"):
        gr.chunks(1, 2**31)


def test_gemv_k_splits() -> None:
    assert gpu_fc.gemv_k_splits(4096, 9216, 132) == 17  # 16 column blocks -> 17 K ranges of 543 rows
    assert gpu_fc.gemv_k_splits(100_000, 9216, 132) == 1
    assert gpu_fc.gemv_k_splits(10, 100, 132) == 1  # K too short to split


# -- compile checks ---------------------------------------------------------------------------------------
NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("source", gr.SOURCES)
def test_nvcc_compiles_for_sm90(source: str) -> None:
    path = gr.CUDA_DIR / f"{source}.cu"
    done = subprocess.run(
        [NVCC, "-arch=sm_90", "-cubin", "-o", "/dev/null", str(path)], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("tile", [gr.SMALL, gr.SKINNY], ids=["small", "skinny"])
def test_nvcc_compiles_the_other_tiles(tile: gr.Tile) -> None:
    defines = tile.defines() + (("TRANS_A", 1), ("TRANS_B", 1), ("KH", 11), ("KW", 11))
    cmd = [
        NVCC,
        "-arch=sm_90",
        "-cubin",
        "-o",
        "/dev/null",
        *gr.define_options(defines),
    ]
    for source in ("gemm.cu", "conv.cu"):
        done = subprocess.run([*cmd, str(gr.CUDA_DIR / source)], check=False, capture_output=True, text=True)
        assert done.returncode == 0, (source, done.stderr)


def _nvrtc_program():
    try:
        from cupy.cuda import compiler as cupy_compiler

        cupy_compiler._get_nvrtc_version()
        return cupy_compiler._NVRTCProgram
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable NVRTC here
        pytest.skip(f"CuPy's NVRTC is not usable here ({type(exc).__name__}: {exc})")


@pytest.mark.parametrize(
    ("source", "defines"),
    [(s, ()) for s in gr.SOURCES]
    + [("gemm", gr.SMALL.defines() + (("TRANS_B", 1),)), ("conv", gr.SMALL.defines() + (("KH", 5), ("KW", 5)))],
)
def test_nvrtc_compiles_as_cupy_does(source: str, defines: gr.Defines) -> None:
    program = _nvrtc_program()
    options = (*gr.define_options(defines), "-std=c++17", "-ftz=true", "-arch=sm_90")
    options += ("--device-as-default-execution-space",)
    binary, _ = program(gr.cuda_source(source), f"{source}.cu", (), (), method="cubin").compile(options)
    assert len(binary) > 1000


# -- no CuPy, no device ----------------------------------------------------------------------------------
def test_without_cupy_every_entry_point_says_so(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    monkeypatch.setattr(gr, "_active", None)
    with pytest.raises(GPUBackendError, match=r"needs CuPy.*pip install -e '\.\[gpu\]'"):
        gpu.runtime()
    assert "needs CuPy" in gpu.unavailable_reason()
    with pytest.raises(RuntimeError, match="needs CuPy"):
        Net.load(LENET, device="gpu")
    with pytest.raises(RuntimeError, match="needs CuPy"):
        gpu.relu_forward(np.zeros(3, np.float32))
    assert main(["time", LENET, "--device", "gpu", "--iterations", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crema: error: the GPU backend needs CuPy") and "Traceback" not in err


@pytest.mark.parametrize(
    ("count", "message"),
    [
        (RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"), "no usable CUDA device"),
        (0, "0 devices"),
    ],
)
def test_with_cupy_but_no_device(monkeypatch, count, message) -> None:
    def device_count() -> int:
        if isinstance(count, Exception):
            raise count
        return count

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=device_count))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(gr, "_active", None)
    with pytest.raises(GPUBackendError, match=message):
        gpu.runtime()
    with pytest.raises(RuntimeError, match=message):
        Net.load(LENET, device="gpu")


class _FakeCupy:
    """Just enough of CuPy for CupyRuntime.upload: pinned memory as host bytes, memcpyAsync as a memmove, events that
    record the order of copies and waits (checked: a staging buffer is refilled only after its last DMA's event)."""

    def __init__(self) -> None:
        import ctypes

        self.log: list[tuple] = []
        fake = self

        class Event:
            def __init__(self, disable_timing: bool = False) -> None:
                self.id = None

            def record(self, stream) -> None:
                self.id = len(fake.log)
                fake.log.append(("record", self.id))

            def synchronize(self) -> None:
                fake.log.append(("wait", self.id))

        class Runtime:
            memcpyHostToDevice = 1

            @staticmethod
            def memcpyAsync(dst, src, nbytes, kind, stream) -> None:
                assert kind == 1 and stream == 7
                fake.log.append(("copy", src, nbytes))
                ctypes.memmove(dst, src, nbytes)

        self.cuda = types.SimpleNamespace(
            alloc_pinned_memory=lambda n: bytearray(n),
            runtime=Runtime,
            Event=Event,
            get_current_stream=lambda: types.SimpleNamespace(ptr=7),
        )


class _FakeDeviceArray(np.ndarray):
    @property
    def data(self):  # CuPy's MemoryPointer: .ptr
        return types.SimpleNamespace(ptr=self.ctypes.data)

    @property
    def device(self):  # CuPy's Device: a context manager
        return contextlib.nullcontext()

    def set(self, host: np.ndarray) -> None:
        self[...] = host


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
@pytest.mark.parametrize("count", [5, 64, 999, 4097])
def test_cupy_runtime_upload_stages_through_pinned_buffers(monkeypatch, dtype, count) -> None:
    """kernels.gpu.backend.CupyRuntime.upload on a fake CuPy, with 64-byte staging buffers: every element arrives,
    cast to float32, in order, whatever the count (tails, one buffer, many rounds of the 3 buffers); a buffer is
    refilled only after waiting for its previous copy's event."""
    fake = _FakeCupy()
    rt = object.__new__(gr.CupyRuntime)
    rt.cp, rt._stages, rt._stage_done, rt._copiers = fake, [], [], None
    rt._upload_lock = __import__("threading").Lock()
    monkeypatch.setattr(gr.CupyRuntime, "STAGE_BYTES", 64)
    host = (np.random.default_rng(count).random(count) * 200).astype(dtype).reshape(1, -1)
    dst = np.full(host.shape, np.nan, np.float32).view(_FakeDeviceArray)
    rt.upload(dst, host)
    np.testing.assert_array_equal(np.asarray(dst), host.astype(np.float32))
    copies = [e for e in fake.log if e[0] == "copy"]
    assert sum(n for _, _, n in copies) == 4 * count if count * np.dtype(dtype).itemsize >= 64 else not copies
    last_record: dict[int, int] = {}
    for i, entry in enumerate(fake.log):  # the copy from a buffer follows a wait on that buffer's previous record
        if entry[0] == "copy" and entry[1] in last_record:
            assert ("wait", last_record[entry[1]]) in fake.log[:i]
        if entry[0] == "record":
            last_record[fake.log[i - 1][1]] = entry[1]
    with pytest.raises(ValueError, match="upload"):
        rt.upload(np.zeros((2, 3), np.float32).view(_FakeDeviceArray), np.zeros(5, np.float32))
    if rt._copiers is not None:
        rt._copiers.shutdown()
        rt._after_fork()  # what a forked child does first: no threads, no buffers; the next upload makes them again
        assert rt._copiers is None and rt._stages == [] and not rt._upload_lock.locked()
        rt.upload(dst, host[:, ::-1])  # a reversed view: copied contiguous first
        np.testing.assert_array_equal(np.asarray(dst), host[:, ::-1].astype(np.float32))
        rt._copiers.shutdown()


def test_cupy_runtime_upload_waits_for_every_copy_when_one_fails(monkeypatch) -> None:
    """A host copy that raises: the error reaches the caller, and only after every other copy into that staging
    buffer has finished (none still writes it when the next upload takes the lock)."""
    import threading
    import time

    fake = _FakeCupy()
    rt = object.__new__(gr.CupyRuntime)
    rt.cp, rt._stages, rt._stage_done, rt._copiers = fake, [], [], None
    rt._upload_lock = threading.Lock()
    monkeypatch.setattr(gr.CupyRuntime, "STAGE_BYTES", 64)
    finished = []
    real_copyto = np.copyto

    def copyto(dst, src, casting="same_kind"):
        if src[0] == 0:
            raise RuntimeError("copy failed")
        time.sleep(0.05)
        real_copyto(dst, src, casting=casting)
        finished.append(src[0])

    monkeypatch.setattr(gr.np, "copyto", copyto)
    host = np.arange(16, dtype=np.float32)  # one 64-byte buffer, cut into 4 copies; the first one fails
    with pytest.raises(RuntimeError, match="copy failed"):
        rt.upload(np.zeros(16, np.float32).view(_FakeDeviceArray), host)
    assert sorted(finished) == [4.0, 8.0, 12.0] and not rt._upload_lock.locked()
    rt._copiers.shutdown()


def test_unknown_device_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="device must be one of cpu, gpu, got 'tpu'"):
        Net.load(LENET, device="tpu")


def test_importing_crema_does_not_import_cupy() -> None:
    code = (
        "import sys\n"
        "import net, crema, net.device, kernels.gpu\n"
        "from net import Net\n"
        f"Net.load({LENET!r})\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
        "sys.modules['cupy'] = None\n"
        "import importlib; importlib.reload(kernels.gpu)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_bench_gpu_exits_cleanly_without_a_gpu(monkeypatch, capsys) -> None:
    from benchmarks import bench_gpu

    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(gr, "_active", None)
    monkeypatch.setenv("CUPY_TF32", "0")
    assert bench_gpu.main(["--only", "sgemm"]) == 2
    assert "bench_gpu: no GPU to benchmark on: the GPU backend needs CuPy" in capsys.readouterr().err


def test_bench_gpu_tiles_exits_cleanly_without_a_gpu(monkeypatch, capsys) -> None:
    from benchmarks import bench_gpu_tiles

    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(gr, "_active", None)
    assert bench_gpu_tiles.main([]) == 2
    assert "bench_gpu_tiles: no GPU to benchmark on: the GPU backend needs CuPy" in capsys.readouterr().err


def test_bench_gpu_counts_net_flops() -> None:
    from benchmarks.bench_gpu import _net_flops

    conv1, conv2 = 2 * 64 * 20 * 24 * 24 * 25, 2 * 64 * 50 * 8 * 8 * 500
    ip1, ip2 = 2 * 64 * 500 * 800, 2 * 64 * 10 * 500
    assert _net_flops(Net.load(LENET)) == conv1 + conv2 + ip1 + ip2


def test_cpu_and_gpu_launchers_share_signatures() -> None:
    """Every name a layer calls through kernels_for exists in kernels.gpu with the CPU function's parameters
    (same names, kinds and defaults; the CPU inner_product_forward alone has relu=False, the fused IP + ReLU)."""
    from net import device

    cpu_functions = {
        "conv2d_forward": conv.conv2d_forward,
        "inner_product_forward": fc.inner_product_forward,
        "pool2d_forward": pool.pool2d_forward,
        "lrn_forward": lrn.lrn_forward,
        "batchnorm_forward_inference": elementwise.batchnorm_forward_inference,
    }
    for name in vars(device.CPU):
        cpu_fn = cpu_functions.get(name, getattr(device.CPU, name))
        cpu_params = list(inspect.signature(cpu_fn).parameters.values())
        gpu_params = list(inspect.signature(getattr(gpu, name)).parameters.values())
        cpu_only = [p.name for p in cpu_params[len(gpu_params) :]]
        assert len(gpu_params) <= len(cpu_params), name
        assert cpu_only == (["relu"] if name == "inner_product_forward" else []), name  # fused IP + ReLU: CPU only
        for a, b in zip(cpu_params, gpu_params):
            assert (a.name, a.kind, a.default) == (b.name, b.kind, b.default), (name, a, b)
    gemm_cpu = inspect.signature(cpu_gemm).parameters
    assert [(p.name, p.default) for p in gemm_cpu.values()] == [
        (p.name, p.default) for p in inspect.signature(gpu_gemm.gemm).parameters.values()
    ]


def test_kernels_for_picks_by_array_and_cpu_conv_takes_relu(dev) -> None:
    from net import device

    rng = np.random.default_rng(10)
    x, w, b = randn(rng, 1, 2, 6, 6), randn(rng, 3, 2, 3, 3), randn(rng, 3)
    assert device.kernels_for(x) is device.CPU
    assert device.kernels_for(up(x)) is gpu
    got = device.CPU.conv2d_forward(x, w, b, relu=True, pad=1)
    np.testing.assert_array_equal(got, np.maximum(conv.conv2d_forward(x, w, b, pad=1), 0))


# -- launchers against the CPU kernels (emulator here; a GPU where there is one) ------------------------
GEMM_SHAPES = [(1, 1, 1), (130, 70, 37), (64, 64, 64), (33, 200, 260), (5, 300, 900)]


@pytest.mark.parametrize(("m", "n", "k"), GEMM_SHAPES)
@pytest.mark.parametrize(("trans_a", "trans_b"), [(False, False), (False, True), (True, False), (True, True)])
def test_gemm(dev, m, n, k, trans_a, trans_b) -> None:
    rng = np.random.default_rng(m * n + k)
    a = randn(rng, *((k, m) if trans_a else (m, k)))
    b = randn(rng, *((n, k) if trans_b else (k, n)))
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    assert_gemm_close(down(gpu_gemm.gemm(up(a), up(b), trans_a=trans_a, trans_b=trans_b)), want, k)


@pytest.mark.parametrize("tile", gr.TILES, ids=["large", "small", "skinny"])
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize(("trans_a", "trans_b"), [(False, False), (True, True)])
def test_sgemm_tiles_splits_bias_relu(dev, tile, splits, trans_a, trans_b) -> None:
    """Both tiles with and without split-K, bias per row and per column, ReLU, accumulate, ragged edges."""
    rng = np.random.default_rng(1)
    m, n, k = tile.bm + 3, 2 * tile.bn - 5, 8 * tile.bk * 3 + 1
    a = randn(rng, *((k, m) if trans_a else (m, k)))
    b = randn(rng, *((n, k) if trans_b else (k, n)))
    prod = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    for bias_mode, bias in ((1, randn(rng, m)), (2, randn(rng, n))):
        c = dev.empty((m, n))
        gpu_gemm.sgemm(dev, up(a), up(b), c, trans_a=trans_a, trans_b=trans_b, bias=up(bias), bias_mode=bias_mode,
                   relu=True, tile=tile, splits=splits)  # fmt: skip
        want = np.maximum(prod + (bias[:, None] if bias_mode == 1 else bias[None, :]), 0)
        assert_gemm_close(down(c), want, k)
    c0 = randn(rng, m, n)
    c = up(c0)
    gpu_gemm.sgemm(dev, up(a), up(b), c, trans_a=trans_a, trans_b=trans_b, accumulate=True, tile=tile, splits=splits)
    assert_gemm_close(down(c), prod + c0, k)


def test_gemm_on_unaligned_views(dev) -> None:
    """Operands 4 bytes off 16-byte alignment take the scalar-load paths (no float4)."""
    rng = np.random.default_rng(2)
    m, n, k = 70, 68, 40
    a, b = randn(rng, m, k), randn(rng, k, n)
    abuf, bbuf, cbuf = up(np.zeros(m * k + 1, np.float32)), up(np.zeros(k * n + 1, np.float32)), dev.empty((m * n + 1,))
    av, bv, cv = abuf[1:].reshape(m, k), bbuf[1:].reshape(k, n), cbuf[1:].reshape(m, n)
    av[...] = up(a)
    bv[...] = up(b)
    assert dev.ptr(av) % 16 and dev.ptr(bv) % 16 and dev.ptr(cv) % 16
    gpu_gemm.gemm(av, bv, out=cv)
    assert_gemm_close(down(cv), a.astype(np.float64) @ b, k)
    assert_gemm_close(down(gpu_gemm.sgemm_naive(up(a), up(b))), a.astype(np.float64) @ b, k)


CONV_CASES = [  # x shape, w shape, stride, pad, dilation, group, bias, relu
    ((2, 3, 11, 13), (8, 3, 3, 3), 1, 1, 1, 1, True, True),
    ((1, 4, 9, 9), (6, 2, 3, 3), 2, 0, 2, 2, True, False),
    ((3, 6, 7, 7), (10, 6, 1, 1), 1, 0, 1, 1, False, False),
    ((2, 5, 8, 10), (4, 5, 2, 3), (1, 2), (1, 0), 1, 1, True, True),
    ((1, 3, 35, 35), (16, 3, 11, 11), 4, 0, 1, 1, True, True),  # CaffeNet conv1-like
    ((1, 32, 13, 13), (48, 16, 3, 3), 1, 1, 1, 2, True, True),  # CaffeNet conv5-like: split-K + ReLU afterwards
    ((4, 20, 12, 12), (50, 20, 5, 5), 1, 0, 1, 1, True, False),  # LeNet conv2
    ((2, 8, 9, 11), (8, 1, 3, 3), 1, 1, 1, 8, True, True),  # depthwise (conv2d_depthwise)
    ((1, 6, 12, 12), (6, 1, 4, 4), 2, 1, 1, 6, True, False),  # depthwise, EfficientNet's stride-2 (k+1) kernel
    ((2, 5, 10, 9), (5, 1, 5, 5), (2, 1), (2, 1), 2, 5, False, True),  # depthwise, dilated, no bias
]


@pytest.mark.parametrize(("xs", "ws", "stride", "pad", "dilation", "group", "bias", "relu"), CONV_CASES)
def test_conv2d(dev, xs, ws, stride, pad, dilation, group, bias, relu) -> None:
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x, w = randn(rng, *xs), randn(rng, *ws)
    b = randn(rng, ws[0]) if bias else None
    kw = {"stride": stride, "pad": pad, "dilation": dilation, "group": group}
    y = gpu.conv2d_forward(up(x), up(w), None if b is None else up(b), relu=relu, **kw)
    want = conv.conv2d_forward_ref(x, w, b, **kw).astype(np.float64)
    assert_gemm_close(down(y), np.maximum(want, 0) if relu else want, ws[1] * ws[2] * ws[3])


def test_depthwise_conv2d_caps_relu6(dev) -> None:
    """conv2d_depthwise with ReLU6 (relu_max): the fused ReLU in the kernel, then the clip at 6."""
    rng = np.random.default_rng(6)
    x, w, b = randn(rng, 2, 8, 10, 10) * 4, randn(rng, 8, 1, 3, 3), randn(rng, 8)
    y = gpu.conv2d_forward(up(x), up(w), up(b), pad=(1, 1), group=8, relu=True, relu_max=6.0)
    want = np.clip(conv.conv2d_forward_ref(x, w, b, pad=1, group=8).astype(np.float64), 0.0, 6.0)
    assert 0 < (want == 6.0).mean() < 0.5
    assert_gemm_close(down(y), want, 9)


def test_conv2d_errors_name_the_problem(dev) -> None:
    x, w = up(np.zeros((1, 4, 5, 5), np.float32)), up(np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="expected 3 input channels"):
        gpu.conv2d_forward(x, w, None)
    with pytest.raises(ValueError, match="expected a device array"):
        gpu.conv2d_forward(np.zeros((1, 3, 5, 5), np.float32), w, None)


@pytest.mark.parametrize(("m", "k", "n"), [(1, 50, 20), (3, 64, 33), (8, 130, 70), (9, 64, 20), (40, 50, 70)])
@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product(dev, m, k, n, transpose) -> None:
    """GEMV paths (M <= 8: K % 4 == 0 takes float4 loads), sgemm beyond; x flattened from (M, K/2, 2)."""
    rng = np.random.default_rng(m + k + n)
    x = randn(rng, m, k // 2, 2) if k % 2 == 0 else randn(rng, m, k)
    w = randn(rng, k, n) if transpose else randn(rng, n, k)
    b = randn(rng, n)
    y = gpu.inner_product_forward(up(x), up(w), up(b), axis=1, transpose=transpose)
    want = fc.inner_product_forward_ref(x, w, b, axis=1, transpose=transpose, dtype=np.float64)
    assert_gemm_close(down(y), want, k)
    y = gpu.inner_product_forward(up(x), up(w), None, axis=1, transpose=transpose)
    assert_gemm_close(down(y), fc.inner_product_forward_ref(x, w, None, transpose=transpose, dtype=np.float64), k)


POOL_CASES = [  # shape, kernel, stride, pad, round_mode
    ((2, 3, 13, 13), 3, 2, 0, "CEIL"),
    ((1, 2, 6, 6), 3, 2, 1, "CEIL"),  # last window overhangs the right padding: AVE divisor clipped
    ((1, 2, 5, 5), 3, 2, 1, "CEIL"),  # pad > 0 correction drops a window
    ((2, 2, 6, 7), 2, 4, 1, "FLOOR"),
    ((1, 1, 4, 4), 1, 2, 0, "CEIL"),  # a window past the image: MAX -FLT_MAX, AVE 0 / divisor
    ((2, 3, 12, 10), (3, 2), (2, 1), (1, 0), "CEIL"),
]


@pytest.mark.parametrize(("shape", "kernel", "stride", "pad", "mode"), POOL_CASES)
def test_pool2d(dev, shape, kernel, stride, pad, mode) -> None:
    rng = np.random.default_rng(sum(shape))
    x = randn(rng, *shape)
    x.reshape(-1)[::7] = np.nan  # NaN is never the maximum
    x.reshape(-1)[3::11] = x.reshape(-1)[4::11]  # ties: the first in row-major order wins
    kw = {"kernel": kernel, "stride": stride, "pad": pad, "round_mode": mode}
    want_mask = np.empty((*shape[:2], *pool.pool2d_output_shape(shape[2:], kernel, stride, pad, mode)), np.int32)
    want = pool.pool2d_forward(x, method="MAX", mask=want_mask, **kw)
    mask = dev.empty(want.shape, np.int32)
    got = gpu.pool2d_forward(up(x), method="MAX", mask=mask, **kw)
    np.testing.assert_array_equal(down(got), want)
    np.testing.assert_array_equal(down(mask), want_mask)
    x = randn(rng, *shape)
    assert_near(down(gpu.pool2d_forward(up(x), method="AVE", **kw)), pool.pool2d_forward(x, method="AVE", **kw))


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize(("local_size", "beta"), [(5, 0.75), (3, 1.0), (5, 0.5), (3, 0.6)])
@pytest.mark.parametrize("shape", [(2, 7, 5, 6), (1, 2, 3, 3)])
def test_lrn(dev, region, local_size, beta, shape) -> None:
    rng = np.random.default_rng(local_size)
    x = randn(rng, *shape) * 3
    kw = {"local_size": local_size, "alpha": 1e-2, "beta": beta, "k": 2.0, "region": region}
    assert_near(down(gpu.lrn_forward(up(x), **kw)), lrn.lrn_forward(x, **kw))


def test_activations(dev) -> None:
    rng = np.random.default_rng(3)
    x = randn(rng, 3, 5, 77) * 4
    for slope in (0.0, 0.1):
        np.testing.assert_array_equal(down(gpu.relu_forward(up(x), slope)), activations.relu_forward(x, slope))
    xd = up(x)
    assert gpu.relu_forward(xd, out=xd) is xd
    np.testing.assert_array_equal(down(xd), activations.relu_forward(x))
    assert_near(down(gpu.sigmoid_forward(up(x))), activations.sigmoid_forward(x))
    assert_near(down(gpu.tanh_forward(up(x))), activations.tanh_forward(x))
    np.testing.assert_array_equal(down(gpu.clip_forward(up(x), 0.0, 6.0)), activations.clip_forward(x, 0.0, 6.0))
    xd = up(x)
    assert gpu.clip_forward(xd, -1.0, 2.5, out=xd) is xd
    np.testing.assert_array_equal(down(xd), activations.clip_forward(x, -1.0, 2.5))


@pytest.mark.parametrize(("shape", "axis"), [((3, 1000), 1), ((4, 7), 1), ((2, 5, 3, 4), 1), ((2, 3, 6), -1)])
def test_softmax(dev, shape, axis) -> None:
    rng = np.random.default_rng(4)
    x = randn(rng, *shape) * 8
    want = activations.softmax_forward(x, axis=axis)
    assert_near(down(gpu.softmax_forward(up(x), axis=axis)), want)
    xd = up(x)
    gpu.softmax_forward(xd, axis=axis, out=xd)
    assert_near(down(xd), want)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_concat(dev, axis) -> None:
    rng = np.random.default_rng(5)
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for i, size in enumerate((1, 5, 0)):
        shapes[i][axis] = size
    xs = [randn(rng, *s) for s in shapes]
    got = gpu.concat_forward([up(x) for x in xs], axis=axis)
    np.testing.assert_array_equal(down(got), elementwise.concat_forward(xs, axis=axis))


@pytest.mark.parametrize("operation", ["SUM", "PROD", "MAX"])
def test_eltwise(dev, operation) -> None:
    rng = np.random.default_rng(6)
    xs = [randn(rng, 2, 3, 5, 7) for _ in range(3)]
    xs[1].reshape(-1)[::3] = xs[0].reshape(-1)[::3]  # ties between bottoms 0 and 1
    coeffs = [0.5, -2.0, 3.0] if operation == "SUM" else None
    want = elementwise.eltwise_forward(xs, operation, coeffs)
    np.testing.assert_array_equal(down(gpu.eltwise_forward([up(x) for x in xs], operation, coeffs)), want)
    if operation == "MAX":
        want_mask = np.empty(xs[0].shape, np.int32)
        elementwise.eltwise_forward(xs, operation, mask=want_mask)
        mask = dev.empty(xs[0].shape, np.int32)
        gpu.eltwise_forward([up(x) for x in xs], operation, mask=mask)
        np.testing.assert_array_equal(down(mask), want_mask)
    ds = [up(x) for x in xs]
    gpu.eltwise_forward(ds, operation, coeffs, out=ds[0])
    np.testing.assert_array_equal(down(ds[0]), want)


def test_scale_bias_batchnorm(dev) -> None:
    rng = np.random.default_rng(7)
    x = randn(rng, 2, 6, 4, 5)
    gamma, beta = randn(rng, 6), randn(rng, 6)
    got = gpu.scale_forward(up(x), up(gamma), up(beta), axis=1)
    np.testing.assert_array_equal(down(got), elementwise.scale_forward(x, gamma, beta, axis=1))
    g0 = randn(rng, 2)
    np.testing.assert_array_equal(
        down(gpu.scale_forward(up(x), up(g0), axis=0)), elementwise.scale_forward(x, g0, axis=0)
    )
    g2 = randn(rng, 4, 5)
    np.testing.assert_array_equal(down(gpu.bias_forward(up(x), up(g2), axis=2)), elementwise.bias_forward(x, g2, 2))
    mean, var = randn(rng, 6), np.abs(randn(rng, 6)) + 0.1
    for s in (2.0, 0.0):
        got = gpu.batchnorm_forward_inference(up(x), up(mean), up(var), s, eps=1e-5)
        assert_near(down(got), elementwise.batchnorm_forward_inference(x, mean, var, s, eps=1e-5))


def test_host_arrays_are_rejected(dev) -> None:
    with pytest.raises(ValueError, match="ReLU input: expected a device array"):
        gpu.relu_forward(np.zeros(3, np.float32))


# -- whole nets and the CLI ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "batch"), [(LENET, 3), (CAFFENET, 1)], ids=["lenet", "caffenet"])
def test_net_on_gpu_matches_cpu(dev, model, batch) -> None:
    cpu = Net.load(model, phase="test")
    randomize(cpu, seed=5)
    x = np.random.default_rng(8).standard_normal((batch, *cpu.blob(cpu.inputs[0]).shape[1:])).astype(np.float32)
    want = cpu.forward(**{cpu.inputs[0]: x})
    net = Net.load(model, phase="test", device="gpu")
    randomize(net, seed=5)
    got = net.forward(**{net.inputs[0]: x})
    for name, value in want.items():
        assert type(got[name]) is np.ndarray
        assert_near(got[name], value, NET_ATOL)
    assert all(dev.is_array(p) for ps in net.params.values() for p in ps)  # weights live on the device
    fused = [layer.name for layer in net.layers if getattr(layer, "fused_relu", False)]
    assert fused == (["conv1", "conv2", "conv3", "conv4", "conv5"] if model == CAFFENET else [])
    x2 = np.random.default_rng(9).standard_normal(x.shape)  # float64: cast on the way into the device input
    data = net.blob(net.inputs[0]).data
    got = net.forward(**{net.inputs[0]: x2})
    assert net.blob(net.inputs[0]).data is data  # the same shape goes into the same device array (upload_into)
    for name, value in cpu.forward(**{cpu.inputs[0]: x2}).items():
        assert_near(got[name], value, NET_ATOL)
    if model == LENET:  # another batch size: blobs are reshaped and re-created on the device
        got = net.forward(**{net.inputs[0]: x[:2]})
        assert_near(got["prob"], want["prob"][:2], NET_ATOL)


def test_gpu_net_limits(dev) -> None:
    text = (
        'layer { name: "data" type: "Input" top: "data" top: "label"\n'
        "  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }\n"
        'layer { name: "loss" type: "EuclideanLoss" bottom: "data" bottom: "label" top: "loss" }\n'
    )
    with pytest.raises(GPUBackendError, match=r"layers without GPU kernels: 'loss' \(EuclideanLoss\)"):
        Net.from_string(text, device="gpu")
    text = (
        'layer { name: "data" type: "Input" top: "data" top: "label"\n'
        "  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }\n"
        'layer { name: "scale" type: "Scale" bottom: "data" top: "s" }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" top: "loss" }\n'
    )
    with pytest.raises(GPUBackendError, match=r"layers without GPU backward kernels: 'scale' \(Scale\)"):
        Net.from_string(text, phase="train", device="gpu")
    Net.from_string(text, phase="test", device="gpu")  # inference: Scale runs forward only


def test_cli_time_and_classify_on_gpu(dev, tmp_path, capsys) -> None:
    from PIL import Image

    assert main(["time", LENET, "--device", "gpu", "--batch", "2", "--iterations", "1"]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "Average Forward pass" in out
    net = Net.load(LENET)
    randomize(net, seed=11)
    weights = tmp_path / "lenet.caffemodel"
    net.save(weights)
    image = tmp_path / "digit.png"
    Image.fromarray(np.tri(40, 40, 5, dtype=np.uint8) * 255).save(image)
    results = []
    for device in ("cpu", "gpu"):
        assert main(["classify", LENET, str(weights), str(image), "--json", "--device", device]) == 0
        results.append(json.loads(capsys.readouterr().out))
    (cpu,), (got,) = results
    assert [p["index"] for p in got["predictions"]] == [p["index"] for p in cpu["predictions"]]
    assert np.allclose([p["prob"] for p in got["predictions"]], [p["prob"] for p in cpu["predictions"]], atol=1e-5)


# -- the emulator itself ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def emu_orders():
    if compiler() is None:
        pytest.skip("g++ not found: the CUDA emulator cannot be built")
    return [EmuRuntime(default_build_dir(), order=order) for order in (0, 2)]


def test_kernels_with_barriers_in_every_thread_order(emu_orders) -> None:
    """A missing __syncthreads shows as a wrong answer in some order: forward and shuffled (reverse runs above)."""
    rng = np.random.default_rng(9)
    a, b = randn(rng, 70, 90), randn(rng, 90, 75)
    x, w = randn(rng, 2, 4, 9, 9), randn(rng, 6, 4, 3, 3)
    z = randn(rng, 3, 300)
    for rt in emu_orders:
        with gpu.use_runtime(rt):
            for tile in gr.TILES:
                c = rt.empty((70, 75))
                gpu_gemm.sgemm(rt, up(a), up(b), c, trans_a=False, trans_b=False, tile=tile, splits=2)
                assert_gemm_close(down(c), a.astype(np.float64) @ b, 90)
            y = gpu.conv2d_forward(up(x), up(w), None, pad=1)
            assert_gemm_close(down(y), conv.conv2d_forward_ref(x, w, None, pad=1), 36)
            assert_near(down(gpu.softmax_forward(up(z))), activations.softmax_forward(z))
            w7 = randn(rng, 7, 300)
            y = gpu.inner_product_forward(up(z[:2]), up(w7), None)
            assert_gemm_close(down(y), z[:2].astype(np.float64) @ w7.T, 300)


def test_emulator_catches_bad_launches(emu_orders) -> None:
    rt = EmuRuntime(default_build_dir())  # its own: the out-of-bounds write below spoils a guard band for good
    with gpu.use_runtime(rt):
        a, b = up(np.ones((4, 4), np.float32)), up(np.ones((4, 4), np.float32))
        small = rt.empty((3, 4))
        args = (a, b, small, np.int32(4), np.int32(4), np.int32(4), np.int32(4), np.int32(4), np.int32(4))
        with pytest.raises(AssertionError, match=r"wrote outside an array of shape \(3, 4\) float32"):
            gr.launch(rt, "gemm", "sgemm_naive", (), (1, 1, 1), (4, 4, 1), args)
        with pytest.raises(TypeError, match="argument 3: expected int32, got int"):
            gr.launch(rt, "gemm", "sgemm_naive", (), (1, 1, 1), (4, 4, 1), (a, b, a, 4, *args[4:]))
        with pytest.raises(TypeError, match="argument 0: expected a device array, got ndarray"):
            gr.launch(rt, "gemm", "sgemm_naive", (), (1, 1, 1), (4, 4, 1), (np.ones(4, np.float32), *args[1:]))
        with pytest.raises(ValueError, match="outside CUDA's limits"):
            gr.launch(rt, "gemm", "sgemm_naive", (), (1, 1, 1), (64, 32, 1), args)
