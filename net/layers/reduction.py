"""Reductions: Reduction (SUM, ASUM, SUMSQ, MEAN over the tail axes) and ArgMax (forward only, as in Caffe).

Caffe semantics (BVLC reduction_layer.cpp, argmax_layer.cpp):
  Reduction  every axis from `axis` (default 0) on is reduced: top shape = bottom.shape[:axis] (0-d for axis 0);
             y = coeff * {sum x, sum |x|, sum x^2, sum x / count}  /  dx = coeff * dy * {1, sign(x), 2 x, 1 / count}
  ArgMax     the top_k largest values per slice, in descending order, ties to the larger index (std::greater on
             (value, index) pairs). With `axis`: top shape = bottom's with shape[axis] = top_k, holding indices, or
             the values with out_max_val. Without: each sample flattened, top (N, 1, top_k) (more axes of 1 up to the
             bottom's rank), or (N, 2, top_k) with indices then values for out_max_val. No backward.
The sums are NumPy reductions (pairwise, in float64 for the backward-relevant cases), one compiled pass each.
"""

from __future__ import annotations

import math

import numpy as np

from ..blob import Blob
from .base import Layer, diff_out, register


@register("Reduction")
class ReductionLayer(Layer):
    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.reduction_param
        if p.operation not in ("SUM", "ASUM", "SUMSQ", "MEAN"):
            raise self.error(f"reduction_param.operation {p.operation} is not supported (SUM, ASUM, SUMSQ, MEAN)")
        self.op, self.coeff = p.operation, float(p.coeff)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        axis = int(self.param.reduction_param.axis)
        if not -len(shape) <= axis < max(len(shape), 1):
            raise self.error(f"reduction_param.axis {axis} is out of range for input {shape}")
        self.axis = axis % max(len(shape), 1)
        self.view = (math.prod(shape[: self.axis]), math.prod(shape[self.axis :]))
        top[0].reshape(shape[: self.axis])

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data.reshape(self.view)
        if self.op == "SUM":
            y = x.sum(axis=1)
        elif self.op == "ASUM":
            y = np.abs(x).sum(axis=1)
        elif self.op == "SUMSQ":
            y = np.einsum("ij,ij->i", x, x)
        else:
            y = x.sum(axis=1) / np.float32(self.view[1])
        if self.coeff != 1:
            y *= np.float32(self.coeff)
        top[0].data = y.astype(np.float32, copy=False).reshape(top[0].shape)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff OVERWRITTEN when propagate_down[0]."""
        if not propagate_down[0]:
            return
        g = top[0].diff.reshape(-1, 1) * np.float32(self.coeff)
        dx = diff_out(bottom[0]).reshape(self.view)
        x = bottom[0].data.reshape(self.view)
        if self.op == "SUM":
            dx[...] = g
        elif self.op == "ASUM":
            np.multiply(np.sign(x), g, out=dx)
        elif self.op == "SUMSQ":
            np.multiply(x, g * np.float32(2), out=dx)
        else:
            dx[...] = g / np.float32(self.view[1])


@register("ArgMax")
class ArgMaxLayer(Layer):
    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.argmax_param
        self.top_k, self.out_max_val = int(p.top_k), bool(p.out_max_val)
        self.axis_param = int(p.axis) if p.has("axis") else None
        if self.top_k < 1:
            raise self.error("argmax_param.top_k must be >= 1")

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        if self.axis_param is None:
            if len(shape) < 1:
                raise self.error("needs an input with a batch axis")
            dim = math.prod(shape[1:])
            out = [1] * max(len(shape), 3)
            out[0], out[2] = shape[0], self.top_k
            if self.out_max_val:
                out[1] = 2
            self.axis = None
        else:
            if not -len(shape) <= self.axis_param < len(shape):
                raise self.error(f"argmax_param.axis {self.axis_param} is out of range for input {shape}")
            self.axis = self.axis_param % len(shape)
            dim = shape[self.axis]
            out = list(shape)
            out[self.axis] = self.top_k
        if self.top_k > dim:
            raise self.error(f"argmax_param.top_k {self.top_k} is larger than the {dim} values per slice")
        top[0].reshape(tuple(out))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        if self.axis is None:
            v = x.reshape(x.shape[0], 1, -1)
            axis = 2
        else:
            v, axis = x, self.axis
        # descending, ties to the larger index: a stable ascending sort of -x over the reversed axis
        rev = np.flip(v, axis=axis)
        order = np.argsort(-rev, axis=axis, kind="stable")
        order = np.take(order, np.arange(self.top_k), axis=axis)
        idx = v.shape[axis] - 1 - order
        vals = np.take_along_axis(v, idx, axis=axis)
        if self.axis is None:
            out = np.concatenate([idx, vals], axis=1) if self.out_max_val else idx
        else:
            out = vals if self.out_max_val else idx
        top[0].data = np.ascontiguousarray(out, dtype=np.float32).reshape(top[0].shape)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        if propagate_down[0]:
            raise self.error("Caffe has no backward for ArgMax")
