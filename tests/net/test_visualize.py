"""net.visualize: grids checked tile by tile against an independent normalisation written out here (float64,
min -> 0, max -> 255, rounded), the Caffe layout (ceil(sqrt(n)) columns, 1-pixel white separators), the layer
selector and its notes on fused layers, the caps and errors; the errors grid and confusion matrix."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from net import Net
from net.visualize import (
    MAX_SIDE,
    MAX_TILES,
    VisualizeError,
    confusion_matrix,
    confusion_png,
    errors_grid,
    filters_grid,
    find_layer,
    layer_filters,
    layer_views,
    maps_grid,
    normalise_tile,
)
from tests.conftest import ROOT

LENET = ROOT / "models" / "lenet"


def expected_tile(a: np.ndarray) -> np.ndarray:
    """The stated normalisation, written independently of net.visualize."""
    a = a.astype(np.float64)
    lo, hi = a.min(), a.max()
    if hi == lo:
        return np.zeros(a.shape, np.uint8)
    return np.floor((a - lo) / (hi - lo) * 255.0 + 0.5).astype(np.uint8)


def tiles_of(png: bytes | np.ndarray, n: int, h: int, w: int, scale: int) -> list[np.ndarray]:
    """Cut a grid (PNG bytes or its pixels) into its n tiles by the stated layout, checking the separators are
    white; returns each tile shrunk back (after checking every magnified block is uniform)."""
    img = np.asarray(Image.open(io.BytesIO(png))) if isinstance(png, bytes) else png
    cols = math.ceil(math.sqrt(n))
    rows = -(-n // cols)
    th, tw = h * scale, w * scale
    assert img.shape[:2] == (rows * (th + 1) - 1, cols * (tw + 1) - 1)
    out = []
    for k in range(n):
        r, c = divmod(k, cols)
        x, y = c * (tw + 1), r * (th + 1)
        block = img[y : y + th, x : x + tw]
        small = block[::scale, ::scale]
        assert np.array_equal(np.repeat(np.repeat(small, scale, 0), scale, 1), block)
        out.append(small)
        if c + 1 < cols:
            assert np.all(img[y : y + th, x + tw] == 255)  # separator column
        if r + 1 < rows:
            assert np.all(img[y + th, x : x + tw] == 255)  # separator row
    return out


def test_normalise_tile_is_the_stated_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 5)).astype(np.float32)
    assert np.array_equal(normalise_tile(a), expected_tile(a))
    assert normalise_tile(a).min() == 0 and normalise_tile(a).max() == 255
    assert np.array_equal(normalise_tile(np.full((3, 3), 2.5)), np.zeros((3, 3), np.uint8))
    with pytest.raises(VisualizeError, match="not all finite"):
        normalise_tile(np.array([[0.0, np.nan]]))


def test_grey_filters_grid_tiles_equal_the_known_filters():
    w = np.arange(7 * 1 * 5 * 5, dtype=np.float32).reshape(7, 1, 5, 5) % 11 - 3.0
    w[4] = 1.0  # a constant filter: black
    grid = filters_grid(w)
    assert grid.scale == 5 and (grid.shown, grid.total, grid.note) == (7, 7, "")
    tiles = tiles_of(grid.png(), 7, 5, 5, 5)
    for k in range(7):
        assert np.array_equal(tiles[k], expected_tile(w[k, 0])), k
    assert not tiles[4].any()
    assert grid.boxes[4] == (1 * 26, 1 * 26, 25, 25)  # 3 columns, tiles of 25 px + 1 px separators


@pytest.mark.parametrize("bgr", [False, True])
def test_colour_filters_grid_is_rgb_and_normalised_over_the_three_channels(bgr):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, 3, 3, 3)).astype(np.float32)
    tiles = tiles_of(filters_grid(w, bgr=bgr).png(), 5, 3, 3, 8)
    for k in range(5):
        rgb = w[k, ::-1] if bgr else w[k]
        assert np.array_equal(tiles[k], expected_tile(rgb.transpose(1, 2, 0))), k


def test_trim_zero_border():
    from net.visualize import trim_zero_border

    w = np.arange(1, 2 * 3 * 4 * 4 + 1, dtype=np.float32).reshape(2, 3, 4, 4)
    w[:, :, 0] = 0.0
    w[:, :, :, 0] = 0.0
    got, cut = trim_zero_border(w)
    assert np.array_equal(got, w[:, :, 1:, 1:]) and cut == "the first row and first column"
    w[0, 1, 0, 2] = 1.0  # one filter uses the first row: it stays
    got, cut = trim_zero_border(w)
    assert np.array_equal(got, w[:, :, :, 1:]) and cut == "the first column"
    assert trim_zero_border(np.zeros((2, 1, 3, 3)))[0].shape == (2, 1, 3, 3)  # nothing but zeros: kept as is


def test_filters_that_are_not_images_are_refused():
    with pytest.raises(VisualizeError, match=r"only filters over 1 \(grey\) or 3 \(colour\)"):
        filters_grid(np.zeros((4, 20, 5, 5), np.float32))


def test_maps_grid_tiles_equal_the_maps_and_are_capped():
    rng = np.random.default_rng(2)
    maps = rng.normal(size=(10, 6, 9)).astype(np.float32)
    grid = maps_grid(maps)
    for k, t in enumerate(tiles_of(grid.png(), 10, 6, 9, grid.scale)):
        assert np.array_equal(t, expected_tile(maps[k])), k
    big = rng.normal(size=(MAX_TILES + 44, 4, 4)).astype(np.float32)
    grid = maps_grid(big)
    assert (grid.shown, grid.total) == (MAX_TILES, MAX_TILES + 44)
    assert f"first {MAX_TILES} of {MAX_TILES + 44} channels" in grid.note
    tiles = tiles_of(grid.png(), MAX_TILES, 4, 4, grid.scale)
    assert np.array_equal(tiles[-1], expected_tile(big[MAX_TILES - 1]))


def test_huge_maps_are_refused_with_the_size():
    with pytest.raises(VisualizeError, match=rf"over the {MAX_SIDE}-pixel limit"):
        maps_grid(np.zeros((64, 600, 600), np.float32))
    with pytest.raises(VisualizeError, match="no spatial extent"):
        maps_grid(np.zeros((64, 1, 1), np.float32))


def test_lenet_layers_and_bad_names():
    net = Net.load(LENET / "deploy.prototxt", LENET / "lenet.caffemodel")
    views = layer_views(net)
    assert [(v.name, v.type, v.shape, v.filters) for v in views] == [
        ("conv1", "Convolution", (20, 24, 24), True),
        ("pool1", "Pooling", (20, 12, 12), False),
        ("conv2", "Convolution", (50, 8, 8), False),
        ("pool2", "Pooling", (50, 4, 4), False),
    ]
    grid = layer_filters(net, views[0])
    tiles = tiles_of(grid.png(), 20, 5, 5, grid.scale)
    w = net.params["conv1"][0]
    assert all(np.array_equal(tiles[k], expected_tile(w[k, 0])) for k in range(20))
    with pytest.raises(VisualizeError, match="no layer named 'conv9'.*conv1, pool1, conv2, pool2"):
        find_layer(net, "conv9")
    with pytest.raises(VisualizeError, match="'ip1' cannot be shown: it is a layer of type InnerProduct"):
        find_layer(net, "ip1")
    with pytest.raises(VisualizeError, match="'conv2' .* has no filters to show as images"):
        layer_filters(net, views[2])


def test_fused_layer_note_and_maps_equal_the_blob_of_the_forward():
    text = """name: "t" layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
    layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 6 kernel_size: 3
      stride: 2 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } } }
    layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" batch_norm_param { use_global_stats: true } }
    layer { name: "s" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
    layer { name: "r" type: "ReLU6" bottom: "c" top: "c" }
    layer { name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layer { name: "gp" type: "Pooling" bottom: "p" top: "gp" pooling_param { pool: AVE global_pooling: true } }"""
    net = Net.from_string(text, seed=3)
    rng = np.random.default_rng(4)
    bn, sc = net.params["bn"], net.params["s"]
    bn[0][...] = rng.normal(size=6)
    bn[1][...] = rng.uniform(0.5, 2.0, size=6)
    bn[2][...] = 1.0
    sc[0][...] = rng.uniform(0.5, 2.0, size=6)
    sc[1][...] = rng.normal(size=6)
    net.refold()
    views = layer_views(net)
    assert [v.name for v in views] == ["c", "p"]
    note = views[0].note
    assert "after BatchNorm 'bn', Scale 's', ReLU6 'r'" in note and "folded into its weights" in note, note
    assert "activation applied in its kernel" in note
    x = rng.normal(size=(2, 3, 12, 12)).astype(np.float32)
    net.forward(data=x)
    maps = net.blobs["c"][1]
    assert maps.min() >= 0.0 and maps.max() <= 6.0  # after the fused ReLU6
    grid = maps_grid(maps)
    assert all(
        np.array_equal(t, expected_tile(maps[k])) for k, t in enumerate(tiles_of(grid.png(), 6, 5, 5, grid.scale))
    )
    with pytest.raises(VisualizeError, match=r"'gp' cannot be shown: its output \(2, 6, 1, 1\) has no spatial maps"):
        find_layer(net, "gp")
    # an unfused copy of the net computes the same maps (BatchNorm, Scale, ReLU6 each run on their own)
    plain = Net.from_string(text, seed=3, fuse=False)
    for name in ("c", "bn", "s"):
        for a, b in zip(plain.params[name], net.params[name]):
            a[...] = b
    plain.forward(data=x)
    np.testing.assert_allclose(plain.blobs["c"], net.blobs["c"], rtol=1e-5, atol=1e-5)
    assert "fused" not in layer_views(plain)[0].note


def test_errors_grid_captions_and_count():
    rng = np.random.default_rng(5)
    images = rng.uniform(0, 1, size=(13, 1, 28, 28)).astype(np.float32)
    true, pred = np.arange(13) % 10, (np.arange(13) + 3) % 10
    prob = np.linspace(0.5, 0.99, 13)
    grid = errors_grid(images, true, pred, prob)
    assert (grid.shown, grid.total, len(grid.boxes)) == (13, 13, 13)
    img = grid.image
    lo, hi = images.min(), images.max()
    for k, (x, y, w, h) in enumerate(grid.boxes):
        tile = img[y : y + h, x : x + w][:: grid.scale, :: grid.scale]
        want = np.floor((images[k, 0].astype(np.float64) - lo) / (hi - lo) * 255 + 0.5).astype(np.uint8)
        assert np.array_equal(tile, want), k
        assert (img[y + h : y + h + 20, x : x + w] < 128).any()  # a caption under each tile
    capped = errors_grid(images, true, pred, prob, max_tiles=4)
    assert (capped.shown, capped.total) == (4, 13) and "first 4 of 13" in capped.note


def test_confusion_matrix():
    m = confusion_matrix([0, 1, 2, 2, 1], [0, 2, 2, 1, 1], 3)
    assert m.tolist() == [[1, 0, 0], [0, 1, 1], [0, 1, 1]]
    png = Image.open(io.BytesIO(confusion_png(m, ["zero", "one", "two"])))
    assert png.format == "PNG" and png.size[0] > 3 * 28
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix([0, 3], [0, 0], 3)


# -- crema test --errors on the shipped LeNet and the MNIST test set -------------------------------------------------
def test_crema_test_errors_of_the_shipped_lenet(tmp_path, monkeypatch, capsys):
    """The 10,000 MNIST test digits through the shipped LeNet: the errors grid holds exactly (1 - accuracy) * 10000
    tiles, each the digit at its data-set index with its true label; the predictions agree with OpenCV DNN on the
    same files; the confusion matrix sums to 10,000 with the correct ones on its diagonal."""
    cv2 = pytest.importorskip("cv2")
    import re

    from crema import main
    from net.datasets import load_mnist

    monkeypatch.setenv("CREMA_DATA", str(tmp_path / "empty"))  # the shipped MNIST test split
    out = tmp_path / "errors"
    rc = main(["test", "--model", str(ROOT / "examples/mnist/lenet_train_test.prototxt"), "--weights",
               str(LENET / "lenet.caffemodel"), "--iterations", "100", "--errors", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    accuracy = float(re.search(r"^accuracy = ([0-9.]+)$", text, re.MULTILINE).group(1))
    rows = [line.split(",") for line in (out / "errors.csv").read_text().splitlines()[1:]]
    wrong = round((1 - accuracy) * 10000)
    assert len(rows) == wrong and 0 < wrong < 300, (len(rows), accuracy)
    assert f"Errors: {wrong} of 10000 test images misclassified" in text

    images, labels = load_mnist("test")
    ref = cv2.dnn.readNetFromCaffe(str(LENET / "deploy.prototxt"), str(LENET / "lenet.caffemodel"))
    ref.setInput(images[:, None].astype(np.float32) * np.float32(0.00390625))
    probs = ref.forward().reshape(10000, 10)
    want = np.flatnonzero(np.argmax(probs, axis=1) != labels)
    index = np.array([int(r[0]) for r in rows])
    assert np.array_equal(np.sort(index), want)
    for i, t, p, q in rows:
        i = int(i)
        assert (int(t), int(p)) == (int(labels[i]), int(np.argmax(probs[i])))
        assert abs(float(q) - float(probs[i, int(p)])) < 1e-4

    grid = np.asarray(Image.open(out / "errors.png"))
    cols = math.ceil(math.sqrt(wrong))
    assert grid.shape[1] == cols * (28 * 3 + 1) - 1  # 28-px digits magnified 3 times (ERROR_TILE_PX 72)
    row_h = (grid.shape[0] + 1) // -(-wrong // cols)
    for k, i in enumerate(index):  # every tile is that digit (pixel * 1/256, normalised over the grid: 0..255 again)
        r, c = divmod(k, cols)
        tile = grid[r * row_h : r * row_h + 84, c * 85 : c * 85 + 84][::3, ::3]
        assert np.array_equal(tile, images[i]), (k, i)

    confusion = np.loadtxt(out / "confusion.csv", delimiter=",", skiprows=1, dtype=np.int64)[:, 1:]
    assert confusion.sum() == 10000 and np.trace(confusion) == 10000 - wrong
    assert np.array_equal(confusion.sum(axis=1), np.bincount(labels, minlength=10))
    assert Image.open(out / "confusion.png").format == "PNG"


def test_crema_test_errors_needs_an_accuracy_layer(tmp_path, monkeypatch, capsys):
    from crema import main

    monkeypatch.setenv("CREMA_DATA", str(tmp_path / "empty"))
    text = (ROOT / "examples/mnist/lenet_train_test.prototxt").read_text()
    start = text.index('layer {\n  name: "accuracy"')
    end = text.index("layer {", start + 1)
    model = tmp_path / "noacc.prototxt"
    model.write_text(text[:start] + text[end:])
    rc = main(["test", "--model", str(model), "--weights", str(LENET / "lenet.caffemodel"), "--iterations", "1",
               "--errors", str(tmp_path / "e")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "crema: error:" in err and "no Accuracy layer" in err and "Traceback" not in err


# -- crema visualize ------------------------------------------------------------------------------------------------
def test_crema_visualize_lenet(tmp_path, capsys):
    from crema import main
    from net.classify import preprocess_for
    from net.preprocess import load_image

    photo = tmp_path / "digit.png"
    Image.fromarray((np.arange(28 * 28).reshape(28, 28) % 251).astype(np.uint8)).save(photo)
    assert main(["visualize", "lenet", str(photo), "--layer", "conv1", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'o' / 'conv1_filters.png'}: 20 filters of conv1" in out
    assert f"wrote {tmp_path / 'o' / 'conv1_maps.png'}: 20 feature maps of conv1" in out
    net = Net.load(LENET / "deploy.prototxt", LENET / "lenet.caffemodel")
    tiles = tiles_of((tmp_path / "o" / "conv1_filters.png").read_bytes(), 20, 5, 5, 5)
    assert all(np.array_equal(t, expected_tile(net.params["conv1"][0][k, 0])) for k, t in enumerate(tiles))
    net.forward(data=preprocess_for(net, "lenet-auto")(load_image(photo))[None])
    tiles = tiles_of((tmp_path / "o" / "conv1_maps.png").read_bytes(), 20, 24, 24, 2)
    assert all(np.array_equal(t, expected_tile(net.blobs["conv1"][0, k])) for k, t in enumerate(tiles))
    assert main(["visualize", "lenet", str(photo), "--layer", "pool2", "--out", str(tmp_path / "p")]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["pool2_maps.png"]


def test_crema_visualize_errors(tmp_path, capsys):
    from crema import main

    photo = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(photo)
    # a 700 x 700 input through a 1x1 convolution of 64 channels: 64 tiles of 700 px are over the pixel limit
    big = tmp_path / "big.prototxt"
    big.write_text('name: "big" layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 '
                   'dim: 700 dim: 700 } } } layer { name: "wide" type: "Convolution" bottom: "data" top: "wide" '
                   'convolution_param { num_output: 64 kernel_size: 1 weight_filler { type: "xavier" } } }')  # fmt: skip
    Net.load(big).save(tmp_path / "big.caffemodel")
    cases = [
        (["lenet", "--layer", "conv7"], "no layer named 'conv7' in net 'LeNet'; layers with feature maps: conv1"),
        (["lenet", str(photo), "--layer", "ip2"], "it is a layer of type InnerProduct"),
        (["lenet", "--layer", "pool1"], "give an IMAGE to see its feature maps"),
        (["nomodel"], "unknown model 'nomodel'"),
        ([str(big), str(tmp_path / "big.caffemodel"), str(photo), "--layer", "wide"], "over the 4096-pixel limit"),
    ]
    for args, words in cases:
        assert main(["visualize", *args, "--out", str(tmp_path / "o")]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("crema: error: ") and words in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())  # nothing half-written
