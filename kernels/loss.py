"""Loss and metric kernels: SoftmaxWithLoss, Accuracy, EuclideanLoss (Caffe semantics, caffe_facts §4.8-4.9).

Kernels:

0. ``softmax_loss_ref`` / ``softmax_loss_backward_ref`` / ``accuracy_ref`` / ``euclidean_loss_ref`` - plain NumPy
   in float64.
1. ``_softmax_loss_rows`` - one pass per (outer, inner) position: max, exp-sum, probabilities, -log p[label].
2. ``_softmax_loss_grad`` - (p - onehot(label)) * scale, zero where the label is ignored.
3. ``_accuracy_rows``     - Caffe's rank count: a sample is correct iff the number of classes k with
                            score_k >= score_true (the true class included) is <= top_k, so ties count against it.

All take the scores viewed as (outer, C, inner): for the usual (N, C) logits, outer = N and inner = 1; for
(N, C, H, W) with axis 1, outer = N and inner = H*W. Labels have outer*inner entries (float, cast to int).

These are tiny next to the convolutions (LeNet: 64 x 10 per iteration) and are timed only as part of
`python -m benchmarks.bench_train`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types

from kernels.tasks import Task

FLT_MIN = float(np.finfo(np.float32).tiny)
NORMALIZATIONS = ("FULL", "VALID", "BATCH_SIZE", "NONE")


def _view(x: np.ndarray, axis: int) -> tuple[np.ndarray, int, int, int]:
    if x.ndim == 0:
        raise ValueError("scores must have at least one axis")
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis < x.ndim:
        raise ValueError(f"axis {axis} out of range for scores of shape {x.shape}")
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis + 1 :])
    c = x.shape[axis]
    return np.ascontiguousarray(x).reshape(outer, c, inner), outer, c, inner


def _labels(labels: np.ndarray, outer: int, inner: int, c: int, ignore_label: int | None) -> np.ndarray:
    flat = np.asarray(labels).reshape(-1)
    if flat.size != outer * inner:
        raise ValueError(
            f"label count ({flat.size}) must equal the number of score positions outer*inner = {outer}*{inner}"
        )
    lab = flat.astype(np.int64).reshape(outer, inner)
    valid = lab != ignore_label if ignore_label is not None else np.ones_like(lab, dtype=bool)
    bad = valid & ((lab < 0) | (lab >= c))
    if bad.any():
        raise ValueError(f"label {int(lab[bad][0])} out of range for {c} classes")
    return lab


def normalizer(mode: str, outer: int, inner: int, valid: int) -> float:
    """Caffe's loss normalizer (max(1, value)): FULL = outer*inner, VALID = non-ignored count,
    BATCH_SIZE = outer, NONE = 1."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown loss normalization {mode!r} (known: {', '.join(NORMALIZATIONS)})")
    value = {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return float(max(1, value))


# -- references --------------------------------------------------------------------------------
def softmax_loss_ref(
    x: np.ndarray, labels: np.ndarray, *, axis: int = 1, ignore_label: int | None = None, normalization: str = "VALID"
) -> tuple[float, np.ndarray]:
    """Returns (loss, prob) in float64: loss = -sum_valid log(max(p[label], FLT_MIN)) / normalizer."""
    v, outer, c, inner = _view(np.asarray(x, dtype=np.float64), axis)
    lab = _labels(labels, outer, inner, c, ignore_label)
    e = np.exp(v - v.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    valid = lab != ignore_label if ignore_label is not None else np.ones(lab.shape, dtype=bool)
    o, i = np.nonzero(valid)
    picked = p[o, lab[o, i], i]
    loss = -np.sum(np.log(np.maximum(picked, FLT_MIN)))
    return float(loss / normalizer(normalization, outer, inner, int(valid.sum()))), p.reshape(x.shape)


def softmax_loss_backward_ref(
    prob: np.ndarray,
    labels: np.ndarray,
    *,
    axis: int = 1,
    ignore_label: int | None = None,
    normalization: str = "VALID",
    loss_weight: float = 1.0,
) -> np.ndarray:
    """d loss / d x = (p - onehot(label)) * loss_weight / normalizer; 0 at ignored positions (float64)."""
    p, outer, c, inner = _view(np.asarray(prob, dtype=np.float64), axis)
    lab = _labels(labels, outer, inner, c, ignore_label)
    valid = lab != ignore_label if ignore_label is not None else np.ones(lab.shape, dtype=bool)
    g = p.copy()
    o, i = np.nonzero(valid)
    g[o, lab[o, i], i] -= 1.0
    g *= valid[:, None, :]
    g *= loss_weight / normalizer(normalization, outer, inner, int(valid.sum()))
    return g.reshape(prob.shape)


def accuracy_ref(
    x: np.ndarray, labels: np.ndarray, *, axis: int = 1, top_k: int = 1, ignore_label: int | None = None
) -> tuple[float, np.ndarray]:
    """(accuracy, per-class accuracy). Correct iff #{k : score_k >= score_true} <= top_k."""
    v, outer, c, inner = _view(np.asarray(x, dtype=np.float64), axis)
    lab = _labels(labels, outer, inner, c, ignore_label)
    valid = lab != ignore_label if ignore_label is not None else np.ones(lab.shape, dtype=bool)
    correct = np.zeros(c)
    count = np.zeros(c)
    total = 0
    for o in range(outer):
        for i in range(inner):
            if not valid[o, i]:
                continue
            t = lab[o, i]
            rank = int(np.sum(v[o, :, i] >= v[o, t, i]))
            count[t] += 1
            if rank <= top_k:
                correct[t] += 1
                total += 1
    n = int(valid.sum())
    per_class = np.divide(correct, count, out=np.zeros(c), where=count > 0)
    return (total / n if n else 0.0), per_class


def euclidean_loss_ref(a: np.ndarray, b: np.ndarray) -> float:
    """sum((a - b)^2) / (2 N), N = a.shape[0] (float64)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(np.sum(d * d) / (2.0 * a.shape[0]))


# -- compiled kernels --------------------------------------------------------------------------
@njit(cache=True)
def _softmax_loss_rows(v, lab, ignore, has_ignore, prob):  # pragma: no cover - compiled
    outer, c, inner = v.shape
    loss = 0.0
    valid = 0
    for o in range(outer):
        for i in range(inner):
            m = v[o, 0, i]
            for k in range(1, c):
                m = max(m, v[o, k, i])
            s = 0.0
            for k in range(c):
                e = np.exp(v[o, k, i] - m)
                prob[o, k, i] = e
                s += e
            inv = 1.0 / s
            for k in range(c):
                prob[o, k, i] *= inv
            t = lab[o, i]
            if has_ignore and t == ignore:
                continue
            valid += 1
            p = prob[o, t, i]
            loss -= np.log(max(np.float64(p), 1.1754943508222875e-38))
    return loss, valid


@njit(cache=True)
def _softmax_loss_grad(prob, lab, ignore, has_ignore, scale, dx):  # pragma: no cover - compiled
    outer, c, inner = prob.shape
    for o in range(outer):
        for i in range(inner):
            t = lab[o, i]
            if has_ignore and t == ignore:
                for k in range(c):
                    dx[o, k, i] = 0.0
                continue
            for k in range(c):
                dx[o, k, i] = prob[o, k, i] * scale
            dx[o, t, i] -= scale


@njit(cache=True)
def _accuracy_rows(v, lab, ignore, has_ignore, top_k, correct, count):  # pragma: no cover - compiled
    outer, c, inner = v.shape
    total = 0
    for o in range(outer):
        for i in range(inner):
            t = lab[o, i]
            if has_ignore and t == ignore:
                continue
            ref = v[o, t, i]
            rank = 0
            for k in range(c):
                if v[o, k, i] >= ref:
                    rank += 1
            count[t] += 1
            if rank <= top_k:
                correct[t] += 1
                total += 1
    return total


# -- SoftmaxWithLoss as tasks (a replayed training pass records them: net.train_replay) ---------------------------
NORMALIZATION_CODES = {"FULL": 0, "VALID": 1, "BATCH_SIZE": 2, "NONE": 3}
_INT64_MIN = np.int64(-(2**63))


def _softmax_loss_worker(
    t, v, labels, lab, ignore, has_ignore, mode, prob, out, norm, status, workers
):  # pragma: no cover
    """The one worker (a serial task) of ``SoftmaxLossRunner``'s forward: the labels (float, flat) to lab (int64,
    (outer, inner)) as ``_labels`` does (truncated; NaN, infinities and values outside int64 as NumPy's cast on x86 gives
    them, the smallest int64), the first out of range (not ignored) into status (status[0] = 1, status[1] = it; then
    the loss is NaN and nothing else is computed), else ``_softmax_loss_rows`` into prob, its loss divided by
    ``normalizer``'s value (mode: NORMALIZATION_CODES) into out[0] and that value into norm[0]."""
    if t != 0:
        return
    outer, c, inner = v.shape
    status[0] = 0
    status[1] = 0
    for idx in range(outer * inner):
        x = labels[idx]
        lab_v = np.int64(x) if -9.223372036854775808e18 <= x < 9.223372036854775808e18 else _INT64_MIN  # +-2^63
        lab[idx // inner, idx % inner] = lab_v
        if has_ignore and lab_v == ignore:
            continue
        if (lab_v < 0 or lab_v >= c) and status[0] == 0:
            status[0] = 1
            status[1] = lab_v
    if status[0] != 0:
        out[0] = np.float32(np.nan)
        return
    loss, valid = _softmax_loss_rows(v, lab, ignore, has_ignore, prob)
    value = outer * inner if mode == 0 else valid if mode == 1 else outer if mode == 2 else 1
    nv = float(max(1, value))
    norm[0] = nv
    out[0] = np.float32(loss / nv)


def _softmax_loss_grad_worker(t, prob, lab, ignore, has_ignore, norm, weight, dx, workers):  # pragma: no cover
    """The one worker of ``SoftmaxLossRunner``'s backward: ``_softmax_loss_grad`` at weight[0] / norm[0] (the top's
    diff, the forward's normalizer), as ``softmax_loss_backward``'s float32(loss_weight / normalizer)."""
    if t != 0:
        return
    _softmax_loss_grad(prob, lab, ignore, has_ignore, np.float32(np.float64(weight[0]) / norm[0]), dx)


_F3, _I2, _F1, _D1, _L1 = (types.float32[:, :, ::1], types.int64[:, ::1], types.float32[::1], types.float64[::1],
                           types.int64[::1])  # fmt: skip
_LOSS = Task(_softmax_loss_worker, (_F3, _F1, _I2, types.int64, types.boolean, types.int64, _F3, _F1, _D1, _L1,
                                    types.int64))  # fmt: skip
_LOSS_GRAD = Task(_softmax_loss_grad_worker, (_F3, _I2, types.int64, types.boolean, _D1, _F1, _F3, types.int64))


class SoftmaxLossRunner:
    """SoftmaxWithLoss on the CPU for scores of one shape, as two tasks run on the calling thread, with its buffers
    kept (prob, the labels as integers, the normalizer, the label check's status): ``forward(x, labels, out)`` writes
    the loss into out (a float32 array of one element) and returns prob (x's shape); ``backward(weight, dx)`` writes
    the gradient at the top diff weight (one float32) into dx. The same bits as ``softmax_loss_forward`` /
    ``softmax_loss_backward``; a label out of range raises the same ValueError (``check``), which a replayed pass asks
    after its forward."""

    def __init__(self, shape: tuple[int, ...], axis: int, ignore_label: int | None, normalization: str) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown loss normalization {normalization!r} (known: {', '.join(NORMALIZATIONS)})")
        self.shape = tuple(shape)
        _, self.outer, self.c, self.inner = _view(np.empty(shape, np.float32), axis)
        self.axis = axis
        self.ignore = -1 if ignore_label is None else int(ignore_label)
        self.has_ignore = ignore_label is not None
        self.mode = NORMALIZATION_CODES[normalization]
        self.prob = np.empty(self.shape, np.float32)
        self.lab = np.empty((self.outer, self.inner), np.int64)
        self.norm = np.ones(1, np.float64)
        self.status = np.zeros(2, np.int64)

    def forward(self, x: np.ndarray, labels: np.ndarray, out: np.ndarray) -> np.ndarray:
        flat = labels.reshape(-1)
        if flat.size != self.outer * self.inner:
            raise ValueError(
                f"label count ({flat.size}) must equal the number of score positions outer*inner = "
                f"{self.outer}*{self.inner}"
            )
        shape3 = (self.outer, self.c, self.inner)
        _LOSS.serial(_LOSS.address, 1, x.reshape(shape3), flat, self.lab, self.ignore, self.has_ignore, self.mode,
                     self.prob.reshape(shape3), out, self.norm, self.status, 1)  # fmt: skip
        self.check()
        return self.prob

    def check(self) -> None:
        """The ValueError ``_labels`` raises, where the last forward met a label out of range."""
        if self.status[0]:
            raise ValueError(f"label {int(self.status[1])} out of range for {self.c} classes")

    def backward(self, weight: np.ndarray, dx: np.ndarray) -> None:
        shape3 = (self.outer, self.c, self.inner)
        _LOSS_GRAD.serial(_LOSS_GRAD.address, 1, self.prob.reshape(shape3), self.lab, self.ignore, self.has_ignore,
                          self.norm, weight, dx.reshape(shape3), 1)  # fmt: skip


# -- public ------------------------------------------------------------------------------------
def softmax_loss_forward(
    x: np.ndarray, labels: np.ndarray, *, axis: int = 1, ignore_label: int | None = None, normalization: str = "VALID"
) -> tuple[float, np.ndarray, float]:
    """Softmax along `axis` and the multinomial logistic loss.

    x: scores (..., C, ...) float32; labels: outer*inner values (N for (N, C) scores).
    Returns (loss, prob with x's shape, normalizer)."""
    v, outer, c, inner = _view(np.asarray(x, dtype=np.float32), axis)
    lab = _labels(labels, outer, inner, c, ignore_label)
    prob = np.empty_like(v)
    loss, valid = _softmax_loss_rows(
        v, lab, -1 if ignore_label is None else int(ignore_label), ignore_label is not None, prob
    )
    norm = normalizer(normalization, outer, inner, int(valid))
    return float(loss / norm), prob.reshape(x.shape), norm


def softmax_loss_backward(
    prob: np.ndarray,
    labels: np.ndarray,
    *,
    axis: int = 1,
    ignore_label: int | None = None,
    normalizer_value: float,
    loss_weight: float = 1.0,
    dx: np.ndarray | None = None,
) -> np.ndarray:
    """Gradient of loss_weight * loss wrt the scores, OVERWRITTEN into `dx` (allocated if None):
    (p - onehot(label)) * loss_weight / normalizer, 0 at ignored positions."""
    p, outer, c, inner = _view(prob, axis)
    lab = _labels(labels, outer, inner, c, ignore_label)
    if dx is None:
        dx = np.empty(prob.shape, dtype=np.float32)
    elif dx.shape != prob.shape or not dx.flags.c_contiguous:
        raise ValueError(f"dx must be a contiguous array of shape {prob.shape}, got {dx.shape}")
    _softmax_loss_grad(
        p,
        lab,
        -1 if ignore_label is None else int(ignore_label),
        ignore_label is not None,
        np.float32(loss_weight / normalizer_value),
        dx.reshape(outer, c, inner),
    )
    return dx


def accuracy_forward(
    x: np.ndarray, labels: np.ndarray, *, axis: int = 1, top_k: int = 1, ignore_label: int | None = None
) -> tuple[float, np.ndarray]:
    """(accuracy over non-ignored positions (0 if none), per-class accuracy (C,))."""
    v, outer, c, inner = _view(np.asarray(x, dtype=np.float32), axis)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    lab = _labels(labels, outer, inner, c, ignore_label)
    correct = np.zeros(c, dtype=np.int64)
    count = np.zeros(c, dtype=np.int64)
    total = _accuracy_rows(
        v, lab, -1 if ignore_label is None else int(ignore_label), ignore_label is not None, int(top_k), correct, count
    )
    n = int(count.sum())
    per_class = np.divide(correct, count, out=np.zeros(c), where=count > 0).astype(np.float32)
    return (float(total) / n if n else 0.0), per_class


def euclidean_loss_forward(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """loss = sum((a - b)^2) / (2 N); returns (loss, diff = a - b) for the backward."""
    if a.shape[0] != b.shape[0] or a.size != b.size:
        raise ValueError(f"EuclideanLoss inputs must have the same count per item: {a.shape} vs {b.shape}")
    diff = (a.reshape(a.shape[0], -1) - b.reshape(b.shape[0], -1)).astype(np.float32)
    flat = diff.reshape(-1)
    return float(np.dot(flat, flat) / (2.0 * a.shape[0])), diff


def euclidean_loss_backward(diff: np.ndarray, n: int, loss_weight: float, sign: float) -> np.ndarray:
    """d(loss_weight * loss)/d a = loss_weight * (a - b) / N (sign -1 for b)."""
    return (diff * np.float32(sign * loss_weight / n)).astype(np.float32)
