"""The memory budget a net's blobs must fit in, and the shape checks that run before a parameter is filled.

    budget = resolve_budget()                  # CREMA_MEMORY_BUDGET, else 50% of this machine's RAM
    budget = parse_budget("12G", "--memory-budget")
    add_argument(parser)                       # --memory-budget SIZE on a `crema` verb that builds nets
    Net(param, memory_budget=budget)           # refused with MemoryBudgetError when its blobs would not fit

A Net adds up what its blobs will take from their shapes before it allocates them (at construction and on every
reshape), so a batch of 5,000,000 or a `kernel_size: 4294967295` is one clear error instead of a MemoryError,
an OverflowError or a machine swapping:

    net 'x' needs 215.0 GiB for its blobs at batch 5000000; the budget is 12.0 GiB (--memory-budget)

The need counts every blob and parameter once (float32), twice in a TRAIN net (their gradients). Parameters are
checked one by one as layers set up, before their fillers run; tops are shape-only (`ShapeOnly`) until the whole
net fits.

Sizes: a number of bytes, or with a unit K M G T (powers of 1024; KB/KiB... accepted), or a share of RAM ("80%").

Errors: `MemoryBudgetError(ValueError)` (a net or a parameter over the budget); `ValueError` for a bad size or a
parameter shape with a dimension below 1.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

from .blob import Blob

ENV = "CREMA_MEMORY_BUDGET"
DEFAULT_SHARE = 0.5  # of MemTotal, when neither the flag nor the environment says otherwise
FLOAT32 = 4  # bytes per value: every blob is float32


class MemoryBudgetError(ValueError):
    """A net whose blobs (or one parameter) would not fit in the memory budget; says how much and the budget."""


class Budget(NamedTuple):
    bytes: int
    source: str  # where it came from, for messages: "--memory-budget", "CREMA_MEMORY_BUDGET=12G", ...


def gib(n: float) -> str:
    """`n` bytes as '12.0 GiB' (huge figures in scientific notation; under 1 GiB: '35.2 MiB', '4.0 KiB')."""
    g = n / 2**30
    if g >= 1e7:
        return f"{g:.3g} GiB"
    if g >= 1 or n == 0:
        return f"{g:.1f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def total_ram() -> int | None:
    """This machine's RAM in bytes (MemTotal of /proc/meminfo, else sysconf), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*(?:([kmgtp]?)(?:i?b)?|(%))\s*", re.IGNORECASE)


def parse_budget(text: str, source: str) -> Budget:
    """A Budget from `text` ('12G', '500MiB', '1.5T', '1073741824', '80%' of RAM); `source` names where it was given.
    ValueError (naming `source`) if it cannot be read or is not > 0."""
    m = _SIZE.fullmatch(str(text))
    if m is None:
        raise ValueError(f"{source}: expected a size such as 12G, 500M, 1073741824 or 80%, got {text!r}")
    value = float(m.group(1))
    label = f"{source}={str(text).strip()}" if source == ENV else source
    if m.group(3):
        ram = total_ram()
        if ram is None:
            raise ValueError(f"{source}: {text!r} is a share of RAM, and this machine's RAM size is unknown")
        n = int(ram * value / 100)
        label += f" of {gib(ram)} RAM" if source == ENV else f" {str(text).strip()} of {gib(ram)} RAM"
    else:
        n = int(value * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError(f"{source}: the memory budget must be > 0, got {text!r}")
    return Budget(n, label)


def resolve_budget(budget: Budget | None = None) -> Budget:
    """`budget` when given, else CREMA_MEMORY_BUDGET, else DEFAULT_SHARE of RAM (64 GiB when RAM is unknown)."""
    if budget is not None:
        return budget
    env = os.environ.get(ENV, "").strip()
    if env:
        return parse_budget(env, ENV)
    ram = total_ram()
    hint = f"raise it with --memory-budget or {ENV}"
    if ram is None:
        return Budget(64 * 2**30, f"default, RAM size unknown; {hint}")
    return Budget(int(ram * DEFAULT_SHARE), f"{DEFAULT_SHARE:.0%} of this machine's {gib(ram)} RAM; {hint}")


def _budget_arg(text: str) -> Budget:
    import argparse

    try:
        return parse_budget(text, "--memory-budget")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--memory-budget: ")) from None


def add_argument(parser) -> None:
    """Add `--memory-budget SIZE` to an argparse parser (the value arrives as a Budget, or None)."""
    parser.add_argument(
        "--memory-budget",
        type=_budget_arg,
        metavar="SIZE",
        help=f"refuse nets whose blobs need more memory than this (12G, 500M, 80%% of RAM; default: ${ENV}, "
        f"else {DEFAULT_SHARE * 100:.0f}%% of RAM)",
    )


# -- parameters: checked before a filler runs --------------------------------------------------------------------
_ROOM: contextvars.ContextVar[tuple[int, Budget] | None] = contextvars.ContextVar("crema_param_room", default=None)


@contextlib.contextmanager
def param_room(left: int, budget: Budget) -> Iterator[None]:
    """While a Net sets up one layer: its parameters may take `left` bytes of `budget` (check_param_shape)."""
    token = _ROOM.set((left, budget))
    try:
        yield
    finally:
        _ROOM.reset(token)


def check_param_shape(layer, index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """`shape` as ints, checked before the filler of `layer`'s parameter `index` runs: every dimension >= 1 and, inside
    a Net's set-up (`param_room`), the bytes within what is left of the budget. ValueError / MemoryBudgetError
    naming the layer and the parameter."""
    what = {0: "weight", 1: "bias"}.get(index, f"parameter {index}")
    dims = tuple(int(d) for d in shape)
    if any(d < 1 for d in dims):
        raise ValueError(f"{layer.type} '{layer.name}': its {what} would have shape {dims}; dimensions must be >= 1")
    room = _ROOM.get()
    if room is not None:
        left, budget = room
        need = math.prod(dims) * FLOAT32
        if need > left:
            used = budget.bytes - left
            taken = f" ({gib(used)} taken by the parameters before it)" if used > 0 else ""
            raise MemoryBudgetError(
                f"{layer.type} '{layer.name}': its {what} of shape {dims} needs {gib(need)}{taken}; "
                f"the budget is {gib(budget.bytes)} ({budget.source})"
            )
    return dims


# -- blobs: shapes first, memory after ---------------------------------------------------------------------------
_ZERO = np.zeros((), np.float32)
_MAX_BYTES = 2**62  # above this NumPy cannot describe the array; such a shape is refused outright


def nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of a float32 array of `shape` (Python ints: no overflow)."""
    return math.prod(shape) * FLOAT32


class ShapeOnly(Blob):
    """A Blob in a shape pass (a Net's construction and reshape): `reshape` gives it a read-only, zero-strided view of
    one zero with the new shape, allocating nothing; `end_shape_pass` gives it real zeros once the budget allows.
    Same memory layout as Blob (no slots of its own), so a Blob can be switched to it and back."""

    __slots__ = ()

    def reshape(self, shape: tuple[int, ...]) -> None:
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"blob '{self.name}': negative dimension in shape {shape}")
        if shape == self.data.shape:
            return
        if math.prod(shape) == self.data.size:
            self.data = self.data.reshape(shape)  # keeps the values, as Blob.reshape does
        else:
            if nbytes(shape) > _MAX_BYTES:
                count = math.prod(shape)
                raise ValueError(f"blob '{self.name}': shape {shape} holds {count:.3g} values, more than any memory")
            self.data = np.broadcast_to(_ZERO, shape)
        self._diff = None


def _placeholder(a: object) -> bool:
    return type(a) is np.ndarray and not a.flags.writeable and all(s == 0 for s in a.strides)


def begin_shape_pass(blobs: Iterable[Blob]) -> list[tuple[Blob, object, object]]:
    """Switch `blobs` to ShapeOnly; returns what `end_shape_pass` needs to finish or undo the pass."""
    saved = []
    for blob in blobs:
        saved.append((blob, blob.data, blob._diff))
        blob.__class__ = ShapeOnly
    return saved


def end_shape_pass(saved: list[tuple[Blob, object, object]], *, undo: bool = False) -> None:
    """Plain Blobs again: with zeros of their new shapes, or (`undo`) with the arrays they had before the pass."""
    for blob, data, diff in saved:
        blob.__class__ = Blob
        if undo:
            blob.data, blob._diff = data, diff
        elif _placeholder(blob.data):
            blob.data = np.zeros(blob.data.shape, np.float32)
