"""More element-wise layers (kernels.unary): ELU, Power, Exp, Log, AbsVal, BNLL, Threshold, Swish, PReLU.

Each forward is one compiled pass over the bottom (CPU nets). In place (top is bottom) a layer whose backward reads
its input (Power, Log, AbsVal, BNLL, Swish, PReLU) writes a new array in a TRAIN net, so the input stays for the
backward; ELU and Exp take their gradient from the output and run in place in every phase.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kernels import unary

from ..blob import Blob
from ..schema import Message
from .base import Layer, diff_out, param_needs, plain, plan_out, register, reusable


class UnaryLayer(Layer):
    """One bottom, one top of its shape, y = f(x) element-wise. Subclasses give `apply` and `gradient`."""

    needs_input = True  # the backward reads x (else the forward output y)
    saved: np.ndarray | None = None

    op = ""  # kernels.unary.unary_runner's name for the plan step
    params: dict[str, float] = {}  # noqa: RUF012  (its parameters, set in layer_setup)

    def apply(self, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        """A TEST net's step: the compiled pass with the parameter work done once (TRAIN keeps `forward`, which saves
        what the backward needs)."""
        src, dst = bottom[0], top[0]
        x = src.data
        shape = x.shape
        if self.phase == "TRAIN" or not self.op or not plain(x, shape):
            return None
        run = unary.unary_runner(self.op, shape, **self.params)
        in_place = dst is src
        out = x if in_place else plan_out(dst, x, shape)
        keep_input = self.needs_input

        def step() -> bool:
            x = src.data
            if not plain(x, shape) or (not in_place and dst.data is not out):
                return False
            y = x if in_place else out
            run(x, y)
            self.saved = x if keep_input else y
            return True

        return step

    def gradient(self, dy: np.ndarray, saved: np.ndarray, out: np.ndarray) -> None:
        raise self.error("Caffe has no backward for this layer type")

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        if not isinstance(x, np.ndarray):
            raise self.error("runs on CPU nets only")
        if top[0] is bottom[0]:
            out = None if self.needs_input and self.phase == "TRAIN" else x
        else:
            out = top[0].data if reusable(top[0].data, x) and top[0].data.shape == x.shape else None
        y = self.apply(x, out)
        self.saved = x if self.needs_input else y
        top[0].data = y

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is OVERWRITTEN when propagate_down[0] (from the forward's saved input or output)."""
        if not propagate_down[0]:
            return
        if self.saved is None or self.saved.shape != top[0].shape:
            raise self.error(f"backward needs a forward of shape {top[0].shape} first")
        if self.needs_input and top[0] is bottom[0] and self.saved is top[0].data:
            raise self.error("the in-place forward overwrote the input the backward needs (run the net as TRAIN)")
        self.gradient(top[0].diff, self.saved, diff_out(bottom[0]))


@register("ELU")
class ELULayer(UnaryLayer):
    needs_input = False

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.alpha = float(self.param.elu_param.alpha)
        self.op, self.params = "elu", {"alpha": self.alpha}
        if self.alpha < 0:
            raise self.error(f"elu_param.alpha must be >= 0 (the backward reads the output's sign), got {self.alpha}")

    def apply(self, x, out):
        return unary.elu_forward(x, self.alpha, out=out)

    def gradient(self, dy, saved, out):
        unary.elu_backward(dy, saved, self.alpha, out=out)


class _AffineParams(UnaryLayer):
    """Power / Exp / Log: base or power, scale, shift from their *_param."""

    field = ""
    names = ("base", "scale", "shift")

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = getattr(self.param, self.field)
        self.kw = {name: float(getattr(p, name)) for name in self.names}
        self.op, self.params = self.field.removesuffix("_param"), self.kw
        try:  # the base checks, before any data
            self.apply(np.zeros(1, np.float32), None)
        except ValueError as exc:
            raise self.error(f"{self.field}: {exc}") from None


@register("Power")
class PowerLayer(_AffineParams):
    field = "power_param"
    names = ("power", "scale", "shift")

    def apply(self, x, out):
        return unary.power_forward(x, **self.kw, out=out)

    def gradient(self, dy, saved, out):
        unary.power_backward(dy, saved, **self.kw, out=out)


@register("Exp")
class ExpLayer(_AffineParams):
    field = "exp_param"
    needs_input = False

    def apply(self, x, out):
        return unary.exp_forward(x, **self.kw, out=out)

    def gradient(self, dy, saved, out):
        unary.exp_backward(dy, saved, **self.kw, out=out)


@register("Log")
class LogLayer(_AffineParams):
    field = "log_param"

    def apply(self, x, out):
        return unary.log_forward(x, **self.kw, out=out)

    def gradient(self, dy, saved, out):
        unary.log_backward(dy, saved, **self.kw, out=out)


@register("AbsVal")
class AbsValLayer(UnaryLayer):
    op = "absval"

    def apply(self, x, out):
        return unary.absval_forward(x, out=out)

    def gradient(self, dy, saved, out):
        unary.absval_backward(dy, saved, out=out)


@register("BNLL")
class BNLLLayer(UnaryLayer):
    op = "bnll"

    def apply(self, x, out):
        return unary.bnll_forward(x, out=out)

    def gradient(self, dy, saved, out):
        unary.bnll_backward(dy, saved, out=out)


@register("Threshold")
class ThresholdLayer(UnaryLayer):
    """Forward only (Caffe's Backward_cpu is NOT_IMPLEMENTED): a backward through it is an error naming the layer."""

    needs_input = False

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.threshold = float(self.param.threshold_param.threshold)
        self.op, self.params = "threshold", {"threshold": self.threshold}

    def apply(self, x, out):
        return unary.threshold_forward(x, self.threshold, out=out)


@register("Swish")
class SwishLayer(UnaryLayer):
    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.beta = float(self.param.swish_param.beta)
        self.op, self.params = "swish", {"beta": self.beta}

    def apply(self, x, out):
        return unary.swish_forward(x, self.beta, out=out)

    def gradient(self, dy, saved, out):
        unary.swish_backward(dy, saved, self.beta, out=out)


@register("PReLU")
class PReLULayer(UnaryLayer):
    """Learned negative slopes, one per channel (axis 1) or one shared (a 0-d blob, as Caffe stores it)."""

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.prelu_param
        shape = bottom[0].shape
        if len(shape) < 2:
            raise self.error(f"expected an input of at least 2 axes (N, C, ...), got {shape}")
        filler = p.filler if p.has("filler") else Message("FillerParameter", value=0.25)
        self.blobs = [self._param_blob(0, () if p.channel_shared else (shape[1],), filler)]

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        want = self.blobs[0].data.size
        if len(shape) < 2 or (want != 1 or not self.param.prelu_param.channel_shared) and shape[1] != want:
            raise self.error(f"expected input (N, {want}, ...) for {want} slopes, got {shape}")
        top[0].reshape(shape)

    def apply(self, x, out):
        return unary.prelu_forward(x, self.blobs[0].data, out=out)

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        src, dst = bottom[0], top[0]
        x = src.data
        shape = x.shape
        if self.phase == "TRAIN" or not plain(x, shape):
            return None
        run = unary.unary_runner("prelu", shape)
        in_place = dst is src
        out = x if in_place else plan_out(dst, x, shape)
        slopes = self.blobs[0].data.size

        def step() -> bool:  # the slope Blob is looked up each call (weights can be swapped)
            x, a = src.data, self.blobs[0].data
            if not plain(x, shape) or (not in_place and dst.data is not out) or a.size != slopes:
                return False
            if a.dtype != np.float32 or not a.flags.c_contiguous:
                return False
            run(x, x if in_place else out, a)
            self.saved = x
            return True

        return step

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff OVERWRITTEN when propagate_down[0]; the slope diff ACCUMULATES (where param_needs_grad)."""
        need_dx = bool(propagate_down[0])
        need_da = param_needs(self, 1)[0]
        if not (need_dx or need_da):
            return
        if self.saved is None or (top[0] is bottom[0] and self.saved is top[0].data):
            raise self.error("backward needs the input of a TRAIN forward")
        unary.prelu_backward(
            top[0].diff,
            self.saved,
            self.blobs[0].data,
            need_dx=need_dx,
            out=diff_out(bottom[0]) if need_dx else None,
            dslope=self.blobs[0].diff if need_da else np.zeros(self.blobs[0].shape, np.float32),
        )
