"""Blob: an N-D float32 array with its gradient, as in Caffe (data + diff)."""

from __future__ import annotations

import numpy as np


class Blob:
    """Named float32 storage: `data` (values) and `diff` (gradients, allocated on first use).

    `reshape` keeps the buffer when the element count does not change, like Caffe's Blob::Reshape.
    `clear_diff` zeroes the diff lazily: the zeros are written when `diff` is next read, or never, where a kernel
    overwrites the whole diff first (`diff_to_overwrite`).
    """

    __slots__ = ("_diff", "_zero", "data", "name")

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
        elif self._zero:
            d[...] = 0.0
        self._zero = False
        return d

    @diff.setter
    def diff(self, value: np.ndarray) -> None:
        self._diff = value
        self._zero = False

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
