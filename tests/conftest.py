"""Shared test helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def randomize(net, seed: int = 0, bias: float = 0.1) -> None:
    """Fill every parameter with scaled Gaussian weights (He-style, so activations neither vanish
    nor explode through a deep net) and small random biases."""
    rng = np.random.default_rng(seed)
    for name in net.params:
        params = net.params[name]
        w = params[0]
        fan_in = w[0].size if w.ndim > 1 else 1
        w[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=w.shape)
        for b in params[1:]:
            b[...] = rng.normal(0.0, bias, size=b.shape)


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def tty_stderr(capsys, monkeypatch):
    """capsys whose captured streams say they are a terminal, so the progress bars (quiet otherwise) draw into
    stderr. (The class is patched: pytest swaps the stream objects between fixture setup and the test.)"""
    monkeypatch.setattr(type(sys.stderr), "isatty", lambda self: True)
    return capsys


@pytest.fixture(autouse=True)
def _fixed_thread_counts(monkeypatch):
    """Forwards keep the requested thread count in tests (net.contention would take fewer while other jobs keep this
    machine's cores busy, and tests that check a plan's thread count would depend on the load);
    tests/net/test_contention.py drives the monitor itself."""
    from net import contention

    monkeypatch.setattr(contention.MONITOR, "enabled", False)
