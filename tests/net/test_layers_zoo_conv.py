"""Layer coverage for Model Zoo ports (issue 17), convolution and pooling parameters: Deconvolution (forward, backward,
OpenCV DNN), Convolution/Pooling with kernel_h/kernel_w, pad_h/pad_w, stride_h/stride_w, dilation, global pooling,
round_mode, STOCHASTIC pooling at TEST, and the parameter errors.

Tolerances: Deconvolution forward and dx against the float64 convolution references within 1e-5 * max(|ref|, 1);
dw, db (sums over N * H * W) within 1e-5 relative; OpenCV blobs within 1e-5 * max(|ref|, 1)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.conv import conv2d_backward_ref, conv2d_forward_ref
from net import Net, NetError
from net.blob import Blob
from net.layers import Layer, create_layer
from net.prototxt_loader import parse_text
from tests.gradcheck import numeric_grad

cv2 = pytest.importorskip("cv2")


def _layer(text: str, phase: str = "TRAIN") -> Layer:
    return create_layer(parse_text(f'name: "l" {text}', "LayerParameter"), phase, np.random.default_rng(0))


def _data(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _close(a: np.ndarray, ref: np.ndarray, rtol: float = 1e-5) -> None:
    err = np.abs(np.asarray(a, np.float64) - ref)
    assert np.all(err <= rtol * np.maximum(np.abs(ref), 1.0)), float(np.max(err))


DECONVS = [
    ("num_output: 4 kernel_size: 3", {}),
    ("num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2", {"stride": (2, 2), "pad": (1, 1), "group": 2}),
    (
        "num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0 dilation: 2 bias_term: false",
        {"stride": (2, 3), "pad": (1, 0), "dilation": (2, 2)},
    ),
]


@pytest.mark.parametrize(("spec", "geom"), DECONVS)
def test_deconvolution_forward_backward(spec: str, geom: dict) -> None:
    layer = _layer(f'type: "Deconvolution" convolution_param {{ {spec} weight_filler {{ type: "gaussian" }} }}')
    x = _data((2, 4, 5, 4), 1)
    bottom, top = Blob("b", x.shape), Blob("t")
    bottom.data = x.copy()
    layer.setup([bottom], [top])
    layer.reshape([bottom], [top])
    layer.forward([bottom], [top])
    w = layer.blobs[0].data
    bias = layer.blobs[1].data if len(layer.blobs) > 1 else None
    if bias is not None:
        bias[...] = _data(bias.shape, 3)
        layer.forward([bottom], [top])
    kw = {"stride": (1, 1), "pad": (0, 0), "dilation": (1, 1), "group": 1, **geom}
    # the deconvolution is the convolution's data gradient: a convolution input of the top's shape
    conv_in = np.zeros(top.shape)
    ref_y = conv2d_backward_ref(x, conv_in, w, **kw, bias=False)[0]
    if bias is not None:
        ref_y = ref_y + bias.reshape(1, -1, 1, 1)
    assert top.shape[1] == w.shape[1] * kw["group"]
    _close(top.data, ref_y)
    # backward: dx = conv(dy), dw from the convolution's weight gradient with roles swapped, db = sum of dy
    dy = _data(top.shape, 4)
    top.diff = dy.copy()
    for blob in layer.blobs:
        blob.diff[...] = 0.5
    layer.backward([top], [True], [bottom])
    _close(bottom.diff, conv2d_forward_ref(dy, w, None, **kw))
    ref_dw = conv2d_backward_ref(x, dy, w, **kw, bias=False)[1]
    assert np.allclose(layer.blobs[0].diff, 0.5 + ref_dw, rtol=1e-5, atol=1e-5)
    # dw independently: float64 central differences of sum(dy * deconv(x; w)) with the reference forward above
    dy64 = dy.astype(np.float64)
    num_dw = numeric_grad(
        lambda v: float(np.sum(dy64 * conv2d_backward_ref(x, conv_in, v, **kw, bias=False)[0])), w.astype(np.float64)
    )
    _close(layer.blobs[0].diff - np.float32(0.5), num_dw, 1e-5)
    if bias is not None:
        assert np.allclose(layer.blobs[1].diff, 0.5 + dy.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    # the adjoint identity <dy, deconv(x)> = <conv(dy), x> (without bias): the forward and dx are one linear map
    y_nobias = ref_y - (bias.reshape(1, -1, 1, 1) if bias is not None else 0)
    assert np.isclose(np.sum(dy * y_nobias), np.sum(bottom.diff.astype(np.float64) * x), rtol=1e-5)


def _random_net(tmp_path, text: str, x_shape: tuple[int, ...], outputs: list[str], seed: int = 0):
    proto = tmp_path / "n.prototxt"
    proto.write_text(text)
    net = Net.load(proto)
    rng = np.random.default_rng(seed)
    for name in net.params:
        for p in net.params[name]:
            p[...] = rng.normal(0.0, 0.5, size=p.shape)
    weights = tmp_path / "n.caffemodel"
    net.save(weights)
    x = rng.standard_normal(x_shape).astype(np.float32)
    net.forward(data=x)
    ref = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    ref.setInput(x)
    for name, got in zip(outputs, ref.forward(outputs)):
        assert net.blobs[name].shape == got.shape, name
        _close(net.blobs[name], got.astype(np.float64))
    return net


def test_deconvolution_and_conv_parameters_match_opencv(tmp_path) -> None:
    """(OpenCV 4.x sizes a Deconvolution without its dilation, so the dilated one is checked against the references
    above only.)"""
    text = """name: "d"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 7 dim: 6 } } }
layer { name: "up" type: "Deconvolution" bottom: "data" top: "up"
  convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2 } }
layer { name: "up2" type: "Deconvolution" bottom: "data" top: "up2"
  convolution_param { num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 } }
layer { name: "conv" type: "Convolution" bottom: "up" top: "conv"
  convolution_param { num_output: 5 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 0 dilation: 2 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 1 } }
layer { name: "poolf" type: "Pooling" bottom: "conv" top: "poolf"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false } }  # OpenCV spells round_mode: FLOOR so
layer { name: "gap" type: "Pooling" bottom: "conv" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "gmp" type: "Pooling" bottom: "conv" top: "gmp" pooling_param { pool: MAX global_pooling: true } }
"""
    _random_net(tmp_path, text, (2, 4, 7, 6), ["up", "up2", "conv", "pool", "poolf", "gap", "gmp"])


# -- STOCHASTIC pooling at TEST: Caffe's weighted average sum(x^2) / sum(x) over windows without padding ------------
def _stochastic_ref(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    n, c, h, w = x.shape
    y = np.zeros((n, c, *out_hw))
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            win = x[:, :, i * s[0] : min(i * s[0] + k[0], h), j * s[1] : min(j * s[1] + k[1], w)].astype(np.float64)
            total = win.sum(axis=(2, 3))
            y[:, :, i, j] = np.where(total > 0, (win * win).sum(axis=(2, 3)) / np.where(total > 0, total, 1), 0)
    return y


@pytest.mark.parametrize(
    ("spec", "k", "s", "out_hw"),
    [
        ("kernel_size: 3 stride: 3", (3, 3), (3, 3), (3, 2)),  # CEIL: the last row of windows overhangs
        ("kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 round_mode: FLOOR", (2, 3), (1, 2), (6, 2)),
    ],
)
def test_stochastic_pooling_at_test(spec: str, k, s, out_hw) -> None:
    layer = _layer(f'type: "Pooling" pooling_param {{ pool: STOCHASTIC {spec} }}', phase="TEST")
    x = np.abs(_data((2, 3, 7, 6), 5))  # Caffe means it for non-negative inputs (after a ReLU)
    x[0, 0] *= -1  # a plane of negative sums: output 0
    bottom, top = Blob("b", x.shape), Blob("t")
    bottom.data = x.copy()
    layer.setup([bottom], [top])
    layer.reshape([bottom], [top])
    layer.forward([bottom], [top])
    assert top.shape == (2, 3, *out_hw)
    _close(top.data, _stochastic_ref(x, k, s, out_hw), 1e-6)


@pytest.mark.parametrize(
    ("text", "phase", "match"),
    [
        ("pooling_param { pool: STOCHASTIC kernel_size: 2 }", "TRAIN", "STOCHASTIC pooling at TRAIN"),
        ("pooling_param { pool: STOCHASTIC kernel_size: 3 pad: 1 }", "TEST", "padding"),
        ("pooling_param { pool: MAX kernel_size: 3 pad: 1 pad_h: 1 pad_w: 1 }", "TEST", "give pad or pad_h and pad_w"),
        ("pooling_param { pool: MAX kernel_size: 3 stride_h: 2 }", "TEST", "give stride or stride_h and stride_w"),
    ],
)
def test_pooling_parameter_errors(text: str, phase: str, match: str) -> None:
    layer = _layer(f'type: "Pooling" {text}', phase=phase)
    with pytest.raises(ValueError, match=match):
        layer.setup([Blob("b", (1, 2, 6, 6))], [Blob("t")])


def test_deconvolution_errors_name_the_layer() -> None:
    base = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 3 dim: 3 } } }\n'
    for spec, match in [
        ("num_output: 3 kernel_size: 3 group: 2", "group 2 must divide"),
        ("num_output: 4 kernel_size: 1 pad: 2", "empty output"),
        ("num_output: 4 kernel_size: 3 kernel_size: 3 kernel_size: 3", "1 or 2 values"),
    ]:
        text = (
            base
            + f'layer {{ name: "up" type: "Deconvolution" bottom: "data" top: "up" convolution_param {{ {spec} }} }}'
        )
        with pytest.raises(NetError, match=f"Deconvolution 'up': .*{match}"):
            Net.from_string(text)


ZOO_TRAIN = """
name: "zoo_train"
layer { name: "data" type: "Input" top: "data" top: "target"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 dim: 3 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prelu" type: "PReLU" bottom: "conv" top: "conv" }
layer { name: "up" type: "Deconvolution" bottom: "conv" top: "up"
        convolution_param { num_output: 6 kernel_size: 4 stride: 2 group: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop" crop_param { offset: 1 } }
layer { name: "shuffle" type: "ShuffleChannel" bottom: "crop" top: "shuffle" shuffle_channel_param { group: 3 } }
layer { name: "swish" type: "Swish" bottom: "shuffle" top: "swish" }
layer { name: "norm" type: "Normalize" bottom: "swish" top: "norm"
        norm_param { across_spatial: false channel_shared: false scale_filler { type: "constant" value: 2 } } }
layer { name: "sl" type: "Slice" bottom: "norm" top: "a" top: "b" slice_param { axis: 1 slice_point: 4 } }
layer { name: "ra" type: "Reduction" bottom: "a" top: "ra" reduction_param { axis: 2 operation: MEAN } }
layer { name: "rb" type: "Reduction" bottom: "b" top: "rb" reduction_param { axis: 2 operation: SUMSQ coeff: 0.1 } }
layer { name: "cat" type: "Concat" bottom: "ra" bottom: "rb" top: "cat" concat_param { axis: 1 } }
layer { name: "perm" type: "Permute" bottom: "cat" top: "perm" permute_param { order: 1 order: 0 } }
layer { name: "back" type: "Permute" bottom: "perm" top: "back" permute_param { order: 1 order: 0 } }
layer { name: "tile" type: "Tile" bottom: "target" top: "tiled" tile_param { axis: 1 tiles: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "back" bottom: "tiled" top: "loss" }
"""


def test_whole_train_net_through_the_new_layers_central_differences() -> None:
    """A TRAIN net chaining the new layers: every parameter's gradient (sampled coordinates) against central
    differences of the net's float32 loss (h = 1e-3). Tolerance 5e-3 * max(|a|, |n|) + 1e-3: looser than
    tests/net/test_net_backward.py's 2e-3 because this loss runs through 15 float32 layers (measured worst 3.6e-3
    relative, on the deconvolution weights, whose gradient the layer test above matches to 1e-5 in float64)."""
    from net.upgrade import upgrade_net

    net = Net(upgrade_net(parse_text(ZOO_TRAIN, "NetParameter")), phase="train", seed=0)
    rng = np.random.default_rng(1)
    net.set_input("data", rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    net.set_input("target", rng.standard_normal((2, 3)).astype(np.float32))
    net.clear_param_diffs()
    net.forward_loss()
    net.backward()
    checked = 0
    for name, j, blob, _, _ in net.learnable():
        analytic = blob.diff.copy().reshape(-1)
        at = rng.choice(blob.data.size, size=min(5, blob.data.size), replace=False)
        numeric = numeric_grad(lambda _: net.forward_loss(), blob.data, 1e-3, at=at).reshape(-1)
        for idx in at:
            a, n = float(analytic[idx]), float(numeric[idx])
            assert abs(a - n) <= 5e-3 * max(abs(a), abs(n)) + 1e-3, (name, j, idx, a, n)
            checked += 1
    assert checked >= 20 and {"conv", "prelu", "up", "norm"} <= {name for name, *_ in net.learnable()}


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize(("height", "hw"), [(1, (5, 6)), (3, (13, 11)), (2, (7, 7))])
def test_spp(method: str, height: int, hw: tuple[int, int]) -> None:
    """SPP against the pooling reference with Caffe's per-level kernel / stride / pad, and its backward against
    float64 central differences of that reference (within 1e-5 * max(|n|, 1))."""
    from kernels.pool import pool2d_forward_ref

    layer = _layer(f'type: "SPP" spp_param {{ pyramid_height: {height} pool: {method} }}')
    x = _data((2, 3, *hw), 8)
    bottom, top = Blob("b", x.shape), Blob("t")
    bottom.data = x.copy()
    layer.setup([bottom], [top])
    layer.reshape([bottom], [top])
    layer.forward([bottom], [top])

    def ref(v: np.ndarray) -> np.ndarray:
        parts = []
        for level in range(height):
            bins = 2**level
            k = tuple(-(-s // bins) for s in hw)
            pad = tuple((kk * bins - s + 1) // 2 for kk, s in zip(k, hw))
            y = pool2d_forward_ref(v, method=method, kernel=k, stride=k, pad=pad)
            assert y.shape[2:] == (bins, bins)
            parts.append(y)
        return parts[0] if height == 1 else np.concatenate([p.reshape(2, -1) for p in parts], axis=1)

    _close(top.data, ref(x.astype(np.float64)), 1e-6)
    dy = _data(top.shape, 9)
    top.diff = dy.copy()
    layer.backward([top], [True], [bottom])
    num = numeric_grad(lambda v: float(np.sum(dy.astype(np.float64) * ref(v))), x.astype(np.float64))
    _close(bottom.diff, num, 1e-5)
