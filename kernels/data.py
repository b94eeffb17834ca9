"""The Data layer's plain transform as one task: a batch gathered from uint8 images by index and scaled to float32,
its labels gathered beside it (``net.layers.data``: no mean, crop or mirror).

``gather_scale(images, idx, scale, out, labels, labels_out)``: out[b] = float32(images[idx[b]]) * scale, the float32
product NumPy's ``np.multiply(images[idx], scale, out=out, dtype=np.float32)`` makes (the same bits), and
labels_out[b] = labels[idx[b]]. One task on the calling thread (a LeNet batch is 50 KB): it replaces NumPy's fancy
index, temporary and multiply, ~170 us of Python and NumPy between a training iteration's kernels on a 2-vCPU Zen 4
(their code and data cold after the kernels), and a recorded training pass runs the rest of the iteration natively
after it (``net.train_replay``).
"""

from __future__ import annotations

import numpy as np
from numba import types

from kernels.tasks import Task


def _gather_scale_worker(t, images, idx, scale, out, labels, labels_out, workers):  # pragma: no cover - compiled
    if t != 0:
        return
    k = images.shape[1]
    for b in range(idx.size):
        src = idx[b]
        for j in range(k):
            out[b, j] = np.float32(images[src, j]) * scale
        if labels.size:
            labels_out[b] = labels[src]


_GATHER_SCALE = Task(
    _gather_scale_worker,
    (types.uint8[:, ::1], types.int64[::1], types.float32, types.float32[:, ::1], types.float32[::1],
     types.float32[::1], types.int64),
    boundscheck=False,
)  # fmt: skip
_NO_LABELS = np.zeros(0, np.float32)


def gather_scale(
    images: np.ndarray,
    idx: np.ndarray,
    scale: np.float32,
    out: np.ndarray,
    labels: np.ndarray | None = None,
    labels_out: np.ndarray | None = None,
) -> None:
    """See the module docstring: images (N, ...) uint8 C-contiguous, idx int64 in [0, N) (checked), out (B, ...)
    float32 C-contiguous with B = idx.size; labels (N,) and labels_out (B,) float32, or both None."""
    n = images.shape[0]
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"gather_scale: an index outside 0..{n - 1}")
    if out.shape[0] != idx.size or out.size != idx.size * (images.size // max(n, 1)):
        raise ValueError(f"gather_scale: out {out.shape} does not hold {idx.size} images of {images.shape[1:]}")
    with_labels = labels is not None and labels_out is not None
    t = _GATHER_SCALE
    t.serial(t.address, 1, images.reshape(n, -1), idx, np.float32(scale), out.reshape(idx.size, -1),
             labels if with_labels else _NO_LABELS, labels_out if with_labels else _NO_LABELS, 1)  # fmt: skip
