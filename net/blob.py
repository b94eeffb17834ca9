"""Blob: an N-D float32 array with its gradient, as in Caffe (data + diff)."""

from __future__ import annotations

import operator

import numpy as np

# Assignments to the watched attributes so far, process-wide (``watched``: a Blob's `data`, a layer's `blobs` and
# `folded`; a Blob's diff array replaced counts too, for net.train_replay). A replayed forward (net.replay) rechecks
# the arrays its steps were recorded on only after this moved: they hang off ~250 Python objects for
# EfficientNet-Lite0, which the forward's own data has pushed out of the caches by the next call (reading them took
# 110-150 us a forward on a 2-core Zen 4 EPYC, 3% of its batch-1 forward).
_assignments = [0]


def assignments() -> int:
    """How many assignments to watched attributes this process has made (it only grows)."""
    return _assignments[0]


def watched(name: str, doc: str = "") -> property:
    """A property kept in the attribute `_<name>`, each assignment of which counts in `assignments`."""
    slot = "_" + name

    def assign(obj, value) -> None:
        setattr(obj, slot, value)
        _assignments[0] += 1

    return property(operator.attrgetter(slot), assign, doc=doc)


class Blob:
    """Named float32 storage: `data` (values) and `diff` (gradients, allocated on first use).

    `reshape` keeps the buffer when the element count does not change, like Caffe's Blob::Reshape.
    `clear_diff` zeroes the diff lazily: the zeros are written when `diff` is next read, or never, where a kernel
    overwrites the whole diff first (`diff_to_overwrite`).
    """

    __slots__ = ("_data", "_diff", "_zero", "name")

    data = watched("data", "the values (an assignment counts in `assignments`)")

    def __init__(self, name: str, shape: tuple[int, ...] = (0,)) -> None:
        self.name = name
        self.data = np.zeros(tuple(int(d) for d in shape), dtype=np.float32)
        self._diff: np.ndarray | None = None
        self._zero = False  # _diff's values are pending zeros (clear_diff)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def count(self) -> int:
        return int(self.data.size)

    @property
    def diff(self) -> np.ndarray:
        d = self._diff
        if d is None or d.shape != self.data.shape:
            self._diff = d = np.zeros_like(self.data)
            _assignments[0] += 1
        elif self._zero:
            d[...] = 0.0
        self._zero = False
        return d

    @diff.setter
    def diff(self, value: np.ndarray) -> None:
        self._diff = value
        self._zero = False
        _assignments[0] += 1

    def clear_diff(self) -> None:
        """Zero the diff: lazily, when `diff` is next read (a solver's iteration clears every parameter diff, and
        the largest are then overwritten whole by their layer's backward: `diff_to_overwrite`)."""
        self._zero = self._diff is not None

    def diff_to_overwrite(self) -> tuple[np.ndarray, bool]:
        """(the diff, fresh): fresh when it holds zeros not yet written (`clear_diff`); the caller then writes every
        element as if added to zeros (x, not 0 + x: the same values), and the zeros are never written."""
        d = self._diff
        if self._zero and d is not None and d.shape == self.data.shape:
            self._zero = False
            return d, True
        return self.diff, False

    def reshape(self, shape: tuple[int, ...]) -> None:
        """Give the blob `shape`; values are kept only when the shape is unchanged."""
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"blob '{self.name}': negative dimension in shape {shape}")
        if shape == self.data.shape:
            return
        if int(np.prod(shape, dtype=np.int64)) == self.data.size:
            self.data = self.data.reshape(shape)
        else:
            self.data = np.zeros(shape, dtype=np.float32)
        self._diff = None

    def __repr__(self) -> str:
        return f"Blob({self.name!r}, shape={self.shape})"
