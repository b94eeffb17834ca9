"""The LSTM unit (Caffe's LSTMUnitLayer) as one compiled pass each way, and its float64 NumPy reference.

Shapes: gates (N, 4H) pre-activations laid out [i | f | o | g] per item (Caffe's order); c_prev (N, H); cont (N,).
  i, f, o = sigmoid(gates[:, :H]), sigmoid(gates[:, H:2H]), sigmoid(gates[:, 2H:3H]); g = tanh(gates[:, 3H:])
  c = cont * f * c_prev + i * g        (Caffe: f is taken as 0 where cont == 0)
  h = o * tanh(c)
Backward, for dc and dh (the gradients of c and h):
  dc_tot = dc + dh * o * (1 - tanh(c)^2);  dc_prev = dc_tot * cont * f
  d[i' f' o' g'] = [dc_tot * g * i(1-i), dc_tot * cont * c_prev * f(1-f), dh * tanh(c) * o(1-o), dc_tot * i * (1-g^2)]
`lstm_unit_forward` keeps the activations [i f o g] (N, 4H) for the backward; both OVERWRITE their outputs.
Kernels: `_unit_fwd` / `_unit_bwd`, one loop over N*H with every gate of an element in registers (no temporaries).
Benchmark: none of its own (memory-bound, a few ns an element); the recurrent layers' GEMMs dominate.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["lstm_unit_backward", "lstm_unit_forward", "lstm_unit_forward_ref"]


def lstm_unit_forward_ref(gates, c_prev, cont):
    """float64 (c, h) of the module docstring's formulas."""
    g64, c64, k = (np.asarray(a, np.float64) for a in (gates, c_prev, cont))
    hd = c64.shape[1]
    sig = 1.0 / (1.0 + np.exp(-g64[:, : 3 * hd]))
    i, f, o = sig[:, :hd], sig[:, hd : 2 * hd], sig[:, 2 * hd :]
    g = np.tanh(g64[:, 3 * hd :])
    c = k[:, None] * f * c64 + i * g
    return c, o * np.tanh(c)


@njit(cache=True, boundscheck=False)
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@njit(cache=True, boundscheck=False)
def _unit_fwd(gates, c_prev, cont, acts, c, h):
    n, hd = c_prev.shape
    for b in range(n):
        k = cont[b]
        for d in range(hd):
            i = _sigmoid(gates[b, d])
            f = _sigmoid(gates[b, hd + d]) if k != 0 else np.float32(0.0)
            o = _sigmoid(gates[b, 2 * hd + d])
            g = np.tanh(gates[b, 3 * hd + d])
            acts[b, d], acts[b, hd + d], acts[b, 2 * hd + d], acts[b, 3 * hd + d] = i, f, o, g
            cv = k * f * c_prev[b, d] + i * g if k != 0 else i * g
            c[b, d] = cv
            h[b, d] = o * np.tanh(cv)


@njit(cache=True, boundscheck=False)
def _unit_bwd(acts, c_prev, cont, c, dc, dh, dgates, dc_prev):
    n, hd = c_prev.shape
    for b in range(n):
        k = cont[b]
        for d in range(hd):
            i, f, o, g = acts[b, d], acts[b, hd + d], acts[b, 2 * hd + d], acts[b, 3 * hd + d]
            tc = np.tanh(c[b, d])
            dhv = dh[b, d]
            tot = dc[b, d] + dhv * o * (1.0 - tc * tc)
            dc_prev[b, d] = tot * k * f
            dgates[b, d] = tot * g * i * (1.0 - i)
            dgates[b, hd + d] = tot * k * c_prev[b, d] * f * (1.0 - f)
            dgates[b, 2 * hd + d] = dhv * tc * o * (1.0 - o)
            dgates[b, 3 * hd + d] = tot * i * (1.0 - g * g)


def lstm_unit_forward(gates: np.ndarray, c_prev: np.ndarray, cont: np.ndarray, c=None, h=None):
    """(acts (N, 4H), c (N, H), h (N, H)), float32; c and h written into the arrays given (else new ones)."""
    gates = np.ascontiguousarray(gates, np.float32)
    c_prev = np.ascontiguousarray(c_prev, np.float32)
    cont = np.ascontiguousarray(cont, np.float32).reshape(-1)
    n, hd = c_prev.shape
    if gates.shape != (n, 4 * hd) or cont.shape != (n,):
        raise ValueError(f"lstm_unit: gates {gates.shape}, c_prev {c_prev.shape}, cont {cont.shape} do not fit")
    acts = np.empty_like(gates)
    c = np.empty_like(c_prev) if c is None else c
    h = np.empty_like(c_prev) if h is None else h
    _unit_fwd(gates, c_prev, cont, acts, c, h)
    return acts, c, h


def lstm_unit_backward(acts, c_prev, cont, c, dc, dh, dgates=None, dc_prev=None):
    """(dgates (N, 4H), dc_prev (N, H)), float32, OVERWRITTEN (into the arrays given, else new ones)."""
    f32 = [np.ascontiguousarray(a, np.float32) for a in (acts, c_prev, c, dc, dh)]
    acts, c_prev, c, dc, dh = f32
    cont = np.ascontiguousarray(cont, np.float32).reshape(-1)
    dgates = np.empty_like(acts) if dgates is None else dgates
    dc_prev = np.empty_like(c_prev) if dc_prev is None else dc_prev
    _unit_bwd(acts, c_prev, cont, c, dc, dh, dgates, dc_prev)
    return dgates, dc_prev
