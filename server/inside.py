"""Inside the network, per search: the feature maps of a search's picture, computed when they are asked for.

    inside = Inside(model.net, bgr=..., max_bytes=256 << 20, ttl_s=600)
    entry_id = inside.store(x)                # event loop: the search's preprocessed input (C, H, W) under a random id
    inside.describe(entry_id)                 # the JSON of /api/search's `inside`
    maps = inside.maps(entry_id, "conv1")     # inference thread: one forward of that input on the maps copy
    inside.maps_png(maps)                     # PNG grid of them (net.visualize.maps_grid), any thread
    inside.filters_png("conv1")               # PNG grid of the layer's filters (weights do not change)

The search's own forward observes nothing, so the model's plan fuses what it can (an expand with its depthwise,
the handoffs in blocks) and copies nothing: on the 2-core Zen 4 machine a served EfficientNet-Lite0 search's
forward went from 10.0 to 6.4 ms (median, batch 1) and 16 clients' throughput from 30.7 to 53.4 searches a second
when the maps stopped being copied in every forward (22.6 MB a search). What a search keeps is its input (602 KB
for EfficientNet-Lite0, 3 KB for LeNet), for `ttl_s` seconds, the oldest going first past `max_bytes`. A maps
request runs the kept input through a batch-1 copy of the net (``net.per_image.replica``: the same parameter Blobs
and folded weights, activations shared the same way) that observes every shown layer's blob (``Net.observe``:
right after the layer's maps are written, before a later layer reuses their memory) and copies the asked layer's
first MAX_TILES channels: the same values as the search's forward had (the same input, the same weights; a fused
plan sums in the same order up to float32 rounding of the fused steps), at the cost of one batch-1 forward (~6 ms
for EfficientNet-Lite0) on the inference thread (server.batcher.MicroBatcher.call: never at the same time as a
search's forward). The copy and its plan are made at the first maps request (or by `warm`); `crema serve` compiles
that plan's kernels after the server is up, in the background (net.warm.start_prepare's `later`), and the app's maps
requests wait for them (server.app: AppConfig.inside_ready).
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
    view_tops,
)
from net.visualize import maps_grid as render_maps

__all__ = ["Entry", "Inside", "NotFound"]

# zlib level of the PNGs served: 1 encodes EfficientNet-Lite0's stem grid (677 x 677) in 14 ms against 69 at Pillow's
# default 6, for 14% more bytes (258 against 226 KB)
PNG_LEVEL = 1
PNG_CACHE_BYTES = 16 << 20  # the last maps PNGs kept, by (request id, layer)


class NotFound(LookupError):
    """An unknown or expired request id (message in plain words)."""


@dataclass
class Entry:
    x: np.ndarray  # the search's preprocessed input (C, H, W) float32
    created: float


class Inside:
    """See the module docstring. Thread-safe: `maps` and `warm` run on the inference thread (it alone runs the copy of
    the net), the rest anywhere. The PNGs of the last maps requests are kept (`PNG_CACHE_BYTES`): a page that shows a
    layer again gets it without another forward."""

    def __init__(
        self,
        net,
        *,
        bgr: bool,
        max_bytes: int = 256 << 20,
        ttl_s: float = 600.0,
    ) -> None:
        self.net = net
        self.bgr = bgr
        self.views: list[LayerView] = layer_views(net)
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.forwards = 0  # maps forwards run
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._filters: dict[str, bytes] = {}
        self._trimmed = {}  # layer -> what its filters grid leaves out (net.visualize.trim_zero_border), or ""
        self._twin = None  # the batch-1 copy of the net that observes the shown layers (made at the first maps call)
        self._views_of: dict[str, list[LayerView]] = {}  # top -> the views that show it
        for view in self.views:
            self._views_of.setdefault(view.top, []).append(view)
        self._pngs: OrderedDict[tuple[str, str], bytes] = OrderedDict()  # (id, layer) -> PNG, the newest last
        self._png_bytes = 0
        self._want: LayerView | None = None  # the layer the running maps forward copies
        self._got: np.ndarray | None = None
        for view in self.views:
            if view.filters:
                w = net.params[view.name][0]
                cut = trim_zero_border(w)[1]
                self._trimmed[view.name] = (
                    f"stored as {w.shape[2]}x{w.shape[3]}: {cut}, zero in every filter, left out" if cut else ""
                )

    # -- the cache of inputs ---------------------------------------------------------------------------------------
    def store(self, x: np.ndarray) -> str:
        """Keep one search's preprocessed input (C, H, W), not copied (the caller does not change it); returns its id
        (32 hex digits)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        key = secrets.token_hex(16)
        with self._lock:
            self._entries[key] = Entry(x, time.monotonic())
            self._bytes += x.nbytes
            self._expire(time.monotonic())
        return key

    def _expire(self, now: float) -> None:
        """(lock held) Drop entries past ttl_s or past max_bytes (oldest first)."""
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.created <= self.ttl_s and self._bytes <= self.max_bytes:
                break
            del self._entries[key]
            self._bytes -= entry.x.nbytes

    def get(self, key: str) -> Entry:
        """The entry of request `key`; NotFound when unknown or expired."""
        with self._lock:
            self._expire(time.monotonic())
            entry = self._entries.get(key)
        if entry is None:
            raise NotFound(
                f"no feature maps for request {key[:40]!r}: a search's picture is kept {self.ttl_s:g} s for them (and "
                f"the oldest go first past {self.max_bytes >> 20} MB); search again"
            )
        return entry

    def stats(self) -> dict:
        with self._lock:
            self._expire(time.monotonic())
            return {"entries": len(self._entries), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "ttl_s": self.ttl_s, "forwards": self.forwards}  # fmt: skip

    # -- maps (inference thread) -----------------------------------------------------------------------------------
    def maps(self, key: str, layer: str) -> np.ndarray:
        """Request `key`'s maps of `layer` (its first MAX_TILES channels, (C', H, W) float32, a copy): one forward of
        the kept input on the copy of the net that observes the shown layers. Run it where the model's forwards run
        (Net.forward is not re-entrant; kernels.taskpool is one pool). NotFound (expired id), VisualizeError (unknown
        layer, no spatial output)."""
        view = find_layer(self.net, layer)
        got = self._forward(self.get(key).x, view)
        self.forwards += 1
        return got

    def warm(self) -> None:
        """The copy of the net made and run once on zeros (inference thread): the first maps request then finds its
        plan ready (its kernels loaded)."""
        if self.views:
            self._forward(np.zeros(self.net.blobs[self.net.inputs[0]].shape[1:], np.float32), self.views[0])

    def _forward(self, x: np.ndarray, view: LayerView) -> np.ndarray:
        twin = self._twin
        if twin is None:
            from net.per_image import replica

            twin = replica(self.net)
            for top in view_tops(twin):
                twin.observe(top, self._copy)  # held weakly: ends with this Inside
            self._twin = twin
        self._want, self._got = view, None
        try:
            twin.forward(**{twin.inputs[0]: x[None]})
            got = self._got
        finally:
            self._want = self._got = None
        if got is None:  # pragma: no cover - every view's top is observed
            raise RuntimeError(f"inside: the forward wrote no maps for layer {view.name!r}")
        return got

    def _copy(self, top: str, data: np.ndarray) -> None:
        """Net.observe's callback (the copy's forward): the asked layer's maps, as the forward writes them."""
        want = self._want
        if want is not None and want.top == top:
            self._got = data[0, : min(want.shape[0], MAX_TILES)].copy()

    # -- what the API shows ------------------------------------------------------------------------------------
    def describe(self, key: str) -> dict:
        """/api/search's `inside`: the request's id and, per layer, what its map is and where its PNGs are."""
        layers = []
        for view in self.views:
            q = _quote(view.name)
            layers.append(
                {
                    **view.info(),
                    "maps_url": f"/api/inside/{key}/maps?layer={q}",
                    "filters_url": f"/api/filters?layer={q}" if view.filters else None,
                    "filters_note": self._trimmed.get(view.name, ""),
                }
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
        }

    @staticmethod
    def maps_png(maps: np.ndarray) -> bytes:
        """PNG grid of `maps` (from `maps`); VisualizeError for a grid over MAX_SIDE."""
        return render_maps(maps).png(PNG_LEVEL)

    def cached_png(self, key: str, layer: str) -> bytes | None:
        """The PNG of request `key`'s maps of `layer` if it was made lately (`keep_png`) and the request is still
        kept; else None."""
        with self._lock:
            png = self._pngs.get((key, layer))
            if png is not None:
                self._pngs.move_to_end((key, layer))
        return png if png is not None and key in self._entries else None

    def keep_png(self, key: str, layer: str, png: bytes) -> None:
        """Keep a maps PNG for `cached_png`, the oldest going first past PNG_CACHE_BYTES."""
        if len(png) > PNG_CACHE_BYTES:
            return
        with self._lock:
            old = self._pngs.pop((key, layer), None)
            self._png_bytes += len(png) - (len(old) if old is not None else 0)
            self._pngs[(key, layer)] = png
            while self._png_bytes > PNG_CACHE_BYTES:
                self._png_bytes -= len(self._pngs.popitem(last=False)[1])

    def filters_png(self, layer: str) -> bytes:
        """PNG grid of `layer`'s filters (cached: the weights do not change while serving). VisualizeError."""
        png = self._filters.get(layer)
        if png is None:
            png = layer_filters(self.net, find_layer(self.net, layer), bgr=self.bgr).png(PNG_LEVEL)
            with self._lock:
                self._filters[layer] = png
        return png


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")
