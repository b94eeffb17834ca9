"""Eltwise: SUM, PROD, MAX of several bottoms."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from kernels import elementwise

from ..blob import Blob
from ..device import empty_like, kernels_for
from .base import (
    Layer,
    plain,
    plan_out,
    register,
)


@register("Eltwise")
class EltwiseLayer(Layer):
    gpu_forward = True
    gpu_backward = True
    num_bottom = (2, 1 << 30)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.eltwise_param
        self.op = p.operation
        self.coeffs = [float(c) for c in p.coeff] or None
        if self.coeffs is not None and self.op != "SUM":
            raise self.error("coeff is only allowed with operation SUM")
        if self.coeffs is not None and len(self.coeffs) != len(bottom):
            raise self.error(f"needs one coeff per bottom: {len(self.coeffs)} coeffs, {len(bottom)} bottoms")

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        for b in bottom[1:]:
            if b.shape != bottom[0].shape:
                raise self.error(f"all inputs must have the same shape: {bottom[0].shape} vs {b.shape}")
        top[0].reshape(bottom[0].shape)

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        if self.op != "SUM" or top[0] in bottom:
            return None
        shape = bottom[0].shape
        xs = [b.data for b in bottom]
        if not all(plain(x, shape) for x in xs):
            return None
        run = elementwise.eltwise_sum_runner(len(xs), math.prod(shape), self.coeffs)
        dst = top[0]
        out = plan_out(dst, xs[0], shape)
        if any(np.may_share_memory(out, x) for x in xs):
            return None

        def step() -> bool:
            xs = [b.data for b in bottom]
            if dst.data is not out or not all(plain(x, shape) for x in xs):
                return False
            self.xs, self.mask = xs, None  # as forward keeps them (SUM's backward reads neither)
            run(xs, out)
            return True

        return step

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        """At TRAIN a MAX layer records the winning bottom per element for the backward (Caffe's max_idx_)."""
        self.xs = [b.data for b in bottom]  # kept for PROD/MAX backward, also when top is one of the bottoms
        self.mask = None
        if self.op == "MAX" and self.phase == "TRAIN":
            self.mask = empty_like(self.xs[0], bottom[0].shape, np.int32)
        top[0].data = kernels_for(self.xs[0]).eltwise_forward(
            self.xs, operation=self.op, coeffs=self.coeffs, mask=self.mask
        )

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[i].diff is overwritten where propagate_down[i] (SUM: coeff * dy, PROD: dy * the other inputs, MAX:
        dy where bottom i won)."""
        grads = kernels_for(top[0].diff).eltwise_backward(
            top[0].diff, self.xs, self.op, self.coeffs, mask=self.mask, propagate_down=propagate_down
        )
        for b, g in zip(bottom, grads):
            if g is not None:
                b.diff = g
