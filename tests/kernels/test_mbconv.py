"""kernels.mbconv: the expand 1x1 and the depthwise after it in one pass, against the two steps it replaces (the same
bits) and the float64 reference; and net.plan_steps.fuse_expand_depthwise in EfficientNet-Lite0's plan."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from kernels import depthwise, mbconv, pointwise_t

pytestmark = pytest.mark.skipif(not mbconv.ENABLED, reason="AVX-512 only (pointwise_t's 16-lane tiles)")

ACT = (0.0, 6.0)  # ReLU6 after both, as EfficientNet-Lite's blocks


def _pair(n, k, c, h, kernel, stride, pad, seed):
    """x, w1, b1, w2, b2 of a pair on a plane of h x h (h an int) or h[0] x h[1]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, k, *((h, h) if isinstance(h, int) else h))).astype(np.float32)
    w1 = (rng.standard_normal((c, k, 1, 1)) / np.sqrt(k)).astype(np.float32)
    b1 = rng.standard_normal(c).astype(np.float32)
    w2 = rng.standard_normal((c, 1, kernel, kernel)).astype(np.float32)
    if kernel % 2 == 0:  # TF's asymmetric SAME padding in Caffe's form: a zero first row and column
        w2[:, :, 0], w2[:, :, :, 0] = 0.0, 0.0
    b2 = rng.standard_normal(c).astype(np.float32)
    return x, w1, b1, w2, b2


def _two_steps(x, w1, b1, w2, b2, dw):
    """The two steps the plan runs without fusion (net.plan_steps.hand_over_expand): the expand on pointwise_t's
    tiles writing the depthwise's padded blocks, the depthwise (a runner like dw) reading them in place."""
    n, c = x.shape[0], w1.shape[0]
    _, _, sh, sw, _, _ = dw.geometry
    ph, pw = dw.args[4], dw.args[5]
    ref = depthwise.DepthwiseRunner((n, c, *x.shape[2:]), w2.shape, (sh, sw), (ph, pw), ACT, frozen=True, c8=True)
    size = depthwise.PaddedInput.size(ref)
    raw = np.full(size + 16, np.nan, np.float32)
    blocks = depthwise.PaddedInput(ref, raw[(-raw.ctypes.data // 4) % 16 :][:size])
    pointwise_t.PointwiseTRunner(x.shape, w1.shape, ACT, blocks)(x, w1, b1, np.empty(0, np.float32))
    ref.padded_in = blocks
    y = np.empty(dw.out_shape, np.float32)
    ref(np.empty((n, c, *x.shape[2:]), np.float32), w2, b2, y)
    return y


# EfficientNet-Lite0's pairs (K -> C channels, plane, the depthwise's kernel / stride / pad in Caffe's form), batches
CASES = [
    (1, 16, 96, 112, 4, 2, 1),  # block 1: 112 x 112 in bands (L2), blocks of 16
    (1, 24, 144, 56, 3, 1, 1),  # block 2: 9 blocks, two bands for 2 threads
    (1, 24, 144, 56, 6, 2, 2),  # block 3
    (1, 40, 240, 28, 5, 1, 2),
    (1, 112, 672, 14, 5, 1, 2),
    (1, 192, 1152, 7, 3, 1, 1),
    (2, 24, 144, 56, 3, 1, 1),
    (3, 40, 240, 28, 4, 2, 1),  # bands starting off a multiple of 8 output pixels
    (1, 16, 48, (14, 10), 3, 1, 1),  # W = 10: no bands (tiles of 7 pixels across rows), an odd block count
]


@pytest.mark.parametrize("n,k,c,h,kernel,stride,pad", CASES)
def test_same_bits_as_the_two_steps(n, k, c, h, kernel, stride, pad) -> None:
    """The fused pass against the expand's tiles then the depthwise's (the plan's two steps without fusion): the same
    bits (each output the same FMA chain);
    against the float64 reference of both within float32 rounding (2e-5 sqrt(K) of the largest output); and the same
    bits on 1 thread as on 2 (another split into bands and pairs of blocks)."""
    x, w1, b1, w2, b2 = _pair(n, k, c, h, kernel, stride, pad, seed=c + k)
    got = {}
    saved = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            dw = depthwise.DepthwiseRunner((n, c, *x.shape[2:]), w2.shape, stride, pad, ACT, frozen=True, c8=True)
            run = mbconv.ExpandDepthwiseRunner(x.shape, w1.shape, ACT, dw)
            y = np.full(dw.out_shape, np.nan, np.float32)
            run(x, w1, b1, w2, b2, y)
            run(x, w1, b1, w2, b2, y)  # again on the same buffers (stale values in them change nothing)
            got[threads] = y
            np.testing.assert_array_equal(y, _two_steps(x, w1, b1, w2, b2, dw))
    finally:
        numba.set_num_threads(saved)
    mid = np.clip(np.einsum("nkhw,ck->nchw", x.astype(np.float64), w1[:, :, 0, 0].astype(np.float64))
                  + b1[None, :, None, None], *ACT)  # fmt: skip
    ref = depthwise.depthwise_forward_ref(mid, w2, b2, stride=stride, pad=pad, act=ACT)
    y = got[1]
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5 * np.sqrt(k) * max(1.0, float(np.abs(ref).max())))
    for v in got.values():
        np.testing.assert_array_equal(v, y)


@pytest.mark.parametrize("n,k,c,h,kernel,stride,pad", [CASES[1], CASES[3], CASES[-1]])
def test_tasks_of_one_block_or_two_give_the_same_bits(monkeypatch, n, k, c, h, kernel, stride, pad) -> None:
    """Tasks of one block of 16 channels (PAIR_TASKS past the block count) and of two (PAIR_TASKS 1: EfficientNet-Lite0's
    blocks at batch 1; an odd block count leaves a task of one): the same bits."""
    x, w1, b1, w2, b2 = _pair(n, k, c, h, kernel, stride, pad, seed=c + k + 1)
    got = []
    for pairs in (1, 10**6):
        monkeypatch.setattr(mbconv, "PAIR_TASKS", pairs)
        dw = depthwise.DepthwiseRunner((n, c, *x.shape[2:]), w2.shape, stride, pad, ACT, frozen=True, c8=True)
        run = mbconv.ExpandDepthwiseRunner(x.shape, w1.shape, ACT, dw)
        assert run.args[0][13] == (2 if pairs == 1 and n * (c // 16 // 2) >= numba.get_num_threads() else 1)
        y = np.full(dw.out_shape, np.nan, np.float32)
        run(x, w1, b1, w2, b2, y)
        got.append(y)
    np.testing.assert_array_equal(got[0], got[1])
    assert not np.isnan(got[0]).any()


def _fused(n, k, c, h, kernel, stride, pad, seed):
    """(x, w1, b1, w2, b2, the depthwise runner, the fused runner) of one pair on an h x h plane."""
    x, w1, b1, w2, b2 = _pair(n, k, c, h, kernel, stride, pad, seed)
    dw = depthwise.DepthwiseRunner((n, c, h, h), w2.shape, stride, pad, ACT, frozen=True, c8=True)
    return x, w1, b1, w2, b2, dw, mbconv.ExpandDepthwiseRunner(x.shape, w1.shape, ACT, dw)


@pytest.mark.parametrize("n,k,c,h,kernel,stride,pad", [(1, 192, 1152, 7, 5, 1, 2), (2, 40, 240, 28, 3, 1, 1),
                                                        (1, 16, 96, 112, 4, 2, 1)])  # fmt: skip
def test_prefetching_the_next_steps_weights_keeps_the_bits(n, k, c, h, kernel, stride, pad) -> None:
    """ExpandDepthwiseRunner.ahead (net.plan_steps.prefetch_ahead): the expand's tile pairs after a task's first
    prefetch another array (plan[14]: its offset from the packed expand weights, plan[15]: its floats, plan[16]: a
    task's tile pairs after its first); prefetches only, the same bits; nothing to aim at (the next step has not
    packed its weights yet): plan[15] 0."""
    x, w1, b1, w2, b2, dw, plain_run = _fused(n, k, c, h, kernel, stride, pad, seed=8)
    want = np.empty(dw.out_shape, np.float32)
    plain_run(x, w1, b1, w2, b2, want)
    nxt = np.ones(1152 * 320, np.float32)  # EfficientNet-Lite0's last projection
    run = mbconv.ExpandDepthwiseRunner(x.shape, w1.shape, ACT, dw)
    run.ahead = lambda: nxt
    y = np.full(dw.out_shape, np.nan, np.float32)
    run(x, w1, b1, w2, b2, y)
    np.testing.assert_array_equal(y, want)
    plan, rows = run.args[0], run.args[1]
    assert run.packed[1].ctypes.data + 4 * int(plan[14]) == nxt.ctypes.data and plan[15] == nxt.size
    tiles = [(r_end * h - r_first * h) // pointwise_t.NP for _, _, r_first, r_end in rows]  # a band's expand tiles
    assert plan[16] == max(tiles) // 2 - 1  # its tile pairs after the first: where the shares go
    run.ahead = lambda: None
    y[...] = np.nan
    run(x, w1, b1, w2, b2, y)
    assert plan[15] == 0
    np.testing.assert_array_equal(y, want)


def test_hands_its_output_on_in_blocks() -> None:
    """With the depthwise's handoff set (the 1x1 after it reads blocks of 16 channels interleaved per pixel), the
    output is those blocks, holding the planes' values, and the handoff says so."""
    n, c, h = 1, 144, 56
    x, w1, b1, w2, b2, dw, run = _fused(n, 24, c, h, 3, 1, 1, seed=5)
    planes = np.empty(dw.out_shape, np.float32)
    run(x, w1, b1, w2, b2, planes)
    dw.handoff = depthwise.Handoff()
    blocks = np.empty(dw.out_shape, np.float32)
    run(x, w1, b1, w2, b2, blocks)
    assert dw.handoff.interleaved == depthwise.LANES
    lanes = depthwise.LANES
    back = blocks.reshape(n, c // lanes, h * h, lanes).transpose(0, 1, 3, 2).reshape(planes.shape)
    np.testing.assert_array_equal(back, planes)


@pytest.mark.parametrize("n,k,c,h,kernel,stride,pad", [(1, 16, 96, 112, 4, 2, 1), (1, 48, 96, 28, 3, 1, 1)])
def test_reads_its_input_in_blocks(n, k, c, h, kernel, stride, pad) -> None:
    """x handed over in blocks of 16 channels interleaved per pixel (``x_blocks``, written ready by the 1x1 step
    before): the same bits as from planes (one block of input channels, and three); without `ready` (the 1x1 layer's
    own forward wrote planes) x is read."""
    x, w1, b1, w2, b2, dw, run = _fused(n, k, c, h, kernel, stride, pad, seed=9)
    want = np.empty(dw.out_shape, np.float32)
    run(x, w1, b1, w2, b2, want)
    size = x.size
    raw = np.full(size + 16, np.nan, np.float32)
    xb = depthwise.PaddedInput.unpadded(x.shape, raw[(-raw.ctypes.data // 4) % 16 :][:size])
    lanes = depthwise.LANES
    xb.buf[:] = x.reshape(n, k // lanes, lanes, h * h).transpose(0, 1, 3, 2).reshape(-1)
    run.x_blocks = xb
    xb.ready = True
    got = np.full(dw.out_shape, np.nan, np.float32)
    run(np.full_like(x, np.nan), w1, b1, w2, b2, got)  # x itself not read
    np.testing.assert_array_equal(got, want)
    assert not xb.ready  # read: the next call takes x unless the step before writes the blocks again
    again = np.full(dw.out_shape, np.nan, np.float32)
    run(x, w1, b1, w2, b2, again)
    np.testing.assert_array_equal(again, want)


def test_new_weight_arrays_are_packed_again() -> None:
    """The weights are packed once per array: a new expand or depthwise array (Net.refold makes new ones) is used."""
    x, w1, b1, w2, b2, dw, run = _fused(1, 40, 240, 28, 5, 1, 2, seed=6)
    y = np.empty(dw.out_shape, np.float32)
    run(x, w1, b1, w2, b2, y)
    w1b, w2b = (w1 * 0.5).astype(np.float32), (w2 * -1.0).astype(np.float32)
    run(x, w1b, b1, w2b, b2, y)
    np.testing.assert_array_equal(y, _two_steps(x, w1b, b1, w2b, b2, dw))


def test_applies() -> None:
    dw = depthwise.DepthwiseRunner((1, 96, 112, 112), (96, 1, 4, 4), 2, 1, ACT, frozen=True, c8=True)
    assert mbconv.applies((1, 16, 112, 112), (96, 16, 1, 1), dw)
    assert not mbconv.applies((1, 8, 112, 112), (96, 8, 1, 1), dw)  # K < pointwise_t.MIN_K_BLOCKS
    assert not mbconv.applies((1, 16, 112, 112), (96, 16, 3, 3), dw)  # not a 1x1
    dw40 = depthwise.DepthwiseRunner((1, 40, 28, 28), (40, 1, 3, 3), 1, 1, ACT, frozen=True, c8=True)
    assert not mbconv.applies((1, 16, 28, 28), (40, 16, 1, 1), dw40)  # 40 channels: not whole blocks of 16
    planes = depthwise.DepthwiseRunner((1, 96, 112, 112), (96, 1, 3, 3), 1, 1, ACT, frozen=True)
    assert not planes.c8 and not mbconv.applies((1, 16, 112, 112), (96, 16, 1, 1), planes)
    with pytest.raises(ValueError, match="does not apply"):
        mbconv.ExpandDepthwiseRunner((1, 16, 112, 112), (96, 16, 1, 1), ACT, planes)


def _lite0(fuse: bool, x: np.ndarray, switch: str = "FUSE_EXPAND"):
    """(EfficientNet-Lite0 with shared activations planned with net.plan_steps' `switch` set to fuse, its softmax)."""
    from net import Net, plan_steps
    from net.zoo import efficientnet_lite0

    files = efficientnet_lite0(say=lambda _m: None)
    saved = getattr(plan_steps, switch)
    setattr(plan_steps, switch, fuse)
    try:
        net = Net.load(files.prototxt, files.weights)
        net.share_activations()
        return net, net.forward(data=x)["prob"].copy()
    finally:
        setattr(plan_steps, switch, saved)


def test_net_fuses_every_expand_and_keeps_the_bits() -> None:
    """EfficientNet-Lite0 with shared activations: every expand (blocks 1-15) runs fused with its depthwise layer, whose
    step then has nothing to do, and the softmax has the bits of the plan with the two steps apart (FUSE_EXPAND off)
    at batch 1, replayed (net.replay) too. At batch 2 within 1e-6: there the plan without fusion hands block 1's
    expand over in planes (its blocks pass plan_steps.BLOCKS_MAX_BYTES), on kernels.pointwise, whose edge pixels sum
    in another order."""
    for n in (1, 2):
        x = np.random.default_rng(n).uniform(-1, 1, (n, 3, 224, 224)).astype(np.float32)
        net, fused = _lite0(True, x)
        _, apart = _lite0(False, x)
        steps = net._plan.steps
        names = [s[1].name for s in steps if isinstance(getattr(s[0], "runner", None), mbconv.ExpandDepthwiseRunner)]
        assert names == [f"block{i}/expand" for i in range(1, 16)]
        if n == 2:
            np.testing.assert_allclose(fused, apart, rtol=0, atol=1e-6)
            continue
        np.testing.assert_array_equal(fused, apart)
        for _ in range(4):  # recorded and replayed
            np.testing.assert_array_equal(net.forward(data=x)["prob"], apart)
        assert net._plan.replay


def test_net_hands_block0s_projection_to_block1_in_blocks() -> None:
    """Block 0's projection writes its output in blocks for block 1's fused expand (plan_steps.hand_over_projection):
    the softmax has the bits of the plan without it (PROJECTION_BLOCKS off), replayed too. When the projection's
    output array changes under the plan, the projection's own forward writes planes and the fused step reads them;
    when the fused step refuses after the projection wrote its blocks (the depthwise's output array changed), the
    blob gets its planes back for the expand's own forward: the same values, then the same bits once planned again."""
    from net import Net, plan_steps
    from net.zoo import efficientnet_lite0

    x = np.random.default_rng(10).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    files = efficientnet_lite0(say=lambda _m: None)
    probs = []
    for on in (False, True):
        saved, plan_steps.PROJECTION_BLOCKS = plan_steps.PROJECTION_BLOCKS, on
        try:
            net = Net.load(files.prototxt, files.weights)
            net.share_activations()
            probs.append(net.forward(data=x)["prob"].copy())
        finally:
            plan_steps.PROJECTION_BLOCKS = saved
    handed = [s[1].name for s in net._plan.steps if getattr(getattr(s[0], "runner", None), "x_blocks", None)]
    assert handed == ["block1/expand"]
    np.testing.assert_array_equal(probs[1], probs[0])
    for _ in range(4):  # recorded and replayed
        np.testing.assert_array_equal(net.forward(data=x)["prob"], probs[0])
    assert net._plan.replay
    i = next(i for i, s in enumerate(net._plan.steps) if s[1].name == "block1/expand")
    src = net._plan.steps[i][2][0]
    src.data = np.zeros_like(src.data)  # another array than the plan's: the projection's step refuses first
    np.testing.assert_allclose(net.forward(data=x)["prob"], probs[0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(net.forward(data=x)["prob"], probs[0])  # planned again
    i = next(i for i, s in enumerate(net._plan.steps) if s[1].name == "block1/dw")
    dst = net._plan.steps[i][3][0]
    dst.data = np.zeros_like(dst.data)  # the projection wrote its blocks, the fused step refuses: planes back
    np.testing.assert_allclose(net.forward(data=x)["prob"], probs[0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(net.forward(data=x)["prob"], probs[0])


def test_net_refusals_run_the_layers() -> None:
    """When the fused step refuses (an array changed under the plan), the expand layer's own forward writes its top
    and the depthwise step runs on it; when the depthwise's output array changed, the fused step refuses too. The
    same values each time, and the same bits once planned again."""
    x = np.random.default_rng(7).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    net, want = _lite0(True, x)
    steps = net._plan.steps
    i = next(i for i, s in enumerate(steps) if s[1].name == "block2/expand")
    assert isinstance(steps[i][0].runner, mbconv.ExpandDepthwiseRunner)
    src = steps[i][2][0]
    src.data = src.data.copy()  # another array than the plan's: the fused step refuses
    np.testing.assert_allclose(net.forward(data=x)["prob"], want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(net.forward(data=x)["prob"], want)  # planned again
    steps = net._plan.steps
    i = next(i for i, s in enumerate(steps) if s[1].name == "block9/dw")
    dst = steps[i][3][0]
    dst.data = np.zeros_like(dst.data)
    np.testing.assert_allclose(net.forward(data=x)["prob"], want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(net.forward(data=x)["prob"], want)


def test_observed_depthwise_output_is_not_fused() -> None:
    """A depthwise input that someone observes (Net.observe, the web app's feature maps) or keeps is written: that
    pair stays two steps."""
    from net import Net
    from net.zoo import efficientnet_lite0

    files = efficientnet_lite0(say=lambda _m: None)
    net = Net.load(files.prototxt, files.weights)
    net.share_activations(keep=("block3/expand",))
    seen = []
    net.observe("block5/expand", lambda name, a: seen.append(a.copy()))
    x = np.random.default_rng(8).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    net.forward(data=x)
    fused = {
        s[1].name for s in net._plan.steps if isinstance(getattr(s[0], "runner", None), mbconv.ExpandDepthwiseRunner)
    }
    assert "block3/expand" not in fused and "block5/expand" not in fused and "block4/expand" in fused
    assert seen and np.isfinite(seen[0]).all() and seen[0].shape == (1, 240, 28, 28)


# ---------------------------------------------------------------------- a convolution and the depthwise after it
def _conv_pair(n, cin, h, wd, border, kernel, stride, dw_kernel, dw_stride, dw_pad, seed):
    """x (the image), w1, b1 (a 32-channel kernel x kernel convolution on x with the zero border (top, left, bottom,
    right)), w2, b2 of a depthwise on its output, and that depthwise's runner on its channel-block path."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, cin, h, wd)).astype(np.float32)
    w1 = (rng.standard_normal((32, cin, kernel, kernel)) / np.sqrt(cin * kernel * kernel)).astype(np.float32)
    b1 = rng.standard_normal(32).astype(np.float32)
    w2 = rng.standard_normal((32, 1, dw_kernel, dw_kernel)).astype(np.float32)
    b2 = rng.standard_normal(32).astype(np.float32)
    hp, wp = h + border[0] + border[2], wd + border[1] + border[3]
    oh, ow = (hp - kernel) // stride + 1, (wp - kernel) // stride + 1
    dw = depthwise.DepthwiseRunner((n, 32, oh, ow), w2.shape, dw_stride, dw_pad, ACT, frozen=True, c8=True)
    return x, w1, b1, w2, b2, dw


def _conv_two_steps(x, border, w1, b1, w2, b2, stride, dw):
    """The two steps the plan runs without fuse_conv_depthwise (zero_border_step's padding, then hand_over_expand's
    stem): pointwise_t's ConvTRunner on the zero-bordered image writing the depthwise's padded blocks, the depthwise
    reading them in place."""
    top, left, bottom, right = border
    xp = np.ascontiguousarray(np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))))
    _, _, sh, sw, _, _ = dw.geometry
    ref = depthwise.DepthwiseRunner(dw.args[:4], w2.shape, (sh, sw), (dw.args[4], dw.args[5]), ACT, frozen=True,
                                    c8=True)  # fmt: skip
    size = depthwise.PaddedInput.size(ref)
    raw = np.full(size + 16, np.nan, np.float32)
    blocks = depthwise.PaddedInput(ref, raw[(-raw.ctypes.data // 4) % 16 :][:size])
    pointwise_t.ConvTRunner(xp.shape, w1.shape, (stride, stride), ACT, blocks)(xp, w1, b1, np.empty(0, np.float32))
    ref.padded_in = blocks
    y = np.empty(dw.out_shape, np.float32)
    ref(np.empty(dw.args[:4], np.float32), w2, b2, y)
    return y, xp


CONV_CASES = [  # (N, C, H, W, the zero border, kernel, stride, the depthwise's kernel, stride, pad)
    (1, 3, 224, 224, (0, 0, 1, 1), 3, 2, 3, 1, 1),  # EfficientNet-Lite0's stem (TF's SAME) and block 0's depthwise
    (2, 3, 224, 224, (0, 0, 1, 1), 3, 2, 3, 1, 1),
    (1, 3, 58, 31, (1, 1, 1, 1), 3, 1, 5, 2, 2),  # a row's last tile overlapping the one before (31 columns)
    (3, 4, 30, 37, (1, 2, 0, 1), 4, 2, 3, 1, 1),  # bands starting off a multiple of 8 output pixels
    (1, 3, 40, 30, (0, 0, 0, 0), 3, 2, 3, 1, 1),  # no border
]


@pytest.mark.parametrize("n,cin,h,wd,border,kernel,stride,dw_kernel,dw_stride,dw_pad", CONV_CASES)
def test_conv_and_depthwise_same_bits_as_the_two_steps(n, cin, h, wd, border, kernel, stride, dw_kernel, dw_stride,
                                                       dw_pad) -> None:  # fmt: skip
    """ConvDepthwiseRunner (each band's input rows zero-bordered in its own buffer) against the convolution's tiles on
    the zero-bordered image then the depthwise's (the plan's two steps): the same bits on 1 and on 2 threads (other
    bands), again on the same buffers; within float32 rounding of the float64 reference (2e-5 sqrt(taps) of the
    largest output); and with the depthwise's handoff set, its blocks hold the same values."""
    x, w1, b1, w2, b2, dw = _conv_pair(n, cin, h, wd, border, kernel, stride, dw_kernel, dw_stride, dw_pad, h + wd)
    saved = numba.get_num_threads()
    got = {}
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            dw = depthwise.DepthwiseRunner(dw.args[:4], w2.shape, dw_stride, dw_pad, ACT, frozen=True, c8=True)
            run = mbconv.ConvDepthwiseRunner(x.shape, w1.shape, (stride, stride), ACT, dw, border)
            y = np.full(dw.out_shape, np.nan, np.float32)
            run(x, w1, b1, w2, b2, y)
            run(x, w1, b1, w2, b2, y)
            got[threads] = y
            want, xp = _conv_two_steps(x, border, w1, b1, w2, b2, stride, dw)
            np.testing.assert_array_equal(y, want)
            dw.handoff = depthwise.Handoff()
            blocks = np.empty(dw.out_shape, np.float32)
            run(x, w1, b1, w2, b2, blocks)
            assert dw.handoff.interleaved == depthwise.LANES
            oh, ow = dw.out_shape[2:]
            back = blocks.reshape(n, 2, oh * ow, 16).transpose(0, 1, 3, 2).reshape(y.shape)
            np.testing.assert_array_equal(back, y)
    finally:
        numba.set_num_threads(saved)
    for v in got.values():
        np.testing.assert_array_equal(v, got[1])
    from kernels.conv import conv2d_forward_ref

    mid = np.clip(conv2d_forward_ref(xp.astype(np.float64), w1.astype(np.float64), b1.astype(np.float64),
                                     stride=stride), *ACT)  # fmt: skip
    ref = depthwise.depthwise_forward_ref(mid, w2, b2, stride=dw_stride, pad=dw_pad, act=ACT)
    taps = cin * kernel * kernel
    np.testing.assert_allclose(got[1], ref, rtol=0, atol=2e-5 * np.sqrt(taps) * max(1.0, float(np.abs(ref).max())))


def test_conv_applies() -> None:
    dw = depthwise.DepthwiseRunner((1, 32, 112, 112), (32, 1, 3, 3), 1, 1, ACT, frozen=True, c8=True)
    same = (0, 0, 1, 1)  # TF's SAME at stride 2: one zero row and column after the image
    assert mbconv.conv_applies((1, 3, 224, 224), (32, 3, 3, 3), (2, 2), dw, same)
    assert mbconv.conv_applies((1, 3, 225, 225), (32, 3, 3, 3), (2, 2), dw)
    assert not mbconv.conv_applies((1, 3, 224, 224), (32, 3, 3, 3), (2, 2), dw)  # 111 x 111: not the depthwise's
    assert not mbconv.conv_applies((1, 3, 224, 224), (64, 3, 3, 3), (2, 2), dw, same)  # 64 channels: two panels
    assert not mbconv.conv_applies((1, 3, 224, 224), (32, 3, 3, 3), (2, 2), dw, (0, 0, -1, 1))
    planes = depthwise.DepthwiseRunner((1, 32, 112, 112), (32, 1, 3, 3), 1, 1, ACT, frozen=True)
    assert not planes.c8 and not mbconv.conv_applies((1, 3, 224, 224), (32, 3, 3, 3), (2, 2), planes, same)
    with pytest.raises(ValueError, match="do not apply"):
        mbconv.ConvDepthwiseRunner((1, 3, 224, 224), (32, 3, 3, 3), (2, 2), ACT, planes, same)


def test_net_fuses_the_stem_and_block0s_depthwise_and_keeps_the_bits() -> None:
    """EfficientNet-Lite0 with shared activations: the zero-bordered stem and block 0's depthwise run as one step
    (plan_steps.fuse_conv_depthwise), whose depthwise step has nothing left to do; the softmax has the bits of the
    plan with the two steps apart (FUSE_STEM off), replayed too, at batch 1 and at batch 3 (image by image on batch-1
    copies, net.per_image, each with the fused step). When the depthwise's output array changes
    under the plan, the fused step refuses and the layers' own forwards run: the same values, then the same bits; when
    the stem's weights get a non-zero border, it refuses too and the full kernel runs (within 1e-6 of a net without
    shared activations)."""
    for n in (1, 3):
        x = np.random.default_rng(n + 20).uniform(-1, 1, (n, 3, 224, 224)).astype(np.float32)
        net, fused = _lite0(True, x, "FUSE_STEM")
        _, apart = _lite0(False, x, "FUSE_STEM")
        np.testing.assert_array_equal(fused, apart)
        for _ in range(4):  # recorded and replayed
            np.testing.assert_array_equal(net.forward(data=x)["prob"], apart)
        plan = net._plan.per_image.replicas[0]._plan if n > 1 else net._plan
        step, layer = plan.steps[0][:2]
        assert isinstance(step.runner, mbconv.ConvDepthwiseRunner) and layer.name == "stem"
        assert getattr(plan.steps[1][0], "done_by", None) is step
        if n > 1:
            continue
        assert net._plan.replay
        dst = plan.steps[1][3][0]
        dst.data = np.zeros_like(dst.data)  # another array than the plan's: the fused step refuses
        np.testing.assert_allclose(net.forward(data=x)["prob"], apart, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(net.forward(data=x)["prob"], apart)  # planned again
        from net import Net
        from net.zoo import efficientnet_lite0

        files = efficientnet_lite0(say=lambda _m: None)
        plain = Net.load(files.prototxt, files.weights)  # (no shared activations: no fused steps)
        for model in (net, plain):  # the same new folded weights in both, with a non-zero border
            layer = next(la for la in model.layers if la.name == "stem")
            w, b = layer.forward_params()
            w = w.copy()
            w[:, :, 0, :] = 0.01
            layer.folded = (w, b)
        changed = net.forward(data=x)["prob"]  # the fused step refuses: the full kernel from then on
        assert not np.array_equal(changed, apart)
        np.testing.assert_allclose(changed, plain.forward(data=x)["prob"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(net.forward(data=x)["prob"], changed, rtol=0, atol=1e-6)
