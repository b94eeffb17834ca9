// crema GPU activations: ReLU, Sigmoid, TanH and Softmax forward, float32 (caffe_facts §4.5-4.7,
// kernels/activations.py). CUDA C for NVRTC (no #include), loaded by kernels/gpu.py.
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
// As on the CPU: exp of (x - max) in float32, the sum in float64, y = float(e / sum).
// Index arithmetic is 32-bit: the launcher splits each launch below 2^30 elements.

#ifndef SOFTMAX_THREADS
#define SOFTMAX_THREADS 256
#endif

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
