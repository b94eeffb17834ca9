"""Convolution: grouped / depthwise / 1x1 convolutions on the CPU kernels, with BatchNorm/Scale folding."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from kernels import conv, depthwise, pointwise, pointwise_t, winograd

from ..blob import Blob, watched
from ..device import CPU, host, kernels_for, on_device
from .base import (
    Layer,
    plain,
    plan_out,
    register,
    reusable,
    spatial,
    uploaded,
)
from .conv_nd import ConvolutionNDLayer, hand_over


def pointwise_runner(layer, x_shape, w_shape, act):
    """The plan's runner of a 1x1 convolution: `kernels.pointwise_t` (output channels in the vector lanes: no edge
    pixels on 7 x 7 and 14 x 14 planes) where it applies and the weights cannot change under it (`layer.frozen`: a
    BatchNorm folded in at plan time, `folded` made once, or the net frozen, `Net.freeze`; `Net.refold` makes new
    plans, and the runner packs again), else `kernels.pointwise`."""
    if layer.frozen and pointwise_t.applies(x_shape, w_shape):
        return pointwise_t.PointwiseTRunner(x_shape, w_shape, act)
    return pointwise.PointwiseRunner(x_shape, w_shape, act)


WINOGRAD_TRAIN = False  # TRAIN-phase convolutions on Winograd too (see ConvolutionLayer.winograd_tile)


@register("Convolution")
class ConvolutionLayer(Layer):
    gpu_forward = True
    gpu_backward = True
    epilogue: ClassVar[dict[str, str]] = {"cpu": "clamp", "gpu": "clamp"}
    num_bottom = (1, 1 << 30)  # several bottoms share the weights, one top each (checked in layer_setup)
    num_top = None
    fused_relu = False  # set by net.net.fuse_layers: the next in-place ReLU / clip runs in the epilogue
    relu_max = math.inf  # with fused_relu: the upper bound of a fused ReLU6 / Clip (min(max(y, 0), relu_max))
    fold: tuple[Layer, Layer] | None = None  # (BatchNorm, Scale) folded into the weights (net.net.fuse_layers)
    _folded: tuple[np.ndarray, np.ndarray] | None = None
    folded = watched("folded", "the folded (weight, bias), made on first use (assignments counted: net.blob)")
    winograd: bool = True  # CPU forward: Winograd where kernels.winograd.choose picks a tile (False: never)

    @property
    def frozen(self) -> bool:
        """Are the forward's weights frozen: a BatchNorm folded in, so `folded` is made once and never changed in
        place (`Net.refold` makes new arrays), or the net frozen (`Net.freeze`: its parameters promised unchanged)?
        Runners may then keep what they derive from the weights by the array's identity (packed or transformed
        weights) instead of comparing values each call."""
        return self.fold is not None or self.weights_frozen

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
                wf, bf = uploaded(self.blobs[0].data, wf), uploaded(self.blobs[0].data, bf)
            self.folded = (wf, bf)
        return self.folded

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.convolution_param
        if len(top) != len(bottom):
            raise self.error(f"needs one top per bottom, got {len(bottom)} bottoms and {len(top)} tops")
        if p.num_output <= 0:
            raise self.error("convolution_param.num_output must be > 0")
        if hand_over(self, bottom, top, ConvolutionNDLayer):  # another channel axis or 1 / 3 spatial axes
            return
        self.kernel = spatial(
            p.kernel_size, p.kernel_h, p.kernel_w, p.has("kernel_h") or p.has("kernel_w"), 0, "kernel_size", self
        )
        if min(self.kernel) <= 0:
            raise self.error("kernel size must be given and > 0 (kernel_size or kernel_h/kernel_w)")
        self.stride = spatial(
            p.stride, p.stride_h, p.stride_w, p.has("stride_h") or p.has("stride_w"), 1, "stride", self
        )
        self.pad = spatial(p.pad, p.pad_h, p.pad_w, p.has("pad_h") or p.has("pad_w"), 0, "pad", self)
        self.dilation = spatial(p.dilation, None, None, False, 1, "dilation", self)
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

    def winograd_tile(self, x_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> int:
        """The Winograd tile (2 or 4) of the CPU forward of these shapes, or 0 where it does not take kernels.winograd
        (winograd.choose: 3x3 or 5x5, stride 1, enough channels and pixels; 0 when this layer's `winograd` is False,
        the environment says CREMA_WINOGRAD=0, or the layer is in a TRAIN-phase net and WINOGRAD_TRAIN is False; a
        solver's test nets follow net.solver.WINOGRAD_TESTS). Why training keeps the direct path by default: its
        weights change every iteration and the runner transforms them again each call (on the threads since the
        twenty-eighth round, ``winograd.transform_packed``: LeNet's conv2 96 us, 1.2 ms in NumPy before), so the tile
        now pays: LeNet's training iteration 1.04-1.05x with conv2 on F(4x4, 5x5) (conv2's forward 1.04 -> 0.59 ms,
        in-process A/B, 2 threads, Zen 4), bench_train 2.07-2.09x PyTorch against 2.02x; but the Winograd task then
        compiles into a new machine's first training iteration (6.8 s of compile CPU): 9.7 s -> 13.4-17.8 s, past the
        15 s asked in a slow hour (benchmarks/perf_notes.md, twenty-eighth round)."""
        if not self.winograd or (self.phase == "TRAIN" and not WINOGRAD_TRAIN):
            return 0
        return winograd.choose(x_shape, w_shape, self.stride, self.pad, self.dilation, self.group, self.frozen)

    def _frozen_winograd(self, x_shape: tuple[int, ...], w_shape: tuple[int, ...], m: int) -> winograd.WinogradRunner:
        """The layer forward's own Winograd runner for its frozen weights, one per input shape (a few at most): kept,
        so that the weights are transformed once, as in the plan's step (`winograd_tile` picks tiles for frozen
        weights)."""
        runners = self.__dict__.setdefault("_winograd_runners", {})
        key = (tuple(x_shape), m, self.fused_relu, self.relu_max)
        run = runners.get(key)
        if run is None:
            if len(runners) >= 8:
                runners.clear()
            run = runners[key] = winograd.WinogradRunner(
                x_shape, w_shape, self.pad, self.group, self.fused_relu, self.relu_max, m, frozen=True
            )
        return run

    def uses_winograd(self, x_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> bool:
        """Does the CPU forward of these shapes take kernels.winograd (`winograd_tile`)?"""
        return self.winograd_tile(x_shape, w_shape) != 0

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        w, b = self.forward_params()
        for bb, t in zip(bottom, top):
            ops = kernels_for(bb.data)
            extra = {"out": t.data} if ops is CPU and reusable(t.data, bb.data) else {}
            if self.relu_max != math.inf:
                extra["relu_max"] = self.relu_max
            m = self.winograd_tile(bb.data.shape, w.shape) if ops is CPU else 0
            if m:  # the same kernel as the plan's step
                kept = self._frozen_winograd(bb.data.shape, w.shape, m) if self.frozen else None
                t.data = winograd.winograd_forward(
                    bb.data, w, b, pad=self.pad, group=self.group, relu=self.fused_relu, m=m, runner=kept, **extra
                )
                continue
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
        x = bottom[0].data
        w, b = self.forward_params()
        x_shape, w_shape, b_shape = x.shape, w.shape, w.shape[:1]
        if not (plain(x, x_shape) and plain(w, w_shape) and (b is None or plain(b, b_shape))):
            return None
        act = self.act()
        if depthwise.depthwise_applies(x_shape, w_shape, self.group, self.dilation):
            run = self.depthwise_runner(x_shape)
        elif pointwise.pointwise_applies(x_shape, w_shape, self.stride, self.pad, self.dilation, self.group):
            run = pointwise_runner(self, x_shape, w_shape, act)
        elif m := self.winograd_tile(x_shape, w_shape):
            run = winograd.WinogradRunner(
                x_shape, w_shape, self.pad, self.group, self.fused_relu, self.relu_max, m, frozen=self.frozen
            )
        else:
            capped = {"relu_max": self.relu_max} if self.relu_max != math.inf else {}
            run = conv.ForwardRunner(
                x_shape, w_shape, self.stride, self.pad, self.dilation, self.group, self.fused_relu, **capped
            )
        step = self.plan_step(bottom, top, run)
        if isinstance(run, winograd.WinogradRunner) and not self.frozen:
            # net.replay: weights that may change in place (a solver's update, a test net sharing a training net's
            # weights) are compared every call, in Python, which a replay skips: it asks first
            step.replay_check = lambda: step.runner.current(self.forward_params()[0])
        return step

    def depthwise_runner(self, x_shape, c8: bool = False) -> depthwise.DepthwiseRunner:
        """This depthwise layer's runner for inputs of x_shape (c8: on the channel-block path at any plane size)."""
        w_shape = self.forward_params()[0].shape
        return depthwise.DepthwiseRunner(
            x_shape, w_shape, self.stride, self.pad, self.act(), self.dilation, frozen=self.frozen, c8=c8
        )

    def act(self) -> tuple[float, float] | None:
        """The clip fused into the epilogue, (lo, hi), or None."""
        return (0.0, self.relu_max) if self.fused_relu else None

    def plan_step(
        self, bottom: list[Blob], top: list[Blob], run, out_shape: tuple | None = None, *, runner: bool = True
    ) -> Callable[[], bool]:
        """The plan step that runs `run` (``run(x, w, b, out)``, out the top's array of out_shape, by default
        run.out_shape): the parameters and the input looked up and checked each call, False when they no longer fit.
        runner: `run` is a runner of this layer's shapes, kept as ``step.runner`` for the plan's passes, which may put
        another in its place; False for steps the passes must leave alone (``net.plan_steps``' own)."""
        src, dst = bottom[0], top[0]
        x = src.data
        w, _ = self.forward_params()
        x_shape, w_shape, b_shape = x.shape, w.shape, w.shape[:1]
        out = plan_out(dst, x, run.out_shape if out_shape is None else out_shape)
        zeros = np.zeros(b_shape, np.float32)
        checked = [None, None, None]  # the (x, w, b) arrays last checked: the same objects need no new check

        def step() -> bool:  # the parameters are looked up each call (Net.share_weights_from swaps the Blobs)
            w, b = self.forward_params()
            x = src.data
            if b is None:
                b = zeros
            if x is not checked[0] or w is not checked[1] or b is not checked[2]:
                if not (plain(x, x_shape) and plain(w, w_shape) and plain(b, b_shape)):
                    return False
                checked[:] = x, w, b
            if dst.data is not out:
                return False
            (step.runner if runner else run)(x, w, b, out)
            return True

        if runner:
            step.runner = run
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
            # fresh: a cleared diff whose zeros were never written (Blob.diff_to_overwrite): the first pair overwrites
            dw, fresh_w = self.blobs[0].diff_to_overwrite() if need_dw else (None, False)
            db, fresh_b = self.blobs[1].diff_to_overwrite() if need_db else (None, False)
            kernels_for(t.diff).conv2d_backward(
                t.diff,
                bb.data,
                w,
                stride=self.stride,
                pad=self.pad,
                dilation=self.dilation,
                group=self.group,
                dx=bb.diff if down else None,
                dw=dw,
                db=db,
                need_dx=bool(down),
                need_dw=need_dw,
                need_db=need_db,
                overwrite_dw=fresh_w,
                overwrite_db=fresh_b,
            )
