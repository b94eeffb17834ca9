"""crema's network package: Caffe model files (text and binary), layers, the Net graph."""

from __future__ import annotations

from .net import Net, NetError

__all__ = ["Net", "NetError"]
