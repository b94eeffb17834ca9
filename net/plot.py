"""A training chart drawn with Pillow: training loss (top panel) and test accuracy (bottom panel)
against iterations. No plotting library needed."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, PANEL_H, MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 800, 260, 70, 20, 30, 40


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    out = []
    v = first
    while v <= hi + 1e-12:
        out.append(round(v, 10))
        v += step
    return out


def _panel(
    draw: ImageDraw.ImageDraw, top: int, title: str, xs: Sequence[float], ys: Sequence[float], color, x_max: float
):
    left, right, bottom = MARGIN_L, WIDTH - MARGIN_R, top + PANEL_H - MARGIN_B
    ptop = top + MARGIN_T
    draw.text((left, top + 8), title, fill="black")
    draw.rectangle([left, ptop, right, bottom], outline="black")
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    if not pts:
        draw.text((left + 10, ptop + 10), "no data", fill="gray")
        return
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def sx(x: float) -> float:
        return left + (right - left) * (x / x_max if x_max else 0.0)

    def sy(y: float) -> float:
        return bottom - (bottom - ptop) * (y - lo) / (hi - lo)

    for t in _ticks(lo, hi):
        y = sy(t)
        draw.line([left, y, right, y], fill=(225, 225, 225))
        draw.text((5, y - 6), f"{t:.4g}", fill="black")
    for t in _ticks(0, x_max):
        x = sx(t)
        draw.line([x, bottom, x, bottom + 4], fill="black")
        draw.text((x - 12, bottom + 8), f"{int(t)}", fill="black")
    line = [(sx(x), sy(y)) for x, y in pts]
    if len(line) > 1:
        draw.line(line, fill=color, width=2)
    for x, y in line[-1:]:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)


def plot_training(records: Sequence[dict], path: str | os.PathLike, *, accuracy_key: str = "accuracy") -> None:
    """Write a PNG chart of `records` (dicts with iter, phase 'train' + loss, or 'test0' + accuracy)."""
    train = [r for r in records if r.get("phase") == "train"]
    test = [r for r in records if str(r.get("phase", "")).startswith("test") and accuracy_key in r]
    x_max = max([r["iter"] for r in records] + [1])
    img = Image.new("RGB", (WIDTH, 2 * PANEL_H), "white")
    draw = ImageDraw.Draw(img)
    _panel(draw, 0, "training loss", [r["iter"] for r in train], [r.get("loss") for r in train], (200, 40, 40), x_max)
    _panel(
        draw,
        PANEL_H,
        f"test {accuracy_key}",
        [r["iter"] for r in test],
        [r[accuracy_key] for r in test],
        (30, 90, 200),
        x_max,
    )
    draw.text((WIDTH // 2 - 30, 2 * PANEL_H - 16), "iterations", fill="black")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
