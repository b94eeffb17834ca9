"""A batch run image by image: each thread its share of the images on a batch-1 copy of the net (its own plan and
replay, one thread), the outputs gathered into the batch's.

A batched plan runs every layer over the whole batch before the next: at batch 32 each EfficientNet-Lite0 activation
is 32 images' worth and goes through L3 or memory between layers. At batch 1 a layer's input was written by the step
before on the same core, mostly still in its L2. On the 2-core AVX-512 Xeon, EfficientNet-Lite0, min of interleaved
runs: batch 32 on 2 threads 134 ms image by image (two threads, one image each at a time) against 156 ms batched (ONNX
Runtime 142); batch 8 37.7 against 55.0 (ORT 43.2); one thread, batch 32, 242 against 283 (ORT 277).

Where (`eligible`, decided once per plan; then `PerImage.run` every forward):
- `Net.forward` on the CPU with `share_activations` on (the intermediate blobs are not promised after a forward; the
  outputs and the kept blobs are gathered) and no observer (`Net.observe` callbacks expect the batch's arrays);
- the inputs, the outputs and the kept blobs all have the batch's leading dimension, 2 or more;
- a net whose work per image is large against its weights, which every image then reads again: at least
  MIN_FLOPS_PER_WEIGHT_BYTE forward FLOPs per weight byte (EfficientNet-Lite0 43, MobileNets ~40; LeNet 2.7 and
  CaffeNet 6.2, whose batched GEMMs read each weight once for the batch, stay batched);
- the batch-1 copies' plans replay (``net.replay``): decided on the first forwards, by the bits-level check there, so
  the same net and thread count always take the same path. Where a copy's replay is refused the plan goes back to
  batched forwards.

The choice is made from the net, not from timings, so a forward's bits never depend on a measurement: image i of a
batch gets the bits of a batch-1 forward of that image (the same at any thread count), which are not those of the
batched plan (its inner product sums in another order: ~4e-7 on EfficientNet-Lite0's softmax). ``CREMA_PER_IMAGE=0``
keeps every batch batched.

The batched tail (`tail`, TAIL): where the net ends in an InnerProduct (W as (N, K)), alone or followed by a
Softmax on its output (EfficientNet-Lite0's fc and prob), the copies stop before it, their last blobs are gathered,
and the net runs those layers once for the whole batch: the InnerProduct on ``kernels.fc``'s weight-streaming kernel
row by row (``rowwise``: each row the bits of batch 1, W read once for the batch instead of once an image, 5 MB of
it from memory each time), the Softmax row by row as always. So each image still gets the bits of its batch-1
forward.

Groups (`Groups`, GROUP: 2; CREMA_PER_IMAGE_GROUP, 1 to ``replay.MAX_BATCH``): where a batch has at least GROUP
images for every thread, the threads first claim groups of GROUP images (as many groups as the threads can share
evenly; who runs which is claimed as above) and run each on a copy of the net at GROUP images of their own (one Numba
thread, replayed like the batch-1 copies; a copy's batch runs whole, never image by image again), then the rest
image by image. EfficientNet-Lite0's later blocks read more weight bytes than activation bytes an image (its 7 x 7
blocks: 1.8 MB of weights from L3 against 0.2 MB of activations), so two images a pass read them once for both; its
early blocks, whose activations outweigh their weights, run about as fast at 2 as at 1 (one thread, per op in
sequence, an image: 2.74 against 2.87 ms up to block 4's projection; with the projections' blocks at batch 2,
``net.plan_steps.BLOCKS_MAX_BATCH``). On the 2-vCPU Zen 4 EPYC, batch 32 on 2 threads, two nets alternated in one
process (paired medians): groups of 2 1.039-1.057x image by image, batch 64 1.043x, one thread 1.020x; groups of 3
1.025x, of 4 1.016-1.039x. Each image must still get its batch-1 bits: groups only where the net's inner products
run row by row (`rowwise`: the kernel known to sum in another order at batch 2), and a group copy is checked once
against a batch-1 copy on random batches (`same_bits`) before it is used; where they differ, or a group copy's plan
does not replay, the batch runs image by image from then on (and the group copies are dropped). Copy 0 is checked;
the other threads' copies are made alike once it agrees. A group copy packs its own weights where its kernels pack
them (the 1x1 layers' panels): memory a thread, as its arena (EfficientNet-Lite0 at batch 32 on 2 threads: peak RSS
547 -> 622 MB). `Images` (the web app's micro-batches) takes groups the
same way: 16 clients of `crema serve`, 600 requests, runs alternated: 133.8-142.3 against 134.0-138.3 searches a
second (within the noise: a search is more than its forward).

Where a copy's replay starts by copying its input into the stem's zero-bordered buffer (EfficientNet-Lite0's
``net.plan_steps.zero_border_step``), each image goes from the batch straight into that buffer and the replay runs from
its second op (`fed`; FEED; a group copy's group alike): one pass over the image, not two.

The copies share the net's parameter Blobs (and its folded weights); a change that drops the net's plans (refold,
reshape, share_weights_from, observe) drops them too. The threads are the caller and a process-wide pool of Python
threads (`_pool`), each with Numba's thread count at 1, claiming the images one at a time (a thread that another
process keeps from running takes fewer: a fixed split made the batch wait for it, EfficientNet-Lite0 batch 32 at
0.78-1.07x ORT from run to run in the harness); the replays release the GIL in their native calls.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import threading

import numba
import numpy as np

from kernels import tasks

from . import replay
from .flops import layer_flops

ENABLED = os.environ.get("CREMA_PER_IMAGE", "1") != "0"
MIN_FLOPS_PER_WEIGHT_BYTE = 20.0
TAIL = True  # the net's closing InnerProduct (+ Softmax) run once for the batch (the module docstring)
FEED = True  # each image copied from the batch into the stem's zero-bordered buffer itself (PerImage._fed)


def _group(value: str) -> int:
    """Images a group copy runs at once (the module docstring), from CREMA_PER_IMAGE_GROUP: a whole number from 1
    (image by image only) to ``replay.MAX_BATCH`` (a larger group's copies would not replay), else the default, 2."""
    value = value.strip()
    if not (value.isascii() and value.isdecimal()):
        return 2
    return min(max(1, int(value)), replay.MAX_BATCH)


GROUP = _group(os.environ.get("CREMA_PER_IMAGE_GROUP", ""))
CHECK_SEED, CHECK_TRIALS = 20, 4  # the seeds of the random batches a group copy is checked on, how many (`same_bits`)

_pool_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_size = 0


def _executor(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            old = _pool
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crema-image")
            _pool_size = workers
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def _after_fork_in_child() -> None:
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def eligible(net, plan) -> str | None:
    """None where a batch may run image by image (the module docstring), else why not."""
    if not ENABLED or not replay.ENABLED:
        return "off (CREMA_PER_IMAGE=0, or CREMA_REPLAY=0: the batch-1 copies run on their replays)"
    if net.device != "cpu" or net._share is None:
        return "not a CPU net with shared activations"
    if net.image_copy:
        return "a copy that runs groups of images (Groups)"
    if net._observers:
        return "observers expect the batch's arrays"
    names = (*net.inputs, *net.outputs, *sorted(net._share))
    shapes = [net._blobs[name].shape for name in names]
    if any(len(s) == 0 for s in shapes):
        return "a blob without a batch dimension"
    n = shapes[0][0]
    if n < 2 or any(s[0] != n for s in shapes):
        return "batch 1, or blobs of other leading dimensions"
    per_byte = flops_per_weight_byte(net)
    if per_byte < MIN_FLOPS_PER_WEIGHT_BYTE:
        return f"{per_byte:.1f} FLOPs per weight byte an image (< {MIN_FLOPS_PER_WEIGHT_BYTE:g})"
    return None


def flops_per_weight_byte(net) -> float:
    """The net's forward FLOPs an image per byte of its parameters (at its current shapes; inf without any)."""
    first = net.tops[0][0].shape if net.tops and net.tops[0] else ()  # the input's or the data layer's batch
    n = max(1, first[0]) if first else 1
    flops = sum(c for c in layer_flops(net) if c)
    weight_bytes = sum(b.data.nbytes for layer in net.layers for b in layer.blobs)
    return flops / n / weight_bytes if weight_bytes else float("inf")


def image_by_image(net) -> bool:
    """Would a batch of this net (activations shared, nothing observed) run image by image (`eligible`'s rules that do
    not depend on the batch: ENABLED, replays on, a CPU net heavy enough per weight byte)? server.model then runs its
    micro-batches as batch-1 forwards: the same bits, and no new plan for every new batch size."""
    return (
        ENABLED and replay.ENABLED and net.device == "cpu" and flops_per_weight_byte(net) >= MIN_FLOPS_PER_WEIGHT_BYTE
    )


def rowwise(net) -> bool:
    """Does the net's batched plan run its InnerProducts row by row (``rowwise``: each row the bits of batch 1)?
    Where a batch may run image by image (ENABLED, and a net heavy enough per weight byte, as `eligible` asks), so
    that every way such a net runs a batch gives each image its batch-1 bits: image by image, or batched where
    per_image does not apply (observers: `crema serve`'s feature maps; no shared activations). A served
    EfficientNet-Lite0's micro-batches then answer each request with the bits of a request alone, and the warm-up
    compiles one inner-product task, not two (the chunked one: 1.8 s of a new machine's start). Nets whose weights
    dominate (LeNet, CaffeNet) keep the chunked kernel, which reads W once for the batch."""
    return ENABLED and net.device == "cpu" and flops_per_weight_byte(net) >= MIN_FLOPS_PER_WEIGHT_BYTE


def tail(net) -> int:
    """How many of the net's last layers run batched after the copies (the module docstring): 2 (an InnerProduct
    and a Softmax of its output), 1 (an InnerProduct), or 0."""
    if not TAIL or len(net.layers) < 2:
        return 0
    layers, tops, bottoms = net.layers, net.tops, net.bottoms
    n = 1 if layers[-1].type == "Softmax" else 0
    if n and (len(bottoms[-1]) != 1 or bottoms[-1][0] is not tops[-2][0] or tops[-1][0] is bottoms[-1][0]):
        return 0
    ip = len(layers) - 1 - n
    if ip < 1 or layers[ip].type != "InnerProduct" or layers[ip].transpose or len(bottoms[ip]) != 1:
        return 0
    if len(tops[ip]) != 1 or tops[ip][0] is bottoms[ip][0]:
        return 0
    return n + 1


def replica(net, drop: int = 0, batch: int = 1):
    """A copy of `net` at `batch` images on its parameter Blobs and folded weights (no copy of the weights), on its
    device, activations shared the same way (made by the net's own class: this module is imported by net.net);
    without the net's last `drop` layers (``tail``). Its plan is its own: server.inside's copy observes blobs that the
    net's own plan fuses."""
    shapes = {name: (batch, *net._blobs[name].shape[1:]) for name in net.inputs}
    param = net.param
    if drop:
        gone = {ly.name for ly in net.layers[-drop:]}
        param = param.copy()
        param.layer = [ly for ly in param.layer if ly.name not in gone]
    rep = type(net)(param, phase=net.phase, device=net.device, fuse=net.fused, memory_budget=net.memory_budget)
    mine = [(ly.name, ly.type) for ly in rep.layers]
    if mine != [(ly.name, ly.type) for ly in net.layers[: len(net.layers) - drop]]:
        if drop:
            return None  # the tail's removal changed the layers before it (a Split): no batched tail
        raise RuntimeError("per_image: the copy's layers differ from the net's")  # pragma: no cover
    for mine, theirs in zip(rep.layers, net.layers):
        mine.blobs = theirs.blobs
        if getattr(theirs, "fold", None) is not None:
            theirs.forward_params()  # folded once, for both
            mine.folded = theirs.folded
    if net.frozen:
        rep.freeze()
    net.copies.add(rep)  # refold() and freeze() on the net reach the copy (Net.copies)
    rep.reshape(shapes)
    if net._share is not None:
        rep.share_activations(keep=tuple(name for name in net._share if name in rep._blobs))
    return rep


def _feed(rep, plan, rp):
    """The ``kernels.pad.PadInto`` of the batch-1 copy's stem where its replay `rp` starts by copying the copy's one
    input blob into that zero-bordered buffer (``net.plan_steps.zero_border_step``: EfficientNet-Lite0) and no other
    step reads that blob; else None."""
    if not isinstance(rp, replay.Replay) or len(rep.inputs) != 1 or not rp.segments:
        return None
    step, _, bottom, _ = plan.steps[0]
    pad = next((s.pad for s in replay.chain(step) if getattr(s, "pad", None) is not None), None)
    first, _, prog = rp.segments[0]
    if pad is None or prog is None or first != 0 or not len(prog) or prog.names[0] != pad.task.name:
        return None
    blob = rep._blobs[rep.inputs[0]]
    if len(bottom) != 1 or bottom[0] is not blob:
        return None
    if any(b is blob for _, _, bottoms, _ in plan.steps[1:] for b in bottoms):
        return None
    return pad


def _on_threads(t: int, share) -> None:
    """share(k, claim) for k < t: k = 0 on this thread, the others on the pool's (`_executor`); claim: a counter they
    share (next() under the GIL: each image claimed once)."""
    claim = itertools.count()
    futures = []
    if t > 1:
        pool = _executor(t - 1)
        futures = [pool.submit(share, k, claim) for k in range(1, t)]
    try:
        share(0, claim)
    finally:
        for f in futures:
            f.result()


class PerImage:
    """The batch-1 copies of a net for one plan (one a thread), its batch-GROUP copies (`Groups`, where a batch has
    whole groups for every thread), and how their shares of a batch are run."""

    def __init__(self, net, threads: int) -> None:
        self.threads = max(1, threads)
        drop = tail(net)
        first = replica(net, drop) if drop else None
        if first is None:
            drop, first = 0, replica(net)
        self.drop = drop
        self.replicas = [first, *(replica(net, drop) for _ in range(self.threads - 1))]
        self.gather = _gathered(first, net._share, net.inputs)
        self.tail = [self._tail_step(net, i) for i in range(len(net.layers) - drop, len(net.layers))]
        self.feeds: list[tuple] = [(None, None)] * len(self.replicas)  # per copy: (its replay, `_feed` of it)
        self.groups: Groups | None = None  # made on the first batch with whole groups for every thread
        self.group = GROUP  # images a group (1: none)
        # groups where the net's inner products run row by row (a net that `eligible` lets through does), the known
        # kernel whose sums depend on the batch; False once the group copies were refused (`Groups.agrees`)
        self.grouped = GROUP > 1 and rowwise(net)

    @staticmethod
    def _tail_step(net, i: int):
        """The step of the net's layer i for the batched tail: an InnerProduct row by row (``kernels.fc``'s
        `rowwise`: batch-1 bits a row), else the layer's own plan step; falls back to the layer's forward."""
        layer, bottom, top = net.layers[i], net.bottoms[i], net.tops[i]
        step = layer.plan(bottom, top, rowwise=True) if layer.type == "InnerProduct" else layer.plan(bottom, top)

        def run() -> None:
            if step is None or not step():
                layer.forward(bottom, top)

        return run

    def _share(self, k: int, net, claim, units: int, whole: int) -> None:
        """Copy k's images, claimed a unit at a time (`claim`: a shared counter; a thread that something else keeps
        from running takes fewer, and the batch does not wait for it): units below `whole` are the groups of GROUP
        images from the batch's start (on the group copies), then the rest (up to `units`) one image each."""
        saved = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            g = self.group
            while (u := next(claim)) < units:
                if u < whole:
                    self.groups.run(k, net, u * g, self.gather)
                else:
                    self._image(k, net, whole * g + u - whole)
        finally:
            numba.set_num_threads(saved)

    def _image(self, k: int, net, i: int) -> None:
        """Image i of the batch on batch-1 copy k, its gathered blobs into the batch's rows."""
        rep = self.replicas[k]
        if not self._fed(k, net, i):
            for name in net.inputs:
                np.copyto(rep._blobs[name].data[0], net._blobs[name].data[i])
            rep._run(None, adapt=True, pool=True)
        for name in self.gather:
            np.copyto(net._blobs[name].data[i], rep._blobs[name].data[0])

    def _fed(self, k: int, net, i: int) -> bool:
        """Image i on copy k's replay, the image copied from the batch straight into the stem's zero-bordered buffer
        and the replay's first op, which copies the copy's input blob there, skipped (`_feed`: one pass over the
        image instead of two; EfficientNet-Lite0 batch 32, in-process A/B: 1.0005-1.007x); False where that does not
        apply now (nothing done: the caller copies the image into the copy's input and runs its forward)."""
        rep = self.replicas[k]
        got = fed(rep, self.feeds[k], net._blobs[net.inputs[0]].data[i : i + 1])
        self.feeds[k] = got[1]
        return got[0]

    def run(self, net) -> bool:
        """One forward of the net's current inputs, image by image (in groups where they apply); False (nothing run)
        where a batch-1 copy's plan does not replay: the caller then runs the batched plan (and should not ask
        again)."""
        if _refused(self.replicas):
            return False
        n = net._blobs[net.inputs[0]].shape[0]
        whole = whole_groups(self, net, self.gather, self.drop, n)
        units = whole + n - whole * self.group
        _on_threads(min(self.threads, units), lambda k, claim: self._share(k, net, claim, units, whole))
        for run in self.tail:  # the net's closing layers, once for the batch
            run()
        return True


def fed(rep, feed: tuple, x: np.ndarray) -> tuple[bool, tuple]:
    """x (the copy's batch of images, a view of the net's input) on copy `rep`'s replay, copied straight into the
    stem's zero-bordered buffer (`_feed`) and the replay run from its second op; `feed`: the copy's (replay, `_feed`
    of it) as last seen. Returns (ran, feed as now); not ran: nothing done, the caller copies x into the copy's input
    and runs its forward."""
    plan = rep._plan
    if not FEED or plan is None or plan.threads != 1:
        return False, feed
    rp = plan.replay
    if feed[0] is not rp:
        feed = (rp, _feed(rep, plan, rp))
    pad = feed[1]
    if pad is None or not rp.valid():
        return False, feed
    pad(x)
    # a Python step that refuses makes the rest the layers' own forwards from the copy's input blob, which does not
    # hold the image: the caller then runs it again the usual way
    return rp.run(rep, plan, skip=1), feed


class Groups:
    """The copies of a net at `size` images (one a thread, ``replica``, each running its batches whole: no copies of
    copies), for the groups of a batch that PerImage or Images runs on them (the module docstring; `run`: PerImage's,
    from the net's blobs; Images runs its copies' forwards). Copy 0 is made and checked first (`agrees`), the others
    once it agrees: made alike (the same layers at the same shapes, one Numba thread), they compute alike."""

    def __init__(self, net, drop: int, size: int) -> None:
        self.drop, self.size = drop, size  # (not the net: it holds the plan that holds this)
        self.copies = [self._copy(net)]
        self.feeds: list[tuple] = [(None, None)]
        self.checked: bool | None = None

    def _copy(self, net):
        rep = replica(net, self.drop, batch=self.size)
        rep.image_copy = True  # its own batches run whole (`eligible`)
        return rep

    def run(self, k: int, net, first: int, gather: list[str]) -> None:
        """Images first .. first + size of the batch on copy k, its gathered blobs into the batch's rows."""
        rep, rows = self.copies[k], slice(first, first + self.size)
        ran, self.feeds[k] = fed(rep, self.feeds[k], net._blobs[net.inputs[0]].data[rows])
        if not ran:
            for name in net.inputs:
                np.copyto(rep._blobs[name].data, net._blobs[name].data[rows])
            rep._run(None, adapt=True, pool=True)
        for name in gather:
            np.copyto(net._blobs[name].data[rows], rep._blobs[name].data)

    def agrees(self, net, single, names: list[str], threads: int) -> bool:
        """Do the group copies of `net` give each image the bits of its batch-1 forward on `single` (a batch-1 copy),
        for the blobs in `names`? Checked once (`same_bits`); then the copies for `threads` threads are made. False
        too where a group copy's plan does not replay."""
        if self.checked is None:
            self.checked = same_bits(self.copies[0], single, names)
        if self.checked:
            while len(self.copies) < threads:
                self.copies.append(self._copy(net))
                self.feeds.append((None, None))
        return self.checked and not _refused(self.copies)


def _gathered(rep, share, inputs) -> list[str]:
    """The blobs a batch takes back from copy `rep` (or checks a group copy on): its outputs and the names in `share`
    (the activations kept after a forward) that it has, once each, in that order, less `inputs`."""
    names = (*rep.outputs, *sorted(name for name in share or () if name in rep._blobs))
    return [name for name in dict.fromkeys(names) if name not in inputs]


def _refused(copies) -> bool:
    """Has any of these copies' plans refused its replay?"""
    return any(rep._plan is not None and rep._plan.replay is False for rep in copies)


def whole_groups(owner, net, names: list[str], drop: int, n: int) -> int:
    """How many groups of owner.group images a batch of n runs on owner.groups (PerImage's or Images': their
    `group`, `grouped`, `groups`, `threads` and `replicas`): as many as give every thread the same number (the rest go
    one by one, after them), where groups are on; 0 otherwise. The first such batch makes owner.groups (copies of
    `net` without its last `drop` layers) and checks them against batch-1 copy 0 on the blobs in `names`
    (`Groups.agrees`); where they disagree or do not replay, groups stay off for good and the copies are dropped."""
    t = min(owner.threads, n)
    whole = n // owner.group // t * t
    if not owner.grouped or whole == 0:
        return 0
    if owner.groups is None:
        owner.groups = Groups(net, drop, owner.group)
    if not owner.groups.agrees(net, owner.replicas[0], names, owner.threads):
        owner.grouped, owner.groups = False, None  # their memory goes back
        return 0
    return whole


def same_bits(group, single, names) -> bool:
    """Does `group` (a copy at GROUP images) give each image of a batch the bits that `single` (a batch-1 copy) gives
    it alone, for every blob in `names`? Tried on CHECK_TRIALS batches of random images from fixed seeds, not on the
    caller's: a batch of zeros or of one image repeated (a server's warm-up) can hide a difference, and one batch may
    round a difference away (LeNet's batch-2 inner products, whose sums go in another order, give its softmax the
    batch-1 bits on 62-87% of random batches). A guard behind the rule (`rowwise`), not a proof. On this thread, one
    Numba thread, the copies' own inputs and outputs (the caller's batch is not touched); bits compared as
    integers."""
    saved = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        for trial in range(CHECK_TRIALS):
            rng = np.random.default_rng(CHECK_SEED + trial)
            xs = {name: rng.standard_normal(group._blobs[name].shape, np.float32) for name in group.inputs}
            for name, x in xs.items():
                np.copyto(group._blobs[name].data, x)
            group._run(None, adapt=True, pool=True)
            grouped = {name: group._blobs[name].data.copy() for name in names}
            for i in range(len(next(iter(xs.values())))):
                for name, x in xs.items():
                    np.copyto(single._blobs[name].data[0], x[i])
                single._run(None, adapt=True, pool=True)
                for name in names:
                    got = single._blobs[name].data[0]
                    if not np.array_equal(grouped[name][i].view(np.uint32), got.view(np.uint32)):
                        return False
        return True
    finally:
        numba.set_num_threads(saved)


class Images:
    """Any number of images through batch-1 copies of a net (`replica`, one a thread, each on one Numba thread, as a
    PerImage runs a batch; groups of GROUP images on copies at that size where every thread gets as many, checked
    once against the batch-1 copy as PerImage's are), without a batched net: no plan, arena or copies made for each
    new batch size, which a micro-batch of a new size cost the batched net (server.model's `infer_any`). Each image
    gets the bits of its batch-1 forward. Run it from one thread at a time.

        images = Images(net, threads=2)
        out = images.run(x, ("prob", "pool"))   # x (N, C, H, W) -> {name: (N, ...) rows of that blob}
    """

    def __init__(self, net, threads: int) -> None:
        self.threads = max(1, threads)
        self.replicas: list = [replica(net)]
        self.input = net.inputs[0]
        self.group = GROUP  # images a group (1: none)
        self.groups: Groups | None = None  # made on the first batch with whole groups for every thread
        # False: image by image only (GROUP 1, or inner products whose sums depend on the batch: a net that is not
        # `rowwise`, e.g. LeNet, whose inner products take chunks at batch 2; or group copies refused, `whole_groups`)
        self.grouped = GROUP > 1 and rowwise(net)
        self.kept = _gathered(self.replicas[0], self.replicas[0]._share, (self.input,))  # a group is checked on these

    def run(self, x: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        n = len(x)
        first = self.replicas[0]
        out = {name: np.empty((n, *first._blobs[name].shape[1:]), np.float32) for name in names}
        t = min(self.threads, n)
        while len(self.replicas) < t:
            self.replicas.append(replica(self.replicas[0]))
        whole = whole_groups(self, first, self.kept, 0, n)
        units = whole + n - whole * self.group
        _on_threads(min(t, units), lambda k, claim: self._share(k, x, out, claim, units, whole))
        return out

    def _unit(self, k: int, x: np.ndarray, out: dict[str, np.ndarray], u: int, whole: int) -> None:
        """Unit u of the batch on thread k's copies: group u (u < whole) on its group copy, else one image."""
        g = self.group
        if u < whole:
            self._run(self.groups.copies[k], x, out, slice(u * g, u * g + g))
        else:
            i = whole * g + u - whole
            self._run(self.replicas[k], x, out, slice(i, i + 1))

    def _run(self, rep, x: np.ndarray, out: dict[str, np.ndarray], rows: slice) -> None:
        """x[rows] through copy `rep` (its batch's size), its blobs into out's rows."""
        rep.forward(**{self.input: x[rows]})
        for name, dst in out.items():
            np.copyto(dst[rows], rep._blobs[name].data)

    def _share(self, k: int, x: np.ndarray, out: dict[str, np.ndarray], claim, units: int, whole: int) -> None:
        saved = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            while (u := next(claim)) < units:
                self._unit(k, x, out, u, whole)
        finally:
            numba.set_num_threads(saved)


def forward(net, plan) -> bool:
    """Run this forward image by image where the plan does (decided on its first forward here: Net._run asks from
    the plan's second forward on, the first decides its launcher); False: the caller runs the batched plan."""
    st = plan.per_image
    if st is False or tasks.recording_active():  # net.warm's dry pass: the batched steps, recorded as they are
        return False
    if st is None:
        if eligible(net, plan) is not None:
            plan.per_image = False
            return False
        st = plan.per_image = PerImage(net, plan.threads)
    if st.run(net):
        return True
    plan.per_image = False
    return False
