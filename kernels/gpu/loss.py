"""GPU SoftmaxWithLoss (kernels/cuda/loss.cu; the softmax is kernels.gpu.activations'), same signatures as
kernels.loss. The loss and its normaliser stay on the device as scalars, so no host round trip is needed until the
solver reads the loss; labels out of range are a ValueError (one number read back).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kernels.gpu.activations import softmax_forward
from kernels.gpu.backend import FLAT_LIMIT, device_input, device_output, flat_launch, launch, runtime
from kernels.loss import NORMALIZATIONS

__all__ = ["softmax_loss_backward", "softmax_loss_forward"]

REDUCE_THREADS = 256  # block of softmax_loss's shared-memory reduction (loss.cu default)
i32, f64 = np.int32, np.float64


def _loss_view(x: Any, axis: int) -> tuple[int, int, int]:
    if x.ndim == 0:
        raise ValueError("scores must have at least one axis")
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis < x.ndim:
        raise ValueError(f"axis {axis} out of range for scores of shape {x.shape}")
    return math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1 :])


def softmax_loss_forward(
    x: Any, labels: Any, *, axis: int = 1, ignore_label: int | None = None, normalization: str = "VALID"
) -> tuple[Any, Any, Any]:
    """Softmax along `axis` and the multinomial logistic loss on the device.

    x (..., C, ...) and labels (outer * inner values, float) device arrays. Returns (loss, prob, stats): loss a
    device array of shape () (float32), prob of x's shape, stats a (3,) device array [loss, normaliser, bad-label
    count] for softmax_loss_backward. Labels outside [0, C) (other than ignore_label) raise ValueError, which reads
    one number back from the device."""
    rt = runtime()
    x = device_input(rt, x, "SoftmaxWithLoss scores")
    labels = device_input(rt, labels, "SoftmaxWithLoss labels")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown loss normalization {normalization!r} (known: {', '.join(NORMALIZATIONS)})")
    outer, c, inner = _loss_view(x, axis)
    if labels.size != outer * inner:
        raise ValueError(
            f"label count ({labels.size}) must equal the number of score positions outer*inner = {outer}*{inner}"
        )
    if x.size > FLAT_LIMIT:
        raise ValueError(f"SoftmaxWithLoss: scores {x.shape} exceed {FLAT_LIMIT} elements; split the batch")
    prob = softmax_forward(x, axis=axis % x.ndim)
    stats = rt.empty((3,))
    ignore = -1 if ignore_label is None else int(ignore_label)
    args = (prob, labels.reshape(-1), stats, i32(outer), i32(c), i32(inner), i32(ignore), i32(ignore_label is not None))
    launch(
        rt,
        "loss",
        "softmax_loss",
        (),
        (1, 1, 1),
        (REDUCE_THREADS, 1, 1),
        (*args, i32(NORMALIZATIONS.index(normalization))),
    )
    bad = float(rt.to_host(stats[2:3])[0])
    if bad:
        raise ValueError(f"{int(bad)} label(s) out of range for {c} classes")
    return stats[0:1].reshape(()), prob, stats


def softmax_loss_backward(
    prob: Any,
    labels: Any,
    *,
    axis: int = 1,
    ignore_label: int | None = None,
    normalizer_value: Any,
    loss_weight: float = 1.0,
    dx: Any = None,
) -> Any:
    """Gradient of loss_weight * loss wrt the scores, OVERWRITTEN into `dx` (allocated if None):
    (p - onehot(label)) * float(loss_weight / normaliser), 0 at ignored positions. `normalizer_value` is the stats
    array softmax_loss_forward returned (read on the device) or a number."""
    rt = runtime()
    prob = device_input(rt, prob, "SoftmaxWithLoss prob")
    labels = device_input(rt, labels, "SoftmaxWithLoss labels")
    outer, c, inner = _loss_view(prob, axis)
    if labels.size != outer * inner:
        raise ValueError(f"label count ({labels.size}) must equal outer*inner = {outer}*{inner}")
    if rt.is_array(normalizer_value):
        stats = normalizer_value
    else:
        stats = rt.asarray(np.array([0.0, float(normalizer_value), 0.0], np.float32))
    dx = device_output(rt, dx, tuple(prob.shape), "SoftmaxWithLoss dx")
    if prob.size == 0:
        return dx
    grid, block = flat_launch(prob.size, rt.sm_count)
    ignore = -1 if ignore_label is None else int(ignore_label)
    args = (prob, labels.reshape(-1), stats, dx, i32(outer), i32(c), i32(inner), i32(ignore))
    launch(rt, "loss", "softmax_loss_grad", (), grid, block, (*args, i32(ignore_label is not None), f64(loss_weight)))
    return dx
