"""Layers that rearrange items or windows: Im2col, BatchReindex, Filter.

Caffe semantics (BVLC im2col_layer.cpp, batch_reindex_layer.cpp, filter_layer.cpp), forward / backward (every bottom
diff OVERWRITTEN):
  Im2col        convolution_param's kernel / stride / pad / dilation / axis as in a Convolution (1 to 3 spatial
                axes; kernel_h/_w etc. with 2): top = bottom.shape[:axis] + (C * prod(kernel),) + output spatial
                shape, channel (c, k...) holding x_pad at the window offset k: for 2-D (N, C*kh*kw, OH, OW)
                /  dx = col2im(dy), the sum of every window's gradient back at its pixels. num_output, group and
                bias settings are not used by Caffe's Im2col and are ignored here too.
  BatchReindex  bottoms x (N, ...) and permut (M,) of item indices in [0, N): top (M, ...) = x[permut]
                /  dx[j] = the sum of dy[i] over i with permut[i] = j; no gradient to permut (an error if asked).
  Filter        bottoms x_1 .. x_k (each (N, ...)) and a selector (N, 1, ...: singletons after the first axis) last;
                k tops: top_i = the items of x_i whose selector value is nonzero, in order
                /  dx_i = dy_i at the forwarded items, 0 elsewhere; no gradient to the selector (an error if asked).
                As in Caffe's first Reshape the tops are shaped (N, ...) when the net is shaped; each forward then
                gives them (count, ...) (Caffe re-runs Reshape every forward): layers after a Filter must accept a
                batch whose size changes at forward time, as in Caffe.
Im2col runs on kernels.conv_nd's Numba im2col / col2im, one call per item of the batch; the others are NumPy
fancy-indexing copies (one compiled pass each).
"""

from __future__ import annotations

import math

import numpy as np

from kernels import conv_nd

from ..blob import Blob
from .base import Layer, diff_out, register
from .conv_nd import _MAX_SPATIAL, nd_geometry


@register("Im2col")
class Im2colLayer(Layer):
    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self._geometry_for(bottom[0].shape)

    def _geometry_for(self, shape: tuple[int, ...]) -> None:
        nd_geometry(self, shape)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        if len(shape) != self.axis + 1 + self.nspatial:
            self._geometry_for(shape)
        spatial = (1,) * (_MAX_SPATIAL - self.nspatial) + tuple(shape[self.axis + 1 :])
        try:
            out = conv_nd.conv_nd_output_shape(spatial, self.kernel, self.stride, self.pad, self.dilation)
        except ValueError as exc:
            raise self.error(f"input {shape}: {exc}") from None
        c = shape[self.axis]
        self.in4 = (math.prod(shape[: self.axis]), c, *spatial)
        self.cols = (self.in4[0], c * math.prod(self.kernel), math.prod(out))
        top[0].reshape((*shape[: self.axis], self.cols[1], *out[_MAX_SPATIAL - self.nspatial :]))

    def _args(self) -> tuple:
        return self.kernel, self.stride, self.pad, self.dilation

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = np.ascontiguousarray(bottom[0].data, np.float32).reshape(self.in4)
        y = np.empty(self.cols, np.float32)
        for i in range(x.shape[0]):
            y[i] = conv_nd.im2col_nd(x[i], *self._args())
        top[0].data = y.reshape(top[0].shape)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        if not propagate_down[0]:
            return
        dy = np.ascontiguousarray(top[0].diff, np.float32).reshape(self.cols)
        dx = diff_out(bottom[0]).reshape(self.in4)
        for i in range(dy.shape[0]):
            conv_nd.col2im_nd(dy[i], self.in4[1:], *self._args(), out=dx[i])


def _indices(layer: Layer, values: np.ndarray, n: int, what: str) -> np.ndarray:
    idx = values.astype(np.int64)
    bad = (idx != values) | (idx < 0) | (idx >= n)
    if bad.any():
        raise layer.error(f"{what} value {values.reshape(-1)[np.flatnonzero(bad)[0]]} is not an item index in [0, {n})")
    return idx


@register("BatchReindex")
class BatchReindexLayer(Layer):
    num_bottom = 2

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        if len(bottom[1].shape) != 1:
            raise self.error(f"bottom 1 (the indices) must be 1-D, got shape {bottom[1].shape}")
        top[0].reshape((bottom[1].shape[0], *bottom[0].shape[1:]))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        self.idx = _indices(self, np.asarray(bottom[1].data), x.shape[0], "bottom 1 (permut)")
        top[0].data = np.ascontiguousarray(x[self.idx], np.float32)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        if len(propagate_down) > 1 and propagate_down[1]:
            raise self.error("cannot propagate a gradient to the indices (bottom 1): set propagate_down false")
        if propagate_down[0]:
            dx = diff_out(bottom[0])
            dx[...] = 0.0
            np.add.at(dx, self.idx, top[0].diff)


@register("Filter")
class FilterLayer(Layer):
    num_bottom = (2, 1 << 30)
    num_top = (1, 1 << 30)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        if len(top) != len(bottom) - 1:
            raise self.error(f"needs one top per bottom but the selector: {len(bottom)} bottoms, {len(top)} tops")

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        sel = bottom[-1].shape
        if not sel or any(d != 1 for d in sel[1:]):
            raise self.error(f"the selector (last bottom) must be (N,) or (N, 1, ...), got shape {sel}")
        for b, t in zip(bottom[:-1], top):
            if not b.shape or b.shape[0] != sel[0]:
                raise self.error(
                    f"bottom '{b.name}' has shape {b.shape}: its first axis must be the selector's {sel[0]}"
                )
            t.reshape(b.shape)  # Caffe's first Reshape: all N items; each forward gives the filtered count

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.keep = np.flatnonzero(np.asarray(bottom[-1].data).reshape(-1) != 0)
        for b, t in zip(bottom[:-1], top):
            t.data = np.ascontiguousarray(b.data[self.keep], np.float32)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        if propagate_down[-1]:
            raise self.error("cannot propagate a gradient to the selector (last bottom): set propagate_down false")
        for t, b, down in zip(top, bottom[:-1], propagate_down):
            if down:
                dx = diff_out(b)
                dx[...] = 0.0
                dx[self.keep] = t.diff
