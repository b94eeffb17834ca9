// crema GPU local response normalisation (Caffe LRN) forward and backward, NCHW float32 (caffe_facts §4.3,
// kernels/lrn.py). CUDA C for NVRTC (no #include), loaded by kernels/gpu/lrn.py.
//
// Kernels (n = local_size, odd; r = (n - 1) / 2):
//   1. lrn_across   ACROSS_CHANNELS: one thread per output, the float64 sum of squares of its n-channel window
//                   (clipped at the ends); scale = float(k + alpha / n * sum); y = x * scale^-beta. Coalesced along
//                   pixels. (The CPU kernel keeps a running sum along the channels instead: the float64 sums differ
//                   in their last bits at most, far below the float32 rounding of the scale.)
//   2. lrn_within   WITHIN_CHANNEL: one thread per output, the n x n window (zero padded) summed in float64;
//                   scale = float(1 + alpha / n^2 * sum) (k is ignored, as in Caffe).
//   3. lrn_across_backward   one thread per (image, pixel) walking the channels twice with float64 running sums:
//                            pass 1 recomputes scale, writes dy * scale^-beta and the ratio
//                            dy * x * scale^-beta / scale (own column of `ratio`, no other thread reads it), pass 2
//                            subtracts coeff x * window sum.
//   4. lrn_within_ratio      WITHIN_CHANNEL, pass 1: per pixel scale from the n x n box of x^2; dx = dy scale^-beta,
//                            ratio = dy x scale^-beta / scale.
//   5. lrn_within_backward   pass 2: dx -= coeff x * (n x n box sum of ratio, float64).
// scale^-beta has the CPU's fast paths: beta 0.75 -> 1 / sqrt(s sqrt(s)), 1 -> 1 / s, 0.5 -> 1 / sqrt(s).
// Index arithmetic is 32-bit: the launcher splits the images so each launch has < 2^31 elements.

__device__ __forceinline__ float pow_neg(float s, float beta) {
    if (beta == 0.75f) return 1.0f / sqrtf(s * sqrtf(s));
    if (beta == 1.0f) return 1.0f / s;
    if (beta == 0.5f) return 1.0f / sqrtf(s);
    return powf(s, -beta);
}

// ---- forward --------------------------------------------------------------------------------------------------------
// x, y (N, C, P) with P = H * W. One thread per output: its own window of n channels (float64 sum of squares), so a
// batch of one image has C times the threads a walk along the channels would have.
extern "C" __global__ void lrn_across(const float* __restrict__ x, float* __restrict__ y, int N, int C, int P,
                                      int size, double alpha_over_n, float beta, double k) {
    const int r = (size - 1) / 2;
    const int total = N * C * P;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int p = t % P, bc = t / P;
        const int c = bc % C, b = bc / C;
        const float* xp = x + b * C * P + p;
        double acc = 0.0;
        for (int cc = max(c - r, 0); cc <= min(c + r, C - 1); ++cc) {
            const double v = (double)xp[cc * P];
            acc += v * v;
        }
        const float s = (float)(k + alpha_over_n * acc);
        y[t] = x[t] * pow_neg(s, beta);
    }
}

// x, y (planes, H, W).
extern "C" __global__ void lrn_within(const float* __restrict__ x, float* __restrict__ y, int planes, int H, int W,
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
        y[t] = x[t] * pow_neg(s, beta);
    }
}

// ---- backward -------------------------------------------------------------------------------------------------------
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
