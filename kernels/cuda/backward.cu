// crema GPU backward kernels for training: pooling, LRN, activations, softmax (+ loss), dropout, concat, eltwise,
// the per-channel sums of bias gradients, and the im2col / col2im / dy packing that turn convolution dW and dX into
// sgemm calls (kernels/cuda/gemm.cu). NCHW float32. CUDA C for NVRTC (no #include), loaded by kernels/gpu_backward.py.
// Each kernel has a plain CPU twin in kernels/{pool,lrn,activations,loss,elementwise,conv}.py with the same formula;
// tests/kernels/test_gpu_backward.py compares the two on the CUDA emulator (and on a GPU where there is one).
//
// Kernels (grid-stride unless noted; every input gradient is OVERWRITTEN, channel_sum ACCUMULATES):
//   1. pool2d_max_backward   one thread per input pixel: sums dy over the outputs whose window covers it and whose
//                            recorded argmax (mask, h * W + w) is this pixel, in output order (as the CPU scatter).
//   2. pool2d_ave_backward   one thread per input pixel: sums dy / divisor over the covering windows (Caffe's divisor,
//                            padding included, taken before clipping).
//   3. lrn_across_backward   one thread per (image, pixel) walking the channels twice with float64 running sums:
//                            pass 1 recomputes scale, writes dy * scale^-beta and the ratio dy * x * scale^-beta / scale
//                            (own column of `ratio`, no other thread reads it), pass 2 subtracts coeff x * window sum.
//   4. lrn_within_ratio      WITHIN_CHANNEL, pass 1: per pixel scale from the n x n box of x^2; dx = dy scale^-beta,
//                            ratio = dy x scale^-beta / scale.
//   5. lrn_within_backward   pass 2: dx -= coeff x * (n x n box sum of ratio, float64).
//   6. relu_backward         dx = dy * (x > 0 ? 1 : slope)  (x may be the output when the layer ran in place)
//   6b. clip_backward        dx = dy where lo <= x <= hi (inclusive) or lo < x < hi (x the in-place output), else 0
//   7. sigmoid_backward      dx = dy * y * (1 - y)
//   8. tanh_backward         dx = dy * (1 - y * y)
//   9. softmax_backward_rows     dx = (dy - sum(dy y)) * y over C contiguous values: one block per row, the float64
//                                dot reduced in shared memory (blockDim.x a power of two <= SOFTMAX_THREADS).
//  10. softmax_backward_strided  the same over axis C of (outer, C, inner): one thread per (outer, inner) position.
//  11. softmax_loss          one block: -sum log(max(p[label], FLT_MIN)) in float64 over the non-ignored positions,
//                            normalised as Caffe (mode 0 FULL, 1 VALID, 2 BATCH_SIZE, 3 NONE); out[0] = loss,
//                            out[1] = normaliser, out[2] = count of labels outside [0, C) (the launcher raises).
//  12. softmax_loss_grad     dx = (p - onehot(label)) * float(loss_weight / normaliser), 0 at ignored positions;
//                            the normaliser is read from the loss kernel's out[1] (no host round trip).
//  13. dropout_forward       keep = u < 1 - ratio with u = 24 random bits of splitmix64(seed, index) / 2^24: a
//                            counter-based device RNG (the same mask for any launch geometry); mask uint8.
//  14. dropout_backward      dx = dy * (mask ? scale : 0)
//  15. concat_slice          dst[o, r] = src[o, src_off + r]: one input's slice of the Concat gradient.
//  16. scale_copy            y = a x  (Eltwise SUM backward)
//  17. mask_select           dx = mask == k ? dy : 0  (Eltwise MAX backward)
//  18. channel_sum           out[g] += sum over (outer, inner) of x[o, g, i]: one block per channel, float64 partial
//                            sums reduced in shared memory (bias gradients of Convolution and InnerProduct).
//  19. pack_dy               dyp[m, img * P + p] = dy[img, m, p]: dy of a chunk of images as one (M x n_img P) matrix.
//  20. im2col                col[k, img * P + p] = x[img, c, oh sh - ph + i dh, ow sw - pw + j dw] (0 in the padding),
//                            k = (c kh + i) kw + j over all channels (group g owns rows g Kg .. (g + 1) Kg).
//  21. col2im                dx[img, c, h, w] = sum over (i, j) of col[k, img * P + p] for the outputs p that saw the
//                            pixel: one thread per input pixel (a gather: deterministic, no atomics).
// Index arithmetic is 32-bit: the launchers cut every launch below 2^31 elements per array.

#ifndef SOFTMAX_THREADS
#define SOFTMAX_THREADS 256
#endif
#ifndef REDUCE_THREADS
#define REDUCE_THREADS 256
#endif
#define FLT_MIN_VALUE 1.17549435e-38f

__device__ __forceinline__ float pow_neg(float s, float beta) {
    if (beta == 0.75f) return 1.0f / sqrtf(s * sqrtf(s));
    if (beta == 1.0f) return 1.0f / s;
    if (beta == 0.5f) return 1.0f / sqrtf(s);
    return powf(s, -beta);
}

// ---- pooling -------------------------------------------------------------------------------------------------
// dy, mask (planes, OH, OW); dx (planes, H, W).
extern "C" __global__ void pool2d_max_backward(const float* __restrict__ dy, const int* __restrict__ mask,
                                               float* __restrict__ dx, int planes, int H, int W, int OH, int OW, int kh,
                                               int kw, int sh, int sw, int ph, int pw) {
    const int total = planes * H * W;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int w = t % W, r = t / W;
        const int h = r % H, q = r / H;
        const int ohs = (h + ph < kh) ? 0 : (h + ph - kh) / sh + 1, ohe = min((h + ph) / sh + 1, OH);
        const int ows = (w + pw < kw) ? 0 : (w + pw - kw) / sw + 1, owe = min((w + pw) / sw + 1, OW);
        const int me = h * W + w;
        const float* g = dy + q * OH * OW;
        const int* m = mask + q * OH * OW;
        float acc = 0.f;
        for (int oh = ohs; oh < ohe; ++oh) {
            for (int ow = ows; ow < owe; ++ow) {
                if (m[oh * OW + ow] == me) acc += g[oh * OW + ow];
            }
        }
        dx[t] = acc;
    }
}

extern "C" __global__ void pool2d_ave_backward(const float* __restrict__ dy, float* __restrict__ dx, int planes, int H,
                                               int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw) {
    const int total = planes * H * W;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int w = t % W, r = t / W;
        const int h = r % H, q = r / H;
        const int ohs = (h + ph < kh) ? 0 : (h + ph - kh) / sh + 1, ohe = min((h + ph) / sh + 1, OH);
        const int ows = (w + pw < kw) ? 0 : (w + pw - kw) / sw + 1, owe = min((w + pw) / sw + 1, OW);
        const float* g = dy + q * OH * OW;
        float acc = 0.f;
        for (int oh = ohs; oh < ohe; ++oh) {
            const int hs = oh * sh - ph, he = min(hs + kh, H + ph);
            for (int ow = ows; ow < owe; ++ow) {
                const int ws = ow * sw - pw, we = min(ws + kw, W + pw);
                acc += g[oh * OW + ow] / (float)((he - hs) * (we - ws));
            }
        }
        dx[t] = acc;
    }
}

// ---- LRN -----------------------------------------------------------------------------------------------------
// x, dy, dx, ratio (N, C, P); ratio is scratch the launcher allocates.
extern "C" __global__ void lrn_across_backward(const float* __restrict__ x, const float* __restrict__ dy,
                                               float* __restrict__ dx, float* __restrict__ ratio, int N, int C, int P,
                                               int size, double alpha_over_n, float beta, double k, double coeff) {
    const int r = (size - 1) / 2;
    const int total = N * P;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int b = t / P, p = t - b * P;
        const int base = b * C * P + p;
        double acc = 0.0;
        for (int c = 0; c < min(r, C); ++c) {
            const double v = (double)x[base + c * P];
            acc += v * v;
        }
        for (int c = 0; c < C; ++c) {
            const int head = c + r, tail = c - r - 1;
            if (head < C) {
                const double v = (double)x[base + head * P];
                acc += v * v;
            }
            if (tail >= 0) {
                const double v = (double)x[base + tail * P];
                acc -= v * v;
            }
            const float s = (float)(k + alpha_over_n * acc);
            const float pw = pow_neg(s, beta);
            const float g = dy[base + c * P];
            dx[base + c * P] = g * pw;
            ratio[base + c * P] = g * x[base + c * P] * pw / s;
        }
        acc = 0.0;
        for (int c = 0; c < min(r, C); ++c) acc += (double)ratio[base + c * P];
        for (int c = 0; c < C; ++c) {
            const int head = c + r, tail = c - r - 1;
            if (head < C) acc += (double)ratio[base + head * P];
            if (tail >= 0) acc -= (double)ratio[base + tail * P];
            dx[base + c * P] -= (float)(coeff * (double)x[base + c * P] * acc);
        }
    }
}

// x, dy, dx, ratio (planes, H, W).
extern "C" __global__ void lrn_within_ratio(const float* __restrict__ x, const float* __restrict__ dy,
                                            float* __restrict__ dx, float* __restrict__ ratio, int planes, int H, int W,
                                            int size, double alpha_over_n2, float beta) {
    const int r = (size - 1) / 2;
    const int total = planes * H * W;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int j = t % W, rest = t / W;
        const int i = rest % H, q = rest / H;
        const float* plane = x + q * H * W;
        double sum = 0.0;
        for (int ii = max(i - r, 0); ii < min(i + r + 1, H); ++ii) {
            for (int jj = max(j - r, 0); jj < min(j + r + 1, W); ++jj) {
                const double v = (double)plane[ii * W + jj];
                sum += v * v;
            }
        }
        const float s = (float)(1.0 + alpha_over_n2 * sum);
        const float pw = pow_neg(s, beta);
        const float g = dy[t];
        dx[t] = g * pw;
        ratio[t] = g * x[t] * pw / s;
    }
}

extern "C" __global__ void lrn_within_backward(const float* __restrict__ x, const float* __restrict__ ratio,
                                               float* __restrict__ dx, int planes, int H, int W, int size,
                                               double coeff) {
    const int r = (size - 1) / 2;
    const int total = planes * H * W;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int j = t % W, rest = t / W;
        const int i = rest % H, q = rest / H;
        const float* plane = ratio + q * H * W;
        double sum = 0.0;
        for (int ii = max(i - r, 0); ii < min(i + r + 1, H); ++ii) {
            for (int jj = max(j - r, 0); jj < min(j + r + 1, W); ++jj) sum += (double)plane[ii * W + jj];
        }
        dx[t] -= (float)(coeff * (double)x[t] * sum);
    }
}

// ---- activations ---------------------------------------------------------------------------------------------
extern "C" __global__ void relu_backward(const float* dy, const float* x, float* dx, int n, float slope) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        dx[i] = dy[i] * (x[i] > 0.f ? 1.f : slope);
    }
}

extern "C" __global__ void clip_backward(const float* dy, const float* x, float* dx, int n, float lo, float hi,
                                         int inclusive) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float v = x[i];
        const bool inside = inclusive ? (v >= lo && v <= hi) : (v > lo && v < hi);
        dx[i] = inside ? dy[i] : 0.f;
    }
}

extern "C" __global__ void sigmoid_backward(const float* dy, const float* y, float* dx, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float v = y[i];
        dx[i] = __fmul_rn(__fmul_rn(dy[i], v), 1.f - v);
    }
}

extern "C" __global__ void tanh_backward(const float* dy, const float* y, float* dx, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float v = y[i];
        dx[i] = __fmul_rn(dy[i], 1.f - __fmul_rn(v, v));
    }
}

// dy, y, dx (rows, C); dx may be dy or y. gridDim.x blocks take rows b, b + gridDim.x, ...
extern "C" __global__ void softmax_backward_rows(const float* dy, const float* y, float* dx, int rows, int C) {
    __shared__ double red[SOFTMAX_THREADS];
    const int tid = threadIdx.x;
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* g = dy + row * C;
        const float* yr = y + row * C;
        double dot = 0.0;
        for (int c = tid; c < C; c += blockDim.x) dot += (double)g[c] * (double)yr[c];
        red[tid] = dot;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (tid < s) red[tid] += red[tid + s];
            __syncthreads();
        }
        const float d = (float)red[0];
        __syncthreads();  // every thread has read red[0] before any thread of the next row writes red
        for (int c = tid; c < C; c += blockDim.x) dx[row * C + c] = (g[c] - d) * yr[c];
    }
}

extern "C" __global__ void softmax_backward_strided(const float* dy, const float* y, float* dx, int outer, int C,
                                                    int inner) {
    const int total = outer * inner;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int o = t / inner, i = t - o * inner;
        const int base = o * C * inner + i;
        double dot = 0.0;
        for (int c = 0; c < C; ++c) dot += (double)dy[base + c * inner] * (double)y[base + c * inner];
        const float d = (float)dot;
        for (int c = 0; c < C; ++c) dx[base + c * inner] = (dy[base + c * inner] - d) * y[base + c * inner];
    }
}

// ---- SoftmaxWithLoss ----------------------------------------------------------------------------------------------
// prob (outer, C, inner); labels (outer * inner) float; out[3]. One block of REDUCE_THREADS threads.
extern "C" __global__ void softmax_loss(const float* __restrict__ prob, const float* __restrict__ labels,
                                        float* __restrict__ out, int outer, int C, int inner, int ignore,
                                        int has_ignore, int mode) {
    __shared__ double red_loss[REDUCE_THREADS];
    __shared__ int red_valid[REDUCE_THREADS];
    __shared__ int red_bad[REDUCE_THREADS];
    const int tid = threadIdx.x, total = outer * inner;
    double loss = 0.0;
    int valid = 0, bad = 0;
    for (int t = tid; t < total; t += blockDim.x) {
        const int o = t / inner, i = t - o * inner;
        const int label = (int)labels[t];
        if (has_ignore && label == ignore) continue;
        if (label < 0 || label >= C) {
            ++bad;
            continue;
        }
        ++valid;
        const float p = prob[(o * C + label) * inner + i];
        loss -= log((double)fmaxf(p, FLT_MIN_VALUE));
    }
    red_loss[tid] = loss;
    red_valid[tid] = valid;
    red_bad[tid] = bad;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (tid < s) {
            red_loss[tid] += red_loss[tid + s];
            red_valid[tid] += red_valid[tid + s];
            red_bad[tid] += red_bad[tid + s];
        }
        __syncthreads();
    }
    if (tid == 0) {
        int norm = mode == 0 ? total : (mode == 1 ? red_valid[0] : (mode == 2 ? outer : 1));
        norm = max(norm, 1);
        out[0] = (float)(red_loss[0] / (double)norm);
        out[1] = (float)norm;
        out[2] = (float)red_bad[0];
    }
}

// prob, dx (outer, C, inner); labels (outer * inner); stats = softmax_loss's out (stats[1] the normaliser).
extern "C" __global__ void softmax_loss_grad(const float* __restrict__ prob, const float* __restrict__ labels,
                                             const float* __restrict__ stats, float* __restrict__ dx, int outer, int C,
                                             int inner, int ignore, int has_ignore, double loss_weight) {
    const float scale = (float)(loss_weight / (double)stats[1]);
    const int total = outer * C * inner;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int i = t % inner, r = t / inner;
        const int c = r % C, o = r / C;
        const int label = (int)labels[o * inner + i];
        if (has_ignore && label == ignore) {
            dx[t] = 0.f;
        } else {
            const float v = prob[t] * scale;
            dx[t] = c == label ? v - scale : v;
        }
    }
}

// ---- Dropout ---------------------------------------------------------------------------------------------------
__device__ __forceinline__ unsigned int splitmix_bits(unsigned long long seed, unsigned long long index) {
    unsigned long long z = seed + 0x9E3779B97F4A7C15ull * (index + 1ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (unsigned int)(z >> 40);  // 24 bits
}

// x, y (n); mask uint8 (n). offset: index of x[0] in the whole array (launches cut in chunks draw the same mask).
extern "C" __global__ void dropout_forward(const float* __restrict__ x, float* __restrict__ y,
                                           unsigned char* __restrict__ mask, int n, long long seed, long long offset,
                                           float keep, float scale) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float u = (float)splitmix_bits((unsigned long long)seed, (unsigned long long)(offset + i)) *
                        (1.0f / 16777216.0f);
        const bool k = u < keep;
        mask[i] = k ? 1 : 0;
        y[i] = k ? x[i] * scale : 0.f;
    }
}

extern "C" __global__ void dropout_backward(const float* dy, const unsigned char* __restrict__ mask, float* dx, int n,
                                            float scale) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        dx[i] = dy[i] * (mask[i] ? scale : 0.f);
    }
}

// ---- Concat, Eltwise -----------------------------------------------------------------------------------------------
extern "C" __global__ void concat_slice(const float* __restrict__ src, float* __restrict__ dst, int outer, int dst_row,
                                        int src_row, int src_off) {
    const int total = outer * dst_row;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int o = i / dst_row, r = i - o * dst_row;
        dst[i] = src[o * src_row + src_off + r];
    }
}

extern "C" __global__ void scale_copy(float a, const float* x, float* y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) y[i] = a * x[i];
}

extern "C" __global__ void mask_select(const float* dy, const int* __restrict__ mask, float* dx, int n, int k) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        dx[i] = mask[i] == k ? dy[i] : 0.f;
    }
}

// ---- bias gradients and convolution helpers ------------------------------------------------------------------------
// x (outer, G, inner); out (G,) += sums. Blocks of REDUCE_THREADS (a power of two); block b takes channels b, b + grid.
extern "C" __global__ void channel_sum(const float* __restrict__ x, float* __restrict__ out, int outer, int G,
                                       int inner) {
    __shared__ double red[REDUCE_THREADS];
    const int tid = threadIdx.x, count = outer * inner;
    for (int g = blockIdx.x; g < G; g += gridDim.x) {
        double acc = 0.0;
        for (int t = tid; t < count; t += blockDim.x) {
            const int o = t / inner, i = t - o * inner;
            acc += (double)x[(o * G + g) * inner + i];
        }
        red[tid] = acc;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (tid < s) red[tid] += red[tid + s];
            __syncthreads();
        }
        if (tid == 0) out[g] += (float)red[0];
        __syncthreads();  // red is reused by the next channel
    }
}

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
