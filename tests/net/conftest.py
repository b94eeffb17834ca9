"""Fixtures shared by tests/net."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def effnet_files():
    """EfficientNet-Lite0 as crema converts it (net.zoo: once into the cache): .prototxt, .weights."""
    from net.zoo import efficientnet_lite0

    return efficientnet_lite0(say=lambda _msg: None)
