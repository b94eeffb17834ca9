"""crema's kernels: one module per op (CPU: Numba), kernels/gpu/ (CUDA launchers), kernels/cuda/ (CUDA C sources).

Importing the package keys Numba's on-disk cache on the tiling constants (kernels.tiling) before any kernel is loaded,
whatever module is imported first.
"""

from kernels import tiling as tiling
