// crema GPU matrix kernels: SGEMM, convolution as an implicit GEMM, and GEMV for few-row InnerProduct.
// CUDA C for NVRTC (no #include), loaded by kernels/gpu.py through cupy.RawModule; every kernel is extern "C".
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
//   3. conv2d_igemm   convolution (groups, stride, pad, dilation) as an implicit GEMM per group g:
//                     Y_g (Mg x N*P) = W_g (Mg x Cg*KH*KW) @ im2col(X)_g (Cg*KH*KW x N*P), P = OH*OW. The B panel is
//                     gathered from the image on the fly (no im2col buffer), columns run over all images of the
//                     launch, the epilogue scatters to NCHW and fuses bias and ReLU. Same tiling as sgemm.
//   4. gemv_rows      y (M x N) = x (M x K) W^T (+ b), W (N x K), M <= GEMV_MAX_M: one warp per output column,
//                     W streamed once with float4 loads, warp-shuffle reduction (InnerProduct at batch 1..8).
//   5. gemv_rows_t    the same with W stored (K x N) (InnerProduct transpose: true): one thread per output column,
//                     K split over blockIdx.y with atomicAdd when there are few columns.
//
// Constants (-D from the loader; the defaults below are what `nvcc -arch=sm_90 -cubin` compile-checks):
//   BM BN BK TM TN MIN_BLOCKS   tile shape and occupancy hint of sgemm / conv2d_igemm
//   TRANS_A TRANS_B             sgemm operand layouts: op(A) = A (M x K) or A^T (A stored K x M); op(B) likewise
//   KH KW                       conv2d_igemm window (compile time so the k -> (c, i, j) split is mul/shift)
//   GEMV_MAX_M                  rows handled by gemv_rows / gemv_rows_t
// Index arithmetic is 32-bit: every array of a launch has < 2^31 elements (the launchers split a convolution's
// images into launches, and refuse larger GEMM operands).
// Benchmark: python -m benchmarks.bench_gpu --only sgemm,conv (checks against cupy.matmul / PyTorch first).

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
#ifndef KH
#define KH 3
#endif
#ifndef KW
#define KW 3
#endif
#ifndef GEMV_MAX_M
#define GEMV_MAX_M 8
#endif

// Epilogue and layout flags (kernels/gpu.py mirrors these values).
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
static_assert(NT % (BN / 4) == 0, "conv2d_igemm: a thread's B columns stay the same across its loads");

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

// ---- operand A: op(A) rows m0..m0+BM of M, K panel k0..k0+BK (below kend) --------------------------------------
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

// ---- operand B, dense: op(B) K panel x columns n0..n0+BN of N ------------------------------------------------
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

// ---- operand B, implicit im2col: row k = (c, i, j) of the window, column = (image, oh, ow) ------------------------
struct ConvB {
    const float* __restrict__ x;  // channel 0 of this group in image 0 of the launch
    int H, W, dh, dw;
    int pix[4];       // offset of the window origin (row ih0, column iw0) of each of this thread's 4 columns
    int ih0[4], iw0[4];  // window origin; far negative for columns past the end, so every bounds test fails

    __device__ __forceinline__ void init(int n0, int ncols, int P, int OW, int img_stride, int sh, int sw, int ph,
                                         int pw) {
        const int nn = (threadIdx.x % (BN / 4)) * 4;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = n0 + nn + j;
            if (col < ncols) {
                const int img = col / P, p = col - img * P;
                const int oh = p / OW, ow = p - oh * OW;
                ih0[j] = oh * sh - ph;
                iw0[j] = ow * sw - pw;
                pix[j] = img * img_stride + ih0[j] * W + iw0[j];
            } else {
                ih0[j] = -(1 << 28);
                iw0[j] = -(1 << 28);
                pix[j] = 0;
            }
        }
    }

    __device__ __forceinline__ void load(int k0, int kend, float4 (&r)[B_LOADS]) const {
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int k = k0 + (threadIdx.x + i * NT) / (BN / 4);
            const int c = k / (KH * KW), rest = k - c * (KH * KW);
            const int ki = rest / KW, kj = rest - ki * KW;
            const int dy = ki * dh, dx = kj * dw;
            const int off = c * H * W + dy * W + dx;
            const bool kin = k < kend;
            float v[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int ih = ih0[j] + dy, iw = iw0[j] + dx;
                v[j] = (kin && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W) ? x[pix[j] + off] : 0.f;
            }
            r[i].x = v[0];
            r[i].y = v[1];
            r[i].z = v[2];
            r[i].w = v[3];
        }
    }

    __device__ __forceinline__ void store(PanelB& Bs, const float4 (&r)[B_LOADS]) const {
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int g = threadIdx.x + i * NT;
            *reinterpret_cast<float4*>(&Bs[g / (BN / 4)][(g % (BN / 4)) * 4]) = r[i];
        }
    }
};

// ---- the block's multiply: acc += A panel x B panel ----------------------------------------------------------
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

// ---- kernels ---------------------------------------------------------------------------------------------------
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

// x (n_img, C, H, W) -> y (n_img, M, OH, OW); w (M, C/group, KH, KW); bias (M,). Grid: (ceil(n_img*OH*OW / BN),
// ceil(M/group / BM), group * splits).
extern "C" __global__ void __launch_bounds__(NT, MIN_BLOCKS)
conv2d_igemm(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
             float* __restrict__ y, int n_img, int C, int H, int W, int OH, int OW, int M, int group, int sh, int sw,
             int ph, int pw, int dh, int dw, int splits, int k_chunk, int flags) {
    const int split = blockIdx.z % splits, g = blockIdx.z / splits;
    const int Mg = M / group, Cg = C / group, Kg = Cg * KH * KW, P = OH * OW, ncols = n_img * P;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int kbeg = split * k_chunk, kend = min(Kg, kbeg + k_chunk);

    ConvB lb;
    lb.x = x + g * Cg * H * W;
    lb.H = H;
    lb.W = W;
    lb.dh = dh;
    lb.dw = dw;
    lb.init(n0, ncols, P, OW, C * H * W, sh, sw, ph, pw);
    float acc[TM][TN];
    gemm_mainloop(w + g * Mg * Kg, Kg, Mg, m0, (flags & F_VEC_A) != 0, lb, kbeg, kend, acc);

    const int tr = threadIdx.x / (BN / TN), tc = threadIdx.x % (BN / TN);
    const bool atomic = (flags & F_ATOMIC) != 0, relu = (flags & F_RELU) != 0;
    const bool add_bias = (flags & F_BIAS) != 0 && split == 0;
    int yoff[TN];  // offset of column (image, pixel) in y, channel 0; -1 past the end
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int col = n0 + (j / 4) * SN + tc * 4 + (j % 4);
        const int img = col / P;
        yoff[j] = col < ncols ? img * M * P + (col - img * P) : -1;
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + (i / 4) * SM + tr * 4 + (i % 4);
        if (m >= Mg) continue;
        const int ch = g * Mg + m;
        const float b = add_bias ? bias[ch] : 0.f;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            if (yoff[j] < 0) continue;
            float* dst = y + yoff[j] + ch * P;
            const float v = acc[i][j] + b;
            if (atomic) {
                atomicAdd(dst, v);
            } else {
                *dst = relu ? fmaxf(v, 0.f) : v;
            }
        }
    }
}

// ---- reference and GEMV ----------------------------------------------------------------------------------------
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
