"""This machine's FP32 peak, measured: independent multiply-add chains held in vector registers.

`fma_chains(lanes)` returns a compiled function f(reps, threads) that runs `lanes` float32 chains
``acc = fma(acc, m, c)`` reps times on each of `threads` threads (2 * lanes * reps * threads FLOPs), as
lanes / VW explicit vectors of the kernels' own width (``kernels.tiling.VW``: 16 with AVX-512, 8 with AVX2) in LLVM IR,
like the GEMM tiles. (A plain loop that LLVM vectorises measured only half the peak on an AVX-512 Xeon: LLVM prefers
256-bit vectors there, and the GEMM's 512-bit tiles then showed 120% of "peak".) How many chains it takes to cover
the FMA latency on every FMA port without spilling registers depends on the vector width (AVX2: 8 ymm chains of 8 = 64
lanes; AVX-512: 8 to 16 zmm chains = 128 to 256 lanes), so harness.measure_peak tries several widths and keeps the
fastest.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels.tiling import VW

LANE_CHOICES = (64, 128, 256)


def _chains(nvec: int):
    """An intrinsic chains(reps, c) -> float32: nvec <VW x float> accumulators, each reps times acc = fma(acc, m, c)
    (m just under 1, c from the caller so nothing folds), then the sum of every lane (so nothing is dead)."""

    @intrinsic
    def chains(typingctx, reps, c):
        sig = types.float32(types.int64, types.float32)

        def codegen(context, builder, signature, args):
            f32 = ir.FloatType()
            vec = ir.VectorType(f32, VW)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{VW}f32")
            slots = [
                cgutils.alloca_once_value(builder, ir.Constant(vec, [1e-3 * (i * VW + j) for j in range(VW)]))
                for i in range(nvec)
            ]
            m = ir.Constant(vec, [0.999999] * VW)
            cv = builder.insert_element(ir.Constant(vec, ir.Undefined), args[1], ir.Constant(ir.IntType(32), 0))
            zeros = ir.Constant(ir.VectorType(ir.IntType(32), VW), [0] * VW)
            cv = builder.shuffle_vector(cv, ir.Constant(vec, ir.Undefined), zeros)
            with cgutils.for_range(builder, args[0]):
                for s in slots:
                    builder.store(builder.call(fma, [builder.load(s), m, cv]), s)
            total = builder.load(slots[0])
            for s in slots[1:]:
                total = builder.fadd(total, builder.load(s))
            out = builder.extract_element(total, ir.Constant(ir.IntType(32), 0))
            for j in range(1, VW):
                out = builder.fadd(out, builder.extract_element(total, ir.Constant(ir.IntType(32), j)))
            return out

        return sig, codegen

    return chains


def fma_chains(lanes: int):
    chains = _chains(max(1, lanes // VW))

    @njit(parallel=True)
    def run(reps, threads):  # pragma: no cover - compiled
        out = np.zeros(threads, np.float32)
        for t in prange(threads):
            out[t] = chains(reps, np.float32(1e-7) * np.float32(t + 1))
        return out

    return run


def fma_chain_thread(lanes: int):
    """f(reps, c) -> float32: `lanes` chains on the calling thread alone, with the GIL released, for a caller that runs
    it on threads of its own (harness.Calm: no OpenMP team, whose threads spin on after each parallel loop)."""
    chains = _chains(max(1, lanes // VW))

    @njit(nogil=True)
    def run(reps, c):  # pragma: no cover - compiled
        return chains(reps, c)

    return run
