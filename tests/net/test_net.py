"""Whole networks against OpenCV DNN on the same prototxt + caffemodel (random weights written by
our encoder), the V1 <-> V2 equivalence, the Python API and the errors users see."""

from __future__ import annotations

import numpy as np
import pytest

from net import Net, NetError
from tests.conftest import ROOT, randomize

cv2 = pytest.importorskip("cv2")

LENET = ROOT / "models/lenet/deploy.prototxt"
CAFFENET = ROOT / "models/caffenet/deploy.prototxt"

# Stated tolerances (issue 2): softmax within 1e-5 absolute, logits within 1e-4 relative to their scale.
PROB_ATOL = 1e-5
LOGIT_RTOL = 1e-4


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _opencv(prototxt, caffemodel, x, blobs):
    ref = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    ref.setInput(x)
    return dict(zip(blobs, ref.forward(blobs)))


@pytest.mark.parametrize("batch", [1, 5])
def test_lenet_matches_opencv(tmp_path, batch):
    net = Net.load(LENET)
    randomize(net, seed=1)
    weights = tmp_path / "lenet.caffemodel"
    net.save(weights)
    x = np.random.default_rng(2).random((batch, 1, 28, 28), dtype=np.float32)
    out = net.forward(data=x)
    ref = _opencv(LENET, weights, x, ["ip2", "prob"])
    assert out["prob"].shape == (batch, 10)
    assert np.max(np.abs(out["prob"] - ref["prob"])) <= PROB_ATOL
    assert _rel(net.blobs["ip2"], ref["ip2"]) <= LOGIT_RTOL


@pytest.mark.parametrize(("batch", "frozen"), [(2, False), (1, True)])
def test_caffenet_matches_opencv(tmp_path, batch, frozen):
    """Frozen (Net.freeze, as classify and serve run it) at batch 1: conv2 on F(4x4, 5x5), conv3-5 on F(2x2, 3x3)
    (kernels.winograd.choose); batch 2, weights that may change: conv3-5 on im2col + GEMM."""
    from kernels import winograd

    net = Net.load(CAFFENET)
    randomize(net, seed=3)
    weights = tmp_path / "caffenet.caffemodel"
    net.save(weights)
    if frozen:
        net.freeze()
    x = (np.random.default_rng(4).random((batch, 3, 227, 227), dtype=np.float32) * 255 - 120).astype(np.float32)
    out = net.forward(data=x)
    conv3 = next(ly for ly in net.layers if ly.name == "conv3")
    assert conv3.winograd_tile((batch, 256, 13, 13), (384, 256, 3, 3)) == (2 if frozen else 0)
    assert winograd.choose((batch, 256, 13, 13), (384, 256, 3, 3), 1, 1, 1, frozen=frozen) == (2 if frozen else 0)
    # conv1..conv5 are overwritten in place by their ReLUs, so compare the blobs nothing overwrites.
    ref = _opencv(CAFFENET, weights, x, ["pool1", "norm1", "pool2", "norm2", "pool5", "fc8", "prob"])
    for name in ("pool1", "norm1", "pool2", "norm2", "pool5"):
        assert _rel(net.blobs[name], ref[name]) <= LOGIT_RTOL, name
    assert _rel(net.blobs["fc8"], ref["fc8"]) <= LOGIT_RTOL
    assert np.max(np.abs(out["prob"] - ref["prob"])) <= PROB_ATOL
    # the random net must not be degenerate: predictions differ across the two inputs and are peaked
    assert out["prob"].max() > 0.05


def test_save_load_roundtrip_exact(tmp_path):
    net = Net.load(LENET)
    randomize(net, seed=5)
    path = tmp_path / "w.caffemodel"
    net.save(path)
    again = Net.load(LENET, path)
    for name in net.params:
        for a, b in zip(net.params[name], again.params[name]):
            assert np.array_equal(a, b)


def test_v1_prototxt_and_caffemodel_match_v2(tmp_path):
    from net.caffemodel import array_to_blob, encode
    from net.schema import Message

    v2 = Net.load(LENET)
    randomize(v2, seed=6)
    # V1 caffemodel: NetParameter.layers (field 2), enum types, legacy 4-D blob dims (1, 1, N, K) for IP.
    param = Message("NetParameter", name="LeNet")
    v1_types = {
        "Convolution": "CONVOLUTION",
        "Pooling": "POOLING",
        "InnerProduct": "INNER_PRODUCT",
        "ReLU": "RELU",
        "Softmax": "SOFTMAX",
    }
    for layer in v2.layers:
        if layer.type == "Input":
            continue
        lp = param.add("layers", name=layer.name, type=v1_types[layer.type])
        for blob in layer.blobs:
            lp.blobs.append(array_to_blob(blob.data, legacy=True))
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(encode(param))
    v1 = Net.load(ROOT / "tests/data/lenet_v1.prototxt", path)
    x = np.random.default_rng(7).random((3, 1, 28, 28), dtype=np.float32)
    a, b = v2.forward(data=x), v1.forward(data=x)
    assert list(a) == list(b) == ["prob"]
    assert np.array_equal(a["prob"], b["prob"])


def test_api_blobs_params_and_reshape():
    net = Net.load(LENET)
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    assert [p.shape for p in net.params["conv1"]] == [(20, 1, 5, 5), (20,)]
    assert net.params["ip1"][0].shape == (500, 800)
    randomize(net)
    for batch in (2, 7):
        out = net.forward(data=np.zeros((batch, 1, 28, 28), np.float32))
        assert out["prob"].shape == (batch, 10)
        assert net.blobs["conv2"].shape == (batch, 50, 8, 8)
        np.testing.assert_allclose(out["prob"].sum(axis=1), 1.0, rtol=1e-6)
    with pytest.raises(KeyError, match="no blob named 'nope'"):
        net.blobs["nope"]
    with pytest.raises(ValueError, match="not an input"):
        net.forward(image=np.zeros((1, 1, 28, 28), np.float32))


def test_in_place_relu_shares_blob():
    net = Net.load(CAFFENET)
    relu1 = next(i for i, layer in enumerate(net.layers) if layer.name == "relu1")
    assert net.bottoms[relu1][0] is net.tops[relu1][0]
    assert sum(1 for _ in net.blobs) == len(set(net.blobs))


DEPLOY_HEAD = (
    'name: "t" layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }\n'
)


def test_unknown_layer_type_lists_known():
    with pytest.raises(NetError, match=r"layer 'x': unknown layer type 'Conv'.*known types: .*Convolution"):
        Net.from_string(DEPLOY_HEAD + 'layer { name: "x" type: "Conv" bottom: "data" top: "x" }')


def test_missing_bottom_names_layer():
    with pytest.raises(NetError, match=r"layer 'r' \(ReLU\): bottom 'foo' is not produced by any earlier layer"):
        Net.from_string(DEPLOY_HEAD + 'layer { name: "r" type: "ReLU" bottom: "foo" top: "r" }')


def test_shape_errors_name_layer():
    text = DEPLOY_HEAD + (
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
        "convolution_param { num_output: 4 kernel_size: 11 } }"
    )
    with pytest.raises(NetError, match="Convolution 'c'"):
        Net.from_string(text)


def test_weights_of_wrong_shape_are_refused(tmp_path):
    small = Net.from_string(
        DEPLOY_HEAD + 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        "inner_product_param { num_output: 3 } }"
    )
    path = tmp_path / "w.caffemodel"
    small.save(path)
    bigger = Net.from_string(
        DEPLOY_HEAD + 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        "inner_product_param { num_output: 4 } }"
    )
    with pytest.raises(NetError, match=r"layer 'ip' blob 0 has shape \(3, 64\) in the file, the net expects \(4, 64\)"):
        bigger.copy_from(path)


def test_truncated_caffemodel_is_a_clear_error(tmp_path):
    from net.caffemodel import CaffemodelError

    net = Net.load(LENET)
    path = tmp_path / "w.caffemodel"
    net.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaffemodelError, match="w.caffemodel"):
        Net.load(LENET, path)


def test_syntax_error_names_file_and_line(tmp_path):
    from net.prototxt_loader import PrototxtError

    path = tmp_path / "bad.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  bottom "data"\n}\n')
    with pytest.raises(PrototxtError, match=r"bad.prototxt:5:"):
        Net.load(path)


def test_cpu_net_fuses_in_place_relu_with_the_same_values():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    net = Net.load(root / "models/caffenet/deploy.prototxt")
    fused = {layer.name for layer in net.layers if getattr(layer, "fused_relu", False)}
    assert fused == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"}
    x = np.random.default_rng(0).random((2, 3, 227, 227), dtype=np.float32) * 255 - 120
    got = {"prob": net.forward(data=x)["prob"]}
    feats = net.blobs["fc7"].copy()
    for layer in net.layers:  # the same net, unfused: every ReLU runs as its own layer
        if layer.type == "ReLU":
            layer.fused = False
        elif hasattr(layer, "fused_relu"):
            layer.fused_relu = False
    net.reshape()  # drops the execution plan, made with the fused layers
    assert not any(getattr(layer, "fused", False) for layer in net.layers)
    want = net.forward(data=x)["prob"]
    np.testing.assert_array_equal(got["prob"], want)
    np.testing.assert_array_equal(feats, net.blobs["fc7"])


def test_a_large_input_is_copied_on_every_thread_with_its_exact_values(monkeypatch) -> None:
    """Net.set_input copies a C-contiguous 4-D float32 input of PARALLEL_INPUT_BYTES or more with kernels.pad's row
    copy on every thread: the blob's own array (no new one), every value exact; other inputs take NumPy's copy
    (a float64 one cast as astype casts it)."""
    import numba

    from kernels import pad
    from net import net as net_module

    net = Net.load(ROOT / "models/lenet/deploy.prototxt")
    monkeypatch.setattr(net_module, "PARALLEL_INPUT_BYTES", 1 << 16)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 1, 28, 28)).astype(np.float32)  # 125 KB
    net.reshape({"data": x.shape})
    blob = net._blobs["data"]
    own = blob.data
    calls = []
    real = pad.copy_rows
    monkeypatch.setattr(pad, "copy_rows", lambda *a: calls.append(real(*a)) or calls[-1])
    net.set_input("data", x)
    assert blob.data is own
    np.testing.assert_array_equal(own, x)
    assert calls == [numba.get_num_threads() > 1]  # the row copy did it (on 2+ threads)
    x64 = rng.standard_normal(x.shape)
    net.set_input("data", x64)
    np.testing.assert_array_equal(own, x64.astype(np.float32))
    assert calls[1:] == [False]  # float64: NumPy's copy
