// crema GPU activations: ReLU, Sigmoid, TanH and Softmax forward and backward, Dropout, float32 (caffe_facts §4.5-4.7,
// kernels/activations.py). CUDA C for NVRTC (no #include), loaded by kernels/gpu/activations.py.
//
// Kernels:
//   1. relu             y = max(x, 0) + slope * min(x, 0), grid-stride over the flat array (y may be x).
//   2. sigmoid          y = 0.5 tanh(0.5 x) + 0.5 (Caffe's CPU form, as kernels.activations).
//   3. tanh_forward     y = tanh(x).
//   4. softmax_rows     softmax over C contiguous values (inner == 1: (N, 1000) logits): one block per row, the
//                       maximum and the float64 sum of exp reduced in shared memory (blockDim.x a power of two,
//                       <= SOFTMAX_THREADS).
//   5. softmax_strided  softmax over axis C of (outer, C, inner) with inner > 1: one thread per (outer, inner)
//                       position walking C (coalesced along inner).
//   6. clip             y = min(max(x, lo), hi) (Caffe's Clip; ReLU6 is lo 0, hi 6), grid-stride (y may be x).
//   7. relu_backward         dx = dy * (x > 0 ? 1 : slope)  (x may be the output when the layer ran in place)
//   8. clip_backward        dx = dy where lo <= x <= hi (inclusive) or lo < x < hi (x the in-place output), else 0
//   9. sigmoid_backward      dx = dy * y * (1 - y)
//  10. tanh_backward         dx = dy * (1 - y * y)
//  11. softmax_backward_rows     dx = (dy - sum(dy y)) * y over C contiguous values: one block per row, the float64
//                                dot reduced in shared memory (blockDim.x a power of two <= SOFTMAX_THREADS).
//  12. softmax_backward_strided  the same over axis C of (outer, C, inner): one thread per (outer, inner) position.
//  13. dropout_forward       keep = u < 1 - ratio with u = 24 random bits of splitmix64(seed, index) / 2^24: a
//                            counter-based device RNG (the same mask for any launch geometry); mask uint8.
//  14. dropout_backward      dx = dy * (mask ? scale : 0)
// As on the CPU: exp of (x - max) in float32, the sum in float64, y = float(e / sum).
// Index arithmetic is 32-bit: the launcher splits each launch below 2^30 elements.

#ifndef SOFTMAX_THREADS
#define SOFTMAX_THREADS 256
#endif

// ---- forward --------------------------------------------------------------------------------------------------------
extern "C" __global__ void relu(const float* __restrict__ x, float* y, int n, float slope) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float v = x[i];
        y[i] = fmaxf(v, 0.f) + slope * fminf(v, 0.f);
    }
}

extern "C" __global__ void sigmoid(const float* __restrict__ x, float* y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        y[i] = 0.5f * tanhf(0.5f * x[i]) + 0.5f;
    }
}

extern "C" __global__ void tanh_forward(const float* __restrict__ x, float* y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        y[i] = tanhf(x[i]);
    }
}

// x, y (rows, C); gridDim.x * blocks = rows (block b handles rows b, b + gridDim.x, ...). y may be x.
extern "C" __global__ void softmax_rows(const float* x, float* y, int rows, int C) {
    __shared__ float red_max[SOFTMAX_THREADS];
    __shared__ double red_sum[SOFTMAX_THREADS];
    const int tid = threadIdx.x;
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + row * C;
        float* yr = y + row * C;
        float m = xr[0];
        for (int c = tid; c < C; c += blockDim.x) {
            const float v = xr[c];
            m = v > m ? v : m;
        }
        red_max[tid] = m;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (tid < s) {
                const float o = red_max[tid + s];
                red_max[tid] = o > red_max[tid] ? o : red_max[tid];
            }
            __syncthreads();
        }
        m = red_max[0];
        double total = 0.0;
        for (int c = tid; c < C; c += blockDim.x) {
            const float e = expf(xr[c] - m);
            yr[c] = e;
            total += (double)e;
        }
        red_sum[tid] = total;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (tid < s) red_sum[tid] += red_sum[tid + s];
            __syncthreads();
        }
        total = red_sum[0];
        for (int c = tid; c < C; c += blockDim.x) yr[c] = (float)((double)yr[c] / total);
        __syncthreads();  // red_max / red_sum are reused by the next row
    }
}

// x, y (outer, C, inner); one thread per (outer, inner) position. y may be x.
extern "C" __global__ void softmax_strided(const float* x, float* y, int outer, int C, int inner) {
    const int total = outer * inner;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int o = t / inner, i = t - o * inner;
        const float* xp = x + o * C * inner + i;
        float* yp = y + o * C * inner + i;
        float m = xp[0];
        for (int c = 1; c < C; ++c) {
            const float v = xp[c * inner];
            m = v > m ? v : m;
        }
        double sum = 0.0;
        for (int c = 0; c < C; ++c) {
            const float e = expf(xp[c * inner] - m);
            yp[c * inner] = e;
            sum += (double)e;
        }
        for (int c = 0; c < C; ++c) yp[c * inner] = (float)((double)yp[c * inner] / sum);
    }
}

extern "C" __global__ void clip(const float* __restrict__ x, float* y, int n, float lo, float hi) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        y[i] = fminf(fmaxf(x[i], lo), hi);
    }
}

// ---- backward -------------------------------------------------------------------------------------------------------
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

// ---- Dropout --------------------------------------------------------------------------------------------------------
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
