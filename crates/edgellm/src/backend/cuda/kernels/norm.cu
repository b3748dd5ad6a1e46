// Embedding gather and RMSNorm (optionally fused with the residual add).
//
// Residual stream `x` is fp32 [n_tokens, hidden]; normed outputs are activations in the storage
// type (`store_act`), as they feed the projections. Norm weights are fp32 (Gemma's `1 + w` folded in at load).
// Launch: one block per row, 1024 threads (a decode step has one row per token: one block must
// cover the row quickly; 256 threads took 9.5 us per Llama-3.2-1B residual+norm under ncu).

// x[t] = table[ids[t]] * scale
template <class W>
__device__ void embed_impl(const int* ids, const u16* table, float* x, int hidden, float scale) {
    pdl_start();
    const u16* row = table + (size_t)ids[blockIdx.x] * hidden;
    float* out = x + (size_t)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) out[i] = W::to_f(row[i]) * scale;
}

__device__ __forceinline__ float inv_rms(const float* x, int hidden, float eps) {
    float ss = 0.f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) ss += x[i] * x[i];
    return rsqrtf(block_sum(ss) / hidden + eps);
}

// out[r] = norm(x[rows ? rows[r] : r]) * w
template <class W>
__device__ void rmsnorm_impl(const float* x, const float* w, u16* out, const int* rows, int hidden, float eps) {
    pdl_start();
    int src = rows ? rows[blockIdx.x] : blockIdx.x;
    const float* xr = x + (size_t)src * hidden;
    float s = inv_rms(xr, hidden, eps);
    u16* o = out + (size_t)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) store_act<W>(o, i, (size_t)gridDim.x * hidden, xr[i] * s * w[i]);
}

// x[t] += post_w ? norm(h[t]) * post_w : h[t]; then, when next_w is set, out[t] = norm(x[t]) * next_w.
template <class W>
__device__ void residual_rmsnorm_impl(float* x, const float* h, const float* post_w, const float* next_w, u16* out,
                                      int hidden, float eps) {
    pdl_start();
    float* xr = x + (size_t)blockIdx.x * hidden;
    const float* hr = h + (size_t)blockIdx.x * hidden;
    float s = post_w ? inv_rms(hr, hidden, eps) : 1.f;
    float ss = 0.f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = xr[i] + (post_w ? hr[i] * s * post_w[i] : hr[i]);
        xr[i] = v;
        ss += v * v;
    }
    if (!next_w) return;
    float s2 = rsqrtf(block_sum(ss) / hidden + eps);
    u16* o = out + (size_t)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) store_act<W>(o, i, (size_t)gridDim.x * hidden, xr[i] * s2 * next_w[i]);
}

#define NORM_KERNELS(NAME, W)                                                                          \
    extern "C" __global__ void embed_##NAME(const int* ids, const u16* table, float* x, int hidden,      \
                                            float scale) {                                               \
        embed_impl<W>(ids, table, x, hidden, scale);                                                     \
    }                                                                                                    \
    extern "C" __global__ void rmsnorm_##NAME(const float* x, const float* w, u16* out, const int* rows, \
                                              int hidden, float eps) {                                   \
        rmsnorm_impl<W>(x, w, out, rows, hidden, eps);                                                   \
    }                                                                                                    \
    extern "C" __global__ void residual_rmsnorm_##NAME(float* x, const float* h, const float* post_w,    \
                                                       const float* next_w, u16* out, int hidden,        \
                                                       float eps) {                                      \
        residual_rmsnorm_impl<W>(x, h, post_w, next_w, out, hidden, eps);                                \
    }

NORM_KERNELS(f16, F16)
NORM_KERNELS(bf16, BF16)
