"""Layer registration happens in one place (net/layers/__init__.py), whatever is imported first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import net.layers as layers

ROOT = Path(__file__).resolve().parents[2]


def _registered_after(statement: str) -> list[str]:
    code = f"{statement}\nfrom net.layers.base import LAYERS\nprint(','.join(sorted(LAYERS)))\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return done.stdout.strip().split(",")


def test_every_family_registers_whatever_is_imported_first() -> None:
    expected = sorted(layers.LAYERS)
    for first in ("import net.layers.base", "from net.layers.loss import AccuracyLayer", "import net.schema"):
        assert _registered_after(first) == expected, first


def test_every_registered_class_lives_in_a_listed_family() -> None:
    families = {module.__name__ for module in layers.FAMILIES}
    for name, cls in layers.LAYERS.items():
        assert cls.__module__ in families, f"{name} is registered from {cls.__module__}, not from a family module"
