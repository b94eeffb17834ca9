"""Activations and other element-wise layers: ReLU, Clip, ReLU6, Sigmoid, TanH, Dropout, Softmax."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from kernels.activations import softmax_runner

from ..blob import Blob
from ..device import CPU, kernels_for
from .base import (
    NO_STEP,
    Layer,
    diff_out,
    plain,
    plan_out,
    register,
    reusable,
)


@register("ReLU")
class ReLULayer(Layer):
    gpu_forward = True
    gpu_backward = True
    fused = False  # set by net.net.fuse_layers: the Convolution or InnerProduct before it applies the ReLU

    def epilogue_max(self) -> float | None:
        return math.inf if float(self.param.relu_param.negative_slope) == 0.0 else None

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
            kernels_for(top[0].diff).relu_backward(top[0].diff, bottom[0].data, slope, out=diff_out(bottom[0]))


class _ClipBase(Layer):
    """y = min(max(x, lo), hi): Caffe's Clip (clip_param min/max) and ReLU6 (0, 6; the type MobileNet ports and
    OpenCV DNN use). In place after a Convolution it is fused into the convolution's epilogue (`fused`)."""

    fused = False  # set by net.net.fuse_layers: the Convolution before it applies the clip

    def bounds(self) -> tuple[float, float]:
        raise NotImplementedError

    def epilogue_max(self) -> float | None:
        return self.hi if self.lo == 0.0 else None

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
        if out is not x and not (reusable(out, x) and out.shape == x.shape):
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
                out=diff_out(bottom[0]),
            )


@register("Clip")
class ClipLayer(_ClipBase):
    gpu_forward = True
    gpu_backward = True

    def bounds(self) -> tuple[float, float]:
        p = self.param.clip_param
        if not (p.has("min") and p.has("max")):
            raise self.error("clip_param needs both min and max")
        return float(p.min), float(p.max)


@register("ReLU6")
class ReLU6Layer(_ClipBase):
    gpu_forward = True
    gpu_backward = True

    def bounds(self) -> tuple[float, float]:
        return 0.0, 6.0


class _FromTop(Layer):
    """An element-wise layer whose gradient is a function of its output: `kernel_forward(x)` and
    `kernel_backward(dy, y, out=dx)` from the kernel namespace of the data's device (works in place)."""

    gpu_forward = True
    gpu_backward = True
    kernel: ClassVar[str] = ""

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = getattr(kernels_for(bottom[0].data), f"{self.kernel}_forward")(bottom[0].data)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten when propagate_down[0], from the top data (works in place)."""
        if propagate_down[0]:
            backward = getattr(kernels_for(top[0].diff), f"{self.kernel}_backward")
            backward(top[0].diff, top[0].data, out=diff_out(bottom[0]))


@register("Sigmoid")
class SigmoidLayer(_FromTop):
    kernel = "sigmoid"


@register("TanH")
class TanHLayer(_FromTop):
    kernel = "tanh"


@register("Dropout")
class DropoutLayer(Layer):
    """Inverted dropout. At TRAIN the forward draws a fresh mask from self.rng (the net's Generator) and keeps it
    for the backward; at TEST both passes are the identity."""

    gpu_forward = True
    gpu_backward = True

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
        kernels_for(top[0].diff).dropout_backward(top[0].diff, self.ratio, mask, out=diff_out(bottom[0]))


@register("Softmax")
class SoftmaxLayer(Layer):
    gpu_forward = True
    gpu_backward = True

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
        extra = {"out": top[0].data} if ops is CPU and reusable(top[0].data, x) else {}
        top[0].data = ops.softmax_forward(x, axis=self.axis % x.ndim, **extra)

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        src, dst = bottom[0], top[0]
        x = src.data
        x_shape = x.shape
        if dst is src or not plain(x, x_shape) or not -x.ndim <= self.axis < x.ndim:
            return None
        run = softmax_runner(x_shape, self.axis)
        out = plan_out(dst, x, x_shape)

        def step() -> bool:
            x = src.data
            if dst.data is not out or not plain(x, x_shape):
                return False
            run(x, out)
            return True

        return step

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten when propagate_down[0], from the top data (works in place)."""
        if propagate_down[0]:
            y = top[0].data
            k = kernels_for(top[0].diff)
            k.softmax_backward(top[0].diff, y, axis=self.axis % y.ndim, out=diff_out(bottom[0]))
