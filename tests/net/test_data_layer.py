"""The `Data` layer: shapes, Caffe's transformation against a NumPy reference, sequential wrap-around at TEST,
seeded per-epoch shuffling at TRAIN, state/set_state resuming the exact batch stream, sources and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from net import Net, NetError
from net.caffemodel import save_binaryproto
from net.datasets import MNIST_HISTOGRAMS, idx_paths, read_idx, write_idx
from net.layers.data import DataLayer, resolve_source
from tests.conftest import ROOT

N = 10
SCALE = np.float32(0.00390625)


@pytest.fixture
def mini(tmp_path):
    """A 10-sample IDX data set (train and t10k): image i holds random pixels, label i % 10 (test: reversed)."""
    rng = np.random.default_rng(5)
    data = {}
    for split in ("train", "test"):
        images = rng.integers(0, 256, size=(N, 28, 28), dtype=np.uint8)
        labels = (np.arange(N) % 10).astype(np.uint8)[:: 1 if split == "train" else -1].copy()
        ipath, lpath = idx_paths(tmp_path / "mini", split)
        write_idx(ipath, images)
        write_idx(lpath, labels)
        data[split] = (images, labels)
    return tmp_path / "mini", data


def data_net(source: str, *, phase: str, batch: int = 4, seed: int = 0, transform: str = "", tops: int = 2) -> Net:
    top = 'top: "data" top: "label"' if tops == 2 else 'top: "data"'
    text = f"""
        name: "d"
        layer {{ name: "mnist" type: "Data" {top}
          transform_param {{ scale: 0.00390625 {transform} }}
          data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}
    """
    return Net.from_string(text, phase=phase, seed=seed)


def batches(net: Net, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for _ in range(count):
        res = net.forward()
        out.append((res["data"], res.get("label")))
    return out


def test_shapes_scale_and_labels_at_test(mini):
    root, data = mini
    net = data_net(f"{root}/test", phase="test", batch=4)
    assert isinstance(net.layers[0], DataLayer) and net.inputs == []
    assert net.blob("data").shape == (4, 1, 28, 28) and net.blob("label").shape == (4,)
    x, y = batches(net, 1)[0]
    images, labels = data["test"]
    assert x.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0], images[:4].astype(np.float32) * SCALE)  # Caffe: float(pixel) * scale
    np.testing.assert_array_equal(y, labels[:4].astype(np.float32))
    assert x.max() <= 255 / 256


def test_test_phase_is_sequential_and_wraps_around(mini):
    root, data = mini
    net = data_net(f"{root}/test", phase="test", batch=4)
    images, labels = data["test"]
    layer = net.layers[0]
    want = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5], [6, 7, 8, 9], [0, 1, 2, 3]]
    epochs = [0, 0, 1, 1, 1, 2]  # the epoch count after each batch (a new one starts when the data run out)
    for idx, epoch in zip(want, epochs):
        x, y = batches(net, 1)[0]
        np.testing.assert_array_equal(x[:, 0], images[idx] * SCALE)
        np.testing.assert_array_equal(y, labels[idx])
        assert layer.epoch == epoch


def test_batch_larger_than_the_data_wraps_several_times(mini):
    root, data = mini
    net = data_net(f"{root}/train", phase="test", batch=25)
    y = batches(net, 1)[0][1]
    np.testing.assert_array_equal(y, data["train"][1][np.arange(25) % N])


def test_train_shuffles_each_epoch_with_the_seed(mini):
    root, data = mini
    images, _ = data["train"]
    flat = images.reshape(N, -1).astype(np.float32) * SCALE

    def epoch_orders(seed: int, epochs: int = 3) -> list[list[int]]:
        net = data_net(f"{root}/train", phase="train", batch=5, seed=seed)
        seen = []
        for x, y in batches(net, 2 * epochs):
            # which stored sample each row is (images are distinct random noise), checked against its label
            idx = [int(np.flatnonzero((flat == row).all(axis=1))[0]) for row in x.reshape(5, -1)]
            np.testing.assert_array_equal(y, data["train"][1][idx])
            seen += idx
        return [seen[k * N : (k + 1) * N] for k in range(epochs)]

    orders = epoch_orders(seed=3)
    for order in orders:
        assert sorted(order) == list(range(N))  # each epoch visits every sample once
    assert orders[0] != orders[1] != orders[2] and orders[0] != list(range(N))
    assert epoch_orders(seed=3) == orders  # same seed, same stream
    assert epoch_orders(seed=4) != orders


def test_train_batch_straddles_epochs(mini):
    root, _ = mini
    net = data_net(f"{root}/train", phase="train", batch=4, seed=1)
    layer = net.layers[0]
    ys = np.concatenate([y for _, y in batches(net, 5)])  # 20 labels = 2 epochs exactly, batch 3 straddles
    assert sorted(ys[:N]) == sorted(ys[N:]) == list(range(N))
    assert (layer.epoch, layer.position) == (1, N)


@pytest.mark.parametrize(
    ("phase", "transform", "before"),
    [
        ("train", "", 0),
        ("train", "", 5),  # exactly at an epoch's end
        ("train", "", 7),  # mid-epoch
        ("train", "mirror: true crop_size: 20", 6),  # crop offsets and flips come from the rng too
        ("test", "", 4),
    ],
)
def test_state_resumes_the_same_batches(mini, phase, transform, before):
    root, _ = mini
    net = data_net(f"{root}/train", phase=phase, batch=4, seed=7, transform=transform)
    batches(net, before)
    state = json.loads(json.dumps(net.layers[0].state()))  # the solver stores it as JSON
    expected = batches(net, 9)
    other = data_net(f"{root}/train", phase=phase, batch=4, seed=99, transform=transform)
    batches(other, 3)  # a different position and rng stream, overwritten by set_state
    other.layers[0].set_state(state)
    for (x0, y0), (x1, y1) in zip(expected, batches(other, 9)):
        np.testing.assert_array_equal(x1, x0)
        np.testing.assert_array_equal(y1, y0)


def test_set_state_checks_the_position(mini):
    root, _ = mini
    layer = data_net(f"{root}/train", phase="train").layers[0]
    with pytest.raises(ValueError, match=r"Data 'mnist': cannot resume at epoch 0, position 11: .* 10 samples"):
        layer.set_state({"epoch": 0, "position": 11, "epoch_seed": 1, "rng": None})


def test_mean_value_center_crop_at_test(mini):
    root, data = mini
    net = data_net(f"{root}/test", phase="test", batch=3, transform="mean_value: 33.5 crop_size: 24")
    assert net.blob("data").shape == (3, 1, 24, 24)
    x = batches(net, 1)[0][0]
    ref = (data["test"][0][:3, 2:26, 2:26].astype(np.float32) - np.float32(33.5)) * SCALE  # Caffe's order
    np.testing.assert_array_equal(x[:, 0], ref)


def test_mean_file_random_crop_and_mirror_at_train(mini, tmp_path):
    root, data = mini
    images, labels = data["train"]
    mean = np.random.default_rng(2).uniform(0, 255, size=(1, 1, 28, 28)).astype(np.float32)
    save_binaryproto(tmp_path / "mean.binaryproto", mean)
    transform = f'mean_file: "{tmp_path / "mean.binaryproto"}" crop_size: 25 mirror: true'
    net = data_net(f"{root}/train", phase="train", batch=5, seed=2, transform=transform)
    centred = (images.astype(np.float32) - mean[0, 0]) * SCALE  # the mean is taken at each pixel's source position
    offsets, flips = set(), set()
    for x, y in batches(net, 8):
        for img, label in zip(x[:, 0], y):
            candidates = [
                (h, w, f)
                for h in range(4)
                for w in range(4)
                for f in (False, True)
                for i in np.flatnonzero(labels == label)
                if np.array_equal(
                    img, centred[i, h : h + 25, w : w + 25][:, ::-1] if f else centred[i, h : h + 25, w : w + 25]
                )
            ]
            assert candidates, "every output must be a (possibly mirrored) 25x25 window of its source image"
            offsets.add(candidates[0][:2])
            flips.add(candidates[0][2])
    assert len(offsets) > 4 and flips == {False, True}  # random per image


def test_one_top_needs_no_labels(mini):
    root, data = mini
    idx_paths(root, "test")[1].unlink()
    net = data_net(f"{root}/test", phase="test", batch=2, tops=1)
    np.testing.assert_array_equal(net.forward()["data"][:, 0], data["test"][0][:2] * SCALE)
    with pytest.raises(NetError, match=r"t10k-labels-idx1-ubyte .*not found"):
        data_net(f"{root}/test", phase="test", batch=2)


def test_source_conventions(mini, tmp_path, monkeypatch):
    root, data = mini
    images_path, labels_path = idx_paths(root, "train")
    for source in (f"{root}/train", str(images_path), f"{images_path}.gz"):
        assert resolve_source(source)[:2] == (images_path, labels_path)
    assert resolve_source(f"{root}/test")[:2] == idx_paths(root, "test") == resolve_source(f"{root}/t10k")[:2]
    # Caffe's LMDB names map to the data set's default folder ($CREMA_DATA/mnist here).
    (tmp_path / "mnist").symlink_to(root)
    monkeypatch.setenv("CREMA_DATA", str(tmp_path))
    assert resolve_source("examples/mnist/mnist_train_lmdb")[:2] == idx_paths(tmp_path / "mnist", "train")
    assert resolve_source("mnist_test_leveldb")[:2] == idx_paths(tmp_path / "mnist", "test")
    assert resolve_source("x/fashion_mnist_test_lmdb")[:2] == idx_paths(tmp_path / "fashion-mnist", "test")
    y = batches(data_net("examples/mnist/mnist_test_lmdb", phase="test", batch=3), 1)[0][1]
    np.testing.assert_array_equal(y, data["test"][1][:3])
    # .gz only
    for p in idx_paths(root, "test"):
        write_idx(p.with_name(p.name + ".gz"), read_idx(p))
        p.unlink()
    y = batches(data_net(f"{root}/test", phase="test", batch=3), 1)[0][1]
    np.testing.assert_array_equal(y, data["test"][1][:3])


@pytest.mark.parametrize(
    ("source", "batch", "message"),
    [
        (
            "{tmp}/nothing/train",
            4,
            (
                r"Data 'mnist': data source .*train-images-idx3-ubyte \(or .*\.gz\) not found; "
                r"run `crema data mnist --out .*nothing` to create the IDX files"
            ),
        ),
        ("{tmp}/mnist_train.txt", 4, r"Data 'mnist': data_param.source .* names no IDX data"),
        ("{tmp}/mini/train", 0, r"Data 'mnist': data_param.batch_size must be >= 1, got 0"),
    ],
)
def test_errors_name_the_layer(mini, tmp_path, source, batch, message):
    with pytest.raises(NetError, match=message):
        data_net(source.format(tmp=tmp_path), phase="train", batch=batch)


def test_missing_caffe_db_tells_to_run_crema_data(tmp_path, monkeypatch):
    monkeypatch.setenv("CREMA_DATA", str(tmp_path))
    with pytest.raises(NetError, match=r"Data 'mnist': .*mnist_train_lmdb.* run `crema data mnist --out "):
        Net.load(ROOT / "examples/mnist/lenet_train_test.prototxt", phase="train")


def test_transform_errors(mini):
    root, _ = mini
    with pytest.raises(NetError, match=r"crop_size 30 exceeds the image size 28x28"):
        data_net(f"{root}/train", phase="train", transform="crop_size: 30")
    with pytest.raises(NetError, match=r"mean_value: give 1 value or 1 \(one per channel\), got 2"):
        data_net(f"{root}/train", phase="train", transform="mean_value: 1 mean_value: 2")


def test_lenet_train_test_reads_the_shipped_test_split(monkeypatch):
    monkeypatch.delenv("CREMA_DATA", raising=False)
    net = Net.load(ROOT / "examples/mnist/lenet_train_test.prototxt", phase="test")
    assert net.blob("data").shape == (100, 1, 28, 28)
    labels = read_idx(ROOT / "data/mnist/t10k-labels-idx1-ubyte.gz")
    out = net.forward()  # the whole of LeNet once (random weights): a finite loss on the first 100 digits
    assert np.isfinite(out["loss"]) and np.isfinite(out["accuracy"])
    layer, tops = net.layers[0], net.tops[0]
    seen = [net.blob("label").data.copy()]
    for _ in range(99):  # test_iter 100 x batch 100 = the whole test set, then it wraps to the start
        layer.forward([], tops)
        seen.append(tops[1].data.copy())
    seen = np.concatenate(seen)
    np.testing.assert_array_equal(seen, labels)
    assert tuple(np.bincount(seen.astype(np.int64))) == MNIST_HISTOGRAMS["test"]
    layer.forward([], tops)
    np.testing.assert_array_equal(tops[1].data, labels[:100])
