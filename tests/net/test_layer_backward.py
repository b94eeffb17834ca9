"""Layer-level backward passes (Pooling, LRN, ReLU, Sigmoid, TanH, Dropout, Softmax, Concat, Eltwise, Flatten,
Reshape, Split, Scale, Bias) against the kernels' float64 references, including in-place layers (top is bottom),
propagate_down, parameter-gradient accumulation and `param_needs_grad`.

Tolerances (N(0, 1) data and top diffs): max abs error <= 1e-6 against the float64 reference, except LRN
(<= 2e-6 times the largest |dx|) and the Scale/Bias parameter sums (relative <= 1e-6). Exact where the layer does
one float32 operation per element (ReLU, Dropout, Concat, Flatten, Reshape, Scale dx)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.activations import (
    clip_backward_ref,
    clip_forward_ref,
    dropout_backward_ref,
    relu_backward_ref,
    sigmoid_backward_ref,
    softmax_backward_ref,
    tanh_backward_ref,
)
from kernels.elementwise import bias_backward_ref, eltwise_backward_ref, scale_backward_ref, split_backward_ref
from kernels.lrn import lrn_backward_ref
from kernels.pool import pool2d_backward_ref
from net.blob import Blob
from net.layers import Layer, create_layer
from net.prototxt_loader import parse_text
from tests.gradcheck import numeric_grad

ATOL = 1e-6


def _layer(text: str, phase: str = "TRAIN", seed: int = 0) -> Layer:
    return create_layer(parse_text(f'name: "l" {text}', "LayerParameter"), phase, np.random.default_rng(seed))


def _data(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _forward(layer: Layer, xs: list[np.ndarray], in_place: bool = False, tops: int = 1) -> tuple[list, list]:
    bottom = []
    for i, x in enumerate(xs):
        b = Blob(f"b{i}", x.shape)
        b.data = x.copy()
        bottom.append(b)
    top = [bottom[0]] if in_place else [Blob(f"t{i}") for i in range(tops)]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return bottom, top


def _backward(layer: Layer, bottom: list[Blob], top: list[Blob], seed: int = 9, down: list[bool] | None = None):
    dys = []
    for i, t in enumerate(top):
        t.diff = _data(t.shape, seed + i)
        dys.append(t.diff.copy())
    layer.backward(top, [True] * len(bottom) if down is None else down, bottom)
    return dys


# -- Pooling ---------------------------------------------------------------------------------------
POOLS = [
    "pooling_param { pool: MAX kernel_size: 2 stride: 2 }",  # LeNet
    "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }",
    "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }",
    "pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 round_mode: FLOOR }",
    "pooling_param { pool: MAX global_pooling: true }",
]


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("spec", POOLS)
def test_pooling(spec: str, phase: str) -> None:
    layer = _layer(f'type: "Pooling" {spec}', phase)
    x = _data((2, 3, 9, 8), 0)
    bottom, top = _forward(layer, [x])
    assert (layer.mask is not None) == (phase == "TRAIN" and layer.method == "MAX")  # recorded only to train
    (dy,) = _backward(layer, bottom, top)
    kw = {"method": layer.method, "kernel": layer.kernel, "stride": layer.stride, "pad": layer.pad}
    ref = pool2d_backward_ref(dy, x, **kw, round_mode=layer.round_mode)
    assert bottom[0].diff.dtype == np.float32 and np.max(np.abs(bottom[0].diff - ref)) <= ATOL


def test_pooling_propagate_down_false_leaves_diff() -> None:
    layer = _layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }')
    bottom, top = _forward(layer, [_data((1, 2, 4, 4), 0)])
    bottom[0].diff = np.full((1, 2, 4, 4), 7.0, np.float32)
    _backward(layer, bottom, top, down=[False])
    assert (bottom[0].diff == 7.0).all()


# -- LRN -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize("in_place", [False, True])
def test_lrn(region: str, in_place: bool) -> None:
    layer = _layer(f'type: "LRN" lrn_param {{ local_size: 3 alpha: 0.5 beta: 0.75 k: 2 norm_region: {region} }}')
    x = _data((2, 6, 5, 4), 1)
    bottom, top = _forward(layer, [x], in_place)
    (dy,) = _backward(layer, bottom, top)
    ref = lrn_backward_ref(dy, x, local_size=3, alpha=0.5, beta=0.75, k=2.0, region=region)
    assert np.max(np.abs(bottom[0].diff - ref)) <= 2e-6 * np.max(np.abs(ref))


# -- activations ---------------------------------------------------------------------------------
@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("in_place", [False, True])
def test_relu(slope: float, in_place: bool) -> None:
    layer = _layer(f'type: "ReLU" relu_param {{ negative_slope: {slope} }}')
    x = _data((3, 4, 5), 2)
    x[0, 0, :2] = 0.0  # the gradient at exactly 0 uses the slope
    bottom, top = _forward(layer, [x], in_place)
    assert (bottom[0].data is top[0].data) == in_place
    (dy,) = _backward(layer, bottom, top)
    np.testing.assert_array_equal(bottom[0].diff, relu_backward_ref(dy, x, slope).astype(np.float32))


@pytest.mark.parametrize(
    ("spec", "lo", "hi"), [('type: "ReLU6"', 0.0, 6.0), ('type: "Clip" clip_param { min: -1.5 max: 2 }', -1.5, 2.0)]
)
@pytest.mark.parametrize("in_place", [False, True])
def test_clip_relu6(spec: str, lo: float, hi: float, in_place: bool) -> None:
    """Forward against clip_forward_ref (exact); backward against clip_backward_ref and a float64 central-difference
    gradient of sum(dy * clip(x)) away from the kinks. In place, the bottom holds the output, so elements clipped to
    a bound get no gradient (inclusive=False), as the layer documents."""
    layer = _layer(spec)
    x = _data((3, 4, 5), 5) * 5
    x.reshape(-1)[::7] = np.float32(hi)  # exactly on the upper bound
    bottom, top = _forward(layer, [x], in_place)
    np.testing.assert_array_equal(top[0].data, clip_forward_ref(x, lo, hi))
    assert (bottom[0].data is top[0].data) == in_place
    (dy,) = _backward(layer, bottom, top)
    ref = clip_backward_ref(dy, bottom[0].data if in_place else x, lo, hi, inclusive=not in_place)
    np.testing.assert_array_equal(bottom[0].diff, ref.astype(np.float32))
    away = (np.abs(x - lo) > 1e-3) & (np.abs(x - hi) > 1e-3)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    num = numeric_grad(lambda v: float(np.sum(dy64 * np.clip(v, lo, hi))), x64.copy())
    assert np.max(np.abs(bottom[0].diff[away] - num[away])) <= 1e-6


@pytest.mark.parametrize("kind", ["Sigmoid", "TanH"])
@pytest.mark.parametrize("in_place", [False, True])
def test_sigmoid_tanh(kind: str, in_place: bool) -> None:
    layer = _layer(f'type: "{kind}"')
    x = _data((4, 7), 3)
    bottom, top = _forward(layer, [x], in_place)
    y = top[0].data.copy()
    (dy,) = _backward(layer, bottom, top)
    ref = (sigmoid_backward_ref if kind == "Sigmoid" else tanh_backward_ref)(dy, y)
    assert np.max(np.abs(bottom[0].diff - ref)) <= ATOL


@pytest.mark.parametrize(("shape", "axis"), [((4, 10), 1), ((2, 5, 3, 2), 1), ((2, 3, 4), -1)])
def test_softmax(shape: tuple[int, ...], axis: int) -> None:
    layer = _layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}')
    bottom, top = _forward(layer, [_data(shape, 4)])
    y = top[0].data.copy()
    (dy,) = _backward(layer, bottom, top)
    assert np.max(np.abs(bottom[0].diff - softmax_backward_ref(dy, y, axis))) <= ATOL


@pytest.mark.parametrize("in_place", [False, True])
def test_dropout_train(in_place: bool) -> None:
    layer = _layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', "TRAIN", seed=5)
    x = _data((8, 50), 5)
    bottom, top = _forward(layer, [x], in_place)
    mask = layer.mask
    assert mask is not None and mask.shape == x.shape and 0.6 < mask.mean() < 0.8
    want_mask = np.random.default_rng(5).random(x.shape, dtype=np.float32) < np.float32(0.7)
    np.testing.assert_array_equal(mask, want_mask)  # drawn from the layer's (the net's) Generator
    (dy,) = _backward(layer, bottom, top)
    np.testing.assert_array_equal(bottom[0].diff, dropout_backward_ref(dy, 0.3, mask).astype(np.float32))
    layer.forward(bottom, top)
    assert not np.array_equal(layer.mask, mask)  # a fresh mask every TRAIN forward


@pytest.mark.parametrize("in_place", [False, True])
def test_dropout_test_is_identity(in_place: bool) -> None:
    layer = _layer('type: "Dropout" dropout_param { dropout_ratio: 0.5 }', "TEST")
    x = _data((3, 4), 6)
    bottom, top = _forward(layer, [x], in_place)
    np.testing.assert_array_equal(top[0].data, x)
    (dy,) = _backward(layer, bottom, top)
    np.testing.assert_array_equal(bottom[0].diff, dy)


# -- Concat, Eltwise, Split, Flatten, Reshape ------------------------------------------------------
def test_concat() -> None:
    layer = _layer('type: "Concat" concat_param { axis: 1 }')
    xs = [_data((2, c, 3), c) for c in (1, 4, 2)]
    bottom, top = _forward(layer, xs)
    (dy,) = _backward(layer, bottom, top)
    np.testing.assert_array_equal(bottom[0].diff, dy[:, :1])
    np.testing.assert_array_equal(bottom[1].diff, dy[:, 1:5])
    np.testing.assert_array_equal(bottom[2].diff, dy[:, 5:])
    bottom[1].diff = np.zeros((2, 4, 3), np.float32)
    layer.backward(top, [True, False, True], bottom)
    assert (bottom[1].diff == 0).all()


@pytest.mark.parametrize(
    "spec", ["operation: SUM coeff: 2 coeff: -1 coeff: 0.5", "operation: PROD", "operation: MAX", "operation: SUM"]
)
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_eltwise(spec: str, phase: str) -> None:
    layer = _layer(f'type: "Eltwise" eltwise_param {{ {spec} }}', phase)
    xs = [_data((2, 3, 4), i) for i in range(3)]
    xs[1][0] = xs[0][0]  # ties: bottom 1 wins over bottom 0
    bottom, top = _forward(layer, xs)
    assert (layer.mask is not None) == (phase == "TRAIN" and layer.op == "MAX")
    (dy,) = _backward(layer, bottom, top)
    for b, ref in zip(bottom, eltwise_backward_ref(dy, xs, layer.op, layer.coeffs)):
        assert np.max(np.abs(b.diff - ref)) <= ATOL


def test_split() -> None:
    layer = _layer('type: "Split"')
    x = _data((3, 4), 7)
    bottom, top = _forward(layer, [x], tops=3)
    assert all(t.data is bottom[0].data for t in top)
    dys = _backward(layer, bottom, top)
    assert np.max(np.abs(bottom[0].diff - split_backward_ref(dys))) <= ATOL


@pytest.mark.parametrize(
    "spec", ['type: "Flatten"', 'type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } }']
)
def test_flatten_reshape(spec: str) -> None:
    layer = _layer(spec)
    x = _data((2, 3, 2, 2), 8)
    bottom, top = _forward(layer, [x])
    (dy,) = _backward(layer, bottom, top)
    assert bottom[0].diff.shape == x.shape
    np.testing.assert_array_equal(bottom[0].diff, dy.reshape(x.shape))


# -- Scale and Bias --------------------------------------------------------------------------------
def _fill_params(layer: Layer, seed: int) -> None:
    for j, blob in enumerate(layer.blobs):
        blob.data = _data(blob.shape, seed + j)
        blob.diff = np.ones(blob.shape, np.float32)  # to see accumulation


@pytest.mark.parametrize("bias_term", [False, True])
@pytest.mark.parametrize("in_place", [False, True])
def test_scale(bias_term: bool, in_place: bool) -> None:
    layer = _layer(f'type: "Scale" scale_param {{ axis: 1 num_axes: 1 bias_term: {str(bias_term).lower()} }}')
    x = _data((2, 3, 4), 10)
    bottom = [Blob("x", x.shape)]
    bottom[0].data = x.copy()
    top = [bottom[0]] if in_place else [Blob("y")]
    layer.setup(bottom, top)
    _fill_params(layer, 11)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    gamma = layer.blobs[0].data
    (dy,) = _backward(layer, bottom, top)
    rdx, rdg, rdb = scale_backward_ref(dy, x, gamma, 1)
    np.testing.assert_array_equal(bottom[0].diff, rdx.astype(np.float32))
    np.testing.assert_allclose(layer.blobs[0].diff, 1.0 + rdg, rtol=1e-6, atol=1e-6)  # accumulated onto 1
    if bias_term:
        np.testing.assert_allclose(layer.blobs[1].diff, 1.0 + rdb, rtol=1e-6, atol=1e-6)


def test_scale_param_needs_grad_and_second_bottom() -> None:
    layer = _layer('type: "Scale" scale_param { bias_term: true }')
    x = _data((2, 3, 4), 12)
    bottom, top = _forward(layer, [x])
    _fill_params(layer, 13)
    layer.param_needs_grad = [False, True]
    layer.forward(bottom, top)
    (dy,) = _backward(layer, bottom, top)
    assert (layer.blobs[0].diff == 1.0).all()  # gamma frozen (lr_mult 0): untouched
    np.testing.assert_allclose(layer.blobs[1].diff, 1.0 + dy.astype(np.float64).sum(axis=(0, 2)), rtol=1e-6)
    # gamma as a second bottom: its diff is overwritten, like any bottom's
    layer = _layer('type: "Scale" scale_param { axis: 0 }')
    g = _data((2, 3), 14)
    bottom, top = _forward(layer, [x, g])
    bottom[1].diff = np.full(g.shape, 5.0, np.float32)
    (dy,) = _backward(layer, bottom, top)
    rdx, rdg, _ = scale_backward_ref(dy, x, g, 0)
    assert np.max(np.abs(bottom[0].diff - rdx)) <= ATOL
    np.testing.assert_allclose(bottom[1].diff, rdg, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("in_place", [False, True])
def test_bias(in_place: bool) -> None:
    layer = _layer('type: "Bias" bias_param { axis: 1 num_axes: 2 }')
    x = _data((2, 3, 4, 2), 15)
    bottom = [Blob("x", x.shape)]
    bottom[0].data = x.copy()
    top = [bottom[0]] if in_place else [Blob("y")]
    layer.setup(bottom, top)
    _fill_params(layer, 16)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    (dy,) = _backward(layer, bottom, top)
    rdx, rdb = bias_backward_ref(dy, layer.blobs[0].data, 1)
    np.testing.assert_array_equal(bottom[0].diff, rdx.astype(np.float32))
    np.testing.assert_allclose(layer.blobs[0].diff, 1.0 + rdb, rtol=1e-6, atol=1e-6)
    layer.param_needs_grad = [False]
    _backward(layer, bottom, top)
    np.testing.assert_allclose(layer.blobs[0].diff, 1.0 + rdb, rtol=1e-6, atol=1e-6)  # frozen: unchanged
