"""Blob: an N-D float32 array with its gradient, as in Caffe (data + diff)."""

from __future__ import annotations

import numpy as np


class Blob:
    """Named float32 storage: `data` (values) and `diff` (gradients, allocated on first use).

    `reshape` keeps the buffer when the element count does not change, like Caffe's Blob::Reshape.
    """

    __slots__ = ("_diff", "data", "name")

    def __init__(self, name: str, shape: tuple[int, ...] = (0,)) -> None:
        self.name = name
        self.data = np.zeros(tuple(int(d) for d in shape), dtype=np.float32)
        self._diff: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def count(self) -> int:
        return int(self.data.size)

    @property
    def diff(self) -> np.ndarray:
        if self._diff is None or self._diff.shape != self.data.shape:
            self._diff = np.zeros_like(self.data)
        return self._diff

    @diff.setter
    def diff(self, value: np.ndarray) -> None:
        self._diff = value

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
