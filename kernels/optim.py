"""Solver update kernels (caffe_facts §6.1): one fused pass per parameter blob.

Kernels (all on flat float32 arrays; `w` weights, `g` gradient (the blob's diff), `h`/`h2` history):

1. ``regularize``     - g <- g * scale + decay * w (L2) or + decay * sign(w) (L1); scale = 1 / iter_size.
2. ``sgd_update``     - h <- momentum * h + rate * g;  w <- w - h.        (Caffe's SGD: lr inside the history)
3. ``nesterov_update``- h' <- momentum * h + rate * g;  w <- w - ((1 + momentum) * h' - momentum * h).
4. ``adagrad_update`` - h <- h + g^2;  w <- w - rate * g / (sqrt(h) + delta).
5. ``rmsprop_update`` - h <- rms_decay * h + (1 - rms_decay) * g^2;  w <- w - rate * g / (sqrt(h) + delta).
6. ``adadelta_update``- h <- m h + (1 - m) g^2;  u = g sqrt(h2 + delta) / sqrt(h + delta);  h2 <- m h2 + (1 - m) u^2;
                        w <- w - rate * u.
7. ``adam_update``    - h <- b1 h + (1 - b1) g;  h2 <- b2 h2 + (1 - b2) g^2;  t = iter + 1;
                        w <- w - rate * sqrt(1 - b2^t) / (1 - b1^t) * h / (sqrt(h2) + eps).

Each kernel also leaves the applied step in `g` (Caffe keeps the update value in the diff). The solver
zeroes the diffs before the next iteration. Timed as part of `python -m benchmarks.bench_train`.

``sgd_step`` is 1. then 2. (or 3.) in one pass, with the same operations in the same order (the same bits), over
the threads for a blob of PARALLEL_STEP elements or more (a `kernels.tasks` body). The update streams the blob's
arrays through L3 (LeNet's ip1 weights: 1.6 MB each), so one pass on two threads is what gains: LeNet's whole update
0.257 -> 0.173 ms a training iteration (Zen 4, 2 threads; ip1's weights alone 206 -> 113 us).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, types

from kernels.tasks import Task, share16


@njit(cache=True, inline="always")
def _regularized(gi, wi, scale, decay, l1):  # pragma: no cover - compiled
    """One element of `regularize`, in float64 (the caller rounds it to float32)."""
    v = gi * scale
    if decay != 0.0:
        if l1:
            v += decay * ((wi > 0) - (wi < 0))
        else:
            v += decay * wi
    return v


@njit(cache=True)
def regularize(w, g, scale, decay, l1):  # pragma: no cover - compiled
    for i in range(w.size):
        g[i] = _regularized(g[i], w[i], scale, decay, l1)


@njit(cache=True)
def sgd_update(w, g, h, rate, momentum):  # pragma: no cover - compiled
    for i in range(w.size):
        v = momentum * h[i] + rate * g[i]
        h[i] = v
        g[i] = v
        w[i] -= v


@njit(cache=True)
def nesterov_update(w, g, h, rate, momentum):  # pragma: no cover - compiled
    for i in range(w.size):
        old = h[i]
        new = momentum * old + rate * g[i]
        h[i] = new
        v = (1.0 + momentum) * new - momentum * old
        g[i] = v
        w[i] -= v


@njit(cache=True)
def adagrad_update(w, g, h, rate, delta):  # pragma: no cover - compiled
    for i in range(w.size):
        h[i] += g[i] * g[i]
        v = rate * g[i] / (np.sqrt(h[i]) + delta)
        g[i] = v
        w[i] -= v


@njit(cache=True)
def rmsprop_update(w, g, h, rate, rms_decay, delta):  # pragma: no cover - compiled
    for i in range(w.size):
        h[i] = rms_decay * h[i] + (1.0 - rms_decay) * g[i] * g[i]
        v = rate * g[i] / (np.sqrt(h[i]) + delta)
        g[i] = v
        w[i] -= v


@njit(cache=True)
def adadelta_update(w, g, h, h2, rate, momentum, delta):  # pragma: no cover - compiled
    for i in range(w.size):
        h[i] = momentum * h[i] + (1.0 - momentum) * g[i] * g[i]
        u = g[i] * np.sqrt(h2[i] + delta) / np.sqrt(h[i] + delta)
        h2[i] = momentum * h2[i] + (1.0 - momentum) * u * u
        v = rate * u
        g[i] = v
        w[i] -= v


@njit(cache=True)
def adam_update(w, g, h, h2, rate, beta1, beta2, eps, t):  # pragma: no cover - compiled
    correction = np.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
    for i in range(w.size):
        h[i] = beta1 * h[i] + (1.0 - beta1) * g[i]
        h2[i] = beta2 * h2[i] + (1.0 - beta2) * g[i] * g[i]
        v = rate * correction * h[i] / (np.sqrt(h2[i]) + eps)
        g[i] = v
        w[i] -= v


@njit(cache=True, boundscheck=False)
def _sgd_fused(w, g, h, scale, decay, l1, rate, momentum, nesterov):  # pragma: no cover - compiled
    """`regularize` then `sgd_update` (or `nesterov_update`), fused: per element the same float64 operations and
    float32 roundings as the two passes. The cases are separate loops with the decay written out: one loop calling
    `_regularized` (its tests inside) ran 252 against 215 us over ip1's weights on one thread."""
    if nesterov:
        for i in range(w.size):
            old = h[i]
            new = momentum * old + rate * np.float32(_regularized(g[i], w[i], scale, decay, l1))
            h[i] = new
            u = (1.0 + momentum) * new - momentum * old
            g[i] = u
            w[i] -= u
    elif decay != 0.0 and not l1:  # L2 weight decay: the common case
        for i in range(w.size):
            u = momentum * h[i] + rate * np.float32(g[i] * scale + decay * w[i])
            h[i] = u
            g[i] = u
            w[i] -= u
    elif decay == 0.0:
        for i in range(w.size):
            u = momentum * h[i] + rate * np.float32(g[i] * scale)
            h[i] = u
            g[i] = u
            w[i] -= u
    else:
        for i in range(w.size):
            u = momentum * h[i] + rate * np.float32(g[i] * scale + decay * ((w[i] > 0) - (w[i] < 0)))
            h[i] = u
            g[i] = u
            w[i] -= u


def _sgd_step_worker(t, w, g, h, scale, decay, l1, rates, slot, momentum, nesterov, workers):  # pragma: no cover
    """Worker t's share (whole 16-float blocks) of `_sgd_fused` over the blob, at the rate rates[slot] (an array, so
    that a recorded call reads each iteration's rate: net.train_replay.UpdateReplay)."""
    lo, hi = share16(w.size, t, workers)
    _sgd_fused(w[lo:hi], g[lo:hi], h[lo:hi], scale, decay, l1, rates[slot], momentum, nesterov)


_F1 = types.float32[::1]
_SGD_STEP = Task(_sgd_step_worker, (_F1, _F1, _F1, *(types.float64,) * 2, types.boolean, types.float64[::1],
                                    types.int64, types.float64, types.boolean, types.int64), boundscheck=False)  # fmt: skip
PARALLEL_STEP = 1 << 16  # elements of a blob from which sgd_step splits it over the threads (LeNet: ip1's weights)


def sgd_step(
    w,
    g,
    h,
    scale: float,
    decay: float,
    l1: bool,
    rate: float,
    momentum: float,
    nesterov: bool,
    rates: np.ndarray | None = None,
    slot: int = 0,
) -> None:
    """regularize(w, g, scale, decay, l1) then sgd_update(w, g, h, rate, momentum) (nesterov_update when
    `nesterov`) in one pass, the same bits; w, g, h flat C-contiguous float32 of one size. `rates` (float64, C
    contiguous): the rate is written to rates[slot] and read from there (a solver's array, which a recorded update
    reads each iteration); without it, a one-element array of its own."""
    if rates is None:
        rates, slot = np.empty(1, np.float64), 0
    rates[slot] = rate
    workers = numba.get_num_threads() if w.size >= PARALLEL_STEP else 1
    run = _SGD_STEP.parallel if workers > 1 else _SGD_STEP.serial
    run(_SGD_STEP.address, workers, w, g, h, float(scale), float(decay), bool(l1), rates, int(slot), float(momentum),
        bool(nesterov), workers)  # fmt: skip
