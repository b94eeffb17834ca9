"""Layers: thin objects over the kernels, with Caffe's interface.

Every layer is built from its LayerParameter (`net.schema.Message`) and implements
`setup(bottom, top)` (check counts, create parameter blobs), `reshape(bottom, top)` (shape the
tops from the bottoms' shapes only) and `forward(bottom, top)`. Bottoms and tops are `Blob`s;
an in-place layer gets the same Blob as bottom and top. `self.blobs` holds the learnable
parameters in Caffe's order ([weight, bias]).

Layers register under their prototxt type name; `create_layer` looks them up and names the known
types when one is missing. Backward passes arrive with training (a later issue).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from kernels import conv, depthwise, elementwise, fc, pointwise, pool
from kernels.activations import softmax_runner

from .blob import Blob
from .device import CPU, assign, empty_like, host, kernels_for, on_device
from .fillers import fill
from .memory import check_param_shape
from .schema import Message

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
        raise ValueError(f"layer '{param.name}': unknown layer type {param.type!r} (known types: {known})")
    return cls(param, phase, rng)


class Layer:
    """Base class. Subclasses set `num_bottom`/`num_top` (None = any, checked in `setup`)."""

    type: ClassVar[str] = ""
    num_bottom: ClassVar[int | tuple[int, int] | None] = 1
    num_top: ClassVar[int | tuple[int, int] | None] = 1

    def __init__(self, param: Message, phase: str, rng: np.random.Generator) -> None:
        self.param = param
        self.name: str = param.name
        self.phase: str = param.phase if param.has("phase") else phase
        self.rng = rng
        self.blobs: list[Blob] = []

    # -- helpers -----------------------------------------------------------------------------
    def error(self, what: str) -> ValueError:
        return ValueError(f"{self.type} '{self.name}': {what}")

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
        self.layer_setup(bottom, top)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Per-type set-up: parameter checks and parameter blobs."""

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        for b, t in zip(bottom, top):
            t.reshape(b.shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise NotImplementedError

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        raise NotImplementedError(f"{self.type} '{self.name}': backward is not implemented yet")

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        """The CPU fast path of `forward` for a Net's execution plan (`Net._run`): a step, made after a reshape, that
        runs the kernels on the blobs' current arrays with every shape decision already taken. A step returns False
        without doing anything when an array is not the one it was made for (another shape, dtype or layout, or a
        top replaced); the Net then runs `forward` and makes a new plan. None: no fast path, the Net calls `forward`;
        NO_STEP: nothing to do on this forward."""
        return None


def _uploaded(ref: object, values: np.ndarray) -> object:
    """`values` copied to ref's device (a GPU array like `ref`)."""
    out = empty_like(ref, values.shape)
    assign(out, values)
    return out


def _spatial(
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
@register("Input")
class InputLayer(Layer):
    num_bottom = 0
    num_top = None

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        shapes = self.param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise self.error(f"input_param has {len(shapes)} shapes for {len(top)} tops (give 1 or one per top)")
        self.shapes = (
            [tuple(int(d) for d in (shapes[0] if len(shapes) == 1 else shapes[i]).dim) for i in range(len(top))]
            if shapes
            else [t.shape for t in top]
        )

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        # Inputs keep whatever shape they were given (Net.forward reshapes them to the fed arrays).
        for t, shape in zip(top, self.shapes):
            if t.data.size == 0 and t.shape != shape:
                t.reshape(shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        pass

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        return NO_STEP


def _reusable(buf: np.ndarray, src: np.ndarray) -> bool:
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


def _plain(a: object, shape: tuple[int, ...]) -> bool:
    """A C-contiguous float32 host array of `shape`: what a plan step hands to the kernels unchecked."""
    return type(a) is np.ndarray and a.shape == shape and a.dtype == _F32 and a.flags.c_contiguous


def _plan_out(top: Blob, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The array a plan step writes `top` into: its current one when reusable (`_reusable`), else a fresh one."""
    out = top.data
    if not (_reusable(out, x) and out.shape == shape):
        out = top.data = np.empty(shape, np.float32)
    return out


@register("Convolution")
class ConvolutionLayer(Layer):
    num_bottom = (1, 1 << 30)  # several bottoms share the weights, one top each (checked in layer_setup)
    num_top = None
    fused_relu = False  # set by net.net (CPU) or net.device.prepare (GPU): the next in-place ReLU runs in the epilogue
    relu_max = math.inf  # with fused_relu: the upper bound of a fused ReLU6 / Clip (min(max(y, 0), relu_max))
    fold: tuple[Layer, Layer] | None = None  # (BatchNorm, Scale) folded into the weights (net.net.fuse_layers)
    folded: tuple[np.ndarray, np.ndarray] | None = None  # the folded (weight, bias), made on first use

    def forward_params(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(weight, bias) as the forward uses them: the parameters, or with `fold` set the BatchNorm + Scale folded
        in (float64 arithmetic, rounded once): w' = w * g, b' = (b - mean) * g + beta with
        g = gamma / sqrt(var + eps), mean and var divided by BatchNorm's scale factor as Caffe does."""
        w = self.blobs[0].data
        b = self.blobs[1].data if len(self.blobs) > 1 else None
        if self.fold is None:
            return w, b
        if self.folded is None:
            bn, scale = self.fold
            factor = float(host(bn.blobs[2].data).reshape(-1)[0])
            factor = 0.0 if factor == 0 else 1.0 / factor
            mean = host(bn.blobs[0].data).astype(np.float64) * factor
            var = host(bn.blobs[1].data).astype(np.float64) * factor
            gamma = host(scale.blobs[0].data).astype(np.float64).reshape(-1)
            g = gamma / np.sqrt(var + np.float64(np.float32(bn.eps)))
            beta = host(scale.blobs[1].data).astype(np.float64).reshape(-1) if len(scale.blobs) > 1 else 0.0
            bias = host(b).astype(np.float64) if b is not None else 0.0
            wf = (host(w).astype(np.float64) * g.reshape(-1, 1, 1, 1)).astype(np.float32)
            bf = np.ascontiguousarray(((bias - mean) * g + beta).astype(np.float32))
            if on_device(self.blobs[0].data):  # a GPU net: the folded parameters live on the device too
                wf, bf = _uploaded(self.blobs[0].data, wf), _uploaded(self.blobs[0].data, bf)
            self.folded = (wf, bf)
        return self.folded

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.convolution_param
        if len(top) != len(bottom):
            raise self.error(f"needs one top per bottom, got {len(bottom)} bottoms and {len(top)} tops")
        if p.num_output <= 0:
            raise self.error("convolution_param.num_output must be > 0")
        if p.axis != 1:
            raise self.error(f"only axis 1 (NCHW) is supported, got axis {p.axis}")
        self.kernel = _spatial(
            p.kernel_size, p.kernel_h, p.kernel_w, p.has("kernel_h") or p.has("kernel_w"), 0, "kernel_size", self
        )
        if min(self.kernel) <= 0:
            raise self.error("kernel size must be given and > 0 (kernel_size or kernel_h/kernel_w)")
        self.stride = _spatial(
            p.stride, p.stride_h, p.stride_w, p.has("stride_h") or p.has("stride_w"), 1, "stride", self
        )
        self.pad = _spatial(p.pad, p.pad_h, p.pad_w, p.has("pad_h") or p.has("pad_w"), 0, "pad", self)
        self.dilation = _spatial(p.dilation, None, None, False, 1, "dilation", self)
        if min(self.stride) <= 0 or min(self.dilation) <= 0:
            raise self.error("stride and dilation must be > 0")
        for b in bottom:  # the input shapes, before any filler runs (a 3-D input or a kernel larger than it)
            if len(b.shape) != 4:
                raise self.error(f"expected a 4-D input (N, C, H, W), got shape {b.shape} from bottom '{b.name}'")
            try:
                conv.conv2d_output_shape(b.shape[2:], self.kernel, self.stride, self.pad, self.dilation)
            except ValueError as exc:
                raise self.error(f"bottom '{b.name}': {exc}") from None
        self.group = int(p.group)
        channels = bottom[0].shape[1]
        if self.group <= 0 or channels % self.group or p.num_output % self.group:
            raise self.error(
                f"group {self.group} must divide both input channels ({channels}) and num_output ({p.num_output})"
            )
        wshape = (int(p.num_output), channels // self.group, *self.kernel)
        self.blobs = [self._param_blob(0, wshape, p.weight_filler)]
        if p.bias_term:
            self.blobs.append(self._param_blob(1, (int(p.num_output),), p.bias_filler))

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        w = self.blobs[0].data
        for b, t in zip(bottom, top):
            if len(b.shape) != 4 or b.shape[1] != w.shape[1] * self.group:
                raise self.error(f"expected input of shape (N, {w.shape[1] * self.group}, H, W), got {b.shape}")
            try:
                oh, ow = conv.conv2d_output_shape(b.shape[2:], self.kernel, self.stride, self.pad, self.dilation)
            except ValueError as exc:
                raise self.error(str(exc)) from None
            t.reshape((b.shape[0], w.shape[0], oh, ow))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        w, b = self.forward_params()
        for bb, t in zip(bottom, top):
            ops = kernels_for(bb.data)
            extra = {"out": t.data} if ops is CPU and _reusable(t.data, bb.data) else {}
            if self.relu_max != math.inf:
                extra["relu_max"] = self.relu_max
            t.data = ops.conv2d_forward(
                bb.data,
                w,
                b,
                stride=self.stride,
                pad=self.pad,
                dilation=self.dilation,
                group=self.group,
                relu=self.fused_relu,
                **extra,
            )

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        if len(bottom) != 1:
            return None
        src, dst = bottom[0], top[0]
        x = src.data
        w, b = self.forward_params()
        x_shape, w_shape, b_shape = x.shape, w.shape, w.shape[:1]
        if not (_plain(x, x_shape) and _plain(w, w_shape) and (b is None or _plain(b, b_shape))):
            return None
        act = (0.0, self.relu_max) if self.fused_relu else None
        if depthwise.depthwise_applies(x_shape, w_shape, self.group, self.dilation):
            run = depthwise.DepthwiseRunner(x_shape, w_shape, self.stride, self.pad, act, self.dilation)
        elif pointwise.pointwise_applies(x_shape, w_shape, self.stride, self.pad, self.dilation, self.group):
            run = pointwise.PointwiseRunner(x_shape, w_shape, act)
        else:
            capped = {"relu_max": self.relu_max} if self.relu_max != math.inf else {}
            run = conv.ForwardRunner(
                x_shape, w_shape, self.stride, self.pad, self.dilation, self.group, self.fused_relu, **capped
            )
        out = _plan_out(dst, x, run.out_shape)
        zeros = np.zeros(b_shape, np.float32)

        def step() -> bool:  # the parameters are looked up each call (Net.share_weights_from swaps the Blobs)
            w, b = self.forward_params()
            x = src.data
            if b is None:
                b = zeros
            if dst.data is not out or not (_plain(x, x_shape) and _plain(w, w_shape) and _plain(b, b_shape)):
                return False
            run(x, w, b, out)
            return True

        return step

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[i].diff is overwritten where propagate_down[i]; the weight and bias diffs accumulate the gradients
        of every bottom (all share the weights), each only where self.param_needs_grad (set by the Net from
        lr_mult != 0; all True when absent) says so."""
        needs = getattr(self, "param_needs_grad", None) or [True] * len(self.blobs)
        need_dw = bool(needs[0])
        need_db = len(self.blobs) > 1 and bool(needs[1])
        w = self.blobs[0].data
        for t, bb, down in zip(top, bottom, propagate_down):
            if not (down or need_dw or need_db):
                continue
            kernels_for(t.diff).conv2d_backward(
                t.diff,
                bb.data,
                w,
                stride=self.stride,
                pad=self.pad,
                dilation=self.dilation,
                group=self.group,
                dx=bb.diff if down else None,
                dw=self.blobs[0].diff if need_dw else None,
                db=self.blobs[1].diff if need_db else None,
                need_dx=bool(down),
                need_dw=need_dw,
                need_db=need_db,
            )


@register("InnerProduct")
class InnerProductLayer(Layer):
    fused_relu = False  # set on CPU nets by net.net: the next in-place ReLU runs in the same kernel call

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.inner_product_param
        if p.num_output <= 0:
            raise self.error("inner_product_param.num_output must be > 0")
        self.axis = p.axis % len(bottom[0].shape) if bottom[0].shape else 0
        k = int(np.prod(bottom[0].shape[self.axis :]))
        self.transpose = bool(p.transpose)
        wshape = (k, int(p.num_output)) if self.transpose else (int(p.num_output), k)
        self.blobs = [self._param_blob(0, wshape, p.weight_filler)]
        if p.bias_term:
            self.blobs.append(self._param_blob(1, (int(p.num_output),), p.bias_filler))

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        k = int(np.prod(shape[self.axis :]))
        w = self.blobs[0].data
        want = w.shape[0] if self.transpose else w.shape[1]
        if k != want:
            raise self.error(f"input {shape} flattens to {k} features from axis {self.axis}, weights expect {want}")
        n = w.shape[1] if self.transpose else w.shape[0]
        top[0].reshape((*shape[: self.axis], n))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        b = self.blobs[1].data if len(self.blobs) > 1 else None
        x = bottom[0].data
        ops = kernels_for(x)
        extra = {"out": top[0].data} if ops is CPU and _reusable(top[0].data, x) else {}
        if self.fused_relu:  # CPU nets only (net.net fuses InnerProduct + ReLU on the CPU)
            extra["relu"] = True
        top[0].data = ops.inner_product_forward(
            x, self.blobs[0].data, b, axis=self.axis, transpose=self.transpose, **extra
        )

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        src, dst, wblob = bottom[0], top[0], self.blobs[0]
        bblob = self.blobs[1] if len(self.blobs) > 1 else None
        has_bias = bblob is not None
        x, w = src.data, wblob.data
        x_shape, w_shape = x.shape, w.shape
        b_shape = (w_shape[1] if self.transpose else w_shape[0],)
        if not (_plain(x, x_shape) and _plain(w, w_shape) and (bblob is None or _plain(bblob.data, b_shape))):
            return None
        run = fc.ForwardRunner(x_shape, w_shape, axis=self.axis, transpose=self.transpose, relu=self.fused_relu)
        out = _plan_out(dst, x, run.out_shape)

        def step() -> bool:  # the parameter Blobs are looked up each call (Net.share_weights_from swaps them)
            params = self.blobs
            x, w, b = src.data, params[0].data, params[1].data if has_bias else None
            if dst.data is not out or not (_plain(x, x_shape) and _plain(w, w_shape)):
                return False
            if b is not None and not _plain(b, b_shape):
                return False
            run(x, w, b, out)
            return True

        return step

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten when propagate_down[0]; the weight and bias diffs accumulate, each only
        where self.param_needs_grad (set by the Net from lr_mult != 0; all True when absent) says so."""
        needs = getattr(self, "param_needs_grad", None) or [True] * len(self.blobs)
        need_dw = bool(needs[0])
        need_db = len(self.blobs) > 1 and bool(needs[1])
        down = bool(propagate_down[0])
        if not (down or need_dw or need_db):
            return
        kernels_for(top[0].diff).inner_product_backward(
            top[0].diff,
            bottom[0].data,
            self.blobs[0].data,
            axis=self.axis,
            transpose=self.transpose,
            dx=bottom[0].diff if down else None,
            dw=self.blobs[0].diff if need_dw else None,
            db=self.blobs[1].diff if need_db else None,
            need_dx=down,
            need_dw=need_dw,
            need_db=need_db,
        )


def _diff_out(blob: Blob) -> np.ndarray:
    """The blob's diff buffer for a backward to overwrite (a fresh one, on the data's device, if it is not float32
    C-contiguous)."""
    d = blob.diff
    if d.dtype != np.float32 or not d.flags.c_contiguous:
        d = blob.diff = empty_like(blob.data, blob.shape)
    return d


def _param_needs(layer: Layer, count: int) -> list[bool]:
    """Which parameter blobs want gradients: the Net's `param_needs_grad` (lr_mult != 0), all when it is unset."""
    needs = getattr(layer, "param_needs_grad", None)
    return [True] * count if needs is None else [bool(v) for v in needs]


@register("Pooling")
class PoolingLayer(Layer):
    """MAX / AVE pooling. At TRAIN a MAX layer records the argmax of every output (an int32 mask, Caffe's max_idx_)
    for the backward; elsewhere the backward recomputes it from the bottom data."""

    mask: np.ndarray | None = None

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.pooling_param
        if p.pool not in ("MAX", "AVE"):
            raise self.error(f"pool method {p.pool} is not supported (MAX, AVE)")
        self.method = p.pool
        self.global_pooling = bool(p.global_pooling)
        if self.global_pooling:
            if p.has("kernel_size") or p.has("kernel_h") or p.has("kernel_w"):
                raise self.error("global_pooling and a kernel size cannot both be given")
        elif p.has("kernel_h") != p.has("kernel_w"):
            raise self.error("give both kernel_h and kernel_w")
        elif not (p.has("kernel_size") or p.has("kernel_h")):
            raise self.error("kernel_size (or kernel_h and kernel_w) is required")
        k = (p.kernel_h, p.kernel_w) if p.has("kernel_h") else (p.kernel_size, p.kernel_size)
        self.stride = (p.stride_h, p.stride_w) if p.has("stride_h") else (p.stride, p.stride)
        self.pad = (p.pad_h, p.pad_w) if p.has("pad_h") else (p.pad, p.pad)
        self.kernel = tuple(int(v) for v in k)
        self.round_mode = p.round_mode
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error("global pooling needs pad 0 and stride 1")
        if not self.global_pooling:
            if min(self.kernel) <= 0 or min(self.stride) <= 0:
                raise self.error(f"kernel {self.kernel} and stride {self.stride} must be > 0")
            if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
                raise self.error(f"pad {self.pad} must be smaller than kernel {self.kernel}")

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error(f"expected a 4-D input (N, C, H, W), got {shape}")
        if self.global_pooling:
            self.kernel = (shape[2], shape[3])
        oh, ow = pool.pool2d_output_shape(shape[2:], self.kernel, self.stride, self.pad, self.round_mode)
        top[0].reshape((shape[0], shape[1], oh, ow))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        mask = None
        if self.method == "MAX" and self.phase == "TRAIN":
            if self.mask is None or self.mask.shape != top[0].shape or type(self.mask) is not type(bottom[0].data):
                self.mask = empty_like(bottom[0].data, top[0].shape, np.int32)
            mask = self.mask
        else:
            self.mask = None
        ops = kernels_for(bottom[0].data)
        extra = {"out": top[0].data} if ops is CPU and _reusable(top[0].data, bottom[0].data) else {}
        top[0].data = ops.pool2d_forward(
            bottom[0].data,
            **extra,
            method=self.method,
            kernel=self.kernel,
            stride=self.stride,
            pad=self.pad,
            round_mode=self.round_mode,
            mask=mask,
        )

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        if self.method == "MAX" and self.phase == "TRAIN":
            return None  # the forward records the argmax mask for the backward
        src, dst = bottom[0], top[0]
        x = src.data
        x_shape = x.shape
        if not _plain(x, x_shape):
            return None
        run = pool.ForwardRunner(
            x_shape,
            method=self.method,
            kernel=self.kernel,
            stride=self.stride,
            pad=self.pad,
            round_mode=self.round_mode,
        )
        out = _plan_out(dst, x, run.out_shape)
        self.mask = None

        def step() -> bool:
            x = src.data
            if dst.data is not out or not _plain(x, x_shape):
                return False
            run(x, out)
            return True

        return step

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten when propagate_down[0]; pooling has no parameters."""
        if not propagate_down[0]:
            return
        kernels_for(top[0].diff).pool2d_backward(
            top[0].diff,
            bottom[0].data,
            method=self.method,
            kernel=self.kernel,
            stride=self.stride,
            pad=self.pad,
            round_mode=self.round_mode,
            mask=self.mask,
            out=_diff_out(bottom[0]),
        )


@register("LRN")
class LRNLayer(Layer):
    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.lrn_param
        if p.local_size % 2 == 0 or p.local_size <= 0:
            raise self.error(f"local_size must be odd and > 0, got {p.local_size}")
        self.kw = {
            "local_size": int(p.local_size),
            "alpha": float(p.alpha),
            "beta": float(p.beta),
            "k": float(p.k),
            "region": p.norm_region,
        }

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        if len(bottom[0].shape) != 4:
            raise self.error(f"expected a 4-D input (N, C, H, W), got {bottom[0].shape}")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.x = bottom[0].data  # kept for the backward, which needs the input even when the layer runs in place
        top[0].data = kernels_for(self.x).lrn_forward(self.x, **self.kw)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten when propagate_down[0]; LRN has no parameters."""
        if not propagate_down[0]:
            return
        k = kernels_for(top[0].diff)
        if top[0] is bottom[0]:  # dx cannot be written over dy here
            bottom[0].diff = k.lrn_backward(top[0].diff, self.x, **self.kw)
        else:
            k.lrn_backward(top[0].diff, self.x, **self.kw, out=_diff_out(bottom[0]))


@register("ReLU")
class ReLULayer(Layer):
    fused = False  # set by net.net / net.device.prepare: the Convolution or InnerProduct before it applies the ReLU

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        return NO_STEP if self.fused else None

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        if self.fused:
            return
        x = bottom[0].data
        out = x if top[0] is bottom[0] else top[0].data
        top[0].data = kernels_for(x).relu_forward(x, float(self.param.relu_param.negative_slope), out=out)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten when propagate_down[0]. In place (top is bottom) the bottom data holds the
        output, which has the input's sign for negative_slope >= 0, and dx is written over dy, as in Caffe."""
        if propagate_down[0]:
            slope = float(self.param.relu_param.negative_slope)
            kernels_for(top[0].diff).relu_backward(top[0].diff, bottom[0].data, slope, out=_diff_out(bottom[0]))


class _ClipBase(Layer):
    """y = min(max(x, lo), hi): Caffe's Clip (clip_param min/max) and ReLU6 (0, 6; the type MobileNet ports and
    OpenCV DNN use). In place after a Convolution it is fused into the convolution's epilogue (`fused`)."""

    fused = False  # set by Net._fuse_activations: the Convolution before it applies the clip

    def bounds(self) -> tuple[float, float]:
        raise NotImplementedError

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.lo, self.hi = self.bounds()
        if not self.lo <= self.hi:
            raise self.error(f"min ({self.lo}) must not be greater than max ({self.hi})")

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        return NO_STEP if self.fused else None

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        if self.fused:
            return
        x = bottom[0].data
        out = x if top[0] is bottom[0] else top[0].data
        if out is not x and not (_reusable(out, x) and out.shape == x.shape):
            out = None
        top[0].data = kernels_for(x).clip_forward(x, self.lo, self.hi, out=out)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten when propagate_down[0]: dy where lo <= x <= hi (Caffe's Clip). In place the
        bottom holds the output, so the test is lo < y < hi (the clipped elements sit exactly on a bound)."""
        if propagate_down[0]:
            kernels_for(top[0].diff).clip_backward(
                top[0].diff,
                bottom[0].data,
                self.lo,
                self.hi,
                inclusive=top[0] is not bottom[0],
                out=_diff_out(bottom[0]),
            )


@register("Clip")
class ClipLayer(_ClipBase):
    def bounds(self) -> tuple[float, float]:
        p = self.param.clip_param
        if not (p.has("min") and p.has("max")):
            raise self.error("clip_param needs both min and max")
        return float(p.min), float(p.max)


@register("ReLU6")
class ReLU6Layer(_ClipBase):
    def bounds(self) -> tuple[float, float]:
        return 0.0, 6.0


@register("Sigmoid")
class SigmoidLayer(Layer):
    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = kernels_for(bottom[0].data).sigmoid_forward(bottom[0].data)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten when propagate_down[0], from the top data (works in place)."""
        if propagate_down[0]:
            kernels_for(top[0].diff).sigmoid_backward(top[0].diff, top[0].data, out=_diff_out(bottom[0]))


@register("TanH")
class TanHLayer(Layer):
    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = kernels_for(bottom[0].data).tanh_forward(bottom[0].data)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten when propagate_down[0], from the top data (works in place)."""
        if propagate_down[0]:
            kernels_for(top[0].diff).tanh_backward(top[0].diff, top[0].data, out=_diff_out(bottom[0]))


@register("Dropout")
class DropoutLayer(Layer):
    """Inverted dropout. At TRAIN the forward draws a fresh mask from self.rng (the net's Generator) and keeps it
    for the backward; at TEST both passes are the identity."""

    mask: np.ndarray | None = None

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        if self.phase == "TEST" and top[0] is bottom[0]:
            self.mask = None
            return NO_STEP  # the identity, in place
        return None

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        if self.phase == "TEST":
            self.mask = None
            if top[0] is not bottom[0]:
                top[0].data = bottom[0].data.copy()
            return
        x = bottom[0].data
        top[0].data, self.mask = kernels_for(x).dropout_forward(x, self.ratio, train=True, rng=self.rng)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten when propagate_down[0]: dy * mask / (1 - ratio) with the forward's mask at
        TRAIN, dy at TEST (nothing to do in place)."""
        if not propagate_down[0]:
            return
        mask = self.mask if self.phase != "TEST" else None
        if mask is not None and mask.shape != top[0].shape:
            raise self.error(f"backward needs the mask of a TRAIN forward of shape {top[0].shape}, got {mask.shape}")
        kernels_for(top[0].diff).dropout_backward(top[0].diff, self.ratio, mask, out=_diff_out(bottom[0]))


@register("Softmax")
class SoftmaxLayer(Layer):
    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.axis = int(self.param.softmax_param.axis)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        ndim = len(bottom[0].shape)
        if not -ndim <= self.axis < ndim:
            raise self.error(f"axis {self.axis} out of range for input {bottom[0].shape}")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        ops = kernels_for(x)
        extra = {"out": top[0].data} if ops is CPU and _reusable(top[0].data, x) else {}
        top[0].data = ops.softmax_forward(x, axis=self.axis % x.ndim, **extra)

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        src, dst = bottom[0], top[0]
        x = src.data
        x_shape = x.shape
        if dst is src or not _plain(x, x_shape) or not -x.ndim <= self.axis < x.ndim:
            return None
        run = softmax_runner(x_shape, self.axis)
        out = _plan_out(dst, x, x_shape)

        def step() -> bool:
            x = src.data
            if dst.data is not out or not _plain(x, x_shape):
                return False
            run(x, out)
            return True

        return step

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten when propagate_down[0], from the top data (works in place)."""
        if propagate_down[0]:
            y = top[0].data
            k = kernels_for(top[0].diff)
            k.softmax_backward(top[0].diff, y, axis=self.axis % y.ndim, out=_diff_out(bottom[0]))


@register("Concat")
class ConcatLayer(Layer):
    num_bottom = (1, 1 << 30)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.concat_param
        if p.has("axis") and p.has("concat_dim"):
            raise self.error("give either axis or concat_dim, not both")
        self.axis = int(p.concat_dim) if p.has("concat_dim") else int(p.axis)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        first = bottom[0].shape
        axis = self.axis % len(first)
        total = 0
        for b in bottom:
            if len(b.shape) != len(first) or any(b.shape[i] != first[i] for i in range(len(first)) if i != axis):
                raise self.error(f"all inputs must match except on axis {axis}: {first} vs {b.shape}")
            total += b.shape[axis]
        top[0].reshape((*first[:axis], total, *first[axis + 1 :]))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = kernels_for(bottom[0].data).concat_forward(
            [b.data for b in bottom], axis=self.axis % bottom[0].data.ndim
        )

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[i].diff is overwritten with its slice of the top diff where propagate_down[i]."""
        axis = self.axis % len(top[0].shape)
        sizes = [b.shape[axis] for b in bottom]
        grads = kernels_for(top[0].diff).concat_backward(top[0].diff, sizes, axis, propagate_down=propagate_down)
        for b, g in zip(bottom, grads):
            if g is not None:
                b.diff = g


@register("Eltwise")
class EltwiseLayer(Layer):
    num_bottom = (2, 1 << 30)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.eltwise_param
        self.op = p.operation
        self.coeffs = [float(c) for c in p.coeff] or None
        if self.coeffs is not None and self.op != "SUM":
            raise self.error("coeff is only allowed with operation SUM")
        if self.coeffs is not None and len(self.coeffs) != len(bottom):
            raise self.error(f"needs one coeff per bottom: {len(self.coeffs)} coeffs, {len(bottom)} bottoms")

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        for b in bottom[1:]:
            if b.shape != bottom[0].shape:
                raise self.error(f"all inputs must have the same shape: {bottom[0].shape} vs {b.shape}")
        top[0].reshape(bottom[0].shape)

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        if self.op != "SUM" or top[0] in bottom:
            return None
        shape = bottom[0].shape
        xs = [b.data for b in bottom]
        if not all(_plain(x, shape) for x in xs):
            return None
        run = elementwise.eltwise_sum_runner(len(xs), math.prod(shape), self.coeffs)
        dst = top[0]
        out = _plan_out(dst, xs[0], shape)
        if any(np.may_share_memory(out, x) for x in xs):
            return None

        def step() -> bool:
            xs = [b.data for b in bottom]
            if dst.data is not out or not all(_plain(x, shape) for x in xs):
                return False
            self.xs, self.mask = xs, None  # as forward keeps them (SUM's backward reads neither)
            run(xs, out)
            return True

        return step

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        """At TRAIN a MAX layer records the winning bottom per element for the backward (Caffe's max_idx_)."""
        self.xs = [b.data for b in bottom]  # kept for PROD/MAX backward, also when top is one of the bottoms
        self.mask = None
        if self.op == "MAX" and self.phase == "TRAIN":
            self.mask = empty_like(self.xs[0], bottom[0].shape, np.int32)
        top[0].data = kernels_for(self.xs[0]).eltwise_forward(
            self.xs, operation=self.op, coeffs=self.coeffs, mask=self.mask
        )

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[i].diff is overwritten where propagate_down[i] (SUM: coeff * dy, PROD: dy * the other inputs, MAX:
        dy where bottom i won)."""
        grads = kernels_for(top[0].diff).eltwise_backward(
            top[0].diff, self.xs, self.op, self.coeffs, mask=self.mask, propagate_down=propagate_down
        )
        for b, g in zip(bottom, grads):
            if g is not None:
                b.diff = g


@register("BatchNorm")
class BatchNormLayer(Layer):
    fused = False  # folded into the Convolution before it (net.net.fuse_layers): the forward does nothing

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        return NO_STEP if self.fused else None

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.batch_norm_param
        self.use_global = p.use_global_stats if p.has("use_global_stats") else self.phase == "TEST"
        self.eps = float(p.eps)
        channels = bottom[0].shape[1] if len(bottom[0].shape) > 1 else 1
        zero = Message("FillerParameter")
        self.blobs = [
            self._param_blob(0, (channels,), zero),
            self._param_blob(1, (channels,), zero),
            self._param_blob(2, (1,), zero),
        ]

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        if self.fused:
            return
        if not self.use_global:
            raise self.error("training-mode batch statistics arrive with training; set use_global_stats: true")
        top[0].data = kernels_for(bottom[0].data).batchnorm_forward_inference(
            bottom[0].data,
            self.blobs[0].data,
            self.blobs[1].data,
            float(self.blobs[2].data.reshape(-1)[0]),
            eps=self.eps,
        )


def _axes_shape(layer: Layer, shape: tuple[int, ...], axis: int, num_axes: int) -> tuple[int, ...]:
    axis = axis % len(shape) if shape else 0
    end = len(shape) if num_axes == -1 else axis + num_axes
    if end > len(shape):
        raise layer.error(f"axis {axis} with num_axes {num_axes} does not fit input {shape}")
    return tuple(shape[axis:end])


@register("Scale")
class ScaleLayer(Layer):
    num_bottom = (1, 2)
    fused = False  # folded into the Convolution before it (net.net.fuse_layers): the forward does nothing

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        return NO_STEP if self.fused else None

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.scale_param
        self.axis = int(p.axis)
        gshape = _axes_shape(self, bottom[0].shape, self.axis, int(p.num_axes))
        filler = p.filler if p.has("filler") else Message("FillerParameter", value=1.0)
        self.blobs = [] if len(bottom) == 2 else [self._param_blob(0, gshape, filler)]
        if p.bias_term:
            self.blobs.append(self._param_blob(len(self.blobs), gshape, p.bias_filler))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        if self.fused:
            return
        gamma = bottom[1].data if len(bottom) == 2 else self.blobs[0].data
        beta = self.blobs[-1].data if self.param.scale_param.bias_term else None
        self.x = bottom[0].data  # the input, kept for dgamma (the forward writes a new array, so in place works)
        top[0].data = kernels_for(self.x).scale_forward(self.x, gamma, beta, axis=self.axis % self.x.ndim)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff (dy * gamma) is overwritten when propagate_down[0]; with gamma as bottom[1], its diff is
        overwritten too when propagate_down[1]. Parameter diffs (gamma, beta) accumulate where
        self.param_needs_grad allows (all when it is unset)."""
        two = len(bottom) == 2
        needs = _param_needs(self, len(self.blobs))
        bias = self.param.scale_param.bias_term
        need_dx = bool(propagate_down[0])
        need_dgamma = bool(propagate_down[1]) if two else needs[0]
        need_dbeta = bool(bias and needs[-1])
        if not (need_dx or need_dgamma or need_dbeta):
            return
        gamma = bottom[1].data if two else self.blobs[0].data
        dy = top[0].diff
        _, dgamma, _ = elementwise.scale_backward(
            dy,
            self.x,
            gamma,
            self.axis % dy.ndim,
            need_dx=need_dx,
            need_dgamma=need_dgamma,
            need_dbeta=need_dbeta,
            out=_diff_out(bottom[0]) if need_dx else None,
            dgamma=None if two or not need_dgamma else self.blobs[0].diff,
            dbeta=self.blobs[-1].diff if need_dbeta else None,
        )
        if two and need_dgamma:
            bottom[1].diff = dgamma.reshape(bottom[1].shape)


@register("Bias")
class BiasLayer(Layer):
    num_bottom = (1, 2)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.bias_param
        self.axis = int(p.axis)
        if len(bottom) == 1:
            self.blobs = [self._param_blob(0, _axes_shape(self, bottom[0].shape, self.axis, int(p.num_axes)), p.filler)]

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        beta = bottom[1].data if len(bottom) == 2 else self.blobs[0].data
        top[0].data = kernels_for(bottom[0].data).bias_forward(
            bottom[0].data, beta, axis=self.axis % bottom[0].data.ndim
        )

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff (= dy) is overwritten when propagate_down[0]; with beta as bottom[1], its diff is overwritten
        when propagate_down[1]; otherwise the beta diff accumulates where self.param_needs_grad allows."""
        two = len(bottom) == 2
        need_dx = bool(propagate_down[0])
        need_dbeta = bool(propagate_down[1]) if two else _param_needs(self, 1)[0]
        if not (need_dx or need_dbeta):
            return
        beta = bottom[1].data if two else self.blobs[0].data
        dy = top[0].diff
        _, dbeta = elementwise.bias_backward(
            dy,
            beta,
            self.axis % dy.ndim,
            need_dx=need_dx,
            need_dbeta=need_dbeta,
            out=_diff_out(bottom[0]) if need_dx else None,
            dbeta=None if two or not need_dbeta else self.blobs[0].diff,
        )
        if two and need_dbeta:
            bottom[1].diff = dbeta.reshape(bottom[1].shape)


@register("Flatten")
class FlattenLayer(Layer):
    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.flatten_param
        shape = bottom[0].shape
        start, end = p.axis % len(shape), p.end_axis % len(shape)
        if end < start:
            raise self.error(f"end_axis {p.end_axis} comes before axis {p.axis} for input {shape}")
        top[0].reshape((*shape[:start], int(np.prod(shape[start : end + 1])), *shape[end + 1 :]))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = bottom[0].data.reshape(top[0].shape)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff becomes the top diff reshaped (a view, as Caffe shares the diff)."""
        if propagate_down[0]:
            bottom[0].diff = top[0].diff.reshape(bottom[0].shape)


@register("Reshape")
class ReshapeLayer(Layer):
    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.reshape_param
        shape = bottom[0].shape
        axis = p.axis % (len(shape) + 1) if p.axis < 0 else p.axis
        end = len(shape) if p.num_axes == -1 else axis + p.num_axes
        dims = [int(d) for d in p.shape.dim]
        new = [shape[axis + i] if d == 0 else d for i, d in enumerate(dims)]
        if new.count(-1) > 1:
            raise self.error("at most one -1 in reshape_param.shape")
        out = [*shape[:axis], *new, *shape[end:]]
        if -1 in out:
            known = int(np.prod([d for d in out if d != -1]))
            out[out.index(-1)] = int(np.prod(shape)) // max(known, 1)
        if int(np.prod(out)) != int(np.prod(shape)):
            raise self.error(f"cannot reshape {shape} to {tuple(out)}")
        top[0].reshape(tuple(out))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = bottom[0].data.reshape(top[0].shape)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff becomes the top diff reshaped (a view, as Caffe shares the diff)."""
        if propagate_down[0]:
            bottom[0].diff = top[0].diff.reshape(bottom[0].shape)


@register("Split")
class SplitLayer(Layer):
    num_top = (1, 1 << 30)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        for t in top:
            t.reshape(bottom[0].shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        for t in top:
            t.data = bottom[0].data

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten with the sum of the tops' diffs when propagate_down[0]."""
        if propagate_down[0]:
            dys = [t.diff for t in top]
            kernels_for(dys[0]).split_backward(dys, out=_diff_out(bottom[0]))


from . import data_layer  # noqa: F401  (registers "Data")
