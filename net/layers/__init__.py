"""Layers: thin objects over the kernels, with Caffe's interface.

Every layer is built from its LayerParameter (`net.schema.Message`) and implements
`setup(bottom, top)` (check counts, create parameter blobs), `reshape(bottom, top)` (shape the
tops from the bottoms' shapes only), `forward(bottom, top)` and, where Caffe has one, `backward`.
Bottoms and tops are `Blob`s; an in-place layer gets the same Blob as bottom and top. `self.blobs`
holds the learnable parameters in Caffe's order ([weight, bias]).

One module per layer family. This package imports every family below, in one place: importing
`net.layers` (or anything from it) registers every type, whatever the import order elsewhere, and
`create_layer` looks them up and names the known types when one is missing.
"""

from __future__ import annotations

from . import (
    activation,
    activation_extra,
    convolution,
    data,
    deconvolution,
    dummy_data,
    eltwise,
    embed,
    inner_product,
    input,
    loss,
    normalization,
    normalization_extra,
    pooling,
    recurrent,
    reduction,
    spp,
    structure,
    structure_extra,
    structure_extra2,
)
from .activation import ClipLayer, DropoutLayer, ReLU6Layer, ReLULayer, SigmoidLayer, SoftmaxLayer, TanHLayer
from .base import LAYERS, NO_STEP, Layer, check_gpu_capable, create_layer, gpu_layer_types, register
from .convolution import ConvolutionLayer
from .data import DataLayer
from .eltwise import EltwiseLayer
from .inner_product import InnerProductLayer
from .input import InputLayer, MemoryDataLayer
from .loss import AccuracyLayer, EuclideanLossLayer, SoftmaxWithLossLayer
from .normalization import BatchNormLayer, BiasLayer, LRNLayer, ScaleLayer
from .pooling import PoolingLayer
from .structure import ConcatLayer, FlattenLayer, ReshapeLayer, SplitLayer

FAMILIES = (activation, convolution, data, eltwise, inner_product, input, loss, normalization, pooling, structure)
FAMILIES += (activation_extra, deconvolution, dummy_data, embed, normalization_extra, reduction, spp, structure_extra)
FAMILIES += (recurrent, structure_extra2)

__all__ = [
    "FAMILIES",
    "LAYERS",
    "NO_STEP",
    "AccuracyLayer",
    "BatchNormLayer",
    "BiasLayer",
    "ClipLayer",
    "ConcatLayer",
    "ConvolutionLayer",
    "DataLayer",
    "DropoutLayer",
    "EltwiseLayer",
    "EuclideanLossLayer",
    "FlattenLayer",
    "InnerProductLayer",
    "InputLayer",
    "LRNLayer",
    "Layer",
    "MemoryDataLayer",
    "PoolingLayer",
    "ReLU6Layer",
    "ReLULayer",
    "ReshapeLayer",
    "ScaleLayer",
    "SigmoidLayer",
    "SoftmaxLayer",
    "SoftmaxWithLossLayer",
    "SplitLayer",
    "TanHLayer",
    "check_gpu_capable",
    "create_layer",
    "gpu_layer_types",
    "register",
]  # fmt: skip
