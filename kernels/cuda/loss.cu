// crema GPU SoftmaxWithLoss: the multinomial logistic loss of softmax probabilities and its gradient, float32
// (caffe_facts §4.8, kernels/loss.py); the softmax itself is activations.cu's. CUDA C for NVRTC (no #include),
// loaded by kernels/gpu/loss.py.
//
// Kernels:
//   1. softmax_loss          one block: -sum log(max(p[label], FLT_MIN)) in float64 over the non-ignored positions,
//                            normalised as Caffe (mode 0 FULL, 1 VALID, 2 BATCH_SIZE, 3 NONE); out[0] = loss,
//                            out[1] = normaliser, out[2] = count of labels outside [0, C) (the launcher raises).
//   2. softmax_loss_grad     dx = (p - onehot(label)) * float(loss_weight / normaliser), 0 at ignored positions;
//                            the normaliser is read from the loss kernel's out[1] (no host round trip).
// Index arithmetic is 32-bit: the launcher refuses scores of more than 2^30 elements.

#ifndef REDUCE_THREADS
#define REDUCE_THREADS 256
#endif
#define FLT_MIN_VALUE 1.17549435e-38f

// ---- SoftmaxWithLoss ------------------------------------------------------------------------------------------------
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
