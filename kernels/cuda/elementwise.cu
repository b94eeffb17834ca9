// crema GPU elementwise ops: Eltwise, Concat, Bias / Scale and BatchNorm (inference) forward, the backward helpers of
// Concat and Eltwise, and the per-channel sums of bias gradients, float32 (caffe_facts §4.10-4.12,
// kernels/elementwise.py). CUDA C for NVRTC (no #include), loaded by kernels/gpu/elementwise.py.
//
// Kernels (grid-stride over the flat output; products and sums rounded separately, as on the CPU):
//   1. eltwise_axpby     y = a x + b z                        (SUM, applied pairwise over the bottoms; y may be x or z)
//   2. eltwise_prod      y = x z                              (PROD)
//   3. eltwise_max       y = x > z ? x : z                    (MAX: ties go to z; with k >= 0 also the winner to
//                        mask: k == 1 -> 0 / 1 for (bottom 0, bottom 1); k >= 2 -> k where bottom k beats y)
//   4. concat_copy       dst[o, dst_off + r] = src[o, r] over (outer, src_row) into rows of dst_row
//   5. channel_affine    y = x * gamma[g] (+ beta[g]) or x + beta[g], g = (i / inner) % G   (Scale, Bias)
//   6. batchnorm_inference  y = (x - f mean_sum[c]) / sqrt(f var_sum[c] + eps), c = (i / inner) % C
//   7. concat_slice          dst[o, r] = src[o, src_off + r]: one input's slice of the Concat gradient.
//   8. scale_copy            y = a x  (Eltwise SUM backward)
//   9. mask_select           dx = mask == k ? dy : 0  (Eltwise MAX backward)
//  10. channel_sum           out[g] += sum over (outer, inner) of x[o, g, i]: one block per channel, float64 partial
//                            sums reduced in shared memory (bias gradients of Convolution and InnerProduct).
// Index arithmetic is 32-bit: the launcher splits each launch below 2^30 elements.

#ifndef REDUCE_THREADS
#define REDUCE_THREADS 256
#endif

// ---- forward --------------------------------------------------------------------------------------------------------
extern "C" __global__ void eltwise_axpby(float a, const float* x, float b, const float* z, float* y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        y[i] = __fadd_rn(__fmul_rn(a, x[i]), __fmul_rn(b, z[i]));
    }
}

extern "C" __global__ void eltwise_prod(const float* x, const float* z, float* y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) y[i] = x[i] * z[i];
}

extern "C" __global__ void eltwise_max(const float* x, const float* z, float* y, int* mask, int n, int k) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float a = x[i], b = z[i];
        const bool win = a > b;
        y[i] = win ? a : b;
        if (k == 1) {
            mask[i] = win ? 0 : 1;
        } else if (k >= 2 && win) {
            mask[i] = k;
        }
    }
}

extern "C" __global__ void concat_copy(const float* __restrict__ src, float* __restrict__ dst, int outer, int src_row,
                                       int dst_row, int dst_off) {
    const int total = outer * src_row;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int o = i / src_row, r = i - o * src_row;
        dst[o * dst_row + dst_off + r] = src[i];
    }
}

// mode 0: y = x + beta[g]; 1: y = x * gamma[g]; 2: y = x * gamma[g] + beta[g]. y may be x.
extern "C" __global__ void channel_affine(const float* x, const float* __restrict__ gamma,
                                          const float* __restrict__ beta, float* y, int n, int G, int inner, int mode) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const int g = (i / inner) % G;
        const float v = x[i];
        if (mode == 0) {
            y[i] = v + beta[g];
        } else if (mode == 1) {
            y[i] = v * gamma[g];
        } else {
            y[i] = __fadd_rn(__fmul_rn(v, gamma[g]), beta[g]);
        }
    }
}

// factor = 0 if the stored scale factor s is 0 else 1 / s (float32, computed by the launcher). y may be x.
extern "C" __global__ void batchnorm_inference(const float* x, const float* __restrict__ mean_sum,
                                               const float* __restrict__ var_sum, float* y, int n, int C, int inner,
                                               float factor, float eps) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const int c = (i / inner) % C;
        const float mean = factor * mean_sum[c];
        const float std = sqrtf(__fadd_rn(factor * var_sum[c], eps));
        y[i] = (x[i] - mean) / std;
    }
}

// ---- backward -------------------------------------------------------------------------------------------------------
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

// ---- bias gradients (Bias, Convolution, InnerProduct) ---------------------------------------------------------------
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
