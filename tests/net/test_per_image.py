"""net.per_image: a batch of EfficientNet-Lite0 with shared activations runs image by image on batch-1 copies of the
net (groups of images on copies at the group's size), and every image gets the bits of a batch-1 forward of it
(outputs and kept blobs), on 2 threads and on 1; nets and settings outside its rule stay batched; the copies see the
net's parameters as they change."""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest

from net import Net, per_image
from net.prototxt_loader import parse_text
from net.upgrade import upgrade_net

ROOT = Path(__file__).resolve().parents[2]


def _load(files, keep=("pool",)) -> Net:
    net = Net.load(files.prototxt, files.weights)
    net.share_activations(keep=keep)
    return net


def _one_by_one(files, x: np.ndarray) -> dict[str, np.ndarray]:
    single = _load(files)
    rows = [{k: single.forward(data=x[i : i + 1])[k].copy() for k in ("prob",)} | {"pool": single.blob("pool").data.copy()}
            for i in range(len(x))]  # fmt: skip
    return {k: np.concatenate([r[k] for r in rows]) for k in ("prob", "pool")}


@pytest.mark.parametrize("threads,fuse", [(2, True), (1, True), (2, False)])
def test_each_image_gets_the_bits_of_its_batch_1_forward(effnet_files, threads, fuse, monkeypatch) -> None:
    """5 images: two groups of 2 on the group copies and one on a batch-1 copy (on 1 thread and on 2: as many groups
    as give each thread the same number). fuse: the stem fused with block 0's depthwise where AVX-512 runs it
    (net.plan_steps.fuse_conv_depthwise: the copies' replays start from their input blob); else the copies' replays
    start by padding it, and each image (each group) is fed into that padding."""
    from kernels import mbconv
    from net import plan_steps

    monkeypatch.setattr(plan_steps, "FUSE_STEM", fuse)
    saved = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        x = np.random.default_rng(5).uniform(-1, 1, (5, 3, 224, 224)).astype(np.float32)
        want = _one_by_one(effnet_files, x)
        net = _load(effnet_files)
        for i in range(9):  # the first decides the launcher, the second makes the copies, their replays follow
            got = net.forward(data=x)["prob"]
            if i:
                np.testing.assert_array_equal(got, want["prob"], err_msg=f"forward {i}")
                np.testing.assert_array_equal(net.blob("pool").data, want["pool"], err_msg=f"forward {i}")
        st = net._plan.per_image
        assert isinstance(st, per_image.PerImage)
        assert st.group == 2 and st.grouped and st.groups.checked  # the group copies agreed with the batch-1 copy
        assert all(rep.blob("data").shape[0] == 2 and rep.image_copy for rep in st.groups.copies)
        copies = [*zip(st.replicas, st.feeds), *zip(st.groups.copies, st.groups.feeds)]
        # the copies replay (on 2 threads a copy may not have had the turns to record its replay yet; none refused)
        assert not any(rep._plan is not None and rep._plan.replay is False for rep, _ in copies)
        ran = [(rep, feed) for rep, feed in copies if rep._plan is not None and rep._plan.replay]
        assert len(ran) == len(copies) or (threads > 1 and ran)
        if fuse and mbconv.ENABLED:  # ... the stem and block 0's depthwise one step (AVX-512), each band padded in
            # its own buffer
            assert all(isinstance(rep._plan.steps[0][0].runner, mbconv.ConvDepthwiseRunner) for rep, _ in ran)
        else:  # ... from the stem's zero-bordered buffer, which each image is copied into from the batch (fed; on 2
            # threads a copy may have recorded its replay on its last turn, and not run from it yet)
            fed = [pad for rep, (rp, pad) in ran if rp is rep._plan.replay]
            assert fed and all(pad is not None for pad in fed) and (len(fed) == len(ran) or threads > 1)
        # ... up to the pooling: fc and prob run once for the batch, fc row by row with batch-1 bits (checked above)
        assert len(st.tail) == 2 and all(rep.layers[-1].name == "pool" for rep, _ in copies)
        assert len(st.replicas) == len(st.groups.copies) == numba.get_num_threads()
    finally:
        numba.set_num_threads(saved)


@pytest.mark.parametrize("group", [1, 2, 4])
def test_groups_where_every_thread_gets_the_same_number(effnet_files, group, monkeypatch) -> None:
    """The units a batch of n runs as (`whole_groups`): groups of GROUP images where each of the 2 threads gets as
    many, the rest image by image; GROUP 1: image by image only."""
    monkeypatch.setattr(per_image, "GROUP", group)
    net = _load(effnet_files)
    net.reshape({"data": (2, 3, 224, 224)})
    st = per_image.PerImage(net, threads=2)
    monkeypatch.setattr(per_image.Groups, "agrees", lambda self, *args: True)
    got = {n: per_image.whole_groups(st, net, st.gather, st.drop, n) for n in (1, 2, 3, 4, 5, 6, 8, 9, 10, 16, 17)}
    want = {n: (n // group // 2 * 2 if group > 1 else 0) for n in got}
    assert got == want
    if group == 2:
        assert [got[n] for n in (3, 4, 5, 8, 9)] == [0, 2, 2, 4, 4]
    assert (st.groups is None) == (group == 1)


def test_group_copies_that_disagree_are_left_for_good(effnet_files, monkeypatch) -> None:
    """A group copy whose rows are not the batch-1 bits (here: its forward's pooled features nudged, as a kernel
    whose sums depend on the batch would) is found by the check before the first grouped batch (on random batches,
    not the caller's: here a batch of zeros), and the batches run image by image from then on, with batch-1 bits; the
    group copies are dropped. The check itself on the real copies: they agree."""
    x = np.random.default_rng(8).uniform(-1, 1, (4, 3, 224, 224)).astype(np.float32)
    want = _one_by_one(effnet_files, x)
    run = Net._run

    def nudged(self, *args, **kw):
        run(self, *args, **kw)
        if self.image_copy:
            self._blobs["pool"].data[0] += 1e-6

    net = _load(effnet_files)
    assert per_image.same_bits(per_image.replica(net, batch=2), per_image.replica(net), ["pool"])
    monkeypatch.setattr(Net, "_run", nudged)
    zeros = np.zeros_like(x)
    for i in range(4):
        got = net.forward(data=x if i else zeros)["prob"]
        if i:
            np.testing.assert_array_equal(got, want["prob"], err_msg=f"forward {i}")
            np.testing.assert_array_equal(net.blob("pool").data, want["pool"], err_msg=f"forward {i}")
    st = net._plan.per_image
    assert isinstance(st, per_image.PerImage) and not st.grouped and st.groups is None


def test_group_copies_that_do_not_replay_are_left(effnet_files, monkeypatch) -> None:
    """Where a group copy's plan does not replay (here: the replay's largest batch cut to 1), the batches go image by
    image from the next one on, with batch-1 bits, and the group copies are dropped."""
    from net import replay

    monkeypatch.setattr(replay, "MAX_BATCH", 1)
    x = np.random.default_rng(9).uniform(-1, 1, (4, 3, 224, 224)).astype(np.float32)
    want = _one_by_one(effnet_files, x)
    net = _load(effnet_files)
    for _ in range(5):
        np.testing.assert_array_equal(net.forward(data=x)["prob"], want["prob"])
    st = net._plan.per_image
    assert isinstance(st, per_image.PerImage) and not st.grouped and st.groups is None
    assert not any(rep._plan is not None and rep._plan.replay is False for rep in st.replicas)  # theirs do


def test_the_group_size_from_the_environment() -> None:
    """CREMA_PER_IMAGE_GROUP: a whole number from 1 to the replay's largest batch (larger ones are cut to it: their
    copies would not replay), anything else the default, 2."""
    from net import replay

    got = {v: per_image._group(v) for v in ("", "abc", "1", " 3 ", "99", "0", "-2", "2.5", "\u00b2")}
    assert got == {"": 2, "abc": 2, "1": 1, " 3 ": 3, "99": replay.MAX_BATCH, "0": 1, "-2": 2, "2.5": 2, "\u00b2": 2}


def test_images_of_any_count_get_batch_1_bits_without_a_batched_net(effnet_files) -> None:
    """per_image.Images (server.model's micro-batches): 5, then 2, then 3 images, ... through batch-1 copies, one a
    thread on 2 threads, and groups of 2 on copies at 2 where each thread gets one (4 and 5 images): each image the bits
    of its batch-1 forward; the net itself stays at batch 1, the copies are made once and replay."""
    x = np.random.default_rng(6).uniform(-1, 1, (5, 3, 224, 224)).astype(np.float32)
    want = _one_by_one(effnet_files, x)
    net = _load(effnet_files)
    images = per_image.Images(net, threads=2)
    for part in (slice(0, 5), slice(1, 3), slice(2, 5), slice(0, 5), slice(1, 5), *[slice(0, 1)] * 4, slice(0, 4)):
        got = images.run(x[part], ("prob", "pool"))
        for name in ("prob", "pool"):
            np.testing.assert_array_equal(got[name], want[name][part], err_msg=f"{name} {part}")
    assert net.blob("data").shape[0] == 1 and len(images.replicas) == 2
    assert images.grouped is True and [rep.blob("data").shape[0] for rep in images.groups.copies] == [2, 2]
    # LeNet's inner products take chunks at batch 2 (not `rowwise`): its Images never group, even where a first batch
    # of zeros would have let a check on it pass
    lenet = Net.load(ROOT / "models/lenet/deploy.prototxt", ROOT / "models/lenet/lenet.caffemodel")
    lenet.share_activations()
    light = per_image.Images(lenet, threads=2)
    light.run(np.zeros((4, 1, 28, 28), np.float32), ("prob",))
    assert light.grouped is False and light.groups is None
    copies = [*images.replicas, *images.groups.copies]
    assert not any(rep._plan is not None and rep._plan.replay is False for rep in copies)
    assert images.replicas[0]._plan.replay  # the copies replay (copy 0 ran alone four times at the end)


def test_a_kept_blob_of_the_tail_is_written_by_the_tail(effnet_files) -> None:
    x = np.random.default_rng(7).uniform(-1, 1, (3, 3, 224, 224)).astype(np.float32)
    single = _load(effnet_files, keep=("fc",))
    want = np.concatenate([single.forward(data=x[i : i + 1]) and single.blob("fc").data.copy() for i in range(3)])
    net = _load(effnet_files, keep=("fc",))
    for _ in range(4):
        net.forward(data=x)
    assert len(net._plan.per_image.tail) == 2
    np.testing.assert_array_equal(net.blob("fc").data, want)


def test_the_copies_read_the_nets_parameters(effnet_files) -> None:
    x = np.random.default_rng(6).uniform(-1, 1, (4, 3, 224, 224)).astype(np.float32)
    net = _load(effnet_files)
    for _ in range(3):
        net.forward(data=x)
    assert isinstance(net._plan.per_image, per_image.PerImage)
    ref = _load(effnet_files)
    for n in (net, ref):
        next(ly for ly in n.layers if ly.name == "fc").blobs[1].data[:] += 0.25  # in place: the copies share it
    want = np.concatenate([ref.forward(data=x[i : i + 1])["prob"] for i in range(4)])
    np.testing.assert_array_equal(net.forward(data=x)["prob"], want)


def test_copies_of_a_frozen_net_are_frozen() -> None:
    """net.per_image's copies (and server.model's batch copies) of a frozen net (Net.freeze) keep its promise: their
    convolutions take the frozen paths too, on the net's own arrays."""
    net = Net.load(Path(__file__).resolve().parents[2] / "models/caffenet/deploy.prototxt")
    net.freeze()
    rep = per_image.replica(net, batch=2)
    assert rep.frozen
    for mine, theirs in zip(rep.layers, net.layers):
        assert mine.weights_frozen and mine.blobs is theirs.blobs
    assert next(ly for ly in rep.layers if ly.name == "conv3").frozen
    net.freeze(False)  # reaches the copies kept outside the net's plan (Net.copies)
    assert not rep.frozen and not any(ly.weights_frozen for ly in rep.layers)


def test_a_copy_kept_outside_the_plan_follows_refold_and_copy_from(tmp_path) -> None:
    """server.model's batch copies and server.inside's twin outlive the net's plans: a frozen net's refold() (after a
    change in place) and copy_from (in place, then refold) reach them, or they would keep the old transforms."""
    from tests.net.test_replay import WINOGRAD

    def make() -> Net:
        return Net(upgrade_net(parse_text(WINOGRAD, "NetParameter")), seed=3)

    x = np.random.default_rng(1).uniform(-1, 1, (1, 64, 14, 14)).astype(np.float32)
    net = make()
    net.share_activations()
    net.freeze()
    rep = per_image.replica(net)
    for _ in range(6):
        net.forward(data=x)
        rep.forward(data=x)
    conv = next(ly for ly in net.layers if ly.name == "conv").blobs[0]
    conv.data[...] *= np.float32(0.5)
    net.refold()
    np.testing.assert_array_equal(rep.forward(data=x)["out"], net.forward(data=x)["out"])
    other = make()
    next(ly for ly in other.layers if ly.name == "conv").blobs[0].data[...] *= np.float32(-2.0)
    other.save(tmp_path / "w.caffemodel")
    net.copy_from(tmp_path / "w.caffemodel")
    got = rep.forward(data=x)["out"]
    np.testing.assert_array_equal(got, other.forward(data=x)["out"])
    np.testing.assert_array_equal(got, net.forward(data=x)["out"])


@pytest.mark.parametrize("case", ["lenet", "no_share", "observer", "batch_1", "off"])
def test_outside_the_rule_batches_stay_batched(effnet_files, case, monkeypatch) -> None:
    if case == "lenet":  # 2.7 FLOPs per weight byte an image
        net = Net.load(ROOT / "models/lenet/deploy.prototxt", ROOT / "models/lenet/lenet.caffemodel")
        net.share_activations()
        x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    else:
        net = Net.load(effnet_files.prototxt, effnet_files.weights)
        x = np.random.default_rng(0).uniform(-1, 1, (1 if case == "batch_1" else 2, 3, 224, 224)).astype(np.float32)
        if case != "no_share":
            net.share_activations()
        if case == "observer":
            net.observe("pool", lambda name, a: None)
        if case == "off":
            monkeypatch.setattr(per_image, "ENABLED", False)
    for _ in range(3):
        net.forward(data=x)
    assert net._plan.per_image is False
    why = per_image.eligible(net, net._plan)
    assert why is not None


def test_observed_batches_get_batch_1_bits_and_light_nets_stay_chunked(effnet_files) -> None:
    """Where per_image does not apply (an observer: `crema serve`'s feature maps), a heavy net's batched plan runs its
    inner product row by row (per_image.rowwise): a micro-batch answers each image with the bits of the image alone.
    LeNet (weights dominate) keeps the chunked kernel."""
    x = np.random.default_rng(11).uniform(-1, 1, (3, 3, 224, 224)).astype(np.float32)
    net = _load(effnet_files)
    net.observe("pool", lambda name, data: None)
    want = np.concatenate([net.forward(data=x[i : i + 1])["prob"].copy() for i in range(3)])
    for _ in range(3):
        got = net.forward(data=x)["prob"]
        np.testing.assert_array_equal(got, want)
    assert net._plan.per_image is not None and not net._plan.per_image  # batched, not image by image
    assert per_image.rowwise(net)
    lenet = Net.load(ROOT / "models/lenet/deploy.prototxt", ROOT / "models/lenet/lenet.caffemodel")
    assert not per_image.rowwise(lenet)
    # per image, whatever feeds the batch: a data layer's 64 images (LeNet's training net) are not 64 times the work
    text = (ROOT / "models/lenet/deploy.prototxt").read_text()
    start = text.index("layer {")
    data = 'layer { name: "data" type: "DummyData" top: "data" dummy_data_param { shape { dim: 64 dim: 1 dim: 28 dim: 28 } } }\n'
    body = text[start:]
    body = body[body.index("layer {", 1) :] if '"Input"' in body[: body.index("}", body.index("layer {"))] else body
    fed = Net(upgrade_net(parse_text(data + body, "NetParameter")), phase="train", seed=0)
    per = per_image.flops_per_weight_byte(fed)
    assert abs(per - per_image.flops_per_weight_byte(lenet)) <= 1e-9 * per and not per_image.rowwise(fed)


def test_a_transposed_inner_product_asked_row_by_row_takes_its_ordinary_step() -> None:
    """`rowwise` is a request the InnerProduct layer honours where W is (N, K): with transpose: true (W is (K, N)) its
    plan step is the ordinary one (the row-by-row kernel reads W's rows), so a heavy net's plan or per_image's batched
    tail can ask any InnerProduct; the step's output equals the layer's forward."""
    text = """
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 40 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
            inner_product_param { num_output: 24 transpose: true weight_filler { type: "gaussian" std: 0.1 }
                                  bias_filler { type: "gaussian" std: 0.1 } } }
    """
    net = Net(upgrade_net(parse_text(text, "NetParameter")), phase="test", seed=3)
    x = np.random.default_rng(5).standard_normal((3, 40)).astype(np.float32)
    want = net.forward(x=x)["y"].copy()
    layer, bottom, top = net.layers[1], net.bottoms[1], net.tops[1]
    assert layer.transpose
    step = layer.plan(bottom, top, rowwise=True)
    assert step is not None
    top[0].data[...] = 0.0
    assert step()
    np.testing.assert_array_equal(top[0].data, want)
