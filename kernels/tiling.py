"""The tiling constants of the CPU kernels, their rules asserted, and Numba's on-disk cache keyed on them.

Micro tile (kernels/gemm.py's LLVM IR micro-kernel, also inlined by conv.py and pointwise.py):
  MR x NR outputs per tile, float32 vectors of VW lanes; with AVX-512 (`tile_shape`) tiles are taken two at a time
  (PAIR: MR x 2NR). Register budget per k step: the accumulators, the loads of B and one broadcast of A must fit the
  register file: AVX2 6 x 16: 12 + 2 + 1 of the 16 ymm; AVX-512 paired 12 x 32: 24 + 2 + 1 of the 32 zmm.
  NR is 16 wherever it appears: the packed-B format (NR-column slivers), the epilogue's two 8-float stores per row
  (gemm._store8_bias, conv's direct tile) and the 16-pixel slivers of pointwise.py are written for 16.
Cache blocking (gemm.py): KC-deep K panels, MC x NC blocks of C per parallel task (MC a multiple of MR, NC of NR).
Convolution (conv.py): MC_CONV x NC_CONV blocks (or conv.tile_blocks') and KC_CONV panels in _conv_tiles_worker; the
  direct path's tile is MR channels x DIRECT_RUNS runs of 8 output pixels (TILE_PX pixels, MN_DIRECT accumulator
  floats), for padded image groups of at most DIRECT_MAX_INPUT floats.
(pointwise.py and depthwise.py keep their own constants for now: SLIVERS, DOT_ACC, ... and depthwise's RUNS; they are
used only in their own files, whose changes Numba's per-file source stamp already catches.)

Why a cache key: Numba's cache (cache=True) checks the source file of each function (modification time and size),
and the constants a kernel reads are frozen into its machine code. A kernel of conv.py reads MR and NR defined
elsewhere; changing them changed no stamp of conv.py, so a warm cache ran stale code. `FINGERPRINT` hashes every
constant here; `key_numba_cache` adds it to the index key of every cached function of the kernels package, so
changing a constant recompiles each kernel once (tests/kernels/test_tiling.py shows a stale result without the key).
The numbers a kernel computes do not depend on the key: it only picks which compiled code is loaded.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any


def tile_shape() -> tuple[int, int]:
    """(MR, VW): micro-tile rows and vector width for the CPU Numba compiles for (NUMBA_CPU_FEATURES, or the host's).

    With AVX-512 (32 zmm registers): 12 x 16 tiles of twelve <16 x float> accumulators, taken two at a time (PAIR:
    two loads of B and 12 broadcasts of A per k for 24 FMAs). Otherwise (AVX2, 16 ymm registers): 6 x 16 as twelve
    <8 x float> accumulators, two loads of B and 6 broadcasts per k. Numba keys its cache on the target
    CPU and its features, so code compiled for one shape is never loaded on a machine that picks the other."""
    from llvmlite import binding
    from numba.core import config

    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else binding.get_host_cpu_features().flatten()
    return (12, 16) if "+avx512f" in features.split(",") else (6, 8)


# -- the micro tile (kernels/gemm.py) ----------------------------------------------------------------------------------
MR, VW = tile_shape()  # rows of the micro tile; float32 lanes of its vectors (16: zmm, 8: ymm)
NR = 16  # columns of the micro tile: one zmm or two ymm vectors (the packed-B format and the epilogue assume 16)
MN = MR * NR
PAIR = VW == 16  # AVX-512: tiles of MR x 2NR (two column slivers, 24 zmm accumulators); AVX2 has too few registers
ACC = MN * (2 if PAIR else 1)  # floats of the macro kernel's tile buffer (two tiles when PAIR)
REGISTERS = 32 if VW == 16 else 16  # vector registers of the ISA the tile is written for

# -- GEMM cache blocking (kernels/gemm.py) -------------------------------------------------------------------------
KC = 384  # depth of one panel: an A sliver (KC x MR, 9 or 18 KB) and a B sliver (KC x NR, 24 KB) stay in L1
MC = 96  # rows of C per parallel task (multiple of MR)
NC = 256  # columns of C per parallel task (multiple of NR)

# -- convolution (kernels/conv.py) -------------------------------------------------------------------------------------
MC_CONV = 96  # rows of C (output channels) per parallel task in _conv_tiles_worker (multiple of MR: 6 or 12)
NC_CONV = 128  # columns of C (output pixels) per parallel task in _conv_tiles_worker (multiple of NR)
KC_CONV = 384  # K panel depth in _conv_tiles_worker
DIRECT_RUNS = 4 if PAIR else 2  # 8-pixel runs per direct-convolution tile (_direct_tile)
TILE_PX = 8 * DIRECT_RUNS  # output pixels per direct-convolution tile
MN_DIRECT = MR * TILE_PX  # accumulator floats of a direct-convolution tile
DIRECT_MAX_INPUT = 64 * 1024  # floats of one padded image group for the direct path (256 KB: half of a Zen 3 L2)

# -- the rules ---------------------------------------------------------------------------------------------------------
assert VW in (8, 16) and (MR, VW) in ((6, 8), (12, 16)), "tile_shape: 6 x 16 in ymm or 12 x 16 in zmm"
assert NR == 16, "NR: the packed-B slivers, the epilogue's two 8-float stores per row and conv.py assume 16"
assert NR % VW == 0 and PAIR == (VW == 16), "a tile row is NR / VW whole vectors; tiles pair up with zmm only"
assert MN == MR * NR and ACC == MN * (2 if PAIR else 1)
_B_VECTORS = (NR // VW) * (2 if PAIR else 1)  # vectors of B loaded per k step (per tile or pair of tiles)
assert MR * _B_VECTORS + _B_VECTORS + 1 <= REGISTERS, "accumulators + B loads + one broadcast exceed the registers"
assert MC % MR == 0 and MC_CONV % MR == 0, "MC, MC_CONV: whole MR-row slivers of A per task"
assert NC % NR == 0 and NC_CONV % NR == 0, "NC, NC_CONV: whole NR-column slivers of B per task"
assert KC > 0 and KC_CONV > 0
assert (8 * DIRECT_RUNS) % VW == 0, "direct tile: a channel's runs fill whole vectors (runs pair up in zmm)"
_DIRECT_VECTORS = 8 * DIRECT_RUNS // VW
assert MR * _DIRECT_VECTORS + _DIRECT_VECTORS + 1 <= REGISTERS, "direct tile: accumulators exceed the registers"
assert TILE_PX == 8 * DIRECT_RUNS and MN_DIRECT == MR * TILE_PX and DIRECT_MAX_INPUT > 0

CONSTANTS = {
    name: value
    for name, value in sorted(globals().items())
    if name.isupper() and not name.startswith("_") and isinstance(value, (bool, int))
}
FINGERPRINT = hashlib.sha256(repr(sorted(CONSTANTS.items())).encode()).hexdigest()[:16]


def key_numba_cache(fingerprint: str = FINGERPRINT, package: str = "kernels") -> None:
    """Add ("crema tiling", fingerprint) to the on-disk cache index key of every cached Numba function whose module
    is in `package` (others keep Numba's key). Numba's key is (signature, target machine, hashes of the bytecode and
    closure); the loaded code is looked up by it, so another fingerprint finds no entry and compiles afresh. Idempotent
    (a second call replaces the first)."""
    from numba.core import caching

    index_key = caching.Cache._index_key
    index_key = getattr(index_key, "__wrapped__", index_key)

    @functools.wraps(index_key)
    def keyed(self: Any, sig: Any, codegen: Any) -> tuple:
        key = index_key(self, sig, codegen)
        module = getattr(self._py_func, "__module__", None) or ""
        if module == package or module.startswith(package + "."):
            return (*key, ("crema tiling", fingerprint))
        return key

    caching.Cache._index_key = keyed


key_numba_cache()
