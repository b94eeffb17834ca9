"""More normalisation layers: Normalize (SSD's L2 normalisation with a learned scale) and MVN.

Semantics, forward / backward (the gradients are the exact derivatives, checked by central differences):
  Normalize (weiliu89/caffe normalize_layer.cpp) x (N, C, ...): n = sqrt(sum x^2 + eps) over C and all positions
            (across_spatial, the default) or over C at each position; y = s * x / n with s one scale (channel_shared,
            the default; a 0-d blob as that Caffe stores it) or one per channel (filler default constant 1)
            /  dx = s * dy / n - x * sum(s * dy * x) / n^3 over the same group; ds += sum(dy * x / n).
            (SSD Caffe scales the projected gradient by s afterwards, which is the same only for a shared scale.)
  MVN       (BVLC mvn_layer.cpp) per sample and channel (or per sample, across_channels): d = x - mean(x);
            y = d / (sqrt(mean(d^2)) + eps) with normalize_variance (default), else y = d
            /  dx = (dy - mean(dy)) / s - d * mean(dy * d) / (sigma * s^2), s = sigma + eps; without variance
            dx = dy - mean(dy).
NumPy reductions over (groups, elements) views; sums of squares and dot products in float64.
"""

from __future__ import annotations

import math

import numpy as np

from ..blob import Blob
from ..schema import Message
from .base import Layer, diff_out, param_needs, register


@register("Normalize")
class NormalizeLayer(Layer):
    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.norm_param
        shape = bottom[0].shape
        if len(shape) < 2:
            raise self.error(f"expected an input of at least 2 axes (N, C, ...), got {shape}")
        self.across, self.shared, self.eps = bool(p.across_spatial), bool(p.channel_shared), float(p.eps)
        filler = p.scale_filler if p.has("scale_filler") else Message("FillerParameter", value=1.0)
        self.blobs = [self._param_blob(0, () if self.shared else (shape[1],), filler)]

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        if len(shape) < 2 or (not self.shared and shape[1] != self.blobs[0].data.size):
            raise self.error(f"expected input (N, {self.blobs[0].data.size}, ...), got {shape}")
        self.view = (shape[0], shape[1], math.prod(shape[2:]))
        top[0].reshape(shape)

    def _scale(self) -> np.ndarray:
        s = self.blobs[0].data.astype(np.float64)
        return s.reshape(()) if self.shared else s.reshape(1, -1, 1)

    def _norm(self, x: np.ndarray) -> np.ndarray:
        """(N, 1, 1) across spatial positions, else (N, 1, S): sqrt(sum x^2 + eps) over the group."""
        return np.sqrt((x * x).sum(axis=(1, 2) if self.across else (1,), keepdims=True) + self.eps)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data.reshape(self.view).astype(np.float64)
        self.x = bottom[0].data
        y = x / self._norm(x) * self._scale()
        top[0].data = y.astype(np.float32).reshape(bottom[0].shape)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff OVERWRITTEN when propagate_down[0]; the scale diff ACCUMULATES (param_needs_grad)."""
        x = self.x.reshape(self.view).astype(np.float64)
        g = top[0].diff.reshape(self.view).astype(np.float64)
        n = self._norm(x)
        if param_needs(self, 1)[0]:
            ds = g * x / n
            ds = ds.sum() if self.shared else ds.sum(axis=(0, 2))
            self.blobs[0].diff[...] += np.asarray(ds, np.float32).reshape(self.blobs[0].shape)
        if propagate_down[0]:
            gs = g * self._scale()
            axes = (1, 2) if self.across else (1,)
            dot = (gs * x).sum(axis=axes, keepdims=True)
            dx = gs / n - x * dot / n**3
            diff_out(bottom[0])[...] = dx.astype(np.float32).reshape(bottom[0].shape)


@register("MVN")
class MVNLayer(Layer):
    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.mvn_param
        self.variance, self.across, self.eps = bool(p.normalize_variance), bool(p.across_channels), float(p.eps)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        if len(shape) < 2:
            raise self.error(f"expected an input of at least 2 axes (N, C, ...), got {shape}")
        groups = shape[0] if self.across else shape[0] * shape[1]
        self.view = (groups, math.prod(shape) // max(groups, 1))
        top[0].reshape(shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data.reshape(self.view).astype(np.float64)
        d = x - x.mean(axis=1, keepdims=True)
        if self.variance:
            self.sigma = np.sqrt((d * d).mean(axis=1, keepdims=True))
            self.d = d
            d = d / (self.sigma + self.eps)
        top[0].data = d.astype(np.float32).reshape(bottom[0].shape)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff OVERWRITTEN when propagate_down[0]."""
        if not propagate_down[0]:
            return
        g = top[0].diff.reshape(self.view).astype(np.float64)
        dx = g - g.mean(axis=1, keepdims=True)
        if self.variance:
            s = self.sigma + self.eps
            safe = np.where(self.sigma > 0, self.sigma, 1.0)
            dx = dx / s - self.d * (g * self.d).mean(axis=1, keepdims=True) / (safe * s * s)
        diff_out(bottom[0])[...] = dx.astype(np.float32).reshape(bottom[0].shape)
