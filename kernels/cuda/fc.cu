// crema GPU InnerProduct forward for few rows: GEMV kernels that stream the weight once (caffe_facts §4.4,
// kernels/fc.py). CUDA C for NVRTC (no #include), loaded by kernels/gpu/fc.py. Larger batches, and the backward
// (dW, dx), run on sgemm (gemm.cu); db on channel_sum (elementwise.cu).
//
// Kernels:
//   1. gemv_rows      y (M x N) = x (M x K) W^T (+ b), W (N x K), M <= GEMV_MAX_M: one warp per output column,
//                     W streamed once with float4 loads, warp-shuffle reduction (InnerProduct at batch 1..8).
//   2. gemv_rows_t    the same with W stored (K x N) (InnerProduct transpose: true): one thread per output column,
//                     K split over blockIdx.y with atomicAdd when there are few columns.
// Constants (-D from the loader): GEMV_MAX_M, the rows handled by gemv_rows / gemv_rows_t.
// Index arithmetic is 32-bit: the launcher refuses operands of 2^31 elements or more.

#ifndef GEMV_MAX_M
#define GEMV_MAX_M 8
#endif

// y (M x N) = x (M x K) w^T (+ bias), w (N x K), M <= GEMV_MAX_M. One warp per output column n (blockDim.x a multiple
// of 32); every lane of every warp reaches the shuffles, also past the last column. vec: K % 4 == 0 and x, w
// 16-byte aligned.
extern "C" __global__ void gemv_rows(const float* __restrict__ x, const float* __restrict__ w,
                                     const float* __restrict__ bias, float* __restrict__ y, int M, int N, int K,
                                     int has_bias, int vec) {
    const int lane = threadIdx.x & 31;
    const int n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    float acc[GEMV_MAX_M];
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; ++m) acc[m] = 0.f;
    if (n < N) {
        const float* wr = w + n * K;
        if (vec) {
            const int K4 = K >> 2;
            for (int k4 = lane; k4 < K4; k4 += 32) {
                const float4 wv = reinterpret_cast<const float4*>(wr)[k4];
#pragma unroll
                for (int m = 0; m < GEMV_MAX_M; ++m) {
                    if (m < M) {
                        const float4 xv = reinterpret_cast<const float4*>(x + m * K)[k4];
                        acc[m] = fmaf(wv.x, xv.x, fmaf(wv.y, xv.y, fmaf(wv.z, xv.z, fmaf(wv.w, xv.w, acc[m]))));
                    }
                }
            }
        } else {
            for (int k = lane; k < K; k += 32) {
                const float wv = wr[k];
#pragma unroll
                for (int m = 0; m < GEMV_MAX_M; ++m) {
                    if (m < M) acc[m] = fmaf(wv, x[m * K + k], acc[m]);
                }
            }
        }
    }
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; ++m) {
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], off);
    }
    if (n < N && lane == 0) {
        const float b = has_bias ? bias[n] : 0.f;
#pragma unroll
        for (int m = 0; m < GEMV_MAX_M; ++m) {
            if (m < M) y[m * N + n] = acc[m] + b;
        }
    }
}

// y (M x N) (+)= x (M x K) w, w (K x N), M <= GEMV_MAX_M. One thread per column n; blockIdx.y takes K rows
// [blockIdx.y * k_chunk, +k_chunk). With gridDim.y > 1, y must be zeroed first and partial sums are atomically added
// (bias from the first chunk only).
extern "C" __global__ void gemv_rows_t(const float* __restrict__ x, const float* __restrict__ w,
                                       const float* __restrict__ bias, float* __restrict__ y, int M, int N, int K,
                                       int has_bias, int k_chunk) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const int kbeg = blockIdx.y * k_chunk, kend = min(K, kbeg + k_chunk);
    float acc[GEMV_MAX_M];
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; ++m) acc[m] = 0.f;
    for (int k = kbeg; k < kend; ++k) {
        const float wv = w[k * N + n];
#pragma unroll
        for (int m = 0; m < GEMV_MAX_M; ++m) {
            if (m < M) acc[m] = fmaf(x[m * K + k], wv, acc[m]);
        }
    }
    const float b = (has_bias && blockIdx.y == 0) ? bias[n] : 0.f;
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; ++m) {
        if (m >= M) continue;
        if (gridDim.y > 1) {
            atomicAdd(y + m * N + n, acc[m] + b);
        } else {
            y[m * N + n] = acc[m] + b;
        }
    }
}
