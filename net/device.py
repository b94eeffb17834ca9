"""Device switch: which kernels a layer calls, and moving a Net's arrays to and from the GPU.

    net = Net.load("deploy.prototxt", "weights.caffemodel", device="gpu")  # GPUBackendError without CuPy or a GPU
    probs = net.forward(data=x)   # x NumPy; weights uploaded on the first forward, activations stay on the device,
                                  # outputs come back as NumPy arrays (one copy each)
    Solver(param, device="gpu").solve()   # training: forward, backward and the update on the device

Layers call `kernels_for(array).conv2d_forward(...)`: CPU kernels for NumPy arrays, `kernels.gpu` for arrays of
the active GPU runtime, so a Net's layer objects are the same on both devices. `check_device` names the device or
raises GPUBackendError (a RuntimeError); `prepare` readies a GPU net's data and dropout layers (which layers run on the GPU:
each class declares `gpu_forward` / `gpu_backward`, checked by net.layers.check_gpu_capable); `to_device` uploads parameters (once: they stay device arrays) and inputs (every forward; `upload_into` copies a
new batch of the same shape into the input's device array);
`to_host` brings an output back. Importing this module never imports CuPy.

Training (TRAIN phase): every layer that runs backward must declare `gpu_backward`; backward dispatches like
the forward (`kernels_for(dy).conv2d_backward(...)`). `Data` layers get a `BatchStager`: a background thread
produces the next batch (the layer's CPU transform) and uploads it while the device works on the current one (double
buffering); its `state()` is the position before the staged batch, so snapshots resume exactly. Dropout layers get
their own rng (the device RNG's seeds come from it; the data thread keeps the net's). After a GPU forward,
`net.params` and `net.blobs` hold device arrays; `host`, `assign` and `Net.save` / `copy_from` move values across.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from kernels import activations, conv, elementwise, fc, gpu, lrn, pool
from kernels import loss as loss_kernels

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
    clip_forward=activations.clip_forward,
    sigmoid_forward=activations.sigmoid_forward,
    tanh_forward=activations.tanh_forward,
    softmax_forward=activations.softmax_forward,
    concat_forward=elementwise.concat_forward,
    eltwise_forward=elementwise.eltwise_forward,
    scale_forward=elementwise.scale_forward,
    bias_forward=elementwise.bias_forward,
    batchnorm_forward_inference=elementwise.batchnorm_forward_inference,
    conv2d_backward=conv.conv2d_backward,
    inner_product_backward=fc.inner_product_backward,
    pool2d_backward=pool.pool2d_backward,
    lrn_backward=lrn.lrn_backward,
    relu_backward=activations.relu_backward,
    clip_backward=activations.clip_backward,
    sigmoid_backward=activations.sigmoid_backward,
    tanh_backward=activations.tanh_backward,
    softmax_backward=activations.softmax_backward,
    dropout_forward=activations.dropout_forward,
    dropout_backward=activations.dropout_backward,
    concat_backward=elementwise.concat_backward,
    eltwise_backward=elementwise.eltwise_backward,
    split_backward=elementwise.split_backward,
    softmax_loss_forward=loss_kernels.softmax_loss_forward,
    softmax_loss_backward=loss_kernels.softmax_loss_backward,
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
    """Make a GPU net ready (its layers already checked by net.layers.check_gpu_capable): Data layers get a
    BatchStager, Dropout layers their own rng. Activation fusion is net.net.fuse_layers', one pass for both devices."""
    for k, layer in enumerate(net.layers):
        if layer.type == "Dropout" and layer.rng is net.rng:
            layer.rng = np.random.default_rng(net.seed_sequence.spawn(1)[0])
        if layer.type == "Data" and getattr(layer, "stager", None) is None:
            layer.stager = BatchStager(layer, len(net.tops[k]))


def to_device(net: Net) -> None:
    """Upload what is still on the host: parameters (the first time) and their diffs, the inputs, and blobs a reshape
    replaced with host zeros (as uninitialised device arrays: every layer writes its tops)."""
    rt = gpu.runtime()
    for layer in net.layers:
        for blob in layer.blobs:
            if not rt.is_array(blob.data):
                blob.data = gpu.to_device(blob.data)
            _diff_to_device(rt, blob)
    inputs = set(net.inputs)
    for name in net.blobs:
        blob = net.blob(name)
        if not rt.is_array(blob.data):
            blob.data = gpu.to_device(blob.data) if name in inputs else rt.empty(blob.shape)
        _diff_to_device(rt, blob)


def upload_into(dst: Any, value: Any) -> bool:
    """Copy a host input of `dst`'s shape into the device array `dst` (a GPU net's input blob after its first forward:
    every later batch of that shape goes there, through kernels.gpu.upload's page-locked staging: a device array
    kept from `net.blobs` before changes with it); False, with nothing done, where `dst` is not a C-contiguous
    float32 device array or the shapes differ (the caller stores a host copy)."""
    if type(value) is not np.ndarray or value.shape != dst.shape or value.dtype.kind not in "fiub" or not gpu.owns(dst):
        return False
    if dst.dtype != np.float32 or not dst.flags.c_contiguous:
        return False
    gpu.upload(dst, value)
    return True


def _diff_to_device(rt: Any, blob: Any) -> None:
    """A diff made on the host before the upload (say by clear_param_diffs) follows its data to the device."""
    d = blob._diff
    if d is not None and not rt.is_array(d) and d.shape == blob.shape:
        blob.diff = gpu.to_device(blob.diff)  # (the getter writes zeros a clear_diff left pending)


def to_host(a: Any) -> np.ndarray:
    """A NumPy copy of a host or device array."""
    if type(a) is np.ndarray:
        return a.copy()
    return gpu.to_host(a)


def host(a: Any) -> np.ndarray:
    """`a` itself when it is a NumPy array, else a NumPy copy of the device array (for reading values)."""
    if isinstance(a, np.ndarray) and not gpu.owns(a):
        return a
    return gpu.to_host(a)


def on_device(a: Any) -> bool:
    return not (type(a) is np.ndarray) and gpu.owns(a)


def assign(dst: Any, values: Any) -> None:
    """dst[...] = values for a host or device dst; host values are uploaded first for a device dst."""
    if on_device(dst):
        src = values if on_device(values) else gpu.to_device(np.asarray(values, dtype=dst.dtype))
        dst[...] = src.reshape(dst.shape)
    else:
        dst[...] = np.asarray(host(values)).reshape(dst.shape)


def empty_like(ref: Any, shape: tuple[int, ...], dtype: Any = np.float32) -> Any:
    """An uninitialised array of `shape` on ref's device."""
    return gpu.runtime().empty(shape, dtype) if on_device(ref) else np.empty(shape, dtype)


def full_like(ref: Any, shape: tuple[int, ...], value: float) -> Any:
    """A float32 array of `shape` filled with `value` on ref's device."""
    a = empty_like(ref, shape)
    a.fill(value)
    return a


class BatchStager:
    """Double buffering for a Data layer of a GPU net: while the device runs batch k, a background thread runs the
    layer's CPU forward (index draw, transform) for batch k + 1 and uploads its tops. `next(top)` hands over the
    staged batch and starts staging the following one. `state()` / `set_state()` speak for the layer: the position
    before the staged (not yet used) batch, so a snapshot resumes with exactly the batches an unstaged run uses."""

    def __init__(self, layer: Any, ntops: int) -> None:
        from .blob import Blob

        self.layer = layer
        self._tops = [Blob(f"{layer.name}.staged{i}") for i in range(ntops)]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage-{layer.name}")
        self._pending: Future | None = None
        self._lock = threading.Lock()
        self._runtime = gpu.runtime()

    def _produce(self) -> tuple[dict, list[Any]]:
        state = self.layer.own_state()
        self.layer.produce([], self._tops)
        return state, [gpu.to_device(t.data) for t in self._tops]

    def next(self, top: list[Any]) -> None:
        with self._lock:
            pending = self._pending or self._pool.submit(self._produce)
            _, arrays = pending.result()
            self._pending = self._pool.submit(self._produce)
        for t, a in zip(top, arrays):
            t.data = a

    def state(self) -> dict:
        with self._lock:
            if self._pending is None:
                return self.layer.own_state()
            return self._pending.result()[0]

    def set_state(self, state: dict) -> None:
        with self._lock:
            if self._pending is not None:
                self._pending.result()
                self._pending = None
            self.layer.set_own_state(state)

    def drain(self) -> None:
        """Wait for and drop the staged batch (before a restore rewinds the layer and the rng it shares)."""
        with self._lock:
            if self._pending is not None:
                self._pending.result()
                self._pending = None

    def close(self) -> None:
        with self._lock:
            if self._pending is not None:
                self._pending.result()
                self._pending = None
        self._pool.shutdown(wait=True)


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU); per-layer timings call it around each layer."""
    if device == "gpu":
        gpu.runtime().synchronize()
