// crema GPU convolution, forward and backward, NCHW float32 (caffe_facts §4.1, kernels/conv.py). CUDA C for NVRTC;
// the tile machinery is in gemm.cuh (inlined by kernels/gpu/backend.py), loaded by kernels/gpu/conv.py.
//
// Kernels:
//   1. conv2d_igemm   convolution (groups, stride, pad, dilation) as an implicit GEMM per group g:
//                     Y_g (Mg x N*P) = W_g (Mg x Cg*KH*KW) @ im2col(X)_g (Cg*KH*KW x N*P), P = OH*OW. The B panel is
//                     gathered from the image on the fly (no im2col buffer), columns run over all images of the
//                     launch, the epilogue scatters to NCHW and fuses bias and ReLU. Same tiling as sgemm.
//   2. pack_dy        dyp[m, img * P + p] = dy[img, m, p]: dy of a chunk of images as one (M x n_img P) matrix.
//   3. im2col         col[k, img * P + p] = x[img, c, oh sh - ph + i dh, ow sw - pw + j dw] (0 in the padding),
//                     k = (c kh + i) kw + j over all channels (group g owns rows g Kg .. (g + 1) Kg).
//   4. col2im         dx[img, c, h, w] = sum over (i, j) of col[k, img * P + p] for the outputs p that saw the
//                     pixel: one thread per input pixel (a gather: deterministic, no atomics).
// Backward (kernels/gpu/conv.py): dW_g += dY_g @ im2col(X)_g^T and dX = col2im(W_g^T @ dY_g) on sgemm (gemm.cu),
// db += the per-channel sums of dY (channel_sum, elementwise.cu).
//
// Constants (-D from the loader): the tile (gemm.cuh), and KH KW, the conv2d_igemm window (compile time so the
// k -> (c, i, j) split is mul/shift).
// Index arithmetic is 32-bit: the launchers split a convolution's images so every array of a launch has < 2^31
// elements.
// Benchmark: python -m benchmarks.bench_gpu --only conv (checks against PyTorch first); python -m
// benchmarks.bench_gpu_train for backward.

#include "gemm.cuh"

#ifndef KH
#define KH 3
#endif
#ifndef KW
#define KW 3
#endif

static_assert(NT % (BN / 4) == 0, "conv2d_igemm: a thread's B columns stay the same across its loads");

// ---- operand B, implicit im2col: row k = (c, i, j) of the window, column = (image, oh, ow) --------------------------
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

// ---- forward --------------------------------------------------------------------------------------------------------
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

// ---- depthwise forward (group == C == M: one input channel per output channel) ---------------------------------------
// As an implicit GEMM each group would be one row (Mg = 1) of a BM-row tile; here one thread per output
// (image, channel, oy, ox) sums its KH x KW taps in row order, then adds the bias and applies F_RELU. Grid-stride over
// y's n_img * C * OH * OW elements, in y's order (coalesced stores; neighbouring threads read neighbouring pixels).
extern "C" __global__ void conv2d_depthwise(const float* __restrict__ x, const float* __restrict__ w,
                                            const float* __restrict__ bias, float* __restrict__ y, int n_img, int C,
                                            int H, int W, int OH, int OW, int sh, int sw, int ph, int pw, int dh,
                                            int dw, int flags) {
    const int total = n_img * C * OH * OW;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int ox = t % OW, r1 = t / OW;
        const int oy = r1 % OH, plane = r1 / OH;  // plane = image * C + channel
        const int c = plane % C;
        const float* xp = x + plane * H * W;
        const float* wp = w + c * KH * KW;
        const int iy0 = oy * sh - ph, ix0 = ox * sw - pw;
        float acc = 0.f;
#pragma unroll
        for (int i = 0; i < KH; ++i) {
            const int iy = iy0 + i * dh;
            if (iy < 0 || iy >= H) continue;
#pragma unroll
            for (int j = 0; j < KW; ++j) {
                const int ix = ix0 + j * dw;
                if (ix < 0 || ix >= W) continue;
                acc = fmaf(xp[iy * W + ix], wp[i * KW + j], acc);
            }
        }
        if (flags & F_BIAS) acc += bias[c];
        y[t] = (flags & F_RELU) ? fmaxf(acc, 0.f) : acc;
    }
}

// ---- backward -------------------------------------------------------------------------------------------------------
// dy (n_img, M, P) -> dyp (M, n_img * P).
extern "C" __global__ void pack_dy(const float* __restrict__ dy, float* __restrict__ dyp, int n_img, int M, int P) {
    const int total = n_img * M * P, cols = n_img * P;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int col = t % cols, m = t / cols;
        const int img = col / P, p = col - img * P;
        dyp[t] = dy[(img * M + m) * P + p];
    }
}

// x (n_img, C, H, W) -> col (C * kh * kw, n_img * OH * OW).
extern "C" __global__ void im2col(const float* __restrict__ x, float* __restrict__ col, int n_img, int C, int H, int W,
                                  int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw) {
    const int P = OH * OW, cols = n_img * P, total = C * kh * kw * cols;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int q = t % cols, k = t / cols;
        const int j = k % kw, r = k / kw;
        const int i = r % kh, c = r / kh;
        const int img = q / P, p = q - img * P;
        const int oh = p / OW, ow = p - oh * OW;
        const int h = oh * sh - ph + i * dh, w = ow * sw - pw + j * dw;
        col[t] = (h >= 0 && h < H && w >= 0 && w < W) ? x[((img * C + c) * H + h) * W + w] : 0.f;
    }
}

// col (C * kh * kw, n_img * OH * OW) -> dx (n_img, C, H, W), overwritten.
extern "C" __global__ void col2im(const float* __restrict__ col, float* __restrict__ dx, int n_img, int C, int H, int W,
                                  int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw) {
    const int P = OH * OW, cols = n_img * P, total = n_img * C * H * W;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int w = t % W, r1 = t / W;
        const int h = r1 % H, r2 = r1 / H;
        const int c = r2 % C, img = r2 / C;
        float acc = 0.f;
        for (int i = 0; i < kh; ++i) {
            const int hh = h + ph - i * dh;
            if (hh < 0 || hh % sh) continue;
            const int oh = hh / sh;
            if (oh >= OH) continue;
            for (int j = 0; j < kw; ++j) {
                const int ww = w + pw - j * dw;
                if (ww < 0 || ww % sw) continue;
                const int ow = ww / sw;
                if (ow >= OW) continue;
                acc += col[((c * kh + i) * kw + j) * cols + img * P + oh * OW + ow];
            }
        }
        dx[t] = acc;
    }
}
