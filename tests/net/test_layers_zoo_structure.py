"""Layer coverage for Model Zoo ports (issue 17), data-movement family (net/layers/structure_extra.py): Slice, Tile,
Crop, Permute, ShuffleChannel, Silence. Forward against NumPy expressions (exact), backward exact against the
adjoint: for these linear maps <dy, f(x)> == <f*(dy), x>, and the float64 reference's central-difference gradient
equals the layer's dx (within 1e-6 relative: Tile sums in float32). OpenCV DNN cross-checks for Slice, Crop, Permute and ShuffleChannel (exact)."""

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


def _run(text: str, xs: list[np.ndarray], tops: int = 1) -> tuple[Layer, list[Blob], list[Blob]]:
    layer = _layer(text)
    bottom = []
    for i, x in enumerate(xs):
        b = Blob(f"b{i}", x.shape)
        b.data = x.copy()
        bottom.append(b)
    top = [Blob(f"t{i}") for i in range(tops)]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


def _grad_check(layer: Layer, bottom: list[Blob], top: list[Blob], ref) -> None:
    """The layer's dx for random top diffs equals the central-difference gradient of sum_i <dy_i, ref(x)_i>."""
    dys = [_data(t.shape, 10 + i) for i, t in enumerate(top)]
    for t, dy in zip(top, dys):
        t.diff = dy.copy()
    layer.backward(top, [True] + [False] * (len(bottom) - 1), bottom)
    x64 = bottom[0].data.astype(np.float64)

    def f(v: np.ndarray) -> float:
        return float(sum(np.sum(dy.astype(np.float64) * out) for dy, out in zip(dys, ref(v))))

    num = numeric_grad(f, x64.copy())
    assert np.all(np.abs(bottom[0].diff - num) <= 1e-6 * np.maximum(np.abs(num), 1))  # Tile sums in float32


@pytest.mark.parametrize(
    ("spec", "tops", "cuts"),
    [
        ("slice_param { axis: 1 slice_point: 1 slice_point: 3 }", 3, [1, 3]),
        ("slice_param { slice_dim: 1 }", 2, [2]),
        ("slice_param { axis: -1 slice_point: 2 }", 2, [2]),
    ],
)
def test_slice(spec: str, tops: int, cuts: list[int]) -> None:
    x = _data((2, 4, 3, 5), 0)
    layer, bottom, top = _run(f'type: "Slice" {spec}', [x], tops)
    axis = 3 if "-1" in spec else 1
    want = np.split(x, cuts, axis=axis)
    for t, w in zip(top, want):
        np.testing.assert_array_equal(t.data, w)
    _grad_check(layer, bottom, top, lambda v: np.split(v, cuts, axis=axis))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_tile(axis: int) -> None:
    x = _data((2, 3, 4), 1)
    layer, bottom, top = _run(f'type: "Tile" tile_param {{ axis: {axis} tiles: 3 }}', [x])
    reps = [1, 1, 1]
    reps[axis] = 3
    ref = lambda v: [np.concatenate([v] * 3, axis=axis)]
    np.testing.assert_array_equal(top[0].data, ref(x)[0])
    _grad_check(layer, bottom, top, ref)


@pytest.mark.parametrize(
    ("spec", "window"),
    [
        ("crop_param { axis: 2 offset: 1 }", (slice(None), slice(None), slice(1, 4), slice(1, 3))),
        ("crop_param { axis: 1 offset: 0 offset: 2 offset: 3 }", (slice(None), slice(0, 3), slice(2, 5), slice(3, 5))),
        ("", (slice(None), slice(None), slice(0, 3), slice(0, 2))),
    ],
)
def test_crop(spec: str, window: tuple) -> None:
    x, like = _data((2, 4, 6, 5), 2), np.zeros((2, 3, 3, 2), np.float32)
    layer, bottom, top = _run(f'type: "Crop" {spec}', [x, like])
    np.testing.assert_array_equal(top[0].data, x[window])
    _grad_check(layer, bottom, top, lambda v: [v[window]])


@pytest.mark.parametrize("order", [[0, 2, 3, 1], [1, 0], [0, 3, 1, 2]])
def test_permute(order: list[int]) -> None:
    x = _data((2, 3, 4, 5), 3)
    spec = " ".join(f"order: {o}" for o in order)
    layer, bottom, top = _run(f'type: "Permute" permute_param {{ {spec} }}', [x])
    full = [*order, *(i for i in range(4) if i not in order)]
    np.testing.assert_array_equal(top[0].data, x.transpose(full))
    _grad_check(layer, bottom, top, lambda v: [v.transpose(full)])


def test_shuffle_channel() -> None:
    x = _data((2, 6, 3, 2), 4)
    layer, bottom, top = _run('type: "ShuffleChannel" shuffle_channel_param { group: 2 }', [x])
    ref = lambda v: [v.reshape(2, 2, 3, 3, 2).transpose(0, 2, 1, 3, 4).reshape(v.shape)]
    np.testing.assert_array_equal(top[0].data, ref(x)[0])
    assert [int(top[0].data[0, c, 0, 0] == x[0, k, 0, 0]) for c, k in enumerate([0, 3, 1, 4, 2, 5])] == [1] * 6
    _grad_check(layer, bottom, top, ref)


def test_silence_zeroes_bottom_diffs() -> None:
    layer, bottom, _ = _run('type: "Silence"', [_data((2, 3), 5), _data((4,), 6)], tops=0)
    for b in bottom:
        b.diff = np.ones(b.shape, np.float32)
    layer.backward([], [True, False], bottom)
    assert np.all(bottom[0].diff == 0) and np.all(bottom[1].diff == 1)


@pytest.mark.parametrize(
    ("text", "tops", "match"),
    [
        ('type: "Slice" slice_param { axis: 1 slice_point: 5 }', 2, "slice_point 5 is not inside axis 1"),
        ('type: "Slice" slice_param { axis: 1 }', 3, "does not split into 3 equal parts"),
        ('type: "Slice" slice_param { slice_point: 1 }', 3, "1 slice_point values for 3 tops"),
        ('type: "Tile" tile_param { axis: 1 }', 1, "tiles must be given"),
        ('type: "Permute" permute_param { order: 0 order: 0 }', 1, "distinct axes"),
        ('type: "ShuffleChannel" shuffle_channel_param { group: 3 }', 1, "group 3 must divide"),
    ],
)
def test_bad_parameters_name_the_layer(text: str, tops: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _run(text, [_data((2, 4, 3), 0)], tops)


def test_crop_that_does_not_fit_is_a_net_error() -> None:
    text = """name: "c"
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "crop" type: "Crop" bottom: "a" bottom: "b" top: "c" crop_param { offset: 2 } }
"""
    with pytest.raises(NetError, match="Crop 'crop': crop of 3 at offset 2 does not fit axis 2"):
        Net.from_string(text)


def test_structure_layers_match_opencv(tmp_path) -> None:
    text = """name: "zoo"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 dim: 5 dim: 4 } } }
layer { name: "slice" type: "Slice" bottom: "data" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 2 } }
layer { name: "perm" type: "Permute" bottom: "s2" top: "perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "shuffle" type: "ShuffleChannel" bottom: "data" top: "shuffle" shuffle_channel_param { group: 3 } }
layer { name: "crop" type: "Crop" bottom: "shuffle" bottom: "s1" top: "crop" crop_param { axis: 1 offset: 3 offset: 0 offset: 0 } }
"""
    proto = tmp_path / "s.prototxt"
    proto.write_text(text)
    net = Net.load(proto)
    x = _data((2, 6, 5, 4), 7)
    net.forward(data=x)
    ref = cv2.dnn.readNetFromCaffe(str(proto))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    ref.setInput(x)
    names = ["perm", "shuffle", "crop"]
    for name, got in zip(names, ref.forward(names)):
        np.testing.assert_array_equal(net.blobs[name], got, err_msg=name)
