"""This machine's FP32 peak, measured: independent multiply-add chains that the compiler keeps in vector registers.

`fma_chains(lanes)` returns a compiled function f(reps, threads) that runs `lanes` float32 chains
``acc = acc * m + c`` reps times on each of `threads` threads (2 * lanes * reps * threads FLOPs). How many chains
it takes to cover the FMA latency on every FMA port without spilling registers depends on the vector width (AVX2:
8 ymm chains of 8 = 64 lanes; AVX-512: 8 to 16 zmm chains = 128 to 256 lanes), so harness.measure_peak tries
several widths and keeps the fastest.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

LANE_CHOICES = (64, 128, 256)


def fma_chains(lanes: int):
    @njit(fastmath=True, parallel=True)
    def run(reps, threads):  # pragma: no cover - compiled
        out = np.zeros(threads, np.float32)
        for t in prange(threads):
            acc = np.empty(lanes, np.float32)
            for j in range(lanes):
                acc[j] = np.float32(j * 1e-3 + t)
            m = np.float32(0.999999)
            c = np.float32(1e-7)
            for _ in range(reps):
                for j in range(lanes):
                    acc[j] = acc[j] * m + c
            s = np.float32(0.0)
            for j in range(lanes):
                s += acc[j]
            out[t] = s
        return out

    return run
