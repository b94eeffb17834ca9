"""server.model: feature blob choice, labels (synset_words.txt), the colour (CaffeNet-style) path on a small
3-channel net, softmax for nets that end in logits, load errors."""

from __future__ import annotations

import argparse
import io
import re

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from net import Net
from server.app import AppConfig, create_app
from server.cli import load_model
from server.model import Model, default_feature_blob, display_label
from tests.conftest import ROOT, randomize

MINI = """name: "MiniColor"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 32 dim: 32 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 5 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool1" top: "fc1" inner_product_param { num_output: 16 } }
layer { name: "relu2" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 5 } }
"""
WORDS = ["n00000001 red thing, crimson", "n00000002 green thing", "n00000003 blue thing, azure, sky",
         "n00000004 grey thing", "n00000005 other"]  # fmt: skip


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    d = tmp_path_factory.mktemp("mini")
    (d / "deploy.prototxt").write_text(MINI)
    (d / "synset_words.txt").write_text("\n".join(WORDS) + "\n")
    net = Net.load(d / "deploy.prototxt", phase="test")
    randomize(net, seed=3)
    net.save(d / "mini.caffemodel")
    return d


def test_feature_blobs_of_the_shipped_models():
    assert default_feature_blob(Net.load(ROOT / "models/lenet/deploy.prototxt")) == "ip1"
    assert default_feature_blob(Net.load(ROOT / "models/caffenet/deploy.prototxt")) == "fc7"


def test_imagenet_labels_file():
    lines = (ROOT / "models/caffenet/synset_words.txt").read_text().splitlines()
    assert len(lines) == 1000 and all(re.fullmatch(r"n\d{8} \S.*", s) for s in lines)
    wnids = [s.split()[0] for s in lines]
    assert wnids == sorted(set(wnids))  # ILSVRC class index order is the sorted WordNet ids
    assert lines[0] == "n01440764 tench, Tinca tinca" and lines[281] == "n02123045 tabby, tabby cat"
    assert lines[999] == "n15075141 toilet tissue, toilet paper, bathroom tissue"
    assert display_label(lines[281]) == "tabby, tabby cat"
    assert display_label("7") == "7" and display_label("n123 not a wnid") == "n123 not a wnid"


def test_colour_model_end_to_end(mini):
    args = argparse.Namespace(model=str(mini / "deploy.prototxt"), weights=str(mini / "mini.caffemodel"), labels=None,
                              preset=None, feature_blob=None)  # fmt: skip
    model = load_model(args)  # labels found beside the prototxt
    assert model.preset == "caffenet" and model.input_shape == (3, 32, 32) and model.feature_blob == "fc1"
    assert model.labels[2] == "blue thing, azure, sky" and model.query_label(2) == "blue thing"
    rgb = np.zeros((40, 50, 3), dtype=np.uint8)
    rgb[..., 2] = 200
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    with TestClient(create_app(model, config=AppConfig(warmup=False))) as c:
        r = c.post("/api/search", files={"image": ("b.jpg", buf.getvalue(), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    # reference: the same preprocessing (pre-checked elsewhere) and a plain NumPy softmax of the logits
    net = Net.load(mini / "deploy.prototxt", mini / "mini.caffemodel", phase="test")
    logits = net.forward(data=model.pre(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))[None])["fc2"][0]
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    assert [q["index"] for q in body["predictions"]] == order.tolist()
    np.testing.assert_allclose([q["prob"] for q in body["predictions"]], p[order], rtol=0, atol=1e-6)
    assert body["predictions"][0]["label"] == display_label(WORDS[order[0]])
    assert body["query"] == display_label(WORDS[order[0]]).split(",")[0]


def test_infer_shapes_and_features(model):
    assert model.net.frozen  # its weights never change in place (Net.freeze)
    x = np.stack([model.preprocess(np.full((28, 28), v, dtype=np.uint8)) for v in (0, 128, 255)])
    probs, feats = model.infer(x)
    assert probs.shape == (3, 10) and feats.shape == (3, 500)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    norms = np.linalg.norm(feats, axis=1)
    assert np.all((np.abs(norms - 1) < 1e-5) | (norms == 0))
    with pytest.raises(ValueError, match=r"expected input \(N, \(1, 28, 28\)\)"):
        model.infer(np.zeros((1, 3, 28, 28), dtype=np.float32))


def test_infer_any_runs_steady_sizes(lenet_files, monkeypatch):
    """Micro-batches of any size: LeNet (batched) in chunks of 8, 4, 2 and 1, each size on its own copy of the net
    kept at that size (no new plan for a size seen before); each chunk's rows are the same bits as that chunk run
    alone through `infer`, and all rows match one batched `infer` within 1e-5 (its inner products sum in another order:
    up to 1.8e-6 here). A net whose batches go image by image
    (EfficientNet-Lite0's rule, net.per_image.image_by_image) runs each image as a batch-1 forward: the bits of each
    image alone through `infer`."""
    import net.per_image

    model = Model.load(lenet_files["prototxt"], lenet_files["weights"], lenet_files["labels"])
    x = np.random.default_rng(0).standard_normal((11, 1, 28, 28)).astype(np.float32)
    shapes = []
    forward = Net.forward
    monkeypatch.setattr(
        Net, "forward", lambda self, **kw: shapes.append((id(self), len(kw["data"]))) or forward(self, **kw)
    )
    probs, feats = model.infer_any(x)
    assert [n for _, n in shapes] == [8, 2, 1]
    nets = {n: i for i, n in shapes}
    assert nets[1] == id(model.net) and len(set(nets.values())) == 3
    shapes.clear()
    model.infer_any(x[:5])  # 4 + 1: the size-4 copy is new, the others are not touched
    model.infer_any(x[:10])  # 8 + 2 again, on the same copies
    assert [n for _, n in shapes] == [4, 1, 8, 2] and {i for i, n in shapes if n in (8, 2)} <= set(nets.values())
    start = 0
    for size in (8, 2, 1):
        p, f = model.infer(x[start : start + size])
        assert np.array_equal(probs[start : start + size], p) and np.array_equal(feats[start : start + size], f)
        start += size
    p, f = model.infer(x)
    np.testing.assert_allclose(probs, p, rtol=0, atol=1e-5)
    np.testing.assert_allclose(feats, f, rtol=0, atol=1e-5)
    # image by image: every image a batch-1 forward, on batch-1 copies of the net (net.per_image.Images, one a
    # thread), with the bits of that image alone through `infer`
    monkeypatch.setattr(net.per_image, "image_by_image", lambda net: True)
    by_image = Model.load(lenet_files["prototxt"], lenet_files["weights"], lenet_files["labels"])
    shapes.clear()
    probs, feats = by_image.infer_any(x[:5])
    # (no groups of 2: LeNet's inner products sum in another order at batch 2, net.per_image.rowwise)
    assert [n for _, n in shapes] == [1] * 5 and id(by_image.net) not in {i for i, _ in shapes}
    assert by_image._images.grouped is False
    for i in range(5):
        p, f = by_image.infer(x[i : i + 1])
        assert np.array_equal(probs[i], p[0]) and np.array_equal(feats[i], f[0])


def test_load_errors(lenet_files, tmp_path):
    with pytest.raises(ValueError, match="weights file .* not found"):
        Model.load(lenet_files["prototxt"], tmp_path / "missing.caffemodel")
    with pytest.raises(ValueError, match="no blob named 'fc9'"):
        Model.load(lenet_files["prototxt"], lenet_files["weights"], feature_blob="fc9")
    (tmp_path / "bad.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="has 2 labels, the model outputs 10 classes"):
        Model.load(lenet_files["prototxt"], lenet_files["weights"], tmp_path / "bad.txt")


def test_warm_steps_of_an_image_by_image_net(lenet_files, monkeypatch):
    """An image-by-image net's warm-up (net.per_image.Images): a batch of one image a thread and one of a group of 2 a
    thread (2 threads: 2 and 4; one thread: a group and an image, 3, and a group, 2), capped by the batcher's largest
    batch (at least 2), RECORD_AT + 2 forwards each."""
    import numba

    import net.per_image
    from net.replay import RECORD_AT

    monkeypatch.setattr(net.per_image, "image_by_image", lambda net: True)
    monkeypatch.setattr(net.per_image, "GROUP", 2)
    model = Model.load(lenet_files["prototxt"], lenet_files["weights"], lenet_files["labels"])

    def sizes(threads, max_batch):
        saved = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            steps = model.warm_steps(max_batch)
        finally:
            numba.set_num_threads(saved)
        got = [len(step.args[0]) for step in steps]
        assert len(got) == len(set(got)) * (RECORD_AT + 2)
        return sorted(set(got))

    assert sizes(1, 32) == [2, 3] and sizes(1, 2) == [2]
    if numba.config.NUMBA_NUM_THREADS >= 2:
        assert sizes(2, 32) == [2, 4] and sizes(2, 3) == [2] and sizes(2, 1) == [2]


def test_the_app_warms_infer_anys_copies_after_start_up(lenet_files):
    """With warm-up on, the app makes infer_any's copies (LeNet: one per chunk size) and records their replays after
    start-up, between requests: later micro-batches find their copies planned, those of 2 and 4 replayed (net.replay
    records batches up to MAX_BATCH, 4; a batch of 8 keeps its Python steps)."""
    import time

    from server.web import WebSearch

    model = Model.load(lenet_files["prototxt"], lenet_files["weights"], lenet_files["labels"])
    assert len(model.warm_steps()) == 3 * 5  # sizes 2, 4, 8, RECORD_AT + 2 forwards each
    with TestClient(create_app(model, web=WebSearch(None), config=AppConfig())):
        deadline = time.monotonic() + 60
        while set(model._sized) != {2, 4, 8} and time.monotonic() < deadline:
            time.sleep(0.05)
        while time.monotonic() < deadline and not all(
            net._plan is not None and net._plan.replay is not None for net in model._sized.values()
        ):
            time.sleep(0.05)
    assert set(model._sized) == {2, 4, 8}
    assert model._sized[2]._plan.replay and model._sized[4]._plan.replay and model._sized[8]._plan.replay is False
