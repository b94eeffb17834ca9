"""Plan steps a CPU Net's execution plan (`net.net._Plan`) makes itself, in place of a layer's own `Layer.plan`, where
it recognises more in the layer than the layer type says.

- `zero_border_step`: a Convolution (group 1) whose kernel has an all-zero first row and first column and pad >= 1 on
  both axes, which is how `net.efficientnet` writes TF's asymmetric SAME padding at stride 2 in standard Caffe layers
  ((k+1)x(k+1) kernel, symmetric pad p). It is the k x k kernel over the image with p - 1 zeros before and p after:
  the step copies the image into a zero-bordered buffer (`kernels.pad.PadInto`) and runs `conv.ForwardRunner` with
  pad 0 on it and the kernel without its zero row and column (EfficientNet-Lite0's stem: K = 27 instead of 48). The
  zero taps only ever added exact zeros to each output's sum, whose other terms keep their order: the same bits for
  finite inputs. The weights are checked on every call (a net that trains them may make the border non-zero): then
  the full kernel runs, as the layer's own step would. Where the output has a multiple of 16 pixels per image, the
  k x k convolution runs on `kernels.pointwise.Im2colRunner` (im2col slivers built per task in cache and the 1x1
  tiles over them; the same bits as `conv`'s im2col + GEMM with one K panel; the stem alone, 1 thread, CPU time:
  batch 1 0.58 -> 0.47 ms warm, batch 32 27 -> 19 ms).
- `strided_pointwise_step`: a 1x1 Convolution with pad 0 at stride 2 (ResNet's projection shortcuts and the first
  1x1 of its stages) as its input subsampled into a kept buffer (`kernels.pad.Subsample`) and the stride-1 1x1 on
  that (`kernels.pointwise`, or `pointwise_t` with a BatchNorm folded in), not im2col + GEMM: ResNet-50 at batch 1
  on 2 threads, per-step timing, res5a_branch1 (1024 -> 2048 channels, 14 x 14 -> 7 x 7) 1.57 -> 1.04 ms, the six
  such layers 5.83 -> 4.33 ms; the whole forward in-process 45.9 -> 45.1 ms. Not the same bits (another summation
  order than the GEMM's K panels): within float32 rounding of it.
- `convt_step`: a group-1 kxk Convolution on an image's channels (C <= CONVT_MAX_CHANNELS) on
  `kernels.pointwise_t.ConvTRunner`, output channels in the vector lanes and the taps read from the (zero-padded:
  `kernels.pad.PadInto`) image, no im2col (whose gather costs as much as the GEMM at C = 3), writing planes:
  ResNet-50's and GoogLeNet's first layer (7 x 7 / 2, 3 -> 64 channels) 1.91 -> 1.17 ms at batch 1 and 14.5 ->
  9.5 ms at batch 8 (2 threads), VGG-16's conv1_1 1.3x, MobileNet's 3 x 3 / 2 stems 4-5x; whole nets at batch 1,
  in-process alternation: ResNet-50 1.03x, GoogLeNet 1.03x; CaffeNet's conv1 (11 x 11 / 4, 55 columns: a row's
  last tile overlaps the one before), in-process alternation of two plans: batch 1 / 10 / 64 1.007 / 1.027 / 1.04x.
  The same bits as conv's im2col + GEMM (one K panel).
  More channels lose (SqueezeNet's 16 -> 64 3 x 3: 0.77x; 64 channels 0.6-1.07x): the tiles then read x from L2,
  and im2col + GEMM runs at 60-80% of peak. Weights that may change in place are compared with a copy every call.
- `fuse_residual_sums`: a 1x1 Convolution followed by the Eltwise SUM that adds its output to a skip connection
  (EfficientNet's and MobileNet's residual blocks), and an in-place ReLU after the sum (ResNet's), in one kernel call.
- `hand_over_depthwise`: a depthwise Convolution whose output only the next step reads, a 1x1 Convolution on
  `kernels.pointwise_t`, writes it in 16-channel blocks interleaved per pixel (`kernels.depthwise.Handoff`), no 8 x 8
  transposes back to planes, and the 1x1 reads that layout; only where nothing reads the blob after a forward (a net
  with shared activations, the blob neither kept, observed nor an output). At batch 1 and 2 (BLOCKS_MAX_BATCH) a 1x1 on
  `kernels.pointwise` there (the projections on large planes, M = 24 or 40 included) moves to `pointwise_t` for that
  (PROJECT_BLOCKS). Batch 2 is what ``net.per_image``'s group copies run on one thread each: EfficientNet-Lite0 at
  batch 32 image by image in groups of 2, in-process A/B with BLOCKS_MAX_BATCH 1 / 2, the same bits: 1.009-1.021x on 2
  threads, 1.013x on 1; a batched plan at batch 2 on 2 threads 1.010x.
- `fuse_expand_depthwise`: a folded 1x1 Convolution (an inverted-residual block's expand) whose output only the next
  step reads, a depthwise one with folded weights that `kernels.mbconv` runs (AVX-512, 16k channels), run as one
  step (`kernels.mbconv.ExpandDepthwiseRunner`): each task computes a band of the expand's output for 16 or 32
  channels into its own L2-sized buffer and runs the depthwise on it, so the wide tensor is never stored whole. The
  depthwise's step then has nothing to do (``done_by``: net.replay leaves it out), or, when the fused step refused
  (an array changed under the plan), runs after the expand layer's own forward. Same conditions as the handoffs
  below, and the same bits as `hand_over_expand`'s two steps. EfficientNet-Lite0 in-process A/B (two nets, the flag
  off / on, 2 threads): batch 1 1.02 / 1.02x (min / median), batch 32 1.02 / 1.04x; 1 thread batch 1 1.02x; the
  pairs alone, per step at batch 1 on 2 threads, 0.43 -> 0.29 ms for block 1's (112 x 112, stride 2).
- `fuse_conv_depthwise`: the same for a zero-bordered convolution (`zero_border_step`, 32 output channels on
  `kernels.pointwise_t`'s convolution tiles) and the depthwise step after it (EfficientNet-Lite0's stem and block 0's
  depthwise on 112 x 112): one step (`kernels.mbconv.ConvDepthwiseRunner`) that per band of the depthwise's output
  rows pads the band's input rows in its own buffer (no padded copy of the image), computes the convolution's rows
  into an L2-sized buffer and runs the depthwise on them: the stem's 1.6 MB output an image is never stored whole.
  Same conditions as `fuse_expand_depthwise`, the same bits as `hand_over_expand`'s two steps (FUSE_STEM off).
  EfficientNet-Lite0 in-process A/B, two nets alternated (Zen 4 EPYC, min / median): batch 1 1.015 / 1.020x on 2
  threads, 1.016 / 1.013x on 1; batch 32 1.007 / 1.014x, 64 1.003 / 1.008x; the pad, stem and depthwise per op in a
  forward on 2 threads 320-490 -> 226 us (benchmarks/perf_notes.md, twenty-seventh round).
- `hand_over_expand`: the other way, a 1x1 Convolution (folded, on `kernels.pointwise_t`, any plane size) whose
  output only the next step reads, a depthwise one on its channel-block path, writes that output straight into the
  depthwise's padded blocks of 16 channels (`kernels.depthwise.PaddedInput`), which the depthwise reads in place with
  its 16-lane tiles: no fill, no transposes either side, and its own handoff then in blocks of 16. Same conditions.
  A zero-bordered convolution (EfficientNet's stem) hands over the same way, its step keeping the padding and its
  convolution on `kernels.pointwise_t.ConvTRunner` (STEM_BLOCKS); a depthwise step handed its input so runs on its
  channel-block path at any plane size (no fill to pay: the 112 x 112 layer after the stem).
- `hand_over_projection`: a 1x1 step at batch 1 or 2 (BLOCKS_MAX_BATCH) whose output only a fused expand + depthwise
  step reads (a block's projection into the next block's expand, no residual sum between) writes it in blocks of 16
  channels, which the expand's tiles read (EfficientNet-Lite0's block 0 -> 1). Same conditions.
- `sums_only`: a fused residual sum whose convolution output nobody else reads writes the sum alone. Same conditions.
- `fuse_global_pool`: a 1x1 Convolution on `kernels.pointwise_t` (planes, whole panels of 32) followed by an AVE
  Pooling over the whole plane (EfficientNet-Lite0's head and pool, MobileNet's last layer): the convolution's tiles
  sum each channel's pixels in order into the pooling's output and divide at the last one
  (``PointwiseTRunner.pool_into``: the same operations as ``kernels.pool``'s global pooling, the same bits), and the
  pooling's step has nothing left to do (``done_by``); the convolution's output is not stored where nobody else reads
  it. Same conditions as the handoffs (benchmarks/perf_notes.md, twenty-fourth round).
- `prefetch_ahead`: a 1x1 step on ``kernels.pointwise_t`` whose next step with weights reads them whole (a fused
  expand + depthwise, another such 1x1, an InnerProduct) prefetches them into L2 from its tiles after each task's
  first (``PointwiseTRunner.ahead``), a share a tile, so that step finds them in the caches, not in memory:
  EfficientNet-Lite0's head and its fc (5 MB of W) at batch 1 on 2 threads on a Zen 4 EPYC, per op: head 200 -> 217-235
  us, fc 150-192 -> 73-100 us; with the projections' before the expands, whole forwards 1.002-1.015x (in-process
  A/B, batch 1, 1 and 2 threads). A fused expand + depthwise step does the same for the projection after it, from
  its expand's tile pairs (``mbconv.ExpandDepthwiseRunner.ahead``): one thread, per op, the last projection's gap
  to its time alone 101 -> 29 us, the three before it 22 -> 16 us; whole forwards, in-process A/B, 1.034-1.044x on 2
  threads (three runs, paired medians), 1.007-1.012x on 1 (twenty-ninth round). Prefetches only: the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from kernels import conv, depthwise, mbconv, pointwise, pointwise_t
from kernels.pad import PadInto, Subsample, subsample_shape

from .blob import Blob
from .layers import Layer
from .layers.base import plain, plan_out
from .layers.convolution import pointwise_runner

EXPAND_BLOCKS = True  # hand_over_expand on (False: every 1x1 step writes planes)
FUSE_EXPAND = True  # fuse_expand_depthwise on (False: the expand and the depthwise run as two steps)
STEM_BLOCKS = True  # hand_over_expand also from a zero-bordered convolution (pointwise_t.ConvTRunner, the stem)
FUSE_STEM = True  # fuse_conv_depthwise on (False: a zero-bordered convolution and the depthwise after it, two steps)
# hand_over_depthwise also to 1x1 steps on kernels.pointwise at batch 1 and 2 (BLOCKS_MAX_BATCH; they move to
# pointwise_t; EfficientNet-Lite0, 2 threads, processes alternated: batch 1 ORT/crema 0.79-0.81 -> 0.83-0.84; batch 4
# a wash; batch 32 5-8% slower: kernels.pointwise's image queues and x prefetches win where x comes from memory, and
# M = 24 pads to 32)
PROJECT_BLOCKS = True
BLOCKS_MAX_BATCH = 2  # PROJECT_BLOCKS and hand_over_projection up to this batch (per_image's group copies run 2)
STRIDED_POINTWISE = True  # strided_pointwise_step on (False: a strided 1x1 convolution takes conv's im2col + GEMM)
CONVT = True  # convt_step on (False: those convolutions take conv's im2col + GEMM)
CONVT_MAX_CHANNELS = 4  # convt_step: input channels at most (an image's: 3, 1 grey, 4 with alpha)
PROJECTION_BLOCKS = True  # hand_over_projection on (False: a 1x1 step before a fused expand writes planes)
FUSE_POOL = True  # fuse_global_pool on (False: the global average pooling runs as its own step)
AHEAD = True  # prefetch_ahead on (False: a 1x1 step prefetches its own next panel's weights only)
BLOCKS_MAX_BYTES = 8 << 20  # a handoff's blocks at most (EfficientNet-Lite0: 5 MB an image at the most)


def _zero_border(w: np.ndarray) -> bool:
    return not (w[:, :, 0, :].any() or w[:, :, :, 0].any())


def _plain_conv(layer: Layer, bottom: list[Blob]) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, w) of a Convolution the plan's own steps may take, one group at dilation 1 on one 4-D input, its input,
    weights and bias plain arrays, or None."""
    if layer.type != "Convolution" or len(bottom) != 1 or layer.group != 1 or tuple(layer.dilation) != (1, 1):
        return None
    x = bottom[0].data
    w, b = layer.forward_params()
    if x.ndim != 4 or not (plain(x, x.shape) and plain(w, w.shape) and (b is None or plain(b, w.shape[:1]))):
        return None
    return x, w


def _conv_step(layer: Layer, bottom: list[Blob], top: list[Blob], run, out_shape: tuple):
    """The layer's plan step (``ConvolutionLayer.plan_step``) calling run(x, w, b, out), out of out_shape, with no
    `runner` attribute (the plan's passes, hand_over_*, must leave these steps alone), named after the maker of its
    `run` (profiles, tests: zero_border_step...)."""
    step = layer.plan_step(bottom, top, run, out_shape, runner=False)
    step.__qualname__ = run.__qualname__
    return step


def zero_border_step(layer: Layer, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
    """The step for a zero-bordered Convolution (see the module docstring), or None when the layer is not one."""
    arrays = _plain_conv(layer, bottom)
    if arrays is None:
        return None
    (ph, pw), (kh, kw) = layer.pad, layer.kernel
    if min(ph, pw) < 1 or min(kh, kw) < 2:
        return None
    x, w = arrays
    x_shape, w_shape = x.shape, w.shape
    if not _zero_border(w) or not w.any():  # all zeros (a net loaded without weights): no border to strip
        return None
    capped = {"relu_max": layer.relu_max} if layer.relu_max != math.inf else {}
    pad = PadInto(x_shape, (ph - 1, pw - 1), (ph, pw))
    small_shape = (w_shape[0], w_shape[1], kh - 1, kw - 1)
    if pointwise.im2col_applies(pad.buf.shape, small_shape, layer.stride, (0, 0), (1, 1), 1):
        act = (0.0, layer.relu_max) if layer.fused_relu else None
        small = pointwise.Im2colRunner(pad.buf.shape, small_shape, layer.stride, (1, 1), act)
    else:
        small = conv.ForwardRunner(
            pad.buf.shape, small_shape, layer.stride, (0, 0), (1, 1), 1, layer.fused_relu, **capped
        )
    full = conv.ForwardRunner(x_shape, w_shape, layer.stride, layer.pad, (1, 1), 1, layer.fused_relu, **capped)
    if small.out_shape != full.out_shape:  # pragma: no cover - the geometry above says they are equal
        return None

    def run(x, w, b, out) -> None:
        if _zero_border(w):
            inner = small_w[1] if small_w[0] is w else None  # the kernel without its zero row and column
            if inner is None:
                inner = np.ascontiguousarray(w[:, :, 1:, 1:])
                if frozen:  # frozen weights never change in place: made once per array
                    small_w[:] = w, inner
            step.runner(pad(x), inner, b, out)
        else:
            full(x, w, b, out)

    step = _conv_step(layer, bottom, top, run, full.out_shape)
    frozen = layer.frozen
    small_w = [None, None]  # (w, w without its zero border) of frozen weights
    step.replay = frozen  # net.replay: the border is checked every call unless the weights never change
    step.runner = small  # hand_over_expand may put a pointwise_t.ConvTRunner here
    step.pad = pad  # its first call copies x into pad's buffer (net.per_image feeds that buffer itself)
    step.conv_geometry = (pad.buf.shape, small_shape, tuple(layer.stride))  # the small convolution's (pad 0)
    return step


class Subsamples:
    """One plan's subsample buffers for strided_pointwise_step, one per (input, stride): ResNet's projection and the
    first 1x1 of its stage read one blob at stride 2 (through a Split: `note` follows the layers whose tops only alias
    their bottom) and share one buffer (each step still subsamples its input when it runs: the same values)."""

    def __init__(self) -> None:
        self._root: dict[int, int] = {}
        self._bufs: dict[tuple, Subsample] = {}

    def note(self, layer: Layer, bottom: list[Blob], top: list[Blob]) -> None:
        """Called for every layer in order: the tops of a Split (Flatten, Reshape) stand for its bottom."""
        if getattr(layer, "aliases", False) and bottom:
            root = self._root.get(id(bottom[0]), id(bottom[0]))
            for t in top:
                self._root[id(t)] = root

    def get(self, src: Blob, x_shape: tuple, stride: tuple) -> Subsample:
        key = (self._root.get(id(src), id(src)), tuple(x_shape), tuple(stride))
        sub = self._bufs.get(key)
        if sub is None:
            sub = self._bufs[key] = Subsample(x_shape, stride)
        return sub


def strided_pointwise_step(
    layer: Layer, bottom: list[Blob], top: list[Blob], subs: Subsamples | None = None
) -> Callable[[], bool] | None:
    """The step for a 1x1 Convolution with pad 0 at a stride above 1 (see the module docstring), or None when the
    layer is not one or the 1x1 convolution of its subsampled input is not one `kernels.pointwise` runs. `subs`: the
    plan's buffers (shared between the layers that subsample one input alike)."""
    arrays = _plain_conv(layer, bottom) if STRIDED_POINTWISE else None
    if arrays is None or tuple(layer.kernel) != (1, 1) or tuple(layer.pad) != (0, 0):
        return None
    if tuple(layer.stride) == (1, 1):
        return None
    x, w = arrays
    if not pointwise.pointwise_applies(subsample_shape(x.shape, layer.stride), w.shape, (1, 1), (0, 0), (1, 1), 1):
        return None
    src = bottom[0]
    sub = subs.get(src, x.shape, layer.stride) if subs is not None else Subsample(x.shape, layer.stride)
    pw_run = pointwise_runner(layer, sub.buf.shape, w.shape, layer.act())

    def run(x, w, b, out) -> None:
        pw_run(sub(x), w, b, out)

    return _conv_step(layer, bottom, top, run, pw_run.out_shape)  # not to be taken by the passes for a 1x1 on x


def convt_step(layer: Layer, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
    """The step for a Convolution on an image's few channels (see the module docstring), or None when the layer is
    not one or `kernels.pointwise_t.ConvTRunner` does not take it (AVX-512, M a multiple of 32, OW at least 14).
    The bias is read in place every call (ConvTRunner keeps the array itself: M % 32 == 0 needs no padded copy), so
    only the weights are compared."""
    arrays = _plain_conv(layer, bottom) if CONVT else None
    if arrays is None:
        return None
    x, w = arrays
    if w.shape[1] > CONVT_MAX_CHANNELS or w.shape[2] * w.shape[3] == 1:
        return None
    (ph, pw), stride = layer.pad, tuple(layer.stride)
    pad = PadInto(x.shape, (ph, pw), (ph, pw)) if ph or pw else None
    padded = pad.buf.shape if pad is not None else x.shape
    if not pointwise_t.conv_applies(padded, w.shape, stride):
        return None
    convt = pointwise_t.ConvTRunner(padded, w.shape, stride, layer.act())
    frozen = layer.frozen  # folded weights are made once, a frozen net's never change in place
    seen = [None, None]  # the weight array last packed and, unless frozen, a copy of its values then

    def current(w) -> bool:  # are the packed weights those of w as it is now (a solver updates weights in place)
        return w is seen[0] and (frozen or np.array_equal(w, seen[1]))

    def run(x, w, b, out) -> None:
        if not current(w):
            convt.packed = None
            seen[:] = w, None if frozen else w.copy()
        convt(pad(x) if pad is not None else x, w, b, out)

    step = _conv_step(layer, bottom, top, run, convt.out_shape)
    if not frozen:  # net.replay: weights that may change are compared every call, which a replay asks first
        step.replay_check = lambda: current(layer.forward_params()[0])
    return step


def _sum_of_two(layer: Layer, bottom: list[Blob], top: list[Blob]) -> bool:
    """An Eltwise SUM of two bottoms with coefficients 1 (or none) into a top of its own."""
    return (
        layer.type == "Eltwise"
        and layer.op == "SUM"
        and len(bottom) == 2
        and (layer.coeffs is None or all(c == 1.0 for c in layer.coeffs))
        and top[0] not in bottom
    )


def _relu_on(entry: tuple, blob: Blob) -> bool:
    """Is the plan entry a ReLU (negative slope 0, not fused elsewhere) in place on `blob`?"""
    _, layer, bottom, top = entry
    return (
        layer.type == "ReLU"
        and not layer.fused
        and float(layer.param.relu_param.negative_slope) == 0.0
        and len(bottom) == 1
        and len(top) == 1
        and bottom[0] is blob
        and top[0] is blob
    )


def fuse_residual_sums(steps: list[tuple]) -> list[tuple]:
    """A 1x1 Convolution (`kernels.pointwise`) whose top the next step, an Eltwise SUM of two with coefficients 1, adds
    to another blob: the convolution's step also writes the sum (each row tile's outputs plus the other bottom while
    they are in L1, `PointwiseRunner(..., res, z)`), and the Eltwise's step then has nothing left to do. Both blobs
    hold what they held before, to the bit (SUM is one float32 addition per element, 1 * a + 1 * b). An in-place
    ReLU (slope 0) on the sum right after it (ResNet's blocks) goes into the same call (``relu=True``: z = max(y +
    r, 0) as the sums are written, compare and select like a convolution's fused ReLU: the same values as the
    ReLU layer's, but -inf gives 0 where the layer gives NaN, and a sum of -0.0 keeps its sign), its step then
    nothing left to do either: ResNet-50 at batch 1 no longer reads and writes its 16 residual sums a second time.
    When the fused step cannot run (an array changed under the plan) the layers run as without it."""
    out = list(steps)
    for i in range(len(out) - 1):
        (step, conv_layer, conv_bottom, conv_top), (elt_step, elt_layer, elt_bottom, elt_top) = out[i], out[i + 1]
        if step is None or conv_layer.type != "Convolution" or not _sum_of_two(elt_layer, elt_bottom, elt_top):
            continue
        if len(conv_bottom) != 1 or conv_top[0] not in elt_bottom:
            continue
        relu = out[i + 2] if i + 2 < len(out) and _relu_on(out[i + 2], elt_top[0]) else None
        pair = _residual_pair(conv_layer, conv_bottom, conv_top, elt_step, elt_layer, elt_bottom, elt_top, relu)
        if pair is not None:
            out[i] = (pair[0], conv_layer, conv_bottom, conv_top)
            out[i + 1] = (pair[1], elt_layer, elt_bottom, elt_top)
            if relu is not None:
                out[i + 2] = (pair[2], *relu[1:])
    return out


def _residual_pair(conv_layer, conv_bottom, conv_top, elt_step, elt_layer, elt_bottom, elt_top, relu=None):
    """(the fused convolution step, the Eltwise step that follows it, the ReLU step after that or None), or None
    where the convolution is not one `kernels.pointwise` runs. `relu`: the plan entry of the in-place ReLU on the sum
    to fuse as well, or None."""
    src, dst, sum_dst = conv_bottom[0], conv_top[0], elt_top[0]
    skip = elt_bottom[1] if elt_bottom[0] is dst else elt_bottom[0]
    x, r = src.data, skip.data
    w, b = conv_layer.forward_params()
    x_shape, w_shape, b_shape = x.shape, w.shape, w.shape[:1]
    if not (plain(x, x_shape) and plain(w, w_shape) and (b is None or plain(b, b_shape))):
        return None
    if not pointwise.pointwise_applies(
        x_shape, w_shape, conv_layer.stride, conv_layer.pad, conv_layer.dilation, conv_layer.group
    ):
        return None
    run = pointwise_runner(conv_layer, x_shape, w_shape, conv_layer.act())
    shape = run.out_shape
    if not plain(r, shape):
        return None
    y = plan_out(dst, x, shape)
    z = plan_out(sum_dst, y, shape)
    if any(np.may_share_memory(z, a) for a in (x, y, r)) or np.may_share_memory(y, r):
        return None
    zeros = np.zeros(b_shape, np.float32)
    done = [False, False]  # the sum, the ReLU: written by the fused call and not yet passed by their steps
    fused_relu = relu is not None
    checked = [None, None, None, None]  # the (x, w, b, r) arrays last checked: the same objects need no new check

    def step() -> bool:  # the parameters are looked up each call (Net.share_weights_from swaps the Blobs)
        done[0] = done[1] = False  # (a forward that raised after the last fused call left them set)
        w, b = conv_layer.forward_params()
        x, r = src.data, skip.data
        if b is None:
            b = zeros
        if dst.data is not y or sum_dst.data is not z:
            return False  # the Net runs the convolution's forward; the Eltwise step below then runs as usual
        if x is not checked[0] or w is not checked[1] or b is not checked[2] or r is not checked[3]:
            if not (plain(x, x_shape) and plain(w, w_shape) and plain(b, b_shape) and plain(r, shape)) or (
                np.may_share_memory(r, z) or np.may_share_memory(r, y)
            ):
                return False
            checked[:] = x, w, b, r
        step.runner(x, w, b, y, r, z, relu=fused_relu, sum_only=step.sum_only)
        done[0] = done[1] = True
        return True

    step.runner = run  # for the plan's passes, which may put another runner of the same shapes in its place
    step.sum_only = False  # y left unwritten where no step reads it (sums_only)

    def sum_step() -> bool:  # sum_step.done_by: nothing to do after that step (net.replay leaves it out)
        if done[0]:
            done[0] = False
            elt_layer.xs, elt_layer.mask = [bb.data for bb in elt_bottom], None  # as its forward keeps them
            return True
        return elt_step() if elt_step is not None else False

    sum_step.done_by = step
    if relu is None:
        return step, sum_step, None
    relu_own, relu_layer, relu_bottom, relu_top = relu

    def relu_step() -> bool:  # relu_step.done_by: nothing to do after the sum's (net.replay leaves both out)
        if done[1]:  # the fused call wrote it
            done[1] = False
            return True
        if relu_own is not None:  # the sum ran as the Eltwise's own: the ReLU's own step or forward
            return relu_own()
        relu_layer.forward(relu_bottom, relu_top)
        return True

    relu_step.done_by = sum_step
    return step, sum_step, relu_step


def sums_only(steps: list[tuple], keep: set[int]) -> list[tuple]:
    """A fused residual sum's convolution output (fuse_residual_sums) that only the sum reads and nobody after a
    forward (`keep`: ids of the blobs someone may read then, ``Net.share_activations``) is not written at all: the
    step writes the sum alone (``pointwise_t``'s tiles skip y's masked stores; ``pointwise``'s sum from y's rows in
    L1 and write it as before). EfficientNet-Lite0's ten residual projections each wrote an output nobody read."""
    readers = _readers(steps)
    for step, _, _, top in steps:
        inner = step
        while inner is not None and not hasattr(inner, "sum_only"):
            inner = getattr(inner, "inner", None)
        if inner is not None and id(top[0]) not in keep and readers.get(id(top[0])) == 1:
            inner.sum_only = True
    return steps


def _adjacent(out: list[tuple]):
    """(i, out[i], out[i + 1]) for each pair of adjacent plan entries, read as the loop reaches them (a pass may
    replace the pair it is at)."""
    for i in range(len(out) - 1):
        yield i, out[i], out[i + 1]


def _readers(steps: list[tuple]) -> dict[int, int]:
    """{id(blob): how many of the steps read it}."""
    readers: dict[int, int] = {}
    for _, _, bottom, _ in steps:
        for b in bottom:
            readers[id(b)] = readers.get(id(b), 0) + 1
    return readers


def hand_over_depthwise(steps: list[tuple], keep: set[int]) -> list[tuple]:
    """See the module docstring. `keep`: ids of the blobs someone may read after a forward. Returns the steps, the
    1x1 ones that take a handoff wrapped: when such a step cannot run (an array changed under the plan) while the
    depthwise output is still interleaved, the blob is put back in planes before the layer's own forward reads it.
    Runs after `hand_over_expand`, so a 1x1 step between two depthwise ones (MobileNet v1) takes both handoffs."""
    readers = _readers(steps)
    out = list(steps)
    for i in range(len(out) - 1):
        (dw_step, _, _, dw_top), (pw_step, pw_layer, pw_bottom, pw_top) = out[i], out[i + 1]
        dw_run, pw_run = getattr(dw_step, "runner", None), getattr(pw_step, "runner", None)
        if not isinstance(dw_run, depthwise.DepthwiseRunner):
            continue
        blob = dw_top[0]
        if len(dw_top) != 1 or len(pw_bottom) != 1 or pw_bottom[0] is not blob or readers.get(id(blob)) != 1:
            continue
        if id(blob) in keep or not dw_run.c8 or dw_run.out_shape[1] % depthwise.LANES:
            continue
        if isinstance(pw_run, pointwise.PointwiseRunner):
            pw_run = _projection_on_blocks(pw_step, pw_layer, dw_run.out_shape)
        if not isinstance(pw_run, pointwise_t.PointwiseTRunner):
            continue
        handoff = depthwise.Handoff()
        dw_run.handoff = pw_run.handoff = handoff
        out[i + 1] = (_after_refusal(pw_step, _interleaved_back(blob, handoff)), pw_layer, pw_bottom, pw_top)
    return out


def _projection_on_blocks(pw_step, pw_layer, x_shape) -> pointwise_t.PointwiseTRunner | None:
    """A `kernels.pointwise_t` runner put in a 1x1 step in place of its `kernels.pointwise` one, to read the blocks of
    the depthwise step before (PROJECT_BLOCKS, batch BLOCKS_MAX_BATCH at most, folded weights), or None."""
    if not PROJECT_BLOCKS or not pw_layer.frozen or x_shape[0] > BLOCKS_MAX_BATCH:
        return None
    w_shape = pw_layer.forward_params()[0].shape
    if not pointwise_t.applies(x_shape, w_shape, xblk=True):
        return None
    run = pw_step.runner = pointwise_t.PointwiseTRunner(x_shape, w_shape, pw_layer.act(), xblk=True)
    return run


def fuse_expand_depthwise(steps: list[tuple], keep: set[int]) -> list[tuple]:
    """See the module docstring. `keep`: ids of the blobs someone may read after a forward. Returns the steps, each
    fused pair's 1x1 step replaced by the fused one and its depthwise step by one that has nothing left to do after
    it (``done_by``), or runs the depthwise layer's step when the fused one could not run."""
    out = list(steps)
    if not FUSE_EXPAND:
        return out
    readers = _readers(steps)
    for i, (pw_step, pw_layer, pw_bottom, pw_top), (dw_step, dw_layer, dw_bottom, dw_top) in _adjacent(out):
        pw_run, dw_run = getattr(pw_step, "runner", None), getattr(dw_step, "runner", None)
        if not isinstance(pw_run, (pointwise.PointwiseRunner, pointwise_t.PointwiseTRunner)):
            continue
        if not isinstance(dw_run, depthwise.DepthwiseRunner) or not dw_run.frozen or not pw_layer.frozen:
            continue
        blob = pw_top[0]
        if len(pw_top) != 1 or len(dw_bottom) != 1 or dw_bottom[0] is not blob or readers.get(id(blob)) != 1:
            continue
        if id(blob) in keep or len(pw_bottom) != 1 or len(dw_top) != 1:
            continue
        x, y = pw_bottom[0].data, dw_top[0].data
        w_shape = pw_layer.forward_params()[0].shape
        c8 = dw_run if dw_run.c8 else dw_layer.depthwise_runner(blob.data.shape, c8=True)
        if not mbconv.applies(x.shape, w_shape, c8) or not plain(y, c8.out_shape) or np.may_share_memory(x, y):
            continue
        dw_step.runner = c8  # the depthwise's handoff (hand_over_depthwise) is set on the runner both steps use
        fused = _fused_expand(pw_layer, pw_bottom[0], dw_layer, dw_top[0], dw_step,
                              mbconv.ExpandDepthwiseRunner(x.shape, w_shape, pw_layer.act(), c8))  # fmt: skip
        out[i], out[i + 1] = (fused[0], pw_layer, pw_bottom, pw_top), (fused[1], dw_layer, dw_bottom, dw_top)
    return out


def _fused_expand(pw_layer, src: Blob, dw_layer, dst: Blob, dw_step, run):
    """(the fused step, the depthwise's step after it) of `fuse_expand_depthwise`."""
    y = dst.data
    shapes = (src.data.shape, pw_layer.forward_params()[0].shape, dw_layer.forward_params()[0].shape)
    zeros1 = np.zeros(shapes[1][0], np.float32)
    zeros2 = np.zeros(shapes[2][0], np.float32)
    done = [False]
    checked = [None] * 5  # the (x, w1, b1, w2, b2) arrays last checked: the same objects need no new check

    def step() -> bool:
        done[0] = False
        w1, b1, w2, b2 = _pair_params(pw_layer, zeros1, dw_layer, zeros2)
        x = src.data
        if dst.data is not y:
            return False
        now = (x, w1, b1, w2, b2)
        if any(a is not b for a, b in zip(now, checked)):
            if not (plain(x, shapes[0]) and _plain_params(now[1:], shapes[1:]) and not np.may_share_memory(x, y)):
                return False
            checked[:] = now
        run(x, w1, b1, w2, b2, y)
        done[0] = True
        return True

    step.runner = run
    return step, _done_by(step, done, dw_step)


def _pair_params(layer1, zeros1: np.ndarray, dw_layer, zeros2: np.ndarray) -> tuple:
    """(w1, b1, w2, b2) of a fused pair's two layers now, a missing bias as zeros: looked up on every call
    (Net.share_weights_from swaps the Blobs)."""
    w1, b1 = layer1.forward_params()
    w2, b2 = dw_layer.forward_params()
    return w1, zeros1 if b1 is None else b1, w2, zeros2 if b2 is None else b2


def _plain_params(params: tuple, shapes: tuple) -> bool:
    """Are a fused pair's (w1, b1, w2, b2) plain arrays of the weight shapes (w1's, w2's) and their biases'?"""
    w1, b1, w2, b2 = params
    return plain(w1, shapes[0]) and plain(b1, shapes[0][:1]) and plain(w2, shapes[1]) and plain(b2, shapes[1][:1])


def _done_by(step, done: list[bool], dw_step):
    """The depthwise's step after a fused `step` that sets done[0] when it ran: nothing to do then (``done_by``:
    net.replay leaves it out), else the depthwise's own step."""

    def dw_done() -> bool:
        if done[0]:
            done[0] = False
            return True
        return dw_step()

    dw_done.done_by = step
    dw_done.runner = dw_step.runner
    return dw_done


def fuse_conv_depthwise(steps: list[tuple], keep: set[int]) -> list[tuple]:
    """See the module docstring. `keep`: ids of the blobs someone may read after a forward. Returns the steps, a fused
    pair's zero-bordered convolution step (`zero_border_step`: its padding's geometry is the fused step's zero border)
    replaced by the fused one and its depthwise step by one that has nothing left to do after it (``done_by``), or runs
    the depthwise layer's step when the fused one could not run."""
    out = list(steps)
    if not FUSE_STEM:
        return out
    readers = _readers(steps)
    for i, (cv_step, cv_layer, cv_bottom, cv_top), (dw_step, dw_layer, dw_bottom, dw_top) in _adjacent(out):
        geometry, pad = getattr(cv_step, "conv_geometry", None), getattr(cv_step, "pad", None)
        dw_run = getattr(dw_step, "runner", None)
        if geometry is None or pad is None or not cv_layer.frozen:
            continue
        if not isinstance(dw_run, depthwise.DepthwiseRunner) or not dw_run.frozen:
            continue
        blob = cv_top[0]
        if len(cv_top) != 1 or len(dw_bottom) != 1 or dw_bottom[0] is not blob or readers.get(id(blob)) != 1:
            continue
        if id(blob) in keep or len(cv_bottom) != 1 or len(dw_top) != 1:
            continue
        y = dw_top[0].data
        c8 = dw_run if dw_run.c8 else dw_layer.depthwise_runner(blob.data.shape, c8=True)
        (_, _, hp, wp), w_shape, stride = geometry
        border = (pad.top, pad.left, hp - pad.x_shape[2] - pad.top, wp - pad.x_shape[3] - pad.left)
        if not mbconv.conv_applies(pad.x_shape, w_shape, stride, c8, border) or not plain(y, c8.out_shape):
            continue
        dw_step.runner = c8  # the depthwise's handoff (hand_over_depthwise) is set on the runner both steps use
        run = mbconv.ConvDepthwiseRunner(pad.x_shape, w_shape, stride, cv_layer.act(), c8, border)
        fused = _fused_conv(cv_layer, cv_bottom[0], dw_layer, dw_top[0], dw_step, run)
        out[i], out[i + 1] = (fused[0], cv_layer, cv_bottom, cv_top), (fused[1], dw_layer, dw_bottom, dw_top)
    return out


def _fused_conv(cv_layer, src: Blob, dw_layer, dst: Blob, dw_step, run):
    """(the fused step, the depthwise's step after it) of `fuse_conv_depthwise`: the convolution without its zero row
    and column, on the image with its zero border (each band padded in its task's buffer), and the depthwise in one
    pass."""
    y = dst.data
    shapes = (cv_layer.forward_params()[0].shape, dw_layer.forward_params()[0].shape)
    zeros1 = np.zeros(shapes[0][0], np.float32)
    zeros2 = np.zeros(shapes[1][0], np.float32)
    done = [False]
    checked = [None] * 5  # the (x, w1, b1, w2, b2) arrays last checked: the same objects need no new check
    inner = [None]  # w1 without its zero row and column (the weights are frozen: cut once per array)

    def step() -> bool:
        done[0] = False
        w1, b1, w2, b2 = _pair_params(cv_layer, zeros1, dw_layer, zeros2)
        x = src.data
        if dst.data is not y:
            return False
        now = (x, w1, b1, w2, b2)
        if any(a is not b for a, b in zip(now, checked)):
            if not (
                plain(x, run.x_shape) and _plain_params(now[1:], shapes) and _zero_border(w1)
                and not np.may_share_memory(x, y)
            ):  # fmt: skip
                return False
            if w1 is not checked[1]:
                inner[0] = np.ascontiguousarray(w1[:, :, 1:, 1:])
            checked[:] = now
        run(x, inner[0], b1, w2, b2, y)
        done[0] = True
        return True

    step.runner = run
    return step, _done_by(step, done, dw_step)


def hand_over_expand(steps: list[tuple], keep: set[int]) -> list[tuple]:
    """See the module docstring. `keep`: ids of the blobs someone may read after a forward. Returns the steps, the
    1x1 ones that hand over replaced (a zero-bordered convolution's step keeps its padding and takes a
    `pointwise_t.ConvTRunner`), the depthwise ones after them wrapped (and on their channel-block path: handed their
    input in blocks, they have no fill to pay at any plane size): when such a step cannot run (an array changed under
    the plan) while its input is still in blocks, the blob gets its planes before the layer's own forward reads it."""
    out = list(steps)
    if not EXPAND_BLOCKS:
        return out
    readers = _readers(steps)
    pairs = []
    for i in range(len(out) - 1):
        (pw_step, pw_layer, pw_bottom, pw_top), (dw_step, dw_layer, dw_bottom, _) = out[i], out[i + 1]
        pw_run, dw_run = getattr(pw_step, "runner", None), getattr(dw_step, "runner", None)
        conv = getattr(pw_step, "conv_geometry", None) if isinstance(pw_run, pointwise.Im2colRunner) else None
        if conv is not None and not STEM_BLOCKS:
            continue
        if conv is None and not isinstance(pw_run, (pointwise.PointwiseRunner, pointwise_t.PointwiseTRunner)):
            continue
        if not isinstance(dw_run, depthwise.DepthwiseRunner) or not dw_run.frozen:
            continue
        blob = pw_top[0]
        if len(pw_top) != 1 or len(dw_bottom) != 1 or dw_bottom[0] is not blob or readers.get(id(blob)) != 1:
            continue
        if id(blob) in keep or not pw_layer.frozen or len(pw_bottom) != 1:
            continue
        w_shape = pw_layer.forward_params()[0].shape
        if conv is not None:
            fits = pointwise_t.conv_applies(*conv)
        else:
            fits = pointwise_t.applies(pw_bottom[0].data.shape, w_shape, blocks=True)
        if fits and not dw_run.c8:  # handed its input in blocks, no fill to pay at any plane size
            dw_run = dw_layer.depthwise_runner(blob.data.shape, c8=True)
        size = depthwise.PaddedInput.size(dw_run)
        if fits and 4 * size <= BLOCKS_MAX_BYTES:
            pairs.append((i, conv, w_shape, size, dw_run))
    if not pairs:
        return out
    size = max(p[3] for p in pairs)
    raw = np.empty(size + 16, np.float32)
    shared = raw[(-raw.ctypes.data // 4) % 16 :][:size]  # one buffer, 64-byte aligned: each handoff is read right
    # after it is written
    for i, conv, w_shape, _, dw_run in pairs:
        (pw_step, pw_layer, pw_bottom, pw_top), (dw_step, dw_layer, dw_bottom, dw_top) = out[i], out[i + 1]
        dw_step.runner = dw_run  # the same runner, or one on the channel-block path
        blocks = dw_run.padded_in = depthwise.PaddedInput(dw_run, shared)
        if conv is not None:  # the zero-bordered step keeps its padding; its convolution writes the blocks
            pw_step.runner = pointwise_t.ConvTRunner(*conv, pw_layer.act(), blocks)
        else:
            run = pointwise_t.PointwiseTRunner(pw_bottom[0].data.shape, w_shape, pw_layer.act(), blocks)
            out[i] = (pw_layer.plan_step(pw_bottom, pw_top, run), pw_layer, pw_bottom, pw_top)
        out[i + 1] = (_after_refusal(dw_step, _blocks_back(pw_top[0], blocks)), dw_layer, dw_bottom, dw_top)
    return out


def hand_over_projection(steps: list[tuple], keep: set[int]) -> list[tuple]:
    """A folded 1x1 Convolution at batch 1 or 2 (BLOCKS_MAX_BATCH) whose output only the next step reads, a fused
    expand + depthwise step (`fuse_expand_depthwise`; an inverted-residual block's projection into the next block's
    expand, without a residual sum between them: EfficientNet-Lite0's block 0 -> 1), writes that output in blocks of
    16 channels interleaved per pixel (`kernels.depthwise.PaddedInput.unpadded`, on `kernels.pointwise_t`: one
    aligned store per pixel and block, no 8 x 8 transposes), and the expand's tiles read them so
    (``ExpandDepthwiseRunner.x_blocks``: 16 channels of a pixel on one line). The same FMA chains, the same bits.
    Only where nothing reads the blob after a forward (`keep`); when the fused step cannot run (an array changed
    under the plan) the blob gets its planes back before the expand layer's own forward reads it. Runs before
    `hand_over_depthwise`, which then hands the projection its input from the depthwise before it as before."""
    out = list(steps)
    if not PROJECTION_BLOCKS:
        return out
    readers = _readers(steps)
    # a step on kernels.pointwise moves to pointwise_t as PROJECT_BLOCKS moves projections at batch 1 and 2
    movable = (
        (pointwise.PointwiseRunner, pointwise_t.PointwiseTRunner) if PROJECT_BLOCKS else pointwise_t.PointwiseTRunner
    )
    for i, (pw_step, pw_layer, pw_bottom, pw_top), (ed_step, ed_layer, ed_bottom, ed_top) in _adjacent(out):
        pw_run, ed_run = getattr(pw_step, "runner", None), getattr(ed_step, "runner", None)
        if not isinstance(ed_run, mbconv.ExpandDepthwiseRunner) or ed_run.x_blocks is not None:
            continue
        if not isinstance(pw_run, movable):
            continue
        if getattr(pw_run, "blocks", None) is not None or not pw_layer.frozen:
            continue
        blob = pw_top[0]
        if len(pw_bottom) != 1 or len(pw_top) != 1 or len(ed_bottom) != 1 or ed_bottom[0] is not blob:
            continue
        x_shape, w_shape = pw_bottom[0].data.shape, pw_layer.forward_params()[0].shape
        if (
            id(blob) in keep
            or readers.get(id(blob)) != 1
            or x_shape[0] > BLOCKS_MAX_BATCH
            or w_shape[0] % depthwise.LANES
        ):
            continue
        if not pointwise_t.applies(x_shape, w_shape, blocks=True):
            continue
        shape = (x_shape[0], w_shape[0], *x_shape[2:])
        size = int(np.prod(shape))
        raw = np.empty(size + 16, np.float32)
        blocks = depthwise.PaddedInput.unpadded(shape, raw[(-raw.ctypes.data // 4) % 16 :][:size])
        run = pointwise_t.PointwiseTRunner(x_shape, w_shape, pw_layer.act(), blocks)
        ed_run.x_blocks = blocks
        out[i] = (pw_layer.plan_step(pw_bottom, pw_top, run), pw_layer, pw_bottom, pw_top)
        out[i + 1] = (_after_refusal(ed_step, _blocks_back(blob, blocks)), ed_layer, ed_bottom, ed_top)
    return out


def fuse_global_pool(steps: list[tuple], keep: set[int]) -> list[tuple]:
    """See the module docstring. `keep`: ids of the blobs someone may read after a forward."""
    if not FUSE_POOL:
        return steps
    readers = _readers(steps)
    out = list(steps)
    for i, (conv_step, conv_layer, conv_bottom, conv_top), (pool_step, pool_layer, pool_bottom, pool_top) in _adjacent(
        out
    ):
        run = getattr(conv_step, "runner", None)
        if conv_layer.type != "Convolution" or not isinstance(run, pointwise_t.PointwiseTRunner):
            continue
        if pool_step is None or pool_layer.type != "Pooling" or pool_layer.method != "AVE":
            continue
        blob = conv_top[0]
        if len(conv_top) != 1 or len(pool_bottom) != 1 or pool_bottom[0] is not blob or len(pool_top) != 1:
            continue
        n, m, h, w = run.out_shape
        pooled = pool_top[0].data
        if tuple(pool_layer.kernel) != (h, w) or tuple(pool_layer.pad) != (0, 0) or not run.pool_applies():
            continue
        if not plain(pooled, (n, m, 1, 1)) or np.may_share_memory(pooled, blob.data):
            continue
        run.pool_into(pooled, pool_only=id(blob) not in keep and readers.get(id(blob)) == 1)
        step, pool_done = _pooled_pair(conv_step, pool_step, pool_layer, pool_bottom, pool_top, pooled)
        out[i], out[i + 1] = (step, conv_layer, conv_bottom, conv_top), (pool_done, pool_layer, pool_bottom, pool_top)
    return out


def _pooled_pair(conv_step, pool_step, pool_layer, pool_bottom, pool_top, pooled):
    """(the 1x1 step that also pools, the pooling's step after it: nothing to do when the 1x1's call pooled)."""
    done = [False]

    def step() -> bool:
        done[0] = False
        if pool_top[0].data is not pooled:  # the Net runs the convolution's own forward, the pooling step its own;
            inner = conv_step  # first what a refusal of the convolution's step puts back (_after_refusal: a
            while inner is not None:  # handoff's interleaved input back in planes)
                restore = getattr(inner, "restore", None)
                if restore is not None:
                    restore()
                inner = getattr(inner, "inner", None)
            return False
        done[0] = conv_step()
        return done[0]

    step.runner = conv_step.runner
    step.inner = conv_step

    def pool_done() -> bool:  # pool_done.done_by: nothing to do after that step (net.replay leaves it out)
        if done[0]:
            done[0] = False
            return True
        if pool_step is not None and pool_step():
            return True
        pool_layer.forward(pool_bottom, pool_top)
        return True

    pool_done.done_by = step
    return step, pool_done


def _after_refusal(step, restore):
    """The step, and when it cannot run, `restore()` before the Net runs the layer's own forward."""

    def wrapped() -> bool:
        if step():
            return True
        restore()
        return False

    wrapped.runner = step.runner
    wrapped.inner = step  # what net.replay compares a fused sum's `done_by` with
    wrapped.restore = restore  # for a wrapper of this step that refuses before calling it (_pooled_pair)
    return wrapped


def _blocks_back(blob, blocks):
    def restore() -> None:
        if blocks.ready:  # the 1x1 step wrote blocks; the depthwise layer's own forward reads planes
            blocks.planes(blob.data)

    return restore


def _interleaved_back(blob, handoff):
    def restore() -> None:
        lanes = handoff.interleaved
        if lanes:  # the depthwise wrote blocks; the 1x1's own forward reads planes
            x = blob.data
            n, c = x.shape[:2]
            blocks = x.reshape(n, c // lanes, -1, lanes).copy()
            x.reshape(n, c // lanes, lanes, -1)[...] = blocks.transpose(0, 1, 3, 2)
            handoff.interleaved = 0

    return restore


def _weights_read(step, layer: Layer):
    """A zero-argument callable giving the weights array `step`'s kernel reads first and at length (None until it
    has packed them), or None: a fused expand + depthwise's packed expand, a 1x1's packed panels, an InnerProduct's
    W (looked up each time: Net.share_weights_from swaps the Blobs)."""
    run = getattr(step, "runner", None)
    if isinstance(run, (mbconv.ExpandDepthwiseRunner, pointwise_t.PointwiseTRunner)):
        return lambda: run.packed[1] if run.packed is not None else None
    if layer.type == "InnerProduct" and not layer.transpose and layer.blobs:
        return lambda: layer.blobs[0].data
    return None


def prefetch_ahead(steps: list[tuple]) -> list[tuple]:
    """See the module docstring: each ``pointwise_t`` 1x1 step's tiles, and each fused expand + depthwise step's
    expand tiles, prefetch the weights of the next step that has any (past the steps whose work this one does), where
    that step's kernel reads them whole (`_weights_read`)."""
    if not AHEAD:
        return steps
    for i, (step, _, _, _) in enumerate(steps):
        run = getattr(step, "runner", None)
        if not isinstance(run, (pointwise_t.PointwiseTRunner, mbconv.ExpandDepthwiseRunner)):
            continue
        own = []  # this step and the steps it wraps (_after_refusal's `inner`)
        inner = step
        while inner is not None:
            own.append(inner)
            inner = getattr(inner, "inner", None)
        for later, layer, _, _ in steps[i + 1 :]:
            if any(getattr(later, "done_by", None) is s for s in own):  # its work done by this step: a fused
                continue  # expand's depthwise
            if layer.blobs or getattr(later, "runner", None) is not None:
                run.ahead = _weights_read(later, layer)
                break
    return steps
