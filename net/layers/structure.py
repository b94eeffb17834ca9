"""Layers that move data without arithmetic: Concat, Flatten, Reshape, Split."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..blob import Blob
from ..device import kernels_for
from .base import (
    Layer,
    canonical_axis,
    diff_out,
    plain,
    plan_out,
    register,
)


@register("Concat")
class ConcatLayer(Layer):
    gpu_forward = True
    gpu_backward = True
    num_bottom = (1, 1 << 30)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.concat_param
        if p.has("axis") and p.has("concat_dim"):
            raise self.error("give either axis or concat_dim, not both")
        self.axis = int(p.concat_dim) if p.has("concat_dim") else int(p.axis)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        first = bottom[0].shape
        axis = canonical_axis(self, self.axis, len(first), "concat_param.axis")
        total = 0
        for b in bottom:
            if len(b.shape) != len(first) or any(b.shape[i] != first[i] for i in range(len(first)) if i != axis):
                raise self.error(f"all inputs must match except on axis {axis}: {first} vs {b.shape}")
            total += b.shape[axis]
        top[0].reshape((*first[:axis], total, *first[axis + 1 :]))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = kernels_for(bottom[0].data).concat_forward(
            [b.data for b in bottom], axis=self.axis % bottom[0].data.ndim
        )

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        """A CPU plan's step: the inputs copied into one output array kept from call to call (the forward's new array
        each call kept net.replay from recording GoogLeNet: the next layers' recorded input was the old array)."""
        xs = [b.data for b in bottom]
        if not all(plain(x, x.shape) for x in xs) or top[0] in bottom:
            return None
        src, dst = list(bottom), top[0]
        shapes = [x.shape for x in xs]
        axis = self.axis % xs[0].ndim
        out = plan_out(dst, xs[0], tuple(dst.shape))
        kernel = kernels_for(xs[0]).concat_forward

        def step() -> bool:
            xs = [b.data for b in src]
            if dst.data is not out or not all(plain(x, s) for x, s in zip(xs, shapes)):
                return False
            kernel(xs, axis=axis, out=out)
            return True

        return step

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[i].diff is overwritten with its slice of the top diff where propagate_down[i]."""
        axis = self.axis % len(top[0].shape)
        sizes = [b.shape[axis] for b in bottom]
        grads = kernels_for(top[0].diff).concat_backward(top[0].diff, sizes, axis, propagate_down=propagate_down)
        for b, g in zip(bottom, grads):
            if g is not None:
                b.diff = g


@register("Flatten")
class FlattenLayer(Layer):
    gpu_forward = True
    gpu_backward = True
    aliases = True  # its forward only points its tops at its bottom's memory (net.replay leaves it out)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.flatten_param
        shape = bottom[0].shape
        start = canonical_axis(self, int(p.axis), len(shape), "flatten_param.axis")
        end = canonical_axis(self, int(p.end_axis), len(shape), "flatten_param.end_axis")
        if end < start:
            raise self.error(f"end_axis {p.end_axis} comes before axis {p.axis} for input {shape}")
        top[0].reshape((*shape[:start], int(np.prod(shape[start : end + 1])), *shape[end + 1 :]))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = bottom[0].data.reshape(top[0].shape)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff becomes the top diff reshaped (a view, as Caffe shares the diff)."""
        if propagate_down[0]:
            bottom[0].diff = top[0].diff.reshape(bottom[0].shape)


@register("Reshape")
class ReshapeLayer(Layer):
    gpu_forward = True
    gpu_backward = True
    aliases = True  # its forward only points its tops at its bottom's memory (net.replay leaves it out)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.reshape_param
        shape = bottom[0].shape
        axis = p.axis + len(shape) + 1 if p.axis < 0 else p.axis  # Caffe: -1 is after the last axis
        if not 0 <= axis <= len(shape):
            raise self.error(f"reshape_param.axis {p.axis} is out of range for input {shape}")
        if p.num_axes < -1 or (p.num_axes != -1 and axis + p.num_axes > len(shape)):
            raise self.error(f"reshape_param.num_axes {p.num_axes} from axis {axis} does not fit input {shape}")
        end = len(shape) if p.num_axes == -1 else axis + p.num_axes
        dims = [int(d) for d in p.shape.dim]
        if any(d < -1 for d in dims):
            raise self.error(f"reshape_param.shape has a dimension below -1: {dims}")
        if any(d == 0 and axis + i >= len(shape) for i, d in enumerate(dims)):
            raise self.error(f"reshape_param.shape {dims} copies (0) an axis that input has not: {shape}")
        new = [shape[axis + i] if d == 0 else d for i, d in enumerate(dims)]
        if new.count(-1) > 1:
            raise self.error("at most one -1 in reshape_param.shape")
        out = [*shape[:axis], *new, *shape[end:]]
        if -1 in out:
            known = int(np.prod([d for d in out if d != -1]))
            out[out.index(-1)] = int(np.prod(shape)) // max(known, 1)
        if int(np.prod(out)) != int(np.prod(shape)):
            raise self.error(f"cannot reshape {shape} to {tuple(out)}")
        top[0].reshape(tuple(out))

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        top[0].data = bottom[0].data.reshape(top[0].shape)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff becomes the top diff reshaped (a view, as Caffe shares the diff)."""
        if propagate_down[0]:
            bottom[0].diff = top[0].diff.reshape(bottom[0].shape)


@register("Split")
class SplitLayer(Layer):
    gpu_forward = True
    gpu_backward = True
    aliases = True  # its forward only points its tops at its bottom's memory (net.replay leaves it out)
    num_top = (1, 1 << 30)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        for t in top:
            t.reshape(bottom[0].shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        for t in top:
            t.data = bottom[0].data

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """bottom[0].diff is overwritten with the sum of the tops' diffs when propagate_down[0]."""
        if propagate_down[0]:
            dys = [t.diff for t in top]
            kernels_for(dys[0]).split_backward(dys, out=diff_out(bottom[0]))
