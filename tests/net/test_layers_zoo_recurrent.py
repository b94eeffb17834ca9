"""Layer coverage (issue 17): LSTMUnit, LSTM and RNN (net/layers/recurrent.py, kernels/recurrent.py).

Forward against a float64 NumPy reference of Caffe's unrolled nets (within 1e-5), every gradient (x, x_static,
each parameter blob; the unit's c_prev and gates) against central differences of that reference (float64, h 1e-6;
atol 1e-5, rtol 1e-4: the layers run in float32), and the LSTM / RNN forward against PyTorch's nn.LSTM / nn.RNN on the
same weights (Caffe's gate rows i f o g reordered to PyTorch's i f g o) within 1e-5. OpenCV DNN's Caffe importer
creates no RNN or LSTMUnit layer, and its LSTM takes its own blob layout (it refuses Caffe's three blobs)."""

from __future__ import annotations

import numpy as np
import pytest

from net import Net, NetError
from net.blob import Blob
from net.layers import Layer, create_layer
from net.prototxt_loader import parse_text
from tests.gradcheck import assert_grad_close, numeric_grad


def _data(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def lstm_ref(x, cont, params, x_static=None, h0=None, c0=None):
    """float64 Caffe LSTM: returns (h (T, N, H), h_T, c_T)."""
    w_x, b, *rest = (np.asarray(p, np.float64) for p in params)
    w_s, w_h = (rest[0], rest[1]) if x_static is not None else (None, rest[0])
    t_len, n = x.shape[:2]
    hd = w_h.shape[1]
    pre = np.asarray(x, np.float64).reshape(t_len, n, -1) @ w_x.T + b
    if w_s is not None:
        pre = pre + np.asarray(x_static, np.float64).reshape(n, -1) @ w_s.T
    h = np.zeros((n, hd)) if h0 is None else np.asarray(h0, np.float64).reshape(n, hd)
    c = np.zeros((n, hd)) if c0 is None else np.asarray(c0, np.float64).reshape(n, hd)
    out = []
    for t in range(t_len):
        k = np.asarray(cont[t], np.float64)[:, None]
        g = pre[t] + (k * h) @ w_h.T
        i, f, o, gg = _sig(g[:, :hd]), _sig(g[:, hd : 2 * hd]), _sig(g[:, 2 * hd : 3 * hd]), np.tanh(g[:, 3 * hd :])
        c = k * f * c + i * gg
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out), h, c


def rnn_ref(x, cont, params, x_static=None, h0=None):
    """float64 Caffe RNN: returns (o (T, N, H), h_T)."""
    w_x, b, *rest = (np.asarray(p, np.float64) for p in params)
    if x_static is not None:
        w_s, w_h, w_o, b_o = rest
    else:
        w_s, (w_h, w_o, b_o) = None, rest
    t_len, n = x.shape[:2]
    hd = w_h.shape[1]
    pre = np.asarray(x, np.float64).reshape(t_len, n, -1) @ w_x.T + b
    if w_s is not None:
        pre = pre + np.asarray(x_static, np.float64).reshape(n, -1) @ w_s.T
    h = np.zeros((n, hd)) if h0 is None else np.asarray(h0, np.float64).reshape(n, hd)
    out = []
    for t in range(t_len):
        h = np.tanh(pre[t] + (np.asarray(cont[t], np.float64)[:, None] * h) @ w_h.T)
        out.append(np.tanh(h @ w_o.T + b_o))
    return np.stack(out), h


def _layer(text: str) -> Layer:
    return create_layer(parse_text(f'name: "l" {text}', "LayerParameter"), "TRAIN", np.random.default_rng(0))


def _setup(text: str, xs: list[np.ndarray], tops: int) -> tuple[Layer, list[Blob], list[Blob]]:
    layer = _layer(text)
    bottom = []
    for i, x in enumerate(xs):
        b = Blob(f"b{i}", x.shape)
        b.data = x.copy()
        bottom.append(b)
    top = [Blob(f"t{i}") for i in range(tops)]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    for blob in layer.blobs:  # small random weights (fillers aside) so every gate is away from saturation
        blob.data[...] = _data(blob.shape, 100 + blob.data.size, 0.5)
    return layer, bottom, top


def _close(a: np.ndarray, ref: np.ndarray, rtol: float = 1e-5) -> None:
    err = np.abs(np.asarray(a, np.float64) - ref)
    assert np.all(err <= rtol * np.maximum(np.abs(ref), 1.0)), float(np.max(err))


def test_lstm_unit_forward_backward() -> None:
    n, hd = 3, 4
    c_prev, gates = _data((1, n, hd), 1), _data((1, n, 4 * hd), 2)
    cont = np.array([[1, 0, 1]], np.float32)
    layer, bottom, top = _setup('type: "LSTMUnit"', [c_prev, gates, cont], 2)
    layer.forward(bottom, top)
    from kernels.recurrent import lstm_unit_forward_ref

    c_ref, h_ref = lstm_unit_forward_ref(gates[0], c_prev[0], cont[0])
    _close(top[0].data[0], c_ref)
    _close(top[1].data[0], h_ref)
    dc, dh = _data((1, n, hd), 3), _data((1, n, hd), 4)
    top[0].diff, top[1].diff = dc.copy(), dh.copy()
    layer.backward(top, [True, True, False], bottom)

    def loss(cp, g) -> float:
        c, h = lstm_unit_forward_ref(g, cp, cont[0])
        return float(np.sum(dc[0] * c) + np.sum(dh[0] * h))

    cp64, g64 = c_prev[0].astype(np.float64), gates[0].astype(np.float64)
    assert_grad_close(bottom[0].diff[0], numeric_grad(lambda v: loss(v, g64), cp64.copy()), atol=1e-5, rtol=1e-4)
    assert_grad_close(bottom[1].diff[0], numeric_grad(lambda v: loss(cp64, v), g64.copy()), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="LSTMUnit 'l': cannot propagate a gradient to the sequence indicators"):
        layer.backward(top, [True, True, True], bottom)


RECURRENT = [  # (type, static input, expose_hidden)
    ("LSTM", False, False),
    ("LSTM", True, True),
    ("RNN", False, False),
    ("RNN", True, True),
]


@pytest.mark.parametrize(("kind", "static", "expose"), RECURRENT)
def test_recurrent_forward_and_gradients(kind: str, static: bool, expose: bool) -> None:
    t_len, n, hd = 4, 2, 3
    x = _data((t_len, n, 2, 2), 5)
    cont = np.array([[0, 0], [1, 1], [1, 0], [1, 1]], np.float32)  # item 1 starts a new sequence at t = 2
    xs = [x, cont]
    if static:
        xs.append(_data((n, 3), 6))
    states = [_data((1, n, hd), 7 + i, 0.5) for i in range(2 if kind == "LSTM" else 1)] if expose else []
    xs += states
    if expose:
        cont[0] = 1  # keep the exposed initial state
    text = f'type: "{kind}" recurrent_param {{ num_output: {hd} expose_hidden: {str(expose).lower()} }}'
    layer, bottom, top = _setup(text, xs, 1 + len(states))
    layer.forward(bottom, top)
    x_static = xs[2] if static else None

    def ref(xv, params, xsv):
        if kind == "LSTM":
            h, h_t, c_t = lstm_ref(xv, cont, params, xsv, *states)
            return h, [h_t, c_t]
        o, h_t = rnn_ref(xv, cont, params, xsv, *states)
        return o, [h_t]

    params = [b.data.astype(np.float64) for b in layer.blobs]
    want, finals = ref(x, params, x_static)
    _close(top[0].data, want)
    if expose:
        for tp, f in zip(top[1:], finals):
            _close(tp.data[0], f)
    dy = _data(top[0].shape, 9)
    top[0].diff = dy.copy()
    for b in layer.blobs:
        b.diff[...] = 0.0
    layer.backward(top, [True, False] + [True] * (len(bottom) - 2), bottom)

    def loss(xv=x, ps=params, xsv=x_static) -> float:
        return float(np.sum(dy * ref(xv, ps, xsv)[0]))

    x64 = x.astype(np.float64)
    assert_grad_close(bottom[0].diff, numeric_grad(lambda v: loss(xv=v), x64.copy()), atol=1e-5, rtol=1e-4, what="dx")
    for i, p in enumerate(params):
        num = numeric_grad(lambda v, i=i: loss(ps=[*params[:i], v, *params[i + 1 :]]), p.copy())
        assert_grad_close(layer.blobs[i].diff, num, atol=1e-5, rtol=1e-4, what=f"blob {i}")
    if static:
        xs64 = x_static.astype(np.float64)
        num = numeric_grad(lambda v: loss(xsv=v), xs64.copy())
        assert_grad_close(bottom[2].diff, num, atol=1e-5, rtol=1e-4, what="dx_static")
    for b in bottom[2 + static :]:
        assert not b.diff.any()  # Caffe: no gradient to the exposed initial state
    bottom[1].diff[...] = 5.0
    layer.backward(top, [False, True] + [False] * (len(bottom) - 2), bottom)
    assert not bottom[1].diff.any()  # cont gets no gradient (as in Caffe's unrolled net)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_state_carries_over_between_forwards(kind: str) -> None:
    """Without expose_hidden the next forward starts from the last h_T (and c_T): two halves equal the whole."""
    x = _data((6, 2, 3), 10)
    cont = np.ones((6, 2), np.float32)
    cont[0] = 0
    text = f'type: "{kind}" recurrent_param {{ num_output: 4 }}'
    whole, bw, tw = _setup(text, [x, cont], 1)
    whole.forward(bw, tw)
    half, bh, th = _setup(text, [x[:3], cont[:3]], 1)
    half.forward(bh, th)
    first = th[0].data.copy()
    bh[0].data, bh[1].data = x[3:].copy(), cont[3:].copy()
    half.forward(bh, th)
    _close(np.concatenate([first, th[0].data]), tw[0].data.astype(np.float64), 1e-6)


def test_lstm_and_rnn_against_pytorch() -> None:
    torch = pytest.importorskip("torch")
    t_len, n, d, hd = 5, 3, 4, 6
    x = _data((t_len, n, d), 11)
    cont = np.ones((t_len, n), np.float32)
    h0, c0 = _data((1, n, hd), 12, 0.5), _data((1, n, hd), 13, 0.5)
    text = f'type: "LSTM" recurrent_param {{ num_output: {hd} expose_hidden: true }}'
    layer, bottom, top = _setup(text, [x, cont, h0, c0], 3)
    layer.forward(bottom, top)
    w_x, b, w_h = (blob.data for blob in layer.blobs)
    order = np.r_[0:hd, hd : 2 * hd, 3 * hd : 4 * hd, 2 * hd : 3 * hd]  # Caffe i f o g -> PyTorch i f g o
    lstm = torch.nn.LSTM(d, hd).double()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(w_x[order].astype(np.float64)))
        lstm.weight_hh_l0.copy_(torch.from_numpy(w_h[order].astype(np.float64)))
        lstm.bias_ih_l0.copy_(torch.from_numpy(b[order].astype(np.float64)))
        lstm.bias_hh_l0.zero_()
        out, (h_t, c_t) = lstm(torch.from_numpy(x.astype(np.float64)), (torch.from_numpy(h0.astype(np.float64)),
                                                                       torch.from_numpy(c0.astype(np.float64))))  # fmt: skip
    _close(top[0].data, out.numpy())
    _close(top[1].data, h_t.numpy())
    _close(top[2].data, c_t.numpy())

    layer, bottom, top = _setup(f'type: "RNN" recurrent_param {{ num_output: {hd} }}', [x, cont], 1)
    layer.forward(bottom, top)
    w_x, b, w_h, w_o, b_o = (blob.data.astype(np.float64) for blob in layer.blobs)
    rnn = torch.nn.RNN(d, hd).double()
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.from_numpy(w_x))
        rnn.weight_hh_l0.copy_(torch.from_numpy(w_h))
        rnn.bias_ih_l0.copy_(torch.from_numpy(b))
        rnn.bias_hh_l0.zero_()
        hs, _ = rnn(torch.from_numpy(x.astype(np.float64)))
        o = torch.tanh(hs @ torch.from_numpy(w_o).T + torch.from_numpy(b_o))
    _close(top[0].data, o.numpy())


def test_lstm_in_a_net_and_errors() -> None:
    base = """name: "r"
layer { name: "in" type: "Input" top: "x" top: "cont" input_param { shape { dim: 4 dim: 2 dim: 5 } shape { dim: 4 dim: 2 } } }
"""
    net = Net.from_string(
        base
        + 'layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h" '
        + 'recurrent_param { num_output: 3 weight_filler { type: "uniform" min: -0.1 max: 0.1 } debug_info: true } }'
    )
    assert [tuple(b.shape) for b in net.layers[-1].blobs] == [(12, 5), (12,), (12, 3)]
    x = _data((4, 2, 5), 14)
    cont = np.array([[0, 0], [1, 1], [1, 1], [1, 1]], np.float32)
    out = net.forward(x=x, cont=cont)["h"]
    _close(out, lstm_ref(x, cont, [b.data for b in net.layers[-1].blobs])[0])
    for spec, match in [
        ('type: "LSTM" bottom: "x" bottom: "cont" top: "h" recurrent_param { }', "num_output must be given"),
        ('type: "RNN" bottom: "x" bottom: "x" top: "h" recurrent_param { num_output: 2 }', r"cont\) must be \(T, N\)"),
        (
            'type: "LSTM" bottom: "x" bottom: "cont" top: "h" top: "hT" recurrent_param { num_output: 2 }',
            "expected bottoms x, cont, \\[x_static\\] and 1 top",
        ),
    ]:
        with pytest.raises(NetError, match=match):
            Net.from_string(base + f'layer {{ name: "bad" {spec} }}')
