"""Layer coverage for Model Zoo ports (issue 17), element-wise family (net/layers/activation_extra.py): each layer's
forward and backward against the kernels' float64 references (whose gradients tests/kernels/test_unary_extra.py
checks by central differences), in place and not, and a whole net against OpenCV DNN on the same prototxt +
caffemodel where OpenCV imports the type.

Tolerances: layer vs reference forward <= 2e-6 * max(|ref|, 1), backward <= 3e-6 * max(|ref|, 1); OpenCV: every blob
within 1e-5 * max(|ref|, 1) (float32 transcendental functions computed two ways)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import unary
from net import Net
from net.blob import Blob
from net.layers import Layer, create_layer
from net.prototxt_loader import parse_text

cv2 = pytest.importorskip("cv2")


def _layer(text: str, phase: str = "TRAIN") -> Layer:
    return create_layer(parse_text(f'name: "l" {text}', "LayerParameter"), phase, np.random.default_rng(0))


def _data(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _run(layer: Layer, x: np.ndarray, in_place: bool) -> tuple[Blob, Blob]:
    bottom = Blob("b", x.shape)
    bottom.data = x.copy()
    top = bottom if in_place else Blob("t")
    layer.setup([bottom], [top])
    layer.reshape([bottom], [top])
    layer.forward([bottom], [top])
    return bottom, top


def _close(a: np.ndarray, ref: np.ndarray, rtol: float) -> None:
    err = np.abs(a.astype(np.float64) - ref)
    assert a.dtype == np.float32 and np.all(err <= rtol * np.maximum(np.abs(ref), 1.0)), float(np.max(err))


# prototxt of the layer, forward ref, backward ref (dy, x) -> dx, its OpenCV-importable flag
UNARY = {
    "ELU": (
        "elu_param { alpha: 0.5 }",
        lambda x: unary.elu_forward_ref(x, 0.5),
        lambda g, x: unary.elu_backward_ref(g, x, 0.5),
        True,
    ),
    "Power": (
        "power_param { power: 2 scale: 0.5 shift: 1 }",
        lambda x: unary.power_forward_ref(x, 2, 0.5, 1),
        lambda g, x: unary.power_backward_ref(g, x, 2, 0.5, 1),
        True,
    ),
    "Exp": (
        "exp_param { base: 2 scale: 0.5 shift: 1 }",
        lambda x: unary.exp_forward_ref(x, 2, 0.5, 1),
        lambda g, x: unary.exp_backward_ref(g, x, 2, 0.5, 1),
        True,
    ),
    "Log": (
        "log_param { base: 10 scale: 0.5 shift: 20 }",
        lambda x: unary.log_forward_ref(x, 10, 0.5, 20),
        lambda g, x: unary.log_backward_ref(g, x, 10, 0.5, 20),
        False,  # OpenCV 4.x reads no log_param (natural log only): checked below with the defaults
    ),
    "AbsVal": ("", unary.absval_forward_ref, unary.absval_backward_ref, True),
    "BNLL": ("", unary.bnll_forward_ref, unary.bnll_backward_ref, True),
    "Swish": (
        "swish_param { beta: 1.5 }",
        lambda x: unary.swish_forward_ref(x, 1.5),
        lambda g, x: unary.swish_backward_ref(g, x, 1.5),
        False,
    ),
    "Threshold": ("threshold_param { threshold: 0.3 }", lambda x: unary.threshold_forward_ref(x, 0.3), None, False),
}


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("kind", sorted(UNARY))
def test_unary_layer_forward_backward(kind: str, in_place: bool) -> None:
    spec, fref, bref, _ = UNARY[kind]
    layer = _layer(f'type: "{kind}" {spec}')
    x = _data((2, 3, 4, 5), 1)
    bottom, top = _run(layer, x, in_place)
    _close(top.data, fref(x), 2e-6)
    top.diff = dy = _data(x.shape, 2)
    dy = dy.copy()
    if bref is None:
        with pytest.raises(ValueError, match="no backward"):
            layer.backward([top], [True], [bottom])
        return
    layer.backward([top], [True], [bottom])
    _close(bottom.diff, bref(dy, x), 3e-6)


def test_in_place_test_phase_forward_then_backward_is_refused() -> None:
    layer = _layer('type: "AbsVal"', phase="TEST")
    bottom, top = _run(layer, _data((2, 3), 1), in_place=True)
    top.diff = _data((2, 3), 2)
    with pytest.raises(ValueError, match="overwrote the input"):
        layer.backward([top], [True], [bottom])


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("in_place", [False, True])
def test_prelu_layer(shared: bool, in_place: bool) -> None:
    flag = "true" if shared else "false"
    layer = _layer(f'type: "PReLU" prelu_param {{ channel_shared: {flag} }}')
    x = _data((2, 3, 4, 5), 3)
    bottom, top = _run(layer, x, in_place)
    slope = layer.blobs[0].data
    assert slope.shape == (() if shared else (3,)) and np.all(slope == np.float32(0.25))  # Caffe's default filler
    _close(top.data, unary.prelu_forward_ref(x, slope), 1e-7)
    top.diff = dy = _data(x.shape, 4)
    dy = dy.copy()
    layer.blobs[0].diff[...] = 1.0
    layer.backward([top], [True], [bottom])
    rdx, rda = unary.prelu_backward_ref(dy, x, slope)
    _close(bottom.diff, rdx, 1e-7)
    assert np.allclose(layer.blobs[0].diff.reshape(-1), 1.0 + rda, rtol=1e-6, atol=1e-6)


def test_bad_parameters_name_the_layer() -> None:
    for text, match in [
        ('type: "Exp" exp_param { base: -3 }', "Exp 'l': exp_param: .*base"),
        ('type: "Log" log_param { base: 1 }', "Log 'l': log_param: .*base"),
        ('type: "ELU" elu_param { alpha: -1 }', "ELU 'l': elu_param.alpha"),
    ]:
        with pytest.raises(ValueError, match=match):
            _run(_layer(text), _data((1, 2), 0), False)
    with pytest.raises(ValueError, match="PReLU 'l': expected an input of at least 2 axes"):
        _run(_layer('type: "PReLU"'), _data((4,), 0), False)


# -- whole nets against OpenCV DNN --------------------------------------------------------------------
def _conv_net(body: str, channels: int = 4) -> str:
    """Input (2, 3, 8, 8) -> a 3x3 convolution (random weights) -> the layers in `body` (bottom "conv")."""
    return f"""name: "zoo"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 dim: 8 dim: 8 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: {channels} kernel_size: 3 pad: 1 }} }}
{body}
"""


def _opencv_check(tmp_path, text: str, outputs: list[str], seed: int = 0, rtol: float = 1e-5) -> dict:
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    net = Net.load(proto)
    rng = np.random.default_rng(seed)
    for name in net.params:
        for p in net.params[name]:
            p[...] = rng.normal(0.0, 0.5, size=p.shape)
    weights = tmp_path / "net.caffemodel"
    net.save(weights)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    net.forward(data=x)
    ref = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    ref.setInput(x)
    got = dict(zip(outputs, ref.forward(outputs)))
    for name in outputs:
        a, b = net.blobs[name], got[name]
        assert a.shape == b.shape, (name, a.shape, b.shape)
        err = np.abs(a.astype(np.float64) - b)
        assert np.all(err <= rtol * np.maximum(np.abs(b), 1.0)), (name, float(np.max(err)))
    return got


def test_elementwise_layers_match_opencv(tmp_path) -> None:
    kinds = [k for k in sorted(UNARY) if UNARY[k][3]]
    body = "\n".join(
        f'layer {{ name: "{k.lower()}" type: "{k}" bottom: "conv" top: "{k.lower()}" {UNARY[k][0]} }}' for k in kinds
    )
    body += '\nlayer { name: "prelu" type: "PReLU" bottom: "conv" top: "prelu" }'
    body += '\nlayer { name: "swish" type: "Swish" bottom: "conv" top: "swish" }'
    body += '\nlayer { name: "log" type: "Log" bottom: "absval" top: "log" }'
    body += '\nlayer { name: "sigmoid" type: "Sigmoid" bottom: "conv" top: "sigmoid" }'
    body += '\nlayer { name: "tanh" type: "TanH" bottom: "conv" top: "tanh" }'
    extra = ["prelu", "swish", "log", "sigmoid", "tanh"]
    _opencv_check(tmp_path, _conv_net(body), [k.lower() for k in kinds] + extra)


def test_shared_prelu_saves_and_loads_its_0d_slope(tmp_path) -> None:
    """Caffe stores a channel_shared slope as a 0-d blob (OpenCV 4.x cannot read one: no OpenCV check here)."""
    body = 'layer { name: "prelu" type: "PReLU" bottom: "conv" top: "prelu" prelu_param { channel_shared: true } }'
    proto = tmp_path / "net.prototxt"
    proto.write_text(_conv_net(body))
    net = Net.load(proto)
    net.params["prelu"][0][...] = -0.5
    net.save(tmp_path / "w.caffemodel")
    again = Net.load(proto, tmp_path / "w.caffemodel")
    assert again.params["prelu"][0].shape == () and float(again.params["prelu"][0]) == -0.5
    x = _data((2, 3, 8, 8), 5)
    np.testing.assert_array_equal(net.forward(data=x)["prelu"], again.forward(data=x)["prelu"])


def test_plan_steps_give_the_forward_functions_bits() -> None:
    """A TEST net's plan runs the element-wise layers through kernels.unary.unary_runner (in place and not): the same
    bits as the layer's own forward (the *_forward functions), on the first forward and on later ones."""
    body = []
    prev = "conv"
    for i, kind in enumerate(sorted(UNARY)):
        top = prev if i % 2 else f"u{i}"  # every other layer in place
        body.append(f'layer {{ name: "u{i}" type: "{kind}" bottom: "{prev}" top: "{top}" {UNARY[kind][0]} }}')
        body.append(f'layer {{ name: "s{i}" type: "TanH" bottom: "{top}" top: "s{i}" }}')  # keep values in range
        prev = f"s{i}"
    body.append(f'layer {{ name: "p" type: "PReLU" bottom: "{prev}" top: "{prev}" }}')
    net = Net.from_string(_conv_net("\n".join(body)))
    rng = np.random.default_rng(0)
    for name in net.params:
        for p in net.params[name]:
            p[...] = rng.normal(0.0, 0.5, size=p.shape)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    first = {k: v.copy() for k, v in net.forward(data=x).items()}
    assert all(
        layer.plan(b, t) is not None for layer, b, t in zip(net.layers, net.bottoms, net.tops) if layer.type in UNARY
    )
    again = net.forward(data=x)
    # the same net, every layer's own forward (no plan)
    ref = Net.from_string(_conv_net("\n".join(body)))
    ref.copy_from(net.to_proto())
    ref.set_input("data", x)
    for layer, bottom, top in zip(ref.layers, ref.bottoms, ref.tops):
        layer.forward(bottom, top)
    for name, value in first.items():
        np.testing.assert_array_equal(value, ref.blobs[name])
        np.testing.assert_array_equal(again[name], ref.blobs[name])
