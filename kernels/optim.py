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
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def regularize(w, g, scale, decay, l1):  # pragma: no cover - compiled
    for i in range(w.size):
        v = g[i] * scale
        if decay != 0.0:
            if l1:
                v += decay * ((w[i] > 0) - (w[i] < 0))
            else:
                v += decay * w[i]
        g[i] = v


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
