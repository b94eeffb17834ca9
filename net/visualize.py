"""What the network sees, as PNG grids (Pillow + NumPy only): a layer's filters, its feature maps, the test images
a model gets wrong, and a confusion matrix.

    views = layer_views(net)                         # the Convolution / Pooling layers with spatial maps
    view = find_layer(net, "conv1")                  # VisualizeError naming the problem for anything else
    filters_grid(net.params["conv1"][0], bgr=True).png()   # (Cout, Cin, kh, kw) -> one tile per filter
    maps_grid(net.blobs["conv1"][0]).png()           # (C, H, W) -> one grey tile per channel
    errors_grid(images, true, pred, prob, labels)    # captioned tiles of misclassified inputs
    confusion_png(confusion_matrix(true, pred, k), labels)

The layout is Caffe's classification example (`vis_square`): a square-ish grid, ceil(sqrt(n)) columns, tiles in
row-major order, 1-pixel white separators between tiles. One difference, stated wherever the grids are shown:
every tile is normalised on its own (`normalise_tile`: min -> 0, max -> 255, halves rounded up; a constant tile is black),
where Caffe's example stretches the whole set with one min and max. A colour filter (3 input channels) is one tile
normalised over its three channels together, shown in RGB (input channels reversed when the model reads BGR).

Bounds: at most MAX_TILES (256) tiles in a filters or maps grid: the first 256 channels are shown and `Grid.note`
says so; a grid wider or taller than MAX_SIDE (4096) pixels is refused with a VisualizeError. Small tiles are
magnified by a whole factor (nearest neighbour: every value stays one uniform block) so a 3x3 filter reads.

A layer's map is its top blob at the end of the forward pass. Layers that rewrite that blob in place (BatchNorm,
Scale, ReLU, ReLU6, ...) have run by then, so conv1's map in a Caffe net with `relu1` in place is after the ReLU;
when the net fuses them (net.net.fuse_layers: BatchNorm + Scale folded into the weights, the activation applied in
the convolution's epilogue) the blob holds the same values. `LayerView.note` says which, in words.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "MAX_SIDE",
    "MAX_TILES",
    "NORMALISATION",
    "Grid",
    "LayerView",
    "Mistakes",
    "VisualizeError",
    "confusion_matrix",
    "confusion_png",
    "errors_grid",
    "filters_grid",
    "find_layer",
    "layer_filters",
    "layer_views",
    "maps_grid",
    "normalise_tile",
    "tile_grid",
    "trim_zero_border",
    "write_visualization",
]

MAX_TILES = 256
MAX_SIDE = 4096
PAD = 1  # separator width, pixels (white, as in Caffe's vis_square)
SPATIAL_TYPES = ("Convolution", "Deconvolution", "Pooling")
NORMALISATION = "each tile normalised on its own: its minimum is black, its maximum white (a constant tile is black)"
FILTER_TILE_PX = 24  # filters are magnified to at least this many pixels a side
MAP_TILE_PX = 48  # feature maps likewise
ERROR_TILE_PX = 72


class VisualizeError(ValueError):
    """A layer that cannot be shown (unknown, no spatial output, too large), named with the reason."""


# -- the layers -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerView:
    """A layer whose output can be shown as feature maps.

    name, type  the layer; top: the blob holding its maps; shape: (C, H, W) of one image's maps
    filters     True when its weights are 2-D images of the net input's channels (a Convolution reading the input)
    note        what the map is, in words (after which in-place layers, fused or not)
    """

    name: str
    type: str
    top: str
    shape: tuple[int, int, int]
    filters: bool
    note: str

    def info(self) -> dict:
        return {
            "name": self.name,
            "type": self.type,
            "blob": self.top,
            "shape": list(self.shape),
            "channels": self.shape[0],
            "shown": min(self.shape[0], MAX_TILES),
            "filters": self.filters,
            "note": self.note,
        }


def _in_place_chain(net, p: int) -> list:
    """The layers after layer p that rewrite its single top in place, in order (they stop at the first that
    does not)."""
    out = []
    if len(net.tops[p]) != 1:
        return out
    blob = net.tops[p][0]
    for i in range(p + 1, len(net.layers)):
        if len(net.bottoms[i]) == 1 and len(net.tops[i]) == 1 and net.bottoms[i][0] is blob and net.tops[i][0] is blob:
            out.append(net.layers[i])
        elif any(t is blob for t in net.tops[i]):
            break
    return out


def _note(net, p: int) -> str:
    layer = net.layers[p]
    chain = _in_place_chain(net, p)
    if not chain:
        return f"the output of {layer.type} '{layer.name}'"
    names = ", ".join(f"{c.type} '{c.name}'" for c in chain)
    fused = [c for c in chain if getattr(c, "fused", False)]
    text = f"the output of {layer.type} '{layer.name}' after {names} (applied in place)"
    if fused:
        how = []
        if getattr(layer, "fold", None) is not None:
            how.append("BatchNorm + Scale folded into its weights and bias")
        if getattr(layer, "fused_relu", False):
            how.append("the activation applied in its kernel")
        text += f"; fused here: {' and '.join(how) or 'computed by the convolution'}, the same values"
    return text


def layer_views(net) -> list[LayerView]:
    """The Convolution / Deconvolution / Pooling layers whose top has spatial maps (H * W > 1), in net order."""
    inputs = set(net.inputs)
    out = []
    for p, (layer, bottom, top) in enumerate(zip(net.layers, net.bottoms, net.tops)):
        if layer.type not in SPATIAL_TYPES or len(top) != 1 or len(top[0].shape) != 4:
            continue
        _, c, h, w = top[0].shape
        if h * w <= 1:
            continue
        filters = layer.type == "Convolution" and bool(bottom) and bottom[0].name in inputs
        out.append(LayerView(layer.name, layer.type, top[0].name, (c, h, w), filters, _note(net, p)))
    return out


def view_tops(net) -> tuple[str, ...]:
    """The blobs of layer_views (each view's top, once): what server.inside observes in every forward of `crema serve`,
    and so what `crema serve` and `crema warm` warm a model's plan up with (net.warm.forward_pass: the plan leaves
    observed blobs out of its fused steps, and runs other kernels there)."""
    return tuple(dict.fromkeys(view.top for view in layer_views(net)))


def find_layer(net, name: str) -> LayerView:
    """The LayerView named `name`; VisualizeError for an unknown layer or one without spatial maps, listing the
    layers that have them."""
    views = layer_views(net)
    for v in views:
        if v.name == name:
            return v
    have = ", ".join(v.name for v in views[:12]) + (f", ... ({len(views)} in all)" if len(views) > 12 else "")
    for layer, top in zip(net.layers, net.tops):
        if layer.name == name:
            shape = tuple(top[0].shape) if top else ()
            why = (
                f"its output {shape} has no spatial maps (H x W > 1)"
                if layer.type in SPATIAL_TYPES
                else f"it is a layer of type {layer.type} with output {shape}, not a Convolution or Pooling layer with maps"
            )
            raise VisualizeError(f"layer {name!r} cannot be shown: {why}; layers with feature maps: {have}")
    raise VisualizeError(f"no layer named {name!r} in net '{net.name}'; layers with feature maps: {have}")


# -- grids ------------------------------------------------------------------------------------------------------
@dataclass
class Grid:
    """A rendered grid: image (H, W) or (H, W, 3) uint8; boxes: each tile's (x, y, w, h) in tile order (the tile's
    pixels, magnified, without its caption); shown / total tiles; note: what was left out, or ""."""

    image: np.ndarray
    boxes: list[tuple[int, int, int, int]]
    shown: int
    total: int
    scale: int
    note: str = ""
    info: dict = field(default_factory=dict)

    def png(self, level: int = 6) -> bytes:
        """The grid as PNG bytes; level: zlib's compression level (6, Pillow's default; 1: ~5x faster to encode,
        ~14% larger, as the web app serves them)."""
        buf = io.BytesIO()
        Image.fromarray(self.image).save(buf, format="PNG", compress_level=level)
        return buf.getvalue()

    def save(self, path) -> None:
        Image.fromarray(self.image).save(path, format="PNG")


def normalise_tile(a: np.ndarray) -> np.ndarray:
    """One tile (h, w) or (h, w, 3) -> uint8: floor(255 * (a - min) / (max - min) + 0.5) in float64 (halves round
    up); a constant tile -> 0."""
    v = np.asarray(a, dtype=np.float64)
    lo, hi = float(v.min()), float(v.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise VisualizeError("the values to show are not all finite (NaN or inf)")
    if hi <= lo:
        return np.zeros(v.shape, np.uint8)
    return np.floor((v - lo) * (255.0 / (hi - lo)) + 0.5).astype(np.uint8)


def _magnify(h: int, w: int, target: int) -> int:
    return max(1, -(-target // max(h, w)))


def _layout(n: int) -> tuple[int, int]:
    cols = max(1, math.ceil(math.sqrt(n)))
    return -(-n // cols), cols


def tile_grid(
    tiles: np.ndarray,
    *,
    scale: int = 1,
    captions: Sequence[Sequence[str]] | None = None,
    total: int | None = None,
    note: str = "",
) -> Grid:
    """uint8 tiles (N, h, w) or (N, h, w, 3) -> a Grid: ceil(sqrt(N)) columns, row-major, PAD-pixel white
    separators, each tile magnified `scale` times (nearest); `captions`: lines of text under each tile."""
    tiles = np.asarray(tiles)
    if tiles.dtype != np.uint8 or tiles.ndim not in (3, 4) or (tiles.ndim == 4 and tiles.shape[-1] != 3):
        raise ValueError(f"tile_grid: expected uint8 (N, h, w) or (N, h, w, 3), got {tiles.dtype} {tiles.shape}")
    n, h, w = tiles.shape[:3]
    if n == 0:
        raise VisualizeError("nothing to show: no tiles")
    th, tw = h * scale, w * scale
    font = ImageFont.load_default()
    lines = max((len(c) for c in captions), default=0) if captions is not None else 0
    line_h = (font.getbbox("Ag")[3] + 3) if lines else 0
    cap_h = lines * line_h + (2 if lines else 0)
    rows, cols = _layout(n)
    width, height = cols * (tw + PAD) - PAD, rows * (th + cap_h + PAD) - PAD
    if max(width, height) > MAX_SIDE:
        raise VisualizeError(
            f"the grid would be {width} x {height} pixels ({n} tiles of {h} x {w}), over the {MAX_SIDE}-pixel "
            f"limit: choose a layer with smaller maps"
        )
    shape = (height, width, 3) if tiles.ndim == 4 else (height, width)
    image = np.full(shape, 255, np.uint8)
    boxes = []
    for k in range(n):
        r, c = divmod(k, cols)
        x, y = c * (tw + PAD), r * (th + cap_h + PAD)
        t = tiles[k]
        if scale > 1:
            t = np.repeat(np.repeat(t, scale, axis=0), scale, axis=1)
        image[y : y + th, x : x + tw] = t
        boxes.append((x, y, tw, th))
    if lines:
        pil = Image.fromarray(image)
        draw = ImageDraw.Draw(pil)
        for (x, y, tw_, th_), cap in zip(boxes, captions):
            for j, text in enumerate(cap):
                draw.text((x + 1, y + th_ + 1 + j * line_h), text, fill=0 if tiles.ndim == 3 else (0, 0, 0), font=font)
        image = np.asarray(pil).copy()
    return Grid(image, boxes, n, total if total is not None else n, scale, note)


def _cap(count: int, what: str, max_tiles: int) -> tuple[int, str]:
    if count <= max_tiles:
        return count, ""
    return max_tiles, f"showing the first {max_tiles} of {count} {what} (at most {max_tiles} tiles)"


def filters_grid(
    weights: np.ndarray, *, bgr: bool = False, max_tiles: int = MAX_TILES, scale: int | None = None
) -> Grid:
    """Convolution weights (Cout, Cin, kh, kw) with Cin 1 (grey tiles) or 3 (colour, RGB; `bgr`: the input
    channels are B, G, R and are reversed) -> one tile per output channel, normalised per tile."""
    w = np.asarray(weights)
    if w.ndim != 4 or w.shape[1] not in (1, 3):
        raise VisualizeError(
            f"filters of shape {tuple(w.shape)} are not images: only filters over 1 (grey) or 3 (colour) input "
            f"channels can be shown"
        )
    shown, note = _cap(w.shape[0], "filters", max_tiles)
    w = w[:shown]
    if w.shape[1] == 3:
        w = w[:, ::-1] if bgr else w
        tiles = np.stack([normalise_tile(f.transpose(1, 2, 0)) for f in w])
    else:
        tiles = np.stack([normalise_tile(f[0]) for f in w])
    s = scale or _magnify(w.shape[2], w.shape[3], FILTER_TILE_PX)
    return tile_grid(tiles, scale=s, total=int(weights.shape[0]), note=note)


def maps_grid(maps: np.ndarray, *, max_tiles: int = MAX_TILES, scale: int | None = None) -> Grid:
    """One image's feature maps (C, H, W) -> one grey tile per channel, normalised per tile."""
    m = np.asarray(maps)
    if m.ndim != 3 or m.shape[1] * m.shape[2] <= 1:
        raise VisualizeError(f"feature maps of shape {tuple(m.shape)} have no spatial extent to show")
    shown, note = _cap(m.shape[0], "channels", max_tiles)
    s = scale or _magnify(m.shape[1], m.shape[2], MAP_TILE_PX)
    return tile_grid(np.stack([normalise_tile(c) for c in m[:shown]]), scale=s, total=int(m.shape[0]), note=note)


def layer_filters(net, view: LayerView, *, bgr: bool = False) -> Grid:
    """The filters grid of a LayerView whose `filters` is set; VisualizeError saying why otherwise."""
    if not view.filters:
        raise VisualizeError(
            f"layer {view.name!r} ({view.type}) has no filters to show as images: only a Convolution that reads "
            f"the net's input has filters over the picture's channels"
        )
    w, trimmed = trim_zero_border(net.params[view.name][0])
    grid = filters_grid(w, bgr=bgr)
    if trimmed:
        stored = net.params[view.name][0].shape
        left_out = f"{stored[2]}x{stored[3]} as stored; {trimmed}, zero in every filter, left out"
        grid.note = f"{left_out}; {grid.note}" if grid.note else left_out
    grid.info = {"layer": view.name, "kind": "filters", "normalisation": NORMALISATION}
    return grid


def trim_zero_border(weights: np.ndarray) -> tuple[np.ndarray, str]:
    """Drop border rows and columns that are exactly zero in every filter of (Cout, Cin, kh, kw) weights (a kernel
    padded to emulate TF's asymmetric SAME padding: net.efficientnet stores EfficientNet's stride-2 3x3 kernels as
    4x4 with a zero first row and column) -> (the weights without them, what was dropped, e.g. "the first row and
    column"; "" when nothing)."""
    w = np.asarray(weights)
    if not w.any():
        return w, ""
    cut = {("first", "row"): 0, ("last", "row"): 0, ("first", "column"): 0, ("last", "column"): 0}
    while w.shape[2] > 1 and not w[:, :, 0].any():
        w, cut["first", "row"] = w[:, :, 1:], cut["first", "row"] + 1
    while w.shape[2] > 1 and not w[:, :, -1].any():
        w, cut["last", "row"] = w[:, :, :-1], cut["last", "row"] + 1
    while w.shape[3] > 1 and not w[:, :, :, 0].any():
        w, cut["first", "column"] = w[:, :, :, 1:], cut["first", "column"] + 1
    while w.shape[3] > 1 and not w[:, :, :, -1].any():
        w, cut["last", "column"] = w[:, :, :, :-1], cut["last", "column"] + 1
    parts = [f"{end} {kind}" if n == 1 else f"{end} {n} {kind}s" for (end, kind), n in cut.items() if n]
    return w, ("the " + " and ".join(parts)) if parts else ""


# -- mistakes ---------------------------------------------------------------------------------------------------
def errors_grid(
    images: np.ndarray,
    true: Sequence[int],
    pred: Sequence[int],
    prob: Sequence[float],
    labels: Sequence[str] | None = None,
    *,
    max_tiles: int = 1024,
) -> Grid:
    """Misclassified inputs (N, C, H, W) (C = 1 or 3, as the net saw them) -> captioned tiles "true T" /
    "got P 93.1%", normalised together (one min and max for the grid, so they look as the net saw them)."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or not len(x):
        raise VisualizeError(f"errors_grid: expected images (N, 1 or 3, H, W) with N > 0, got {x.shape}")
    shown, note = _cap(len(x), "misclassified images", max_tiles)
    x = x[:shown]
    lo, hi = float(x.min()), float(x.max())
    u8 = np.zeros(x.shape, np.uint8) if hi <= lo else np.floor((x - lo) * (255.0 / (hi - lo)) + 0.5).astype(np.uint8)
    tiles = u8[:, 0] if x.shape[1] == 1 else u8.transpose(0, 2, 3, 1)

    def name(i: int) -> str:
        return labels[i].split(",")[0][:12] if labels is not None and i < len(labels) else str(i)

    captions = [
        [f"true {name(int(t))}", f"got {name(int(p))} {100 * float(q):.1f}%"] for t, p, q in zip(true, pred, prob)
    ]
    grid = tile_grid(tiles, scale=_magnify(x.shape[2], x.shape[3], ERROR_TILE_PX), captions=captions[:shown])
    grid.total, grid.note = len(images), note
    return grid


def confusion_matrix(true: Sequence[int], pred: Sequence[int], classes: int) -> np.ndarray:
    """(classes, classes) int64 counts: row = true class, column = predicted class."""
    t, p = np.asarray(true, np.int64), np.asarray(pred, np.int64)
    bad = (t < 0) | (t >= classes) | (p < 0) | (p >= classes)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"confusion_matrix: classes must be in 0..{classes - 1}, got true {t[k]}, predicted {p[k]}")
    return np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)


def confusion_png(matrix: np.ndarray, labels: Sequence[str] | None = None) -> bytes:
    """The confusion matrix as a PNG: rows true classes, columns predictions, each cell shaded by its share of its
    row (white 0 -> dark 1) with its count written in it (when cells are large enough: 20 classes or fewer)."""
    m = np.asarray(matrix)
    k = m.shape[0]
    cell = 28 if k <= 20 else max(2, min(12, 2400 // k))
    font = ImageFont.load_default()

    def name(i: int) -> str:
        return (labels[i].split(",")[0] if labels is not None and i < len(labels) else str(i))[:10]

    margin = 80 if k <= 20 else 20
    side = margin + k * cell + 10
    img = Image.new("RGB", (side, side + 20), "white")
    draw = ImageDraw.Draw(img)
    draw.text((margin, 2), "columns: predicted class", fill="black", font=font)
    draw.text((margin, 16), "rows: true class", fill="black", font=font)
    rows = np.maximum(m.sum(axis=1, keepdims=True), 1)
    share = m / rows
    for i in range(k):
        for j in range(k):
            x, y = margin + j * cell, margin + i * cell
            v = round(255 * (1 - float(share[i, j])))
            color = (v, v, 255) if i == j else (255, v, v)
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=color, outline=(220, 220, 220) if k <= 20 else None)
            if k <= 20 and m[i, j]:
                ink = "white" if share[i, j] > 0.5 else "black"
                draw.text((x + 2, y + 8), str(int(m[i, j])), fill=ink, font=font)
        if k <= 20:
            draw.text((2, margin + i * cell + 8), name(i), fill="black", font=font)
            draw.text((margin + i * cell + 2, margin - 14), name(i)[:4], fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# -- a test run's mistakes ----------------------------------------------------------------------------------------
class Mistakes:
    """Collects, batch by batch, the test images a net gets wrong by the rule of its first Accuracy layer (Caffe's:
    correct iff #{k : score_k >= score_true} <= top_k; ignore_label skipped), for `crema test --errors DIR`.

        mistakes = Mistakes(net)          # VisualizeError when the net has no Accuracy layer or image data
        for _ in range(iterations):
            net.forward_loss(); mistakes.add()
        mistakes.write(out_dir)           # errors.png, errors.csv, confusion.png, confusion.csv

    Per misclassified image: its index in the data set (TEST reads in stored order), the true class, the predicted
    class (the highest score other than the true class's: with top_k 1, the class that beat it) and its probability
    (the scores' softmax, or the scores themselves when a Softmax layer made them). The confusion matrix counts
    every scored image by true class and argmax (first on ties).
    """

    def __init__(self, net) -> None:
        acc = next((i for i, layer in enumerate(net.layers) if layer.type == "Accuracy"), None)
        if acc is None:
            raise VisualizeError(f"net '{net.name}' has no Accuracy layer, so there is no rule for a mistake")
        layer = net.layers[acc]
        self.net = net
        self.top_k, self.ignore = layer.top_k, layer.ignore_label
        self.scores, self.label = net.bottoms[acc][0].name, net.bottoms[acc][1].name
        producer = next(
            (ly for ly, tops in zip(net.layers, net.tops) if any(t.name == self.scores for t in tops)), None
        )
        self.softmaxed = producer is not None and producer.type == "Softmax"
        data = next((i for i, ly in enumerate(net.layers) if ly.type == "Data"), None)
        if data is None:
            raise VisualizeError(f"net '{net.name}' has no Data layer whose images could be shown")
        self.data_layer = net.layers[data]
        self.data = net.tops[data][0].name
        shape = net.blob(self.data).shape
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise VisualizeError(f"the data blob '{self.data}' has shape {shape}: only 1- or 3-channel images show")
        if len(net.blob(self.scores).shape) != 2 or layer.axis != 1:
            raise VisualizeError(
                f"scores '{self.scores}' of shape {net.blob(self.scores).shape}: expected (N, classes)"
            )
        self.classes = net.blob(self.scores).shape[1]
        self.images: list[np.ndarray] = []
        self.rows: list[tuple[int, int, int, float]] = []  # (index, true, predicted, probability)
        self.confusion = np.zeros((self.classes, self.classes), np.int64)
        self.seen = 0
        self._next = 0

    def before(self) -> None:
        """Call before each forward: notes where in the data set the batch starts."""
        layer = self.data_layer
        n = layer.images.shape[0]
        self._next = 0 if layer.position >= n else layer.position

    def add(self) -> None:
        """Score the batch the last forward ran (call `before` first for true data-set indices)."""
        s = np.asarray(self.net.blobs[self.scores], np.float64)
        y = np.asarray(self.net.blobs[self.label]).reshape(-1).astype(np.int64)
        n_data = self.data_layer.images.shape[0]
        probs = s if self.softmaxed else np.exp(s - s.max(axis=1, keepdims=True))
        if not self.softmaxed:
            probs /= probs.sum(axis=1, keepdims=True)
        valid = y != self.ignore if self.ignore is not None else np.ones(len(y), bool)
        np.add.at(self.confusion, (y[valid], np.argmax(s[valid], axis=1)), 1)
        x = self.net.blobs[self.data]
        for j in np.flatnonzero(valid):
            t = int(y[j])
            rank = int(np.sum(s[j] >= s[j, t]))
            if rank <= self.top_k:
                continue
            others = s[j].copy()
            others[t] = -np.inf
            p = int(np.argmax(others))
            self.rows.append(((self._next + int(j)) % n_data, t, p, float(probs[j, p])))
            self.images.append(np.array(x[j], np.float32))
        self.seen += int(valid.sum())

    def write(self, out) -> list:
        """Write errors.png (when there are errors), errors.csv, confusion.png, confusion.csv into `out`; returns
        the paths written."""
        from pathlib import Path

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        csv = out / "errors.csv"
        lines = ["index,true,predicted,probability"] + [f"{i},{t},{p},{q:.6f}" for i, t, p, q in self.rows]
        csv.write_text("\n".join(lines) + "\n")
        written.append(csv)
        if self.rows:
            grid = errors_grid(np.stack(self.images), *zip(*[(t, p, q) for _, t, p, q in self.rows]))
            grid.save(out / "errors.png")
            written.append(out / "errors.png")
            self.grid = grid
        (out / "confusion.png").write_bytes(confusion_png(self.confusion))
        header = "true\\predicted," + ",".join(str(k) for k in range(self.classes))
        body = [f"{k}," + ",".join(str(int(v)) for v in row) for k, row in enumerate(self.confusion)]
        (out / "confusion.csv").write_text("\n".join([header, *body]) + "\n")
        written += [out / "confusion.png", out / "confusion.csv"]
        return written


# -- crema visualize ------------------------------------------------------------------------------------------------
def write_visualization(net, out, *, layer: str | None = None, image=None, pre=None) -> list[tuple[object, str]]:
    """`crema visualize`: the filters grid of `layer` (default: the first layer with maps) where its filters are
    images, and with `image` (anything net.preprocess.load_image reads) preprocessed by `pre`, the feature-map grid
    of one forward. Writes `<layer>_filters.png` / `<layer>_maps.png` into `out` ('/' in names becomes '_');
    returns [(path, what it shows)]. VisualizeError for a layer that cannot be shown or nothing to write."""
    from pathlib import Path

    views = layer_views(net)
    if not views:
        raise VisualizeError(f"net '{net.name}' has no Convolution or Pooling layer with spatial maps")
    view = find_layer(net, layer) if layer is not None else views[0]
    if not view.filters and image is None:
        raise VisualizeError(
            f"layer {view.name!r} ({view.type}) has no filters to show as images (only a Convolution reading the "
            f"input has); give an IMAGE to see its feature maps"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = view.name.replace("/", "_").replace("\\", "_")
    bgr = bool(pre is not None and pre.color and pre.channel_swap)
    jobs = []
    if view.filters:
        jobs.append(("filters", lambda: layer_filters(net, view, bgr=bgr)))
    if image is not None:
        from .preprocess import load_image

        x = pre(load_image(image))
        net.forward(**{net.inputs[0]: x[None]})

        def maps() -> Grid:
            return maps_grid(net.blobs[view.top][0])

        jobs.append(("maps", maps))
    grids = [(kind, render()) for kind, render in jobs]  # all rendered (or refused) before anything is written
    written = []
    for kind, grid in grids:
        path = out / f"{stem}_{kind}.png"
        grid.save(path)
        if kind == "filters":
            what = (
                f"{grid.shown} filters of {view.name}, weights as stored, {'RGB' if grid.image.ndim == 3 else 'grey'}"
            )
        else:
            what = f"{grid.shown} feature maps of {view.name} ({view.note})"
        if grid.note:
            what += f"; {grid.note}"
        written.append((path, f"{what}; tiles magnified {grid.scale}x, {NORMALISATION}"))
    return written
