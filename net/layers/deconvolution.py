"""Deconvolution (Caffe's transposed convolution) on the convolution kernels.

Caffe's DeconvolutionLayer swaps the two passes of a convolution with the same convolution_param: its forward is the
convolution's data gradient and its data gradient is the convolution's forward. With weights w of shape
(C_in, C_out / group, kh, kw) (Caffe's layout: the first axis is the deconvolution's input channels):
  forward   y (N, C_out, OH, OW) = conv2d_backward's dx for dy = x, plus the bias per output channel;
            OH = stride * (H - 1) + dilation * (kh - 1) + 1 - 2 * pad (likewise OW)
  backward  dx = conv2d_forward(dy, w) (no bias); dw += conv2d_backward's dw with the convolution's input = dy and
            its output gradient = x; db += sum of dy over N, OH, OW
"""

from __future__ import annotations

import numpy as np

from kernels import conv

from ..blob import Blob
from .base import Layer, diff_out, param_needs, register, spatial
from .conv_nd import DeconvolutionNDLayer, hand_over


@register("Deconvolution")
class DeconvolutionLayer(Layer):
    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.convolution_param
        if p.num_output <= 0:
            raise self.error("convolution_param.num_output must be > 0")
        if hand_over(self, bottom, top, DeconvolutionNDLayer):  # another channel axis or 1 / 3 spatial axes
            return
        has_hw = p.has("kernel_h") or p.has("kernel_w")
        self.kernel = spatial(p.kernel_size, p.kernel_h, p.kernel_w, has_hw, 0, "kernel_size", self)
        if min(self.kernel) <= 0:
            raise self.error("kernel size must be given and > 0 (kernel_size or kernel_h/kernel_w)")
        self.stride = spatial(
            p.stride, p.stride_h, p.stride_w, p.has("stride_h") or p.has("stride_w"), 1, "stride", self
        )
        self.pad = spatial(p.pad, p.pad_h, p.pad_w, p.has("pad_h") or p.has("pad_w"), 0, "pad", self)
        self.dilation = spatial(p.dilation, None, None, False, 1, "dilation", self)
        if min(self.stride) <= 0 or min(self.dilation) <= 0:
            raise self.error("stride and dilation must be > 0")
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error(f"expected a 4-D input (N, C, H, W), got shape {shape}")
        self.group = int(p.group)
        if self.group <= 0 or shape[1] % self.group or p.num_output % self.group:
            raise self.error(f"group {self.group} must divide both input channels ({shape[1]}) and num_output")
        self._out_hw(shape)
        wshape = (shape[1], int(p.num_output) // self.group, *self.kernel)
        self.blobs = [self._param_blob(0, wshape, p.weight_filler)]
        if p.bias_term:
            self.blobs.append(self._param_blob(1, (int(p.num_output),), p.bias_filler))

    def _out_hw(self, shape: tuple[int, ...]) -> tuple[int, int]:
        out = tuple(
            s * (n - 1) + d * (k - 1) + 1 - 2 * p
            for n, k, s, p, d in zip(shape[2:], self.kernel, self.stride, self.pad, self.dilation)
        )
        if min(out) <= 0:
            raise self.error(f"input {shape} gives an empty output {out} (pad {self.pad} too large)")
        return out

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape, w = bottom[0].shape, self.blobs[0].data
        if len(shape) != 4 or shape[1] != w.shape[0]:
            raise self.error(f"expected input of shape (N, {w.shape[0]}, H, W), got {shape}")
        self.out_shape = (shape[0], w.shape[1] * self.group, *self._out_hw(shape))
        top[0].reshape(self.out_shape)

    def _geometry(self) -> dict:
        return {"stride": self.stride, "pad": self.pad, "dilation": self.dilation, "group": self.group}

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        if not isinstance(x, np.ndarray):
            raise self.error("runs on CPU nets only")
        shape_only = np.empty(self.out_shape, np.float32)  # conv2d_backward reads only its shape (need_dw False)
        out = top[0].data if top[0].data.shape == self.out_shape and top[0].data.flags.writeable else None
        if out is not None and (out.dtype != np.float32 or not out.flags.c_contiguous or np.shares_memory(out, x)):
            out = None
        y, _, _ = conv.conv2d_backward(
            x, shape_only, self.blobs[0].data, **self._geometry(), dx=out, need_dw=False, need_db=False
        )
        if len(self.blobs) > 1:
            y += self.blobs[1].data.reshape(1, -1, 1, 1)
        top[0].data = y
        self.x = x

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff OVERWRITTEN when propagate_down[0]; weight and bias diffs ACCUMULATE (param_needs_grad)."""
        needs = param_needs(self, len(self.blobs))
        dy = np.ascontiguousarray(top[0].diff)
        w = self.blobs[0].data
        if needs[0]:
            conv.conv2d_backward(self.x, dy, w, **self._geometry(), dw=self.blobs[0].diff, need_dx=False, need_db=False)
        if len(self.blobs) > 1 and needs[1]:
            self.blobs[1].diff += dy.sum(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
        if propagate_down[0]:
            conv.conv2d_forward(dy, w, None, **self._geometry(), out=diff_out(bottom[0]))
