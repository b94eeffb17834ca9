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
"""

from __future__ import annotations

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
        self._rows: list[dict[str, np.ndarray]] = []  # the maps the running forward copied, per row
        self._kept: tuple[int, list[set[str]]] = (-1, [])  # (batch size, per row the layers its budget keeps)
        self._views_of: dict[str, list[LayerView]] = {}  # top -> the views that show it
        for view in self.views:
            self._views_of.setdefault(view.top, []).append(view)
        for top in self._views_of:
            net.observe(top, self._copy)  # held weakly: an Inside no longer used stops copying
        for view in self.views:
            if view.filters:
                w = net.params[view.name][0]
                cut = trim_zero_border(w)[1]
                self._trimmed[view.name] = (
                    f"stored as {w.shape[2]}x{w.shape[3]}: {cut}, zero in every filter, left out" if cut else ""
                )

    # -- capture (inference thread) ------------------------------------------------------------------------------
    def _budgets(self, n: int) -> list[set[str]]:
        """Per row of a batch of n, the layers whose maps it keeps: in net order while its budget lasts (the
        request's, and what the batch's leaves), from the sizes alone."""
        if self._kept[0] != n:
            rows: list[set[str]] = []
            batch_left = self.max_bytes
            for _ in range(n):
                left = min(self.per_request_bytes, batch_left)
                kept = set()
                for view in self.views:
                    size = min(view.shape[0], MAX_TILES) * view.shape[1] * view.shape[2] * 4  # float32
                    if size > left:
                        continue
                    kept.add(view.name)
                    left -= size
                    batch_left -= size
                rows.append(kept)
            self._kept = (n, rows)
        return self._kept[1]

    def _copy(self, top: str, data: np.ndarray) -> None:
        """Net.observe's callback: the rows' copies of the maps of the layers that show this blob, as the forward
        writes it."""
        n = len(data)
        if len(self._rows) != n:
            self._rows = [{} for _ in range(n)]
        for view in self._views_of[top]:
            c = min(view.shape[0], MAX_TILES)
            for i, kept in enumerate(self._budgets(n)):
                if view.name in kept:
                    self._rows[i][view.name] = np.array(data[i, :c], dtype=np.float32, copy=True)

    def capture(self, n: int) -> list[dict[str, np.ndarray]]:
        """Each of the last forward's n rows: {layer name: copy of its maps} within the budgets (module docstring);
        the copies are handed over (a second call before the next forward gets empty rows)."""
        rows = self._rows if len(self._rows) == n else [{} for _ in range(n)]
        self._rows = []
        return rows

    # -- the cache ---------------------------------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.created <= self.ttl_s and self._bytes <= self.max_bytes:
                break
            del self._entries[key]
            self._bytes -= entry.nbytes

    def store(self, maps: dict[str, np.ndarray]) -> str:
        """Keep one request's maps; returns its id (32 hex digits)."""
        key = secrets.token_hex(16)
        nbytes = sum(a.nbytes for a in maps.values())
        with self._lock:
            self._entries[key] = Entry(maps, nbytes, time.monotonic())
            self._bytes += nbytes
            self._expire(time.monotonic())
        return key

    def get(self, key: str) -> Entry:
        with self._lock:
            self._expire(time.monotonic())
            entry = self._entries.get(key)
        if entry is None:
            raise NotFound(
                f"no feature maps for request {key[:40]!r}: they are kept {self.ttl_s:g} s after the search (and "
                f"the oldest go first past {self.max_bytes >> 20} MB); search again"
            )
        return entry

    def stats(self) -> dict:
        with self._lock:
            self._expire(time.monotonic())
            return {"entries": len(self._entries), "bytes": self._bytes, "max_bytes": self.max_bytes,
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
        entry = self.get(key)
        view = find_layer(self.net, layer)
        maps = entry.maps.get(view.name)
        if maps is None:
            raise NotFound(
                f"the maps of layer {layer!r} were not kept for this request ({view.shape[0]} x {view.shape[1]} x "
                f"{view.shape[2]} values; {self.per_request_bytes >> 20} MB are kept per request)"
            )
        return render_maps(maps).png()

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
