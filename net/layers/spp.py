"""SPP: spatial pyramid pooling (BVLC spp_layer.cpp), on the pooling kernels.

Level l (0 .. pyramid_height - 1) pools the (N, C, H, W) bottom into 2^l x 2^l bins: kernel k = ceil(H / 2^l),
stride k, pad ((k * 2^l - H) + 1) // 2 (likewise for W), MAX or AVE with Caffe's pooling rules (ceil, the pad clip).
With pyramid_height 1 the top is that one pooling's (N, C, 1, 1) output; otherwise each level is flattened to
(N, C * 4^l) and the levels are concatenated along axis 1. Backward: each level's pooling gradient, summed.
STOCHASTIC (Caffe's random draw, padded windows) is refused.
"""

from __future__ import annotations

import math

import numpy as np

from kernels import pool

from ..blob import Blob
from .base import Layer, diff_out, register


@register("SPP")
class SPPLayer(Layer):
    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.spp_param
        if not p.has("pyramid_height") or p.pyramid_height < 1:
            raise self.error("spp_param.pyramid_height must be given and >= 1")
        if p.pool not in ("MAX", "AVE"):
            raise self.error(f"spp_param.pool {p.pool} is not supported (MAX, AVE)")
        self.height, self.method = int(p.pyramid_height), p.pool

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error(f"expected a 4-D input (N, C, H, W), got {shape}")
        n, c, h, w = shape
        self.levels = []
        for level in range(self.height):
            bins = 2**level
            k = (math.ceil(h / bins), math.ceil(w / bins))
            pad = ((k[0] * bins - h + 1) // 2, (k[1] * bins - w + 1) // 2)
            if pad[0] >= k[0] or pad[1] >= k[1]:
                raise self.error(f"level {level}: {bins} bins need pad {pad} >= kernel {k} for input {shape}")
            out = pool.pool2d_output_shape((h, w), k, k, pad)
            self.levels.append({"kernel": k, "stride": k, "pad": pad, "out": (n, c, *out)})
        if self.height == 1:
            top[0].reshape(self.levels[0]["out"])
        else:
            top[0].reshape((n, sum(math.prod(lv["out"][1:]) for lv in self.levels)))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        x = bottom[0].data
        if not isinstance(x, np.ndarray):
            raise self.error("runs on CPU nets only")
        outs = [
            pool.pool2d_forward(x, method=self.method, kernel=lv["kernel"], stride=lv["stride"], pad=lv["pad"])
            for lv in self.levels
        ]
        if self.height == 1:
            top[0].data = outs[0]
        else:
            top[0].data = np.concatenate([o.reshape(x.shape[0], -1) for o in outs], axis=1)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff OVERWRITTEN when propagate_down[0] (the levels' gradients summed)."""
        if not propagate_down[0]:
            return
        x, dy = bottom[0].data, top[0].diff
        dx = diff_out(bottom[0])
        dx[...] = 0
        start = 0
        for lv in self.levels:
            size = math.prod(lv["out"][1:])
            g = np.ascontiguousarray(dy.reshape(x.shape[0], -1)[:, start : start + size]).reshape(lv["out"])
            start += size
            dx += pool.pool2d_backward(
                g, x, method=self.method, kernel=lv["kernel"], stride=lv["stride"], pad=lv["pad"]
            )
