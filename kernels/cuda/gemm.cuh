// crema GPU GEMM tile machinery, shared by sgemm (gemm.cu) and conv2d_igemm (conv.cu): the tile constants, the
// epilogue flags, operand A loads, the panel multiply and the double-buffered main loop over K panels (templated on
// the operand B loader each kernel brings: DenseB in gemm.cu, ConvB in conv.cu). Included by those two files (nvcc
// finds it beside them); kernels/gpu/backend.py `cuda_source` inlines it, so NVRTC and the CPU emulator get one text.
//
// Constants (-D from the loader; the defaults below are what `nvcc -arch=sm_90 -cubin` compile-checks):
//   BM BN BK TM TN MIN_BLOCKS   tile shape and occupancy hint of sgemm / conv2d_igemm
//   TRANS_A TRANS_B             sgemm operand layouts: op(A) = A (M x K) or A^T (A stored K x M); op(B) likewise

#pragma once

#ifndef BM
#define BM 128
#endif
#ifndef BN
#define BN 128
#endif
#ifndef BK
#define BK 8
#endif
#ifndef TM
#define TM 8
#endif
#ifndef TN
#define TN 8
#endif
#ifndef MIN_BLOCKS
#define MIN_BLOCKS 2
#endif
#ifndef TRANS_A
#define TRANS_A 0
#endif
#ifndef TRANS_B
#define TRANS_B 0
#endif

// Epilogue and layout flags (kernels/gpu/gemm.py mirrors these values).
#define F_RELU 1        // y = max(y, 0) after bias
#define F_ACCUMULATE 2  // C += result (sgemm)
#define F_ATOMIC 4      // split-K: atomicAdd into C; bias only from split 0; no ReLU
#define F_VEC_A 8       // A rows (or columns with TRANS_A) are 16-byte aligned: float4 loads
#define F_VEC_B 16      // the same for B
#define F_VEC_C 32      // C rows are 16-byte aligned: float4 stores
#define F_BIAS 64       // conv2d_igemm: add bias[output channel]

#define NT ((BM / TM) * (BN / TN))  // threads per block
#define CM (TM / 4)                 // 4-row quads per thread
#define CN (TN / 4)                 // 4-column quads per thread
#define SM (BM / CM)                // distance between a thread's row quads
#define SN (BN / CN)                // distance between a thread's column quads
#define A_LOADS (BM * BK / (4 * NT))
#define B_LOADS (BN * BK / (4 * NT))
#define PAD 4                       // shared row padding: keeps float4 alignment, spreads transposed stores

static_assert(TM % 4 == 0 && TN % 4 == 0, "TM and TN must be multiples of 4");
static_assert(BK % 4 == 0 && BM % TM == 0 && BN % TN == 0, "tile shape");
static_assert(A_LOADS >= 1 && B_LOADS >= 1, "each thread loads at least one float4 of each panel");
static_assert((BM * BK) % (4 * NT) == 0 && (BN * BK) % (4 * NT) == 0, "panels split evenly over the threads");

typedef float PanelA[BK][BM + PAD];
typedef float PanelB[BK][BN + PAD];

__device__ __forceinline__ float4 load4_guarded(const float* __restrict__ p, int step, int n_valid) {
    // p[0], p[step], p[2 step], p[3 step], the first n_valid (<= 4, may be <= 0) real, the rest 0.
    float4 v;
    v.x = n_valid > 0 ? p[0] : 0.f;
    v.y = n_valid > 1 ? p[step] : 0.f;
    v.z = n_valid > 2 ? p[2 * step] : 0.f;
    v.w = n_valid > 3 ? p[3 * step] : 0.f;
    return v;
}

__device__ __forceinline__ void store4_transposed(float* dst, int stride, float4 v) {
    dst[0] = v.x;
    dst[stride] = v.y;
    dst[2 * stride] = v.z;
    dst[3 * stride] = v.w;
}

// ---- operand A: op(A) rows m0..m0+BM of M, K panel k0..k0+BK (below kend) -------------------------------------------
__device__ __forceinline__ void load_a(const float* __restrict__ A, int lda, int M, int m0, int k0, int kend,
                                       bool vec, float4 (&r)[A_LOADS]) {
    const bool fast = vec && m0 + BM <= M && k0 + BK <= kend;
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
        const int g = threadIdx.x + i * NT;
#if TRANS_A
        const int kk = g / (BM / 4), mm = (g % (BM / 4)) * 4;  // A stored K x M: 4 consecutive m at row k
        const int k = k0 + kk, m = m0 + mm;
        if (fast) {
            r[i] = *reinterpret_cast<const float4*>(A + k * lda + m);
        } else {
            r[i] = load4_guarded(A + k * lda + m, 1, k < kend ? M - m : 0);
        }
#else
        const int mm = g / (BK / 4), kk = (g % (BK / 4)) * 4;  // A stored M x K: 4 consecutive k at row m
        const int m = m0 + mm, k = k0 + kk;
        if (fast) {
            r[i] = *reinterpret_cast<const float4*>(A + m * lda + k);
        } else {
            r[i] = load4_guarded(A + m * lda + k, 1, m < M ? kend - k : 0);
        }
#endif
    }
}

__device__ __forceinline__ void store_a(PanelA& As, const float4 (&r)[A_LOADS]) {
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
        const int g = threadIdx.x + i * NT;
#if TRANS_A
        *reinterpret_cast<float4*>(&As[g / (BM / 4)][(g % (BM / 4)) * 4]) = r[i];
#else
        store4_transposed(&As[(g % (BK / 4)) * 4][g / (BK / 4)], BM + PAD, r[i]);
#endif
    }
}


// ---- the block's multiply: acc += A panel x B panel -----------------------------------------------------------------
__device__ __forceinline__ void multiply_panel(const PanelA& As, const PanelB& Bs, float (&acc)[TM][TN], int tr,
                                               int tc) {
#pragma unroll
    for (int k = 0; k < BK; ++k) {
        float a[TM], b[TN];
#pragma unroll
        for (int i = 0; i < CM; ++i) {
            const float4 v = *reinterpret_cast<const float4*>(&As[k][i * SM + tr * 4]);
            a[4 * i] = v.x;
            a[4 * i + 1] = v.y;
            a[4 * i + 2] = v.z;
            a[4 * i + 3] = v.w;
        }
#pragma unroll
        for (int j = 0; j < CN; ++j) {
            const float4 v = *reinterpret_cast<const float4*>(&Bs[k][j * SN + tc * 4]);
            b[4 * j] = v.x;
            b[4 * j + 1] = v.y;
            b[4 * j + 2] = v.z;
            b[4 * j + 3] = v.w;
        }
#pragma unroll
        for (int i = 0; i < TM; ++i) {
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
    }
}

// K panels kbeg..kend (kbeg a multiple of BK away from 0 is not required): load panel 0, then per panel prefetch
// the next one into registers, multiply the current one, park the prefetch in the other buffer, one barrier.
template <class LoaderB>
__device__ __forceinline__ void gemm_mainloop(const float* __restrict__ A, int lda, int M, int m0, bool vec_a,
                                              const LoaderB& lb, int kbeg, int kend, float (&acc)[TM][TN]) {
    __shared__ __align__(16) PanelA As[2];
    __shared__ __align__(16) PanelB Bs[2];
    const int tr = threadIdx.x / (BN / TN), tc = threadIdx.x % (BN / TN);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            acc[i][j] = 0.f;
        }
    }
    float4 ra[A_LOADS], rb[B_LOADS];
    load_a(A, lda, M, m0, kbeg, kend, vec_a, ra);
    lb.load(kbeg, kend, rb);
    store_a(As[0], ra);
    lb.store(Bs[0], rb);
    __syncthreads();
    int buf = 0;
    for (int k0 = kbeg; k0 < kend; k0 += BK) {
        const int next = k0 + BK;
        const bool more = next < kend;
        if (more) {
            load_a(A, lda, M, m0, next, kend, vec_a, ra);
            lb.load(next, kend, rb);
        }
        multiply_panel(As[buf], Bs[buf], acc, tr, tc);
        if (more) {
            store_a(As[buf ^ 1], ra);
            lb.store(Bs[buf ^ 1], rb);
        }
        __syncthreads();
        buf ^= 1;
    }
}
