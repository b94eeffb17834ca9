"""Plan steps the Net makes itself (net.plan_steps): a zero-bordered (k+1)^2 kernel run as k x k with asymmetric
padding, and a 1x1 convolution + Eltwise SUM in one kernel call. Both give every blob the bits of each layer's own
forward, and fall back to it when the weights or arrays change under the plan."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.conv import conv2d_forward_ref
from kernels.pad import PadInto, Subsample, pad_ref
from net import Net
from net.prototxt_loader import parse_text
from net.upgrade import upgrade_net

# TF SAME at stride 2 as net.efficientnet writes it: a 4x4 kernel with a zero first row and column, pad 1 (3x3/2 with
# 0 rows before and 1 after); then a 1x1 projection added to a skip connection, as in an MBConv block.
NET = """
name: "steps"
input: "data"
input_shape { dim: 2 dim: 3 dim: 15 dim: 12 }
layer { name: "stem" type: "Convolution" bottom: "data" top: "stem"
        convolution_param { num_output: 8 kernel_size: 4 stride: 2 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU6" bottom: "stem" top: "stem" }
layer { name: "expand" type: "Convolution" bottom: "stem" top: "expand"
        convolution_param { num_output: 20 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "project" type: "Convolution" bottom: "expand" top: "project"
        convolution_param { num_output: 8 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "add" type: "Eltwise" bottom: "project" bottom: "stem" top: "add" }
layer { name: "head" type: "Convolution" bottom: "add" top: "head"
        convolution_param { num_output: 5 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
"""


def _net() -> Net:
    net = Net(upgrade_net(parse_text(NET, "NetParameter")), seed=5)
    net.params["stem"][0][:, :, 0, :] = 0.0
    net.params["stem"][0][:, :, :, 0] = 0.0
    net.refold()
    return net


def _unplanned(net: Net, x: np.ndarray) -> dict[str, np.ndarray]:
    net.forward(data=x)
    net._run([0.0] * len(net.layers))  # every layer's own forward
    return {name: np.array(net.blobs[name]) for name in net.blobs}


def _planned(net: Net, x: np.ndarray) -> dict[str, np.ndarray]:
    net.forward(data=x)
    return {name: np.array(net.blobs[name]) for name in net.blobs}


def _step_names(net: Net) -> list[str]:
    return [step.__qualname__ if step is not None else "" for step, *_ in net._plan.steps]


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (4, 5, 6, 7), (3, 7, 5, 9)])  # serial; planes split over threads (a task)
def test_pad_into_matches_numpy(shape) -> None:
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    pad = PadInto(x.shape, (0, 2), (1, 1))
    np.testing.assert_array_equal(pad(x), pad_ref(x, (0, 2), (1, 1)))
    y = x + 1
    np.testing.assert_array_equal(pad(y), pad_ref(y, (0, 2), (1, 1)))  # the borders stay zero
    with pytest.raises(ValueError, match="pads >= 0"):
        PadInto(x.shape, (-1, 0), (0, 0))


@pytest.mark.parametrize("hw", [(15, 12), (16, 16)])  # the stem on conv.ForwardRunner; on pointwise.Im2colRunner
def test_planned_steps_give_every_blob_its_bits(hw) -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, *hw), dtype=np.float32)
    net = _net()
    want = _unplanned(net, x)
    got = _planned(net, x)
    names = _step_names(net)
    assert any(n.startswith("zero_border_step") for n in names)
    assert any(n.endswith("sum_step") for n in names)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # the stem against the reference on the full (zero-bordered) kernel, and the sum against its two bottoms
    w, b = net.params["stem"]
    ref = np.clip(conv2d_forward_ref(x, w, b, stride=(2, 2), pad=(1, 1)), 0.0, 6.0)
    np.testing.assert_allclose(got["stem"], ref, rtol=0, atol=1e-5 * max(1.0, np.abs(ref).max()))
    np.testing.assert_array_equal(got["add"], got["project"] + got["stem"])
    x2 = x[:, :, ::-1].copy()  # a second forward on the same plan
    np.testing.assert_array_equal(_planned(net, x2)["add"], _unplanned(net, x2)["add"])


def test_a_border_that_is_no_longer_zero_runs_the_full_kernel() -> None:
    x = np.random.default_rng(2).standard_normal((2, 3, 15, 12), dtype=np.float32)
    net = _net()
    _planned(net, x)
    net.params["stem"][0][:, :, 0, 1] = 0.5  # changed in place, as a solver would (no refold: the fold is off)
    net.refold()
    want = _unplanned(net, x)
    got = _planned(net, x)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_the_sum_falls_back_when_an_array_changes_under_the_plan() -> None:
    """The fused step refuses (the Net then runs the convolution's and the Eltwise's own forwards, whose kernels may
    round the 1x1 convolution's edge pixels differently) and the next forward is planned and fused again."""
    x = np.random.default_rng(3).standard_normal((2, 3, 15, 12), dtype=np.float32)
    net = _net()
    _planned(net, x)
    net.blob("add").data = np.zeros((2, 8, 7, 6), np.float32)  # another array than the plan's
    got = _planned(net, x)
    want = _unplanned(net, x)
    np.testing.assert_array_equal(got["add"], got["project"] + got["stem"])
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6 * max(1.0, np.abs(want[name]).max()))
    again = _planned(net, x)
    assert any(n.endswith("sum_step") for n in _step_names(net))
    for name in want:
        np.testing.assert_array_equal(again[name], want[name], err_msg=name)


def test_all_zero_kernel_is_not_taken_for_a_zero_border() -> None:
    """A net without weights (constant-0 filler): every border is zero, but there is no smaller kernel inside."""
    from net import Net
    from net.plan_steps import zero_border_step

    text = (
        'name: "z" input: "data" input_shape { dim: 1 dim: 4 dim: 9 dim: 9 }\n'
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c"\n'
        "  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }\n"
    )
    net = Net.from_string(text)
    layer = net.layers[-1]
    assert not layer.blobs[0].data.any()
    assert zero_border_step(layer, net.bottoms[-1], net.tops[-1]) is None


# ResNet's block end: a 1x1 convolution (BatchNorm + Scale folded in: kernels.pointwise_t on a 7 x 7 plane with 128
# input channels; without them kernels.pointwise), the residual sum, and a ReLU in place on the sum.
RESIDUAL_RELU = """
name: "resnet_end"
input: "data"
input_shape { dim: 2 dim: 128 dim: 7 dim: 7 }
layer { name: "branch" type: "Convolution" bottom: "data" top: "branch"
        convolution_param { num_output: 128 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "gaussian" std: 0.1 } } }
BN
layer { name: "add" type: "Eltwise" bottom: "data" bottom: "branch" top: "add" }
layer { name: "add_relu" type: "ReLU" bottom: "add" top: "add" }
layer { name: "head" type: "Convolution" bottom: "add" top: "head"
        convolution_param { num_output: 16 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
"""
BN = """
layer { name: "bn" type: "BatchNorm" bottom: "branch" top: "branch" batch_norm_param { use_global_stats: true } }
layer { name: "scale" type: "Scale" bottom: "branch" top: "branch" scale_param { bias_term: true } }
"""


@pytest.mark.parametrize("folded", [True, False])  # kernels.pointwise_t / kernels.pointwise
def test_a_relu_after_the_residual_sum_runs_in_the_fused_call(folded) -> None:
    """The ReLU in place on the sum is applied as the sums are written (its step and the Eltwise's then do nothing):
    every blob has the bits of each layer's own forward, the sum is max(conv + skip, 0), and when the fused call
    cannot run the three layers run as their own."""
    net = Net(upgrade_net(parse_text(RESIDUAL_RELU.replace("BN", BN if folded else ""), "NetParameter")), seed=6)
    if folded:
        rng = np.random.default_rng(0)
        bn = next(layer for layer in net.layers if layer.type == "BatchNorm")
        mean, var, factor = (p.data for p in bn.blobs)
        factor[...] = 1.0
        mean[...] = rng.normal(0.0, 0.2, mean.shape)
        var[...] = rng.uniform(0.5, 2.0, var.shape)
        net.refold()
    x = np.random.default_rng(4).standard_normal((2, 128, 7, 7), dtype=np.float32)
    got = _planned(net, x)
    names = _step_names(net)
    assert sum(n.endswith(("sum_step", "relu_step")) for n in names) == 2
    runner = next(step.runner for step, *_ in net._plan.steps if hasattr(step, "runner"))
    assert type(runner).__module__ == ("kernels.pointwise_t" if folded else "kernels.pointwise")
    want = _unplanned(net, x)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert (got["add"] == 0).mean() > 0.2  # the ReLU did clip
    np.testing.assert_array_equal(got["add"], np.maximum(got["branch"] + x, np.float32(0)))
    net.blob("add").data = np.zeros_like(got["add"])  # another array than the plan's: the layers' own forwards
    again = _planned(net, x)
    np.testing.assert_array_equal(again["add"], np.maximum(again["branch"] + x, np.float32(0)))
    np.testing.assert_array_equal(_planned(net, x)["head"], want["head"])  # planned and fused again
    assert sum(n.endswith(("sum_step", "relu_step")) for n in _step_names(net)) == 2


@pytest.mark.parametrize("keep", [(), ("branch",)])
def test_a_residual_sum_alone_is_written_where_nobody_reads_the_convolution(keep) -> None:
    """Under share_activations the fused step writes the sum alone where no step and no caller reads the
    convolution's output (pointwise_t's tiles skip it): the sum and what follows keep their bits; a blob kept for
    the caller is written as before."""
    text = RESIDUAL_RELU.replace("BN", BN).replace("dim: 2 dim: 128", "dim: 1 dim: 128")  # batch 1: replayed
    x = np.random.default_rng(4).standard_normal((1, 128, 7, 7), dtype=np.float32)
    nets = [Net(upgrade_net(parse_text(text, "NetParameter")), seed=6) for _ in range(2)]
    for net in nets:
        net.refold()
    want = _planned(nets[0], x)
    nets[1].share_activations(keep=keep)
    got = nets[1].forward(data=x)
    fused = next(step for step, *_ in nets[1]._plan.steps if hasattr(step, "sum_only"))
    assert fused.sum_only == (not keep)
    assert type(fused.runner).__module__ == "kernels.pointwise_t"
    np.testing.assert_array_equal(got["head"], want["head"])
    if keep:
        np.testing.assert_array_equal(np.array(nets[1].blobs["branch"]), want["branch"])
    for _ in range(4):  # recorded, then replayed natively (net.replay) with the flag in the recorded call
        np.testing.assert_array_equal(nets[1].forward(data=x)["head"], want["head"])
    assert nets[1]._plan.replay


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 7, 15, 15), (3, 2, 8, 9)])
@pytest.mark.parametrize("stride", [(2, 2), (3, 2)])
def test_subsample_matches_numpy(shape, stride) -> None:
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    sub = Subsample(x.shape, stride)
    np.testing.assert_array_equal(sub(x), x[:, :, :: stride[0], :: stride[1]])
    np.testing.assert_array_equal(sub(x + 1), x[:, :, :: stride[0], :: stride[1]] + 1)
    with pytest.raises(ValueError, match="strides >= 1"):
        Subsample(x.shape, (0, 1))


# ResNet's projection shortcut and a stage's first 1x1 at stride 2, BatchNorm + Scale (folded) and ReLU on the second
STRIDED = """
name: "strided"
input: "data"
input_shape { dim: 2 dim: 128 dim: 15 dim: 15 }
layer { name: "proj" type: "Convolution" bottom: "data" top: "proj"
        convolution_param { num_output: 64 kernel_size: 1 stride: 2 bias_term: false
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "reduce" type: "Convolution" bottom: "data" top: "reduce"
        convolution_param { num_output: 32 kernel_size: 1 stride: 2 bias_term: false
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "reduce" top: "reduce" batch_norm_param { use_global_stats: true } }
layer { name: "scale" type: "Scale" bottom: "reduce" top: "reduce" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "reduce" top: "reduce" }
"""


def test_a_strided_1x1_convolution_runs_on_its_subsampled_input() -> None:
    """A 1x1 convolution at stride 2 (15 x 15 -> 8 x 8) is the stride-1 one on x[:, :, ::2, ::2] (its step:
    strided_pointwise_step), BatchNorm folded and ReLU fused as before; against the reference and the layers' own
    forwards (im2col + GEMM: another summation order, so within float32 rounding)."""
    net = Net(upgrade_net(parse_text(STRIDED, "NetParameter")), seed=7)
    bn = next(layer for layer in net.layers if layer.type == "BatchNorm")
    mean, var, factor = (p.data for p in bn.blobs)
    rng = np.random.default_rng(1)
    factor[...] = 1.0
    mean[...] = rng.normal(0.0, 0.2, mean.shape)
    var[...] = rng.uniform(0.5, 2.0, var.shape)
    net.refold()
    x = rng.standard_normal((2, 128, 15, 15), dtype=np.float32)
    got = _planned(net, x)
    assert sum(n.startswith("strided_pointwise_step") for n in _step_names(net)) == 2

    def held(f, depth=2):  # the objects a step's closures hold (its `run`'s as well)
        for cell in getattr(f, "__closure__", None) or ():
            yield cell.cell_contents
            if depth > 1 and callable(cell.cell_contents):
                yield from held(cell.cell_contents, depth - 1)

    # both layers read the input (through a Split) at stride 2: one subsample buffer
    buffers = {id(obj) for step, *_ in net._plan.steps for obj in held(step) if isinstance(obj, Subsample)}
    assert len(buffers) == 1
    want = _unplanned(net, x)
    for name in ("proj", "reduce"):
        tol = 1e-6 * max(1.0, float(np.abs(want[name]).max()))
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=tol, err_msg=name)
    w = net.params["proj"][0]
    ref = conv2d_forward_ref(x, w, np.zeros(64, np.float32), stride=(2, 2), pad=(0, 0))
    np.testing.assert_allclose(got["proj"], ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert (got["reduce"] >= 0).all() and (got["reduce"] == 0).any()  # the fused ReLU
    net.blob("proj").data = np.zeros_like(got["proj"])  # another array than the plan's: the layer's own forward
    np.testing.assert_allclose(_planned(net, x)["proj"], want["proj"], rtol=0, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_array_equal(_planned(net, x)["proj"], got["proj"])  # planned again


# An image's first convolution, 3 -> 32 channels 3 x 3 / 2 with pad 1 and a fused ReLU (28 x 28 -> 14 x 14).
IMAGE_CONV = """
name: "stem"
input: "data"
input_shape { dim: 2 dim: 3 dim: 28 dim: 28 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 32 kernel_size: 3 stride: 2 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
"""


def test_an_image_convolution_runs_on_pointwise_t_tiles() -> None:
    """convt_step (AVX-512: kernels.pointwise_t's tiles, the taps read from the zero-padded image, output in planes):
    the bits of the layer's own forward (im2col + GEMM, one K panel), the reference's values, and weights changed in
    place (a solver's update) are seen by the next forward."""
    from kernels import pointwise_t

    net = Net(upgrade_net(parse_text(IMAGE_CONV, "NetParameter")), seed=8)
    x = np.random.default_rng(2).standard_normal((2, 3, 28, 28), dtype=np.float32)
    got = _planned(net, x)
    assert any(n.startswith("convt_step") for n in _step_names(net)) == pointwise_t.ENABLED
    want = _unplanned(net, x)
    np.testing.assert_array_equal(got["conv1"], want["conv1"])
    w, b = net.params["conv1"]
    ref = np.maximum(conv2d_forward_ref(x, w, b, stride=(2, 2), pad=(1, 1)), 0)
    np.testing.assert_allclose(got["conv1"], ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    w *= np.float32(-0.5)  # in place, as a solver updates it
    again = _planned(net, x)
    np.testing.assert_array_equal(again["conv1"], _unplanned(net, x)["conv1"])
    assert not np.array_equal(again["conv1"], got["conv1"])
