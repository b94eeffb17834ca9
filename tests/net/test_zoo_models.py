"""The published ImageNet architectures under models/ (written by models/generate_zoo.py) against OpenCV DNN on the
same prototxt and the same random weights (written by our encoder): softmax within 1e-5 absolute, every blob
crema computes within 1e-4 relative to its scale (OpenCV asked for the output of the last layer that writes it).

Cost on 2 cores: batch 1 at the published input size, except VGG-16 (15.5 GMACs at 224x224, and fc6 alone
is 103 M weights there): the same graph with its Input reshaped to 32x32, so fc6 sees 512x1x1 (2 M weights) and the
convolutions do 0.3 GMACs. The others need their published size: their last pooling has a fixed 7x7 kernel
(GoogLeNet, ResNet-50) or is global (SqueezeNet, MobileNet; 227 / 224 are kept for the same shapes as published).
"""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

from net import Net
from tests.conftest import ROOT

cv2 = pytest.importorskip("cv2")

MODELS = ROOT / "models"
PROB_ATOL = 1e-5
BLOB_RTOL = 1e-4

# name -> input height/width used here (None: the prototxt's own)
LOGIT_GAIN = {"mobilenet_v2": 0.05}
NETS = {
    "googlenet": None,
    "squeezenet1.0": None,
    "squeezenet1.1": None,
    "vgg16": 32,
    "resnet50": None,
    "mobilenet_v1": None,
    "mobilenet_v2": None,
}


def _generator():
    spec = importlib.util.spec_from_file_location("generate_zoo", MODELS / "generate_zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prototxt_text(name: str, size: int | None, batch: int = 1) -> str:
    """The committed deploy.prototxt, its Input shape set to (batch, 3, size, size) when asked."""
    text = (MODELS / name / "deploy.prototxt").read_text()
    shape = re.search(r"shape \{\s*dim: 1\s*dim: 3\s*dim: (\d+)\s*dim: (\d+)\s*\}", text)
    assert shape is not None, f"{name}: no Input shape (1, 3, H, W)"
    h = w = size if size is not None else int(shape.group(1))
    return text[: shape.start()] + f"shape {{ dim: {batch} dim: 3 dim: {h} dim: {w} }}" + text[shape.end() :]


def fill_random(net: Net, seed: int, logit_gain: float = 1.0) -> None:
    """Random weights that keep activations O(1) through a deep net: He-normal convolution / InnerProduct weights,
    small biases; BatchNorm means N(0, 0.2), variances U(0.5, 2), scale factor U(0.5, 2) (Caffe divides the
    statistics by it); Scale gamma U(0.5, 1.5), beta N(0, 0.1), but U(0.3, 0.6) on a Scale whose output enters an
    Eltwise sum (the end of a residual branch, as trained ResNets have it), else 16 residual sums grow the logits'
    scale into the hundreds and the softmax is one-hot. The classifier's weights and bias are multiplied by
    `logit_gain` (MobileNet v2's random statistics still leave logits with a std near 50)."""
    rng = np.random.default_rng(seed)
    summed = {b.name for layer, bottoms in zip(net.layers, net.bottoms) if layer.type == "Eltwise" for b in bottoms}
    for layer, tops in zip(net.layers, net.tops):
        blobs = [b.data for b in layer.blobs]
        if not blobs:
            continue
        if layer.type == "BatchNorm":
            mean, var, factor = blobs
            f = rng.uniform(0.5, 2.0)
            factor[...] = f
            mean[...] = rng.normal(0.0, 0.2, mean.shape) * f
            var[...] = rng.uniform(0.5, 2.0, var.shape) * f
        elif layer.type == "Scale":
            low, high = (0.3, 0.6) if tops[0].name in summed else (0.5, 1.5)
            blobs[0][...] = rng.uniform(low, high, blobs[0].shape)
            for b in blobs[1:]:
                b[...] = rng.normal(0.0, 0.1, b.shape)
        else:
            w = blobs[0]
            w[...] = rng.normal(0.0, np.sqrt(2.0 / w[0].size), w.shape)
            for b in blobs[1:]:
                b[...] = rng.normal(0.0, 0.05, b.shape)
            if tops[0].name == net.bottoms[-1][0].name:  # the classifier (feeds the final Softmax)
                for b in blobs:
                    b *= logit_gain


def last_writers(net: Net) -> dict[str, str]:
    """blob name -> name of the last layer that writes it (in-place layers included), for blobs crema computes.
    Split layers (inserted by crema, unknown to OpenCV) and the input are left out."""
    writers: dict[str, str] = {}
    for layer, tops in zip(net.layers, net.tops):
        if layer.type in ("Split", "Input"):
            continue
        for t in tops:
            writers[t.name] = layer.name
    return writers


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def test_prototxts_are_what_the_generator_writes():
    gen = _generator()
    assert set(gen.NETS) == set(NETS)
    for name, make in gen.NETS.items():
        assert (MODELS / name / "deploy.prototxt").read_text() == make(), f"run python models/generate_zoo.py ({name})"


# Published parameter counts (learnable weights and biases; BatchNorm statistics not counted), from the papers /
# the authors' model cards: a check that the architecture is the published one, not only self-consistent.
PARAMS = {
    "googlenet": 6_998_552,
    "squeezenet1.0": 1_248_424,
    "squeezenet1.1": 1_235_496,
    "vgg16": 138_357_544,
    "resnet50": 25_557_032 + 64,  # + conv1's bias: He's Caffe conv1 has one (bias_term left on), the paper's count not
    "mobilenet_v1": 4_231_976,
    "mobilenet_v2": 3_504_872 + 1_088,  # + shicai's conv2_1/expand (32x32 1x1 + Scale 64) that the paper's t=1 omits
}


@pytest.mark.parametrize("name", list(NETS))
def test_published_parameter_count(name):
    net = Net.load(MODELS / name / "deploy.prototxt", fuse=False)
    count = sum(b.count for layer in net.layers if layer.type != "BatchNorm" for b in layer.blobs)
    assert count == PARAMS[name]
    assert net.blobs["prob"].shape == (1, 1000) or net.blobs["prob"].shape == (1, 1000, 1, 1)


@pytest.mark.parametrize("name", list(NETS))
def test_matches_opencv(tmp_path, name):
    size = NETS[name]
    proto = tmp_path / "deploy.prototxt"
    proto.write_text(prototxt_text(name, size))
    weights = tmp_path / "random.caffemodel"
    builder = Net.load(proto, fuse=False)
    fill_random(builder, seed=sum(map(ord, name)), logit_gain=LOGIT_GAIN.get(name, 1.0))
    builder.save(weights)
    del builder

    net = Net.load(proto, weights)  # as a user loads it: BatchNorm/Scale folded, ReLUs fused where they can be
    x = np.random.default_rng(7).normal(0.0, 1.0, net.blobs["data"].shape).astype(np.float32)
    out = net.forward(data=x)
    writers = last_writers(net)

    ref = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    # unfused, so every asked-for output is that layer's own (fused, OpenCV writes Concat inputs straight into the
    # Concat's buffer and returns zeros for them) and OpenCV runs each BatchNorm / Scale / ReLU on its own
    ref.enableFusion(False)
    ref.setInput(x)
    names = list(writers)
    got = dict(zip(names, ref.forward([writers[n] for n in names])))

    worst = max(names, key=lambda n: _rel(net.blobs[n].reshape(got[n].shape), got[n]))
    assert _rel(net.blobs[worst].reshape(got[worst].shape), got[worst]) <= BLOB_RTOL, worst
    prob = out["prob"].reshape(1, -1)
    assert np.max(np.abs(prob - got["prob"].reshape(1, -1))) <= PROB_ATOL
    # the random net is not degenerate: a peaked but not one-hot answer
    assert 0.002 < prob.max() < 0.999


def test_batch_of_two_matches_opencv(tmp_path):
    """Batch > 1 on one net (SqueezeNet v1.1: Concat, ceil-mode pooling, global pooling), two different images."""
    proto = tmp_path / "deploy.prototxt"
    proto.write_text(prototxt_text("squeezenet1.1", None, batch=2))
    weights = tmp_path / "random.caffemodel"
    builder = Net.load(proto, fuse=False)
    fill_random(builder, seed=11)
    builder.save(weights)
    net = Net.load(proto, weights)
    x = np.random.default_rng(8).normal(0.0, 1.0, (2, 3, 227, 227)).astype(np.float32)
    prob = net.forward(data=x)["prob"].reshape(2, -1)
    ref = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    ref.setInput(x)
    assert np.max(np.abs(prob - ref.forward("prob").reshape(2, -1))) <= PROB_ATOL
    assert not np.allclose(prob[0], prob[1])


# -- names (net.zoo) and FLOPs (net.flops) --------------------------------------------------------------------------
def test_names_resolve_to_the_files_and_say_how_to_get_weights(tmp_path, monkeypatch):
    from net import zoo
    from net.preprocess import preset

    for name in NETS:
        assert zoo.is_model_name(name) and zoo.zoo_prototxt(name) == MODELS / name / "deploy.prototxt"
        preset(zoo.CAFFE_ZOO[name].preset)  # a known preprocessing preset
    monkeypatch.setattr(zoo, "MODELS", tmp_path)
    with pytest.raises(ValueError, match="run `crema download googlenet`"):
        zoo.resolve("googlenet")
    (tmp_path / "googlenet").mkdir()
    (tmp_path / "googlenet" / "bvlc_googlenet.caffemodel").write_bytes(b"")
    files = zoo.resolve("GoogLeNet")
    assert files.weights == tmp_path / "googlenet" / "bvlc_googlenet.caffemodel"
    assert files.labels == zoo.IMAGENET_LABELS and files.preset == "caffe-224"


def test_flops_by_hand():
    from net.flops import layer_flops

    net = Net.from_string(
        """
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 4 kernel_size: 3 group: 1 } }
        layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
        layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
        layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }
        layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
        """
    )
    conv_out = 2 * 4 * 7 * 7  # N * Cout * 7 * 7
    pool_out = 2 * 4 * 4 * 4  # Caffe rounds up: ceil((7 - 2) / 2) + 1 = 4
    assert layer_flops(net) == [
        0,
        2 * conv_out * 3 * 3 * 3 + conv_out,
        conv_out,
        pool_out * 4,
        2 * (2 * 5) * 64 + 2 * 5,
        4 * 2 * 5,
    ]


# Published multiply-adds of the convolutions and fully connected layers: MobileNet v1 569 M (Howard et al., table
# 1 note), ResNet-50 3.8 G (He et al., table 1), SqueezeNet v1.0 1.72 GFLOPS (forresti/SqueezeNet v1.1 README).
@pytest.mark.parametrize(("name", "macs"), [("mobilenet_v1", 569e6), ("resnet50", 3.8e9), ("squeezenet1.0", 0.86e9)])
def test_flops_match_the_published_counts(name, macs):
    from net.flops import layer_flops

    net = Net.load(MODELS / name / "deploy.prototxt")
    counts = zip(layer_flops(net), net.layers)
    ours = sum(c for c, layer in counts if layer.type in ("Convolution", "InnerProduct"))  # bias adds: < 0.1%
    assert abs(ours / 2 - macs) / macs < 0.02


def test_inspect_and_time_take_a_zoo_name(capsys):
    import json

    from crema import main
    from net.flops import layer_flops

    assert main(["inspect", "squeezenet1.1"]) == 0
    out = capsys.readouterr().out
    total = sum(f for f in layer_flops(Net.load(MODELS / "squeezenet1.1" / "deploy.prototxt")) if f)
    assert "fire9/expand3x3" in out and "total parameters: 1,235,496" in out
    assert f"total FLOPs per forward: {total:,} (a multiply-add counts 2)" in out
    assert main(["time", "squeezenet1.1", "--iterations", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["flops"] == total and report["layers"][1]["flops"] > 0
