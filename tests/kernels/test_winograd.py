"""kernels.winograd against the float64 direct convolution (kernels.conv.conv2d_forward_ref), and CaffeNet with
Winograd on against OpenCV DNN.

Error bound asserted (float32 Winograd vs the float64 direct convolution), per output element:
    |y - y64| <= BOUND[m, r] * S + 1e-7,   S = (|x| conv |w|) + |b| (the sum of the absolute values of the terms)
BOUND: F(4x4, 3x3) and F(4x4, 5x5) 2e-5, F(2x2, 3x3) 1e-6, F(2x2, 5x5) 2e-6. Observed maxima of |y - y64| / S on
these cases (Zen 4, 2 threads): F(4x4, 3x3) 1.24e-5, F(4x4, 5x5) 3.4e-6, F(2x2, 3x3) 4.4e-7, F(2x2, 5x5) 6.9e-7;
kernels.conv's im2col path 2.8e-7. F(4x4, 3x3)'s maximum is one corner output of the 4-channel case with pad 2, where
S is small (0.95) but the tile's transform mixes its larger neighbours; the next largest is 3.3e-6, and over 12 random
shapes the maximum / 99.9th percentile / RMS were 2.7e-6 / 7.6e-7 / 1.0e-7 (it was 5.6e-6 before the transforms gave
up fastmath, whose reordering depended on where LLVM inlined them: kernels.winograd). Relative to max |y|: F(4x4, 3x3)
1.9e-6, F(4x4, 5x5) 6e-6, F(2x2, 3x3) 3.6e-7, F(2x2, 5x5) 1.6e-6.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from kernels import winograd
from kernels.conv import conv2d_forward, conv2d_forward_ref
from kernels.winograd import WinogradRunner, choose, winograd_applies, winograd_forward, winograd_forward_ref

BOUND = {(4, 3): 2e-5, (2, 3): 1e-6, (2, 5): 2e-6, (4, 5): 2e-5}
VARIANTS = list(BOUND)  # (m, r): F(m x m, r x r)

CASES = [  # x shape, k, group, pad: groups, pads 0-2, odd sizes, tiles not a multiple of 16, channels not of MR
    ((2, 8, 7, 9), 6, 2, 1),
    ((1, 3, 13, 13), 5, 1, 0),
    ((3, 4, 5, 6), 8, 1, 2),
    ((1, 64, 13, 13), 96, 1, 1),  # batch 1: output channels split into blocks
    ((5, 24, 11, 10), 14, 2, 1),  # 5 x 9 tiles: a chunk of 32 tiles and a tail
    ((2, 32, 19, 23), 40, 4, 2),
    ((16, 8, 8, 8), 200, 1, 1),  # 200 output channels: blocks longer than KB_INNER rows, split inside a task
]


def _data(x_shape, k, group, seed=0, r=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = rng.standard_normal((k, x_shape[1] // group, r, r), dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    return x, w, b


def _abs_sum(x, w, b, pad, group):
    return conv2d_forward_ref(np.abs(x), np.abs(w), np.abs(b), pad=pad, group=group, dtype=np.float64)


@pytest.mark.parametrize(("m", "r"), VARIANTS)
@pytest.mark.parametrize(("x_shape", "k", "group", "pad"), CASES)
def test_reference_transforms_equal_direct_float64(m, r, x_shape, k, group, pad):
    x, w, b = _data(x_shape, k, group, r=r)
    want = conv2d_forward_ref(x, w, b, pad=pad, group=group, dtype=np.float64)
    got = winograd_forward_ref(x, w, b, pad=(pad, pad), group=group, m=m)
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= 1e-12 * _abs_sum(x, w, b, pad, group))


@pytest.mark.parametrize(("m", "r"), VARIANTS)
@pytest.mark.parametrize(("x_shape", "k", "group", "pad"), CASES)
def test_forward_within_bound_of_float64(m, r, x_shape, k, group, pad):
    x, w, b = _data(x_shape, k, group, seed=1, r=r)
    want = conv2d_forward_ref(x, w, b, pad=pad, group=group, dtype=np.float64)
    got = winograd_forward(x, w, b, pad=pad, group=group, m=m)
    assert got.shape == want.shape and got.dtype == np.float32 and got.flags.c_contiguous
    err = np.abs(got.astype(np.float64) - want)
    bound = BOUND[m, r] * _abs_sum(x, w, b, pad, group) + 1e-7
    assert np.all(err <= bound), f"max err/S {np.max(err / bound):.3g} of the bound"
    none = winograd_forward(x, w, None, pad=pad, group=group, m=m)  # no bias: zeros
    assert np.allclose(none, got - b.reshape(1, -1, 1, 1), rtol=0, atol=BOUND[m, r] * 1e3)


@pytest.mark.parametrize("relu_max", [np.inf, 0.5])
def test_fused_relu_equals_relu_of_output(relu_max):
    x, w, b = _data((2, 16, 9, 9), 12, 2, seed=2)
    plain = winograd_forward(x, w, b, pad=1, group=2)
    fused = winograd_forward(x, w, b, pad=1, group=2, relu=True, relu_max=relu_max)
    assert np.array_equal(fused, np.minimum(np.maximum(plain, 0), np.float32(relu_max)))


@pytest.mark.parametrize(("m", "r"), VARIANTS)
def test_each_image_same_bits_alone_and_in_a_batch(m, r):
    """Tiles are independent columns of the GEMMs: chunking, k-blocks (batch 1: the input transform as its own pass)
    and the batch size change no bit."""
    x, w, b = _data((3, 64, 13, 13), 96, 1, seed=3, r=r)
    batch = winograd_forward(x, w, b, pad=r // 2, m=m)
    for i in range(3):
        assert np.array_equal(winograd_forward(x[i : i + 1], w, b, pad=r // 2, m=m), batch[i : i + 1])


@pytest.mark.parametrize(
    ("x_shape", "k", "group", "r", "m"),
    [((1, 256, 13, 13), 384, 1, 3, 2), ((1, 384, 13, 13), 256, 2, 3, 2), ((1, 96, 27, 27), 256, 2, 5, 4)],
)
def test_few_tiles_are_one_chunk_in_blocks_of_output_channels(x_shape, k, group, r, m, monkeypatch):
    """FEW_SLIVERS: CaffeNet's conv2-5 at batch 1 (49 tiles) as one chunk of all the tiles, its tasks blocks of output
    channels (U read once a forward), instead of 16-tile chunks that each read the group's whole U: the same bits."""
    x, w, b = _data(x_shape, k, group, seed=5, r=r)
    got, geometry, on = {}, {}, winograd.FEW_SLIVERS
    for few in (0, on):
        monkeypatch.setattr(winograd, "FEW_SLIVERS", few)
        run = WinogradRunner(x.shape, w.shape, (r // 2, r // 2), group, True, m=m, frozen=True)
        geometry[few] = run.geometry[11:15]  # tiles a chunk, rows a block, chunks, blocks
        got[few] = winograd_forward(x, w, b, pad=r // 2, group=group, m=m, relu=True, runner=run)
    per, _, chunks, kblocks = geometry[on]
    assert (per, chunks) == (64, 1) and kblocks > 1 and geometry[0][2] > 1  # 49 tiles: chunks of 16 or 32 before
    np.testing.assert_array_equal(got[on], got[0])


@pytest.mark.parametrize(("m", "r"), VARIANTS)
@pytest.mark.parametrize(("x_shape", "k", "group", "pad"), CASES)
def test_packed_weights_same_bits_as_row_major(m, r, x_shape, k, group, pad, monkeypatch):
    """U as the micro-kernel's packed A (PACKED_U, pack_weights: row tiles of MR rows, zero rows past K/group) and U
    read row-major in place: the same FMA chain per output, the same bits; pack_weights holds U's values."""
    x, w, b = _data(x_shape, k, group, seed=7, r=r)
    got = {}
    for packed in (False, True):
        monkeypatch.setattr(winograd, "PACKED_U", packed)
        run = WinogradRunner(x.shape, w.shape, (pad, pad), group, True, m=m)
        assert run.packed is packed
        got[packed] = winograd_forward(x, w, b, pad=pad, group=group, m=m, relu=True, runner=run)
    np.testing.assert_array_equal(got[True], got[False])
    kg, cg, mr = k // group, x_shape[1] // group, winograd.MR
    u = winograd.transform_weights(w, group, m)
    p = winograd.pack_weights(u, group, m, kg, cg, r)
    kgp = -(-kg // mr) * mr
    blocks = p.reshape(-1, kgp // mr, cg, mr).transpose(0, 1, 3, 2).reshape(-1, kgp, cg)
    np.testing.assert_array_equal(blocks[:, :kg], u.reshape(-1, kg, cg))
    assert not blocks[:, kg:].any()


@pytest.mark.parametrize(("m", "r"), VARIANTS)
@pytest.mark.parametrize(("k", "cg", "group"), [(50, 20, 1), (37, 11, 1), (64, 24, 2), (13, 5, 1)])
def test_transform_on_the_threads_matches_numpy(m, r, k, cg, group):
    """transform_weights (a task on the threads, float64 sums in its own order) against transform_weights_ref
    (NumPy's einsum in float64): at most one unit in the last place apart, almost every value the same bits; and
    transform_packed is pack_weights of it, to the bit (rows past K/group zero), on 1 and 2 threads."""
    w = np.random.default_rng(k + cg + m + r).standard_normal((k * group, cg, r, r), dtype=np.float32)
    ref = winograd.transform_weights_ref(w, group, m)
    got = winograd.transform_weights(w, group, m)
    ulps = np.abs(got.view(np.int32).astype(np.int64) - ref.view(np.int32).astype(np.int64))
    assert ulps.max() <= 1 and np.count_nonzero(ulps) <= got.size // 100
    packed = winograd.pack_weights(got, group, m, k, cg, r)
    before = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            np.testing.assert_array_equal(
                winograd.transform_packed(w, group, m).view(np.uint32), packed.view(np.uint32)
            )
            np.testing.assert_array_equal(winograd.transform_weights(w, group, m).view(np.uint32), got.view(np.uint32))
    finally:
        numba.set_num_threads(before)


def test_runner_follows_weights_changed_in_place():
    x, w, b = _data((2, 8, 8, 8), 8, 1, seed=4)
    run = WinogradRunner(x.shape, w.shape, (1, 1), 1, False)
    y = np.empty(run.out_shape, np.float32)
    run(x, w, b, y)
    first = y.copy()
    w *= 2  # a solver step: same array, new values
    run(x, w, b, y)
    want = conv2d_forward_ref(x, w, b, pad=1, dtype=np.float64)
    assert np.all(np.abs(y - want) <= BOUND[4, 3] * _abs_sum(x, w, b, 1, 1) + 1e-7)
    assert not np.array_equal(first, y)


def test_runner_checks_every_bit_of_the_weights_and_frozen_ones_by_identity():
    x, w, b = _data((1, 60, 8, 8), 64, 1, seed=6)  # 34560 words: 9 of _same's blocks, the last one partial
    assert 8 * winograd.SAME_BLOCK < w.size < 9 * winograd.SAME_BLOCK
    run = WinogradRunner(x.shape, w.shape, (1, 1), 1, False)
    u = run.weights(w)
    assert run.weights(w.copy()) is u  # equal bits: kept
    for change in (0, 2 * winograd.SAME_BLOCK + 5, w.size - 1):  # the first block, a middle one, the partial tail
        w2 = w.copy()
        w2.reshape(-1)[change] = np.nextafter(w2.reshape(-1)[change], np.float32(np.inf))  # one bit: made again
        assert run.weights(w2) is not u
        u = run.weights(w)
    w0 = w.copy()
    w0.reshape(-1)[7] = np.float32(0.0)
    u0 = run.weights(w0)
    wm = w0.copy()
    wm.reshape(-1)[7] = np.float32(-0.0)
    assert run.weights(wm) is not u0  # -0.0 and 0.0: other bits, made again
    w3 = w.copy()
    w3.reshape(-1)[0] = np.float32("nan")
    u3 = run.weights(w3)
    assert run.weights(w3.copy()) is u3  # the same NaN bits: its transform is the same
    frozen = WinogradRunner(x.shape, w.shape, (1, 1), 1, False, frozen=True)
    u = frozen.weights(w)
    assert frozen.weights(w) is u and frozen.weights(w.copy()) is not u  # by identity
    y, want = np.empty(frozen.out_shape, np.float32), np.empty(frozen.out_shape, np.float32)
    frozen(x, w, b, y)
    WinogradRunner(x.shape, w.shape, (1, 1), 1, False)(x, w, b, want)
    assert np.array_equal(y, want)
    kept = frozen.weights(w)
    w *= 2  # frozen means the caller never does this: the transform kept is not looked at again (documented)
    assert frozen.weights(w) is kept


def test_applies_by_shape_and_switch(monkeypatch):
    monkeypatch.delenv("CREMA_WINOGRAD", raising=False)
    conv3 = ((4, 256, 13, 13), (384, 256, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    assert winograd.tile() is None and winograd_applies(*conv3) and choose(*conv3) == 2  # 13 x 13: F(2x2)
    assert not winograd_applies((2, 256, 13, 13), *conv3[1:])  # F(2x2) from 640 output pixels: the weights dominate
    assert choose((64, 384, 13, 13), (384, 192, 3, 3), 1, 1, 1, 2) == 2  # conv4: 192 per group
    assert not winograd_applies((1, 256, 13, 13), (384, 256, 3, 3), 2, 1, 1, 1)  # stride 2
    assert not winograd_applies((1, 256, 13, 13), (384, 256, 7, 7), 1, 3, 1, 1)  # 7x7
    assert not winograd_applies((1, 256, 13, 13), (384, 256, 3, 3), 1, 2, 2, 1)  # dilation 2
    assert not winograd_applies((1, 32, 13, 13), (384, 32, 3, 3), 1, 1, 1, 1)  # few input channels
    assert not winograd_applies((1, 256, 5, 5), (384, 256, 3, 3), 1, 1, 1, 1)  # 5 x 5 output
    assert not winograd_applies((1, 256, 13, 13), (256, 1, 3, 3), 1, 1, 1, 256)  # depthwise
    res4, res5 = (256, 256, 3, 3), (512, 512, 3, 3)  # ResNet-50's 3x3 layers on 14 x 14 and 7 x 7
    assert choose((1, 256, 14, 14), res4, 1, 1, 1) == 4  # F(4x4) from 14 x 14 and 196 pixels
    assert choose((1, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1) == 4
    assert choose((1, 512, 7, 7), res5, 1, 1, 1) == 0 and choose((16, 512, 7, 7), res5, 1, 1, 1) == 2
    # frozen weights (a BatchNorm folded in: no compare each call): F(2x2) from one 7 x 7 map
    assert choose((1, 512, 7, 7), res5, 1, 1, 1, frozen=True) == 2 and choose((1, *conv3[0][1:]), *conv3[1:], True) == 2
    assert (
        choose((1, 256, 14, 14), res4, 1, 1, 1, frozen=True) == 4
        and choose((1, 512, 5, 5), res5, 1, 1, 1, 1, True) == 0
    )
    # 5x5: F(4x4, 5x5) from 16 channels per group and 196 output pixels (CaffeNet's conv2, GoogLeNet's 28 x 28 and
    # 14 x 14 ones, LeNet's conv2 from batch 4), else F(2x2, 5x5) from 24 channels and 49 pixels (GoogLeNet's 7 x 7)
    conv2, g3a, g5b = (
        ((1, 96, 27, 27), (256, 48, 5, 5)),
        ((1, 16, 28, 28), (32, 16, 5, 5)),
        ((1, 48, 7, 7), (128, 48, 5, 5)),
    )
    assert choose(*conv2, 1, 2, 1, 2) == 4 and choose(*g3a, 1, 2, 1) == 4 and choose(*g5b, 1, 2, 1) == 2
    assert choose((4, 48, 7, 7), g5b[1], 1, 2, 1) == 4 and choose((1, 16, 7, 7), (64, 16, 5, 5), 1, 2, 1) == 0
    assert choose((1, 8, 28, 28), (32, 8, 5, 5), 1, 2, 1) == 0 and choose((1, 48, 5, 5), g5b[1], 1, 2, 1) == 0
    assert (
        choose((1, 20, 12, 12), (50, 20, 5, 5), 1, 0, 1) == 0 and choose((4, 20, 12, 12), (50, 20, 5, 5), 1, 0, 1) == 4
    )
    assert choose(*conv2, 2, 2, 1, 2) == 0 and choose(*conv2, 1, 4, 2, 2) == 0  # stride 2, dilation 2
    monkeypatch.setenv("CREMA_WINOGRAD", "2")  # F(2x2) wherever it applies
    assert winograd.tile() == 2 and choose(*conv3) == 2 and choose((4, 256, 14, 14), res4, 1, 1, 1) == 2
    assert choose((1, 256, 14, 14), res4, 1, 1, 1) == 0  # 196 pixels: too few for F(2x2)
    assert choose(*conv2, 1, 2, 1, 2) == 2 and choose(*g3a, 1, 2, 1) == 0  # 5x5 too: F(2x2, 5x5) from 24 channels
    monkeypatch.setenv("CREMA_WINOGRAD", "4")  # F(4x4) from 196 pixels
    assert winograd.tile() == 4 and choose((2, 256, 13, 13), *conv3[1:]) == 4 and choose(*conv3) == 4
    assert choose(*conv2, 1, 2, 1, 2) == 4 and choose(*g5b, 1, 2, 1) == 0  # 5x5: F(4x4, 5x5) from 196 pixels
    assert not winograd_applies((1, 256, 13, 13), *conv3[1:]) and choose((16, 512, 7, 7), res5, 1, 1, 1) == 0
    monkeypatch.setenv("CREMA_WINOGRAD", "0")
    assert winograd.tile() == 0 and not winograd_applies(*conv3) and choose(*conv2, 1, 2, 1, 2) == 0


def test_bad_arguments_are_clear_errors():
    x, w, b = _data((1, 4, 6, 6), 4, 1)
    with pytest.raises(ValueError, match="3x3 or 5x5 kernels only"):
        winograd_forward(x, np.zeros((4, 4, 7, 7), np.float32), b, pad=3)
    with pytest.raises(ValueError, match=r"must be \(2, 3\), \(4, 3\), \(2, 5\) or \(4, 5\)"):
        winograd_forward(x, w, b, pad=1, m=3)
    with pytest.raises(ValueError, match=r"got \(3, 5\)"):
        winograd_forward(x, np.zeros((4, 4, 5, 5), np.float32), b, pad=2, m=3)
    with pytest.raises(ValueError, match="out"):
        winograd_forward(x, w, b, pad=1, out=np.empty((1, 4, 5, 5), np.float32))


def test_caffenet_softmax_matches_opencv_with_winograd(tmp_path, monkeypatch):
    """conv3-5 take the Winograd path (counted). The softmax, with it and without it (CREMA_WINOGRAD=0), is within
    2e-5 of the same net in float64 (PyTorch) and within 1e-5 of OpenCV DNN plus OpenCV's own distance to float64.
    These weights (seed 3) make a sensitive softmax (seeds 5-7: crema and PyTorch FP32 within 4e-7 of float64): on
    the Zen 4 EPYC crema was 0.76e-5 from float64 with Winograd and 1.51e-5 without (1.26e-5 with the fc kernel
    before its chunked sums, 1.14e-5 with the fc layers on the GEMM), though each fc layer's output is now closer to
    float64 (relative RMS 1.2e-7 against 2.6e-7 before, on this net's fc6-fc8; the kernels: tests/kernels/test_fc.py).
    OpenCV alone is no fixed bound: on an AVX-512 Xeon its softmax was 2.4e-5 from float64 (crema's 0.9e-5 with
    Winograd, 1.0e-5 without; PyTorch FP32's 0.85e-5), on the AVX2 machines within 1e-5 of crema."""
    cv2 = pytest.importorskip("cv2")
    pytest.importorskip("torch")
    from benchmarks.references import torch_forward
    from net import Net
    from tests.conftest import ROOT, randomize

    prototxt = ROOT / "models/caffenet/deploy.prototxt"
    calls = []
    launch = winograd._WINOGRAD_TASKS.parallel

    def counted(*args):
        calls.append(args[10])  # (address, workers, x, u, bias, y, N, C, H, W, K, ...): output channels
        return launch(*args)

    monkeypatch.setattr(winograd._WINOGRAD_TASKS, "parallel", counted)
    net = Net.load(prototxt)
    randomize(net, seed=3)
    weights = tmp_path / "caffenet.caffemodel"
    net.save(weights)
    x = (np.random.default_rng(4).random((4, 3, 227, 227), dtype=np.float32) * 255 - 120).astype(np.float32)
    prob = net.forward(data=x)["prob"].copy()
    fc8 = net.blobs["fc8"].copy()
    assert calls == [256, 384, 384, 256]  # conv2 (F(2x2, 5x5)), conv3, conv4, conv5
    ref = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    ref.setInput(x)
    want_fc8, want_prob = ref.forward(["fc8", "prob"])
    exact = torch_forward(Net.load(prototxt, weights), dtype="float64")(x)
    opencv_error = np.max(np.abs(want_prob - exact))
    assert np.max(np.abs(prob - exact)) <= 2e-5
    assert np.max(np.abs(prob - want_prob)) <= 1e-5 + opencv_error
    assert np.max(np.abs(fc8 - want_fc8)) <= 1e-4 * np.max(np.abs(want_fc8))
    monkeypatch.setenv("CREMA_WINOGRAD", "0")
    calls.clear()
    off = Net.load(prototxt, weights).forward(data=x)["prob"]
    assert np.max(np.abs(off - exact)) <= 2e-5
    assert np.max(np.abs(off - want_prob)) <= 1e-5 + opencv_error
    assert calls == []


def test_folded_layer_forward_and_plan_step_same_bits():
    """A convolution with a BatchNorm folded in (frozen weights) on a 7 x 7 map at batch 1 takes F(2x2) in its plan
    step and in its own forward (the plan's fallback), which keeps its runner: the same bits, twice."""
    from net import Net

    text = """name: "f" input: "data" input_shape { dim: 1 dim: 64 dim: 7 dim: 7 }
    layer { name: "c" type: "Convolution" bottom: "data" top: "c"
            convolution_param { num_output: 64 kernel_size: 3 pad: 1 bias_term: false } }
    layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
    layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
    layer { name: "r" type: "ReLU" bottom: "c" top: "c" }"""
    net = Net.from_string(text)
    rng = np.random.default_rng(9)
    for name in ("c", "bn", "sc"):
        for p in net.params[name]:
            p[...] = rng.uniform(0.5, 1.5, p.shape) if name == "bn" else rng.standard_normal(p.shape) * 0.1
    net.params["bn"][2][...] = 1.0
    net.refold()
    x = rng.standard_normal((1, 64, 7, 7), dtype=np.float32)
    layer = net.layers[[lay.name for lay in net.layers].index("c")]
    w = layer.forward_params()[0]
    assert layer.fold is not None and layer.winograd_tile(x.shape, w.shape) == 2
    planned = net.forward(data=x)["c"].copy()
    bottom, top = [net._blobs["data"]], [net._blobs["c"]]
    for _ in range(2):
        layer.forward(bottom, top)
        assert np.array_equal(top[0].data, planned)
    assert len(layer._winograd_runners) == 1


def test_layer_forward_and_plan_step_same_bits():
    """The layer's own forward (the plan's fallback) takes the same kernel as its plan step."""
    from net import Net

    text = """name: "w" input: "data" input_shape { dim: 8 dim: 64 dim: 10 dim: 10 }
    layer { name: "c" type: "Convolution" bottom: "data" top: "c"
            convolution_param { num_output: 64 kernel_size: 3 pad: 1 } }
    layer { name: "r" type: "ReLU" bottom: "c" top: "c" }"""
    net = Net.from_string(text)
    rng = np.random.default_rng(5)
    for p in net.params["c"]:
        p[...] = rng.standard_normal(p.shape) * 0.1
    x = rng.standard_normal((8, 64, 10, 10), dtype=np.float32)
    planned = net.forward(data=x)["c"].copy()
    layer = net.layers[[lay.name for lay in net.layers].index("c")]
    assert layer.uses_winograd(x.shape, net.params["c"][0].shape)
    bottom, top = [net._blobs["data"]], [net._blobs["c"]]
    layer.forward(bottom, top)
    assert np.array_equal(top[0].data, planned)
    direct = conv2d_forward(x, *net.params["c"], pad=1, relu=True)
    assert np.max(np.abs(planned - direct)) <= 1e-5 * np.max(np.abs(direct))


def test_5x5_layer_takes_f4_in_a_test_net_and_in_a_training_net_when_asked(monkeypatch):
    """LeNet's conv2 (20 -> 50, 5x5, 8 x 8 outputs) at batch 64: F(4x4, 5x5) in a TEST-phase net, the same bits in its
    plan step and its own forward, within F(4x4)'s bound of the float64 convolution; a TRAIN-phase net keeps the
    direct path unless WINOGRAD_TRAIN, and with it follows weights changed in place (a solver step) within the same
    bound."""
    from net import Net
    from net.layers import convolution

    text = """name: "l" input: "data" input_shape { dim: 64 dim: 20 dim: 12 dim: 12 }
    layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 50 kernel_size: 5 } }"""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((64, 20, 12, 12), dtype=np.float32)
    test = Net.from_string(text)
    for p in test.params["c"]:
        p[...] = rng.standard_normal(p.shape) * 0.1
    layer = test.layers[[lay.name for lay in test.layers].index("c")]
    w, b = test.params["c"]
    assert layer.winograd_tile(x.shape, w.shape) == 4
    planned = test.forward(data=x)["c"].copy()
    layer.forward([test._blobs["data"]], [test._blobs["c"]])
    assert np.array_equal(test._blobs["c"].data, planned)
    want = conv2d_forward_ref(x, w, b, dtype=np.float64)
    assert np.all(np.abs(planned - want) <= BOUND[4, 5] * _abs_sum(x, w, b, 0, 1) + 1e-7)
    train = Net.from_string(text, phase="train")
    trained = train.layers[[lay.name for lay in train.layers].index("c")]
    assert trained.phase == "TRAIN" and trained.winograd_tile(x.shape, w.shape) == 0
    monkeypatch.setattr(convolution, "WINOGRAD_TRAIN", True)
    assert trained.winograd_tile(x.shape, w.shape) == 4
    for p, q in zip(train.params["c"], test.params["c"]):
        p[...] = q
    train.set_input("data", x)
    for _ in range(2):  # the second forward after a solver-like update of the weights in place
        train.forward_loss()
        w2, b2 = train.params["c"]
        got = train._blobs["c"].data
        want = conv2d_forward_ref(x, w2, b2, dtype=np.float64)
        assert np.all(np.abs(got - want) <= BOUND[4, 5] * _abs_sum(x, w2, b2, 0, 1) + 1e-7)
        w2 *= np.float32(0.5)
