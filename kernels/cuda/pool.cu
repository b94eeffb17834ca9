// crema GPU pooling: Caffe MAX and AVE pooling forward, NCHW float32 (caffe_facts §4.2, kernels/pool.py).
// CUDA C for NVRTC (no #include), loaded by kernels/gpu.py; one thread per output element, grid-stride.
//
// Kernels:
//   1. pool2d_max   window rows [max(hs, 0), min(hs + kh, H)) (columns likewise), hs = oh * sh - ph: padding is never a
//                   candidate; strict '>' against a running maximum from -FLT_MAX, so the first maximum in row-major
//                   order wins and NaN never wins; an empty window gives -FLT_MAX and argmax -1. With record != 0 the
//                   argmax h * W + w within the input plane goes to mask (int32, Caffe's max_idx_).
//   2. pool2d_ave   divisor (he - hs) * (we - ws) with he = min(hs + kh, H + ph) taken before clipping to the image;
//                   the sum, in row-major order as on the CPU, runs over real pixels only.
// Output sizes (Caffe's CEIL rule and the pad > 0 correction) are computed by the launcher (kernels.pool).
// Index arithmetic is 32-bit: the launcher splits the planes so each launch has < 2^31 input and output elements.

#define NEG_FLT_MAX (-3.402823466e+38f)

extern "C" __global__ void pool2d_max(const float* __restrict__ x, float* __restrict__ y, int* __restrict__ mask,
                                      int planes, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph,
                                      int pw, int record) {
    const int total = planes * OH * OW;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int ow = t % OW, r = t / OW;
        const int oh = r % OH, q = r / OH;
        int hs = oh * sh - ph, ws = ow * sw - pw;
        const int he = min(hs + kh, H), we = min(ws + kw, W);
        hs = max(hs, 0);
        ws = max(ws, 0);
        const float* plane = x + q * H * W;
        float m = NEG_FLT_MAX;
        int idx = -1;
        for (int h = hs; h < he; ++h) {
            for (int w = ws; w < we; ++w) {
                const float v = plane[h * W + w];
                if (v > m) {
                    m = v;
                    idx = h * W + w;
                }
            }
        }
        y[t] = m;
        if (record) mask[t] = idx;
    }
}

extern "C" __global__ void pool2d_ave(const float* __restrict__ x, float* __restrict__ y, int planes, int H, int W,
                                      int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw) {
    const int total = planes * OH * OW;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int ow = t % OW, r = t / OW;
        const int oh = r % OH, q = r / OH;
        int hs = oh * sh - ph, ws = ow * sw - pw;
        int he = min(hs + kh, H + ph), we = min(ws + kw, W + pw);
        const float divisor = (float)((he - hs) * (we - ws));
        hs = max(hs, 0);
        ws = max(ws, 0);
        he = min(he, H);
        we = min(we, W);
        const float* plane = x + q * H * W;
        float acc = 0.f;
        for (int h = hs; h < he; ++h) {
            for (int w = ws; w < we; ++w) acc += plane[h * W + w];
        }
        y[t] = acc / divisor;
    }
}
