"""Tests for net.upgrade: V0/V1 -> current format, legacy inputs, BatchNorm, solver, phase filtering."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from net.prototxt_loader import format_text, load_net_prototxt, load_solver_prototxt, parse_text
from net.schema import Message
from net.upgrade import filter_net, state_meets_rule, upgrade_net, upgrade_solver
from tests.conftest import ROOT

LENET = ROOT / "models/lenet/deploy.prototxt"
LENET_V1 = ROOT / "tests/data/lenet_v1.prototxt"
LENET_TRAIN_TEST = ROOT / "examples/mnist/lenet_train_test.prototxt"
LENET_SOLVER = ROOT / "examples/mnist/lenet_solver.prototxt"


def net(text: str) -> Message:
    return parse_text(text, "NetParameter")


V1_LENET = """
name: "LeNet"
input: "data"
input_dim: 64 input_dim: 1 input_dim: 28 input_dim: 28
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
                      weight_filler { type: "xavier" } bias_filler { type: "constant" } }
}
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
         pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "pool1" top: "ip1" blobs_lr: 1 blobs_lr: 2
         inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }
layers { name: "prob" type: SOFTMAX bottom: "ip1" top: "prob" }
"""

V2_LENET = """
name: "LeNet"
layer { name: "input" type: "Input" top: "data" input_param { shape: { dim: 64 dim: 1 dim: 28 dim: 28 } } }
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
                      weight_filler { type: "xavier" } bias_filler { type: "constant" } }
}
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "prob" type: "Softmax" bottom: "ip1" top: "prob" }
"""


# -- V1 -> V2 and inputs ---------------------------------------------------------------------


def test_v1_lenet_upgrades_to_its_v2_twin():
    upgraded = upgrade_net(net(V1_LENET))
    assert upgraded == net(V2_LENET)
    assert not upgraded.has("layers") and not upgraded.has("input") and not upgraded.has("input_dim")


def test_shipped_v1_lenet_equals_shipped_deploy():
    v1 = load_net_prototxt(LENET_V1)
    v2 = load_net_prototxt(LENET)
    assert v1.layer[0].name == "input"
    v2.layer[0].name = "input"  # the upgrade names the Input layer "input"; the deploy file calls it "data"
    assert v1 == v2


def test_input_shape_form():
    text = V1_LENET.replace(
        "input_dim: 64 input_dim: 1 input_dim: 28 input_dim: 28", "input_shape { dim: 64 dim: 1 dim: 28 dim: 28 }"
    )
    assert upgrade_net(net(text)) == net(V2_LENET)


def test_input_upgrade_on_a_v2_net_with_two_inputs():
    upgraded = upgrade_net(
        net(
            'input: "a" input: "b" input_shape { dim: 1 dim: 3 } input_shape { dim: 2 } '
            'layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "c" }'
        )
    )
    first = upgraded.layer[0]
    assert (first.name, first.type, first.top) == ("input", "Input", ["a", "b"])
    assert [s.dim for s in first.input_param.shape] == [[1, 3], [2]]
    assert [layer.name for layer in upgraded.layer] == ["input", "cat"]


def test_inputs_without_shapes_are_dropped():
    upgraded = upgrade_net(net('input: "data" layer { name: "r" type: "ReLU" bottom: "data" top: "r" }'))
    assert [layer.name for layer in upgraded.layer] == ["r"] and not upgraded.has("input")


def test_bad_legacy_input_declarations():
    with pytest.raises(ValueError, match=r"deploy.prototxt: 1 inputs \(data\) need 4 input_dim values .* got 3"):
        upgrade_net(net('input: "data" input_dim: 1 input_dim: 2 input_dim: 3'), "deploy.prototxt")
    with pytest.raises(ValueError, match="2 inputs .* but 1 input_shape"):
        upgrade_net(net('input: "a" input: "b" input_shape { dim: 1 }'))
    with pytest.raises(ValueError, match="no 'input' names"):
        upgrade_net(net("input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4"))


def test_layer_and_layers_together_is_rejected_naming_the_source():
    text = 'layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }'
    with pytest.raises(ValueError, match=r"^old.prototxt: the net has both 'layer' .* and 'layers'"):
        upgrade_net(net(text), "old.prototxt")


def test_v1_params_rules_loss_weights_and_blobs_carry_over():
    v1 = net("""
      layers {
        name: "ip" type: INNER_PRODUCT bottom: "x" top: "y"
        param: "w" param: "b" blob_share_mode: PERMISSIVE
        blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 blobs_lr: 3
        include { phase: TRAIN min_level: 1 stage: "s" } exclude { not_stage: "t" }
        loss_weight: 0.5
        inner_product_param { num_output: 3 }
        blobs { shape { dim: 3 } data: [1, 2, 3] }
      }
      layers { name: "l" type: SOFTMAX_LOSS bottom: "y" bottom: "label" top: "loss" loss_param { normalize: false } }
      layers { name: "n" type: NONE }
    """)
    layer, loss, none = upgrade_net(v1).layer
    assert layer.type == "InnerProduct" and loss.type == "SoftmaxWithLoss" and none.type == ""
    specs = [(p.name, p.share_mode, p.lr_mult, p.decay_mult) for p in layer.param]
    assert specs == [("w", "PERMISSIVE", 1.0, 1.0), ("b", "STRICT", 2.0, 0.0), ("", "STRICT", 3.0, 1.0)]
    assert [p.has("share_mode") for p in layer.param] == [True, False, False]
    assert layer.include[0].min_level == 1 and layer.include[0].stage == ["s"] and layer.exclude[0].not_stage == ["t"]
    assert layer.loss_weight == [0.5] and layer.inner_product_param.num_output == 3
    assert list(layer.blobs[0].data) == [1.0, 2.0, 3.0]
    assert loss.loss_param.has("normalize") and loss.loss_param.normalize is False


def test_upgrade_does_not_modify_its_argument_and_shares_blobs():
    original = net(V1_LENET)
    original.layers[0].blobs.append(Message("BlobProto", data=np.ones(4, np.float32)))
    before = format_text(original)
    upgraded = upgrade_net(original)
    assert format_text(original) == before
    assert upgraded.layer[1].blobs[0] is original.layers[0].blobs[0]


def test_current_format_net_is_unchanged():
    current = load_net_prototxt(LENET_TRAIN_TEST, upgrade=False)
    assert upgrade_net(current) == current


# -- data transform, V0 ----------------------------------------------------------------------


def test_data_transform_upgrade():
    v1 = net("""
      layers { name: "d" type: DATA top: "data"
               data_param { source: "db" batch_size: 4 scale: 0.5 mean_file: "m.binaryproto" crop_size: 3 mirror: true }
             }
      layers { name: "i" type: IMAGE_DATA top: "img" image_data_param { source: "list.txt" mirror: false } }
    """)
    data, images = upgrade_net(v1).layer
    assert format_text(data.transform_param) == 'scale: 0.5\nmean_file: "m.binaryproto"\ncrop_size: 3\nmirror: true\n'
    assert format_text(data.data_param) == 'source: "db"\nbatch_size: 4\n'
    assert images.transform_param.has("mirror") and not images.image_data_param.has("mirror")


V0_NET = """
name: "old"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers {
  layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 group: 1 biasterm: false
          weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 } bottom: "pool1" top: "norm1" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "norm1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 10 } bottom: "norm1" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""

V0_AS_V2 = """
name: "old"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 bias_term: false weight_filler { type: "gaussian" std: 0.01 }
                            pad: 2 kernel_size: 3 group: 1 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 } }
layer { name: "drop" type: "Dropout" bottom: "norm1" top: "norm1" dropout_param { dropout_ratio: 0.3 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_v0_net_with_padding_layer():
    assert upgrade_net(net(V0_NET)) == net(V0_AS_V2)


def test_v0_data_layers_and_transform_fields():
    v0 = net("""
      layers { layer { name: "d" type: "data" source: "train_db" batchsize: 256 meanfile: "mean.binaryproto"
                       cropsize: 227 mirror: true scale: 0.5 rand_skip: 7 } top: "data" top: "label" }
      layers { layer { name: "im" type: "images" source: "list.txt" batchsize: 2 shuffle_images: true new_height: 9
                       new_width: 8 } top: "im" top: "l2" }
      layers { layer { name: "w" type: "window_data" det_fg_threshold: 0.6 det_crop_mode: "square"
                       det_context_pad: 16 } top: "w" top: "l3" }
      layers { layer { name: "cat" type: "concat" concat_dim: 2 } bottom: "data" bottom: "im" top: "cat" }
    """)
    data, images, window, cat = upgrade_net(v0).layer
    assert data.type == "Data" and images.type == "ImageData" and window.type == "WindowData"
    assert format_text(data.data_param) == 'source: "train_db"\nbatch_size: 256\nrand_skip: 7\n'
    assert (data.transform_param.mean_file, data.transform_param.crop_size) == ("mean.binaryproto", 227)
    assert (data.transform_param.mirror, data.transform_param.scale) == (True, 0.5)
    ip = images.image_data_param
    assert (ip.source, ip.batch_size, ip.shuffle, ip.new_height, ip.new_width) == ("list.txt", 2, True, 9, 8)
    wp = window.window_data_param
    assert (wp.fg_threshold, wp.crop_mode, wp.context_pad) == (np.float32(0.6), "square", 16)
    assert cat.concat_param.concat_dim == 2


def test_v0_errors():
    with pytest.raises(ValueError, match=r"a.prototxt: V0 layer 'x' has unknown type 'warp'"):
        upgrade_net(net('layers { layer { name: "x" type: "warp" } }'), "a.prototxt")
    with pytest.raises(ValueError, match="only conv and pool layers can absorb padding"):
        upgrade_net(
            net(
                'input: "d" layers { layer { name: "p" type: "padding" pad: 1 } bottom: "d" top: "p" } '
                'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }'
            )
        )
    with pytest.raises(ValueError, match="bottom 'nowhere' is not a net input"):
        upgrade_net(net('layers { layer { name: "r" type: "relu" } bottom: "nowhere" top: "r" }'))


def test_v0_parameter_on_the_wrong_layer_type_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        upgraded = upgrade_net(net('layers { layer { name: "r" type: "relu" num_output: 3 } top: "r" }'))
    assert upgraded.layer[0].type == "ReLU"
    assert any("parameter 'num_output' does not apply to layer type 'relu'" in str(w.message) for w in caught)


# -- BatchNorm --------------------------------------------------------------------------------


def test_batch_norm_with_three_param_specs_is_frozen():
    upgraded = upgrade_net(
        net("""
      layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 2 } param { } }
      layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } }
    """)
    )
    bn, bn2 = upgraded.layer
    assert [(p.lr_mult, p.decay_mult) for p in bn.param] == [(0.0, 0.0)] * 3
    assert bn2.param[0].lr_mult == 1.0


# -- solver -----------------------------------------------------------------------------------


def test_solver_type_enum_becomes_type_string():
    for enum, name in [
        ("SGD", "SGD"),
        ("NESTEROV", "Nesterov"),
        ("ADAGRAD", "AdaGrad"),
        ("RMSPROP", "RMSProp"),
        ("ADADELTA", "AdaDelta"),
        ("ADAM", "Adam"),
    ]:
        solver = upgrade_solver(parse_text(f"solver_type: {enum}", "SolverParameter"))
        assert solver.type == name and not solver.has("solver_type")
    with pytest.raises(ValueError, match=r"s.prototxt: both 'solver_type' .* and 'type'"):
        upgrade_solver(parse_text('solver_type: ADAM type: "Adam"', "SolverParameter"), "s.prototxt")


def test_snapshot_prefix_defaults(tmp_path):
    solver_file = str(tmp_path / "my_solver.prototxt")
    assert upgrade_solver(Message("SolverParameter"), solver_file).snapshot_prefix == str(tmp_path / "my_solver")
    given = Message("SolverParameter", snapshot_prefix=str(tmp_path))
    assert upgrade_solver(given, solver_file).snapshot_prefix == str(tmp_path / "my_solver")
    kept = Message("SolverParameter", snapshot_prefix="snap/lenet")
    assert upgrade_solver(kept, solver_file).snapshot_prefix == "snap/lenet"
    assert not upgrade_solver(Message("SolverParameter")).has("snapshot_prefix")


def test_load_solver_prototxt_applies_the_prefix_rule(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "n.prototxt"\nsolver_type: NESTEROV\n')
    solver = load_solver_prototxt(path)
    assert (solver.type, solver.snapshot_prefix) == ("Nesterov", str(tmp_path / "solver"))
    assert load_solver_prototxt(LENET_SOLVER).snapshot_prefix == "examples/mnist/lenet"


# -- phase filtering --------------------------------------------------------------------------


def names(param: Message) -> list[str]:
    return [layer.name for layer in param.layer]


def test_filter_lenet_train_test_by_phase():
    param = load_net_prototxt(LENET_TRAIN_TEST)
    common = ["conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2"]
    train = filter_net(param, "TRAIN")
    test = filter_net(param, "test")
    assert names(train) == ["mnist", *common, "loss"]
    assert names(test) == ["mnist", *common, "accuracy", "loss"]
    assert train.layer[0].data_param.batch_size == 64 and test.layer[0].data_param.batch_size == 100
    assert train.state.phase == "TRAIN" and test.state.phase == "TEST" and test.state.has("phase")
    assert len(param.layer) == 11  # the argument is left alone


FILTER_NET = """
state { stage: "file" }
layer { name: "all" }
layer { name: "train" include { phase: TRAIN } }
layer { name: "not_test" exclude { phase: TEST } }
layer { name: "level_ge_2" include { min_level: 2 } }
layer { name: "level_le_1" include { max_level: 1 } }
layer { name: "excl_level_ge_2" exclude { min_level: 2 } }
layer { name: "stage_a" include { stage: "a" } }
layer { name: "stages_a_and_b" include { stage: "a" stage: "b" } }
layer { name: "a_or_b" include { stage: "a" } include { stage: "b" } }
layer { name: "not_a" include { not_stage: "a" } }
layer { name: "excl_a" exclude { stage: "a" } }
layer { name: "file_stage" include { stage: "file" } }
layer { name: "test_level1_a" include { phase: TEST min_level: 1 max_level: 1 stage: "a" } }
"""


@pytest.mark.parametrize(
    "phase,level,stages,expected",
    [
        ("TEST", 0, (), ["all", "level_le_1", "excl_level_ge_2", "not_a", "excl_a", "file_stage"]),
        (
            "TRAIN",
            0,
            (),
            ["all", "train", "not_test", "level_le_1", "excl_level_ge_2", "not_a", "excl_a", "file_stage"],
        ),
        ("TEST", 2, (), ["all", "level_ge_2", "not_a", "excl_a", "file_stage"]),
        (
            "TEST",
            1,
            ("a",),
            ["all", "level_le_1", "excl_level_ge_2", "stage_a", "a_or_b", "file_stage", "test_level1_a"],
        ),
        (
            "TEST",
            0,
            ("a", "b"),
            ["all", "level_le_1", "excl_level_ge_2", "stage_a", "stages_a_and_b", "a_or_b", "file_stage"],
        ),
        ("TEST", 0, ("b",), ["all", "level_le_1", "excl_level_ge_2", "a_or_b", "not_a", "excl_a", "file_stage"]),
    ],
)
def test_filter_rules(phase, level, stages, expected):
    filtered = filter_net(net(FILTER_NET), phase, level, stages)
    assert names(filtered) == expected
    assert filtered.state.stage == ["file", *stages] and filtered.state.level == level


def test_filter_errors():
    with pytest.raises(ValueError, match=r"layer 'both' \(ReLU\) has both include and exclude rules"):
        filter_net(net('layer { name: "both" type: "ReLU" include { phase: TRAIN } exclude { phase: TEST } }'))
    with pytest.raises(ValueError, match="phase must be 'TRAIN' or 'TEST'"):
        filter_net(net(""), "VALIDATE")
    with pytest.raises(ValueError, match="call upgrade_net first"):
        filter_net(net(V1_LENET))


def test_state_meets_rule_unset_fields_always_match():
    state = Message("NetState", phase="TRAIN", level=3)
    assert state_meets_rule(state, Message("NetStateRule"))
    assert not state_meets_rule(state, Message("NetStateRule", phase="TEST"))
    assert state_meets_rule(state, Message("NetStateRule", min_level=3, max_level=3))
