"""A dependency-free progress bar for long CLI steps (indexing, downloads), written to stderr.

    bar = ProgressBar(total=1000, label="indexing", unit="img")
    bar.update(32)   # ... repeatedly
    bar.close()      # final line + newline

On a terminal the line is redrawn in place (at most 10 times a second); otherwise (logs, CI) a line is
printed at every 10% step so the output stays short. `total=None` shows a running count only.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar", "human_bytes"]


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"


class ProgressBar:
    """See the module docstring. `unit="B"` formats counts as bytes."""

    def __init__(
        self, total: int | None, label: str, *, unit: str = "", stream: TextIO | None = None, width: int = 30
    ) -> None:
        self.total = total if total and total > 0 else None
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def _fmt(self, n: float) -> str:
        return human_bytes(n) if self.unit == "B" else f"{int(n)}"

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        rate_s = f"{human_bytes(rate)}/s" if self.unit == "B" else f"{rate:.1f} {self.unit}/s".strip()
        if self.total is None:
            return f"{self.label}: {self._fmt(self.done)} {self.unit if self.unit != 'B' else ''}  {rate_s}".rstrip()
        frac = min(self.done / self.total, 1.0)
        fill = round(frac * self.width)
        bar = "#" * fill + "." * (self.width - fill)
        return f"{self.label} [{bar}] {100 * frac:5.1f}% {self._fmt(self.done)}/{self._fmt(self.total)} {rate_s}"

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self._tty:
            if now - self._last_draw >= 0.1:
                self._last_draw = now
                self.stream.write("\r" + self.line())
                self.stream.flush()
        elif self.total is not None:
            decile = int(10 * min(self.done / self.total, 1.0))
            if decile != self._last_decile and decile < 10:
                self._last_decile = decile
                self.stream.write(self.line() + "\n")
                self.stream.flush()

    def close(self) -> None:
        self.stream.write(("\r" if self._tty else "") + self.line() + "\n")
        self.stream.flush()
