"""Recurrent layers: LSTMUnit, RNN and LSTM, with Caffe's semantics and parameter blobs.

Caffe (BVLC recurrent_layer.cpp, rnn_layer.cpp, lstm_layer.cpp, lstm_unit_layer.cpp) builds an unrolled net inside
RNN / LSTM; crema computes the same math directly, one time step after another. Shapes: x (T, N, ...) (the axes after
N flattened to D), cont (T, N) sequence-continuation markers (0 starts a new sequence), optional x_static (N, ...)
(flattened to S), H = recurrent_param.num_output.

  LSTMUnit  bottoms c_prev (1, N, H), gates (1, N, 4H) [i f o g], cont (1, N); tops c (1, N, H), h (1, N, H):
            kernels.recurrent's formulas. Backward: dc_prev and dgates OVERWRITTEN; no gradient to cont (an error).
  LSTM      blobs [W_xc (4H, D), b_c (4H,), (W_xc_static (4H, S) with x_static), W_hc (4H, H)] (Caffe's order: the
            unrolled net's parameters as they first appear); per step t, with h_0, c_0 the initial state:
              gates_t = W_xc x_t + b_c (+ W_xc_static x_static) + W_hc (cont_t * h_{t-1})
              (c_t, h_t) = LSTMUnit(c_{t-1}, gates_t, cont_t);  top h (T, N, H)
  RNN       blobs [W_xh (H, D), b_h (H,), (W_xh_static (H, S)), W_hh (H, H), W_ho (H, H), b_o (H,)];
              h_t = tanh(W_xh x_t + b_h (+ W_xh_static x_static) + W_hh (cont_t * h_{t-1}));
              o_t = tanh(W_ho h_t + b_o);  top o (T, N, H)
  Initial state: with recurrent_param.expose_hidden the bottoms after x, cont (and x_static) are h_0 (and c_0 for
  LSTM), each (1, N, H), and the tops after the output are h_T (and c_T). Without it, the state left by the previous
  forward (zeros at first, and again when N changes), as Caffe copies h_T / c_T to h_0 / c_0 before each forward.
  Backward (as Caffe's unrolled net): x, x_static diffs OVERWRITTEN, parameter diffs ACCUMULATE (param_needs_grad);
  the gradient flows back through the T steps and stops at h_0 / c_0 (Caffe shares only their data: exposed h_0 /
  c_0 bottoms get a zero diff), and the diffs of the h_T / c_T tops are not used (Caffe zeroes them); cont gets a
  zero diff (Caffe's recurrent layers skip it; LSTMUnit refuses it, as Caffe's CHECK does). weight_filler / bias_filler fill every weight / bias blob; debug_info only makes Caffe
  log its inner net and is ignored. Caffe refuses a T that changes between forwards; crema accepts it.
Matrix products on kernels.gemm (the input and static projections once for all steps, the recurrent one per step),
the LSTM unit on kernels.recurrent (one compiled pass per step); float32 throughout. CPU nets only.
"""

from __future__ import annotations

import math

import numpy as np

from kernels.gemm import gemm
from kernels.recurrent import lstm_unit_backward, lstm_unit_forward

from ..blob import Blob
from .base import Layer, diff_out, param_needs, register


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32)


@register("LSTMUnit")
class LSTMUnitLayer(Layer):
    num_bottom = 3
    num_top = 2

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        c, g, k = (b.shape for b in bottom)
        if len(c) != 3 or c[0] != 1:
            raise self.error(f"bottom 0 (c_prev) must be (1, N, H), got {c}")
        if g != (1, c[1], 4 * c[2]):
            raise self.error(f"bottom 1 (gates) must be (1, {c[1]}, {4 * c[2]}) for c_prev {c}, got {g}")
        if k != (1, c[1]):
            raise self.error(f"bottom 2 (cont) must be (1, {c[1]}), got {k}")
        top[0].reshape(c)
        top[1].reshape(c)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        c_prev, gates, cont = (_f32(b.data)[0] for b in bottom)
        self.acts, c, h = lstm_unit_forward(gates, c_prev, cont)
        top[0].data = c.reshape(top[0].shape)
        top[1].data = h.reshape(top[1].shape)

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        if propagate_down[2]:
            raise self.error(
                "cannot propagate a gradient to the sequence indicators (bottom 2): set propagate_down false"
            )
        if not (propagate_down[0] or propagate_down[1]):
            return
        c_prev, _, cont = (_f32(b.data)[0] for b in bottom)
        dgates, dc_prev = lstm_unit_backward(
            self.acts, c_prev, cont, _f32(top[0].data)[0], _f32(top[0].diff)[0], _f32(top[1].diff)[0]
        )
        if propagate_down[0]:
            diff_out(bottom[0])[...] = dc_prev.reshape(bottom[0].shape)
        if propagate_down[1]:
            diff_out(bottom[1])[...] = dgates.reshape(bottom[1].shape)


class _Recurrent(Layer):
    num_bottom = (2, 5)
    num_top = (1, 3)
    n_state = 1  # recurrent state blobs: h (RNN), h and c (LSTM)
    gates = 1  # rows of W_x per hidden unit: 1 (RNN), 4 (LSTM)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.recurrent_param
        if p.num_output <= 0:
            raise self.error("recurrent_param.num_output must be given and > 0")
        self.hidden = int(p.num_output)
        self.expose = bool(p.expose_hidden)
        exposed = self.n_state if self.expose else 0
        self.static = len(bottom) > 2 + exposed
        if len(bottom) != 2 + self.static + exposed or len(top) != 1 + exposed:
            names = "h_0, c_0" if self.n_state == 2 else "h_0"
            raise self.error(
                f"expected bottoms x, cont, [x_static]{', ' + names if self.expose else ''} and "
                f"{1 + exposed} top(s) (expose_hidden {str(self.expose).lower()}), got {len(bottom)} bottoms and "
                f"{len(top)} tops"
            )
        x = bottom[0].shape
        if len(x) < 2:
            raise self.error(f"bottom 0 (x) must have at least 2 axes (T, N, ...), got {x}")
        d = math.prod(x[2:])
        rows = self.gates * self.hidden
        self.blobs = [self._param_blob(0, (rows, d), p.weight_filler), self._param_blob(1, (rows,), p.bias_filler)]
        if self.static:
            s = bottom[2].shape
            if len(s) < 1:
                raise self.error(f"bottom 2 (x_static) must be (N, ...), got {s}")
            self.blobs.append(self._param_blob(2, (rows, math.prod(s[1:])), p.weight_filler))
        self.blobs.append(self._param_blob(len(self.blobs), (rows, self.hidden), p.weight_filler))
        self.carried: list[np.ndarray] | None = None

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        x, cont = bottom[0].shape, bottom[1].shape
        if len(x) < 2 or math.prod(x[2:]) != self.blobs[0].shape[1]:
            raise self.error(f"bottom 0 (x) must be (T, N, ...) with {self.blobs[0].shape[1]} values an item, got {x}")
        t, n = x[0], x[1]
        if cont != (t, n):
            raise self.error(f"bottom 1 (cont) must be (T, N) = {(t, n)}, got {cont}")
        if self.static:
            s = bottom[2].shape
            if not s or s[0] != n or math.prod(s[1:]) != self.blobs[2].shape[1]:
                raise self.error(
                    f"bottom 2 (x_static) must be (N, ...) = ({n}, {self.blobs[2].shape[1]} values), got {s}"
                )
        state = (1, n, self.hidden)
        if self.expose:
            for b in bottom[2 + self.static :]:
                if b.shape != state:
                    raise self.error(f"bottom '{b.name}' (initial state) must be {state}, got {b.shape}")
            for tp in top[1:]:
                tp.reshape(state)
        top[0].reshape((t, n, self.hidden))

    def _w(self, which: str) -> np.ndarray:
        i = {"x": 0, "b": 1, "s": 2, "h": 2 + self.static}[which]
        return _f32(self.blobs[i].data)

    def _initial(self, bottom: list[Blob], n: int) -> list[np.ndarray]:
        if self.expose:
            return [_f32(b.data).reshape(n, self.hidden) for b in bottom[2 + self.static :]]
        if self.carried is None or self.carried[0].shape[0] != n:
            self.carried = [np.zeros((n, self.hidden), np.float32) for _ in range(self.n_state)]
        return self.carried

    def _inputs(self, bottom: list[Blob]) -> np.ndarray:
        """W_x x + b (+ W_s x_static) for every step: (T, N, rows)."""
        x = _f32(bottom[0].data)
        t, n = x.shape[:2]
        pre = gemm(x.reshape(t * n, -1), self._w("x"), trans_b=True).reshape(t, n, -1)
        pre += self._w("b")
        if self.static:
            pre += gemm(_f32(bottom[2].data).reshape(n, -1), self._w("s"), trans_b=True)
        return pre

    def _input_backward(self, dpre: np.ndarray, propagate_down: list[bool], bottom: list[Blob]) -> None:
        """The gradients of _inputs given d(pre) (T, N, rows)."""
        needs = param_needs(self, len(self.blobs))
        x = _f32(bottom[0].data)
        t, n = x.shape[:2]
        d2 = dpre.reshape(t * n, -1)
        if needs[0]:
            gemm(d2, x.reshape(t * n, -1), trans_a=True, out=self.blobs[0].diff, accumulate=True)
        if needs[1]:
            self.blobs[1].diff += d2.sum(axis=0, dtype=np.float64).astype(np.float32)
        if propagate_down[0]:
            diff_out(bottom[0])[...] = gemm(d2, self._w("x")).reshape(bottom[0].shape)
        if self.static:
            ds = dpre.sum(axis=0)
            xs = _f32(bottom[2].data).reshape(n, -1)
            if needs[2]:
                gemm(ds, xs, trans_a=True, out=self.blobs[2].diff, accumulate=True)
            if propagate_down[2]:
                diff_out(bottom[2])[...] = gemm(ds, self._w("s")).reshape(bottom[2].shape)
        if self.expose:
            for b, down in zip(bottom[2 + self.static :], propagate_down[2 + self.static :]):
                if down:
                    diff_out(b)[...] = 0.0  # Caffe shares only the data of h_0 / c_0: no gradient reaches them

    def _cont_backward(self, propagate_down: list[bool], bottom: list[Blob]) -> None:
        if propagate_down[1]:
            diff_out(bottom[1])[...] = 0.0  # Caffe's unrolled net never back-propagates to cont


@register("LSTM")
class LSTMLayer(_Recurrent):
    n_state = 2
    gates = 4

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        if not isinstance(bottom[0].data, np.ndarray):
            raise self.error("runs on CPU nets only")
        pre = self._inputs(bottom)
        t_len, n = pre.shape[:2]
        cont = _f32(bottom[1].data)
        h0, c0 = self._initial(bottom, n)
        w_h = self._w("h")
        hd = self.hidden
        self.h_prev = np.empty((t_len, n, hd), np.float32)  # cont_t * h_{t-1}, the recurrent product's input
        self.c = np.empty((t_len + 1, n, hd), np.float32)  # c_0 .. c_T
        self.acts = np.empty((t_len, n, 4 * hd), np.float32)
        h = np.empty((t_len, n, hd), np.float32)
        self.c[0] = c0
        h_last = h0
        for t in range(t_len):
            np.multiply(h_last, cont[t][:, None], out=self.h_prev[t])
            gates = gemm(self.h_prev[t], w_h, trans_b=True)
            gates += pre[t]
            self.acts[t], _, _ = lstm_unit_forward(gates, self.c[t], cont[t], c=self.c[t + 1], h=h[t])
            h_last = h[t]
        top[0].data = h
        if t_len:
            final = [h[-1].copy(), self.c[-1].copy()]
        else:
            final = [h0.copy(), c0.copy()]
        if self.expose:
            top[1].data = final[0].reshape(top[1].shape)
            top[2].data = final[1].reshape(top[2].shape)
        else:
            self.carried = final

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        self._cont_backward(propagate_down, bottom)
        needs = param_needs(self, len(self.blobs))
        dh_out = _f32(top[0].diff)
        cont = _f32(bottom[1].data)
        t_len, n, hd = dh_out.shape
        w_h = self._w("h")
        dpre = np.empty((t_len, n, 4 * hd), np.float32)
        dh_next = np.zeros((n, hd), np.float32)
        dc_next = np.zeros((n, hd), np.float32)
        for t in range(t_len - 1, -1, -1):
            dh = dh_out[t] + dh_next
            lstm_unit_backward(self.acts[t], self.c[t], cont[t], self.c[t + 1], dc_next, dh, dpre[t], dc_next)
            if needs[-1]:
                gemm(dpre[t], self.h_prev[t], trans_a=True, out=self.blobs[-1].diff, accumulate=True)
            dh_next = gemm(dpre[t], w_h) * cont[t][:, None]
        self._input_backward(dpre, propagate_down, bottom)


@register("RNN")
class RNNLayer(_Recurrent):
    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        super().layer_setup(bottom, top)
        p = self.param.recurrent_param
        k = len(self.blobs)
        self.blobs.append(self._param_blob(k, (self.hidden, self.hidden), p.weight_filler))  # W_ho
        self.blobs.append(self._param_blob(k + 1, (self.hidden,), p.bias_filler))  # b_o

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        if not isinstance(bottom[0].data, np.ndarray):
            raise self.error("runs on CPU nets only")
        pre = self._inputs(bottom)
        t_len, n = pre.shape[:2]
        cont = _f32(bottom[1].data)
        (h0,) = self._initial(bottom, n)
        w_h, w_o, b_o = self._w("h"), _f32(self.blobs[-2].data), _f32(self.blobs[-1].data)
        hd = self.hidden
        self.h_prev = np.empty((t_len, n, hd), np.float32)
        self.h = np.empty((t_len, n, hd), np.float32)
        h_last = h0
        for t in range(t_len):
            np.multiply(h_last, cont[t][:, None], out=self.h_prev[t])
            a = gemm(self.h_prev[t], w_h, trans_b=True)
            a += pre[t]
            np.tanh(a, out=self.h[t])
            h_last = self.h[t]
        o = gemm(self.h.reshape(t_len * n, hd), w_o, trans_b=True)
        o += b_o
        np.tanh(o, out=o)
        self.o = o.reshape(t_len, n, hd)
        top[0].data = self.o
        final = [(self.h[-1] if t_len else h0).copy()]
        if self.expose:
            top[1].data = final[0].reshape(top[1].shape)
        else:
            self.carried = final

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        self._cont_backward(propagate_down, bottom)
        needs = param_needs(self, len(self.blobs))
        do = _f32(top[0].diff)
        cont = _f32(bottom[1].data)
        t_len, n, hd = do.shape
        dz = (do * (1.0 - self.o * self.o)).reshape(t_len * n, hd)  # through o = tanh(z)
        h2 = self.h.reshape(t_len * n, hd)
        if needs[-2]:
            gemm(dz, h2, trans_a=True, out=self.blobs[-2].diff, accumulate=True)
        if needs[-1]:
            self.blobs[-1].diff += dz.sum(axis=0, dtype=np.float64).astype(np.float32)
        dh_out = gemm(dz, _f32(self.blobs[-2].data)).reshape(t_len, n, hd)
        w_h = self._w("h")
        w_h_index = 2 + self.static
        dpre = np.empty((t_len, n, hd), np.float32)
        dh_next = np.zeros((n, hd), np.float32)
        for t in range(t_len - 1, -1, -1):
            h = self.h[t]
            np.multiply(dh_out[t] + dh_next, 1.0 - h * h, out=dpre[t])
            if needs[w_h_index]:
                gemm(dpre[t], self.h_prev[t], trans_a=True, out=self.blobs[w_h_index].diff, accumulate=True)
            dh_next = gemm(dpre[t], w_h) * cont[t][:, None]
        self._input_backward(dpre, propagate_down, bottom)
