"""net.plot: the training chart's content (log-scale loss with a centred running mean, an accuracy axis zoomed to
the range that matters, the final figures, the whole history) and the PNG it writes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from net.plot import chart_layout, plot_training, smooth
from net.snapshots import read_log, write_log


def lenet_like_records(start: int = 0, stop: int = 10_000) -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for it in range(start, stop + 1, 100):
        records.append(
            {"iter": it, "phase": "train", "loss": float(2.3 * math.exp(-it / 800) + 0.02 * rng.uniform(0.5, 2))}
        )
        if it % 500 == 0:
            acc = 0.1 if it == 0 else 0.97 + 0.022 * (1 - math.exp(-it / 2000)) - 0.002 * rng.uniform()
            records.append({"iter": it, "phase": "test0", "accuracy": acc, "loss": 0.05})
    return records


def test_smooth_is_a_centred_geometric_running_mean():
    assert smooth([1.0, 100.0, 1.0], 3) == pytest.approx([10.0, 10 ** (2 / 3), 10.0], rel=1e-12)
    assert smooth([4.0] * 7, 3) == [4.0] * 7


def test_layout_zooms_accuracy_and_uses_decades_for_the_loss():
    records = lenet_like_records()
    lay = chart_layout(records)
    lo, hi = lay.acc_range
    late = [r["accuracy"] for r in records if r["phase"] == "test0" and r["iter"] >= 2500]
    assert lo <= min(late) and hi >= max(late) and hi <= 1.0
    assert lo >= 0.9 and hi - lo < 0.1  # zoomed: not the 0-1 axis on which 97-99.2% is a flat line
    assert lay.loss_range[0] <= math.log10(min(lay.loss)) and lay.loss_range[1] >= math.log10(max(lay.loss))
    assert lay.loss_range == (math.floor(lay.loss_range[0]), math.ceil(lay.loss_range[1]))  # whole decades
    assert len(lay.smoothed) == len(lay.loss) == 101 and lay.x_max == 10_000
    last = records[-1]
    assert f"test accuracy {100 * last['accuracy']:.2f}% at iteration 10000" in lay.final
    assert f"final training loss {lay.loss[-1]:.4g}" in lay.final


def test_resumed_history_is_charted_whole(tmp_path):
    """A run resumed at 5000 charts the log's rows before the resume point (net.snapshots.read_log, as the solver
    does) with its own: the chart starts at iteration 0."""
    full = lenet_like_records()
    write_log(tmp_path / "lenet_log.csv", [r for r in full if r["iter"] <= 6000])  # written with a snapshot at 6000
    resumed = read_log(tmp_path / "lenet_log.csv", before=5000) + lenet_like_records(5000, 10_000)
    lay = chart_layout(resumed)
    assert lay.train_iters[0] == 0 and lay.train_iters[-1] == 10_000 and lay.x_max == 10_000
    assert lay.train_iters == sorted(lay.train_iters) and len(lay.train_iters) == 101


def test_png_and_empty_history(tmp_path):
    plot_training(lenet_like_records(), tmp_path / "chart.png")
    img = Image.open(tmp_path / "chart.png")
    assert img.format == "PNG" and img.size == (900, 646)
    pixels = np.asarray(img.convert("RGB")).astype(int)
    assert (np.abs(pixels - (190, 40, 40)).sum(axis=2) == 0).sum() > 200  # the smoothed loss line is drawn
    assert (np.abs(pixels - (30, 90, 200)).sum(axis=2) == 0).sum() > 200  # the accuracy line too
    plot_training([], tmp_path / "empty.png")
    assert chart_layout([]).final == "no records yet"
    plot_training([{"iter": 0, "phase": "train", "loss": 0.0}], tmp_path / "zero.png")  # no log of 0: left out
    assert not list(tmp_path.glob("*.tmp.png"))
