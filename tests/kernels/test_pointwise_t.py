"""kernels.pointwise_t (1x1 convolution with the output channels in the vector lanes) against the float64 reference
and against kernels.pointwise's bits: the same FMA chain per output, so every pixel pointwise computes on its main
tiles has the same bits here (its edge pixels, on dot tiles that sum in partial sums, may differ in the last bits)."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from kernels import pointwise, pointwise_t
from kernels.pointwise import NR, PointwiseRunner, pointwise_forward_ref
from kernels.pointwise_t import PointwiseTRunner

pytestmark = pytest.mark.skipif(not pointwise_t.ENABLED, reason="AVX-512 only (the 16-lane tile)")

ACT = (0.0, 6.0)


def _inputs(n, k, m, h, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k, h, h)).astype(np.float32)
    w = (rng.standard_normal((m, k, 1, 1)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    res = rng.standard_normal((n, m, h, h)).astype(np.float32)
    return x, w, b, res


@pytest.mark.parametrize(
    "n,k,m,h",
    [
        (1, 480, 80, 14),
        (1, 1152, 192, 7),
        (1, 320, 1280, 7),
        (2, 240, 112, 14),
        (3, 256, 48, 7),
        (1, 256, 16, 7),
        (1, 256, 64, 56),  # larger planes from K = MIN_K_LARGE (ResNet-50's res2 and res3 reductions)
        (2, 512, 128, 28),
    ],
)
def test_matches_reference_and_pointwise_main_tile_bits(n, k, m, h) -> None:
    x, w, b, res = _inputs(n, k, m, h, seed=k + m)
    run = PointwiseTRunner(x.shape, w.shape, ACT)
    y = np.full(run.out_shape, np.nan, np.float32)
    z = np.full(run.out_shape, np.nan, np.float32)
    run(x, w, b, y, res, z)
    ref = pointwise_forward_ref(x, w, b, act=ACT)
    tol = 1e-5 * np.sqrt(k) * max(1.0, float(np.abs(ref).max()))  # float32 sums of K products
    assert float(np.abs(y - ref).max()) <= tol
    np.testing.assert_array_equal(z, y + res)  # the residual sum: one float32 addition
    old = PointwiseRunner(x.shape, w.shape, ACT)
    y0 = np.empty(old.out_shape, np.float32)
    old(x, w, b, y0)
    p = h * h
    main = p - p % NR  # pixels pointwise computes on its main tiles (x in place or packed, no _head shift here)
    np.testing.assert_array_equal(y.reshape(n, m, p)[:, :, :main], y0.reshape(n, m, p)[:, :, :main])
    y2 = np.empty_like(y)
    run(x, w, b, y2)  # without the residual: the same y
    np.testing.assert_array_equal(y2, y)
    y3 = np.full_like(y, np.nan)
    z3 = np.full_like(z, np.nan)
    run(x, w, b, y3, res, z3, relu=True, sum_only=True)  # the sum alone: y not written
    assert np.isnan(y3).all()
    np.testing.assert_array_equal(z3, np.maximum(y + res, np.float32(0)))


def test_bits_do_not_depend_on_the_thread_count() -> None:
    x, w, b, _ = _inputs(2, 480, 80, 14)
    outs = []
    saved = numba.get_num_threads()
    try:
        for threads in sorted({1, saved}):
            numba.set_num_threads(threads)
            run = PointwiseTRunner(x.shape, w.shape, ACT)
            y = np.empty(run.out_shape, np.float32)
            run(x, w, b, y)
            outs.append(y)
    finally:
        numba.set_num_threads(saved)
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])


@pytest.mark.parametrize("n,k,m,h", [(1, 320, 1280, 7), (2, 480, 80, 14), (1, 256, 64, 56)])
def test_prefetching_the_next_steps_weights_keeps_the_bits(n, k, m, h) -> None:
    """PointwiseTRunner.ahead (net.plan_steps.prefetch_ahead): the tiles after a task's first prefetch another array
    (plan[15]: its offset from the packed panels, plan[16]: its floats); prefetches only, the same bits."""
    x, w, b, _ = _inputs(n, k, m, h, seed=3)
    plain_run = PointwiseTRunner(x.shape, w.shape, ACT)
    want = np.empty(plain_run.out_shape, np.float32)
    plain_run(x, w, b, want)
    nxt = np.ones(1000 * 1280, np.float32)
    run = PointwiseTRunner(x.shape, w.shape, ACT)
    run.ahead = lambda: nxt
    y = np.full(run.out_shape, np.nan, np.float32)
    run(x, w, b, y)
    np.testing.assert_array_equal(y, want)
    panels = run.packed[1]
    assert panels.ctypes.data + 4 * int(run.plan[15]) == nxt.ctypes.data and run.plan[16] == nxt.size
    run.ahead = lambda: None  # nothing to prefetch (the next step has not packed its weights yet)
    run(x, w, b, y)
    assert run.plan[16] == 0
    np.testing.assert_array_equal(y, want)


def test_weights_packed_again_for_a_new_array() -> None:
    x, w, b, _ = _inputs(1, 256, 32, 7)
    run = PointwiseTRunner(x.shape, w.shape, None)
    y1, y2 = np.empty(run.out_shape, np.float32), np.empty(run.out_shape, np.float32)
    run(x, w, b, y1)
    w2 = (w * 2).astype(np.float32)
    run(x, w2, b, y2)
    np.testing.assert_allclose(y2 - b[None, :, None, None], 2 * (y1 - b[None, :, None, None]), rtol=1e-5, atol=1e-4)


def test_pack_layout() -> None:
    w = np.arange(48 * 3, dtype=np.float32).reshape(48, 3, 1, 1)
    wt = pointwise_t.pack(w)
    np.testing.assert_array_equal(wt[: 3 * 32].reshape(3, 32), w[:32, :, 0, 0].T)
    np.testing.assert_array_equal(wt[3 * 32 :].reshape(3, 16), w[32:, :, 0, 0].T)


def test_applies() -> None:
    assert pointwise_t.applies((1, 480, 14, 14), (80, 480, 1, 1))
    assert pointwise_t.applies((32, 1152, 7, 7), (320, 1152, 1, 1))
    assert pointwise_t.applies((1, 112, 14, 14), (672, 112, 1, 1))  # an expand
    assert not pointwise_t.applies((1, 80, 14, 14), (480, 80, 1, 1))  # K below MIN_K
    assert not pointwise_t.applies((1, 144, 14, 14), (24, 144, 1, 1))  # M not a multiple of 16
    assert not pointwise_t.applies((1, 192, 28, 28), (80, 192, 1, 1))  # a larger plane, K below MIN_K_LARGE
    assert pointwise_t.applies((1, 256, 56, 56), (64, 256, 1, 1))  # a larger plane, K >= MIN_K_LARGE (ResNet's)
    assert not pointwise_t.applies((1, 480, 8, 8), (80, 480, 1, 1))  # 64 pixels: not whole 7-pixel tiles
    assert not pointwise_t.applies((1, 480, 14, 14), (80, 480, 3, 3))
    assert pointwise_t.applies((1, 144, 56, 56), (24, 144, 1, 1), xblk=True)  # x in blocks: any plane size and M
    assert not pointwise_t.applies((1, 24, 56, 56), (144, 24, 1, 1), xblk=True)  # K not whole blocks
    with pytest.raises(ValueError, match="does not apply"):
        PointwiseTRunner((1, 192, 28, 28), (80, 192, 1, 1))


def _lite0_with(module, name: str, value, seed: int, batch: int = 1):
    """(net, softmax): EfficientNet-Lite0 with shared activations, planned and run once on `batch` random images
    (a batched plan: not image by image) while module.name is value (restored after)."""
    from net import Net, per_image
    from net.zoo import efficientnet_lite0

    files = efficientnet_lite0(say=lambda _m: None)
    x = np.random.default_rng(seed).uniform(-1, 1, (batch, 3, 224, 224)).astype(np.float32)
    saved, saved_pi = getattr(module, name), per_image.ENABLED
    setattr(module, name, value)
    per_image.ENABLED = False
    try:
        net = Net.load(files.prototxt, files.weights)
        net.share_activations()
        return net, net.forward(data=x)["prob"].copy()
    finally:
        setattr(module, name, saved)
        per_image.ENABLED = saved_pi


def test_the_net_plan_takes_it_for_folded_1x1_layers() -> None:
    """EfficientNet-Lite0's projections from 14 x 14 on and its head (BatchNorm folded: frozen weights) run on it;
    its softmax stays within 1e-5 of the same net on pointwise alone."""
    outs = {}
    for enabled in (False, True):
        net, outs[enabled] = _lite0_with(pointwise_t, "ENABLED", enabled, seed=0)
        used = sum(isinstance(getattr(s[0], "runner", None), PointwiseTRunner) for s in net._plan.steps)
        assert (used > 0) == enabled
    np.testing.assert_allclose(outs[True], outs[False], rtol=0, atol=1e-5)
    assert pointwise.PointwiseRunner  # the other path stays importable


def _from_planes_and_blocks(planes, blocks, handoff, w, b, act):
    """(runner, y, y from blocks): pointwise_t on x in planes, then on the same x in blocks (a depthwise.Handoff as
    the depthwise step left it); the reader clears the handoff."""
    pt = PointwiseTRunner(planes.shape, w.shape, act)
    want = np.empty(pt.out_shape, np.float32)
    pt(planes, w, b, want)
    pt.handoff = handoff
    got = np.empty(pt.out_shape, np.float32)
    pt(blocks, w, b, got)
    assert not handoff.interleaved  # the reader took it
    return pt, want, got


@pytest.mark.parametrize("h,k,stride", [(14, 480, 1), (7, 1152, 1), (14, 672, 2)])
def test_depthwise_handoff_gives_the_same_bits(h, k, stride) -> None:
    """The depthwise output in blocks of LANES (16) channels interleaved per pixel (depthwise.Handoff) holds the same
    values as the planes, and pointwise_t reading it gives the same bits as reading the planes."""
    from kernels import depthwise

    rng = np.random.default_rng(h + k)
    n = 2
    x = rng.standard_normal((n, k, h, h)).astype(np.float32)
    wd = rng.standard_normal((k, 1, 3, 3)).astype(np.float32)
    bd = rng.standard_normal(k).astype(np.float32)
    dw = depthwise.DepthwiseRunner(x.shape, wd.shape, (stride, stride), (1, 1), ACT)
    assert dw.c8
    planes = np.empty(dw.out_shape, np.float32)
    dw(x, wd, bd, planes)
    handoff = depthwise.Handoff()
    dw.handoff = handoff
    blocks = np.empty(dw.out_shape, np.float32)
    dw(x, wd, bd, blocks)
    assert handoff.interleaved
    _, c, oh, ow = dw.out_shape
    lanes = depthwise.LANES
    assert handoff.interleaved == lanes
    as_planes = blocks.reshape(n, c // lanes, oh * ow, lanes).transpose(0, 1, 3, 2).reshape(dw.out_shape)
    np.testing.assert_array_equal(as_planes, planes)
    m = 80
    w = (rng.standard_normal((m, k, 1, 1)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    pt, want, got = _from_planes_and_blocks(planes, blocks, handoff, w, b, ACT)
    np.testing.assert_array_equal(got, want)
    pt(planes, w, b, got)  # no new handoff: planes again
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "n,k,m,h",
    [(1, 144, 24, 56), (1, 240, 40, 28), (1, 32, 16, 112), (2, 96, 24, 28), (1, 48, 8, 28), (1, 64, 56, 28)],
)
def test_x_in_blocks_on_large_planes_and_any_m(n, k, m, h) -> None:
    """x handed over in blocks (a depthwise.Handoff), any plane size and M (a last panel padded with zero weights, its
    padding channels not stored; 8 real channels in its last 16 on the half tiles: M = 8, 24, 40, 56): the bits of
    pointwise on the planes (no edge pixels here), residual sum included."""
    from kernels import depthwise

    assert pointwise_t.applies((n, k, h, h), (m, k, 1, 1), xblk=True)
    assert not pointwise_t.applies((n, k, h, h), (m, k, 1, 1))
    x, w, b, res = _inputs(n, k, m, h, seed=k + m)
    lanes = depthwise.LANES
    blocks = np.ascontiguousarray(x.reshape(n, k // lanes, lanes, h * h).transpose(0, 1, 3, 2)).reshape(x.shape)
    run = PointwiseTRunner(x.shape, w.shape, None, xblk=True)
    run.handoff = handoff = depthwise.Handoff()
    handoff.interleaved = lanes
    y = np.full(run.out_shape, np.nan, np.float32)
    z = np.full(run.out_shape, np.nan, np.float32)
    run(blocks, w, b, y, res, z)
    old = PointwiseRunner(x.shape, w.shape, None)
    y0, z0 = np.empty(old.out_shape, np.float32), np.empty(old.out_shape, np.float32)
    old(x, w, b, y0, res, z0)
    assert (h * h) % NR == 0
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(z, z0)
    y2 = np.full(run.out_shape, np.nan, np.float32)
    run(x, w, b, y2)  # no handoff this time: x in planes
    np.testing.assert_array_equal(y2, y0)


def _projections_on_blocks(steps) -> list[str]:
    """The 1x1 steps on large planes (pointwise_t past MAX_P) that read the depthwise step's blocks before them."""
    from kernels import depthwise

    return [
        steps[i + 1][1].name
        for i, s in enumerate(steps[:-1])
        if isinstance(getattr(s[0], "runner", None), depthwise.DepthwiseRunner)
        and isinstance(getattr(steps[i + 1][0], "runner", None), PointwiseTRunner)
        and steps[i + 1][0].runner.plan[3] > pointwise_t.MAX_P
    ]


def test_net_projections_on_large_planes_take_blocks() -> None:
    """EfficientNet-Lite0's projections after a depthwise step on the channel-block path (56 x 56 and 28 x 28, M = 24
    and 40) move to pointwise_t and read the depthwise's blocks (net.plan_steps.PROJECT_BLOCKS): the same bits."""
    from net import plan_steps

    outs, moved = {}, {}
    for on in (False, True):
        net, outs[on] = _lite0_with(plan_steps, "PROJECT_BLOCKS", on, seed=2)
        moved[on] = _projections_on_blocks(net._plan.steps)
    assert not moved[False]
    assert {"block1/project", "block2/project", "block3/project", "block4/project"} <= set(moved[True])
    np.testing.assert_array_equal(outs[True], outs[False])


def test_net_projections_take_blocks_at_batch_2() -> None:
    """At batch 2 (net.per_image's group copies; BLOCKS_MAX_BATCH) the projections on large planes read the
    depthwise's blocks and block 0's projection hands block 1's expand blocks, as at batch 1: the same bits as the
    batch-2 plan without them (BLOCKS_MAX_BATCH 1)."""
    from net import plan_steps

    outs, moved, handed = {}, {}, {}
    for most in (1, 2):
        net, outs[most] = _lite0_with(plan_steps, "BLOCKS_MAX_BATCH", most, seed=3, batch=2)
        steps = net._plan.steps
        moved[most] = _projections_on_blocks(steps)
        handed[most] = [s[1].name for s in steps if getattr(getattr(s[0], "runner", None), "x_blocks", None)]
    assert not moved[1] and not handed[1]
    assert {"block1/project", "block2/project", "block3/project", "block4/project"} <= set(moved[2])
    assert handed[2] == ["block1/expand"]
    np.testing.assert_array_equal(outs[2], outs[1])


def test_net_hands_over_and_refusals_put_planes_back() -> None:
    """EfficientNet-Lite0 with shared activations hands depthwise outputs over in blocks, and expand outputs to the
    depthwise after them: within 1e-6 of the net without shared activations (planes everywhere; its expands with
    K < 112 run on pointwise, whose edge pixels may differ in the last bits); and when a 1x1 step refuses (an array
    changed under the plan), the blob is put back in planes before the layer's own forward reads it."""
    from kernels import depthwise
    from net import Net
    from net.zoo import efficientnet_lite0

    files = efficientnet_lite0(say=lambda _m: None)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    plain = Net.load(files.prototxt, files.weights)
    want = plain.forward(data=x)["prob"]
    net = Net.load(files.prototxt, files.weights)
    net.share_activations()
    got = net.forward(data=x)["prob"].copy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    want = got  # the bits of this plan from here on
    steps = net._plan.steps
    handed = [
        i
        for i, s in enumerate(steps)
        if isinstance(getattr(s[0], "runner", None), depthwise.DepthwiseRunner) and s[0].runner.handoff is not None
    ]
    assert len(handed) >= 8
    top = steps[handed[0] + 1][3][0]  # the 1x1 after the first handed-over depthwise output
    top.data = np.zeros_like(top.data)  # another array than the plan's: that step refuses
    np.testing.assert_allclose(net.forward(data=x)["prob"], want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(net.forward(data=x)["prob"], want)  # planned again


def test_net_expand_blocks_refusals(monkeypatch) -> None:
    """The expand -> depthwise handoff (net.plan_steps.hand_over_expand, the expand and the depthwise not fused:
    FUSE_EXPAND off): the 1x1 step writes the depthwise's padded blocks, not its top blob. When the 1x1 step refuses,
    its layer's forward writes planes and the depthwise fills from them; when the depthwise step refuses with the
    blocks written, they go back into the blob as planes before the depthwise layer's own forward reads it. Each time
    the same values as the plan's forward."""
    from kernels import depthwise
    from net import Net, plan_steps
    from net.zoo import efficientnet_lite0

    monkeypatch.setattr(plan_steps, "FUSE_EXPAND", False)
    files = efficientnet_lite0(say=lambda _m: None)
    x = np.random.default_rng(2).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    net = Net.load(files.prototxt, files.weights)
    net.share_activations()
    want = net.forward(data=x)["prob"].copy()
    steps = net._plan.steps
    taking = [
        i
        for i, s in enumerate(steps)
        if isinstance(getattr(s[0], "runner", None), depthwise.DepthwiseRunner) and s[0].runner.padded_in is not None
    ]
    assert len(taking) >= 12  # every depthwise on the channel-block path after an expand (EfficientNet-Lite0: 14)
    assert all(steps[i - 1][0].runner.blocks is steps[i][0].runner.padded_in for i in taking)
    expand_top = steps[taking[0]][2][0]
    expand_top.data = np.zeros_like(expand_top.data)  # the 1x1 step refuses, its layer writes planes
    np.testing.assert_allclose(net.forward(data=x)["prob"], want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(net.forward(data=x)["prob"], want)  # planned again
    steps = net._plan.steps
    i = next(i for i, s in enumerate(steps) if getattr(s[0], "runner", None) is not None and s[1].name == "block9/dw")
    assert steps[i][0].runner.padded_in is not None
    dw_top = steps[i][3][0]
    dw_top.data = np.zeros_like(dw_top.data)  # the depthwise step refuses after the 1x1 wrote its blocks
    np.testing.assert_allclose(net.forward(data=x)["prob"], want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(net.forward(data=x)["prob"], want)


@pytest.mark.parametrize(
    "k,m,h,kernel,stride,pad",
    [
        (112, 672, 14, 5, 1, 2),
        (24, 144, 56, 6, 2, 2),
        (40, 240, 28, 4, 2, 1),
        (192, 1152, 7, 5, 1, 2),
        (16, 96, 28, 3, 1, 1),
    ],
)
def test_blocks_handoff_same_bits(k, m, h, kernel, stride, pad) -> None:
    """pointwise_t writing a depthwise's padded blocks of 16 channels (any plane size), the depthwise reading them in
    place (its 16-lane tiles) and handing its output on in blocks too (the 1x1 after it reads them): the
    same bits as pointwise_t's planes then the depthwise's own fill where pointwise_t takes the planes (K >= 112, up
    to 14 x 14), and within float32 rounding of the float64 reference everywhere; blocks shared between two handoffs
    (stale values in the borders) change nothing."""
    from kernels import depthwise

    lanes = depthwise.LANES
    for n in (1, 2):
        x, w, b, _ = _inputs(n, k, m, h, seed=k)
        rng = np.random.default_rng(m)
        wd = rng.standard_normal((m, 1, kernel, kernel)).astype(np.float32)
        if stride == 2:  # the TF SAME form at stride 2: a zero first row and column
            wd[:, :, 0], wd[:, :, :, 0] = 0.0, 0.0
        bd = rng.standard_normal(m).astype(np.float32)
        dw = depthwise.DepthwiseRunner((n, m, h, h), wd.shape, stride, pad, ACT, frozen=True)
        assert dw.c8
        size = depthwise.PaddedInput.size(dw)
        raw = np.full(size + 16, np.nan, np.float32)  # stale values everywhere, borders included
        buf = raw[(-raw.ctypes.data // 4) % 16 :][:size]
        blocks = depthwise.PaddedInput(dw, buf)
        expand = PointwiseTRunner(x.shape, w.shape, ACT, blocks)
        unread = np.full(expand.out_shape, np.nan, np.float32)
        expand(x, w, b, unread)
        assert blocks.ready and np.isnan(unread).all()  # y itself is not written
        dw.padded_in = blocks
        got = np.empty(dw.out_shape, np.float32)
        dw(x=np.full((n, m, h, h), np.nan, np.float32), w=wd, bias=bd, out=got)  # x unread: the blocks are
        assert not blocks.ready
        mid = pointwise_forward_ref(x, w, b, act=ACT)
        ref = depthwise.depthwise_forward_ref(mid.astype(np.float32), wd, bd, stride=stride, pad=pad, act=ACT)
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * np.sqrt(k) * max(1.0, float(np.abs(ref).max())))
        # the output handed on in blocks (depthwise.Handoff) to a 1x1 that reads them: the same bits as from planes
        ho = depthwise.Handoff()
        dw.handoff = ho
        expand(x, w, b, unread)
        handed = np.empty(dw.out_shape, np.float32)
        dw(np.full((n, m, h, h), np.nan, np.float32), wd, bd, handed)
        assert ho.interleaved == lanes
        oh = dw.out_shape[2]
        if pointwise_t.applies(dw.out_shape, (32, m, 1, 1)):
            wp = (rng.standard_normal((32, m, 1, 1)) / np.sqrt(m)).astype(np.float32)
            bp = rng.standard_normal(32).astype(np.float32)
            _, from_planes, from_blocks = _from_planes_and_blocks(got, handed, ho, wp, bp, None)
            np.testing.assert_array_equal(from_blocks, from_planes)
        else:  # the layout itself: block b's pixel p holds its channels
            blk = handed.reshape(n, m // lanes, oh * oh, lanes).transpose(0, 1, 3, 2).reshape(got.shape)
            np.testing.assert_array_equal(blk, got)
        dw.handoff = None
        if pointwise_t.applies(x.shape, w.shape):
            planes = np.empty(expand.out_shape, np.float32)
            PointwiseTRunner(x.shape, w.shape, ACT)(x, w, b, planes)
            want = np.empty(dw.out_shape, np.float32)
            depthwise.DepthwiseRunner((n, m, h, h), wd.shape, stride, pad, ACT, frozen=True)(planes, wd, bd, want)
            np.testing.assert_array_equal(got, want)
            back = np.full(planes.shape, np.nan, np.float32)
            expand(x, w, b, unread)
            blocks.planes(back)  # the refusal path: the blocks as planes
            np.testing.assert_array_equal(back, planes)
            assert not blocks.ready


def test_mobilenet_v1_chain_of_handoffs(monkeypatch) -> None:
    """MobileNet v1 (depthwise, 1x1, depthwise, ...), the 1x1 and the depthwise after it not fused (FUSE_EXPAND off):
    a 1x1 step that reads a depthwise output in blocks and writes the next depthwise's blocks takes both handoffs (a
    runner made for the second kept the first: wrong values once). Shared activations (the handoffs) against planes
    everywhere, random weights: the same softmax within 1e-6."""
    from kernels import depthwise
    from net import Net, plan_steps
    from tests.net.test_zoo_models import MODELS, fill_random

    monkeypatch.setattr(plan_steps, "FUSE_EXPAND", False)
    path = MODELS / "mobilenet_v1" / "deploy.prototxt"
    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    outs = []
    for shared in (False, True):
        net = Net.load(path, phase="test")
        fill_random(net, 0)
        if shared:
            net.share_activations()
        outs.append(next(iter(net.forward(**{net.inputs[0]: x}).values())).copy())
    runners = [getattr(s[0], "runner", None) for s in net._plan.steps]
    both = [r for r in runners if isinstance(r, PointwiseTRunner) and r.handoff is not None and r.blocks is not None]
    assert both, "no 1x1 step between two depthwise ones took both handoffs"
    assert sum(isinstance(r, depthwise.DepthwiseRunner) and r.padded_in is not None for r in runners) >= 8
    np.testing.assert_allclose(outs[1], outs[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("n,stride", [(1, 2), (2, 2), (1, 1)])
def test_conv_t_has_im2col_bits(n, stride) -> None:
    """ConvTRunner (a convolution with pad 0 on the tiles, the taps read from the image itself, the output in a
    depthwise's blocks) against pointwise.Im2colRunner on the same padded image: the same FMA chain per output, the
    same bits; stride 2 on its tile with constant pixel offsets, stride 1 on the general one."""
    from kernels import depthwise

    rng = np.random.default_rng(n)
    side = 225 if stride == 2 else 114
    xs, ws, st = (n, 3, side, side), (32, 3, 3, 3), (stride, stride)
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32)
    b = rng.standard_normal(32, dtype=np.float32)
    assert pointwise_t.conv_applies(xs, ws, st)
    assert not pointwise_t.conv_applies(xs, (24, 3, 3, 3), st)  # M not whole 32-channel panels
    assert not pointwise_t.conv_applies((1, 3, 27, 27), ws, (2, 2))  # 13 output columns: less than one 14-pixel tile
    ref = pointwise.Im2colRunner(xs, ws, st, (1, 1), ACT)
    want = np.empty(ref.out_shape, np.float32)
    ref(x, w, b, want)
    dw = depthwise.DepthwiseRunner(ref.out_shape, (32, 1, 3, 3), (1, 1), (1, 1), ACT, frozen=True, c8=True)
    raw = np.empty(depthwise.PaddedInput.size(dw) + 16, np.float32)
    blocks = depthwise.PaddedInput(dw, raw[(-raw.ctypes.data // 4) % 16 :])
    run = pointwise_t.ConvTRunner(xs, ws, st, ACT, blocks)
    assert run.out_shape == ref.out_shape == (n, 32, 112, 112)
    run(x, w, b, np.empty(0, np.float32))  # y is not written: the blocks are
    got = np.full(ref.out_shape, np.nan, np.float32)
    blocks.planes(got)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n,stride,side,m", [(1, 4, 227, 96), (3, 4, 67, 64), (2, 2, 63, 32), (1, 1, 19, 32)])
def test_conv_t_ragged_rows_have_the_conv_bits(n, stride, side, m) -> None:
    """ConvTRunner where the output rows are not whole 14-pixel tiles (CaffeNet's conv1: 11 x 11 / 4, 55 columns; 15,
    31 and 17 columns): each row's last tile ends at the row's end and recomputes pixels of the one before. Against
    conv.ForwardRunner's im2col + GEMM (one K panel: the same FMA chain per output, then bias and ReLU6), bit for bit,
    on stride 4 (constant pixel offsets), 2 and 1, with the output in planes; 3 panels of 32 channels at batch 1
    (the task count made a multiple of the threads)."""
    from kernels import conv

    rng = np.random.default_rng(side)
    k = 11 if stride == 4 else 3
    xs, ws = (n, 3, side, side), (m, 3, k, k)
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32)
    b = rng.standard_normal(m, dtype=np.float32)
    assert pointwise_t.conv_applies(xs, ws, (stride, stride))
    ref = conv.ForwardRunner(xs, ws, (stride, stride), (0, 0), (1, 1), 1, True, ACT[1])
    want = np.empty(ref.out_shape, np.float32)
    ref(x, w, b, want)
    run = pointwise_t.ConvTRunner(xs, ws, (stride, stride), ACT)
    assert run.out_shape == ref.out_shape and run.out_shape[3] % 14 != 0
    got = np.full(run.out_shape, np.nan, np.float32)
    run(x, w, b, got)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(
        got, np.clip(conv.conv2d_forward_ref(x, w, b, stride=stride), *ACT), rtol=1e-5, atol=1e-4
    )


def test_conv_t_writes_a_depthwise_blocks() -> None:
    """ConvTRunner writing a depthwise's padded blocks (depthwise.PaddedInput), the depthwise on its channel-block path
    reading them in place: the bits of Im2colRunner then the depthwise on planes."""
    from kernels import depthwise

    rng = np.random.default_rng(5)
    xs, ws = (1, 3, 225, 225), (32, 3, 3, 3)
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32)
    b = rng.standard_normal(32, dtype=np.float32)
    wd = rng.standard_normal((32, 1, 3, 3), dtype=np.float32)
    bd = rng.standard_normal(32, dtype=np.float32)
    ref = pointwise.Im2colRunner(xs, ws, (2, 2), (1, 1), ACT)
    planes = np.empty(ref.out_shape, np.float32)
    ref(x, w, b, planes)
    dw_planes = depthwise.DepthwiseRunner(ref.out_shape, wd.shape, (1, 1), (1, 1), ACT, frozen=True)
    want = np.empty(dw_planes.out_shape, np.float32)
    dw_planes(planes, wd, bd, want)
    dw = depthwise.DepthwiseRunner(ref.out_shape, wd.shape, (1, 1), (1, 1), ACT, frozen=True, c8=True)
    assert dw.c8
    raw = np.empty(depthwise.PaddedInput.size(dw) + 16, np.float32)
    blocks = dw.padded_in = depthwise.PaddedInput(dw, raw[(-raw.ctypes.data // 4) % 16 :])
    run = pointwise_t.ConvTRunner(xs, ws, (2, 2), ACT, blocks)
    y = np.full(ref.out_shape, np.nan, np.float32)  # not written: the blocks are
    run(x, w, b, y)
    assert blocks.ready and np.isnan(y).all()
    got = np.full(dw.out_shape, np.nan, np.float32)
    dw(y, wd, bd, got)
    assert not blocks.ready  # the depthwise took them
    np.testing.assert_array_equal(got, want)


def test_net_stem_hands_its_blocks_to_the_first_depthwise(monkeypatch) -> None:
    """EfficientNet-Lite0's stem (a zero-bordered 4 x 4 / 2 convolution, net.plan_steps.zero_border_step), where it
    is not fused with block0/dw (FUSE_STEM off), runs on ConvTRunner into block0/dw's blocks, block0/dw on its
    channel-block path (112 x 112); within 1e-6 of the net without shared activations, also when the stem's weights
    get a non-zero border (its full kernel then writes planes, which the depthwise fills its blocks from)."""
    from kernels import depthwise
    from net import Net, plan_steps
    from net.zoo import efficientnet_lite0

    monkeypatch.setattr(plan_steps, "FUSE_STEM", False)

    files = efficientnet_lite0(say=lambda _m: None)
    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    plain = Net.load(files.prototxt, files.weights)
    net = Net.load(files.prototxt, files.weights)
    net.share_activations()
    np.testing.assert_allclose(net.forward(data=x)["prob"], plain.forward(data=x)["prob"], rtol=0, atol=1e-6)
    runners = {s[1].name: getattr(s[0], "runner", None) for s in net._plan.steps}
    assert isinstance(runners["stem"], pointwise_t.ConvTRunner)
    dw = runners["block0/dw"]
    assert isinstance(dw, depthwise.DepthwiseRunner) and dw.c8 and dw.padded_in is not None
    for model in (plain, net):  # the same new folded weights in both, with a non-zero border
        layer = next(la for la in model.layers if la.name == "stem")
        w, b = layer.forward_params()
        w = w.copy()
        w[:, :, 0, :] = 0.01
        layer.folded = (w, b)
    np.testing.assert_allclose(net.forward(data=x)["prob"], plain.forward(data=x)["prob"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("n,k,m,h", [(1, 320, 1280, 7), (3, 256, 64, 7), (2, 240, 96, 14), (1, 256, 64, 28)])
def test_pool_into_has_the_global_pooling_bits(n, k, m, h) -> None:
    """pool_into: the tiles also sum each channel's pixels into the global average pooling's output, the same bits
    as kernels.pool's global AVE pooling of the stored output; pool_only: that output is not stored."""
    from kernels import pool

    x, w, b, _ = _inputs(n, k, m, h, seed=k + m + h)
    plain_run = PointwiseTRunner(x.shape, w.shape, ACT)
    y = np.empty(plain_run.out_shape, np.float32)
    plain_run(x, w, b, y)
    want = pool.pool2d_forward(y, method="AVE", kernel=(h, h), stride=(1, 1), pad=(0, 0))
    for pool_only in (False, True):
        run = PointwiseTRunner(x.shape, w.shape, ACT)
        pooled = np.full((n, m, 1, 1), np.nan, np.float32)
        run.pool_into(pooled, pool_only)
        y2 = np.full_like(y, np.nan)
        run(x, w, b, y2)
        np.testing.assert_array_equal(pooled, want)
        if pool_only:
            assert np.isnan(y2).all()
        else:
            np.testing.assert_array_equal(y2, y)
        run(x, w, b, y2)  # a second call starts each sum afresh
        np.testing.assert_array_equal(pooled, want)


def test_pool_into_refuses_what_it_cannot_do() -> None:
    run = PointwiseTRunner((1, 256, 7, 7), (48, 256, 1, 1), ACT)  # 48: a last panel of 16
    with pytest.raises(ValueError, match="whole panels"):
        run.pool_into(np.empty((1, 48, 1, 1), np.float32), False)
    run = PointwiseTRunner((1, 256, 7, 7), (64, 256, 1, 1), ACT)
    with pytest.raises(ValueError, match="64 elements"):
        run.pool_into(np.empty((2, 64, 1, 1), np.float32), False)


def test_net_head_pools_as_it_goes() -> None:
    """EfficientNet-Lite0 with shared activations: the head's tiles write the global pooling (fuse_global_pool), the
    pooling's step has nothing left to do and the head's output is not stored; the same bits as without; when the
    head's step refuses (an array changed under the plan), the pooling runs as its own again."""
    from net import plan_steps

    outs = {}
    for on in (False, True):
        net, outs[on] = _lite0_with(plan_steps, "FUSE_POOL", on, seed=3)
        heads = [s[0].runner for s in net._plan.steps if isinstance(getattr(s[0], "runner", None), PointwiseTRunner)]
        pooled = [r for r in heads if r.pool is not None]
        assert len(pooled) == (1 if on else 0)
        if on:
            assert pooled[0].pool_only and pooled[0].out_shape == (1, 1280, 7, 7)
            pool_step = next(s[0] for s in net._plan.steps if s[1].name == "pool")
            assert getattr(pool_step, "done_by", None) is not None
    np.testing.assert_array_equal(outs[True], outs[False])
    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    for _ in range(4):  # replayed (net.replay) from the third forward: the same bits
        np.testing.assert_array_equal(net.forward(data=x)["prob"], outs[True])
    top = next(s[3][0] for s in net._plan.steps if s[1].name == "pool")
    top.data = np.zeros_like(top.data)  # another array than the plan's: the head's step refuses
    np.testing.assert_array_equal(net.forward(data=x)["prob"], outs[True])
    np.testing.assert_array_equal(net.forward(data=x)["prob"], outs[True])  # planned again


def test_net_1x1_steps_prefetch_the_next_steps_weights() -> None:
    """EfficientNet-Lite0 (net.plan_steps.prefetch_ahead): every projection's tiles prefetch the next block's packed
    expand weights, the last projection the head's panels, the head the fc's W, and every fused expand + depthwise
    the projection's panels after it (past its depthwise's step, whose work it does); the same bits as without,
    replayed too."""
    from kernels import mbconv
    from net import plan_steps

    outs = {}
    for on in (False, True):
        net, outs[on] = _lite0_with(plan_steps, "AHEAD", on, seed=4)
        x = np.random.default_rng(4).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
        for _ in range(4):  # the next steps have packed their weights; replayed from the third forward
            np.testing.assert_array_equal(net.forward(data=x)["prob"], outs[on])
        steps = net._plan.steps
        runs = [
            (i, s[0].runner) for i, s in enumerate(steps) if isinstance(getattr(s[0], "runner", None), PointwiseTRunner)
        ]
        assert len(runs) == 17  # block0-15's projections and the head
        for i, run in runs:
            assert (run.ahead is not None) == on and (run.plan[16] > 0) == on
            if not on:
                continue
            nxt = next(s for s in steps[i + 1 :] if s[1].blobs)
            if nxt[1].type == "InnerProduct":
                want = nxt[1].blobs[0].data
            else:
                assert isinstance(nxt[0].runner, (mbconv.ExpandDepthwiseRunner, PointwiseTRunner))
                want = nxt[0].runner.packed[1]
            assert run.packed[1].ctypes.data + 4 * int(run.plan[15]) == want.ctypes.data
            assert run.plan[16] == want.size
        fused = [(i, s[0].runner) for i, s in enumerate(steps) if isinstance(getattr(s[0], "runner", None),
                                                                               mbconv.ExpandDepthwiseRunner)]  # fmt: skip
        assert len(fused) == 15  # block1-15's expands with their depthwise
        for i, run in fused:
            plan = run.args[0]
            assert (run.ahead is not None) == on and (plan[15] > 0) == on
            if not on:
                continue
            assert steps[i + 1][1].type == "Convolution" and steps[i + 1][0].done_by is not None  # its depthwise
            project = steps[i + 2][0].runner
            assert isinstance(project, PointwiseTRunner)
            assert run.packed[1].ctypes.data + 4 * int(plan[14]) == project.packed[1].ctypes.data
            assert plan[15] == project.packed[1].size
    np.testing.assert_array_equal(outs[True], outs[False])


def test_mobilenet_v1_pools_in_its_last_1x1_and_refusals_restore_the_handoff(monkeypatch) -> None:
    """MobileNet v1 with shared activations: its last 1x1 (conv6/sep, reading the depthwise's handoff in blocks)
    writes the global pooling (fuse_global_pool): the same bits as without. When the pooling's output array changes
    under the plan, the fused step refuses before its 1x1 runs, and the handoff's blocks are put back in planes first:
    the layers' own forwards then give the same softmax."""
    from net import Net, plan_steps
    from tests.net.test_zoo_models import MODELS, fill_random

    path = MODELS / "mobilenet_v1" / "deploy.prototxt"
    x = np.random.default_rng(4).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    outs, nets = {}, {}
    for on in (False, True):
        monkeypatch.setattr(plan_steps, "FUSE_POOL", on)
        net = nets[on] = Net.load(path, phase="test")
        fill_random(net, 0)
        net.share_activations()
        outs[on] = next(iter(net.forward(**{net.inputs[0]: x}).values())).copy()
    np.testing.assert_array_equal(outs[True], outs[False])
    net = nets[True]
    fused = [s for s in net._plan.steps if getattr(getattr(s[0], "runner", None), "pool", None) is not None]
    assert len(fused) == 1 and fused[0][0].runner.handoff is not None
    for _ in range(3):  # replayed from the third forward
        np.testing.assert_array_equal(next(iter(net.forward(**{net.inputs[0]: x}).values())), outs[True])
    pool_index = next(i for i, s in enumerate(net._plan.steps) if s[0] is fused[0][0]) + 1
    top = net._plan.steps[pool_index][3][0]
    top.data = np.zeros_like(top.data)  # another array than the plan's: the fused step refuses
    np.testing.assert_allclose(next(iter(net.forward(**{net.inputs[0]: x}).values())), outs[True], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(next(iter(net.forward(**{net.inputs[0]: x}).values())), outs[True])  # planned again
