// crema GPU elementwise ops: Eltwise, Concat, Bias / Scale and BatchNorm (inference), float32
// (caffe_facts §4.10-4.12, kernels/elementwise.py). CUDA C for NVRTC (no #include), loaded by kernels/gpu.py.
//
// Kernels (grid-stride over the flat output; products and sums rounded separately, as on the CPU):
//   1. eltwise_axpby     y = a x + b z                        (SUM, applied pairwise over the bottoms; y may be x or z)
//   2. eltwise_prod      y = x z                              (PROD)
//   3. eltwise_max       y = x > z ? x : z                    (MAX: ties go to z; with k >= 0 also the winner to
//                        mask: k == 1 -> 0 / 1 for (bottom 0, bottom 1); k >= 2 -> k where bottom k beats y)
//   4. concat_copy       dst[o, dst_off + r] = src[o, r] over (outer, src_row) into rows of dst_row
//   5. channel_affine    y = x * gamma[g] (+ beta[g]) or x + beta[g], g = (i / inner) % G   (Scale, Bias)
//   6. batchnorm_inference  y = (x - f mean_sum[c]) / sqrt(f var_sum[c] + eps), c = (i / inner) % C
// Index arithmetic is 32-bit: the launcher splits each launch below 2^30 elements.

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
