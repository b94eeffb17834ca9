"""GPU pooling (kernels/cuda/pool.cu), forward and backward, same signatures as kernels.pool: Caffe MAX (with its argmax
mask) and AVE pooling. Output sizes and parameter checks are kernels.pool's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.gpu.backend import FLAT_LIMIT, chunks, device_input, device_output, flat_launch, launch, runtime
from kernels.pool import check_pool_params, pool2d_output_shape

__all__ = ["pool2d_backward", "pool2d_forward"]

i32 = np.int32


def pool2d_forward(
    x: Any,
    *,
    method: str = "MAX",
    kernel: Any = (2, 2),
    stride: Any = (1, 1),
    pad: Any = (0, 0),
    round_mode: str = "CEIL",
    out: Any = None,
    mask: Any = None,
) -> Any:
    """Caffe MAX/AVE pooling. x (N, C, H, W) -> y (N, C, oh, ow); `mask` (MAX only, int32 device array of y's
    shape) receives each argmax as h * W + w in its input plane (-1 for an empty window)."""
    rt = runtime()
    x = device_input(rt, x, "pooling input")
    if x.ndim != 4:
        raise ValueError(f"pooling input: expected a 4-D array (N, C, H, W), got shape {x.shape}")
    (kh, kw), (sh, sw), (ph, pw) = check_pool_params(kernel, stride, pad, method, round_mode)
    n, c, h, w = x.shape
    oh, ow = pool2d_output_shape((h, w), (kh, kw), (sh, sw), (ph, pw), round_mode)
    out = device_output(rt, out, (n, c, oh, ow), "pooling out")
    if mask is not None:
        if method != "MAX":
            raise ValueError(f"pooling mask: only MAX pooling records an argmax, got method {method!r}")
        mask = device_output(rt, mask, (n, c, oh, ow), "pooling mask", np.int32)
    planes = n * c
    x3, y3 = x.reshape(planes, h * w), out.reshape(planes, oh * ow)
    m3 = y3 if mask is None else mask.reshape(planes, oh * ow)
    window = (i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw))
    for q0, q1 in chunks(planes, max(h * w, oh * ow), FLAT_LIMIT):
        grid, block = flat_launch((q1 - q0) * oh * ow, rt.sm_count)
        shape = (i32(q1 - q0), i32(h), i32(w), i32(oh), i32(ow))
        if method == "MAX":
            args = (x3[q0:q1], y3[q0:q1], m3[q0:q1], *shape, *window, i32(mask is not None))
            launch(rt, "pool", "pool2d_max", (), grid, block, args)
        else:
            launch(rt, "pool", "pool2d_ave", (), grid, block, (x3[q0:q1], y3[q0:q1], *shape, *window))
    return out


def pool2d_backward(
    dy: Any,
    x: Any,
    *,
    method: str = "MAX",
    kernel=(2, 2),
    stride=(1, 1),
    pad=(0, 0),
    round_mode: str = "CEIL",
    mask: Any = None,
    out: Any = None,
) -> Any:
    """Gradient of pooling with respect to its input, OVERWRITTEN (kernels.pool.pool2d_backward's contract).

    dy (N, C, oh, ow); x the forward input (a device array) or its shape. MAX routes dy to the recorded argmax
    (`mask`, int32 device array from pool2d_forward(..., mask=...)), recomputed from x when mask is None. A gather
    per input pixel: no atomics, the same summation order as the CPU's scatter."""
    rt = runtime()
    (kh, kw), (sh, sw), (ph, pw) = check_pool_params(kernel, stride, pad, method, round_mode)
    dy = device_input(rt, dy, "pooling backward dy")
    shape = tuple(int(v) for v in (x.shape if rt.is_array(x) else x))
    if len(shape) != 4:
        raise ValueError(f"pooling backward: expected the input shape (N, C, H, W), got {shape}")
    n, c, h, w = shape
    oh, ow = pool2d_output_shape((h, w), (kh, kw), (sh, sw), (ph, pw), round_mode)
    if dy.shape != (n, c, oh, ow):
        raise ValueError(f"pooling backward dy: expected shape {(n, c, oh, ow)} for input {shape}, got {dy.shape}")
    out = device_output(rt, out, shape, "pooling backward out")
    if out.size and rt.ptr(out) == rt.ptr(dy):
        raise ValueError("pooling backward out: must not overlap dy")
    if out.size == 0:
        return out
    if method == "MAX":
        if mask is None:
            if not rt.is_array(x):
                raise ValueError("pooling backward: MAX needs the argmax mask or the forward input x (got a shape)")
            mask = rt.empty(dy.shape, np.int32)
            pool2d_forward(x, method="MAX", kernel=(kh, kw), stride=(sh, sw), pad=(ph, pw), round_mode=round_mode,
                           mask=mask)  # fmt: skip
        elif not rt.is_array(mask) or mask.dtype != np.int32 or mask.shape != dy.shape:
            raise ValueError(f"pooling backward mask: expected an int32 device array of shape {dy.shape}")
    planes = n * c
    dy3, dx3 = dy.reshape(planes, oh * ow), out.reshape(planes, h * w)
    window = (i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw))
    for q0, q1 in chunks(planes, max(h * w, oh * ow), FLAT_LIMIT):
        grid, block = flat_launch((q1 - q0) * h * w, rt.sm_count)
        dims = (i32(q1 - q0), i32(h), i32(w), i32(oh), i32(ow))
        if method == "MAX":
            m3 = mask.reshape(planes, oh * ow)
            launch(rt, "pool", "pool2d_max_backward", (), grid, block, (dy3[q0:q1], m3[q0:q1], dx3[q0:q1], *dims,
                                                                             *window))  # fmt: skip
        else:
            launch(rt, "pool", "pool2d_ave_backward", (), grid, block, (dy3[q0:q1], dx3[q0:q1], *dims, *window))
    return out
