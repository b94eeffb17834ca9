// crema GPU SGEMM: the tiled sgemm (also the GEMM of convolution and InnerProduct backward and of InnerProduct
// forward above GEMV_MAX_M rows) and its obviously correct twin. CUDA C for NVRTC; the tile machinery is in
// gemm.cuh (inlined by kernels/gpu/backend.py), loaded by kernels/gpu/gemm.py; every kernel is extern "C".
//
// Kernels (numbered as in SGEMM_CUDA, cuBLAS being "kernel 0" in the benchmark):
//   1. sgemm_naive    one thread per element of C, a plain loop over K: the obviously correct version (tests and
//                     `bench_gpu --only sgemm --naive`).
//   2. sgemm          C = op(A) op(B) (+ bias per row or per column) (+ C) (ReLU), optionally split-K (atomicAdd
//                     into a zeroed C, or into C itself to accumulate). Block tile BM x BN over BK-deep K panels in
//                     double-buffered shared memory (A stored k-major so both operands are read as float4), a
//                     TM x TN register tile per thread made of 4 x 4 quads spread over the block tile (conflict-free
//                     float4 shared loads, coalesced float4 stores), 16-byte global loads where aligned, and the next
//                     panel prefetched into registers while the current one is multiplied: one barrier per panel.
// Constants: see gemm.cuh (BM BN BK TM TN MIN_BLOCKS TRANS_A TRANS_B).
// Index arithmetic is 32-bit: the launchers refuse operands of 2^31 elements or more.
// Benchmark: python -m benchmarks.bench_gpu --only sgemm (checks against cupy.matmul first).

#include "gemm.cuh"

// ---- operand B, dense: op(B) K panel x columns n0..n0+BN of N -------------------------------------------------------
struct DenseB {
    const float* __restrict__ B;
    int ldb, N, n0;
    bool vec;

    __device__ __forceinline__ void load(int k0, int kend, float4 (&r)[B_LOADS]) const {
        const bool fast = vec && n0 + BN <= N && k0 + BK <= kend;
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int g = threadIdx.x + i * NT;
#if TRANS_B
            const int nn = g / (BK / 4), kk = (g % (BK / 4)) * 4;  // B stored N x K: 4 consecutive k at row n
            const int n = n0 + nn, k = k0 + kk;
            if (fast) {
                r[i] = *reinterpret_cast<const float4*>(B + n * ldb + k);
            } else {
                r[i] = load4_guarded(B + n * ldb + k, 1, n < N ? kend - k : 0);
            }
#else
            const int kk = g / (BN / 4), nn = (g % (BN / 4)) * 4;  // B stored K x N: 4 consecutive n at row k
            const int k = k0 + kk, n = n0 + nn;
            if (fast) {
                r[i] = *reinterpret_cast<const float4*>(B + k * ldb + n);
            } else {
                r[i] = load4_guarded(B + k * ldb + n, 1, k < kend ? N - n : 0);
            }
#endif
        }
    }

    __device__ __forceinline__ void store(PanelB& Bs, const float4 (&r)[B_LOADS]) const {
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int g = threadIdx.x + i * NT;
#if TRANS_B
            store4_transposed(&Bs[(g % (BK / 4)) * 4][g / (BK / 4)], BN + PAD, r[i]);
#else
            *reinterpret_cast<float4*>(&Bs[g / (BN / 4)][(g % (BN / 4)) * 4]) = r[i];
#endif
        }
    }
};


// ---- sgemm ----------------------------------------------------------------------------------------------------------
// Grid: (ceil(N / BN), ceil(M / BM), splits); split s = blockIdx.z covers K range [s * k_chunk, (s + 1) * k_chunk).
// bias_mode: 0 none, 1 per row of C, 2 per column.
extern "C" __global__ void __launch_bounds__(NT, MIN_BLOCKS)
sgemm(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, const float* __restrict__ bias,
      int M, int N, int K, int lda, int ldb, int ldc, int k_chunk, int bias_mode, int flags) {
    const int split = blockIdx.z;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int kbeg = split * k_chunk, kend = min(K, kbeg + k_chunk);

    DenseB lb;
    lb.B = B;
    lb.ldb = ldb;
    lb.N = N;
    lb.n0 = n0;
    lb.vec = (flags & F_VEC_B) != 0;
    float acc[TM][TN];
    gemm_mainloop(A, lda, M, m0, (flags & F_VEC_A) != 0, lb, kbeg, kend, acc);

    const int tr = threadIdx.x / (BN / TN), tc = threadIdx.x % (BN / TN);
    const bool atomic = (flags & F_ATOMIC) != 0, relu = (flags & F_RELU) != 0, accumulate = (flags & F_ACCUMULATE) != 0;
    const bool add_bias = bias_mode != 0 && split == 0;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + (i / 4) * SM + tr * 4 + (i % 4);
        if (m >= M) continue;
        const float row_bias = (add_bias && bias_mode == 1) ? bias[m] : 0.f;
#pragma unroll
        for (int j = 0; j < CN; ++j) {
            const int n = n0 + j * SN + tc * 4;
            float v[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                v[q] = acc[i][4 * j + q] + row_bias;
                if (add_bias && bias_mode == 2 && n + q < N) v[q] += bias[n + q];
            }
            float* c = C + m * ldc + n;
            if (atomic) {
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    if (n + q < N) atomicAdd(c + q, v[q]);
                }
            } else if ((flags & F_VEC_C) && n + 3 < N) {
                if (accumulate) {
                    const float4 old = *reinterpret_cast<const float4*>(c);
                    v[0] += old.x;
                    v[1] += old.y;
                    v[2] += old.z;
                    v[3] += old.w;
                }
                float4 out;
                out.x = relu ? fmaxf(v[0], 0.f) : v[0];
                out.y = relu ? fmaxf(v[1], 0.f) : v[1];
                out.z = relu ? fmaxf(v[2], 0.f) : v[2];
                out.w = relu ? fmaxf(v[3], 0.f) : v[3];
                *reinterpret_cast<float4*>(c) = out;
            } else {
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    if (n + q < N) {
                        float r = accumulate ? v[q] + c[q] : v[q];
                        c[q] = relu ? fmaxf(r, 0.f) : r;
                    }
                }
            }
        }
    }
}


// ---- reference ------------------------------------------------------------------------------------------------------
// C (M x N, ldc) = op(A) op(B) with the same TRANS_A / TRANS_B layouts as sgemm; grid over C, any block shape.
extern "C" __global__ void sgemm_naive(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                                       int M, int N, int K, int lda, int ldb, int ldc) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x, m = blockIdx.y * blockDim.y + threadIdx.y;
    if (m >= M || n >= N) return;
    float acc = 0.f;
    for (int k = 0; k < K; ++k) {
#if TRANS_A
        const float a = A[k * lda + m];
#else
        const float a = A[m * lda + k];
#endif
#if TRANS_B
        const float b = B[n * ldb + k];
#else
        const float b = B[k * ldb + n];
#endif
        acc = fmaf(a, b, acc);
    }
    C[m * ldc + n] = acc;
}
