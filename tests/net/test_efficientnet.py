"""EfficientNet-Lite0 converted by crema (net.efficientnet, net.zoo) against independent references:

- the PyTorch port (efficientnet-lite-pytorch, asymmetric TF SAME padding) on the same weights and the same input:
  logits within 1e-4 of the largest logit (relative);
- OpenCV DNN running crema's written prototxt + caffemodel: softmax within 1e-5;
- the unfused net (BatchNorm + Scale as layers, ReLU6 as a layer): the folded one within 1e-5 relative;
- scikit-image's photos: the cat is a cat, the espresso an espresso.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from net import Net
from net.efficientnet import ConversionError, build_net, expected_shapes, same_pads, write_model
from net.preprocess import preset
from net.pth import load_state_dict
from net.zoo import efficientnet_lite0, efficientnet_pth

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return load_state_dict(efficientnet_pth())


@pytest.fixture(scope="module")
def files(state, tmp_path_factory) -> dict[str, Path]:
    return write_model(state, tmp_path_factory.mktemp("effnet") / "model")


@pytest.fixture(scope="module")
def net(files) -> Net:
    return Net.load(files["prototxt"], files["weights"])


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    skdata = pytest.importorskip("skimage.data", reason="scikit-image ships the test photos")
    return {"chelsea": skdata.chelsea(), "coffee": skdata.coffee(), "astronaut": skdata.astronaut()}


@pytest.fixture(scope="module")
def batch(photos) -> np.ndarray:
    pre = preset("efficientnet")
    return np.stack([pre(photos[k]) for k in ("chelsea", "coffee", "astronaut")])


def _labels() -> list[str]:
    return (ROOT / "models/caffenet/synset_words.txt").read_text().splitlines()


def test_same_padding_rule():
    # TF SAME: total // 2 before, the rest after
    assert same_pads(224, 3, 2) == (0, 1) and same_pads(112, 3, 2) == (0, 1)
    assert same_pads(56, 5, 2) == (1, 2) and same_pads(14, 5, 2) == (1, 2)
    assert same_pads(28, 5, 1) == (2, 2) and same_pads(7, 3, 1) == (1, 1)


@pytest.mark.parametrize("size,k", [(224, 3), (56, 5), (15, 3), (14, 5), (9, 5), (8, 3)])
def test_asymmetric_pad_as_zero_tap_kernel(size, k):
    """The converter's trick on its own: a (k+1)^2 kernel with a zero first row/column and symmetric pad `after`
    equals TF's asymmetric SAME padding (before, after) with the kxk kernel, computed in float64 by NumPy."""
    from kernels.conv import conv2d_forward_ref

    rng = np.random.default_rng(size * 10 + k)
    x = rng.standard_normal((1, 2, size, size))
    w = rng.standard_normal((3, 2, k, k))
    before, after = same_pads(size, k, 2)
    xp = np.pad(x, ((0, 0), (0, 0), (before, after), (before, after)))
    tf = conv2d_forward_ref(xp, w, None, stride=2, pad=0)
    if after == before + 1:
        ours = conv2d_forward_ref(x, np.pad(w, ((0, 0), (0, 0), (1, 0), (1, 0))), None, stride=2, pad=after)
    else:
        ours = conv2d_forward_ref(x, w, None, stride=2, pad=before)
    assert ours.shape == tf.shape == (1, 3, -(-size // 2), -(-size // 2))
    np.testing.assert_allclose(ours, tf, rtol=0, atol=1e-12)


def test_written_files_use_standard_caffe_layers(files):
    text = files["prototxt"].read_text()
    types = {line.split('"')[1] for line in text.splitlines() if line.strip().startswith("type:")}
    assert types == {"Input", "Convolution", "BatchNorm", "Scale", "ReLU6", "Eltwise", "Pooling", "InnerProduct",
                     "Softmax"}  # fmt: skip
    assert len(files["labels"].read_text().splitlines()) == 1000


def test_logits_match_pytorch_on_photos(net, batch, state):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference (test extra)")
    model_mod = pytest.importorskip("efficientnet_lite_pytorch", reason="the PyTorch port (test extra)")
    ref = model_mod.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    ref.eval()
    with torch.inference_mode():
        want = ref(torch.from_numpy(batch)).numpy()
    net.forward(data=batch)
    got = net.blobs["fc"]
    scale = np.abs(want).max(axis=1, keepdims=True)
    err = np.abs(got - want) / scale
    assert err.max() < 1e-4, f"logits differ from PyTorch by {err.max():.2e} of the largest logit"


def test_softmax_matches_opencv(files, net, batch):
    cv2 = pytest.importorskip("cv2", reason="OpenCV DNN is the reference (test extra)")
    cvnet = cv2.dnn.readNetFromCaffe(str(files["prototxt"]), str(files["weights"]))
    cvnet.setInput(batch)
    want = cvnet.forward().reshape(len(batch), -1)
    got = net.forward(data=batch)["prob"].reshape(len(batch), -1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_folded_equals_unfused(files, net, batch):
    plain = Net.load(files["prototxt"], files["weights"], fuse=False)
    assert not any(getattr(layer, "fused", False) for layer in plain.layers)
    folded = [layer for layer in net.layers if getattr(layer, "fold", None) is not None]
    assert len(folded) == sum(1 for layer in net.layers if layer.type == "BatchNorm")  # every BN + Scale folded
    assert all(layer.fused for layer in net.layers if layer.type == "ReLU6")
    want = plain.forward(data=batch)["prob"]
    got = net.forward(data=batch)["prob"]
    for name in ("stem", "block1/dw", "block4/add", "head", "fc"):
        a, b = net.blobs[name], plain.blobs[name]
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), name
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_top5_on_photos(net, batch):
    labels = _labels()
    probs = net.forward(data=batch)["prob"].reshape(len(batch), -1)
    top = [[labels[i].split(" ", 1)[1] for i in np.argsort(-p)[:5]] for p in probs]
    cat, coffee = top[0], top[1]
    assert cat[0].startswith(("tiger cat", "tabby", "Egyptian cat")), cat
    assert sum(name.startswith(("tiger cat", "tabby", "Egyptian cat")) for name in cat[:3]) == 3, cat
    assert coffee[0] == "espresso" and probs[1].max() > 0.8, (coffee, probs[1].max())


# -- bad input --------------------------------------------------------------------------------------------------
def test_missing_extra_and_misshapen_tensors_are_named(state, tmp_path):
    broken = dict(state)
    del broken["_blocks.3._bn1.running_var"]
    broken["_blocks.99._se_reduce.weight"] = np.zeros((4, 4, 1, 1), np.float32)
    broken["_fc.weight"] = np.zeros((10, 1280), np.float32)
    out = tmp_path / "m"
    with pytest.raises(ConversionError) as err:
        write_model(broken, out)
    msg = str(err.value)
    assert "1 missing: _blocks.3._bn1.running_var" in msg
    assert "1 unexpected: _blocks.99._se_reduce.weight" in msg
    assert "1 misshapen: _fc.weight (10, 1280) (expected (1000, 1280))" in msg
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written


def test_non_float_tensor_refused(state):
    broken = dict(state)
    broken["_fc.bias"] = np.zeros(1000, np.int64)
    with pytest.raises(ConversionError, match="_fc.bias has dtype int64"):
        build_net(broken)


def test_expected_shapes_cover_the_wheel(state):
    shapes = expected_shapes()
    assert list(shapes) == list(state)  # same names, same order as the published file
    assert sum(int(np.prod(s)) for k, s in shapes.items() if "num_batches" not in k) > 4_600_000


def _convert_in_child(cache: str, queue) -> None:  # pragma: no cover - runs in a child process
    try:
        files = efficientnet_lite0(cache=cache, say=lambda _msg: None)
        queue.put(str(files.weights))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(f"error: {exc!r}")


def test_racing_conversions_leave_one_complete_copy(tmp_path):
    """Two processes converting into one cache at once: both get complete files, no temporary folder is left."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_convert_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results[0] == results[1] and not results[0].startswith("error"), results
    models = tmp_path / "models"
    assert [p.name for p in models.iterdir()] == [Path(results[0]).parent.name]  # no leftovers
    again = efficientnet_lite0(cache=tmp_path, say=lambda _msg: None)
    assert str(again.weights) == results[0]
    net = Net.load(again.prototxt, again.weights)
    assert net.blob("prob").shape == (1, 1000, 1, 1) or net.blob("prob").shape == (1, 1000)


def test_cli_import_and_classify_default_model(tmp_path, photos):
    from PIL import Image

    env = {**os.environ, "CREMA_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "imported"
    r = subprocess.run([sys.executable, "-m", "crema", "import", "efficientnet-lite0", "--out", str(out)],
                       check=False, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (out / "deploy.prototxt").is_file() and (out / "efficientnet-lite0.caffemodel").is_file()
    photo = tmp_path / "cat.jpg"
    Image.fromarray(photos["chelsea"]).save(photo, quality=95)
    r = subprocess.run([sys.executable, "-m", "crema", "classify", str(photo)],
                       check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(photo) and len(lines) == 6
    assert "cat" in lines[1] and "n0" not in r.stdout  # the top class in words, WordNet ids stripped


def test_hostile_or_broken_pth_is_refused_and_nothing_is_cached(tmp_path, capsys):
    """A .pth whose pickle tries to run code, and one cut short: one clear error each, nothing executed, nothing
    left in the cache or the output folder."""
    import pickle

    from crema import main
    from net.pth import PthError

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"_conv_stem.weight": Evil()}, protocol=2))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(efficientnet_pth().read_bytes()[:5_000_000])
    cache = tmp_path / "cache"
    for bad, what in ((evil, "refused global posix.system|refused global os.system"), (cut, "truncated")):
        with pytest.raises(PthError, match=what):
            efficientnet_lite0(pth=bad, cache=cache, say=lambda _msg: None)
        assert not (cache / "models").exists() or list((cache / "models").iterdir()) == []
        out = tmp_path / f"out-{bad.stem}"
        assert main(["import", "efficientnet-lite0", "--pth", str(bad), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("crema: error: ") and str(bad) in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
    assert not marker.exists()
