"""Shared activations (net.arena, Net.share_activations) and Net.observe: a net whose intermediate blobs share one
buffer computes every blob to the bit as a net with an array per blob (each blob read through observe, while it is
live), on nets with residual sums fused into 1x1 projections (EfficientNet-Lite0), Split, Concat and in-place
layers (GoogLeNet, SqueezeNet: random weights), and layers whose tops are views of their bottoms (Flatten, Reshape)."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from net import Net, arena
from net.net import NetError
from tests.conftest import randomize
from tests.net.test_zoo_models import fill_random, prototxt_text


class Recorder:
    def __init__(self) -> None:
        self.seen: dict[str, np.ndarray] = {}

    def record(self, name: str, data: np.ndarray) -> None:
        self.seen[name] = data.copy()


def shared_twin(net: Net, load, keep=()) -> tuple[Net, Recorder]:
    """A second net of the same files with shared activations and every blob observed."""
    twin = load()
    twin.share_activations(keep=keep)
    rec = Recorder()
    for name in twin.blobs:
        if name not in twin.inputs:
            twin.observe(name, rec.record)
    return twin, rec


def same_blobs(plain: Net, twin: Net, rec: Recorder, x: np.ndarray) -> None:
    want = plain.forward(data=x)
    got = twin.forward(data=x)
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    written = [name for name in plain.blobs if name not in plain.inputs]
    assert set(rec.seen) == set(written)
    for name in written:
        assert np.array_equal(rec.seen[name], plain.blobs[name]), name


def no_overlap(net: Net) -> None:
    """Every pair of arena blobs whose lifetimes overlap holds disjoint bytes."""
    kept = (*net.inputs, *net.outputs, *net._share)
    lives = arena.lifetimes(net._plan.steps, [id(net._blobs[n]) for n in kept])
    spans = []
    for blob, first, last in lives.values():
        start = blob.data.__array_interface__["data"][0]
        assert np.shares_memory(blob.data, net._arena)
        spans.append((start, start + blob.data.nbytes, first, last, blob.name))
    for i, (a0, a1, af, al, an) in enumerate(spans):
        for b0, b1, bf, bl, bn in spans[i + 1 :]:
            if not (al < bf or bl < af):
                assert a1 <= b0 or b1 <= a0, (an, bn)


def test_efficientnet_every_blob_to_the_bit(effnet_files):
    def load():
        return Net.load(effnet_files.prototxt, effnet_files.weights)

    plain = load()
    twin, rec = shared_twin(plain, load)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32)
    same_blobs(plain, twin, rec, x)
    assert twin.shared_bytes > 3 * twin._arena.nbytes  # 27.8 MB of blobs in 7.2 MB at batch 1
    no_overlap(twin)
    steps = [s for s, layer, _, _ in twin._plan.steps if layer.type == "Eltwise"]
    assert len(steps) == 9 and all("_residual_pair" in s.__qualname__ for s in steps)  # still fused: z born with y
    # another batch size places them again; and back
    for n in (1, 3, 2):
        x = np.random.default_rng(n).uniform(-1, 1, (n, 3, 224, 224)).astype(np.float32)
        same_blobs(plain, twin, rec, x)
        no_overlap(twin)


@pytest.mark.parametrize(("name", "size", "n"), [("googlenet", 224, 1), ("squeezenet1.1", 96, 2)])
def test_zoo_nets_with_splits_and_concats(name, size, n):
    text = prototxt_text(name, size, n)

    def load():
        net = Net.from_string(text)
        fill_random(net, seed=3)
        return net

    plain = load()
    twin, rec = shared_twin(plain, load)
    x = np.random.default_rng(1).standard_normal((n, 3, size, size)).astype(np.float32)
    same_blobs(plain, twin, rec, x)
    no_overlap(twin)


VIEWS = """
name: "views"
input: "data" input_shape { dim: 2 dim: 3 dim: 12 dim: 12 }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 8 kernel_size: 3 } }
layer { name: "flat" type: "Flatten" bottom: "c1" top: "flat" }
layer { name: "r1" type: "Reshape" bottom: "flat" top: "r1" reshape_param { shape { dim: 0 dim: 8 dim: 10 dim: 10 } } }
layer { name: "c2" type: "Convolution" bottom: "r1" top: "c2" convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "c3" type: "Convolution" bottom: "c2" top: "c3" convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "relu3" type: "ReLU" bottom: "c3" top: "c3" }
layer { name: "c4" type: "Convolution" bottom: "c3" top: "c4" convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "c4" bottom: "c1" top: "sum" }
layer { name: "ip" type: "InnerProduct" bottom: "sum" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def test_views_keep_what_they_view_alive():
    """c1 is read through a Flatten and a Reshape (views) and again by the Eltwise at the end: none of the layers
    between may take its bytes."""

    def load():
        net = Net.from_string(VIEWS)
        randomize(net, seed=5)
        return net

    plain = load()
    twin, rec = shared_twin(plain, load, keep=("c2",))
    x = np.random.default_rng(2).standard_normal((2, 3, 12, 12)).astype(np.float32)
    same_blobs(plain, twin, rec, x)
    no_overlap(twin)
    assert not np.shares_memory(twin.blobs["c2"], twin._arena)  # kept: its own array, readable after the forward
    assert np.array_equal(twin.blobs["c2"], plain.blobs["c2"])


def test_errors_and_weak_observers():
    net = Net.from_string(VIEWS)
    with pytest.raises(NetError, match="no blob named 'nope'"):
        net.share_activations(keep=("nope",))
    with pytest.raises(NetError, match="observe: no blob named 'nope'"):
        net.observe("nope", print)
    net.share_activations()
    net.forward(data=np.zeros((2, 3, 12, 12), np.float32))
    with pytest.raises(NetError, match="shares its activations"):
        net.backward()
    rec = Recorder()
    net.observe("c4", rec.record)
    net.forward(data=np.ones((2, 3, 12, 12), np.float32))
    assert rec.seen["c4"].shape == (2, 8, 10, 10)
    ref = net._observers["c4"][0]
    del rec
    gc.collect()
    assert ref() is None  # a bound method is held weakly: its object is gone, so is the observer
    net.forward(data=np.ones((2, 3, 12, 12), np.float32))


def test_observe_on_the_gpu_path_hands_host_arrays():
    """A GPU net (the CUDA emulator here; CuPy where it runs) calls observers with host copies of its blobs, equal to
    the CPU net's within the GPU tolerance; share_activations leaves a GPU net's arrays alone."""
    from kernels import gpu
    from tests.kernels.cuda_emu import runtime_for

    lenet = "models/lenet/deploy.prototxt"
    cpu = Net.load(lenet)
    randomize(cpu, seed=5)
    x = np.random.default_rng(8).standard_normal((2, 1, 28, 28)).astype(np.float32)
    cpu.forward(data=x)
    with gpu.use_runtime(runtime_for("emulator")):
        net = Net.load(lenet, device="gpu")
        randomize(net, seed=5)
        net.share_activations()
        rec = Recorder()
        net.observe("conv2", rec.record)
        net.observe("ip1", rec.record)
        net.forward(data=x)
    for name in ("conv2", "ip1"):
        assert type(rec.seen[name]) is np.ndarray
        np.testing.assert_allclose(rec.seen[name], cpu.blobs[name], rtol=1e-4, atol=1e-4)
    assert net._arena is None


def test_large_arenas_ask_for_huge_pages():
    """An arena of 2 MB or more is a private mapping aligned to 2 MB and advised as huge pages where the platform has
    MADV_HUGEPAGE (EfficientNet-Lite0's, above, computes the same bits from it); smaller ones are plain arrays."""
    import mmap

    big = arena._buffer(arena.HUGE_PAGE + 100)
    assert big.dtype == np.uint8 and big.size == arena.HUGE_PAGE + 100 and big.flags.writeable
    if hasattr(mmap, "MADV_HUGEPAGE"):
        assert big.ctypes.data % arena.HUGE_PAGE == 0
        assert isinstance(big.base.base, memoryview) and isinstance(big.base.base.obj, mmap.mmap)
    big[:] = 7  # the whole mapping is ours to write
    assert int(big[-1]) == 7
    small = arena._buffer(4096)
    assert small.size == 4096 and small.base is None
