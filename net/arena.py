"""Activations that share memory: a forward-only CPU net's intermediate blobs placed in one buffer by lifetime.

    net.share_activations(keep=("pool",))   # Net: from the next forward, intermediate blobs share one arena
    net.observe("conv1", fn)                 # fn("conv1", array) in every forward, right after it is written

Every blob of a Net has an array of its own, so a forward writes each layer's output into memory it has not touched
since the last forward: EfficientNet-Lite0 at batch 1 writes 27.8 MB of activations (L3: 32 MB, shared with the
weights and with other processes), and every store misses the caches. Most of those blobs are read by the next step
and never again, so `place` lays them out in one arena where blobs whose lifetimes do not overlap take the same
bytes: EfficientNet-Lite0's fit in 7.2 MB at batch 1, 193 MB at batch 32 (890 MB apart). Same kernels, same bits
(the kernels' results do not depend on where an array starts: tested).

An arena of 2 MB or more sits on transparent huge pages where Linux offers them (`_buffer`: an anonymous private
mapping aligned to 2 MB, madvise(MADV_HUGEPAGE); with THP "madvise" or "always"): a 1x1 convolution reads its input
K rows a plane apart (12.5 KB at 56 x 56), one 4 KB page per row, more pages than the first-level TLB holds.
EfficientNet-Lite0, two nets in one process, interleaved (benchmarks/perf_notes.md): at batch 1 the medians 0.3-7%
faster in 7 A/Bs of 7 (minimums in 5); batch 32 unchanged.

Lifetimes are counted in the steps of the net's execution plan (`Net._plan`): a blob lives from the step before the
one that first writes it (a fused step writes the next layer's top as well: `net.plan_steps.fuse_residual_sums`)
to the last step that reads or writes it. Which blobs: the tops first written by a layer with a plan of its own
(`Layer.plan` overridden: those layers write their tops into the top's own array, never a view of a bottom); not
the net's inputs, outputs, or the blobs in `keep`. The top of any other layer may be a view of its bottoms (Split,
Flatten, Reshape): it keeps its own array, and its bottoms live as long as it does.

After a forward, an intermediate blob in the arena holds whatever a later step wrote there: read such a blob with
`Net.observe` (called right after the step that writes it), or keep it (`keep`). A backward reads the forward's
activations, so a Net with shared activations refuses one (NetError), and the GPU path keeps its own arrays.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Sequence

import numpy as np

from .blob import Blob
from .layers.base import Layer

ALIGN = 64  # bytes: every blob starts on a cache line
HUGE_PAGE = 2 << 20  # bytes: x86-64's transparent huge page; arenas this large or larger ask for them (_buffer)


def _buffer(nbytes: int) -> np.ndarray:
    """nbytes of memory as a uint8 array: from HUGE_PAGE up, a private anonymous mapping aligned to HUGE_PAGE and
    advised as huge pages where the platform has MADV_HUGEPAGE (the mapping lives as long as the array); else, or if
    that fails, np.empty."""
    if nbytes >= HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            m.madvise(mmap.MADV_HUGEPAGE)
        except (OSError, ValueError, AttributeError):
            return np.empty(nbytes, np.uint8)
        raw = np.frombuffer(m, np.uint8)
        start = -raw.ctypes.data % HUGE_PAGE
        return raw[start : start + nbytes]
    return np.empty(nbytes, np.uint8)


def _writes_own_arrays(layer: Layer) -> bool:
    """A layer with a plan step writes its tops into their own arrays (see the module docstring)."""
    return type(layer).plan is not Layer.plan


def lifetimes(steps: Sequence[tuple], skip: Iterable[int]) -> dict[int, tuple[Blob, int, int]]:
    """{id(blob): (blob, first step, last step)} of the blobs the arena may hold, from a plan's steps
    (step, layer, bottom, top); `skip`: ids of blobs that keep their own arrays (inputs, outputs, kept ones)."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    blobs: dict[int, Blob] = {}
    own: set[int] = set()
    for s, (_, layer, bottom, top) in enumerate(steps):
        for b in (*bottom, *top):
            last[id(b)] = s
            blobs[id(b)] = b
        for t in top:
            if id(t) not in first:
                first[id(t)] = max(0, s - 1)
                if _writes_own_arrays(layer):
                    own.add(id(t))
    for s in range(len(steps) - 1, -1, -1):  # a possible view keeps what it views alive (transitively: backwards)
        _, layer, bottom, top = steps[s]
        if not _writes_own_arrays(layer):
            for t in top:
                for b in bottom:
                    last[id(b)] = max(last[id(b)], last[id(t)])
    skip = set(skip)
    return {k: (blobs[k], first[k], last[k]) for k in own if k not in skip}


def place(lives: dict[int, tuple[Blob, int, int]]) -> tuple[dict[int, int], int]:
    """({id(blob): byte offset}, arena bytes): largest blobs first, each at the lowest offset clear of every placed
    blob whose lifetime overlaps its own (first fit), on ALIGN-byte boundaries."""
    placed: list[tuple[int, int, int, int]] = []  # (offset, bytes, first, last)
    offsets: dict[int, int] = {}
    for key, (blob, first, last) in sorted(lives.items(), key=lambda kv: (-kv[1][0].data.nbytes, kv[1][1])):
        size = -(-blob.data.nbytes // ALIGN) * ALIGN
        at = 0
        for off, n, f, l in sorted(p for p in placed if not (p[3] < first or last < p[2])):
            if at + size <= off:
                break
            at = max(at, off + n)
        placed.append((at, size, first, last))
        offsets[key] = at
    return offsets, max((off + n for off, n, _, _ in placed), default=0)


def share(steps: Sequence[tuple], skip: Iterable[int]) -> tuple[np.ndarray | None, int]:
    """Rebind every arena blob of a plan's steps to its place in one new buffer; returns (the buffer, the bytes of
    the blobs it holds). Values are not carried over: the next forward writes them."""
    lives = lifetimes(steps, skip)
    offsets, total = place(lives)
    if not lives:
        return None, 0
    raw = _buffer(total + ALIGN).view(np.float32)
    base = (-raw.ctypes.data % ALIGN) // 4
    for key, (blob, _, _) in lives.items():
        start = base + offsets[key] // 4
        blob.data = raw[start : start + blob.data.size].reshape(blob.data.shape)
    return raw, sum(blob.data.nbytes for blob, _, _ in lives.values())
