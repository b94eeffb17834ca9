"""Forward FLOPs of each layer, counted from the shapes, for `crema inspect` and `crema time`.

    counts = layer_flops(net)          # one int per net.layers entry, None where the type has no rule here
    total = sum(c for c in counts if c)

A multiply-add counts 2 (the convention of the GFLOP/s figures in benchmarks/). The counts are those of the model as
written, as an unfused Caffe net runs it: a BatchNorm / Scale folded into its convolution, or a ReLU fused into its
kernel's epilogue, still counts its own element-wise work here (it is part of the model; crema just does it inside
another kernel's pass).

Convolution, InnerProduct  2 * (top elements) * (weights per output: Cin/group * kh * kw, or K) + top elements (bias)
Deconvolution              2 * (bottom elements) * (weights per input element: Cout/group * kh * kw) + top (bias)
Pooling                    top elements * kh * kw (one compare or add per window element)
LRN                        (2 * local_size + 3) per element: the window's squares and sum, scale, power, product
BatchNorm 2, Scale 1 (+1 with a bias), Bias 1, Eltwise (bottoms - 1) (x2 with coefficients), element-wise
                           activations 1 (a transcendental function counts one), PReLU 2, Softmax 4 per element
Concat, Split, Slice, Flatten, Reshape, Dropout (test), Input, Silence, Crop, Permute, ShuffleChannel, Tile: 0
"""

from __future__ import annotations

from .blob import Blob

__all__ = ["layer_flops"]

_PER_ELEMENT = {
    "ReLU": 1, "ReLU6": 1, "Clip": 1, "Sigmoid": 1, "TanH": 1, "ELU": 1, "Power": 1, "Exp": 1, "Log": 1,
    "AbsVal": 1, "BNLL": 1, "Threshold": 1, "Swish": 1, "PReLU": 2, "BatchNorm": 2, "Bias": 1, "Softmax": 4,
}  # fmt: skip
_FREE = {
    "Concat", "Split", "Slice", "Flatten", "Reshape", "Dropout", "Input", "Silence", "Crop", "Permute",
    "ShuffleChannel", "Tile",
}  # fmt: skip


def _count(blob: Blob) -> int:
    n = 1
    for d in blob.shape:
        n *= int(d)
    return n


def _one(layer, bottom: list[Blob], top: list[Blob]) -> int | None:
    kind = layer.type
    if kind in _FREE:
        return 0
    out = _count(top[0]) if top else 0
    if kind in ("Convolution", "InnerProduct"):
        w = layer.blobs[0].shape
        per_output = 1
        for d in w[1:]:
            per_output *= int(d)
        return 2 * out * per_output + (out if len(layer.blobs) > 1 else 0)
    if kind == "Deconvolution":
        w = layer.blobs[0].shape
        per_input = 1
        for d in w[1:]:
            per_input *= int(d)
        return 2 * _count(bottom[0]) * per_input + (out if len(layer.blobs) > 1 else 0)
    if kind == "Pooling":
        kh, kw = layer.kernel
        return out * int(kh) * int(kw)
    if kind == "LRN":
        return out * (2 * int(layer.param.lrn_param.local_size) + 3)
    if kind == "Scale":
        return out * (2 if len(layer.blobs) > 1 or len(bottom) > 2 else 1)
    if kind == "Eltwise":
        coeffs = len(layer.param.eltwise_param.coeff) > 0
        return out * (len(bottom) - 1) * (2 if coeffs else 1)
    if kind in _PER_ELEMENT:
        return out * _PER_ELEMENT[kind]
    return None


def layer_flops(net) -> list[int | None]:
    """Forward FLOPs of each of `net.layers` at the net's current shapes (see the module docstring); None for a type
    without a rule here (loss and data layers, rarely used types)."""
    return [_one(layer, bottom, top) for layer, bottom, top in zip(net.layers, net.bottoms, net.tops)]
