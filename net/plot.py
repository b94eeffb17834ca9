"""The training chart (`<snapshot_prefix>_chart.png`), drawn with Pillow: no plotting library.

    plot_training(solver.records, "lenet_chart.png")
    layout = chart_layout(records)      # what the chart shows: ranges, smoothed loss, final figures

Top panel: the training loss on a log scale (it falls over decades), each logged value a light dot and a darker
line through their centred running mean (in log space, over a window of ~1/25 of the points), so the trend reads through
the noise. Bottom panel: test accuracy on an axis zoomed to its own range (97-99.2% is a flat line at the top of a
0-1 axis), in percent: the range of the last three quarters of the test points (and the best), so the first tests'
climb from chance does not flatten the rest; earlier points below the axis sit on its bottom edge as hollow marks
and the panel says how many. Both share the iteration axis from 0 to the last iteration. The final figures are written
above the panels. The records are the solver's whole history: a resumed run carries the rows before its resume
point (net.snapshots.read_log), so the chart covers every iteration since the first start.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .paths import write_atomic

__all__ = ["ChartLayout", "chart_layout", "plot_training", "smooth"]

WIDTH, PANEL_H, HEADER_H = 900, 300, 46
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 96, 24, 26, 46
LOSS_COLOR, LOSS_RAW = (190, 40, 40), (236, 178, 178)
ACC_COLOR = (30, 90, 200)


@dataclass(frozen=True)
class ChartLayout:
    """What the chart shows. loss_range: (lo, hi) of the log10 axis (decades); acc_range: (lo, hi) of the accuracy
    axis (fractions, within 0..1); x_max: the last iteration; final: the final figures' line."""

    train_iters: list[int]
    loss: list[float]
    smoothed: list[float]
    test_iters: list[int]
    accuracy: list[float]
    loss_range: tuple[float, float] | None
    acc_range: tuple[float, float] | None
    x_max: int
    final: str


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Centred running mean of log10(values) over `window` points (fewer at the ends), returned as values (a
    geometric mean): centred, so the line does not lag the points."""
    logs = np.log10(np.asarray(values, dtype=np.float64))
    half = max(0, window // 2)
    return [float(10 ** logs[max(0, i - half) : i + half + 1].mean()) for i in range(len(logs))]


def _nice_step(span: float, n: int = 5) -> float:
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    step = _nice_step(hi - lo, n)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + k * step, 10) for k in range(int((hi - first) / step + 1e-9) + 1)]


def chart_layout(records: Sequence[dict], *, accuracy_key: str = "accuracy") -> ChartLayout:
    """The chart's content from the solver's records (dicts with iter, phase 'train' + loss, or 'test0' + accuracy).
    Non-positive or non-finite losses are left out of the log axis."""
    train = [r for r in records if r.get("phase") == "train" and _finite(r.get("loss")) and float(r["loss"]) > 0]
    test = [r for r in records if str(r.get("phase", "")).startswith("test") and _finite(r.get(accuracy_key))]
    train_iters, loss = [int(r["iter"]) for r in train], [float(r["loss"]) for r in train]
    test_iters, acc = [int(r["iter"]) for r in test], [float(r[accuracy_key]) for r in test]
    smoothed = smooth(loss, max(1, round(len(loss) / 25))) if loss else []
    loss_range = None
    if loss:
        lo, hi = math.floor(math.log10(min(loss))), math.ceil(math.log10(max(loss)))
        loss_range = (float(lo), float(hi if hi > lo else lo + 1))
    acc_range = None
    if acc:
        tail = acc[len(acc) // 4 :] if len(acc) >= 4 else acc  # the early climb from chance would flatten the rest
        lo, hi = min(tail), max(acc)
        pad = max(0.1 * (hi - lo), 0.002)
        lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
        step = _nice_step(hi - lo)
        acc_range = (max(0.0, math.floor(lo / step) * step), min(1.0, math.ceil(hi / step) * step))
    x_max = max([int(r["iter"]) for r in records if "iter" in r] + [1])
    parts = []
    if loss:
        parts.append(f"final training loss {loss[-1]:.4g} (smoothed {smoothed[-1]:.4g}) at iteration {train_iters[-1]}")
    if acc:
        best = int(np.argmax(acc))
        parts.append(
            f"test {accuracy_key} {100 * acc[-1]:.2f}% at iteration {test_iters[-1]} "
            f"(best {100 * acc[best]:.2f}% at {test_iters[best]})"
        )
    final = " · ".join(parts) or "no records yet"
    return ChartLayout(train_iters, loss, smoothed, test_iters, acc, loss_range, acc_range, x_max, final)


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _vertical_text(img: Image.Image, xy: tuple[int, int], text: str, font) -> None:
    """`text` rotated 90 degrees (reading upwards) with its centre at xy."""
    box = font.getbbox(text)
    label = Image.new("L", (box[2] + 4, box[3] + 4), 0)
    ImageDraw.Draw(label).text((2, 0), text, fill=255, font=font)
    label = label.rotate(90, expand=True)
    img.paste((0, 0, 0), (xy[0] - label.width // 2, xy[1] - label.height // 2), label)


def _panel(img: Image.Image, top: int, title: str, ytitle: str, font) -> tuple[int, int, int, int]:
    draw = ImageDraw.Draw(img)
    left, right, ptop, bottom = MARGIN_L, WIDTH - MARGIN_R, top + MARGIN_T, top + PANEL_H - MARGIN_B
    draw.text((left, top + 6), title, fill="black", font=font)
    draw.rectangle([left, ptop, right, bottom], outline="black")
    _vertical_text(img, (22, (ptop + bottom) // 2), ytitle, font)
    return left, ptop, right, bottom


def _x_axis(draw: ImageDraw.ImageDraw, box, x_max: int, font) -> None:
    left, _, right, bottom = box
    for t in _ticks(0, x_max):
        x = left + (right - left) * t / x_max
        draw.line([x, bottom, x, bottom + 4], fill="black")
        draw.text((x - 12, bottom + 7), f"{int(t)}", fill="black", font=font)
    draw.text(((left + right) // 2 - 24, bottom + 24), "iteration", fill="black", font=font)


def plot_training(records: Sequence[dict], path: str | os.PathLike, *, accuracy_key: str = "accuracy") -> None:
    """Write the chart of `records` (see the module docstring) as a PNG, atomically."""
    lay = chart_layout(records, accuracy_key=accuracy_key)
    font = ImageFont.load_default()
    img = Image.new("RGB", (WIDTH, HEADER_H + 2 * PANEL_H), "white")
    draw = ImageDraw.Draw(img)
    draw.text((MARGIN_L, 8), lay.final, fill="black", font=font)
    draw.text((MARGIN_L, 26), "loss: dots = logged values, line = running mean", fill=(110, 110, 110), font=font)

    def sx(box, x: float) -> float:
        return box[0] + (box[2] - box[0]) * x / lay.x_max

    # training loss, log scale
    box = _panel(img, HEADER_H, "training loss", "loss (log scale)", font)
    left, ptop, right, bottom = box
    if lay.loss_range is None:
        draw.text((left + 10, ptop + 10), "no training loss logged", fill="gray", font=font)
    else:
        lo, hi = lay.loss_range

        def sy(v: float) -> float:
            return bottom - (bottom - ptop) * (math.log10(v) - lo) / (hi - lo)

        decades = int(hi - lo)
        for d in range(int(lo), int(hi) + 1):
            for m in (1, 2, 5) if decades <= 3 else (1,):
                v = m * 10.0**d
                if 10**lo <= v <= 10**hi:
                    y = sy(v)
                    draw.line([left, y, right, y], fill=(225, 225, 225) if m == 1 else (242, 242, 242))
                    draw.text((left - 48, y - 6), f"{v:g}", fill="black", font=font)
        for x, v in zip(lay.train_iters, lay.loss):
            px, py = sx(box, x), sy(v)
            draw.ellipse([px - 1.5, py - 1.5, px + 1.5, py + 1.5], fill=LOSS_RAW)
        line = [(sx(box, x), sy(v)) for x, v in zip(lay.train_iters, lay.smoothed)]
        if len(line) > 1:
            draw.line(line, fill=LOSS_COLOR, width=2)
        x, y = line[-1]
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=LOSS_COLOR)
    _x_axis(draw, box, lay.x_max, font)

    # test accuracy, zoomed
    box = _panel(img, HEADER_H + PANEL_H, f"test {accuracy_key}", f"{accuracy_key} (%)", font)
    left, ptop, right, bottom = box
    if lay.acc_range is None:
        draw.text((left + 10, ptop + 10), f"no test {accuracy_key} logged", fill="gray", font=font)
    else:
        lo, hi = lay.acc_range
        if hi <= lo:
            lo, hi = max(0.0, lo - 0.01), min(1.0, hi + 0.01)

        def sya(v: float) -> float:
            return bottom - (bottom - ptop) * (v - lo) / (hi - lo)

        for t in _ticks(lo, hi):
            y = sya(t)
            draw.line([left, y, right, y], fill=(225, 225, 225))
            draw.text((left - 48, y - 6), f"{100 * t:.4g}%", fill="black", font=font)
        if (lo, hi) != (0.0, 1.0):
            draw.text((right - 190, ptop + 4), f"axis zoomed to {100 * lo:.4g}-{100 * hi:.4g}%", fill="gray", font=font)
        pts = [(sx(box, x), max(ptop, min(bottom, sya(v)))) for x, v in zip(lay.test_iters, lay.accuracy)]
        if len(pts) > 1:
            draw.line(pts, fill=ACC_COLOR, width=2)
        below = [v for v in lay.accuracy if v < lo]
        for (x, y), v in zip(pts, lay.accuracy):
            hollow = v < lo
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=None if hollow else ACC_COLOR, outline=ACC_COLOR)
        if below:
            draw.text((left + 6, bottom - 16), f"{len(below)} earlier value(s) below the axis (lowest "
                      f"{100 * min(below):.4g}%)", fill="gray", font=font)  # fmt: skip
        x, y = pts[-1]
        draw.text((min(x + 6, right - 60), y - 14), f"{100 * lay.accuracy[-1]:.2f}%", fill=ACC_COLOR, font=font)
    _x_axis(draw, box, lay.x_max, font)

    png = io.BytesIO()
    img.save(png, format="PNG")
    write_atomic(path, png.getvalue())  # its temporary name is one net.snapshots.stale_temp_pattern knows
