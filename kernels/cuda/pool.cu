// crema GPU pooling: Caffe MAX and AVE pooling forward and backward, NCHW float32 (caffe_facts §4.2,
// kernels/pool.py). CUDA C for NVRTC (no #include), loaded by kernels/gpu/pool.py; grid-stride.
//
// Kernels:
//   1. pool2d_max   window rows [max(hs, 0), min(hs + kh, H)) (columns likewise), hs = oh * sh - ph: padding is never a
//                   candidate; strict '>' against a running maximum from -FLT_MAX, so the first maximum in row-major
//                   order wins and NaN never wins; an empty window gives -FLT_MAX and argmax -1. With record != 0 the
//                   argmax h * W + w within the input plane goes to mask (int32, Caffe's max_idx_).
//   2. pool2d_ave   divisor (he - hs) * (we - ws) with he = min(hs + kh, H + ph) taken before clipping to the image;
//                   the sum, in row-major order as on the CPU, runs over real pixels only.
//   3. pool2d_max_backward   one thread per input pixel: sums dy over the outputs whose window covers it and whose
//                            recorded argmax (mask, h * W + w) is this pixel, in output order (as the CPU scatter).
//   4. pool2d_ave_backward   one thread per input pixel: sums dy / divisor over the covering windows (Caffe's divisor,
//                            padding included, taken before clipping).
// Output sizes (Caffe's CEIL rule and the pad > 0 correction) are computed by the launcher (kernels.pool).
// Index arithmetic is 32-bit: the launcher splits the planes so each launch has < 2^31 input and output elements.

// ---- forward --------------------------------------------------------------------------------------------------------
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

// ---- backward -------------------------------------------------------------------------------------------------------
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
