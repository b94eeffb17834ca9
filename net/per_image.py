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

Where a copy's replay starts by copying its input into the stem's zero-bordered buffer (EfficientNet-Lite0's
``net.plan_steps.zero_border_step``), each image goes from the batch straight into that buffer and the replay runs from
its second op (`PerImage._fed`; FEED): one pass over the image, not two.

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


def replica(net, drop: int = 0):
    """A batch-1 copy of `net` on its parameter Blobs and folded weights (no copy of the weights), on its device,
    activations shared the same way (made by the net's own class: this module is imported by net.net); without the
    net's last `drop` layers (``tail``). Its plan is its own: server.inside's copy observes blobs that the net's own
    plan fuses."""
    shapes = {name: (1, *net._blobs[name].shape[1:]) for name in net.inputs}
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
    """The batch-1 copies of a net for one plan (one a thread) and how their shares of a batch are run."""

    def __init__(self, net, threads: int) -> None:
        self.threads = max(1, threads)
        drop = tail(net)
        first = replica(net, drop) if drop else None
        if first is None:
            drop, first = 0, replica(net)
        self.replicas = [first, *(replica(net, drop) for _ in range(self.threads - 1))]
        names = (*first.outputs, *sorted(name for name in net._share if name in first._blobs))
        self.gather = [name for name in dict.fromkeys(names) if name not in net.inputs]
        self.tail = [self._tail_step(net, i) for i in range(len(net.layers) - drop, len(net.layers))]
        self.feeds: list[tuple] = [(None, None)] * len(self.replicas)  # per copy: (its replay, `_feed` of it)

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

    def _share(self, k: int, net, claim, n: int) -> None:
        """Copy k's images, claimed one at a time (`claim`: a shared counter; a thread that something else keeps
        from running takes fewer, and the batch does not wait for it)."""
        rep = self.replicas[k]
        saved = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            while (i := next(claim)) < n:
                if not self._fed(k, net, i):
                    for name in net.inputs:
                        np.copyto(rep._blobs[name].data[0], net._blobs[name].data[i])
                    rep._run(None, adapt=True, pool=True)
                for name in self.gather:
                    np.copyto(net._blobs[name].data[i], rep._blobs[name].data[0])
        finally:
            numba.set_num_threads(saved)

    def _fed(self, k: int, net, i: int) -> bool:
        """Image i on copy k's replay, the image copied from the batch straight into the stem's zero-bordered buffer
        and the replay's first op, which copies the copy's input blob there, skipped (`_feed`: one pass over the
        image instead of two; EfficientNet-Lite0 batch 32, in-process A/B: 1.0005-1.007x); False where that does not
        apply now (nothing done: the caller copies the image into the copy's input and runs its forward)."""
        rep = self.replicas[k]
        plan = rep._plan
        if not FEED or plan is None or plan.threads != 1:
            return False
        rp = plan.replay
        if self.feeds[k][0] is not rp:
            self.feeds[k] = (rp, _feed(rep, plan, rp))
        pad = self.feeds[k][1]
        if pad is None or not rp.valid():
            return False
        pad(net._blobs[net.inputs[0]].data[i : i + 1])
        # a Python step that refuses makes the rest the layers' own forwards from the copy's input blob, which
        # does not hold the image: the caller then runs it again the usual way
        return rp.run(rep, plan, skip=1)

    def run(self, net) -> bool:
        """One forward of the net's current inputs, image by image; False (nothing run) where a copy's plan does not
        replay: the caller then runs the batched plan (and should not ask again)."""
        if any(rep._plan is not None and rep._plan.replay is False for rep in self.replicas):
            return False
        n = net._blobs[net.inputs[0]].shape[0]
        _on_threads(min(self.threads, n), lambda k, claim: self._share(k, net, claim, n))
        for run in self.tail:  # the net's closing layers, once for the batch
            run()
        return True


class Images:
    """Any number of images through batch-1 copies of a net (`replica`, one a thread, each on one Numba thread, as a
    PerImage runs a batch), without a batched net: no plan, arena or copies made for each new batch size, which a
    micro-batch of a new size cost the batched net (server.model's `infer_any`). Each image gets the bits of its
    batch-1 forward. Run it from one thread at a time.

        images = Images(net, threads=2)
        out = images.run(x, ("prob", "pool"))   # x (N, C, H, W) -> {name: (N, ...) rows of that blob}
    """

    def __init__(self, net, threads: int) -> None:
        self.threads = max(1, threads)
        self.replicas: list = [replica(net)]
        self.input = net.inputs[0]

    def run(self, x: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        n = len(x)
        first = self.replicas[0]
        out = {name: np.empty((n, *first._blobs[name].shape[1:]), np.float32) for name in names}
        t = min(self.threads, n)
        while len(self.replicas) < t:
            self.replicas.append(replica(self.replicas[0]))
        _on_threads(t, lambda k, claim: self._share(k, x, out, claim))
        return out

    def _share(self, k: int, x: np.ndarray, out: dict[str, np.ndarray], claim) -> None:
        rep = self.replicas[k]
        saved = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            while (i := next(claim)) < len(x):
                rep.forward(**{self.input: x[i : i + 1]})
                for name, rows in out.items():
                    np.copyto(rows[i], rep._blobs[name].data[0])
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
