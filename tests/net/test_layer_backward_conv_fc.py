"""ConvolutionLayer and InnerProductLayer backward, built from prototxt snippets, against the kernel references.

Checks Caffe's contract: bottom diffs are overwritten where propagate_down is set (and left alone elsewhere);
parameter diffs accumulate, over every bottom of a multi-bottom convolution, and only for parameters whose
param_needs_grad entry is true. Tolerance: max |err| <= RTOL * sqrt(n) * max(max|ref|, 1) with n the number of
products summed into one element (float32 kernels against float64 references).
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels.conv import conv2d_backward_ref
from kernels.fc import inner_product_backward_ref
from net.blob import Blob
from net.layers import create_layer
from net.prototxt_loader import parse_text

RTOL = 2e-7


def _layer(text: str, bottoms: list[np.ndarray], seed: int = 0):
    """Build the layer of `text` (a LayerParameter), set it up on blobs holding `bottoms`, randomise its
    parameters, run forward; returns (layer, bottom blobs, top blobs)."""
    rng = np.random.default_rng(seed)
    layer = create_layer(parse_text(text, "LayerParameter"), "TRAIN", rng)
    bottom = []
    for i, arr in enumerate(bottoms):
        blob = Blob(f"in{i}", arr.shape)
        blob.data = arr
        bottom.append(blob)
    top = [Blob(f"out{i}") for i in range(len(layer.param.top))]
    layer.setup(bottom, top)
    for p in layer.blobs:
        p.data = rng.standard_normal(p.shape).astype(np.float32)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    for t in top:
        t.diff = rng.standard_normal(t.shape).astype(np.float32)
    return layer, bottom, top


def _close(got: np.ndarray, want: np.ndarray, n: int, what: str) -> None:
    assert got.shape == want.shape, what
    tol = RTOL * np.sqrt(n) * max(float(np.abs(want).max()), 1.0)
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= tol, f"{what}: max abs err {err:.3e} > tol {tol:.3e}"


CONV = """
name: "conv" type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb"
convolution_param { num_output: 6 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 group: 2 }
"""


def test_convolution_two_bottoms() -> None:
    rng = np.random.default_rng(1)
    xa = rng.standard_normal((3, 4, 9, 7), dtype=np.float32)
    xb = rng.standard_normal((2, 4, 6, 8), dtype=np.float32)  # another batch and size, same weights
    layer, bottom, top = _layer(CONV, [xa, xb])
    assert [t.shape for t in top] == [(3, 6, 5, 6), (2, 6, 3, 7)]
    w0 = rng.standard_normal(layer.blobs[0].shape).astype(np.float32)
    b0 = rng.standard_normal(6).astype(np.float32)
    layer.blobs[0].diff = w0.copy()  # parameter diffs accumulate on top of what is there
    layer.blobs[1].diff = b0.copy()
    bottom[1].diff = np.full(xb.shape, np.nan, np.float32)  # bottom diffs are overwritten
    layer.backward(top, [True, True], bottom)
    kw = {"stride": (2, 1), "pad": (1, 0), "dilation": (1, 1), "group": 2}
    w = layer.blobs[0].data
    ra = conv2d_backward_ref(top[0].diff, xa, w, **kw)
    rb = conv2d_backward_ref(top[1].diff, xb, w, **kw)
    _close(bottom[0].diff, ra[0], 3 * 3 * 2, "bottom 0 diff")
    _close(bottom[1].diff, rb[0], 3 * 3 * 2, "bottom 1 diff")
    _close(layer.blobs[0].diff, w0 + ra[1] + rb[1], 3 * 5 * 6 + 2 * 3 * 7, "weight diff")
    _close(layer.blobs[1].diff, b0 + ra[2] + rb[2], 3 * 5 * 6 + 2 * 3 * 7, "bias diff")


def test_convolution_propagate_down_and_param_needs_grad() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
    text = 'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 5 kernel_size: 3 }'
    layer, bottom, top = _layer(text, [x])
    layer.param_needs_grad = [False, True]  # the Net's rule for lr_mult 0 on the weight
    sentinel = np.full(x.shape, 7.0, np.float32)
    bottom[0].diff = sentinel
    layer.backward(top, [False], bottom)
    assert bottom[0].diff is sentinel and np.all(sentinel == 7.0)  # no propagate_down: untouched
    assert np.all(layer.blobs[0].diff == 0)  # weight has no gradient wanted: stays at its lazy zeros
    ref = conv2d_backward_ref(top[0].diff, x, layer.blobs[0].data)
    _close(layer.blobs[1].diff, ref[2], 2 * 6 * 6, "bias diff")


def test_convolution_without_bias_term() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 6, 5), dtype=np.float32)
    text = """name: "c" type: "Convolution" bottom: "x" top: "y"
              convolution_param { num_output: 4 kernel_size: 2 dilation: 2 pad: 1 bias_term: false }"""
    layer, bottom, top = _layer(text, [x])
    assert len(layer.blobs) == 1
    layer.backward(top, [True], bottom)
    ref = conv2d_backward_ref(top[0].diff, x, layer.blobs[0].data, pad=(1, 1), dilation=(2, 2), bias=False)
    _close(bottom[0].diff, ref[0], 4 * 4, "bottom diff")
    _close(layer.blobs[0].diff, ref[1], 2 * 4 * 3, "weight diff")


@pytest.mark.parametrize(
    "text,shape,axis,transpose",
    [
        ('inner_product_param { num_output: 7 weight_filler { type: "xavier" } }', (5, 3, 2, 2), 1, False),
        ("inner_product_param { num_output: 4 axis: 2 transpose: true }", (2, 3, 4, 5), 2, True),
        ("inner_product_param { num_output: 10 }", (40, 50), 1, False),  # GEMM path for dx
    ],
)
def test_inner_product(text: str, shape: tuple, axis: int, transpose: bool) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape, dtype=np.float32)
    layer, bottom, top = _layer(f'name: "ip" type: "InnerProduct" bottom: "x" top: "y" {text}', [x])
    w0 = rng.standard_normal(layer.blobs[0].shape).astype(np.float32)
    layer.blobs[0].diff = w0.copy()
    bottom[0].diff = np.full(shape, np.nan, np.float32)
    layer.backward(top, [True], bottom)
    ref = inner_product_backward_ref(top[0].diff, x, layer.blobs[0].data, axis=axis, transpose=transpose)
    n_out = top[0].shape[-1]
    rows = top[0].diff.size // n_out
    _close(bottom[0].diff, ref[0], n_out, "bottom diff")
    _close(layer.blobs[0].diff, w0 + ref[1], rows, "weight diff")
    _close(layer.blobs[1].diff, ref[2], rows, "bias diff")


def test_inner_product_param_needs_grad_and_no_propagation() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 12), dtype=np.float32)
    text = 'name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 3 }'
    layer, bottom, top = _layer(text, [x])
    layer.param_needs_grad = [True, False]
    layer.backward(top, [False], bottom)
    assert bottom[0]._diff is None  # never touched: not even lazily allocated
    assert np.all(layer.blobs[1].diff == 0)
    ref = inner_product_backward_ref(top[0].diff, x, layer.blobs[0].data)
    _close(layer.blobs[0].diff, ref[1], 6, "weight diff")
    layer.param_needs_grad = [False, False]
    before = layer.blobs[0].diff.copy()
    layer.backward(top, [False], bottom)  # nothing wanted: a no-op
    np.testing.assert_array_equal(layer.blobs[0].diff, before)
