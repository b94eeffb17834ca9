"""Pooling: MAX and AVE, global pooling, STOCHASTIC at TEST (its expectation)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kernels import pool, pool_stochastic

from ..blob import Blob
from ..device import CPU, empty_like, kernels_for
from .base import (
    Layer,
    diff_out,
    plain,
    plan_out,
    register,
    reusable,
)


@register("Pooling")
class PoolingLayer(Layer):
    """MAX / AVE pooling. At TRAIN a MAX layer records the argmax of every output (an int32 mask, Caffe's max_idx_)
    for the backward; elsewhere the backward recomputes it from the bottom data."""

    gpu_forward = True
    gpu_backward = True

    mask: np.ndarray | None = None

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.pooling_param
        if p.pool == "STOCHASTIC" and self.phase == "TRAIN":
            raise self.error(
                "STOCHASTIC pooling at TRAIN (a random draw per window) is not implemented; a TEST net computes its "
                "expectation (MAX, AVE, STOCHASTIC at TEST)"
            )
        if p.pool not in ("MAX", "AVE", "STOCHASTIC"):
            raise self.error(f"pool method {p.pool} is not supported (MAX, AVE, STOCHASTIC at TEST)")
        for what in ("kernel", "pad", "stride"):  # Caffe's rule: the plain field, or both _h and _w, never a mix
            plain_name = "kernel_size" if what == "kernel" else what
            has_h, has_w = p.has(f"{what}_h"), p.has(f"{what}_w")
            if (has_h or has_w) and (p.has(plain_name) or not (has_h and has_w)):
                raise self.error(f"give {plain_name} or {what}_h and {what}_w (both), not a mix")
        self.method = p.pool
        self.global_pooling = bool(p.global_pooling)
        if self.global_pooling:
            if p.has("kernel_size") or p.has("kernel_h") or p.has("kernel_w"):
                raise self.error("global_pooling and a kernel size cannot both be given")
        elif p.has("kernel_h") != p.has("kernel_w"):
            raise self.error("give both kernel_h and kernel_w")
        elif not (p.has("kernel_size") or p.has("kernel_h")):
            raise self.error("kernel_size (or kernel_h and kernel_w) is required")
        k = (p.kernel_h, p.kernel_w) if p.has("kernel_h") else (p.kernel_size, p.kernel_size)
        self.stride = (p.stride_h, p.stride_w) if p.has("stride_h") else (p.stride, p.stride)
        self.pad = (p.pad_h, p.pad_w) if p.has("pad_h") else (p.pad, p.pad)
        self.kernel = tuple(int(v) for v in k)
        self.round_mode = p.round_mode
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error("global pooling needs pad 0 and stride 1")
        if not self.global_pooling:
            if min(self.kernel) <= 0 or min(self.stride) <= 0:
                raise self.error(f"kernel {self.kernel} and stride {self.stride} must be > 0")
            if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
                raise self.error(f"pad {self.pad} must be smaller than kernel {self.kernel}")
        if self.method == "STOCHASTIC" and self.pad != (0, 0):
            raise self.error(f"padding {self.pad} is implemented only for MAX and AVE pooling (as in Caffe)")

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error(f"expected a 4-D input (N, C, H, W), got {shape}")
        if self.global_pooling:
            self.kernel = (shape[2], shape[3])
        oh, ow = pool.pool2d_output_shape(shape[2:], self.kernel, self.stride, self.pad, self.round_mode)
        top[0].reshape((shape[0], shape[1], oh, ow))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        if self.method == "STOCHASTIC":  # TEST only (layer_setup): the expectation, kernels.pool_stochastic
            if not isinstance(bottom[0].data, np.ndarray):
                raise self.error("STOCHASTIC pooling runs on CPU nets only")
            top[0].data = pool_stochastic.stochastic_pool_test(
                bottom[0].data, self.kernel, self.stride, self.round_mode, out=top[0].data
            )
            return
        mask = None
        if self.method == "MAX" and self.phase == "TRAIN":
            if self.mask is None or self.mask.shape != top[0].shape or type(self.mask) is not type(bottom[0].data):
                self.mask = empty_like(bottom[0].data, top[0].shape, np.int32)
            mask = self.mask
        else:
            self.mask = None
        ops = kernels_for(bottom[0].data)
        extra = {"out": top[0].data} if ops is CPU and reusable(top[0].data, bottom[0].data) else {}
        top[0].data = ops.pool2d_forward(
            bottom[0].data,
            **extra,
            method=self.method,
            kernel=self.kernel,
            stride=self.stride,
            pad=self.pad,
            round_mode=self.round_mode,
            mask=mask,
        )

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        if self.method == "MAX" and self.phase == "TRAIN" or self.method == "STOCHASTIC":
            return None  # the forward records the argmax mask for the backward / STOCHASTIC has its own kernel
        src, dst = bottom[0], top[0]
        x = src.data
        x_shape = x.shape
        if not plain(x, x_shape):
            return None
        run = pool.ForwardRunner(
            x_shape,
            method=self.method,
            kernel=self.kernel,
            stride=self.stride,
            pad=self.pad,
            round_mode=self.round_mode,
        )
        out = plan_out(dst, x, run.out_shape)
        self.mask = None

        def step() -> bool:
            x = src.data
            if dst.data is not out or not plain(x, x_shape):
                return False
            run(x, out)
            return True

        return step

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten when propagate_down[0]; pooling has no parameters."""
        if not propagate_down[0]:
            return
        if self.method == "STOCHASTIC":
            raise self.error("STOCHASTIC pooling has no TEST-time backward (Caffe's needs the TRAIN draw)")
        kernels_for(top[0].diff).pool2d_backward(
            top[0].diff,
            bottom[0].data,
            method=self.method,
            kernel=self.kernel,
            stride=self.stride,
            pad=self.pad,
            round_mode=self.round_mode,
            mask=self.mask,
            out=diff_out(bottom[0]),
        )
