"""net.per_image: a batch of EfficientNet-Lite0 with shared activations runs image by image on batch-1 copies of the
net, and every image gets the bits of a batch-1 forward of it (outputs and kept blobs), on 2 threads and on 1; nets
and settings outside its rule stay batched; the copies see the net's parameters as they change."""

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
    """fuse: the stem fused with block 0's depthwise where AVX-512 runs it (net.plan_steps.fuse_conv_depthwise: the
    copies' replays start from their input blob); else the copies' replays start by padding it, and each image is fed
    into that padding."""
    from kernels import mbconv
    from net import plan_steps

    monkeypatch.setattr(plan_steps, "FUSE_STEM", fuse)
    saved = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        x = np.random.default_rng(5).uniform(-1, 1, (5, 3, 224, 224)).astype(np.float32)
        want = _one_by_one(effnet_files, x)
        net = _load(effnet_files)
        for i in range(7):  # the first decides the launcher, the second makes the copies, their replays follow
            got = net.forward(data=x)["prob"]
            if i:
                np.testing.assert_array_equal(got, want["prob"], err_msg=f"forward {i}")
                np.testing.assert_array_equal(net.blob("pool").data, want["pool"], err_msg=f"forward {i}")
        st = net._plan.per_image
        assert isinstance(st, per_image.PerImage)
        assert all(rep._plan.replay for rep in st.replicas)  # the copies replay
        if fuse and mbconv.ENABLED:  # ... the stem and block 0's depthwise one step (AVX-512), each band padded in
            # its own buffer
            assert all(isinstance(rep._plan.steps[0][0].runner, mbconv.ConvDepthwiseRunner) for rep in st.replicas)
        else:  # ... from the stem's zero-bordered buffer, which each image is copied into from the batch (_fed)
            assert all(rp is rep._plan.replay and pad is not None for (rp, pad), rep in zip(st.feeds, st.replicas))
        # ... up to the pooling: fc and prob run once for the batch, fc row by row with batch-1 bits (checked above)
        assert len(st.tail) == 2 and all(rep.layers[-1].name == "pool" for rep in st.replicas)
        assert len(st.replicas) == numba.get_num_threads()
    finally:
        numba.set_num_threads(saved)


def test_images_of_any_count_get_batch_1_bits_without_a_batched_net(effnet_files) -> None:
    """per_image.Images (server.model's micro-batches): 5, then 2, then 3 images through batch-1 copies, one a thread
    on 2 threads: each image the bits of its batch-1 forward; the net itself stays at batch 1 and the copies are made
    once."""
    x = np.random.default_rng(6).uniform(-1, 1, (5, 3, 224, 224)).astype(np.float32)
    want = _one_by_one(effnet_files, x)
    net = _load(effnet_files)
    images = per_image.Images(net, threads=2)
    for part in (slice(0, 5), slice(1, 3), slice(2, 5), slice(0, 5)):
        got = images.run(x[part], ("prob", "pool"))
        for name in ("prob", "pool"):
            np.testing.assert_array_equal(got[name], want[name][part], err_msg=f"{name} {part}")
    assert net.blob("data").shape[0] == 1 and len(images.replicas) == 2
    assert all(rep._plan.replay for rep in images.replicas)  # the copies replay


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
