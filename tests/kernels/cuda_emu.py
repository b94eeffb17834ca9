"""A kernels.gpu.backend.Runtime that runs crema's CUDA C sources on the CPU, for tests on machines without a GPU.

Each kernels/cuda/<name>.cu is compiled by g++ with cuda_emu.h force-included (blocks one after another, the threads
of a block as fibers between barriers; see the header) into a shared library per constant set, and launched through
ctypes with the grid, block and argument tuple the launchers built for CuPy. What it checks beyond the numbers:
  - argument types: every argument must be a device array (pointer parameters) or a NumPy scalar of exactly the
    parameter's C type (int32 -> int, int64 -> long long, float32 -> float, float64 -> double), as CuPy needs;
  - launch limits: at most 1024 threads per block, grid y and z at most 65535;
  - out-of-bounds writes: every array this runtime allocates sits between guard bands of a byte pattern (0x71: the
    float 1.2e30, a huge value that also shows up in any result that read out of bounds); after every launch the
    bands must be intact;
  - missing barriers: `order` runs the threads of a block forward (0), reversed (1) or shuffled (2).
Arrays are `EmuArray`s (an ndarray subclass), so the Net's dispatch tells them from host arrays.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kernels.gpu import backend as gr

HEADER = Path(__file__).resolve().parent / "cuda_emu.h"
GUARD = 64  # elements of guard band on each side of every allocation
PATTERN = 0x71


class EmuArray(np.ndarray):
    """A "device" array of the emulator: a NumPy array inside guard bands."""


def compiler() -> str | None:
    return shutil.which("g++")


def default_build_dir() -> Path:
    """Where compiled emulations are kept between runs (named by a hash of their source and options)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "crema" / "cuda_emu"


class EmuRuntime:
    name = "cuda-emulator"

    def __init__(self, build_dir: Path, *, order: int = 0, sm_count: int = 132) -> None:
        self.build_dir = Path(build_dir)
        self.build_dir.mkdir(parents=True, exist_ok=True)
        self.order = order
        self.sm_count = sm_count
        self.launches: list[tuple[str, tuple, tuple]] = []  # (kernel, grid, block) of every launch, in order
        self._libs: dict[tuple[str, gr.Defines], ctypes.CDLL] = {}
        self._raws: list[tuple[weakref.ref, int, str]] = []  # byte buffers of the allocations, guard bands included

    # -- arrays ----------------------------------------------------------------------------------
    def empty(self, shape: tuple[int, ...], dtype: Any = np.float32) -> EmuArray:
        shape = tuple(int(d) for d in shape)
        dtype = np.dtype(dtype)
        nbytes, band = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, GUARD * dtype.itemsize
        raw = np.full(nbytes + 2 * band, PATTERN, np.uint8)  # owns the memory: every view keeps it alive
        self._raws.append((weakref.ref(raw), band, f"{shape} {dtype.name}"))
        return raw[band : band + nbytes].view(dtype).reshape(shape).view(EmuArray)

    def asarray(self, host: np.ndarray) -> EmuArray:
        out = self.empty(host.shape, host.dtype)
        out[...] = host
        return out

    def to_host(self, a: Any) -> np.ndarray:
        return np.array(a.view(np.ndarray), copy=True)

    def upload(self, dst: Any, host: np.ndarray) -> None:
        if host.size != dst.size or dst.dtype != np.float32:
            raise ValueError(f"upload: {host.shape} into a {dst.dtype} device array of shape {dst.shape}")
        dst.view(np.ndarray).reshape(-1)[...] = np.asarray(host).reshape(-1)

    def is_array(self, a: Any) -> bool:
        return isinstance(a, EmuArray)

    def contiguous(self, a: Any, dtype: Any = np.float32) -> EmuArray:
        if a.dtype == dtype and a.flags.c_contiguous:
            return a
        out = self.empty(a.shape, dtype)
        out[...] = a
        return out

    def ptr(self, a: Any) -> int:
        return int(a.ctypes.data)

    def synchronize(self) -> None:
        pass

    def check_guards(self, what: str) -> None:
        """AssertionError when a guard band of a live allocation changed (the last launch wrote out of bounds)."""
        alive = []
        for ref, band, desc in self._raws:
            raw = ref()
            if raw is None:
                continue
            alive.append((ref, band, desc))
            if not (np.all(raw[:band] == PATTERN) and np.all(raw[raw.size - band :] == PATTERN)):
                raise AssertionError(f"{what} wrote outside an array of shape {desc}")
        self._raws = alive

    # -- kernels ---------------------------------------------------------------------------------
    def _library(self, source: str, defines: gr.Defines) -> ctypes.CDLL:
        lib = self._libs.get((source, defines))
        if lib is not None:
            return lib
        text = gr.cuda_source(source)
        exports = "".join(f"EMU_EXPORT({name})\n" for name in gr.kernel_names(text))
        flags = ["-std=c++17", "-O1", "-march=native", "-ffp-contract=off", "-fno-strict-aliasing", "-w", "-fPIC"]
        options = [*flags, *gr.define_options(defines)]
        key = hashlib.sha1("\n".join([text, exports, HEADER.read_text(), *options]).encode()).hexdigest()[:16]
        so = self.build_dir / f"{source}-{key}.so"
        if not so.exists():  # content-addressed: a stale library is never reused; concurrent builds are harmless
            cpp = self.build_dir / f"{source}-{key}.{os.getpid()}.cpp"
            tmp = cpp.with_suffix(".so")
            cpp.write_text(f'#line 1 "{source}.cu"\n{text}\n{exports}', encoding="utf-8")
            cmd = [compiler() or "g++", *options, "-shared", "-include", str(HEADER), str(cpp), "-o", str(tmp)]
            done = subprocess.run(cmd, check=False, capture_output=True, text=True)
            cpp.unlink()
            if done.returncode:
                raise RuntimeError(f"g++ could not build the emulation of {source}.cu:\n{done.stderr[-4000:]}")
            os.replace(tmp, so)
        lib = self._libs[(source, defines)] = ctypes.CDLL(str(so))
        return lib

    def function(self, source: str, kernel: str, defines: gr.Defines) -> Callable[..., None]:
        lib = self._library(source, defines)
        sig = getattr(lib, f"emu_sig_{kernel}")
        sig.restype = ctypes.c_char_p
        codes = sig().decode()
        entry = getattr(lib, f"emu_launch_{kernel}")
        entry.restype = ctypes.c_longlong
        entry.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        fibers = int(kernel in synchronising(gr.cuda_source(source)))

        def launch(grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
            if len(grid) != 3 or len(block) != 3:
                raise ValueError(f"{kernel}: grid and block must be 3-tuples, got {grid}, {block}")
            if block[0] * block[1] * block[2] > 1024 or grid[1] > 65535 or grid[2] > 65535 or min(*grid, *block) < 1:
                raise ValueError(f"{kernel}: launch {grid} x {block} is outside CUDA's limits")
            holders = [_holder(kernel, i, code, a) for i, (code, a) in enumerate(zip(codes, args, strict=True))]
            argv = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
            self.launches.append((kernel, tuple(grid), tuple(block)))
            entry(*grid, *block, argv, self.order, fibers)
            self.check_guards(f"{kernel} {grid} x {block}")

        return launch


_CTYPES = {"i": (np.int32, ctypes.c_int32), "q": (np.int64, ctypes.c_int64)}
_CTYPES |= {"f": (np.float32, ctypes.c_float), "d": (np.float64, ctypes.c_double)}


def _holder(kernel: str, i: int, code: str, value: Any) -> ctypes._SimpleCData:
    if code == "p":
        if not isinstance(value, EmuArray):
            raise TypeError(f"{kernel} argument {i}: expected a device array, got {type(value).__name__}")
        if not value.flags.c_contiguous:
            raise TypeError(f"{kernel} argument {i}: expected a C-contiguous array, got strides {value.strides}")
        return ctypes.c_void_p(value.ctypes.data)
    want, ctype = _CTYPES[code]
    if type(value) is not want:
        raise TypeError(f"{kernel} argument {i}: expected {np.dtype(want).name}, got {type(value).__name__} {value!r}")
    return ctype(value.item())


_KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof"}


def synchronising(text: str) -> set[str]:
    """Functions of a CUDA source that may reach a barrier or a warp shuffle, directly or through another function
    (by name, so over-inclusive): those kernels run on fibers, the others thread after thread (faster). A kernel
    wrongly left out aborts the process at its first barrier rather than giving a wrong answer."""
    bodies: dict[str, str] = {}
    for match in re.finditer(r"(\w+)\s*\([^;{)]*(?:\([^)]*\)[^;{)]*)*\)\s*(?:const\s*)?\{", text):
        if match.group(1) in _KEYWORDS:
            continue
        depth, i = 0, match.end() - 1
        while True:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        bodies[match.group(1)] = bodies.get(match.group(1), "") + text[match.end() : i]
    found = {"__syncthreads", "__shfl_xor_sync"}
    while True:
        more = {name for name, body in bodies.items() if any(re.search(rf"\b{f}\b", body) for f in found)} - found
        if not more:
            return found
        found |= more


def signature_of(source: str, kernel: str, runtime: EmuRuntime) -> str:
    """The parameter type codes of a kernel ('p' pointer, 'i' int, 'q' long long, 'f' float, 'd' double)."""
    sig = getattr(runtime._library(source, ()), f"emu_sig_{kernel}")
    sig.restype = ctypes.c_char_p
    return sig().decode()


def defines_in(source: str) -> dict[str, int]:
    """The integer #defines of a CUDA source (for checking the Python mirrors of its flags)."""
    return {k: int(v) for k, v in re.findall(r"^#define\s+(\w+)\s+(-?\d+)\b", gr.cuda_source(source), re.MULTILINE)}


def runtime_for(kind: str) -> Any:
    """The runtime a GPU test runs on: "emulator" (this module's, threads in reverse order) or "cuda" (a real
    device through CuPy); pytest.skip with the reason where that one cannot run here."""
    import pytest

    from kernels import gpu

    if kind == "cuda":
        reason = gpu.unavailable_reason()
        if reason is not None:
            pytest.skip(f"no GPU here: {reason}")
        return gpu.runtime()
    if compiler() is None:
        pytest.skip("g++ not found: the CUDA emulator cannot be built")
    return EmuRuntime(default_build_dir(), order=1)
