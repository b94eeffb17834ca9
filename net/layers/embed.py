"""Layers that look parameters up: Embed (a learned table indexed by the bottom's values) and Parameter.

Caffe semantics (BVLC embed_layer.cpp, parameter_layer.cpp):
  Embed      weight (input_dim, num_output), bias (num_output,) (bias_term, default true); every bottom value is a
             row index, so top shape = bottom.shape + (num_output,): y[..., :] = W[x] + b. A value that is not a
             whole number in [0, input_dim) is an error naming the layer. Backward: no gradient to the indices
             (Caffe refuses to propagate to them); dW[x] += dy, db += sum of dy (both ACCUMULATE).
  Parameter  no bottom; its one blob (parameter_param.shape, filler zeros) is the top: the forward shares it, the
             backward adds the top diff to the blob's diff.
"""

from __future__ import annotations

import numpy as np

from ..blob import Blob
from ..schema import Message
from .base import Layer, param_needs, register


@register("Embed")
class EmbedLayer(Layer):
    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.embed_param
        if p.num_output <= 0 or p.input_dim <= 0:
            raise self.error("embed_param.num_output and embed_param.input_dim must be given and > 0")
        self.blobs = [self._param_blob(0, (int(p.input_dim), int(p.num_output)), p.weight_filler)]
        if p.bias_term:
            self.blobs.append(self._param_blob(1, (int(p.num_output),), p.bias_filler))

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].reshape((*bottom[0].shape, self.blobs[0].shape[1]))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        k = self.blobs[0].shape[0]
        idx = x.astype(np.int64)
        if x.size and (np.any(idx != x) or idx.min() < 0 or idx.max() >= k):
            bad = x.reshape(-1)[np.flatnonzero((idx != x) | (idx < 0) | (idx >= k))[0]]
            raise self.error(f"input value {bad} is not a row index of the {k}-row table (0 .. {k - 1})")
        self.idx = idx
        y = self.blobs[0].data[idx.reshape(-1)]
        if len(self.blobs) > 1:
            y += self.blobs[1].data
        top[0].data = y.reshape(top[0].shape)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """No input gradient (an error if asked for, as in Caffe); weight and bias diffs ACCUMULATE."""
        if propagate_down[0]:
            raise self.error("cannot propagate a gradient to the indices of an Embed layer (set propagate_down false)")
        needs = param_needs(self, len(self.blobs))
        dy = top[0].diff.reshape(-1, self.blobs[0].shape[1])
        if needs[0]:
            np.add.at(self.blobs[0].diff, self.idx.reshape(-1), dy)
        if len(self.blobs) > 1 and needs[1]:
            self.blobs[1].diff += dy.sum(axis=0, dtype=np.float64).astype(np.float32)


@register("Parameter")
class ParameterLayer(Layer):
    num_bottom = 0

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = tuple(int(d) for d in self.param.parameter_param.shape.dim)
        self.blobs = [self._param_blob(0, shape, Message("FillerParameter"))]

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].reshape(self.blobs[0].shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = self.blobs[0].data

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        if param_needs(self, 1)[0] and top[0].diff is not self.blobs[0].diff:
            self.blobs[0].diff += top[0].diff
