"""Layer coverage (issue 17): N-D Convolution / Deconvolution (net/layers/conv_nd.py, kernels/conv_nd.py).

kernels.conv_nd against its float64 reference (rtol 1e-5), the reference's own gradients against central differences
(float64, h 1e-6: atol 1e-7, rtol 1e-6), the layers' forward and every gradient against the reference, 1-D, 2-D with
a channel axis of 2, and 3-D inputs; a 3-D Convolution net against OpenCV DNN's Caffe importer (which reads 3-D
kernels) within 1e-5; errors name the layer and the parameter."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import conv_nd
from net import Net, NetError
from net.blob import Blob
from net.layers import Layer, create_layer
from net.prototxt_loader import parse_text
from tests.gradcheck import assert_grad_close, numeric_grad


def _data(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _close(a: np.ndarray, ref: np.ndarray, rtol: float = 1e-5) -> None:
    err = np.abs(np.asarray(a, np.float64) - ref)
    assert np.all(err <= rtol * np.maximum(np.abs(ref), 1.0)), float(np.max(err))


GEOMS = [
    {},
    {"stride": (1, 2, 1), "pad": (1, 0, 1), "dilation": (2, 1, 1), "group": 2},
    {"stride": (2, 2, 2), "pad": (1, 1, 1), "dilation": (1, 1, 2), "group": 1},
]


@pytest.mark.parametrize("geom", GEOMS)
def test_conv3d_kernels_against_reference(geom: dict) -> None:
    x, w, b = _data((2, 4, 5, 6, 7), 0), _data((6, 4 // geom.get("group", 1), 2, 3, 2), 1), _data((6,), 2)
    y = conv_nd.conv3d_forward(x, w, b, **geom)
    _close(y, conv_nd.conv3d_forward_ref(x, w, b, **geom))
    dy = _data(y.shape, 3)
    dx, dw, db = conv_nd.conv3d_backward(dy, x, w, **geom)
    rx, rw, rb = conv_nd.conv3d_backward_ref(dy, x, w, **geom)
    _close(dx, rx)
    _close(dw, rw, 2e-5)
    _close(db, rb)
    cols = conv_nd.im2col_nd(x[0], w.shape[2:], geom.get("stride", (1,) * 3), geom.get("pad", (0,) * 3),
                             geom.get("dilation", (1,) * 3))  # fmt: skip
    back = conv_nd.col2im_nd(cols, x[0].shape, w.shape[2:], geom.get("stride", (1,) * 3), geom.get("pad", (0,) * 3),
                             geom.get("dilation", (1,) * 3))  # fmt: skip
    assert np.isclose(np.sum(cols.astype(np.float64) ** 2), np.sum(back.astype(np.float64) * x[0]), rtol=1e-5)


def test_conv3d_reference_gradients_central_differences() -> None:
    geom = GEOMS[1]
    x = _data((1, 4, 3, 4, 3), 5).astype(np.float64)
    w = _data((2, 2, 2, 2, 2), 6).astype(np.float64)
    dy = _data(conv_nd.conv3d_forward_ref(x, w, None, **geom).shape, 7).astype(np.float64)
    rx, rw, _ = conv_nd.conv3d_backward_ref(dy, x, w, **geom)
    nx = numeric_grad(lambda v: float(np.sum(dy * conv_nd.conv3d_forward_ref(v, w, None, **geom))), x.copy())
    nw = numeric_grad(lambda v: float(np.sum(dy * conv_nd.conv3d_forward_ref(x, v, None, **geom))), w.copy())
    assert_grad_close(rx, nx, atol=1e-7, rtol=1e-6, what="dx")
    assert_grad_close(rw, nw, atol=1e-7, rtol=1e-6, what="dw")


def _layer(text: str) -> Layer:
    return create_layer(parse_text(f'name: "l" {text}', "LayerParameter"), "TRAIN", np.random.default_rng(0))


CASES = [  # (type, convolution_param, input shape, 5-D view of input: (N, C, D, H, W), channel axis)
    ("Convolution", ("num_output: 6 kernel_size: 2 kernel_size: 3 kernel_size: 2 stride: 1 stride: 2 stride: 1 "
     "pad: 1 pad: 0 pad: 1 dilation: 2 dilation: 1 dilation: 1 group: 2"), (2, 4, 5, 6, 7), 1),
    ("Convolution", "num_output: 3 kernel_size: 3 pad: 1 stride: 2", (2, 4, 5, 4, 6), 1),
    ("Convolution", "num_output: 3 kernel_size: 3 stride: 2 axis: 2", (2, 3, 4, 7, 6), 2),  # (N, T, C, H, W)
    ("Convolution", "num_output: 5 kernel_size: 3 pad: 1 dilation: 2", (3, 2, 9), 1),  # 1-D
    ("Deconvolution", "num_output: 4 kernel_size: 2 kernel_size: 3 kernel_size: 3 stride: 2 pad: 1 group: 2",
     (2, 4, 3, 4, 3), 1),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "spec", "shape", "axis"), CASES)
def test_nd_layers_forward_backward(kind: str, spec: str, shape: tuple[int, ...], axis: int) -> None:
    layer = _layer(f'type: "{kind}" convolution_param {{ {spec} bias_filler {{ type: "gaussian" }} '
                   'weight_filler { type: "gaussian" } }')  # fmt: skip
    bottom, top = [Blob("x", shape)], [Blob("y")]
    bottom[0].data = _data(shape, 11)
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert layer.type == kind
    n5 = int(np.prod(shape[:axis]))
    nsp = len(shape) - axis - 1
    x5 = bottom[0].data.reshape(n5, shape[axis], *(1,) * (3 - nsp), *shape[axis + 1 :])
    w, b = layer.blobs[0].data, layer.blobs[1].data
    w5 = w.reshape(*w.shape[:2], *(1,) * (3 - nsp), *w.shape[2:])
    geom = {k: getattr(layer, k) for k in ("stride", "pad", "dilation")} | {"group": layer.group}
    dy = _data(top[0].shape, 12)
    if kind == "Convolution":
        ref = conv_nd.conv3d_forward_ref(x5, w5, b, **geom)
        dy5 = dy.reshape(ref.shape)
        rx, rw, rb = conv_nd.conv3d_backward_ref(dy5, x5, w5, **geom)
    else:  # the transposed convolution: forward = the convolution's dx, dx = the convolution's forward of dy
        out5 = (n5, w.shape[1] * layer.group, *(s * (i - 1) + d * (k - 1) + 1 - 2 * p for i, k, s, p, d in
                zip(x5.shape[2:], w5.shape[2:], layer.stride, layer.pad, layer.dilation)))  # fmt: skip
        ref, _, _ = conv_nd.conv3d_backward_ref(x5, np.zeros(out5), w5, **geom)
        ref += b.reshape(1, -1, 1, 1, 1)
        dy5 = dy.reshape(ref.shape)
        rx = conv_nd.conv3d_forward_ref(dy5, w5, None, **geom)
        _, rw, _ = conv_nd.conv3d_backward_ref(x5, dy5, w5, **geom)
        rb = dy5.sum(axis=(0, 2, 3, 4))
    assert top[0].shape == (*shape[:axis], *ref.shape[1:2], *ref.shape[5 - nsp :])
    _close(top[0].data, ref.reshape(top[0].shape))
    top[0].diff = dy
    layer.blobs[0].diff[...] = 0.0
    layer.blobs[1].diff[...] = 0.0
    layer.backward(top, [True], bottom)
    _close(bottom[0].diff, rx.reshape(shape))
    _close(layer.blobs[0].diff, rw.reshape(w.shape), 2e-5)
    _close(layer.blobs[1].diff, rb)


def test_conv3d_net_against_opencv(tmp_path) -> None:
    """OpenCV 4.x reads a 3-D Convolution only with one kernel_size per axis (a single value is taken as 2-D and its
    5-D weights then fail an assertion), so both layers spell all three."""
    cv2 = pytest.importorskip("cv2")
    text = """name: "c3"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 7 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 kernel_size: 2 kernel_size: 3 stride: 2 stride: 1 stride: 2
                      pad: 1 pad: 0 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "conv2" type: "Convolution" bottom: "conv" top: "conv2"
  convolution_param { num_output: 5 kernel_size: 2 kernel_size: 1 kernel_size: 2 dilation: 1 dilation: 2 dilation: 1 } }
"""
    proto = tmp_path / "n.prototxt"
    proto.write_text(text)
    net = Net.load(proto)
    rng = np.random.default_rng(0)
    for name in net.params:
        for p in net.params[name]:
            p[...] = rng.normal(0.0, 0.5, size=p.shape)
    weights = tmp_path / "n.caffemodel"
    net.save(weights)
    x = _data((2, 3, 6, 7, 8), 1)
    net.forward(data=x)
    ref = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    ref.setInput(x)
    got = ref.forward("conv2")
    assert net.blobs["conv2"].shape == got.shape == (2, 5, 2, 6, 3)
    _close(net.blobs["conv2"], got.astype(np.float64))


@pytest.mark.parametrize(
    ("spec", "shape", "match"),
    [
        ("num_output: 2 kernel_size: 3 kernel_size: 3", (1, 2, 5, 5, 5), "kernel_size has 2 values for 3 spatial axes"),
        ("num_output: 2 kernel_h: 3 kernel_w: 3", (1, 2, 5, 5, 5), "kernel_h/kernel_w need 2 spatial axes"),
        ("num_output: 2 kernel_size: 1", (1, 2, 2, 2, 2, 2), "4 spatial axes"),
        ("num_output: 2 kernel_size: 1 axis: 5", (1, 2, 5, 5, 5), "convolution_param.axis 5 is out of range"),
        ("num_output: 2 kernel_size: 9", (1, 2, 5, 5, 5), "empty output"),
    ],
)
def test_nd_errors_name_the_layer(spec: str, shape: tuple[int, ...], match: str) -> None:
    dims = " ".join(f"dim: {d}" for d in shape)
    text = (
        f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
        f'layer {{ name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param {{ {spec} }} }}'
    )
    with pytest.raises(NetError, match=f"Convolution 'c': .*{match}"):
        Net.from_string(text)


# -- Im2col, BatchReindex, Filter (net/layers/structure_extra2.py) ---------------------------------------------------
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


def _im2col_ref(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int], d: tuple[int, int]):
    """float64 (N, C*kh*kw, OH, OW): channel c*kh*kw + i*kw + j holds x_pad[:, c, oh*sh + i*dh, ow*sw + j*dw]."""
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * p[0], w + 2 * p[1]))
    xp[:, :, p[0] : p[0] + h, p[1] : p[1] + w] = x
    oh = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    out = np.zeros((n, c, k[0], k[1], oh, ow))
    for i in range(k[0]):
        for j in range(k[1]):
            out[:, :, i, j] = xp[:, :, i * d[0] : i * d[0] + (oh - 1) * s[0] + 1 : s[0],
                                 j * d[1] : j * d[1] + (ow - 1) * s[1] + 1 : s[1]]  # fmt: skip
    return out.reshape(n, c * k[0] * k[1], oh, ow)


@pytest.mark.parametrize(
    ("spec", "geom"),
    [
        ("kernel_size: 3", ((3, 3), (1, 1), (0, 0), (1, 1))),
        (
            "kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 2 dilation: 2",
            ((2, 3), (2, 1), (1, 2), (2, 2)),
        ),
    ],
)
def test_im2col_forward_backward(spec: str, geom) -> None:
    x = _data((2, 3, 6, 7), 20)
    layer, bottom, top = _run(f'type: "Im2col" convolution_param {{ {spec} }}', [x])
    ref = _im2col_ref(x.astype(np.float64), *geom)
    assert top[0].shape == ref.shape
    np.testing.assert_array_equal(top[0].data, ref.astype(np.float32))  # a copy: exact
    dy = _data(ref.shape, 21)
    top[0].diff = dy.copy()
    layer.backward(top, [True], bottom)
    num = numeric_grad(lambda v: float(np.sum(dy * _im2col_ref(v, *geom))), x.astype(np.float64))
    assert_grad_close(bottom[0].diff, num, atol=1e-5, rtol=1e-5, what="dx")  # sums of float32 dy


def test_im2col_3d_times_the_weights_is_the_convolution() -> None:
    """Im2col over a 3-D input: the column matrix times the flattened weights is the 3-D convolution (no bias)."""
    x, w = _data((2, 2, 4, 5, 3), 22), _data((3, 2, 2, 3, 2), 23)
    _, _, top = _run('type: "Im2col" convolution_param { kernel_size: 2 kernel_size: 3 kernel_size: 2 pad: 1 }', [x])
    y = np.einsum("mk,nkp->nmp", w.reshape(3, -1).astype(np.float64), top[0].data.reshape(2, 24, -1))
    ref = conv_nd.conv3d_forward_ref(x, w, None, pad=(1, 1, 1))
    _close(y.reshape(ref.shape), ref)


def test_batch_reindex() -> None:
    x = _data((4, 3, 2), 24)
    permut = np.array([2, 0, 2, 3, 2], np.float32)
    layer, bottom, top = _run('type: "BatchReindex"', [x, permut])
    np.testing.assert_array_equal(top[0].data, x[[2, 0, 2, 3, 2]])
    dy = _data(top[0].shape, 25)
    top[0].diff = dy
    bottom[0].diff[...] = 7.0  # overwritten
    layer.backward(top, [True, False], bottom)
    want = np.zeros_like(x)
    want[2] = dy[0] + dy[2] + dy[4]
    want[0], want[3] = dy[1], dy[3]
    np.testing.assert_allclose(bottom[0].diff, want, rtol=1e-6)
    with pytest.raises(ValueError, match="BatchReindex 'l': cannot propagate a gradient to the indices"):
        layer.backward(top, [True, True], bottom)
    with pytest.raises(ValueError, match=r"BatchReindex 'l': bottom 1 \(permut\) value 4.0 is not an item index"):
        _run('type: "BatchReindex"', [x, np.array([1, 4], np.float32)])


def test_filter() -> None:
    a, b = _data((5, 3), 26), _data((5, 2, 2), 27)
    sel = np.array([[0], [1.5], [0], [-1], [1]], np.float32)
    layer, bottom, top = _run('type: "Filter"', [a, b, sel], tops=2)
    np.testing.assert_array_equal(top[0].data, a[[1, 3, 4]])
    np.testing.assert_array_equal(top[1].data, b[[1, 3, 4]])
    dys = [_data(t.shape, 28 + i) for i, t in enumerate(top)]
    for t, dy in zip(top, dys):
        t.diff = dy
    layer.backward(top, [True, True, False], bottom)
    for blob, x, dy in zip(bottom, (a, b), dys):
        want = np.zeros_like(x)
        want[[1, 3, 4]] = dy
        np.testing.assert_array_equal(blob.diff, want)
    with pytest.raises(ValueError, match="Filter 'l': cannot propagate a gradient to the selector"):
        layer.backward(top, [True, True, True], bottom)
    with pytest.raises(ValueError, match=r"Filter 'l': the selector \(last bottom\) must be \(N,\) or \(N, 1, ...\)"):
        _run('type: "Filter"', [a, np.zeros((5, 2), np.float32)])
    with pytest.raises(ValueError, match="Filter 'l': needs one top per bottom but the selector"):
        _run('type: "Filter"', [a, sel], tops=2)
