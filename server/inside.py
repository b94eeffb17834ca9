"""Inside the network, per search: the feature maps of the forward pass that answered the request, kept briefly.

    inside = Inside(model.net, bgr=..., per_request_bytes=24 << 20, max_bytes=256 << 20, ttl_s=600)
    rows = inside.capture(n)                 # inference thread, after the batch's forward: one dict per row
    entry_id = inside.store(rows[i])         # event loop: the request's maps under a random id
    inside.describe(entry_id, rows[i])       # the JSON of /api/search's `inside`
    inside.maps_png(entry_id, "conv1")       # PNG grid of that request's maps (net.visualize.maps_grid)
    inside.filters_png("conv1")              # PNG grid of the layer's filters (weights do not change)

No second forward: during each forward (`Net.observe`: right after a layer's maps are written, before a later layer
reuses their memory, `Net.share_activations`), each row's maps of the layers in net.visualize.layer_views
(Convolution / Pooling with spatial maps) are copied, at most MAX_TILES channels a layer, in net order while the
request's byte budget lasts; `capture` hands over what the last forward copied: a layer that does not fit is skipped and listed as not
kept (later, smaller ones may still fit; the first layer of every served model fits: EfficientNet-Lite0's stem is
1.6 MB of its 22.6 MB). Entries live `ttl_s` seconds, and the oldest go first when the cache would exceed
`max_bytes`. A batch captures at most `max_bytes` in all (the budget of later rows shrinks to what is left).

Memory: a row's maps are views of one block (its arena), and the arena of an entry that leaves the cache is reused
by a later forward, so a served forward copies into memory already mapped: fresh memory for 22.6 MB is ~5,500
first-touch page faults, which made a served EfficientNet-Lite0 forward 11-20 ms instead of ~8 (the app returns
large freed blocks to the OS, server.pools). Entries and the arenas kept for reuse hold at most `max_bytes`
together (room for the next forward's arenas is made by dropping the oldest entries first); an arena not reused for
`ttl_s` is freed. While the cache fills, `store` has the next arena mapped ahead on a thread of its own, so the
forward finds one ready (a served EfficientNet-Lite0 forward with the copies: 14-15 ms -> 7.6-9.6 for the 10
searches that fill the cache after the first). An entry whose maps are being drawn gives its arena back only once
the drawing is done. Besides those: the arenas of the batch being captured and of rows not yet stored (a batch's at
most `max_bytes`, its budget), and of entries dropped while drawn; `stats` counts the cache's.
"""

from __future__ import annotations

import mmap
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from net.visualize import (
    MAX_TILES,
    NORMALISATION,
    LayerView,
    find_layer,
    layer_filters,
    layer_views,
    trim_zero_border,
    view_tops,
)
from net.visualize import maps_grid as render_maps

__all__ = ["Entry", "Inside", "NotFound"]


class NotFound(LookupError):
    """An unknown or expired request id, or a layer whose maps were not kept (message in plain words)."""


@dataclass
class Entry:
    maps: dict[str, np.ndarray]  # layer name -> (C', H, W) float32, C' <= MAX_TILES
    nbytes: int
    created: float
    arena: np.ndarray | None = None  # the block the maps are views of (reused once the entry is gone)
    readers: int = 0  # maps_png calls drawing from it now
    gone: bool = False  # left the cache while read: the last reader gives the arena back


class Row(dict):
    """One row's maps from `capture` (layer name -> array), with the arena they are views of."""

    arena: np.ndarray | None = None


def _new_arena(nbytes: int) -> np.ndarray:
    """Fresh float32 memory of nbytes, mapped up front (MAP_POPULATE: one call instead of a page fault per 4 KB)
    and without NumPy's huge-page advice for large arrays (with THP defrag=madvise it compacts memory on the fault);
    NumPy's memory where anonymous maps are not available (Windows)."""
    if not hasattr(mmap, "MAP_ANONYMOUS"):
        return np.empty(nbytes // 4, np.float32)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=flags), dtype=np.float32)


class Inside:
    """See the module docstring. Thread-safe: `capture` runs on the inference thread, the rest anywhere."""

    def __init__(
        self, net, *, bgr: bool, per_request_bytes: int = 24 << 20, max_bytes: int = 256 << 20, ttl_s: float = 600.0
    ) -> None:
        self.net = net
        self.bgr = bgr
        self.views: list[LayerView] = layer_views(net)
        self.per_request_bytes = per_request_bytes
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._filters: dict[str, bytes] = {}
        self._trimmed = {}  # layer -> what its filters grid leaves out (net.visualize.trim_zero_border), or ""
        self._rows: list[Row] = []  # the maps the running forward copied, per row
        self._kept: dict[int, list[tuple[dict[str, int], int]]] = {}  # batch size -> _budgets' rows
        self._free: list[tuple[np.ndarray, float]] = []  # arenas to reuse, with when they were given back
        self._free_bytes = 0
        self._maker: threading.Thread | None = None  # the thread making an arena ahead (store), while the cache fills
        self._views_of: dict[str, list[LayerView]] = {}  # top -> the views that show it
        for view in self.views:
            self._views_of.setdefault(view.top, []).append(view)
        for top in view_tops(net):  # (what `crema serve`'s warm pass observes too)
            net.observe(top, self._copy)  # held weakly: an Inside no longer used stops copying
        for view in self.views:
            if view.filters:
                w = net.params[view.name][0]
                cut = trim_zero_border(w)[1]
                self._trimmed[view.name] = (
                    f"stored as {w.shape[2]}x{w.shape[3]}: {cut}, zero in every filter, left out" if cut else ""
                )

    # -- capture (inference thread) ------------------------------------------------------------------------------
    def _budgets(self, n: int) -> list[tuple[dict[str, int], int]]:
        """Per row of a batch of n, the layers whose maps it keeps, each with its offset (float32 elements) in the
        row's arena, and the arena's length: in net order while its budget lasts (the request's, and what the batch's
        leaves), from the sizes alone."""
        rows = self._kept.get(n)
        if rows is None:
            rows = []
            batch_left = self.max_bytes
            for _ in range(n):
                left = min(self.per_request_bytes, batch_left)
                kept: dict[str, int] = {}
                offset = 0
                for view in self.views:
                    count = min(view.shape[0], MAX_TILES) * view.shape[1] * view.shape[2]
                    if count * 4 > left:  # float32
                        continue
                    kept[view.name] = offset
                    offset += count
                    left -= count * 4
                    batch_left -= count * 4
                rows.append((kept, offset))
            if len(self._kept) > 64:
                self._kept.clear()
            self._kept[n] = rows
        return rows

    def _new_rows(self, n: int) -> list[Row]:
        rows = []
        for _, length in self._budgets(n):
            row = Row()
            if length:
                row.arena = self._take(length * 4)
            rows.append(row)
        return rows

    def _copy(self, top: str, data: np.ndarray) -> None:
        """Net.observe's callback: the rows' copies of the maps of the layers that show this blob, as the forward
        writes it."""
        n = len(data)
        if len(self._rows) != n:
            self._rows = self._new_rows(n)
        budgets = self._budgets(n)
        for view in self._views_of[top]:
            c = min(view.shape[0], MAX_TILES)
            for i, (kept, _) in enumerate(budgets):
                offset = kept.get(view.name)
                if offset is not None:
                    row = self._rows[i]
                    src = data[i, :c]
                    dst = row.arena[offset : offset + src.size].reshape(src.shape)
                    np.copyto(dst, src, casting="same_kind")
                    row[view.name] = dst

    def capture(self, n: int) -> list[dict[str, np.ndarray]]:
        """Each of the last forward's n rows: {layer name: copy of its maps} within the budgets (module docstring);
        the copies are handed over (a second call before the next forward gets empty rows)."""
        rows = self._rows if len(self._rows) == n else [Row() for _ in range(n)]
        self._rows = []
        return rows

    # -- arenas --------------------------------------------------------------------------------------------------
    def _take(self, nbytes: int) -> np.ndarray:
        """An arena of at least nbytes for the forward that runs (inference thread): the smallest kept one that fits
        (`_fitting`); where none does and entries, kept arenas and this one would pass max_bytes, the kept arenas
        that do not fit go first, then the oldest entries (their arenas may fit); else fresh memory."""
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            while True:
                fits = self._fitting(nbytes)
                if fits:
                    arena = self._free.pop(min(fits, key=lambda k: self._free[k][0].nbytes))[0]
                    self._free_bytes -= arena.nbytes
                    return arena
                if self._bytes + self._free_bytes + nbytes <= self.max_bytes:
                    break
                if self._free:  # too small for this forward: dropped before any entry
                    self._free_bytes -= self._free.pop(0)[0].nbytes
                elif self._entries:
                    self._drop(next(iter(self._entries)), now)
                else:
                    break
        return _new_arena(nbytes)

    def _fitting(self, nbytes: int) -> list[int]:
        """(lock held) Indices of the kept arenas a forward needing nbytes may take: at least that large and at most
        twice (a larger one would hold the cache's bytes for little)."""
        return [k for k, (a, _) in enumerate(self._free) if nbytes <= a.nbytes <= 2 * nbytes]

    def _give_back(self, arena: np.ndarray | None, now: float) -> None:
        """(lock held) Keep an arena for reuse while entries and kept arenas stay within max_bytes."""
        if arena is not None and self._bytes + self._free_bytes + arena.nbytes <= self.max_bytes:
            self._free.append((arena, now))
            self._free_bytes += arena.nbytes

    def _drop(self, key: str, now: float) -> None:
        """(lock held) Remove an entry from the cache; its arena is reused once no one draws from it."""
        entry = self._entries.pop(key)
        self._bytes -= entry.nbytes
        if entry.readers:
            entry.gone = True
        else:
            self._give_back(entry.arena, now)

    # -- the cache ---------------------------------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        """(lock held) Drop entries past ttl_s or past max_bytes (oldest first), and arenas not reused for ttl_s."""
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.created <= self.ttl_s and self._bytes <= self.max_bytes:
                break
            self._drop(key, now)
        while self._free and (now - self._free[0][1] > self.ttl_s or self._bytes + self._free_bytes > self.max_bytes):
            self._free_bytes -= self._free.pop(0)[0].nbytes

    def store(self, maps: dict[str, np.ndarray]) -> str:
        """Keep one request's maps; returns its id (32 hex digits)."""
        key = secrets.token_hex(16)
        arena = getattr(maps, "arena", None)
        if arena is not None:
            maps.arena = None  # the entry owns it now (a row stored twice must not give two entries one block)
        nbytes = arena.nbytes if arena is not None else sum(a.nbytes for a in maps.values())
        with self._lock:
            self._entries[key] = Entry(dict(maps), nbytes, time.monotonic(), arena)
            self._bytes += nbytes
            self._expire(time.monotonic())
            spare = arena is not None and self._maker is None and self._room_for_spare(nbytes)
            if spare:
                self._maker = threading.Thread(
                    target=self._make_spare, args=(nbytes,), name="crema-inside", daemon=True
                )
                self._maker.start()
        return key

    def _room_for_spare(self, nbytes: int) -> bool:
        """(lock held) While the cache fills: no kept arena fits the next request's maps (as large as these) and one
        more would stay within max_bytes, so the next forward would map fresh memory."""
        return not self._fitting(nbytes) and self._bytes + self._free_bytes + nbytes <= self.max_bytes

    def _make_spare(self, nbytes: int) -> None:
        """An arena made ahead on a thread of its own (mapping ~22 MB costs ~6 ms), kept for the next forward if it
        is still within max_bytes then."""
        arena = _new_arena(nbytes)
        with self._lock:
            if self._room_for_spare(nbytes):
                self._free.append((arena, time.monotonic()))
                self._free_bytes += arena.nbytes
            self._maker = None

    def get(self, key: str, *, reading: bool = False) -> Entry:
        """The entry of request `key` (NotFound when unknown or expired); `reading`: counted as read until
        `done(entry)`, so its arena is not reused meanwhile."""
        with self._lock:
            self._expire(time.monotonic())
            entry = self._entries.get(key)
            if entry is not None and reading:
                entry.readers += 1
        if entry is None:
            raise NotFound(
                f"no feature maps for request {key[:40]!r}: they are kept {self.ttl_s:g} s after the search (and "
                f"the oldest go first past {self.max_bytes >> 20} MB); search again"
            )
        return entry

    def done(self, entry: Entry) -> None:
        """The end of a `get(key, reading=True)`."""
        with self._lock:
            entry.readers -= 1
            if entry.gone and not entry.readers:
                self._give_back(entry.arena, time.monotonic())

    def stats(self) -> dict:
        with self._lock:
            self._expire(time.monotonic())
            return {"entries": len(self._entries), "bytes": self._bytes, "reuse_bytes": self._free_bytes,
                    "max_bytes": self.max_bytes,
                    "ttl_s": self.ttl_s, "per_request_bytes": self.per_request_bytes}  # fmt: skip

    # -- what the API shows ------------------------------------------------------------------------------------
    def describe(self, key: str, maps: dict[str, np.ndarray]) -> dict:
        """/api/search's `inside`: the request's id and, per layer, what its map is and where its PNGs are."""
        layers = []
        for view in self.views:
            kept = view.name in maps
            q = _quote(view.name)
            layers.append(
                {
                    **view.info(),
                    "kept": kept,
                    "maps_url": f"/api/inside/{key}/maps?layer={q}" if kept else None,
                    "filters_url": f"/api/filters?layer={q}" if view.filters else None,
                    "filters_note": self._trimmed.get(view.name, ""),
                }
            )
        skipped = [v["name"] for v in layers if not v["kept"]]
        note = (
            f"{len(skipped)} layer(s) not kept for this request: their maps would pass the "
            f"{self.per_request_bytes >> 20} MB kept per request"
            if skipped
            else ""
        )
        return {
            "id": key,
            "expires_s": self.ttl_s,
            "first": self.views[0].name if self.views else None,
            "layers": layers,
            "normalisation": NORMALISATION,
            "max_tiles": MAX_TILES,
            "filters_note": "a Convolution's weights as stored (before any BatchNorm folding; border rows and columns "
            "that are zero in every filter left out), one tile per filter, RGB for a colour input",
            "note": note,
        }

    def maps_png(self, key: str, layer: str) -> bytes:
        """PNG grid of request `key`'s maps of `layer`. NotFound (expired id, layer not kept), VisualizeError
        (unknown layer, no spatial output)."""
        entry = self.get(key, reading=True)
        try:
            view = find_layer(self.net, layer)
            maps = entry.maps.get(view.name)
            if maps is None:
                raise NotFound(
                    f"the maps of layer {layer!r} were not kept for this request ({view.shape[0]} x {view.shape[1]} "
                    f"x {view.shape[2]} values; {self.per_request_bytes >> 20} MB are kept per request)"
                )
            return render_maps(maps).png()
        finally:
            self.done(entry)

    def filters_png(self, layer: str) -> bytes:
        """PNG grid of `layer`'s filters (cached: the weights do not change while serving). VisualizeError."""
        png = self._filters.get(layer)
        if png is None:
            png = layer_filters(self.net, find_layer(self.net, layer), bgr=self.bgr).png()
            with self._lock:
                self._filters[layer] = png
        return png


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")
