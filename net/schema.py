"""Caffe's protobuf schema (the subset crema reads and writes) and a typed message object.

Both file formats go through this one model: the text parser (`net.prototxt_loader`) and the
binary codec (`net.caffemodel`) build `Message` objects of the types declared in `MESSAGES`.

A `Message` behaves like the protobuf object Caffe uses:

    >>> m = Message("ConvolutionParameter")
    >>> m.group                 # absent field: caffe.proto's default
    1
    >>> m.has("group")          # presence is tracked (Caffe's has_xxx)
    False
    >>> m.kernel_size.append(3) # repeated fields are lists
    >>> m.weight_filler.type    # absent sub-message: a default instance (not stored)
    'constant'

Field types: 'double' 'float' 'int32' 'int64' 'uint32' 'uint64' 'bool' 'string' 'bytes', an enum
name from `ENUMS`, or a message name from `MESSAGES`. Enum values are stored as their names
(strings); an unknown numeric enum value read from a binary file is kept as an int.
Field numbers and defaults are those of BVLC caffe.proto (see shared/docs/caffe_facts.md §2).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Field:
    name: str
    number: int
    type: str
    repeated: bool = False
    default: Any = None
    packed: bool = False

    @property
    def is_message(self) -> bool:
        return self.type in MESSAGES

    @property
    def is_enum(self) -> bool:
        return self.type in ENUMS


ENUMS: dict[str, dict[str, int]] = {
    "Phase": {"TRAIN": 0, "TEST": 1},
    "DimCheckMode": {"STRICT": 0, "PERMISSIVE": 1},
    "Engine": {"DEFAULT": 0, "CAFFE": 1, "CUDNN": 2},
    "PoolMethod": {"MAX": 0, "AVE": 1, "STOCHASTIC": 2},
    "RoundMode": {"CEIL": 0, "FLOOR": 1},
    "NormRegion": {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1},
    "EltwiseOp": {"PROD": 0, "SUM": 1, "MAX": 2},
    "NormalizationMode": {"FULL": 0, "VALID": 1, "BATCH_SIZE": 2, "NONE": 3},
    "DB": {"LEVELDB": 0, "LMDB": 1},
    "VarianceNorm": {"FAN_IN": 0, "FAN_OUT": 1, "AVERAGE": 2},
    "SolverMode": {"CPU": 0, "GPU": 1},
    "SolverType": {"SGD": 0, "NESTEROV": 1, "ADAGRAD": 2, "RMSPROP": 3, "ADADELTA": 4, "ADAM": 5},
    "SnapshotFormat": {"HDF5": 0, "BINARYPROTO": 1},
    "PoolingV0": {"MAX": 0, "AVE": 1, "STOCHASTIC": 2},
    "ReductionOp": {"SUM": 1, "ASUM": 2, "SUMSQ": 3, "MEAN": 4},
    "LayerType": {
        "NONE": 0,
        "ACCURACY": 1,
        "BNLL": 2,
        "CONCAT": 3,
        "CONVOLUTION": 4,
        "DATA": 5,
        "DROPOUT": 6,
        "EUCLIDEAN_LOSS": 7,
        "FLATTEN": 8,
        "HDF5_DATA": 9,
        "HDF5_OUTPUT": 10,
        "IM2COL": 11,
        "IMAGE_DATA": 12,
        "INFOGAIN_LOSS": 13,
        "INNER_PRODUCT": 14,
        "LRN": 15,
        "MULTINOMIAL_LOGISTIC_LOSS": 16,
        "POOLING": 17,
        "RELU": 18,
        "SIGMOID": 19,
        "SOFTMAX": 20,
        "SOFTMAX_LOSS": 21,
        "SPLIT": 22,
        "TANH": 23,
        "WINDOW_DATA": 24,
        "ELTWISE": 25,
        "POWER": 26,
        "SIGMOID_CROSS_ENTROPY_LOSS": 27,
        "HINGE_LOSS": 28,
        "MEMORY_DATA": 29,
        "ARGMAX": 30,
        "THRESHOLD": 31,
        "DUMMY_DATA": 32,
        "SLICE": 33,
        "MVN": 34,
        "ABSVAL": 35,
        "SILENCE": 36,
        "CONTRASTIVE_LOSS": 37,
        "EXP": 38,
        "DECONVOLUTION": 39,
    },
}

# V1 LayerType enum -> V2 type string (caffe_facts §2.3).
V1_TYPE_NAMES: dict[str, str] = {
    "NONE": "",
    "ACCURACY": "Accuracy",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "POOLING": "Pooling",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "ELTWISE": "Eltwise",
    "POWER": "Power",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "HINGE_LOSS": "HingeLoss",
    "MEMORY_DATA": "MemoryData",
    "ARGMAX": "ArgMax",
    "THRESHOLD": "Threshold",
    "DUMMY_DATA": "DummyData",
    "SLICE": "Slice",
    "MVN": "MVN",
    "ABSVAL": "AbsVal",
    "SILENCE": "Silence",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "EXP": "Exp",
    "DECONVOLUTION": "Deconvolution",
}


def _f(name: str, number: int, type_: str, default: Any = None, *, rep: bool = False, packed: bool = False) -> Field:
    return Field(name, number, type_, rep, default, packed)


def _r(name: str, number: int, type_: str, *, packed: bool = False) -> Field:
    return Field(name, number, type_, True, None, packed)


_FILLER_AND_PARAMS = [
    (
        "ConvolutionParameter",
        [
            _f("num_output", 1, "uint32"),
            _f("bias_term", 2, "bool", True),
            _r("pad", 3, "uint32"),
            _r("kernel_size", 4, "uint32"),
            _f("group", 5, "uint32", 1),
            _r("stride", 6, "uint32"),
            _f("weight_filler", 7, "FillerParameter"),
            _f("bias_filler", 8, "FillerParameter"),
            _f("pad_h", 9, "uint32", 0),
            _f("pad_w", 10, "uint32", 0),
            _f("kernel_h", 11, "uint32"),
            _f("kernel_w", 12, "uint32"),
            _f("stride_h", 13, "uint32"),
            _f("stride_w", 14, "uint32"),
            _f("engine", 15, "Engine", "DEFAULT"),
            _f("axis", 16, "int32", 1),
            _f("force_nd_im2col", 17, "bool", False),
            _r("dilation", 18, "uint32"),
        ],
    ),
    (
        "PoolingParameter",
        [
            _f("pool", 1, "PoolMethod", "MAX"),
            _f("kernel_size", 2, "uint32"),
            _f("stride", 3, "uint32", 1),
            _f("pad", 4, "uint32", 0),
            _f("kernel_h", 5, "uint32"),
            _f("kernel_w", 6, "uint32"),
            _f("stride_h", 7, "uint32"),
            _f("stride_w", 8, "uint32"),
            _f("pad_h", 9, "uint32", 0),
            _f("pad_w", 10, "uint32", 0),
            _f("engine", 11, "Engine", "DEFAULT"),
            _f("global_pooling", 12, "bool", False),
            _f("round_mode", 13, "RoundMode", "CEIL"),
        ],
    ),
    (
        "InnerProductParameter",
        [
            _f("num_output", 1, "uint32"),
            _f("bias_term", 2, "bool", True),
            _f("weight_filler", 3, "FillerParameter"),
            _f("bias_filler", 4, "FillerParameter"),
            _f("axis", 5, "int32", 1),
            _f("transpose", 6, "bool", False),
        ],
    ),
    (
        "LRNParameter",
        [
            _f("local_size", 1, "uint32", 5),
            _f("alpha", 2, "float", 1.0),
            _f("beta", 3, "float", 0.75),
            _f("norm_region", 4, "NormRegion", "ACROSS_CHANNELS"),
            _f("k", 5, "float", 1.0),
            _f("engine", 6, "Engine", "DEFAULT"),
        ],
    ),
    ("DropoutParameter", [_f("dropout_ratio", 1, "float", 0.5)]),
    ("ReLUParameter", [_f("negative_slope", 1, "float", 0.0), _f("engine", 2, "Engine", "DEFAULT")]),
    ("SigmoidParameter", [_f("engine", 1, "Engine", "DEFAULT")]),
    ("TanHParameter", [_f("engine", 1, "Engine", "DEFAULT")]),
    ("SoftmaxParameter", [_f("engine", 1, "Engine", "DEFAULT"), _f("axis", 2, "int32", 1)]),
    ("ConcatParameter", [_f("concat_dim", 1, "uint32", 1), _f("axis", 2, "int32", 1)]),
    (
        "EltwiseParameter",
        [
            _f("operation", 1, "EltwiseOp", "SUM"),
            _r("coeff", 2, "float"),
            _f("stable_prod_grad", 3, "bool", True),
        ],
    ),
    (
        "BatchNormParameter",
        [
            _f("use_global_stats", 1, "bool", False),
            _f("moving_average_fraction", 2, "float", 0.999),
            _f("eps", 3, "float", 1e-5),
        ],
    ),
    (
        "ScaleParameter",
        [
            _f("axis", 1, "int32", 1),
            _f("num_axes", 2, "int32", 1),
            _f("filler", 3, "FillerParameter"),
            _f("bias_term", 4, "bool", False),
            _f("bias_filler", 5, "FillerParameter"),
        ],
    ),
    ("BiasParameter", [_f("axis", 1, "int32", 1), _f("num_axes", 2, "int32", 1), _f("filler", 3, "FillerParameter")]),
    ("InputParameter", [_r("shape", 1, "BlobShape")]),
    ("ClipParameter", [_f("min", 1, "float", 0.0), _f("max", 2, "float", 0.0)]),
    ("AccuracyParameter", [_f("top_k", 1, "uint32", 1), _f("axis", 2, "int32", 1), _f("ignore_label", 3, "int32")]),
    (
        "LossParameter",
        [
            _f("ignore_label", 1, "int32"),
            _f("normalize", 2, "bool"),
            _f("normalization", 3, "NormalizationMode", "VALID"),
        ],
    ),
    (
        "TransformationParameter",
        [
            _f("scale", 1, "float", 1.0),
            _f("mirror", 2, "bool", False),
            _f("crop_size", 3, "uint32", 0),
            _f("mean_file", 4, "string"),
            _r("mean_value", 5, "float"),
            _f("force_color", 6, "bool", False),
            _f("force_gray", 7, "bool", False),
        ],
    ),
    (
        "DataParameter",
        [
            _f("source", 1, "string"),
            _f("scale", 2, "float", 1.0),
            _f("mean_file", 3, "string"),
            _f("batch_size", 4, "uint32"),
            _f("crop_size", 5, "uint32", 0),
            _f("mirror", 6, "bool", False),
            _f("rand_skip", 7, "uint32", 0),
            _f("backend", 8, "DB", "LEVELDB"),
            _f("force_encoded_color", 9, "bool", False),
            _f("prefetch", 10, "uint32", 4),
        ],
    ),
    (
        "ImageDataParameter",
        [
            _f("source", 1, "string"),
            _f("scale", 2, "float", 1.0),
            _f("mean_file", 3, "string"),
            _f("batch_size", 4, "uint32", 1),
            _f("crop_size", 5, "uint32", 0),
            _f("mirror", 6, "bool", False),
            _f("rand_skip", 7, "uint32", 0),
            _f("shuffle", 8, "bool", False),
            _f("new_height", 9, "uint32", 0),
            _f("new_width", 10, "uint32", 0),
            _f("is_color", 11, "bool", True),
            _f("root_folder", 12, "string", ""),
        ],
    ),
    (
        "WindowDataParameter",
        [
            _f("source", 1, "string"),
            _f("scale", 2, "float", 1.0),
            _f("mean_file", 3, "string"),
            _f("batch_size", 4, "uint32"),
            _f("crop_size", 5, "uint32", 0),
            _f("mirror", 6, "bool", False),
            _f("fg_threshold", 7, "float", 0.5),
            _f("bg_threshold", 8, "float", 0.5),
            _f("fg_fraction", 9, "float", 0.25),
            _f("context_pad", 10, "uint32", 0),
            _f("crop_mode", 11, "string", "warp"),
            _f("cache_images", 12, "bool", False),
            _f("root_folder", 13, "string", ""),
        ],
    ),
    (
        "MemoryDataParameter",
        [
            _f("batch_size", 1, "uint32"),
            _f("channels", 2, "uint32"),
            _f("height", 3, "uint32"),
            _f("width", 4, "uint32"),
        ],
    ),
    ("HDF5DataParameter", [_f("source", 1, "string"), _f("batch_size", 2, "uint32"), _f("shuffle", 3, "bool", False)]),
    ("FlattenParameter", [_f("axis", 1, "int32", 1), _f("end_axis", 2, "int32", -1)]),
    ("ReshapeParameter", [_f("shape", 1, "BlobShape"), _f("axis", 2, "int32", 0), _f("num_axes", 3, "int32", -1)]),
    ("PowerParameter", [_f("power", 1, "float", 1.0), _f("scale", 2, "float", 1.0), _f("shift", 3, "float", 0.0)]),
    ("ArgMaxParameter", [_f("out_max_val", 1, "bool", False), _f("top_k", 2, "uint32", 1), _f("axis", 3, "int32")]),
    ("SliceParameter", [_f("axis", 3, "int32", 1), _r("slice_point", 2, "uint32"), _f("slice_dim", 1, "uint32", 1)]),
    ("ThresholdParameter", [_f("threshold", 1, "float", 0.0)]),
    ("ExpParameter", [_f("base", 1, "float", -1.0), _f("scale", 2, "float", 1.0), _f("shift", 3, "float", 0.0)]),
    ("LogParameter", [_f("base", 1, "float", -1.0), _f("scale", 2, "float", 1.0), _f("shift", 3, "float", 0.0)]),
    ("ELUParameter", [_f("alpha", 1, "float", 1.0)]),
    ("PReLUParameter", [_f("filler", 1, "FillerParameter"), _f("channel_shared", 2, "bool", False)]),
    (
        "DummyDataParameter",
        [
            _r("data_filler", 1, "FillerParameter"),
            _r("shape", 6, "BlobShape"),
            _r("num", 2, "uint32"),
            _r("channels", 3, "uint32"),
            _r("height", 4, "uint32"),
            _r("width", 5, "uint32"),
        ],
    ),
    ("HingeLossParameter", [_f("norm", 1, "int32", 1)]),
    # layer-coverage parameters (issue 17), numbers from BVLC caffe.proto
    ("SwishParameter", [_f("beta", 1, "float", 1.0)]),
    (
        "ReductionParameter",
        [_f("operation", 1, "ReductionOp", "SUM"), _f("axis", 2, "int32", 0), _f("coeff", 3, "float", 1.0)],
    ),
    ("TileParameter", [_f("axis", 1, "int32", 1), _f("tiles", 2, "int32")]),
    (
        "EmbedParameter",
        [
            _f("num_output", 1, "uint32"),
            _f("input_dim", 2, "uint32"),
            _f("bias_term", 3, "bool", True),
            _f("weight_filler", 4, "FillerParameter"),
            _f("bias_filler", 5, "FillerParameter"),
        ],
    ),
    ("CropParameter", [_f("axis", 1, "int32", 2), _r("offset", 2, "uint32")]),
    (
        "MVNParameter",
        [
            _f("normalize_variance", 1, "bool", True),
            _f("across_channels", 2, "bool", False),
            _f("eps", 3, "float", 1e-9),
        ],
    ),
    ("ParameterParameter", [_f("shape", 1, "BlobShape")]),
    (
        "SPPParameter",
        [_f("pyramid_height", 1, "uint32"), _f("pool", 2, "PoolMethod", "MAX"), _f("engine", 6, "Engine", "DEFAULT")],
    ),
    # ports' parameters: weiliu89/caffe (SSD) Permute and Normalize, farmingyard/ShuffleNet ShuffleChannel
    ("PermuteParameter", [_r("order", 1, "uint32")]),
    (
        "NormalizeParameter",
        [
            _f("across_spatial", 1, "bool", True),
            _f("scale_filler", 2, "FillerParameter"),
            _f("channel_shared", 3, "bool", True),
            _f("eps", 4, "float", 1e-10),
        ],
    ),
    ("ShuffleChannelParameter", [_f("group", 1, "uint32", 1)]),
    ("ContrastiveLossParameter", [_f("margin", 1, "float", 1.0), _f("legacy_version", 2, "bool", False)]),
    (
        "RecurrentParameter",
        [
            _f("num_output", 1, "uint32", 0),
            _f("weight_filler", 2, "FillerParameter"),
            _f("bias_filler", 3, "FillerParameter"),
            _f("debug_info", 4, "bool", False),
            _f("expose_hidden", 5, "bool", False),
        ],
    ),
]

MESSAGES: dict[str, list[Field]] = {
    "BlobShape": [_r("dim", 1, "int64", packed=True)],
    "BlobProto": [
        _f("num", 1, "int32", 0),
        _f("channels", 2, "int32", 0),
        _f("height", 3, "int32", 0),
        _f("width", 4, "int32", 0),
        _r("data", 5, "float", packed=True),
        _r("diff", 6, "float", packed=True),
        _f("shape", 7, "BlobShape"),
        _r("double_data", 8, "double", packed=True),
        _r("double_diff", 9, "double", packed=True),
    ],
    "BlobProtoVector": [_r("blobs", 1, "BlobProto")],
    "Datum": [
        _f("channels", 1, "int32"),
        _f("height", 2, "int32"),
        _f("width", 3, "int32"),
        _f("data", 4, "bytes"),
        _f("label", 5, "int32"),
        _r("float_data", 6, "float"),
        _f("encoded", 7, "bool", False),
    ],
    "FillerParameter": [
        _f("type", 1, "string", "constant"),
        _f("value", 2, "float", 0.0),
        _f("min", 3, "float", 0.0),
        _f("max", 4, "float", 1.0),
        _f("mean", 5, "float", 0.0),
        _f("std", 6, "float", 1.0),
        _f("sparse", 7, "int32", -1),
        _f("variance_norm", 8, "VarianceNorm", "FAN_IN"),
    ],
    "ParamSpec": [
        _f("name", 1, "string"),
        _f("share_mode", 2, "DimCheckMode"),
        _f("lr_mult", 3, "float", 1.0),
        _f("decay_mult", 4, "float", 1.0),
    ],
    "NetState": [_f("phase", 1, "Phase", "TEST"), _f("level", 2, "int32", 0), _r("stage", 3, "string")],
    "NetStateRule": [
        _f("phase", 1, "Phase"),
        _f("min_level", 2, "int32"),
        _f("max_level", 3, "int32"),
        _r("stage", 4, "string"),
        _r("not_stage", 5, "string"),
    ],
    "NetParameter": [
        _f("name", 1, "string"),
        _r("layers", 2, "V1LayerParameter"),
        _r("input", 3, "string"),
        _r("input_dim", 4, "int32"),
        _f("force_backward", 5, "bool", False),
        _f("state", 6, "NetState"),
        _f("debug_info", 7, "bool", False),
        _r("input_shape", 8, "BlobShape"),
        _r("layer", 100, "LayerParameter"),
    ],
    "LayerParameter": [
        _f("name", 1, "string"),
        _f("type", 2, "string"),
        _r("bottom", 3, "string"),
        _r("top", 4, "string"),
        _r("loss_weight", 5, "float"),
        _r("param", 6, "ParamSpec"),
        _r("blobs", 7, "BlobProto"),
        _r("include", 8, "NetStateRule"),
        _r("exclude", 9, "NetStateRule"),
        _f("phase", 10, "Phase"),
        _r("propagate_down", 11, "bool"),
        _f("transform_param", 100, "TransformationParameter"),
        _f("loss_param", 101, "LossParameter"),
        _f("accuracy_param", 102, "AccuracyParameter"),
        _f("argmax_param", 103, "ArgMaxParameter"),
        _f("concat_param", 104, "ConcatParameter"),
        _f("contrastive_loss_param", 105, "ContrastiveLossParameter"),
        _f("convolution_param", 106, "ConvolutionParameter"),
        _f("data_param", 107, "DataParameter"),
        _f("dropout_param", 108, "DropoutParameter"),
        _f("dummy_data_param", 109, "DummyDataParameter"),
        _f("eltwise_param", 110, "EltwiseParameter"),
        _f("exp_param", 111, "ExpParameter"),
        _f("hdf5_data_param", 112, "HDF5DataParameter"),
        _f("hinge_loss_param", 114, "HingeLossParameter"),
        _f("image_data_param", 115, "ImageDataParameter"),
        _f("inner_product_param", 117, "InnerProductParameter"),
        _f("lrn_param", 118, "LRNParameter"),
        _f("memory_data_param", 119, "MemoryDataParameter"),
        _f("pooling_param", 121, "PoolingParameter"),
        _f("power_param", 122, "PowerParameter"),
        _f("relu_param", 123, "ReLUParameter"),
        _f("sigmoid_param", 124, "SigmoidParameter"),
        _f("softmax_param", 125, "SoftmaxParameter"),
        _f("slice_param", 126, "SliceParameter"),
        _f("tanh_param", 127, "TanHParameter"),
        _f("threshold_param", 128, "ThresholdParameter"),
        _f("window_data_param", 129, "WindowDataParameter"),
        _f("prelu_param", 131, "PReLUParameter"),
        _f("reshape_param", 133, "ReshapeParameter"),
        _f("log_param", 134, "LogParameter"),
        _f("flatten_param", 135, "FlattenParameter"),
        _f("batch_norm_param", 139, "BatchNormParameter"),
        _f("elu_param", 140, "ELUParameter"),
        _f("bias_param", 141, "BiasParameter"),
        _f("scale_param", 142, "ScaleParameter"),
        _f("input_param", 143, "InputParameter"),
        _f("clip_param", 148, "ClipParameter"),
        _f("mvn_param", 120, "MVNParameter"),
        _f("spp_param", 132, "SPPParameter"),
        _f("reduction_param", 136, "ReductionParameter"),
        _f("embed_param", 137, "EmbedParameter"),
        _f("tile_param", 138, "TileParameter"),
        _f("crop_param", 144, "CropParameter"),
        _f("parameter_param", 145, "ParameterParameter"),
        _f("swish_param", 147, "SwishParameter"),
        _f("recurrent_param", 146, "RecurrentParameter"),
        _f("shuffle_channel_param", 164, "ShuffleChannelParameter"),  # ShuffleNet ports
        _f("permute_param", 202, "PermuteParameter"),  # SSD (weiliu89/caffe)
        _f("norm_param", 206, "NormalizeParameter"),  # SSD (weiliu89/caffe)
    ],
    "V1LayerParameter": [
        _f("layer", 1, "V0LayerParameter"),
        _r("bottom", 2, "string"),
        _r("top", 3, "string"),
        _f("name", 4, "string"),
        _f("type", 5, "LayerType"),
        _r("blobs", 6, "BlobProto"),
        _r("blobs_lr", 7, "float"),
        _r("weight_decay", 8, "float"),
        _f("concat_param", 9, "ConcatParameter"),
        _f("convolution_param", 10, "ConvolutionParameter"),
        _f("data_param", 11, "DataParameter"),
        _f("dropout_param", 12, "DropoutParameter"),
        _f("hdf5_data_param", 13, "HDF5DataParameter"),
        _f("image_data_param", 15, "ImageDataParameter"),
        _f("inner_product_param", 17, "InnerProductParameter"),
        _f("lrn_param", 18, "LRNParameter"),
        _f("pooling_param", 19, "PoolingParameter"),
        _f("window_data_param", 20, "WindowDataParameter"),
        _f("power_param", 21, "PowerParameter"),
        _f("memory_data_param", 22, "MemoryDataParameter"),
        _f("argmax_param", 23, "ArgMaxParameter"),
        _f("eltwise_param", 24, "EltwiseParameter"),
        _f("threshold_param", 25, "ThresholdParameter"),
        _f("dummy_data_param", 26, "DummyDataParameter"),
        _f("accuracy_param", 27, "AccuracyParameter"),
        _f("hinge_loss_param", 29, "HingeLossParameter"),
        _f("relu_param", 30, "ReLUParameter"),
        _f("slice_param", 31, "SliceParameter"),
        _r("include", 32, "NetStateRule"),
        _r("exclude", 33, "NetStateRule"),
        _r("loss_weight", 35, "float"),
        _f("transform_param", 36, "TransformationParameter"),
        _f("tanh_param", 37, "TanHParameter"),
        _f("sigmoid_param", 38, "SigmoidParameter"),
        _f("softmax_param", 39, "SoftmaxParameter"),
        _f("contrastive_loss_param", 40, "ContrastiveLossParameter"),
        _f("exp_param", 41, "ExpParameter"),
        _f("loss_param", 42, "LossParameter"),
        _f("mvn_param", 34, "MVNParameter"),
        _r("param", 1001, "string"),
        _r("blob_share_mode", 1002, "DimCheckMode"),
    ],
    "V0LayerParameter": [
        _f("name", 1, "string"),
        _f("type", 2, "string"),
        _f("num_output", 3, "uint32"),
        _f("biasterm", 4, "bool", True),
        _f("weight_filler", 5, "FillerParameter"),
        _f("bias_filler", 6, "FillerParameter"),
        _f("pad", 7, "uint32", 0),
        _f("kernelsize", 8, "uint32"),
        _f("group", 9, "uint32", 1),
        _f("stride", 10, "uint32", 1),
        _f("pool", 11, "PoolingV0", "MAX"),
        _f("dropout_ratio", 12, "float", 0.5),
        _f("local_size", 13, "uint32", 5),
        _f("alpha", 14, "float", 1.0),
        _f("beta", 15, "float", 0.75),
        _f("source", 16, "string"),
        _f("scale", 17, "float", 1.0),
        _f("meanfile", 18, "string"),
        _f("batchsize", 19, "uint32"),
        _f("cropsize", 20, "uint32", 0),
        _f("mirror", 21, "bool", False),
        _f("k", 22, "float", 1.0),
        _r("blobs", 50, "BlobProto"),
        _r("blobs_lr", 51, "float"),
        _r("weight_decay", 52, "float"),
        _f("rand_skip", 53, "uint32", 0),
        _f("concat_dim", 65, "uint32", 1),
        _f("det_fg_threshold", 54, "float", 0.5),
        _f("det_bg_threshold", 55, "float", 0.5),
        _f("det_fg_fraction", 56, "float", 0.25),
        _f("det_context_pad", 58, "uint32", 0),
        _f("det_crop_mode", 59, "string", "warp"),
        _f("new_num", 60, "int32", 0),
        _f("new_channels", 61, "int32", 0),
        _f("new_height", 62, "int32", 0),
        _f("new_width", 63, "int32", 0),
        _f("shuffle_images", 64, "bool", False),
    ],
    "SolverParameter": [
        _f("train_net", 1, "string"),
        _r("test_net", 2, "string"),
        _r("test_iter", 3, "int32"),
        _f("test_interval", 4, "int32", 0),
        _f("base_lr", 5, "float"),
        _f("display", 6, "int32"),
        _f("max_iter", 7, "int32"),
        _f("lr_policy", 8, "string"),
        _f("gamma", 9, "float"),
        _f("power", 10, "float"),
        _f("momentum", 11, "float"),
        _f("weight_decay", 12, "float"),
        _f("stepsize", 13, "int32"),
        _f("snapshot", 14, "int32", 0),
        _f("snapshot_prefix", 15, "string"),
        _f("snapshot_diff", 16, "bool", False),
        _f("solver_mode", 17, "SolverMode", "GPU"),
        _f("device_id", 18, "int32", 0),
        _f("test_compute_loss", 19, "bool", False),
        _f("random_seed", 20, "int64", -1),
        _f("train_net_param", 21, "NetParameter"),
        _r("test_net_param", 22, "NetParameter"),
        _f("debug_info", 23, "bool", False),
        _f("net", 24, "string"),
        _f("net_param", 25, "NetParameter"),
        _f("train_state", 26, "NetState"),
        _r("test_state", 27, "NetState"),
        _f("snapshot_after_train", 28, "bool", True),
        _f("regularization_type", 29, "string", "L2"),
        _f("solver_type", 30, "SolverType", "SGD"),
        _f("delta", 31, "float", 1e-8),
        _f("test_initialization", 32, "bool", True),
        _f("average_loss", 33, "int32", 1),
        _r("stepvalue", 34, "int32"),
        _f("clip_gradients", 35, "float", -1.0),
        _f("iter_size", 36, "int32", 1),
        _f("snapshot_format", 37, "SnapshotFormat", "BINARYPROTO"),
        _f("rms_decay", 38, "float", 0.99),
        _f("momentum2", 39, "float", 0.999),
        _f("type", 40, "string", "SGD"),
        _f("layer_wise_reduce", 41, "bool", True),
        _r("weights", 42, "string"),
    ],
    "SolverState": [
        _f("iter", 1, "int32", 0),
        _f("learned_net", 2, "string"),
        _r("history", 3, "BlobProto"),
        _f("current_step", 4, "int32", 0),
        # crema's own: JSON with the data layers' positions and the RNG states, so that a resumed run
        # sees exactly the batches an uninterrupted one would. Caffe skips the unknown field.
        _f("crema_resume", 1000, "bytes"),
    ],
}
MESSAGES.update({name: fields for name, fields in _FILLER_AND_PARAMS})

_SCALAR_ZERO = {"double": 0.0, "float": 0.0, "bool": False, "string": "", "bytes": b""}

BY_NAME: dict[str, dict[str, Field]] = {m: {f.name: f for f in fs} for m, fs in MESSAGES.items()}
BY_NUMBER: dict[str, dict[int, Field]] = {m: {f.number: f for f in fs} for m, fs in MESSAGES.items()}
ENUM_NAMES: dict[str, dict[int, str]] = {e: {v: k for k, v in vals.items()} for e, vals in ENUMS.items()}


def field_default(field: Field) -> Any:
    """The value an absent singular scalar/enum field reads as (caffe.proto default or zero)."""
    if field.default is not None:
        return field.default
    if field.is_enum:
        return ENUM_NAMES[field.type].get(0, 0)
    return _SCALAR_ZERO.get(field.type, 0)


class Message:
    """One protobuf message of a named type from `MESSAGES`, with presence tracking.

    Set fields live in `self._values` (insertion order is kept so encoders write them in the order
    read). Reading an absent field gives its default; reading an absent repeated field gives a new,
    stored, empty list; reading an absent sub-message gives an unstored default instance (use
    `mutable(name)` to create and store one).
    """

    __slots__ = ("_origin", "_type", "_values")

    def __init__(self, type_name: str, /, **values: Any) -> None:
        if type_name not in MESSAGES:
            raise KeyError(f"unknown message type {type_name!r}")
        object.__setattr__(self, "_type", type_name)
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_origin", None)
        for k, v in values.items():
            setattr(self, k, v)

    @property
    def type_name(self) -> str:
        return self._type

    @property
    def origin(self) -> str | None:
        """Where the message was read, 'FILE:LINE' (layers parsed from a prototxt file; kept by copies), else None."""
        return self._origin

    def set_origin(self, where: str | None) -> None:
        object.__setattr__(self, "_origin", where)

    @property
    def fields(self) -> dict[str, Field]:
        return BY_NAME[self._type]

    def _field(self, name: str) -> Field:
        try:
            return BY_NAME[self._type][name]
        except KeyError:
            raise AttributeError(f"{self._type} has no field {name!r}") from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        field = self._field(name)
        values = self._values
        if name in values:
            return values[name]
        if field.repeated:
            values[name] = []
            return values[name]
        if field.is_message:
            return Message(field.type)
        return field_default(field)

    def __setattr__(self, name: str, value: Any) -> None:
        field = self._field(name)
        if field.repeated:
            value = value if isinstance(value, list) or hasattr(value, "dtype") else list(value)
        self._values[name] = value

    def mutable(self, name: str) -> Message:
        """The sub-message `name`, created and stored if absent."""
        field = self._field(name)
        if not field.is_message or field.repeated:
            raise TypeError(f"{self._type}.{name} is not a singular message field")
        if name not in self._values:
            self._values[name] = Message(field.type)
        return self._values[name]

    def add(self, field_name: str, /, **values: Any) -> Message:
        """Append a new sub-message to the repeated message field `field_name` and return it."""
        field = self._field(field_name)
        if not (field.is_message and field.repeated):
            raise TypeError(f"{self._type}.{field_name} is not a repeated message field")
        msg = Message(field.type, **values)
        getattr(self, field_name).append(msg)
        return msg

    def has(self, name: str) -> bool:
        """Presence: a singular field was set; a repeated field has at least one element."""
        self._field(name)
        if name not in self._values:
            return False
        v = self._values[name]
        return len(v) > 0 if self._field(name).repeated else True

    def clear(self, name: str) -> None:
        self._field(name)
        self._values.pop(name, None)

    def set_fields(self) -> Iterator[tuple[Field, Any]]:
        """(field, value) for every present field, in the order they were set."""
        for name, value in self._values.items():
            field = BY_NAME[self._type][name]
            if field.repeated and len(value) == 0:
                continue
            yield field, value

    def copy(self) -> Message:
        """A deep copy (numpy arrays are copied too)."""
        out = Message(self._type)
        out.set_origin(self._origin)
        for field, value in self.set_fields():
            if field.repeated:
                if hasattr(value, "dtype"):
                    value = value.copy()
                else:
                    value = [v.copy() if isinstance(v, Message) else v for v in value]
            elif isinstance(value, Message):
                value = value.copy()
            out._values[field.name] = value
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message) or other._type != self._type:
            return NotImplemented
        a = {f.name: v for f, v in self.set_fields()}
        b = {f.name: v for f, v in other.set_fields()}
        if a.keys() != b.keys():
            return False
        for k, x in a.items():
            y = b[k]
            if hasattr(x, "dtype") or hasattr(y, "dtype"):
                if not np.array_equal(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)):
                    return False
            elif x != y:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = []
        for field, value in self.set_fields():
            if hasattr(value, "dtype"):
                parts.append(f"{field.name}=<{len(value)} values>")
            else:
                parts.append(f"{field.name}={value!r}")
        return f"{self._type}({', '.join(parts)})"
