"""The CPU execution plan (net.net._Plan, Layer.plan): the planned forward gives bit-for-bit the values of every
layer's own forward, and falls back (then re-plans) when the shapes, the weights' arrays, a top's array or the thread
count change under it."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from net import Net
from net.layers import NO_STEP
from net.prototxt_loader import parse_text
from net.upgrade import upgrade_net

# Every layer type with a plan step (Convolution with groups and padding, MAX and AVE pooling, InnerProduct, fused
# and unfused ReLU, in-place TEST Dropout, Softmax) and some without (LRN, Concat, Eltwise, Flatten).
NET = """
name: "planned"
input: "data"
input_shape { dim: 2 dim: 4 dim: 13 dim: 11 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2
                            weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "pool1a" type: "Pooling" bottom: "norm1" top: "pool1a"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 5 kernel_size: 2 bias_term: false
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "relu2" relu_param { negative_slope: 0.1 } }
layer { name: "flat" type: "Flatten" bottom: "relu2" top: "flat" }
layer { name: "flata" type: "Flatten" bottom: "pool1a" top: "flata" }
layer { name: "cat" type: "Concat" bottom: "flat" bottom: "flata" top: "cat" }
layer { name: "fc1" type: "InnerProduct" bottom: "cat" top: "fc1"
        inner_product_param { num_output: 7 weight_filler { type: "gaussian" std: 0.2 }
                              bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu3" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "drop" type: "Dropout" bottom: "fc1" top: "fc1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "prob" type: "Softmax" bottom: "fc2" top: "prob" }
"""


def _net(seed: int = 3) -> Net:
    return Net(upgrade_net(parse_text(NET, "NetParameter")), seed=seed)


def _unplanned(net: Net, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's own forward (the timed path never uses the plan): all blobs, copied."""
    net.forward(data=x)  # sets the input and reshapes
    net._run([0.0] * len(net.layers))
    return {name: np.array(net.blobs[name]) for name in net.blobs}


def _planned(net: Net, x: np.ndarray) -> dict[str, np.ndarray]:
    out = net.forward(data=x)
    assert net._plan is not None
    blobs = {name: np.array(net.blobs[name]) for name in net.blobs}
    np.testing.assert_array_equal(out["prob"], blobs["prob"])
    return blobs


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_plan_steps_cover_the_planned_layer_types():
    net = _net()
    net.forward(data=np.zeros((2, 4, 13, 11), np.float32))
    planned = {layer.name: step is not None for step, layer, _, _ in net._plan.steps}
    assert planned == {
        "conv1": True, "norm1": True, "pool1": True, "pool1a": True, "conv2": True, "relu2": False,
        "flat": False, "flata": False, "cat": True, "fc1": True, "fc2": True, "prob": True,
        "norm1_norm1_0_split": False,  # the Split inserted for norm1's two consumers
    }  # fmt: skip
    left_out = {layer.name for layer in net.layers} - set(planned)
    assert left_out == {"input", "relu1", "relu3", "drop"}  # the input, two fused ReLUs, TEST dropout in place
    assert net.layers[2].name == "relu1" and net.layers[2].plan(net.bottoms[2], net.tops[2]) is NO_STEP


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_planned_forward_is_every_layers_forward_bit_for_bit(batch):
    x = np.random.default_rng(batch).standard_normal((batch, 4, 13, 11), dtype=np.float32)
    _assert_same(_planned(_net(), x), _unplanned(_net(), x))


def test_lenet_and_caffenet_planned_match_unplanned(tmp_path):
    from tests.conftest import ROOT

    for prototxt, shape in (("models/lenet/deploy.prototxt", (3, 1, 28, 28)), ("models/caffenet/deploy.prototxt", (1, 3, 227, 227))):  # fmt: skip
        x = np.random.default_rng(0).random(shape, dtype=np.float32) * 255 - 120
        a, b = Net.load(ROOT / prototxt, seed=1), Net.load(ROOT / prototxt, seed=1)
        _assert_same(_planned(a, x), _unplanned(b, x))


def test_new_batch_sizes_replan():
    rng = np.random.default_rng(7)
    net, ref = _net(), _net()
    for batch in (1, 3, 1, 4, 4):
        x = rng.standard_normal((batch, 4, 13, 11), dtype=np.float32)
        _assert_same(_planned(net, x), _unplanned(ref, x))
        assert net._plan is not None and net.blobs["data"].shape[0] == batch


def test_replaced_weight_arrays_are_read_at_call_time():
    """New weight arrays (contiguous or not) after the plan is made: the planned forward uses them."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 4, 13, 11), dtype=np.float32)
    net, ref = _net(), _net()
    net.forward(data=x)
    for other in (net, ref):
        conv1 = next(layer for layer in other.layers if layer.name == "conv1")
        fc1 = next(layer for layer in other.layers if layer.name == "fc1")
        w = np.asfortranarray(np.random.default_rng(9).standard_normal(conv1.blobs[0].shape, dtype=np.float32))
        conv1.blobs[0].data = w  # not C-contiguous: the plan step declines, the layer's forward converts
        fc1.blobs[0].data = np.random.default_rng(10).standard_normal(fc1.blobs[0].shape, dtype=np.float32)
    want = _unplanned(ref, x)
    got = net.forward(data=x)["prob"]
    assert net._plan is None  # conv1's step declined the Fortran-ordered weights: a new plan next call
    np.testing.assert_array_equal(got, want["prob"])
    _assert_same(_planned(net, x), want)  # the new plan: conv1 through its forward, fc1 planned on the new array
    steps = {layer.name: step for step, layer, _, _ in net._plan.steps}
    assert steps["conv1"] is None and steps["fc1"] is not None


def test_a_replaced_top_array_falls_back_and_replans():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 4, 13, 11), dtype=np.float32)
    net, ref = _net(), _net()
    net.forward(data=x)
    plan = net._plan
    net.blob("conv2").data = np.full(net.blob("conv2").shape, np.nan, np.float32)  # someone else's array
    got = net.forward(data=x)
    assert net._plan is None  # the step declined: the layer's own forward ran, a new plan comes next call
    want = _unplanned(ref, x)
    np.testing.assert_array_equal(got["prob"], want["prob"])
    _assert_same(_planned(net, x), want)
    assert net._plan is not plan


def test_thread_count_change_replans():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread")
    x = np.random.default_rng(12).standard_normal((3, 4, 13, 11), dtype=np.float32)
    net, ref = _net(), _net()
    want = _unplanned(ref, x)
    before = numba.get_num_threads()
    try:
        for threads in (1, 2, 1):
            numba.set_num_threads(threads)
            _assert_same(_planned(net, x), want)
            assert net._plan.threads == threads
    finally:
        numba.set_num_threads(before)


def test_outputs_are_copies():
    x = np.random.default_rng(13).standard_normal((2, 4, 13, 11), dtype=np.float32)
    net = _net()
    first = net.forward(data=x)["prob"]
    keep = first.copy()
    first[...] = -1.0
    second = net.forward(data=x)["prob"]
    np.testing.assert_array_equal(second, keep)
    assert second is not first


def test_shared_weights_after_planning_are_used():
    """Net.share_weights_from (the solver's test net) after a plan was made: the next forward uses the new Blobs."""
    x = np.random.default_rng(14).standard_normal((2, 4, 13, 11), dtype=np.float32)
    net, source, ref = _net(seed=3), _net(seed=4), _net(seed=4)
    before = net.forward(data=x)["prob"]
    net.share_weights_from(source)
    want = _unplanned(ref, x)
    assert not np.array_equal(before, want["prob"])
    _assert_same(_planned(net, x), want)
