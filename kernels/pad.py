"""Zero padding made explicit, any amount on each side (NCHW float32): for kernels that take pad 0.

A Caffe convolution pads symmetrically; TF's SAME padding at stride 2 is asymmetric (EfficientNet-Lite0's stem, 3x3/2
on 224: 0 rows before, 1 after). ``net.efficientnet`` writes it in standard Caffe layers as a (k+1)x(k+1) kernel with
a zero first row and column and pad p; a CPU Net's plan (``net.net``) runs such a convolution as the k x k kernel with
pad 0 on the image copied into a buffer with p - 1 zeros before and p after (a quarter to a half fewer taps).

0. ``pad_ref``      - plain NumPy: ``np.pad`` with zeros.
1. ``_pad_worker``  - the image's rows copied into the buffer's interior, 8 floats at a time, rows split over the
                      threads (a task, kernels.tasks); the borders are written once when the buffer is made
                      (``PadInto``) and never change. The stem's image, against NumPy's strided copy: 1 thread 20 vs
                      20 us (batch 1), 2 threads 13.5 vs 19 us (batch 1), 0.75 vs 1.49 ms (batch 32).

2. ``_subsample_worker`` - the other way, every sh-th row and sw-th column of x into a kept buffer (``Subsample``),
                      the output rows split over the threads: a 1x1 convolution at stride 2 (ResNet's projection
                      shortcuts and the first 1x1 of its stages) is the stride-1 one on that (``net.plan_steps``).

Public: ``copy_rows(x, buf) -> bool``: buf[...] = x on every thread (``_pad_worker`` with no border);
``PadInto(x_shape, before, after)``: ``pad(x)`` -> its buffer (N, C, H + bh + ah, W + bw + aw), the borders
zero, the interior x; ``Subsample(x_shape, stride)``: ``sub(x)`` -> its buffer (N, C, ceil(H / sh), ceil(W / sw)),
x[:, :, ::sh, ::sw]. Benchmark: in the whole net, ``python -m benchmarks --only efficientnet``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types

from kernels.gemm import copy_run
from kernels.tasks import Task


def pad_ref(x: np.ndarray, before: tuple[int, int], after: tuple[int, int]) -> np.ndarray:
    """x (N, C, H, W) with before[0] / after[0] zero rows above / below and before[1] / after[1] zero columns left /
    right."""
    return np.pad(x, ((0, 0), (0, 0), (before[0], after[0]), (before[1], after[1])))


def _pad_worker(t, x, buf, top, left, workers):  # pragma: no cover - compiled
    """Worker t's share of the image rows (kernels.tasks): buf[n, c, top + r, left + s] = x[n, c, r, s], the rows
    (n, c, r) split evenly over the workers, each row copied 8 floats at a time (gemm.copy_run)."""
    n, c, h, wd = x.shape
    hb, wb = buf.shape[2], buf.shape[3]
    xf = x.reshape(-1)
    bf = buf.reshape(-1)
    rows = n * c * h
    for q in range(t * rows // workers, (t + 1) * rows // workers):
        copy_run(bf, ((q // h) * hb + top + q % h) * wb + left, xf, q * wd, wd)


_F4 = types.float32[:, :, :, ::1]
_PAD = Task(_pad_worker, (_F4, _F4, types.int64, types.int64, types.int64), opt=1, boundscheck=False)


def copy_rows(x: np.ndarray, buf: np.ndarray) -> bool:
    """buf[...] = x on every thread (``_pad_worker`` with no border: ``net.Net.set_input``'s large inputs) where both
    are C-contiguous float32 (N, C, H, W) arrays of one shape, apart, and there are 2+ threads; False (nothing done)
    otherwise."""
    workers = numba.get_num_threads()
    if workers < 2 or x.ndim != 4 or x.shape != buf.shape or x.dtype != np.float32 or buf.dtype != np.float32:
        return False
    if not (x.flags.c_contiguous and buf.flags.c_contiguous) or np.may_share_memory(x, buf):
        return False
    _PAD.parallel(_PAD.address, workers, x, buf, 0, 0, workers)
    return True


class PadInto:
    """x (N, C, H, W) into a kept zero-bordered buffer: ``pad(x)`` returns it with x copied in (the same array every
    call; valid until the next call). before = (rows above, columns left), after = (rows below, columns right), each
    >= 0. x must be C-contiguous float32 of x_shape."""

    __slots__ = ("buf", "left", "top", "x_shape")
    task = _PAD  # what a call runs (net.per_image finds it in a replay)

    def __init__(self, x_shape, before: tuple[int, int], after: tuple[int, int]) -> None:
        n, c, h, wd = (int(v) for v in x_shape)
        if min(*before, *after) < 0:
            raise ValueError(f"pad: expected pads >= 0, got before={before}, after={after}")
        self.x_shape = (n, c, h, wd)
        self.top, self.left = int(before[0]), int(before[1])
        self.buf = np.zeros((n, c, h + before[0] + after[0], wd + before[1] + after[1]), np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.size:
            workers = numba.get_num_threads()
            if workers > 1:
                _PAD.parallel(_PAD.address, workers, x, self.buf, self.top, self.left, workers)
            else:
                _PAD.serial(_PAD.address, 1, x, self.buf, self.top, self.left, 1)
        return self.buf


def _subsample_worker(t, x, buf, sh, sw, workers):  # pragma: no cover - compiled
    """Worker t's share of the output rows (kernels.tasks): buf[n, c, r, s] = x[n, c, r*sh, s*sw], the rows (n, c, r)
    split evenly over the workers."""
    n, c, h, wd = x.shape
    ho, wo = buf.shape[2], buf.shape[3]
    xf = x.reshape(-1)
    bf = buf.reshape(-1)
    rows = n * c * ho
    for q in range(t * rows // workers, (t + 1) * rows // workers):
        src = ((q // ho) * h + (q % ho) * sh) * wd
        dst = q * wo
        for s in range(wo):
            bf[np.uint64(dst + s)] = xf[np.uint64(src + s * sw)]


_SUB = Task(_subsample_worker, (_F4, _F4, types.int64, types.int64, types.int64), opt=1, boundscheck=False)


def subsample_shape(x_shape, stride) -> tuple[int, int, int, int]:
    """The shape of x[:, :, ::sh, ::sw] for x of x_shape (N, C, H, W): (N, C, ceil(H / sh), ceil(W / sw))."""
    n, c, h, wd = (int(v) for v in x_shape)
    sh, sw = (int(v) for v in stride)
    if min(sh, sw) < 1:
        raise ValueError(f"subsample: expected strides >= 1, got {stride}")
    return n, c, -(-h // sh), -(-wd // sw)


class Subsample:
    """x (N, C, H, W) subsampled into a kept buffer: ``sub(x)`` returns it holding x[:, :, ::sh, ::sw] (the same array
    every call; valid until the next call). x must be C-contiguous float32 of x_shape."""

    __slots__ = ("buf", "stride", "x_shape")

    def __init__(self, x_shape, stride: tuple[int, int]) -> None:
        self.buf = np.zeros(subsample_shape(x_shape, stride), np.float32)
        self.x_shape, self.stride = tuple(int(v) for v in x_shape), (int(stride[0]), int(stride[1]))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.size:
            workers = numba.get_num_threads()
            run = _SUB.parallel if workers > 1 else _SUB.serial
            run(_SUB.address, workers, x, self.buf, *self.stride, workers)
        return self.buf
