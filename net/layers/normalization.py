"""Normalisation and affine layers: LRN, BatchNorm, Scale, Bias."""

from __future__ import annotations

from collections.abc import Callable

from kernels import elementwise

from ..blob import Blob
from ..device import kernels_for
from ..schema import Message
from .base import (
    NO_STEP,
    Layer,
    axes_shape,
    diff_out,
    param_needs,
    plain,
    plan_out,
    register,
)


@register("LRN")
class LRNLayer(Layer):
    gpu_forward = True
    gpu_backward = True

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

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        """A CPU plan's step (not in place): the output written into one array kept from call to call, not a new one
        each forward (the forward's new array each call kept net.replay from recording a net with LRN, CaffeNet:
        the next layer's recorded input was the old array)."""
        src, dst = bottom[0], top[0]
        x = src.data
        x_shape = x.shape
        if dst is src or not plain(x, x_shape):
            return None
        out = plan_out(dst, x, x_shape)  # an array of the top's own, not overlapping x
        kernel = kernels_for(x).lrn_forward

        def step() -> bool:
            x = src.data
            if dst.data is not out or not plain(x, x_shape):
                return False
            self.x = x
            kernel(x, **self.kw, out=out)
            return True

        return step

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten when propagate_down[0]; LRN has no parameters."""
        if not propagate_down[0]:
            return
        k = kernels_for(top[0].diff)
        if top[0] is bottom[0]:  # dx cannot be written over dy here
            bottom[0].diff = k.lrn_backward(top[0].diff, self.x, **self.kw)
        else:
            k.lrn_backward(top[0].diff, self.x, **self.kw, out=diff_out(bottom[0]))


@register("BatchNorm")
class BatchNormLayer(Layer):
    gpu_forward = True
    fused = False  # folded into the Convolution before it (net.net.fuse_layers): the forward does nothing

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        return NO_STEP if self.fused else None

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.batch_norm_param
        self.use_global = p.use_global_stats if p.has("use_global_stats") else self.phase == "TEST"
        if not self.use_global:  # refused while the net is built, before any weights load
            raise self.error(
                "batch statistics (use_global_stats: false, the TRAIN default) are not implemented; "
                "set use_global_stats: true"
            )
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


@register("Scale")
class ScaleLayer(Layer):
    gpu_forward = True
    num_bottom = (1, 2)
    fused = False  # folded into the Convolution before it (net.net.fuse_layers): the forward does nothing

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        return NO_STEP if self.fused else None

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.scale_param
        self.axis = int(p.axis)
        gshape = axes_shape(self, bottom[0].shape, self.axis, int(p.num_axes))
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
        needs = param_needs(self, len(self.blobs))
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
            out=diff_out(bottom[0]) if need_dx else None,
            dgamma=None if two or not need_dgamma else self.blobs[0].diff,
            dbeta=self.blobs[-1].diff if need_dbeta else None,
        )
        if two and need_dgamma:
            bottom[1].diff = dgamma.reshape(bottom[1].shape)


@register("Bias")
class BiasLayer(Layer):
    gpu_forward = True
    num_bottom = (1, 2)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.bias_param
        self.axis = int(p.axis)
        if len(bottom) == 1:
            self.blobs = [self._param_blob(0, axes_shape(self, bottom[0].shape, self.axis, int(p.num_axes)), p.filler)]

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
        need_dbeta = bool(propagate_down[1]) if two else param_needs(self, 1)[0]
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
            out=diff_out(bottom[0]) if need_dx else None,
            dbeta=None if two or not need_dbeta else self.blobs[0].diff,
        )
        if two and need_dbeta:
            bottom[1].diff = dbeta.reshape(bottom[1].shape)
