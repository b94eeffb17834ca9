"""InnerProduct (fully connected)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from kernels import fc

from ..blob import Blob
from ..device import CPU, kernels_for
from .base import (
    Layer,
    canonical_axis,
    plain,
    plan_out,
    register,
    reusable,
)


@register("InnerProduct")
class InnerProductLayer(Layer):
    gpu_forward = True
    gpu_backward = True
    epilogue: ClassVar[dict[str, str]] = {"cpu": "relu"}  # the GPU launcher has no fused ReLU
    fused_relu = False  # set on CPU nets by net.net: the next in-place ReLU runs in the same kernel call

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.inner_product_param
        if p.num_output <= 0:
            raise self.error("inner_product_param.num_output must be > 0")
        self.axis = canonical_axis(self, int(p.axis), len(bottom[0].shape), "inner_product_param.axis")
        k = int(np.prod(bottom[0].shape[self.axis :]))
        self.transpose = bool(p.transpose)
        wshape = (k, int(p.num_output)) if self.transpose else (int(p.num_output), k)
        self.blobs = [self._param_blob(0, wshape, p.weight_filler)]
        if p.bias_term:
            self.blobs.append(self._param_blob(1, (int(p.num_output),), p.bias_filler))

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        shape = bottom[0].shape
        k = int(np.prod(shape[self.axis :]))
        w = self.blobs[0].data
        want = w.shape[0] if self.transpose else w.shape[1]
        if k != want:
            raise self.error(f"input {shape} flattens to {k} features from axis {self.axis}, weights expect {want}")
        n = w.shape[1] if self.transpose else w.shape[0]
        top[0].reshape((*shape[: self.axis], n))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        b = self.blobs[1].data if len(self.blobs) > 1 else None
        x = bottom[0].data
        ops = kernels_for(x)
        extra = {"out": top[0].data} if ops is CPU and reusable(top[0].data, x) else {}
        if self.fused_relu:  # CPU nets only (net.net fuses InnerProduct + ReLU on the CPU)
            extra["relu"] = True
        top[0].data = ops.inner_product_forward(
            x, self.blobs[0].data, b, axis=self.axis, transpose=self.transpose, **extra
        )

    def plan(self, bottom: list[Blob], top: list[Blob], rowwise: bool = False) -> Callable[[], bool] | None:
        """The plan step; `rowwise` (``net.per_image``): every row with its batch-1 bits, where W is (N, K) (with
        transpose the ordinary step: the row-by-row kernel reads W's rows)."""
        src, dst, wblob = bottom[0], top[0], self.blobs[0]
        bblob = self.blobs[1] if len(self.blobs) > 1 else None
        has_bias = bblob is not None
        x, w = src.data, wblob.data
        x_shape, w_shape = x.shape, w.shape
        b_shape = (w_shape[1] if self.transpose else w_shape[0],)
        if not (plain(x, x_shape) and plain(w, w_shape) and (bblob is None or plain(bblob.data, b_shape))):
            return None
        run = fc.ForwardRunner(
            x_shape,
            w_shape,
            axis=self.axis,
            transpose=self.transpose,
            relu=self.fused_relu,
            rowwise=rowwise and not self.transpose,
        )
        out = plan_out(dst, x, run.out_shape)

        def step() -> bool:  # the parameter Blobs are looked up each call (Net.share_weights_from swaps them)
            params = self.blobs
            x, w, b = src.data, params[0].data, params[1].data if has_bias else None
            if dst.data is not out or not (plain(x, x_shape) and plain(w, w_shape)):
                return False
            if b is not None and not plain(b, b_shape):
                return False
            run(x, w, b, out)
            return True

        return step

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten when propagate_down[0]; the weight and bias diffs accumulate, each only
        where self.param_needs_grad (set by the Net from lr_mult != 0; all True when absent) says so."""
        needs = getattr(self, "param_needs_grad", None) or [True] * len(self.blobs)
        need_dw = bool(needs[0])
        need_db = len(self.blobs) > 1 and bool(needs[1])
        down = bool(propagate_down[0])
        if not (down or need_dw or need_db):
            return
        # fresh: a cleared diff whose zeros were never written (Blob.diff_to_overwrite): the kernel overwrites it
        dw, fresh = self.blobs[0].diff_to_overwrite() if need_dw else (None, False)
        db, fresh_b = self.blobs[1].diff_to_overwrite() if need_db else (None, False)
        kernels_for(top[0].diff).inner_product_backward(
            top[0].diff,
            bottom[0].data,
            self.blobs[0].data,
            axis=self.axis,
            transpose=self.transpose,
            dx=bottom[0].diff if down else None,
            dw=dw,
            db=db,
            need_dx=down,
            need_dw=need_dw,
            need_db=need_db,
            overwrite_dw=fresh,
            overwrite_db=fresh_b,
        )
