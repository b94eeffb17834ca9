"""net.replay: a steady plan's task calls recorded once and replayed natively give every forward the bits of the
Python steps (EfficientNet-Lite0 with shared activations at batch 1 and 2, on 1 and 2 threads; LeNet), notify the
observers, fall back when an array changes under the plan, and are refused when a step does work outside its task
calls."""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest

from net import Net, per_image, replay

ROOT = Path(__file__).resolve().parents[2]


def _inputs(shape, count: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(count)]


def _python_outputs(net: Net, xs: list[np.ndarray], monkeypatch) -> list[dict]:
    monkeypatch.setattr(replay, "ENABLED", False)
    out = [{k: v.copy() for k, v in net.forward(data=x).items()} for x in xs]
    monkeypatch.setattr(replay, "ENABLED", True)
    return out


@pytest.mark.parametrize(("batch", "threads"), [(1, 2), (1, 1), (2, 2)])
def test_efficientnet_replayed_forwards_have_the_python_steps_bits(effnet_files, batch, threads, monkeypatch) -> None:
    monkeypatch.setattr(per_image, "ENABLED", False)  # batch 2 would run image by image (tests/net/test_per_image.py)
    saved = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        fast = Net.load(effnet_files.prototxt, effnet_files.weights)
        fast.share_activations()
        slow = Net.load(effnet_files.prototxt, effnet_files.weights)
        slow.share_activations()
        xs = _inputs((batch, 3, 224, 224))
        want = _python_outputs(slow, xs + xs, monkeypatch)
        for i, x in enumerate(xs + xs):  # the third forward records, the ones after replay
            got = fast.forward(data=x)
            np.testing.assert_array_equal(got["prob"], want[i]["prob"], err_msg=f"forward {i}")
        rp = fast._plan.replay
        assert isinstance(rp, replay.Replay)
        native = [prog for _, _, prog in rp.segments if prog is not None]
        assert sum(len(p) for p in native) >= 50  # the stem, every block's three steps, the head and the fc
    finally:
        numba.set_num_threads(saved)


def test_lenet_replays_at_batch_1(monkeypatch) -> None:
    proto, weights = ROOT / "models/lenet/deploy.prototxt", ROOT / "models/lenet/lenet.caffemodel"
    fast, slow = Net.load(proto, weights), Net.load(proto, weights)
    xs = _inputs((1, 1, 28, 28), 6)
    want = _python_outputs(slow, xs, monkeypatch)
    for x, w in zip(xs, want):
        np.testing.assert_array_equal(fast.forward(data=x)["prob"], w["prob"])
    assert isinstance(fast._plan.replay, replay.Replay)


def _replaying(effnet_files) -> tuple[Net, list[np.ndarray]]:
    net = Net.load(effnet_files.prototxt, effnet_files.weights)
    xs = _inputs((1, 3, 224, 224), 4)  # the first decides the launcher, the fourth records (replay.RECORD_AT)
    for x in xs:
        net.forward(data=x)
    assert isinstance(net._plan.replay, replay.Replay)
    return net, xs


def test_observers_see_every_replayed_forward(effnet_files, monkeypatch) -> None:
    net, xs = _replaying(effnet_files)
    seen = []
    net.observe("pool", lambda name, a: seen.append(a.copy()))  # a new plan: recorded again after three forwards
    for x in xs + xs:
        net.forward(data=x)
    assert isinstance(net._plan.replay, replay.Replay)
    ref = Net.load(effnet_files.prototxt, effnet_files.weights)
    want = []
    ref.observe("pool", lambda name, a: want.append(a.copy()))
    _python_outputs(ref, xs + xs, monkeypatch)
    assert len(seen) == len(want) == 8
    for a, b in zip(seen, want):
        np.testing.assert_array_equal(a, b)


def test_a_replaced_array_sends_the_forward_back_to_the_python_steps(effnet_files, monkeypatch) -> None:
    net, xs = _replaying(effnet_files)
    ref = Net.load(effnet_files.prototxt, effnet_files.weights)
    layer = next(ly for ly in net.layers if ly.name == "fc")
    layer.blobs[0].data = layer.blobs[0].data * 2.0  # a new weight array: the replay's guard sees it
    ref_layer = next(ly for ly in ref.layers if ly.name == "fc")
    ref_layer.blobs[0].data = ref_layer.blobs[0].data * 2.0
    want = _python_outputs(ref, xs, monkeypatch)
    for x, w in zip(xs, want):
        np.testing.assert_array_equal(net.forward(data=x)["prob"], w["prob"])


def test_the_guards_are_read_again_only_after_an_assignment_to_a_watched_attribute(effnet_files, monkeypatch) -> None:
    """Replay.valid reads its ~250 guards only when net.blob.assignments moved since they last held: a Blob's data,
    a layer's blobs or a convolution's folded assigned anywhere (the same object counts too); otherwise not at all."""
    from net import blob

    net, xs = _replaying(effnet_files)
    rp = net._plan.replay
    reads = []
    real = replay.guards_hold
    monkeypatch.setattr(replay, "guards_hold", lambda guards: reads.append(1) or real(guards))
    net.forward(data=xs[0])  # its first check: the guards read once
    net.forward(data=xs[1])
    assert reads == [1] and net._plan.replay is rp
    reads.clear()
    conv = next(ly for ly in net.layers if ly.type == "Convolution" and ly.fold is not None)
    for assign in (
        lambda: setattr(net._blobs["data"], "data", net._blobs["data"].data),
        lambda: setattr(conv, "blobs", conv.blobs),
        lambda: setattr(conv, "folded", conv.folded),
    ):
        before = blob.assignments()
        assign()
        assert blob.assignments() == before + 1
        net.forward(data=xs[2])
        net.forward(data=xs[3])
        assert len(reads) == 1 and net._plan.replay is rp  # read once, held (the same arrays), then not again
        reads.clear()


def test_weights_changed_in_place_are_read_by_the_replay(effnet_files, monkeypatch) -> None:
    net, xs = _replaying(effnet_files)
    ref = Net.load(effnet_files.prototxt, effnet_files.weights)
    for n in (net, ref):
        next(ly for ly in n.layers if ly.name == "fc").blobs[1].data[:] += 0.5  # the fc's bias, not folded
    want = _python_outputs(ref, xs, monkeypatch)
    for x, w in zip(xs, want):
        np.testing.assert_array_equal(net.forward(data=x)["prob"], w["prob"])
    assert isinstance(net._plan.replay, replay.Replay)


WINOGRAD = """
name: "wg"
input: "data"
input_shape { dim: 1 dim: 64 dim: 14 dim: 14 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 64 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.05 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "conv2" type: "Convolution" bottom: "conv" top: "conv2"
        convolution_param { num_output: 64 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "pool" type: "Pooling" bottom: "conv2" top: "out" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""


def test_winograd_weights_changed_in_place_are_seen_by_a_replaying_net(monkeypatch) -> None:
    """A Winograd layer whose weights may change in place (no BatchNorm folded in) keeps its step out of the replay:
    the step compares the weights with those transformed every call, which a replayed forward would skip (it once
    ran on the stale transform: a test net sharing a training net's weights, or a user scaling a filter, saw no
    change). The rest of the net is still replayed."""
    from kernels import winograd
    from net.prototxt_loader import parse_text
    from net.upgrade import upgrade_net

    def conv(n: Net):
        return next(ly for ly in n.layers if ly.name == "conv").blobs[0].data

    xs = _inputs((1, 64, 14, 14), 6)
    ref = Net(upgrade_net(parse_text(WINOGRAD, "NetParameter")), seed=3)
    conv(ref)[...] *= np.float32(0.5)
    want = _python_outputs(ref, xs, monkeypatch)
    net = Net(upgrade_net(parse_text(WINOGRAD, "NetParameter")), seed=3)
    assert winograd.choose((1, 64, 14, 14), (64, 64, 3, 3), 1, 1, 1) == 4
    for x in xs:
        net.forward(data=x)
    assert isinstance(net._plan.replay, replay.Replay)
    before = net.forward(data=xs[0])["out"].copy()
    assert not np.array_equal(before, want[0]["out"])  # the change shows in the output
    conv(net)[...] *= np.float32(0.5)  # in place: the same array
    for x, w in zip(xs, want):
        np.testing.assert_array_equal(net.forward(data=x)["out"], w["out"])
    assert isinstance(net._plan.replay, replay.Replay)


def test_a_frozen_net_keeps_its_transformed_weights_by_array(monkeypatch) -> None:
    """Net.freeze: the Winograd steps keep the weights they transformed while the arrays are the same ones (no compare
    each call, no replay check: the promise of a folded BatchNorm); a new array is seen by the next forward, a change
    in place after refold(); freeze(False) brings back the compare, and share_weights_from undoes the freeze."""
    from net.prototxt_loader import parse_text
    from net.upgrade import upgrade_net

    def make() -> Net:
        return Net(upgrade_net(parse_text(WINOGRAD, "NetParameter")), seed=3)

    def conv(n: Net):
        return next(ly for ly in n.layers if ly.name == "conv").blobs[0]

    xs = _inputs((1, 64, 14, 14), 6)
    net = make()
    net.freeze()
    assert net.frozen and all(ly.frozen for ly in net.layers if ly.type == "Convolution")
    for x in xs:
        net.forward(data=x)
    rp = net._plan.replay
    assert isinstance(rp, replay.Replay) and not rp.checks  # nothing compared before a replayed forward
    plain = make()
    np.testing.assert_array_equal(net.forward(data=xs[0])["out"], plain.forward(data=xs[0])["out"])

    halved = make()
    conv(halved).data[...] *= np.float32(0.5)
    want = _python_outputs(halved, xs, monkeypatch)
    conv(net).data = conv(net).data * np.float32(0.5)  # a new array: seen by the next forward
    np.testing.assert_array_equal(net.forward(data=xs[1])["out"], want[1]["out"])
    conv(net).data[...] *= np.float32(2.0)  # in place: kept as promised until refold()
    np.testing.assert_array_equal(net.forward(data=xs[1])["out"], want[1]["out"])
    net.refold()
    np.testing.assert_array_equal(net.forward(data=xs[1])["out"], plain.forward(data=xs[1])["out"])

    net.freeze(False)  # the compare again: an in-place change is seen at once
    assert not net.frozen and not any(ly.weights_frozen for ly in net.layers)
    for x in xs:
        net.forward(data=x)
    conv(net).data[...] *= np.float32(0.5)
    for x, w in zip(xs, want):
        np.testing.assert_array_equal(net.forward(data=x)["out"], w["out"])

    net.freeze()
    net.share_weights_from(halved)  # weights a solver trains in place: no longer frozen
    assert not net.frozen and not any(ly.weights_frozen for ly in net.layers)


def test_a_step_with_work_outside_its_task_calls_is_not_replayed(effnet_files, monkeypatch) -> None:
    """A step that also changes its top with NumPy: the check (Python steps against the replay, on two inputs) sees
    it, and the plan keeps its Python steps; every forward's result is still the step's."""
    net = Net.load(effnet_files.prototxt, effnet_files.weights)
    x = _inputs((1, 3, 224, 224), 1)[0]
    net.forward(data=x)
    plan = net._plan
    index = next(i for i, (_, layer, _, _) in enumerate(plan.steps) if layer.name == "head")
    step, layer, bottom, top = plan.steps[index]

    def also_numpy() -> bool:
        ok = step()
        top[0].data += 1.0
        return ok

    plan.steps[index] = (also_numpy, layer, bottom, top)
    outs = [net.forward(data=x)["prob"].copy() for _ in range(5)]
    assert plan.replay is False
    assert net._plan is plan
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_switched_off_nothing_is_recorded(effnet_files, monkeypatch) -> None:
    monkeypatch.setattr(replay, "ENABLED", False)
    net = Net.load(effnet_files.prototxt, effnet_files.weights)
    for x in _inputs((1, 3, 224, 224), 4):
        net.forward(data=x)
    assert net._plan.replay is None


def _numpy_softmax(x, y, serial=False):
    """A softmax of no task (the step that runs it stays a Python step in a replay)."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    y[...] = e / e.sum(axis=1, keepdims=True)


def test_a_python_step_that_refuses_during_a_replay_gives_the_layers_own_forward(effnet_files, monkeypatch) -> None:
    """The softmax step (made a Python step after the replayed ones: its kernel is a task, replayed like the others,
    so here NumPy's) refuses a new view of its top (the replay's guards let a view of the same memory through): the
    forward is then every layer's own, from the input, and correct."""
    from kernels import activations

    monkeypatch.setattr(activations, "_softmax_slices", _numpy_softmax)
    net, xs = _replaying(effnet_files)
    ref = Net.load(effnet_files.prototxt, effnet_files.weights)
    want = _python_outputs(ref, xs[:2], monkeypatch)
    blob = net.blob("prob")
    blob.data = blob.data.view()
    np.testing.assert_allclose(net.forward(data=xs[0])["prob"], want[0]["prob"], rtol=0, atol=1e-6)
    assert net._plan is None  # made again on the next forward
    np.testing.assert_array_equal(net.forward(data=xs[1])["prob"], want[1]["prob"])


def test_a_plan_whose_arrays_keep_changing_stops_recording(effnet_files, monkeypatch) -> None:
    """Every forward swaps a weight array: the replay is lost, recorded again once, lost again, and then the plan
    keeps its Python steps (no recording every few forwards); the results are the Python steps' throughout."""
    net, xs = _replaying(effnet_files)
    ref = Net.load(effnet_files.prototxt, effnet_files.weights)
    nets = (net, ref)
    fcs = [next(ly for ly in n.layers if ly.name == "fc") for n in nets]
    for i in range(12):
        for fc in fcs:
            fc.blobs[1].data = fc.blobs[1].data + np.float32(0.01)
        want = _python_outputs(ref, [xs[i % 4]], monkeypatch)[0]
        np.testing.assert_array_equal(net.forward(data=xs[i % 4])["prob"], want["prob"], err_msg=f"forward {i}")
    assert net._plan.replay is False
    assert net._plan.lost == replay.LOST_AT_MOST


def test_an_observer_on_a_fused_convolution_keeps_its_sum_out_of_the_replay(effnet_files, monkeypatch) -> None:
    """An observer on the top of a convolution whose residual sum is fused into it (the web app's "inside the
    network" view observes such layers) ends a native run right after the convolution; the Eltwise step after it
    still has nothing to do (it ran its own OpenMP kernel once: the check then refused the replay)."""
    net = Net.load(effnet_files.prototxt, effnet_files.weights)
    x = _inputs((1, 3, 224, 224), 1)[0]
    net.forward(data=x)
    steps = net._plan.steps
    conv_top = next(steps[i - 1][3][0].name for i, s in enumerate(steps) if getattr(s[0], "done_by", None))
    seen = []
    net.observe(conv_top, lambda name, a: seen.append(a.copy()))
    xs = _inputs((1, 3, 224, 224), 6)
    outs = [net.forward(data=v)["prob"].copy() for v in xs]
    assert isinstance(net._plan.replay, replay.Replay)
    ref = Net.load(effnet_files.prototxt, effnet_files.weights)
    want = []
    ref.observe(conv_top, lambda name, a: want.append(a.copy()))
    for o, w in zip(outs, _python_outputs(ref, xs, monkeypatch)):
        np.testing.assert_array_equal(o, w["prob"])
    for a, b in zip(seen, want, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("observed", [False, True])
def test_a_fused_residual_relu_is_replayed_and_its_sum_observed(observed, monkeypatch) -> None:
    """ResNet's block end (1x1 convolution, residual sum, ReLU in place on it: one fused call, net.plan_steps):
    the replay leaves the sum's and the ReLU's steps out, gives the Python steps' bits, and an observer of the sum
    sees every forward's max(branch + skip, 0). The input feeds two layers (a Split of it): the recording forward's
    check once poisoned the input through the Split's tops and that forward returned NaN."""
    from net.prototxt_loader import parse_text
    from net.upgrade import upgrade_net
    from tests.net.test_plan_steps import BN, RESIDUAL_RELU

    text = RESIDUAL_RELU.replace("BN", BN).replace("dim: 2 dim: 128", "dim: 1 dim: 128")
    net = Net(upgrade_net(parse_text(text, "NetParameter")), seed=6)
    seen = []
    if observed:
        net.observe("add", lambda name, a: seen.append(a.copy()))
    xs = _inputs((1, 128, 7, 7), 6)
    outs = [(net.forward(data=x)["head"].copy(), net.blobs["branch"].copy(), net.blobs["add"].copy()) for x in xs]
    assert isinstance(net._plan.replay, replay.Replay)
    names = [getattr(s, "__qualname__", "") for s, *_ in net._plan.steps]
    assert sum(n.endswith(("sum_step", "relu_step")) for n in names) == 2
    want = _python_outputs(net, xs, monkeypatch)
    for x, (head, branch, add), w in zip(xs, outs, want):
        np.testing.assert_array_equal(head, w["head"])
        np.testing.assert_array_equal(add, np.maximum(branch + x, np.float32(0)))
    if observed:
        assert len(seen) == 2 * len(xs)  # replayed forwards, then the Python ones
        for (_, _, add), a in zip(outs, seen):
            np.testing.assert_array_equal(a, add)


# A padded 3x3 convolution on one image's im2col path (its padding copy), LRN and Concat (each used to write a new
# output array every forward, or to copy outside a task: their nets' checks refused the replay, CaffeNet, GoogLeNet,
# ResNet-50), and a padded ceil-mode MAX pool (its border outputs were an OpenMP loop).
MIXED = """
name: "mixed"
input: "data"
input_shape { dim: 1 dim: 3 dim: 23 dim: 23 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 24 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 5 alpha: 0.001 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "a" type: "Convolution" bottom: "pool1" top: "a"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "b" type: "Convolution" bottom: "pool1" top: "b"
        convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }
layer { name: "head" type: "Convolution" bottom: "cat" top: "head"
        convolution_param { num_output: 10 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.2 } } }
"""


@pytest.mark.parametrize("share", [False, True])
def test_lrn_concat_and_padded_convolutions_are_replayed(share, monkeypatch) -> None:
    from net.prototxt_loader import parse_text
    from net.upgrade import upgrade_net

    net = Net(upgrade_net(parse_text(MIXED, "NetParameter")), seed=9)
    if share:
        net.share_activations()
    xs = _inputs((1, 3, 23, 23), 6)
    outs = [net.forward(data=x)["head"].copy() for x in xs]
    assert isinstance(net._plan.replay, replay.Replay)
    assert net._plan.pool  # no OpenMP loop left in the plan: its tasks on kernels.taskpool
    for got, want in zip(outs, _python_outputs(net, xs, monkeypatch)):
        np.testing.assert_array_equal(got, want["head"])
