"""More layers that move data without arithmetic: Slice, Tile, Crop, Permute, ShuffleChannel, Silence.

Caffe semantics (BVLC src/caffe/layers/*_layer.cpp; Permute from weiliu89/caffe's SSD branch, ShuffleChannel from
the ShuffleNet ports), forward / backward (every bottom diff OVERWRITTEN):
  Slice           bottom cut along `axis` (or legacy `slice_dim`) at slice_point (one per top boundary), or into
                  equal parts  /  dx = the tops' diffs laid back together.
  Tile            the block x.shape[axis:] repeated `tiles` times along `axis`  /  dx = the sum of the repeats.
  Crop            bottom 0 cut to bottom 1's shape on every axis from `axis` on, starting at `offset` (one for all
                  those axes or one each)  /  dx = dy inside the window, 0 elsewhere; bottom 1 gets no gradient.
  Permute         axes reordered by `order` (axes not listed follow in their order)  /  dx = dy permuted back.
  ShuffleChannel  channels (C = group * k) read as (group, k) and written as (k, group)  /  the inverse shuffle.
  Silence         no tops  /  the bottom diffs are zeroed.
The copies are NumPy slice assignments (compiled loops at memory speed); nothing runs per element in Python.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..blob import Blob
from .base import Layer, diff_out, register


def _axis(layer: Layer, axis: int, ndim: int, what: str = "axis") -> int:
    if not -ndim <= axis < ndim:
        raise layer.error(f"{what} {axis} is out of range for a {ndim}-axis input")
    return axis % ndim


@register("Slice")
class SliceLayer(Layer):
    num_top = (1, 1 << 30)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.slice_param
        if p.has("slice_dim") and p.has("axis"):
            raise self.error("give either slice_param.axis or slice_dim, not both")
        self.axis_param = int(p.slice_dim) if p.has("slice_dim") else int(p.axis)
        self.points = [int(v) for v in p.slice_point]
        if self.points and len(self.points) != len(top) - 1:
            raise self.error(f"{len(self.points)} slice_point values for {len(top)} tops (give one fewer than tops)")
        if any(b <= a for a, b in itertools.pairwise(self.points)) or (self.points and self.points[0] <= 0):
            raise self.error(f"slice_point must be increasing and > 0, got {self.points}")

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        self.axis = _axis(self, self.axis_param, len(shape))
        dim = shape[self.axis]
        if self.points:
            if self.points[-1] >= dim:
                raise self.error(f"slice_point {self.points[-1]} is not inside axis {self.axis} of size {dim}")
            edges = [0, *self.points, dim]
        else:
            if dim % len(top):
                raise self.error(f"axis {self.axis} of size {dim} does not split into {len(top)} equal parts")
            step = dim // len(top)
            edges = [i * step for i in range(len(top) + 1)]
        self.edges = list(itertools.pairwise(edges))
        for t, (a, b) in zip(top, self.edges):
            t.reshape((*shape[: self.axis], b - a, *shape[self.axis + 1 :]))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        for t, (a, b) in zip(top, self.edges):
            t.data = np.ascontiguousarray(x[(slice(None),) * self.axis + (slice(a, b),)])

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        if propagate_down[0]:
            dx = diff_out(bottom[0])
            for t, (a, b) in zip(top, self.edges):
                dx[(slice(None),) * self.axis + (slice(a, b),)] = t.diff


@register("Tile")
class TileLayer(Layer):
    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.tile_param
        if not p.has("tiles") or p.tiles < 1:
            raise self.error("tile_param.tiles must be given and >= 1")
        self.tiles = int(p.tiles)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        self.axis = _axis(self, int(self.param.tile_param.axis), len(shape))
        self.view = (math.prod(shape[: self.axis]), 1, math.prod(shape[self.axis :]))
        top[0].reshape((*shape[: self.axis], shape[self.axis] * self.tiles, *shape[self.axis + 1 :]))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        outer, _, inner = self.view
        y = np.empty((outer, self.tiles, inner), np.float32)
        y[...] = bottom[0].data.reshape(self.view)
        top[0].data = y.reshape(top[0].shape)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        if propagate_down[0]:
            outer, _, inner = self.view
            dx = diff_out(bottom[0])
            np.sum(top[0].diff.reshape(outer, self.tiles, inner), axis=1, out=dx.reshape(outer, inner))


@register("Crop")
class CropLayer(Layer):
    num_bottom = 2

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.crop_param
        shape, like = bottom[0].shape, bottom[1].shape
        if len(shape) != len(like):
            raise self.error(f"bottoms must have the same number of axes, got {shape} and {like}")
        axis = _axis(self, int(p.axis), len(shape), "crop_param.axis")
        offsets = [int(v) for v in p.offset]
        if len(offsets) > 1 and len(offsets) != len(shape) - axis:
            raise self.error(
                f"{len(offsets)} offsets for the {len(shape) - axis} axes from axis {axis} (give 1 or each)"
            )
        out, self.window = list(shape), []
        for i in range(len(shape)):
            start = 0 if i < axis else (offsets[0] if len(offsets) == 1 else offsets[i - axis] if offsets else 0)
            size = shape[i] if i < axis else like[i]
            if start + size > shape[i]:
                raise self.error(f"crop of {size} at offset {start} does not fit axis {i} of {shape} (bottom 0)")
            out[i] = size
            self.window.append(slice(start, start + size))
        self.window = tuple(self.window)
        top[0].reshape(tuple(out))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = np.ascontiguousarray(bottom[0].data[self.window])

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        if propagate_down[0]:
            dx = diff_out(bottom[0])
            dx[...] = 0
            dx[self.window] = top[0].diff


@register("Permute")
class PermuteLayer(Layer):
    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        order = [int(v) for v in self.param.permute_param.order]
        if any(not 0 <= v < len(shape) for v in order) or len(set(order)) != len(order):
            raise self.error(f"permute_param.order {order} must list distinct axes of the {len(shape)}-axis input")
        self.order = (*order, *(i for i in range(len(shape)) if i not in order))
        self.inverse = tuple(int(i) for i in np.argsort(self.order))
        top[0].reshape(tuple(shape[i] for i in self.order))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = np.ascontiguousarray(bottom[0].data.transpose(self.order))

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        if propagate_down[0]:
            diff_out(bottom[0])[...] = top[0].diff.transpose(self.inverse)


@register("ShuffleChannel")
class ShuffleChannelLayer(Layer):
    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        g = int(self.param.shuffle_channel_param.group)
        if len(shape) < 2 or g < 1 or shape[1] % g:
            raise self.error(f"shuffle_channel_param.group {g} must divide the channels of input {shape}")
        self.view = (shape[0], g, shape[1] // g, math.prod(shape[2:]))
        top[0].reshape(shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data.reshape(self.view)
        top[0].data = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(bottom[0].shape)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        if propagate_down[0]:
            n, g, k, inner = self.view
            dy = top[0].diff.reshape(n, k, g, inner)
            diff_out(bottom[0]).reshape(self.view)[...] = dy.transpose(0, 2, 1, 3)


@register("Silence")
class SilenceLayer(Layer):
    num_bottom = (1, 1 << 30)
    num_top = 0

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        pass

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        pass

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        for b, down in zip(bottom, propagate_down):
            if down:
                diff_out(b)[...] = 0
