"""The GEMM micro-tile shape follows the CPU Numba compiles for (kernels.tiling.tile_shape): 12 x 16 in zmm registers
with AVX-512, 6 x 16 in ymm registers without. The default test run checks the host's shape; this test runs the GEMM
and convolution tests (the depthwise ones too: blocks of 8 channels there, not 16) again in a child process compiled
for an AVX2 CPU (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES, with a cache folder of its own), so the other shape is checked on
an AVX-512 host too. On a host without AVX-512 the default run already is the AVX2 shape, and AVX-512 code cannot run
there: the test skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from llvmlite import binding

ROOT = Path(__file__).resolve().parents[2]
HOST_FEATURES = binding.get_host_cpu_features().flatten().split(",")  # LLVM's "+name" / "-name" entries


def _avx2_features() -> str:
    """The host's LLVM feature string with every AVX-512 feature turned off."""
    return ",".join("-" + f[1:] if f[1:].startswith("avx512") else f for f in HOST_FEATURES)


@pytest.mark.skipif(
    "+avx512f" not in HOST_FEATURES,
    reason="host has no AVX-512: the default run already tests the AVX2 tile shape",
)
def test_avx2_tile_shape_on_an_avx512_host(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "NUMBA_CPU_NAME": "haswell",
        "NUMBA_CPU_FEATURES": _avx2_features(),
        "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"),
    }

    def child(*args: str, timeout: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args], cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=timeout
        )

    shape = child("-c", "import kernels.gemm as g; print(g.MR, g.VW)", timeout=120)
    assert shape.returncode == 0, shape.stderr
    assert shape.stdout.split() == ["6", "8"]
    files = ["tests/kernels/test_gemm.py", "tests/kernels/test_conv.py", "tests/kernels/test_fc.py"]
    files.append("tests/kernels/test_depthwise.py")  # its channel blocks: 8 lanes there (16 with AVX-512)
    run = child("-m", "pytest", "-q", "-p", "no:cacheprovider", *files, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]  # 0: tests ran and all passed
