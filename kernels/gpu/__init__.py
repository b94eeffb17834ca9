"""GPU kernels: launchers for crema's CUDA C sources, one module per op with the CPU module's name and signatures.

  kernels/gpu/conv.py         kernels/cuda/conv.cu          conv2d_forward, conv2d_backward
  kernels/gpu/fc.py           kernels/cuda/fc.cu            inner_product_forward, inner_product_backward
  kernels/gpu/pool.py         kernels/cuda/pool.cu          pool2d_forward, pool2d_backward
  kernels/gpu/lrn.py          kernels/cuda/lrn.cu           lrn_forward, lrn_backward
  kernels/gpu/activations.py  kernels/cuda/activations.cu   relu / clip / sigmoid / tanh / softmax forward and
                                                            backward, dropout_forward, dropout_backward
  kernels/gpu/elementwise.py  kernels/cuda/elementwise.cu   concat, eltwise, scale, bias, batchnorm (inference),
                                                            concat / eltwise / split backward, channel_sum
  kernels/gpu/loss.py         kernels/cuda/loss.cu          softmax_loss_forward, softmax_loss_backward
  kernels/gpu/gemm.py         kernels/cuda/gemm.cu (+ gemm.cuh, the tiles conv.cu shares)   gemm, sgemm, sgemm_naive
  kernels/gpu/optim.py        kernels/cuda/optim.cu         the solver's fused SGD / Nesterov update
  kernels/gpu/backend.py      the runtime (CuPy's RawModule, or the tests' CPU emulator), sources, launch geometry

This package is the GPU namespace a layer calls through `net.device.kernels_for`: it imports, by name, every launcher
that has a CPU twin in net.device.CPU (same names, parameters and defaults), and the runtime entry points. Device
arrays in and out; host arrays given to a launcher are a ValueError (the Net uploads weights once and keeps
activations on the device, net/device.py). `runtime()` raises GPUBackendError (a RuntimeError) without CuPy or a
device; importing this package never imports CuPy. No cuBLAS, cuDNN or cupy.matmul here: those are the references in
benchmarks/bench_gpu.py. The modules import the CPU modules' public checks and geometry (kernels.conv.conv2d_geometry,
...), never each other's private helpers.

Benchmark: ``python -m benchmarks.bench_gpu`` (checks every result against cuBLAS / cuDNN first);
``python -m benchmarks.bench_gpu_train`` for training.
"""

from __future__ import annotations

from kernels.gpu.activations import (
    clip_backward,
    clip_forward,
    dropout_backward,
    dropout_forward,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    softmax_backward,
    softmax_forward,
    tanh_backward,
    tanh_forward,
)
from kernels.gpu.backend import (
    GPUBackendError,
    owns,
    runtime,
    to_device,
    to_host,
    unavailable_reason,
    upload,
    use_runtime,
)
from kernels.gpu.conv import conv2d_backward, conv2d_forward
from kernels.gpu.elementwise import (
    batchnorm_forward_inference,
    bias_forward,
    concat_backward,
    concat_forward,
    eltwise_backward,
    eltwise_forward,
    scale_forward,
    split_backward,
)
from kernels.gpu.fc import inner_product_backward, inner_product_forward
from kernels.gpu.loss import softmax_loss_backward, softmax_loss_forward
from kernels.gpu.lrn import lrn_backward, lrn_forward
from kernels.gpu.pool import pool2d_backward, pool2d_forward

__all__ = [
    "GPUBackendError",
    "batchnorm_forward_inference",
    "bias_forward",
    "clip_backward",
    "clip_forward",
    "concat_backward",
    "concat_forward",
    "conv2d_backward",
    "conv2d_forward",
    "dropout_backward",
    "dropout_forward",
    "eltwise_backward",
    "eltwise_forward",
    "inner_product_backward",
    "inner_product_forward",
    "lrn_backward",
    "lrn_forward",
    "owns",
    "pool2d_backward",
    "pool2d_forward",
    "relu_backward",
    "relu_forward",
    "runtime",
    "scale_forward",
    "sigmoid_backward",
    "sigmoid_forward",
    "softmax_backward",
    "softmax_forward",
    "softmax_loss_backward",
    "softmax_loss_forward",
    "split_backward",
    "tanh_backward",
    "tanh_forward",
    "to_device",
    "to_host",
    "unavailable_reason",
    "upload",
    "use_runtime",
]
