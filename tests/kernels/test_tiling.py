"""kernels/tiling.py: the tiling constants' rules are asserted at import, and Numba's cache is keyed on the constants.

A child process (a copy of tiling.py and a one-line cached kernel that returns KC, with a cache folder of its own)
shows what the key is for: with Numba's own key, changing KC in tiling.py leaves the kernel's file unchanged and a warm
cache returns the old value; with crema's key the kernel recompiles and returns the new one.
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import conv, gemm, tiling

SOURCE = Path(tiling.__file__).read_text(encoding="utf-8")


def _load(text: str, folder: Path) -> dict:
    """Run a (modified) tiling.py without installing its cache key (the process keeps the real one)."""
    assert text.endswith("\nkey_numba_cache()\n")
    path = folder / "tiling_variant.py"
    path.write_text(text.removesuffix("key_numba_cache()\n"), encoding="utf-8")
    return runpy.run_path(str(path), run_name="tiling_variant")


def test_the_kernels_read_the_constants_from_tiling(tmp_path: Path) -> None:
    for name in ("MR", "NR", "VW", "PAIR", "KC", "MC", "NC"):
        assert getattr(gemm, name) is getattr(tiling, name), name
    for name in ("MC_CONV", "NC_CONV", "KC_CONV", "TILE_PX", "MN_DIRECT", "DIRECT_MAX_INPUT", "MR", "NR"):
        assert getattr(conv, name) is getattr(tiling, name), name
    assert conv.RUNS == tiling.DIRECT_RUNS
    assert set(tiling.CONSTANTS) >= {"MR", "NR", "KC", "MC", "NC", "MC_CONV", "NC_CONV", "KC_CONV", "DIRECT_RUNS"}
    assert _load(SOURCE, tmp_path)["FINGERPRINT"] == tiling.FINGERPRINT  # the same constants give the same key


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("MC = 96 ", "MC = 100 ", "MC, MC_CONV: whole MR-row slivers"),
        ("NC_CONV = 128 ", "NC_CONV = 120 ", "NC, NC_CONV: whole NR-column slivers"),
        ("NR = 16 ", "NR = 32 ", "NR: the packed-B slivers"),
        ("DIRECT_RUNS = 4 if PAIR else 2 ", "DIRECT_RUNS = 9 ", "direct tile"),
    ],
)
def test_a_constant_that_breaks_a_rule_fails_at_import(old: str, new: str, message: str, tmp_path: Path) -> None:
    assert SOURCE.count(old) == 1
    with pytest.raises(AssertionError, match=message):
        _load(SOURCE.replace(old, new), tmp_path)


def test_the_fingerprint_follows_every_constant(tmp_path: Path) -> None:
    for old, new in (("KC = 384 ", "KC = 256 "), ("MC_CONV = 96 ", "MC_CONV = 48 "), ("NC = 256 ", "NC = 128 ")):
        variant = _load(SOURCE.replace(old, new), tmp_path)
        assert variant["FINGERPRINT"] != tiling.FINGERPRINT, old


PROBE = """from numba import njit

from kernels.tiling import KC


@njit(cache=True)
def panel_depth():
    return KC
"""

CHILD = """import sys
from numba.core import caching
import kernels.tiling
if sys.argv[1] == "numba-key":
    caching.Cache._index_key = caching.Cache._index_key.__wrapped__
from kernels.probe import panel_depth
print(panel_depth(), sum(panel_depth.stats.cache_hits.values()))
"""


def test_changing_a_constant_recompiles(tmp_path: Path) -> None:
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "kernels" / "tiling.py").write_text(SOURCE)
    (tmp_path / "kernels" / "probe.py").write_text(PROBE)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(tmp_path)}

    def run(key: str, cache: str) -> tuple[int, int]:
        if (tmp_path / "cache").exists() and cache == "cold":
            shutil.rmtree(tmp_path / "cache")
        done = subprocess.run(
            [sys.executable, "-c", CHILD, key], cwd=tmp_path, env=env, check=False, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        value, hits = done.stdout.split()
        return int(value), int(hits)

    for key in ("numba-key", "crema-key"):
        (tmp_path / "kernels" / "tiling.py").write_text(SOURCE)
        assert run(key, "cold") == (384, 0)
        assert run(key, "warm") == (384, 1)  # loaded from the cache
        (tmp_path / "kernels" / "tiling.py").write_text(SOURCE.replace("KC = 384 ", "KC = 192 "))
        if key == "numba-key":
            assert run(key, "warm") == (384, 1)  # stale: Numba's key does not see the constant change
        else:
            assert run(key, "warm") == (192, 0)  # recompiled
            assert run(key, "warm") == (192, 1)
