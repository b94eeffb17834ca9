"""Plan steps a CPU Net's execution plan (`net.net._Plan`) makes itself, in place of a layer's own `Layer.plan`, where
it recognises more in the layer than the layer type says.

- `zero_border_step`: a Convolution (group 1) whose kernel has an all-zero first row and first column and pad >= 1 on
  both axes, which is how `net.efficientnet` writes TF's asymmetric SAME padding at stride 2 in standard Caffe layers
  ((k+1)x(k+1) kernel, symmetric pad p). It is the k x k kernel over the image with p - 1 zeros before and p after:
  the step copies the image into a zero-bordered buffer (`kernels.pad.PadInto`) and runs `conv.ForwardRunner` with
  pad 0 on it and the kernel without its zero row and column (EfficientNet-Lite0's stem: K = 27 instead of 48). The
  zero taps only ever added exact zeros to each output's sum, whose other terms keep their order: the same bits for
  finite inputs. The weights are checked on every call (a net that trains them may make the border non-zero): then
  the full kernel runs, as the layer's own step would.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from kernels import conv
from kernels.pad import PadInto

from .blob import Blob
from .layers import Layer
from .layers.base import plain, plan_out


def _zero_border(w: np.ndarray) -> bool:
    return not (w[:, :, 0, :].any() or w[:, :, :, 0].any())


def zero_border_step(layer: Layer, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
    """The step for a zero-bordered Convolution (see the module docstring), or None when the layer is not one."""
    if layer.type != "Convolution" or len(bottom) != 1 or layer.group != 1 or tuple(layer.dilation) != (1, 1):
        return None
    (ph, pw), (kh, kw) = layer.pad, layer.kernel
    if min(ph, pw) < 1 or min(kh, kw) < 2:
        return None
    src, dst = bottom[0], top[0]
    x = src.data
    w, b = layer.forward_params()
    x_shape, w_shape, b_shape = x.shape, w.shape, w.shape[:1]
    if not (plain(x, x_shape) and plain(w, w_shape) and (b is None or plain(b, b_shape))) or not _zero_border(w):
        return None
    capped = {"relu_max": layer.relu_max} if layer.relu_max != math.inf else {}
    pad = PadInto(x_shape, (ph - 1, pw - 1), (ph, pw))
    small_shape = (w_shape[0], w_shape[1], kh - 1, kw - 1)
    small = conv.ForwardRunner(pad.buf.shape, small_shape, layer.stride, (0, 0), (1, 1), 1, layer.fused_relu, **capped)
    full = conv.ForwardRunner(x_shape, w_shape, layer.stride, layer.pad, (1, 1), 1, layer.fused_relu, **capped)
    if small.out_shape != full.out_shape:  # pragma: no cover - the geometry above says they are equal
        return None
    out = plan_out(dst, x, full.out_shape)
    zeros = np.zeros(b_shape, np.float32)

    def step() -> bool:  # the parameters are looked up each call (Net.share_weights_from swaps the Blobs)
        w, b = layer.forward_params()
        x = src.data
        if b is None:
            b = zeros
        if dst.data is not out or not (plain(x, x_shape) and plain(w, w_shape) and plain(b, b_shape)):
            return False
        if _zero_border(w):
            small(pad(x), np.ascontiguousarray(w[:, :, 1:, 1:]), b, out)
        else:
            full(x, w, b, out)
        return True

    return step
