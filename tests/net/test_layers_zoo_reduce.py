"""Layer coverage for Model Zoo ports (issue 17): Reduction, ArgMax, Normalize, MVN, Embed, Parameter.

Forward against NumPy float64 expressions (within 1e-6 * max(|ref|, 1); ArgMax exact); backward against float64
central differences of those expressions (tests/gradcheck.py, h = 1e-6) within 2e-5 * max(|num|, 1) (the layers
compute in float32 or round a float64 result once); OpenCV DNN for Normalize and MVN (within 1e-5 * max(|ref|, 1))."""

from __future__ import annotations

import numpy as np
import pytest

from net import Net, NetError
from net.blob import Blob
from net.layers import Layer, create_layer
from net.prototxt_loader import parse_text
from tests.gradcheck import numeric_grad

cv2 = pytest.importorskip("cv2")


def _layer(text: str) -> Layer:
    return create_layer(parse_text(f'name: "l" {text}', "LayerParameter"), "TRAIN", np.random.default_rng(0))


def _data(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _run(layer: Layer, xs: list[np.ndarray]) -> tuple[list[Blob], list[Blob]]:
    bottom = []
    for i, x in enumerate(xs):
        b = Blob(f"b{i}", x.shape)
        b.data = x.copy()
        bottom.append(b)
    top = [Blob("t")]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return bottom, top


def _close(a: np.ndarray, ref: np.ndarray, rtol: float) -> None:
    err = np.abs(np.asarray(a, np.float64) - ref)
    assert np.all(err <= rtol * np.maximum(np.abs(ref), 1.0)), float(np.max(err))


def _check(text: str, x: np.ndarray, ref, param_ref=None) -> Layer:
    """Forward vs ref(x); backward vs central differences of sum(dy * ref(x)) (and of the parameter, if given)."""
    layer = _layer(text)
    bottom, top = _run(layer, [x])
    _close(top[0].data, ref(x.astype(np.float64), layer), 1e-6)
    dy = _data(top[0].shape, 9).astype(np.float64)
    top[0].diff = dy.astype(np.float32)
    for b in layer.blobs:
        b.diff[...] = 0
    layer.backward(top, [True], bottom)
    num = numeric_grad(lambda v: float(np.sum(dy * ref(v, layer))), x.astype(np.float64))
    _close(bottom[0].diff, num, 2e-5)
    if param_ref is not None:
        p0 = layer.blobs[0].data.astype(np.float64)
        num_p = numeric_grad(lambda p: float(np.sum(dy * param_ref(x.astype(np.float64), p))), p0.copy())
        _close(layer.blobs[0].diff, num_p, 2e-5)
    return layer


@pytest.mark.parametrize(
    ("op", "f"),
    [
        ("SUM", lambda v: v.sum(axis=1)),
        ("ASUM", lambda v: np.abs(v).sum(axis=1)),
        ("SUMSQ", lambda v: (v * v).sum(axis=1)),
        ("MEAN", lambda v: v.mean(axis=1)),
    ],
)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_reduction(op: str, f, axis: int) -> None:
    x = _data((2, 3, 4), 1)
    lead = x.shape[: axis % 3]

    def ref(v, _layer):
        return 0.5 * f(v.reshape(int(np.prod(lead)), -1)).reshape(lead)

    layer = _check(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: 0.5 }}', x, ref)
    assert layer.view[0] == int(np.prod(lead))


def test_reduction_default_is_a_scalar_sum() -> None:
    layer = _layer('type: "Reduction"')
    _, top = _run(layer, [_data((2, 3), 2)])
    assert top[0].shape == ()


@pytest.mark.parametrize(
    ("spec", "shape", "want"),
    [
        ("argmax_param { }", (2, 1, 1), [[[3]], [[2]]]),
        ("argmax_param { top_k: 2 out_max_val: true }", (2, 2, 2), [[[3, 2], [5, 4]], [[2, 1], [9, 9]]]),
        ("argmax_param { axis: 1 top_k: 2 }", (2, 2), [[3, 2], [2, 1]]),
        ("argmax_param { axis: 1 out_max_val: true }", (2, 1), [[5], [9]]),
    ],
)
def test_argmax(spec: str, shape: tuple, want: list) -> None:
    x = np.float32([[1, 0, 4, 5], [2, 9, 9, 3]])  # a tie (9, 9): the larger index wins, as std::greater on pairs
    x[0, 2] = 4
    _, top = _run(_layer(f'type: "ArgMax" {spec}'), [x])
    assert top[0].shape == shape
    np.testing.assert_array_equal(top[0].data, np.float32(want).reshape(shape))


def test_argmax_4d_without_axis_keeps_four_axes() -> None:
    x = _data((2, 3, 2, 2), 3)
    _, top = _run(_layer('type: "ArgMax" argmax_param { top_k: 3 }'), [x])
    assert top[0].shape == (2, 1, 3, 1)
    np.testing.assert_array_equal(top[0].data.reshape(2, 3), np.argsort(-x.reshape(2, -1), axis=1)[:, :3])


def _normalize_ref(across: bool):
    def f(v, p):
        axes = (1, 2, 3) if across else (1,)
        n = np.sqrt((v * v).sum(axis=axes, keepdims=True) + 1e-10)
        return v / n * (p.reshape(()) if p.ndim == 0 else p.reshape(1, -1, 1, 1))

    return f


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_normalize(across: bool, shared: bool) -> None:
    x = _data((2, 3, 4, 2), 4)
    f = _normalize_ref(across)
    filler = 'type: "constant" value: 2.5' if shared else 'type: "gaussian" std: 2'
    spec = (
        f"norm_param {{ across_spatial: {str(across).lower()} channel_shared: {str(shared).lower()} "
        f"scale_filler {{ {filler} }} }}"
    )
    layer = _check(
        f'type: "Normalize" {spec}', x, lambda v, lay: f(v, lay.blobs[0].data.astype(np.float64)), lambda v, p: f(v, p)
    )
    assert layer.blobs[0].shape == (() if shared else (3,))


@pytest.mark.parametrize("variance", [True, False])
@pytest.mark.parametrize("across", [True, False])
def test_mvn(variance: bool, across: bool) -> None:
    x = _data((2, 3, 4, 3), 5) * 3 + 1

    def ref(v, _layer):
        g = v.reshape(2, -1) if across else v.reshape(6, -1)
        d = g - g.mean(axis=1, keepdims=True)
        if variance:
            d = d / (np.sqrt((d * d).mean(axis=1, keepdims=True)) + 1e-9)
        return d.reshape(v.shape)

    spec = f"mvn_param {{ normalize_variance: {str(variance).lower()} across_channels: {str(across).lower()} }}"
    _check(f'type: "MVN" {spec}', x, ref)


def test_embed() -> None:
    layer = _layer('type: "Embed" embed_param { num_output: 3 input_dim: 5 weight_filler { type: "gaussian" } }')
    idx = np.float32([[0, 4], [2, 2]])
    bottom, top = _run(layer, [idx])
    w, b = layer.blobs[0].data, layer.blobs[1].data
    b[...] = [0.5, -1, 2]
    layer.forward(bottom, top)
    assert top[0].shape == (2, 2, 3)
    np.testing.assert_array_equal(top[0].data, w[idx.astype(int)] + b)
    dy = _data((2, 2, 3), 6)
    top[0].diff = dy.copy()
    layer.backward(top, [False], bottom)
    want = np.zeros((5, 3))
    for (i, j), k in np.ndenumerate(idx.astype(int)):
        want[k] += dy[i, j]
    _close(layer.blobs[0].diff, want, 1e-6)
    _close(layer.blobs[1].diff, dy.reshape(-1, 3).sum(axis=0), 1e-6)
    with pytest.raises(ValueError, match="Embed 'l': cannot propagate a gradient to the indices"):
        layer.backward(top, [True], bottom)
    for bad in (5.0, -1.0, 1.5):
        bottom[0].data = np.float32([[bad]])
        with pytest.raises(ValueError, match=f"input value {bad} is not a row index of the 5-row table"):
            layer.forward(bottom, top)


def test_parameter_layer_shares_its_blob() -> None:
    net = Net.from_string(
        'name: "p" layer { name: "w" type: "Parameter" top: "w" parameter_param { shape { dim: 2 dim: 3 } } }'
    )
    net.params["w"][0][...] = 7
    assert np.all(net.forward()["w"] == 7)


def test_reduction_and_argmax_errors_name_the_layer() -> None:
    base = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }\n'
    for layer, match in [
        ('type: "Reduction" reduction_param { axis: 3 }', "Reduction 'x': reduction_param.axis 3 is out of range"),
        ('type: "ArgMax" argmax_param { top_k: 5 }', "ArgMax 'x': argmax_param.top_k 5 is larger than the 4"),
        ('type: "Embed" embed_param { num_output: 3 }', "Embed 'x': embed_param.num_output and embed_param.input_dim"),
    ]:
        with pytest.raises(NetError, match=match):
            Net.from_string(base + f'layer {{ name: "x" {layer} bottom: "data" top: "x" }}')


def test_normalize_and_mvn_match_opencv(tmp_path) -> None:
    """OpenCV 4.x reads no 0-d blob (a shared scale) and no per-channel scale across spatial positions: the
    per-position, per-channel Normalize is the one it can check."""
    text = """name: "n"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 4 } } }
layer { name: "norm" type: "Normalize" bottom: "data" top: "norm" norm_param { across_spatial: false channel_shared: false } }
layer { name: "mvn" type: "MVN" bottom: "data" top: "mvn" }
layer { name: "mvn2" type: "MVN" bottom: "data" top: "mvn2" mvn_param { across_channels: true normalize_variance: false } }
"""
    proto = tmp_path / "n.prototxt"
    proto.write_text(text)
    net = Net.load(proto)
    net.params["norm"][0][...] = [1.5, -2.0, 3.0]
    net.save(tmp_path / "n.caffemodel")
    x = _data((2, 3, 5, 4), 7) * 2 + 0.5
    net.forward(data=x)
    ref = cv2.dnn.readNetFromCaffe(str(proto), str(tmp_path / "n.caffemodel"))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    ref.setInput(x)
    names = ["norm", "mvn", "mvn2"]
    for name, got in zip(names, ref.forward(names)):
        _close(net.blobs[name], got.astype(np.float64), 1e-5)


def test_dummy_data() -> None:
    text = """name: "d"
layer { name: "d" type: "DummyData" top: "a" top: "b"
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 }
                     data_filler { type: "constant" value: 1.5 } data_filler { type: "gaussian" std: 2 } } }
layer { name: "l" type: "DummyData" top: "c" dummy_data_param { num: 1 channels: 2 height: 3 width: 4 } }
"""
    net = Net.from_string(text, seed=0)
    first = {k: v.copy() for k, v in net.forward().items()}
    second = net.forward()
    assert first["a"].shape == (2, 3) and np.all(first["a"] == 1.5) and np.all(second["a"] == 1.5)
    assert first["b"].shape == (4,) and not np.array_equal(first["b"], second["b"])  # refilled every forward
    assert first["c"].shape == (1, 2, 3, 4) and np.all(first["c"] == 0)  # no filler: constant 0
    for spec, match in [
        ("shape { dim: 2 } num: 1", "give either shape or num"),
        ("shape { dim: 2 } shape { dim: 2 } shape { dim: 2 }", "dummy_data_param.shape given 3 times for 2 tops"),
        ("shape { dim: 2 } data_filler { } data_filler { } data_filler { }", "3 data_filler for 2 tops"),
    ]:
        bad = f'name: "d" layer {{ name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param {{ {spec} }} }}'
        with pytest.raises(NetError, match=f"DummyData 'd': {match}"):
            Net.from_string(bad)
