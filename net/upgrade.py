"""Upgrades of old net / solver definitions to the current format, and phase filtering.

Caffe upgrades every NetParameter it reads (prototxt and caffemodel alike) in this order
(caffe_facts §7.1), and so does `upgrade_net`:

    1. V0 -> V1     `layers { layer { type: "conv" ... } }`: padding layers folded into the next
                    conv/pool layer, V0 type strings -> LayerType enum, flat V0 fields -> *_param
    2. data         V1 DATA/IMAGE_DATA/WINDOW_DATA: scale, mean_file, crop_size, mirror moved
                    from the data parameter into transform_param
    3. V1 -> V2     `layers { type: CONVOLUTION blobs_lr: 1 }` -> `layer { type: "Convolution"
                    param { lr_mult: 1 } }`
    4. input        `input: "data"` + `input_dim`/`input_shape` -> a first layer
                    `layer { name: "input" type: "Input" top: "data" input_param { shape {...} } }`
    5. BatchNorm    a BatchNorm layer with exactly 3 ParamSpecs gets lr_mult = decay_mult = 0

`upgrade_solver` maps the deprecated `solver_type` enum to the `type` string and fills the default
`snapshot_prefix`. `filter_net` keeps the layers whose include/exclude rules match a phase, level
and stages (§5 step 3). None of these modify their argument; results share BlobProto messages
(weights) with it. Problems raise ValueError naming the source file and the layer.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from .schema import BY_NAME, V1_TYPE_NAMES, Field, Message

__all__ = ["filter_net", "state_meets_rule", "upgrade_net", "upgrade_solver"]

# V0 type string -> V1 LayerType enum name (Caffe's UpgradeV0LayerType).
V0_TYPES: dict[str, str] = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

_CONV, _IP, _POOL = "convolution_param", "inner_product_param", "pooling_param"
_DATA_PARAMS = {
    "data": "data_param",
    "hdf5_data": "hdf5_data_param",
    "images": "image_data_param",
    "window_data": "window_data_param",
}

# V0 field -> {V0 layer type: (V1 sub-message, field in it)}. A V0 field set on a layer type that
# has no route is dropped with a warning, as Caffe logs and continues.
_V0_ROUTES: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {"conv": (_CONV, "num_output"), "innerproduct": (_IP, "num_output")},
    "biasterm": {"conv": (_CONV, "bias_term"), "innerproduct": (_IP, "bias_term")},
    "weight_filler": {"conv": (_CONV, "weight_filler"), "innerproduct": (_IP, "weight_filler")},
    "bias_filler": {"conv": (_CONV, "bias_filler"), "innerproduct": (_IP, "bias_filler")},
    "pad": {"conv": (_CONV, "pad"), "pool": (_POOL, "pad")},
    "kernelsize": {"conv": (_CONV, "kernel_size"), "pool": (_POOL, "kernel_size")},
    "group": {"conv": (_CONV, "group")},
    "stride": {"conv": (_CONV, "stride"), "pool": (_POOL, "stride")},
    "pool": {"pool": (_POOL, "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {t: (p, "source") for t, p in _DATA_PARAMS.items()},
    "batchsize": {t: (p, "batch_size") for t, p in _DATA_PARAMS.items()},
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
}
# V0 fields that go to transform_param whatever the layer type.
_V0_TRANSFORM = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size", "mirror": "mirror"}
_V0_COPIED = ("blobs", "blobs_lr", "weight_decay")
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
_DATA_UPGRADE = {"DATA": "data_param", "IMAGE_DATA": "image_data_param", "WINDOW_DATA": "window_data_param"}
_SOLVER_TYPES = {
    "SGD": "SGD",
    "NESTEROV": "Nesterov",
    "ADAGRAD": "AdaGrad",
    "RMSPROP": "RMSProp",
    "ADADELTA": "AdaDelta",
    "ADAM": "Adam",
}


def _copy(msg: Message) -> Message:
    """A deep copy that shares BlobProto messages (weights can be hundreds of MB)."""
    if msg.type_name == "BlobProto":
        return msg
    out = Message(msg.type_name)
    out.set_origin(msg.origin)
    for field, value in msg.set_fields():
        setattr(out, field.name, _copy_value(field, value))
    return out


def _copy_value(field: Field, value: Any) -> Any:
    if field.is_message:
        return [_copy(v) for v in value] if field.repeated else _copy(value)
    return value.copy() if field.repeated else value


def _where(source: str) -> str:
    return f"{source}: " if source else ""


# -- 1. V0 -> V1 ----------------------------------------------------------------------------


def _remove_padding_layers(layers: list[Message], inputs: list[str], source: str) -> list[Message]:
    """Fold each V0 "padding" layer into its consumer (a conv/pool layer with one bottom)."""
    producer: dict[str, int] = {name: -1 for name in inputs}
    kept: list[Message] = []
    for i, conn in enumerate(layers):
        v0 = conn.layer
        if v0.type != "padding":
            kept.append(conn)
        for j, blob in enumerate(conn.bottom):
            if blob not in producer:
                raise ValueError(
                    f"{_where(source)}V0 layer '{v0.name}': bottom '{blob}' is not a net input "
                    f"nor the top of an earlier layer"
                )
            src_index = producer[blob]
            if src_index < 0 or layers[src_index].layer.type != "padding":
                continue
            pad_layer = layers[src_index]
            if v0.type not in ("conv", "pool"):
                raise ValueError(
                    f"{_where(source)}V0 padding layer '{pad_layer.layer.name}' feeds layer "
                    f"'{v0.name}' of type '{v0.type}'; only conv and pool layers can absorb padding"
                )
            if len(conn.bottom) != 1 or len(pad_layer.bottom) != 1 or len(pad_layer.top) != 1:
                raise ValueError(
                    f"{_where(source)}V0 padding layer '{pad_layer.layer.name}' and its consumer "
                    f"'{v0.name}' must each have exactly one bottom (and the padding one top)"
                )
            kept[-1].mutable("layer").pad = pad_layer.layer.pad
            kept[-1].bottom[j] = pad_layer.bottom[0]
        for blob in conn.top:
            producer[blob] = i
    return kept


def _v0_layer_to_v1(conn: Message, source: str) -> Message:
    """One V1LayerParameter from a V1 connection holding a nested V0 layer."""
    out = Message("V1LayerParameter")
    if conn.bottom:
        out.bottom = list(conn.bottom)
    if conn.top:
        out.top = list(conn.top)
    v0 = conn.layer
    ltype = v0.type
    if v0.has("name"):
        out.name = v0.name
    if v0.has("type"):
        if ltype not in V0_TYPES:
            raise ValueError(
                f"{_where(source)}V0 layer '{v0.name}' has unknown type '{ltype}' "
                f"(known: {', '.join(sorted(V0_TYPES))})"
            )
        out.type = V0_TYPES[ltype]
    for field, value in v0.set_fields():
        name = field.name
        if name in ("name", "type"):
            continue
        if name in _V0_COPIED:
            setattr(out, name, list(value))
        elif name in _V0_TRANSFORM:
            setattr(out.mutable("transform_param"), _V0_TRANSFORM[name], value)
        elif ltype in _V0_ROUTES.get(name, {}):
            sub_name, target = _V0_ROUTES[name][ltype]
            sub = out.mutable(sub_name)
            target_field = sub.fields[target]
            if target_field.repeated:
                getattr(sub, target).append(value)
            else:
                setattr(sub, target, _copy(value) if isinstance(value, Message) else value)
        else:
            warnings.warn(
                f"{_where(source)}V0 layer '{v0.name}': parameter '{name}' does not apply to layer type "
                f"'{ltype}'; dropped",
                stacklevel=3,
            )
    return out


def _upgrade_v0(net: Message, source: str) -> None:
    """In place on `net` (already a private copy): nested V0 layers -> V1 layers."""
    layers = _remove_padding_layers(net.layers, list(net.input), source)
    net.layers = [_v0_layer_to_v1(conn, source) if conn.has("layer") else conn for conn in layers]


# -- 2. data transformation fields ------------------------------------------------------------


def _upgrade_data_transform(net: Message) -> None:
    """Move scale/mean_file/crop_size/mirror of V1 data layers into transform_param (in place)."""
    for layer in net.layers:
        param_name = _DATA_UPGRADE.get(layer.type)
        if param_name is None or not layer.has(param_name):
            continue
        param = getattr(layer, param_name)
        for name in _TRANSFORM_FIELDS:
            if param.has(name):
                setattr(layer.mutable("transform_param"), name, getattr(param, name))
                param.clear(name)


# -- 3. V1 -> V2 ----------------------------------------------------------------------------


def _param_spec(layer: Message, i: int) -> Message:
    while len(layer.param) <= i:
        layer.add("param")
    return layer.param[i]


def _v1_layer_to_v2(v1: Message, source: str) -> Message:
    out = Message("LayerParameter")
    out.set_origin(v1.origin)
    layer_fields = BY_NAME["LayerParameter"]
    for field, value in v1.set_fields():
        name = field.name
        if name == "type":
            if value not in V1_TYPE_NAMES:
                raise ValueError(f"{_where(source)}V1 layer '{v1.name}' has unknown type {value!r}")
            out.type = V1_TYPE_NAMES[value]
        elif name == "layer":
            warnings.warn(f"{_where(source)}V1 layer '{v1.name}' still holds a V0 layer; ignored", stacklevel=3)
        elif name in ("param", "blob_share_mode", "blobs_lr", "weight_decay"):
            target = {
                "param": "name",
                "blob_share_mode": "share_mode",
                "blobs_lr": "lr_mult",
                "weight_decay": "decay_mult",
            }[name]
            for i, v in enumerate(value):
                setattr(_param_spec(out, i), target, float(v) if target.endswith("mult") else v)
        elif name in layer_fields:
            setattr(out, name, value)
        else:
            raise ValueError(
                f"{_where(source)}V1 layer '{v1.name}': field '{name}' has no current-format equivalent in this build"
            )
    return out


def _upgrade_v1(net: Message, source: str) -> None:
    if net.layer:
        raise ValueError(
            f"{_where(source)}the net has both 'layer' fields (current format) and 'layers' fields "
            f"(V1 format); Caffe refuses such files. Rewrite the 'layers {{ type: ENUM }}' entries "
            f"as 'layer {{ type: \"Name\" }}' (or remove the 'layer' entries)"
        )
    net.layer = [_v1_layer_to_v2(v1, source) for v1 in net.layers]
    net.clear("layers")


# -- 4. input fields, 5. BatchNorm -----------------------------------------------------------


def _upgrade_input(net: Message, source: str) -> None:
    inputs = list(net.input)
    if not inputs:
        if net.input_dim or net.input_shape:
            raise ValueError(f"{_where(source)}the net gives input_dim/input_shape but no 'input' names")
        return
    shapes = list(net.input_shape)
    dims = list(net.input_dim)
    if shapes and len(shapes) != len(inputs):
        raise ValueError(
            f"{_where(source)}{len(inputs)} inputs ({', '.join(inputs)}) but {len(shapes)} input_shape "
            f"entries; give one input_shape per input"
        )
    if not shapes and dims and len(dims) != 4 * len(inputs):
        raise ValueError(
            f"{_where(source)}{len(inputs)} inputs ({', '.join(inputs)}) need {4 * len(inputs)} "
            f"input_dim values (N, C, H, W per input), got {len(dims)}"
        )
    if shapes or dims:
        layer = Message("LayerParameter", name="input", type="Input", top=inputs)
        input_param = layer.mutable("input_param")
        for i in range(len(inputs)):
            if shapes:
                input_param.shape.append(_copy(shapes[i]))
            else:
                input_param.add("shape", dim=dims[4 * i : 4 * i + 4])
        net.layer = [layer, *net.layer]
    for name in ("input", "input_shape", "input_dim"):
        net.clear(name)


def _upgrade_batch_norm(net: Message) -> None:
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


def upgrade_net(param: Message, source: str = "") -> Message:
    """The current-format (V2) equivalent of NetParameter `param` (caffe_facts §7.1).

    `source` (a file name) prefixes error messages. Raises ValueError for nets Caffe rejects
    (both `layer` and `layers`, malformed legacy inputs, unknown V0/V1 layer types).
    """
    if param.type_name != "NetParameter":
        raise TypeError(f"upgrade_net needs a NetParameter, got {param.type_name}")
    net = _copy(param)
    if any(conn.has("layer") for conn in net.layers):
        _upgrade_v0(net, source)
    _upgrade_data_transform(net)
    if net.layers:
        _upgrade_v1(net, source)
    if net.input or net.input_dim or net.input_shape:
        _upgrade_input(net, source)
    _upgrade_batch_norm(net)
    return net


def upgrade_solver(param: Message, source: str = "") -> Message:
    """The current-format equivalent of SolverParameter `param` (caffe_facts §7.1 item 6).

    `solver_type: ADAM` -> `type: "Adam"` (both given is an error). With a `source` file name,
    an absent `snapshot_prefix` becomes that path without its extension, and a prefix naming an
    existing directory gets the file's stem appended.
    """
    if param.type_name != "SolverParameter":
        raise TypeError(f"upgrade_solver needs a SolverParameter, got {param.type_name}")
    solver = _copy(param)
    if solver.has("solver_type"):
        if solver.has("type"):
            raise ValueError(
                f"{_where(source)}both 'solver_type' (deprecated enum) and 'type' (string) are set; "
                f'keep only type: "{_SOLVER_TYPES.get(solver.solver_type, "SGD")}"'
            )
        if solver.solver_type not in _SOLVER_TYPES:
            raise ValueError(f"{_where(source)}unknown solver_type {solver.solver_type!r}")
        solver.type = _SOLVER_TYPES[solver.solver_type]
        solver.clear("solver_type")
    if source:
        if not solver.has("snapshot_prefix"):
            solver.snapshot_prefix = os.path.splitext(source)[0]
        elif os.path.isdir(solver.snapshot_prefix):
            stem = os.path.splitext(os.path.basename(source))[0]
            solver.snapshot_prefix = os.path.join(solver.snapshot_prefix, stem)
    return solver


# -- phase filtering -------------------------------------------------------------------------


def state_meets_rule(state: Message, rule: Message) -> bool:
    """Caffe's StateMeetsRule: does NetState `state` satisfy NetStateRule `rule`?"""
    if rule.has("phase") and rule.phase != state.phase:
        return False
    if rule.has("min_level") and state.level < rule.min_level:
        return False
    if rule.has("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def _phase_name(phase: str) -> str:
    name = str(phase).upper()
    if name not in ("TRAIN", "TEST"):
        raise ValueError(f"phase must be 'TRAIN' or 'TEST', got {phase!r}")
    return name


def filter_net(param: Message, phase: str = "TEST", level: int = 0, stages: tuple[str, ...] = ()) -> Message:
    """The layers of upgraded NetParameter `param` that run in `phase` at `level` with `stages`.

    Returns a new NetParameter whose `state` is the file's state with phase and level replaced
    and `stages` appended (as Caffe's Net constructor does). A layer with no rules is kept; with
    include rules it is kept iff some rule is met; with exclude rules it is dropped iff some rule
    is met; a layer with both kinds of rules is a ValueError.
    """
    if param.layers:
        raise ValueError("filter_net needs a current-format net; this one has V1 'layers': call upgrade_net first")
    out = Message("NetParameter")
    for field, value in param.set_fields():
        if field.name != "layer":
            setattr(out, field.name, _copy_value(field, value))
    state = out.mutable("state")
    state.phase = _phase_name(phase)
    state.level = int(level)
    state.stage = [*state.stage, *stages]
    kept = []
    for layer in param.layer:
        if layer.include and layer.exclude:
            raise ValueError(
                f"layer '{layer.name}' ({layer.type}) has both include and exclude rules; "
                f"specify either include rules or exclude rules, not both"
            )
        if layer.include:
            included = any(state_meets_rule(state, rule) for rule in layer.include)
        else:
            included = not any(state_meets_rule(state, rule) for rule in layer.exclude)
        if included:
            kept.append(_copy(layer))
    out.layer = kept
    return out
