"""N-D Convolution and Deconvolution: Caffe's convolution_param with a channel `axis` other than 1 or a number of
spatial axes other than 2, on the 3-D kernels of kernels.conv_nd.

Caffe semantics (BVLC base_conv_layer.cpp): the channel axis is `axis` (default 1); the axes before it are batch axes
(flattened into one), the axes after it are spatial (1, 2 or 3 here; Caffe allows more, crema refuses them by
name). kernel_size / stride / pad / dilation give one value for every spatial axis or one value each (defaults:
stride 1, pad 0, dilation 1); kernel_h/_w, stride_h/_w and pad_h/_w only with 2 spatial axes. Weights
(num_output, C / group, *kernel) for Convolution, (C, num_output / group, *kernel) for Deconvolution; bias
(num_output,). `force_nd_im2col` changes only Caffe's code path, not its numbers, and is accepted.

The 2-D layers (net/layers/convolution.py, deconvolution.py) hand a layer over here when it is N-D
(`is_nd`): the instance's class becomes ConvolutionNDLayer / DeconvolutionNDLayer (same `type`), so the Net, the
FLOPs count and the weight loading see a Convolution / Deconvolution as usual. 1 or 2 spatial axes run as 3 with
leading size-1 axes (kernel 1, stride 1, pad 0, dilation 1), which leaves the numbers unchanged.

Forward / backward (x's diff OVERWRITTEN; weight and bias diffs ACCUMULATE, where param_needs_grad says so):
  Convolution    y = conv3d_forward(x, w, b)  /  conv3d_backward
  Deconvolution  y = the convolution's data gradient of x (the transposed convolution) + b;
                 O = s * (I - 1) + d * (k - 1) + 1 - 2 * p per spatial axis
                 /  dx = conv3d_forward(dy, w) (no bias); dw += conv3d_backward's dw with input dy, output diff x
Speed: per image and group an im2col and one SGEMM (kernels.conv_nd); CPU nets only (a GPU net names the layer).
"""

from __future__ import annotations

import math

import numpy as np

from kernels import conv_nd

from ..blob import Blob
from ..schema import Message
from .base import Layer, canonical_axis, param_needs

_MAX_SPATIAL = 3


def is_nd(param: Message, bottom: list[Blob]) -> bool:
    """Does this convolution_param / bottom need the N-D layer (not the 2-D NCHW one)?"""
    p = param.convolution_param
    ndim = len(bottom[0].shape) if bottom else 4
    return p.axis != 1 or ndim != 4 or any(len(v) > 2 for v in (p.kernel_size, p.stride, p.pad, p.dilation))


def _per_axis(layer: Layer, values: list[int], hw: tuple[str, str] | None, n: int, default: int, what: str):
    """Caffe's rule for one parameter over n spatial axes, as a 3-tuple (leading axes of size 1 get `fill`)."""
    return _as3(_values(layer, values, hw, n, default, what), 0 if what == "pad" else 1)


def _values(layer: Layer, values: list[int], hw: tuple[str, str] | None, n: int, default: int, what: str):
    p = layer.param.convolution_param
    has_hw = hw is not None and (p.has(hw[0]) or p.has(hw[1]))
    if has_hw:
        if n != 2:
            raise layer.error(f"{hw[0]}/{hw[1]} need 2 spatial axes, this input has {n}")
        if values:
            raise layer.error(f"give either {what} or {hw[0]}/{hw[1]}, not both")
        return int(getattr(p, hw[0])), int(getattr(p, hw[1]))
    if not values:
        return (default,) * n
    if len(values) == 1:
        return (int(values[0]),) * n
    if len(values) != n:
        raise layer.error(f"{what} has {len(values)} values for {n} spatial axes (give 1 or {n} values)")
    return tuple(int(v) for v in values)


def _as3(v: tuple[int, ...], fill: int) -> tuple[int, int, int]:
    return (fill,) * (_MAX_SPATIAL - len(v)) + tuple(v)


def nd_geometry(layer: Layer, shape: tuple[int, ...]) -> None:
    """convolution_param's N-D geometry for an input of `shape`, set on `layer` (Convolution, Deconvolution, Im2col):
    axis, nspatial (1 to 3 axes after the channel axis) and per-axis kernel, stride, pad, dilation (each given once
    or once per axis; kernel_h/_w and the like only with 2 axes); errors name the layer and the parameter."""
    p = layer.param.convolution_param
    layer.axis = canonical_axis(layer, int(p.axis), len(shape), "convolution_param.axis")
    n = len(shape) - layer.axis - 1
    if not 1 <= n <= _MAX_SPATIAL:
        raise layer.error(
            f"{n} spatial axes after channel axis {layer.axis} of input {shape}: crema supports 1 to {_MAX_SPATIAL}"
        )
    layer.nspatial = n
    layer.kernel = _per_axis(layer, p.kernel_size, ("kernel_h", "kernel_w"), n, 0, "kernel_size")
    layer.stride = _per_axis(layer, p.stride, ("stride_h", "stride_w"), n, 1, "stride")
    layer.pad = _per_axis(layer, p.pad, ("pad_h", "pad_w"), n, 0, "pad")
    layer.dilation = _per_axis(layer, p.dilation, None, n, 1, "dilation")
    if min(layer.kernel) <= 0:
        raise layer.error("kernel size must be given and > 0 (kernel_size or kernel_h/kernel_w)")
    if min(layer.stride) <= 0 or min(layer.dilation) <= 0:
        raise layer.error("stride and dilation must be > 0")


class _NDBase(Layer):
    transposed = False

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.convolution_param
        if p.num_output <= 0:
            raise self.error("convolution_param.num_output must be > 0")
        shape = bottom[0].shape
        if any(b.shape != shape for b in bottom):
            raise self.error(f"all bottoms must have the same shape, got {[b.shape for b in bottom]}")
        nd_geometry(self, shape)
        self.group = int(p.group)
        channels = shape[self.axis]
        if self.group <= 0 or channels % self.group or p.num_output % self.group:
            raise self.error(
                f"group {self.group} must divide both input channels ({channels}) and num_output ({p.num_output})"
            )
        self._spatial_out(shape)
        m = int(p.num_output)
        first = (channels, m // self.group) if self.transposed else (m, channels // self.group)
        self.blobs = [self._param_blob(0, (*first, *self.kernel[_MAX_SPATIAL - self.nspatial :]), p.weight_filler)]
        if p.bias_term:
            self.blobs.append(self._param_blob(1, (m,), p.bias_filler))

    def _geometry(self) -> dict:
        return {"stride": self.stride, "pad": self.pad, "dilation": self.dilation, "group": self.group}

    def _spatial_out(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        spatial = _as3(shape[self.axis + 1 :], 1)
        if self.transposed:
            out = tuple(
                s * (i - 1) + d * (k - 1) + 1 - 2 * p
                for i, k, s, p, d in zip(spatial, self.kernel, self.stride, self.pad, self.dilation)
            )
            if min(out) <= 0:
                raise self.error(f"input {shape} gives an empty output {out} (pad {self.pad} too large)")
            return out[_MAX_SPATIAL - self.nspatial :]
        try:
            out = conv_nd.conv_nd_output_shape(spatial, self.kernel, self.stride, self.pad, self.dilation)
            return out[_MAX_SPATIAL - self.nspatial :]
        except ValueError as exc:
            raise self.error(f"input {shape}: {exc}") from None

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        w = self.blobs[0].data
        cin = w.shape[0] if self.transposed else w.shape[1] * self.group
        m = w.shape[1] * self.group if self.transposed else w.shape[0]
        shape = bottom[0].shape
        if len(shape) != self.axis + 1 + self.nspatial or shape[self.axis] != cin:
            raise self.error(
                f"expected {cin} channels on axis {self.axis} and {self.nspatial} spatial axes, got {shape}"
            )
        if any(b.shape != shape for b in bottom):
            raise self.error(f"all bottoms must have the same shape, got {[b.shape for b in bottom]}")
        self.in5 = (math.prod(shape[: self.axis]), cin, *_as3(shape[self.axis + 1 :], 1))
        out_sp = self._spatial_out(shape)
        self.out5 = (self.in5[0], m, *_as3(out_sp, 1))
        for t in top:
            t.reshape((*shape[: self.axis], m, *out_sp))

    def _w5(self) -> np.ndarray:
        w = self.blobs[0].data
        return w.reshape(*w.shape[:2], *_as3(w.shape[2:], 1))


class ConvolutionNDLayer(_NDBase):
    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        b = self.blobs[1].data if len(self.blobs) > 1 else None
        for bb, t in zip(bottom, top):
            if not isinstance(bb.data, np.ndarray):
                raise self.error("N-D convolution runs on CPU nets only")
            x = bb.data.reshape(self.in5)
            t.data = conv_nd.conv3d_forward(x, self._w5(), b, **self._geometry()).reshape(t.shape)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        needs = param_needs(self, len(self.blobs))
        need_db = len(self.blobs) > 1 and needs[1]
        w5 = self._w5()
        for t, bb, down in zip(top, bottom, propagate_down):
            dx, _, _ = conv_nd.conv3d_backward(
                t.diff.reshape(self.out5), bb.data.reshape(self.in5), w5, **self._geometry(),
                dw=self.blobs[0].diff.reshape(w5.shape) if needs[0] else None,
                db=self.blobs[1].diff if need_db else None,
                need_dx=bool(down), need_dw=needs[0], need_db=need_db,
            )  # fmt: skip
            if down:
                bb.diff = dx.reshape(bb.shape)


class DeconvolutionNDLayer(_NDBase):
    transposed = True

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        w5 = self._w5()
        shape_only = np.empty(self.out5, np.float32)  # conv3d_backward reads only its shape (need_dw False)
        for bb, t in zip(bottom, top):
            if not isinstance(bb.data, np.ndarray):
                raise self.error("N-D deconvolution runs on CPU nets only")
            y, _, _ = conv_nd.conv3d_backward(
                bb.data.reshape(self.in5), shape_only, w5, **self._geometry(), need_dw=False, need_db=False
            )
            if len(self.blobs) > 1:
                y += self.blobs[1].data.reshape(1, -1, 1, 1, 1)
            t.data = y.reshape(t.shape)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        needs = param_needs(self, len(self.blobs))
        w5 = self._w5()
        for t, bb, down in zip(top, bottom, propagate_down):
            dy = np.ascontiguousarray(t.diff.reshape(self.out5))
            x = bb.data.reshape(self.in5)
            if needs[0]:
                conv_nd.conv3d_backward(
                    x, dy, w5, **self._geometry(), dw=self.blobs[0].diff.reshape(w5.shape), need_dx=False,
                    need_db=False,
                )  # fmt: skip
            if len(self.blobs) > 1 and needs[1]:
                self.blobs[1].diff += dy.sum(axis=(0, 2, 3, 4), dtype=np.float64).astype(np.float32)
            if down:
                bb.diff = conv_nd.conv3d_forward(dy, w5, None, **self._geometry()).reshape(bb.shape)


def hand_over(layer: Layer, bottom: list[Blob], top: list[Blob], nd_class: type[_NDBase]) -> bool:
    """Make `layer` (a 2-D Convolution / Deconvolution) the N-D class and set it up there, when it is N-D."""
    if not bottom or not is_nd(layer.param, bottom):
        return False
    kind = layer.type
    layer.__class__ = nd_class
    layer.type = kind  # keep 'Convolution' / 'Deconvolution' for the Net, FLOPs, visualisation and messages
    layer.layer_setup(bottom, top)
    return True
