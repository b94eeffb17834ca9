// crema GPU solver update: Caffe's SGD and Nesterov steps (with clipping, iter_size scaling, L2 / L1 weight decay and
// per-blob lr_mult / decay_mult) fused into one launch over every learnable blob (caffe_facts §6.1, kernels/optim.py).
// CUDA C for NVRTC (no #include), loaded by kernels/gpu/optim.py.
//
// The solver keeps all learnable blobs as views of three flat device buffers (weights w, gradients g, history h);
// segment s is elements [off[s], off[s + 1]) (the gaps between segments, for 256-byte alignment, are never touched).
// Kernels (grid: (x blocks, segments), blockIdx.y = segment, grid-stride over the segment in x):
//   1. sumsq_segments    partial[s * gridDim.x + blockIdx.x] = float64 sum of g^2 over the blocks' share of segment s
//                        (0 for segments with lr_mult == 0): the first pass of the global L2 norm for clipping.
//   2. sum_partials      one block: out[0] = sum of the partials (float64); the launcher takes sqrt on the host.
//   3. sgd_fused         per element of every segment with lr_mult != 0, in float64 like the CPU kernels:
//                          g' = float(g * clip)                          (clip = 1 when the norm is under the limit)
//                          v  = g' * scale + decay[s] * (w or sign(w))   (stored as float into g)
//                          SGD:      h' = momentum h + rate lr_mult[s] v;  step = h'
//                          Nesterov: h' = momentum h + rate lr_mult[s] v;  step = (1 + momentum) h' - momentum h
//                          h = float(h'); g = float(step); w = float(w - step)
// Index arithmetic is 32-bit: the flat buffers hold < 2^31 elements (the launcher checks).

#ifndef REDUCE_THREADS
#define REDUCE_THREADS 256
#endif

extern "C" __global__ void sumsq_segments(const float* __restrict__ g, const int* __restrict__ off,
                                          const double* __restrict__ lr_mult, double* __restrict__ partial) {
    __shared__ double red[REDUCE_THREADS];
    const int s = blockIdx.y, tid = threadIdx.x;
    double acc = 0.0;
    if (lr_mult[s] != 0.0) {
        for (int i = off[s] + blockIdx.x * blockDim.x + tid; i < off[s + 1]; i += gridDim.x * blockDim.x) {
            const double v = (double)g[i];
            acc += v * v;
        }
    }
    red[tid] = acc;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (tid < k) red[tid] += red[tid + k];
        __syncthreads();
    }
    if (tid == 0) partial[s * gridDim.x + blockIdx.x] = red[0];
}

extern "C" __global__ void sum_partials(const double* __restrict__ partial, double* __restrict__ out, int n) {
    __shared__ double red[REDUCE_THREADS];
    const int tid = threadIdx.x;
    double acc = 0.0;
    for (int i = tid; i < n; i += blockDim.x) acc += partial[i];
    red[tid] = acc;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (tid < k) red[tid] += red[tid + k];
        __syncthreads();
    }
    if (tid == 0) out[0] = red[0];
}

extern "C" __global__ void sgd_fused(float* __restrict__ w, float* __restrict__ g, float* __restrict__ h,
                                     const int* __restrict__ off, const double* __restrict__ lr_mult,
                                     const double* __restrict__ decay, double rate, double momentum, double scale,
                                     float clip, int l1, int nesterov) {
    const int s = blockIdx.y;
    const double mult = lr_mult[s];
    if (mult == 0.0) return;  // the CPU solver skips such blobs entirely (no decay either)
    const double local = rate * mult, dec = decay[s];
    for (int i = off[s] + blockIdx.x * blockDim.x + threadIdx.x; i < off[s + 1]; i += gridDim.x * blockDim.x) {
        const float wf = w[i];
        const float gc = __fmul_rn(g[i], clip);
        double v = (double)gc * scale;
        if (dec != 0.0) v += l1 ? dec * (double)((wf > 0.f) - (wf < 0.f)) : dec * (double)wf;
        const float vf = (float)v;  // the regularised gradient, as the CPU stores it in g before the step
        const double old = (double)h[i];
        const double hn = momentum * old + local * (double)vf;
        const double step = nesterov ? (1.0 + momentum) * hn - momentum * old : hn;
        h[i] = (float)hn;
        g[i] = (float)step;
        w[i] = (float)((double)wf - step);
    }
}
