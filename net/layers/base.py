"""The layer base class, the registry (`register`, `create_layer`) and helpers the layer families share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from ..blob import Blob, watched
from ..device import assign, empty_like
from ..fillers import fill
from ..memory import check_param_shape
from ..schema import Message

LAYERS: dict[str, type[Layer]] = {}


def register(type_name: str) -> Callable[[type[Layer]], type[Layer]]:
    def deco(cls: type[Layer]) -> type[Layer]:
        cls.type = type_name
        LAYERS[type_name] = cls
        return cls

    return deco


def create_layer(param: Message, phase: str, rng: np.random.Generator) -> Layer:
    cls = LAYERS.get(param.type)
    if cls is None:
        known = ", ".join(sorted(LAYERS))
        where = f" (at {param.origin})" if param.origin else ""
        raise ValueError(f"layer '{param.name}'{where}: unknown layer type {param.type!r} (known types: {known})")
    return cls(param, phase, rng)


class Layer:
    """Base class. Subclasses set `num_bottom`/`num_top` (None = any, checked in `setup`)."""

    type: ClassVar[str] = ""
    num_bottom: ClassVar[int | tuple[int, int] | None] = 1
    num_top: ClassVar[int | tuple[int, int] | None] = 1
    # What the type can do, declared by each class; net.device and the fusion pass (net.net.fuse_layers) read these.
    gpu_forward: ClassVar[bool] = False  # its forward runs on a GPU net (device kernels or device-array bookkeeping)
    gpu_backward: ClassVar[bool] = False  # its backward runs on a GPU net (a TRAIN net's backward layers need it)
    # Devices whose kernel applies an activation epilogue after this layer's output: "relu" (max(x, 0)) or
    # "clamp" (min(max(x, 0), hi)); the activation layer then does nothing (see epilogue_max).
    epilogue: ClassVar[dict[str, str]] = {}
    blobs = watched("blobs", "the parameter Blobs (an assignment counts in net.blob.assignments)")
    weights_frozen = False  # Net.freeze: the parameters will not change in place (kernels keep what they derive)

    def __init__(self, param: Message, phase: str, rng: np.random.Generator) -> None:
        self.param = param
        self.name: str = param.name
        self.phase: str = param.phase if param.has("phase") else phase
        self.rng = rng
        self.blobs: list[Blob] = []

    # -- helpers -----------------------------------------------------------------------------
    def error(self, what: str) -> ValueError:
        """ValueError 'TYPE 'NAME': what', followed by '(at FILE:LINE)' for a layer read from a prototxt file."""
        where = f" (at {self.param.origin})" if self.param.origin else ""
        return ValueError(f"{self.type} '{self.name}': {what}{where}")

    def _check_count(self, kind: str, n: int, rule: int | tuple[int, int] | None) -> None:
        if rule is None:
            return
        lo, hi = (rule, rule) if isinstance(rule, int) else rule
        if not lo <= n <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise self.error(f"expected {want} {kind}(s), got {n}")

    def _param_blob(self, index: int, shape: tuple[int, ...], filler: Message) -> Blob:
        shape = check_param_shape(self, index, shape)  # dimensions >= 1 and within the memory budget, before filling
        blob = Blob(f"{self.name}.{index}")
        blob.data = fill(filler, shape, self.rng)
        return blob

    # -- Caffe's interface -------------------------------------------------------------------
    def setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self._check_count("bottom", len(bottom), self.num_bottom)
        self._check_count("top", len(top), self.num_top)
        if self.phase == "TRAIN" and any(spec.has("name") for spec in self.param.param):
            # Caffe ties the parameters of layers that share a param name; crema does not, so training would learn
            # them apart. A deploy (TEST) net loads each layer's copy from the caffemodel and gives Caffe's numbers.
            raise self.error("param { name } (parameters shared between layers) is not implemented for training")
        self.layer_setup(bottom, top)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Per-type set-up: parameter checks and parameter blobs."""

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        for b, t in zip(bottom, top):
            t.reshape(b.shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise NotImplementedError

    def epilogue_max(self) -> float | None:
        """For an activation that a producer's kernel epilogue can apply: the upper clamp of min(max(x, 0), hi)
        (math.inf for a plain ReLU); None for every other layer."""
        return None

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        raise NotImplementedError(f"{self.type} '{self.name}': backward is not implemented yet")

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        """The CPU fast path of `forward` for a Net's execution plan (`Net._run`): a step, made after a reshape, that
        runs the kernels on the blobs' current arrays with every shape decision already taken. A step returns False
        without doing anything when an array is not the one it was made for (another shape, dtype or layout, or a
        top replaced); the Net then runs `forward` and makes a new plan. None: no fast path, the Net calls `forward`;
        NO_STEP: nothing to do on this forward. A layer that overrides this writes its tops into their own arrays (a
        top is never a view of a bottom), in its step and in `forward`: ``net.arena`` relies on it."""
        return None


def uploaded(ref: object, values: np.ndarray) -> object:
    """`values` copied to ref's device (a GPU array like `ref`)."""
    out = empty_like(ref, values.shape)
    assign(out, values)
    return out


def spatial(
    values: list[int], h: int | None, w: int | None, has_hw: bool, default: int, what: str, layer: Layer
) -> tuple[int, int]:
    """Caffe's per-axis parameter rule: explicit _h/_w, else one value for both, else one per axis."""
    if has_hw:
        if values:
            raise layer.error(f"give either {what} or {what}_h/{what}_w, not both")
        return int(h), int(w)
    if not values:
        return default, default
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise layer.error(f"{what} must have 1 or 2 values for 2-D convolution, got {len(values)}")


# ---------------------------------------------------------------------------------------------


def reusable(buf: np.ndarray, src: np.ndarray) -> bool:
    """Can a CPU layer write its output into its top's current array `buf` (the previous forward's output, or the
    zeros of a reshape) instead of a new one? Saves the allocation and, for big outputs, the page faults of fresh
    memory on every call. Not when it overlaps the input. The kernels check the shape."""
    return (
        type(buf) is np.ndarray
        and buf.dtype == np.float32
        and buf.flags.c_contiguous
        and buf.flags.writeable
        and not np.may_share_memory(buf, src)
    )


_F32 = np.dtype(np.float32)


def NO_STEP() -> bool:  # a constant step: Layer.plan's "this forward does nothing"
    return True


def plain(a: object, shape: tuple[int, ...]) -> bool:
    """A C-contiguous float32 host array of `shape`: what a plan step hands to the kernels unchecked."""
    return type(a) is np.ndarray and a.shape == shape and a.dtype == _F32 and a.flags.c_contiguous


def plan_out(top: Blob, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The array a plan step writes `top` into: its current one when reusable (`reusable`), else a fresh one."""
    out = top.data
    if not (reusable(out, x) and out.shape == shape):
        out = top.data = np.empty(shape, np.float32)
    return out


def diff_out(blob: Blob) -> np.ndarray:
    """The blob's diff buffer for a backward to overwrite (a fresh one, on the data's device, if it is not float32
    C-contiguous)."""
    d = blob.diff
    if d.dtype != np.float32 or not d.flags.c_contiguous:
        d = blob.diff = empty_like(blob.data, blob.shape)
    return d


def param_needs(layer: Layer, count: int) -> list[bool]:
    """Which parameter blobs want gradients: the Net's `param_needs_grad` (lr_mult != 0), all when it is unset."""
    needs = getattr(layer, "param_needs_grad", None)
    return [True] * count if needs is None else [bool(v) for v in needs]


def canonical_axis(layer: Layer, axis: int, ndim: int, what: str = "axis") -> int:
    """Caffe's CanonicalAxisIndex: -ndim <= axis < ndim, negative counting from the end; out of range is an error
    naming the layer and the parameter (never a silent wrap-around)."""
    if not -ndim <= axis < ndim:
        raise layer.error(f"{what} {axis} is out of range for a {ndim}-axis input (-{ndim} .. {ndim - 1})")
    return axis % ndim


def axes_shape(layer: Layer, shape: tuple[int, ...], axis: int, num_axes: int) -> tuple[int, ...]:
    axis = canonical_axis(layer, axis, len(shape)) if shape else 0
    end = len(shape) if num_axes == -1 else axis + num_axes
    if end > len(shape):
        raise layer.error(f"axis {axis} with num_axes {num_axes} does not fit input {shape}")
    return tuple(shape[axis:end])


def gpu_layer_types(backward: bool = False) -> list[str]:
    """The registered layer types whose class declares a GPU forward (or, with `backward`, a GPU backward)."""
    return sorted(name for name, cls in LAYERS.items() if (cls.gpu_backward if backward else cls.gpu_forward))


def check_gpu_capable(net: Any) -> None:
    """GPUBackendError unless every layer of `net` declares `gpu_forward` and, in a TRAIN net, every layer that runs
    backward declares `gpu_backward`; the message names the layers and the types that can."""
    from kernels.gpu import GPUBackendError

    if net.phase == "TRAIN":
        no_backward = sorted(
            {
                f"'{net.layers[i].name}' ({net.layers[i].type})"
                for i in net.backward_layers
                if not net.layers[i].gpu_backward
            }
        )
        if no_backward:
            raise GPUBackendError(
                f"net '{net.name}': layers without GPU backward kernels: {', '.join(no_backward)} "
                f"(GPU training layer types: {', '.join(gpu_layer_types(backward=True))}); run with device 'cpu'"
            )
    unsupported = sorted({f"'{layer.name}' ({layer.type})" for layer in net.layers if not layer.gpu_forward})
    if unsupported:
        raise GPUBackendError(
            f"net '{net.name}': layers without GPU kernels: {', '.join(unsupported)} "
            f"(GPU layer types: {', '.join(gpu_layer_types())}); run with device 'cpu'"
        )
