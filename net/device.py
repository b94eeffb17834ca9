"""Device switch: which kernels a layer calls, and moving a Net's arrays to and from the GPU.

    net = Net.load("deploy.prototxt", "weights.caffemodel", device="gpu")  # GPUBackendError without CuPy or a GPU
    probs = net.forward(data=x)   # x NumPy; weights uploaded on the first forward, activations stay on the device,
                                  # outputs come back as NumPy arrays (one copy each)

Layers call `kernels_for(array).conv2d_forward(...)`: CPU kernels for NumPy arrays, `kernels.gpu` for arrays of
the active GPU runtime, so a Net's layer objects are the same on both devices. `check_device` names the device or
raises GPUBackendError (a RuntimeError); `prepare` checks a GPU net's layers and fuses each in-place ReLU into the
convolution before it; `to_device` uploads parameters (once: they stay device arrays) and inputs (every forward);
`to_host` brings an output back. Importing this module never imports CuPy.

Limits: inference only (TEST phase, the layer types in GPU_LAYERS). After a GPU forward, `net.params` and
`net.blobs` hold device arrays; copy weights in (`copy_from`) and save before the first GPU forward.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from kernels import activations, conv, elementwise, fc, gpu, lrn, pool
from kernels.gpu import GPUBackendError

if TYPE_CHECKING:
    from .net import Net

DEVICES = ("cpu", "gpu")


# The CPU kernels under the names of kernels.gpu's launchers, which have the same signatures.
CPU = SimpleNamespace(
    conv2d_forward=conv.conv2d_forward,
    inner_product_forward=fc.inner_product_forward,
    pool2d_forward=pool.pool2d_forward,
    lrn_forward=lrn.lrn_forward,
    relu_forward=activations.relu_forward,
    sigmoid_forward=activations.sigmoid_forward,
    tanh_forward=activations.tanh_forward,
    softmax_forward=activations.softmax_forward,
    concat_forward=elementwise.concat_forward,
    eltwise_forward=elementwise.eltwise_forward,
    scale_forward=elementwise.scale_forward,
    bias_forward=elementwise.bias_forward,
    batchnorm_forward_inference=elementwise.batchnorm_forward_inference,
)

# Layer types a GPU net can run (forward only; the TEST phase): each either calls kernels_for(...) or only
# reshapes / shares / copies device arrays.
GPU_LAYERS = frozenset(
    {
        "Input",
        "Convolution",
        "InnerProduct",
        "Pooling",
        "LRN",
        "ReLU",
        "Sigmoid",
        "TanH",
        "Softmax",
        "Concat",
        "Eltwise",
        "Scale",
        "Bias",
        "BatchNorm",
        "Flatten",
        "Reshape",
        "Split",
        "Dropout",
    }
)


def kernels_for(x: Any) -> Any:
    """The kernel namespace for an array: `kernels.gpu` for a device array, else the CPU kernels."""
    if type(x) is np.ndarray:
        return CPU
    return gpu if gpu.owns(x) else CPU


def check_device(device: str) -> str:
    """`device` if it can run here: 'cpu', or 'gpu' with CuPy and a visible device (GPUBackendError, a
    RuntimeError, otherwise); ValueError for an unknown name."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "gpu":
        gpu.runtime()
    return device


def prepare(net: Net) -> None:
    """Make a GPU net ready: inference only (TEST phase), supported layers only; a Convolution whose top is
    rewritten next by an in-place ReLU with negative_slope 0 takes the ReLU into its epilogue."""
    if net.phase != "TEST":
        raise GPUBackendError(
            f"net '{net.name}': the GPU backend runs inference only (phase 'test'), got phase 'train'"
        )
    unsupported = sorted({f"'{layer.name}' ({layer.type})" for layer in net.layers if layer.type not in GPU_LAYERS})
    if unsupported:
        raise GPUBackendError(
            f"net '{net.name}': layers without GPU kernels: {', '.join(unsupported)} "
            f"(GPU layer types: {', '.join(sorted(GPU_LAYERS))}); run with device 'cpu'"
        )
    for i in range(1, len(net.layers)):
        layer, previous = net.layers[i], net.layers[i - 1]
        if (
            layer.type == "ReLU"
            and previous.type == "Convolution"
            and len(net.tops[i - 1]) == 1
            and net.bottoms[i][0] is net.tops[i - 1][0]
            and net.tops[i][0] is net.bottoms[i][0]
            and float(layer.param.relu_param.negative_slope) == 0.0
        ):
            previous.fused_relu = True
            layer.fused = True


def to_device(net: Net) -> None:
    """Upload what is still on the host: parameters (the first time), the inputs, and blobs a reshape replaced with
    host zeros (as uninitialised device arrays: every layer writes its tops)."""
    rt = gpu.runtime()
    for layer in net.layers:
        for blob in layer.blobs:
            if not rt.is_array(blob.data):
                blob.data = gpu.to_device(blob.data)
    inputs = set(net.inputs)
    for name in net.blobs:
        blob = net.blob(name)
        if not rt.is_array(blob.data):
            blob.data = gpu.to_device(blob.data) if name in inputs else rt.empty(blob.shape)


def to_host(a: Any) -> np.ndarray:
    """A NumPy copy of a host or device array."""
    if type(a) is np.ndarray:
        return a.copy()
    return gpu.to_host(a)


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU); per-layer timings call it around each layer."""
    if device == "gpu":
        gpu.runtime().synchronize()
