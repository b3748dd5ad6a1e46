// Decode GEMV on CUDA cores, for engines of at most SMALL_BATCH_SEQS sequences (model.rs): the same
// contract as gemv.cu's tensor-core GEMV (out[t, r] = sum_k x[t, k] * w[r, k] for NT <= 8 tokens;
// plain fp32 out soft-capped when cap > 0, or GATED: w = [gate; up], out = act(gate) * up as
// activations) with one more argument, `ksplit`. At 1-2 tokens it is 6-13% faster than the
// tensor-core kernel (more, smaller blocks: every warp of the short projections is resident at
// once); at 8 tokens its 64 FMAs per 16-byte weight load bound the step and the tensor-core kernel
// is 40% faster (NOTES.md v6, v8c). An engine uses one of the two for every batch size, so a
// token's sums never depend on the batch it runs in.
//
// Launch: 128 threads, `ksplit` (1, 2 or 4) warps per output row, each summing a contiguous
// 1/ksplit of the row, grid = ceil(rows * ksplit / 4). Each lane reads 16 bytes (8 elements) per
// step, 4 or 8 steps unrolled so that as many independent loads are in flight; `in` must be a
// multiple of 8. The first loads of weights are issued before waiting for the previous kernel.

template <class W, int NT, bool GATED>
__device__ void gemv_rows_impl(const u16* __restrict__ w, const u16* __restrict__ x, void* out, int rows, int in,
                          float cap, int act, int ksplit) {
    __shared__ float red[2][4][NT];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r = blockIdx.x * (4 / ksplit) + warp / ksplit, part = warp % ksplit;
    bool valid = r < rows;
    if (!valid) r = rows - 1;  // stays for the barrier below, writes nothing
    const uint4* wr = (const uint4*)(w + (size_t)r * in);
    const uint4* wu = (const uint4*)(w + (size_t)(r + rows) * in);
    float acc[NT], acc_u[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = acc_u[t] = 0.f;
    int n_vec_all = in >> 3;
    int chunk = (n_vec_all + ksplit - 1) / ksplit;
    int k0 = part * chunk, n_vec = min(n_vec_all, k0 + chunk);
    // loads in flight per lane: more where fewer accumulators hold registers
    const int U = NT <= 2 && !GATED ? 8 : 4;
    const int STEP = 32 * U;
    uint4 wv[U], uv[U];
    auto load = [&](int base) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            int k = base + u * 32 + lane;
            if (k < n_vec) {
                wv[u] = __ldg(wr + k);
                if (GATED) uv[u] = __ldg(wu + k);
            }
        }
    };
    // the first weights do not depend on the previous kernel: their loads overlap its tail
    load(k0);
    pdl_start();
    for (int base = k0; base < n_vec; base += STEP) {
        if (base != k0) load(base);
#pragma unroll
        for (int u = 0; u < U; u++) {
            int k = base + u * 32 + lane;
            if (k >= n_vec) break;
            float wf[8], uf[8];
            unpack8<W>(wv[u], wf);
            if (GATED) unpack8<W>(uv[u], uf);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float xf[8];
                unpack8<W>(__ldg((const uint4*)(x + (size_t)t * in) + k), xf);
                if (W::SPLIT) {
                    float xl[8];
                    unpack8<W>(__ldg((const uint4*)(x + (size_t)(NT + t) * in) + k), xl);
#pragma unroll
                    for (int j = 0; j < 8; j++) xf[j] += xl[j];
                }
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    acc[t] += wf[j] * xf[j];
                    if (GATED) acc_u[t] += uf[j] * xf[j];
                }
            }
        }
    }
    if (!row_sums<NT, GATED>(acc, acc_u, red, warp, lane, part, ksplit)) return;
    if (!valid || lane != 0) return;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (GATED) {
store_act<W>((u16*)out, (size_t)t * rows + r, (size_t)NT * rows, activation(acc[t], act) * acc_u[t]);
        } else {
            ((float*)out)[(size_t)t * rows + r] = softcap(acc[t], cap);
        }
    }
}

// One signature for both kinds: (w, x, out, rows, in, cap, act, ksplit).
#define GEMV_ROWS_KERNEL(NAME, W, NT)                                                                   \
    extern "C" __global__ void gemv_rows_##NAME##_n##NT(const u16* w, const u16* x, void* out, int rows,   \
                                                        int in, float cap, int act, int ksplit) {          \
        gemv_rows_impl<W, NT, false>(w, x, out, rows, in, cap, act, ksplit);                               \
    }                                                                                                      \
    extern "C" __global__ void gemv_rows_gated_##NAME##_n##NT(const u16* w, const u16* x, void* out,       \
                                                              int rows, int in, float cap, int act,        \
                                                              int ksplit) {                                \
        gemv_rows_impl<W, NT, true>(w, x, out, rows, in, cap, act, ksplit);                                \
    }

#define GEMV_ROWS_ALL(NAME, W)                                                                        \
    GEMV_ROWS_KERNEL(NAME, W, 1) GEMV_ROWS_KERNEL(NAME, W, 2) GEMV_ROWS_KERNEL(NAME, W, 3)              \
    GEMV_ROWS_KERNEL(NAME, W, 4) GEMV_ROWS_KERNEL(NAME, W, 5) GEMV_ROWS_KERNEL(NAME, W, 6)              \
    GEMV_ROWS_KERNEL(NAME, W, 7) GEMV_ROWS_KERNEL(NAME, W, 8)

GEMV_ROWS_ALL(f16, F16)
GEMV_ROWS_ALL(bf16, BF16)
