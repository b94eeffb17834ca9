"""DummyData (BVLC dummy_data_layer.cpp): tops of given shapes filled by fillers, no bottoms.

Shapes: `shape` once for every top or once per top, or the legacy num / channels / height / width (each once or per
top; not both forms). Fillers: none (constant 0), one for every top, or one per top. A constant filler's top is
filled once and kept; any other filler draws new values (from the net's generator) on every forward, as in Caffe.
No backward (nothing to propagate to).
"""

from __future__ import annotations

import numpy as np

from ..blob import Blob
from ..fillers import fill
from ..schema import Message
from .base import Layer, register


@register("DummyData")
class DummyDataLayer(Layer):
    num_bottom = 0
    num_top = (1, 1 << 30)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.dummy_data_param
        n = len(top)
        fillers = list(p.data_filler)
        if len(fillers) not in (0, 1, n):
            raise self.error(f"{len(fillers)} data_filler for {n} tops (give none, 1 or one per top)")
        self.fillers = [
            fillers[i if len(fillers) > 1 else 0] if fillers else Message("FillerParameter") for i in range(n)
        ]
        legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
        if any(legacy):
            if p.shape:
                raise self.error("give either shape or num/channels/height/width, not both")
            if any(len(v) not in (1, n) for v in legacy):
                raise self.error(f"num, channels, height and width need 1 value or one per top ({n})")
            self.shapes = [tuple(int(v[i if len(v) > 1 else 0]) for v in legacy) for i in range(n)]
        else:
            if len(p.shape) not in (1, n):
                raise self.error(f"dummy_data_param.shape given {len(p.shape)} times for {n} tops (1 or one per top)")
            self.shapes = [tuple(int(d) for d in p.shape[i if len(p.shape) > 1 else 0].dim) for i in range(n)]
        if any(d < 0 for s in self.shapes for d in s):
            raise self.error(f"negative dimension in {self.shapes}")
        self.kept: list[np.ndarray | None] = [None] * n

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        for t, shape in zip(top, self.shapes):
            t.reshape(shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        for i, (t, filler, shape) in enumerate(zip(top, self.fillers, self.shapes)):
            if filler.type != "constant":
                t.data = fill(filler, shape, self.rng)
            elif self.kept[i] is None or t.data is not self.kept[i]:
                t.data = self.kept[i] = fill(filler, shape, self.rng)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        pass
