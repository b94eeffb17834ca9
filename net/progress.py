"""The one progress bar of every long CLI step (training, indexing, downloads, data conversion): tqdm on stderr.

    bar = progress_bar(1000, "indexing photos", unit="img")
    bar.update(32)                 # ... repeatedly
    bar.set_postfix_str("loss 0.1234", refresh=False)
    bar.clear()                    # before printing a log line; the bar comes back at the next update
    bar.close()                    # the final line stays

Drawn only when stderr is a terminal (tqdm's `disable=None`): logs, CI and pipes get nothing, so their output
stays the log lines alone. `enabled=False` (the commands' `--no-progress`) turns it off on a terminal too.
`unit="B"` counts bytes with SI prefixes (kB, MB, GB).
"""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["progress_bar"]


def progress_bar(total: int | None, desc: str, *, unit: str = "it", initial: int = 0, enabled: bool = True) -> tqdm:
    """A tqdm bar on the current sys.stderr, quiet unless that is a terminal (or when `enabled` is False).
    `total=None` (or 0) shows a running count and rate only."""
    return tqdm(
        total=total if total and total > 0 else None,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1000,
        initial=initial,
        file=sys.stderr,
        disable=None if enabled else True,
        mininterval=0.2,
        dynamic_ncols=True,
        leave=True,
    )
