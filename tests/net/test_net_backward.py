"""Net-level backward: Caffe's automatic Split layers, the backward plan, and whole-net gradients.

Whole-net gradients are checked two ways: (1) against central differences of the net's own float32 loss
(h = 1e-3, double-sided; tolerance 2e-3 * max(|a|, |n|) + 5e-4, loose because the loss is float32: its
rounding alone moves a difference quotient by ~1e-4), on a sample of coordinates of every parameter; (2) exactly the same net in float64 NumPy
written out by hand below (tolerance 1e-4 relative to the largest gradient entry)."""

from __future__ import annotations

import numpy as np
import pytest

from net import Net
from net.net import insert_splits
from net.prototxt_loader import parse_text
from tests.gradcheck import numeric_grad

SMALL = """
name: "small"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 3 dim: 2 dim: 9 dim: 9 } shape { dim: 3 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride: 1 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
"""


def _net(text: str = SMALL, **kw) -> Net:
    from net.upgrade import upgrade_net

    return Net(upgrade_net(parse_text(text, "NetParameter")), phase="train", seed=0, **kw)


def test_insert_splits_names_and_wiring():
    net = _net()
    names = [layer.name for layer in net.layers]
    assert "ip_ip_0_split" in names and "label_data_1_split" in names
    split = net.layers[names.index("ip_ip_0_split")]
    assert [t.name for t in net.tops[names.index("ip_ip_0_split")]] == ["ip_ip_0_split_0", "ip_ip_0_split_1"]
    assert split.type == "Split"
    assert [b.name for b in net.bottoms[names.index("loss")]] == ["ip_ip_0_split_0", "label_data_1_split_0"]
    assert [b.name for b in net.bottoms[names.index("acc")]] == ["ip_ip_0_split_1", "label_data_1_split_1"]
    # saved models carry no Split layers
    assert all(lp.type != "Split" for lp in net.to_proto().layer)


def test_loss_weight_on_consumed_top_moves_to_last_split_top():
    param = parse_text(
        'layer { name: "d" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }'
        'layer { name: "a" type: "ReLU" bottom: "x" top: "y" loss_weight: 0.5 }'
        'layer { name: "b" type: "Sigmoid" bottom: "y" top: "z" }',
        "NetParameter",
    )
    out = insert_splits(param)
    split = next(lp for lp in out.layer if lp.type == "Split")
    assert list(split.top) == ["y_a_0_split_0", "y_a_0_split_1"]
    assert list(split.loss_weight) == [0.0, 0.5]
    assert list(out.layer[1].loss_weight) == [0.0]


def test_backward_plan():
    net = _net()
    names = [layer.name for layer in net.layers]
    planned = {net.layers[i].name for i in net.backward_layers}
    assert "data" not in planned and "acc" not in planned
    assert {"conv", "relu", "pool", "ip", "loss"} <= planned
    assert net.propagate_down[names.index("conv")] == [False]  # the data needs no gradient
    assert net.propagate_down[names.index("loss")] == [True, False]  # never into the labels
    assert [(b.name, w) for b, w in net.loss_tops] == [("loss", 1.0)]


def _feed(net: Net, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    net.set_input("data", rng.random((3, 2, 9, 9), dtype=np.float32))
    net.set_input("label", np.array([0, 3, 4], dtype=np.float32))


def test_whole_net_gradients_central_differences():
    net = _net()
    _feed(net)
    net.clear_param_diffs()
    net.forward_loss()
    net.backward()
    rng = np.random.default_rng(2)
    h = 1e-3
    for name, j, blob, _, _ in net.learnable():
        analytic = blob.diff.copy()
        at = rng.choice(blob.data.size, size=min(12, blob.data.size), replace=False)
        numeric = numeric_grad(lambda _: net.forward_loss(), blob.data, h, at=at).reshape(-1)
        for idx in at:
            a, n = float(analytic.reshape(-1)[idx]), float(numeric[idx])
            assert abs(a - n) <= 2e-3 * max(abs(a), abs(n)) + 5e-4, (name, j, idx, a, n)


def test_whole_net_gradients_against_float64_numpy():
    net = _net(SMALL.replace("dim: 9 dim: 9", "dim: 8 dim: 8"))
    rng = np.random.default_rng(3)
    x = rng.random((3, 2, 8, 8))
    label = np.array([0, 3, 4])
    net.set_input("data", x.astype(np.float32))
    net.set_input("label", label.astype(np.float32))
    net.reshape()
    net.clear_param_diffs()
    loss = net.forward_loss()
    net.backward()
    wc, bc = (a.astype(np.float64) for a in net.params["conv"])
    wi, bi = (a.astype(np.float64) for a in net.params["ip"])
    xf = x.astype(np.float32).astype(np.float64)

    # forward
    xp = np.pad(xf, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.stack([xp[:, :, i : i + 8, j : j + 8] for i in range(3) for j in range(3)], axis=2)  # (n,c,9,8,8)
    conv = np.einsum("mck,nckhw->nmhw", wc.reshape(4, 2, 9), patches) + bc[None, :, None, None]
    relu = np.maximum(conv, 0)
    blocks = relu.reshape(3, 4, 4, 2, 4, 2).transpose(0, 1, 2, 4, 3, 5).reshape(3, 4, 4, 4, 4)
    pool = blocks.max(axis=-1)
    arg = blocks.argmax(axis=-1)  # first max, as Caffe
    flat = pool.reshape(3, -1)
    ip = flat @ wi.T + bi
    e = np.exp(ip - ip.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    ref_loss = -np.mean(np.log(p[np.arange(3), label]))
    assert loss == pytest.approx(ref_loss, rel=1e-5)

    # backward
    dip = p.copy()
    dip[np.arange(3), label] -= 1
    dip /= 3
    dwi, dbi = dip.T @ flat, dip.sum(0)
    dpool = (dip @ wi).reshape(pool.shape)
    dblocks = np.zeros_like(blocks)
    np.put_along_axis(dblocks, arg[..., None], dpool[..., None], axis=-1)
    drelu = dblocks.reshape(3, 4, 4, 4, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(3, 4, 8, 8)
    dconv = drelu * (conv > 0)
    dwc = np.einsum("nmhw,nckhw->mck", dconv, patches).reshape(wc.shape)
    dbc = dconv.sum(axis=(0, 2, 3))
    for name, j, blob, _, _ in net.learnable():
        ref = {("conv", 0): dwc, ("conv", 1): dbc, ("ip", 0): dwi, ("ip", 1): dbi}[(name, j)]
        err = np.max(np.abs(blob.diff - ref)) / np.max(np.abs(ref))
        assert err <= 1e-4, (name, j, err)


def test_param_diffs_accumulate_until_cleared():
    net = _net()
    _feed(net)
    net.clear_param_diffs()
    net.forward_backward()
    once = [b.diff.copy() for _, _, b, _, _ in net.learnable()]
    net.forward_backward()
    for g, (_, _, b, _, _) in zip(once, net.learnable()):
        np.testing.assert_allclose(b.diff, 2 * g, rtol=1e-5, atol=1e-7)


def test_cleared_diffs_read_as_zeros_and_overwrite_bit_for_bit():
    """clear_param_diffs zeroes lazily (Blob.clear_diff): a diff read after it is zeros, and a backward after it (the
    InnerProduct writing its weight diff whole, not adding it to written zeros) gives the same bits as one on diffs
    zeroed by hand."""
    net = _net()
    _feed(net)
    net.forward_backward()
    net.clear_param_diffs()
    for _, _, b, _, _ in net.learnable():
        assert not np.any(b.diff)
    net.forward_backward()
    by_hand = [b.diff.copy() for _, _, b, _, _ in net.learnable()]
    net.clear_param_diffs()
    net.forward_backward()
    for g, (_, _, b, _, _) in zip(by_hand, net.learnable()):
        np.testing.assert_array_equal(b.diff.view(np.uint32), g.view(np.uint32))
    ip = net.layers[[layer.name for layer in net.layers].index("ip")].blobs[0]
    ip.clear_diff()
    _, fresh = ip.diff_to_overwrite()
    assert fresh and ip.diff_to_overwrite()[1] is False  # fresh once: the next writer accumulates
