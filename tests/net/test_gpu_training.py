"""Training on the GPU path (Solver(device="gpu"), `crema train --device gpu`), run on the CUDA emulator
(tests/kernels/cuda_emu.py) since no GPU is needed to check the logic; the same tests run on a real GPU where CuPy sees
one (fixture `runtime`). Tiny batches of real MNIST digits (the 10,000 test digits shipped in data/mnist):

- LeNet, a few iterations: the per-iteration losses on the emulated GPU equal the CPU's to 1e-4 relative, and so do
  the weights after training (to 1e-4 of their scale);
- a snapshot taken on the GPU path resumes on the CPU and one taken on the CPU resumes on the GPU (same files);
- a GPU run resumed from its own snapshot repeats the uninterrupted GPU run bit for bit (data staging thread,
  device Dropout RNG and history included);
- limits: solver types without a fused GPU update, and `--device gpu` without CuPy, fail with a clear message.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from crema import main
from kernels import gpu
from kernels.gpu import GPUBackendError
from kernels.gpu import backend as gr
from net.datasets import load_mnist, write_idx
from net.prototxt_loader import load_solver_prototxt
from net.solver import Solver
from tests.conftest import ROOT
from tests.kernels.cuda_emu import runtime_for

TRAIN_TEST = (ROOT / "examples/mnist/lenet_train_test.prototxt").read_text()
SOLVER = """base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 power: 0.75
random_seed: 5 display: 1 test_iter: 2 test_interval: 4"""

SMALL_NET = """name: "small"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 } data_param { source: "DIGITS/train" batch_size: 3 } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 } data_param { source: "DIGITS/test" batch_size: 3 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 5 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 } }
layer { name: "drop1" type: "Dropout" bottom: "norm1" top: "norm1" dropout_param { dropout_ratio: 0.3 } }
layer { name: "ip1" type: "InnerProduct" bottom: "norm1" top: "ip1"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""


@pytest.fixture(scope="module", params=["emulator", "cuda"])
def runtime(request):
    return runtime_for(request.param)


@pytest.fixture
def dev(runtime):
    with gpu.use_runtime(runtime):
        yield runtime


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("digits")
    images, labels = load_mnist("test")
    write_idx(folder / "train-images-idx3-ubyte", images[:300])
    write_idx(folder / "train-labels-idx1-ubyte", labels[:300])
    write_idx(folder / "t10k-images-idx3-ubyte", images[300:400])
    write_idx(folder / "t10k-labels-idx1-ubyte", labels[300:400])
    return folder


def _solver_file(folder: Path, digits: Path, extra: str, net: str | None = None) -> Path:
    if net is None:
        net = (
            TRAIN_TEST.replace("examples/mnist/mnist_train_lmdb", str(digits / "train"))
            .replace("examples/mnist/mnist_test_lmdb", str(digits / "test"))
            .replace("batch_size: 64", "batch_size: 4")
            .replace("batch_size: 100", "batch_size: 4")
        )
    else:
        net = net.replace("DIGITS", str(digits))
    (folder / "net.prototxt").write_text(net)
    path = folder / "solver.prototxt"
    path.write_text(f'net: "{folder / "net.prototxt"}"\nsnapshot_prefix: "{folder / "snap"}"\n{SOLVER}\n{extra}\n')
    return path


def _solver(path: Path, device: str, **kw) -> Solver:
    return Solver(load_solver_prototxt(str(path)), source=str(path), progress=False, log=lambda _: None, device=device,
                  **kw)  # fmt: skip


def _weights(solver: Solver) -> list[np.ndarray]:
    from net.device import host

    return [np.array(host(blob.data)) for _, _, blob, _, _ in solver.learnable]


def _losses(solver: Solver) -> list[float]:
    return [r["loss"] for r in solver.records if r["phase"] == "train"]


def _assert_weights_close(a: list[np.ndarray], b: list[np.ndarray], rel: float = 1e-4) -> None:
    for x, y in zip(a, b):
        scale = max(float(np.abs(y).max()), 1e-3)
        assert float(np.abs(x - y).max()) <= rel * scale


def test_lenet_on_the_gpu_path_matches_the_cpu(tmp_path, digits, dev) -> None:
    path = _solver_file(tmp_path, digits, "max_iter: 6")
    cpu = _solver(path, "cpu")
    cpu.solve()
    gpu_solver = _solver(path, "gpu")
    assert all(dev.is_array(blob.data) for _, _, blob, _, _ in gpu_solver.learnable)
    gpu_solver.solve()
    want, got = _losses(cpu), _losses(gpu_solver)
    assert len(got) == len(want) == 6
    np.testing.assert_allclose(got, want, rtol=1e-4)
    tests_cpu = [r for r in cpu.records if r["phase"] == "test0"]
    tests_gpu = [r for r in gpu_solver.records if r["phase"] == "test0"]
    assert [r["accuracy"] for r in tests_gpu] == [r["accuracy"] for r in tests_cpu]
    _assert_weights_close(_weights(gpu_solver), _weights(cpu))


def test_snapshots_cross_devices(tmp_path, digits, dev) -> None:
    """GPU snapshot at iteration 3 -> resume on the CPU to 6, and CPU snapshot -> resume on the GPU: both end where
    an uninterrupted CPU run ends (to float32 reordering)."""
    path = _solver_file(tmp_path, digits, "max_iter: 6 snapshot: 3")
    full = _solver(path, "cpu")
    full.solve()
    for first, second in (("gpu", "cpu"), ("cpu", "gpu")):
        s = _solver(path, first)
        s.step(3)
        model, state = s.snapshot()
        assert Path(model).exists() and Path(state).exists()
        resumed = _solver(path, second)
        resumed.solve(resume=state)
        assert resumed.iter == 6
        _assert_weights_close(_weights(resumed), _weights(full))
        np.testing.assert_allclose(_losses(resumed), _losses(full)[3:], rtol=1e-4)


def test_gpu_resume_repeats_the_uninterrupted_gpu_run(tmp_path, digits, dev) -> None:
    """Dropout (device RNG), MAX pooling masks, LRN, the staged Data layer and momentum history: a run resumed from
    its snapshot draws the same batches and masks, so it ends bit for bit where the uninterrupted run ends."""
    path = _solver_file(tmp_path, digits, "max_iter: 6", SMALL_NET)
    full = _solver(path, "gpu")
    full.solve()
    first = _solver(path, "gpu")
    first.step(4)
    _, state = first.snapshot()
    resumed = _solver(path, "gpu")
    resumed.solve(resume=state)
    for a, b in zip(_weights(resumed), _weights(full)):
        np.testing.assert_array_equal(a, b)
    assert _losses(resumed) == _losses(full)[4:]
    assert all(np.isfinite(_losses(full)))


def test_nesterov_and_clipping_on_the_gpu_path(tmp_path, digits, dev) -> None:
    path = _solver_file(tmp_path, digits, 'max_iter: 3 type: "Nesterov" clip_gradients: 0.1 iter_size: 2')
    cpu, gpu_solver = _solver(path, "cpu"), _solver(path, "gpu")
    cpu.solve()
    gpu_solver.solve()
    np.testing.assert_allclose(_losses(gpu_solver), _losses(cpu), rtol=1e-4)
    _assert_weights_close(_weights(gpu_solver), _weights(cpu))


def test_gpu_solver_limits(tmp_path, digits, dev) -> None:
    path = _solver_file(tmp_path, digits, 'max_iter: 1 type: "AdaGrad"')
    with pytest.raises(GPUBackendError, match="solver type AdaGrad has no GPU update"):
        _solver(path, "gpu")


def test_train_cli_device_gpu_without_cupy(tmp_path, digits, monkeypatch, capsys) -> None:
    path = _solver_file(tmp_path, digits, "max_iter: 1")
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(gr, "_active", None)
    assert main(["train", "--solver", str(path), "--device", "gpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crema: error: the GPU backend needs CuPy") and "Traceback" not in err


ALL_LAYERS = """name: "mix" force_backward: true
layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "conv2" type: "Convolution" bottom: "data" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 3 group: 1 } }
layer { name: "sig" type: "Sigmoid" bottom: "conv1" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "conv2" top: "tanh" }
layer { name: "sum" type: "Eltwise" bottom: "sig" bottom: "tanh" top: "sum" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "max" type: "Eltwise" bottom: "sig" bottom: "tanh" top: "max" eltwise_param { operation: MAX } }
layer { name: "prod" type: "Eltwise" bottom: "conv1" bottom: "conv2" top: "prod" eltwise_param { operation: PROD } }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "max" bottom: "prod" top: "cat" }
layer { name: "pool" type: "Pooling" bottom: "cat" top: "pool" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "lrn" type: "LRN" bottom: "pool" top: "lrn" lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL } }
layer { name: "flat" type: "Flatten" bottom: "lrn" top: "flat" }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "soft" type: "Softmax" bottom: "ip" top: "soft" }
layer { name: "ip2" type: "InnerProduct" bottom: "soft" top: "ip2" inner_product_param { num_output: 3 transpose: true } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" loss_weight: 2 }
"""


def test_every_gpu_backward_layer_in_one_net_matches_the_cpu(dev) -> None:
    """Convolution, Split (automatic), Sigmoid, TanH, Eltwise SUM / MAX / PROD, Concat, AVE Pooling, LRN, Flatten,
    InnerProduct (both layouts), Softmax, SoftmaxWithLoss: parameter and input gradients of a GPU net equal the CPU
    net's (same weights; float32 reordering only)."""
    from net import Net
    from net.device import host
    from tests.conftest import randomize

    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
    label = np.array([2, 0], np.float32)
    grads = []
    for device in ("cpu", "gpu"):
        net = Net.from_string(ALL_LAYERS, phase="train", device=device)
        randomize(net, seed=4)
        net.set_input("data", x)
        net.set_input("label", label)
        net.clear_param_diffs()
        loss = net.forward_loss()
        net.backward()
        diffs = [np.array(host(b.diff)) for layer in net.layers for b in layer.blobs]
        grads.append((loss, diffs, np.array(host(net.blob("data").diff))))
    (loss_c, diffs_c, dx_c), (loss_g, diffs_g, dx_g) = grads
    assert abs(loss_g - loss_c) <= 1e-5 * abs(loss_c)
    for a, b in zip(diffs_g, diffs_c):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(float(np.abs(b).max()), 1e-3))
    np.testing.assert_allclose(dx_g, dx_c, rtol=0, atol=1e-5 * float(np.abs(dx_c).max()))


def test_train_cli_on_the_gpu_path(tmp_path, digits, dev, capsys) -> None:
    path = _solver_file(tmp_path, digits, "max_iter: 2 snapshot: 2")
    assert main(["train", "--solver", str(path), "--device", "gpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Iteration 2, Testing net (#0)" not in out and "Optimization Done." in out
    assert (tmp_path / "snap_iter_2.caffemodel").exists() and (tmp_path / "snap_iter_2.solverstate").exists()
    assert (tmp_path / "snap_log.csv").exists()
