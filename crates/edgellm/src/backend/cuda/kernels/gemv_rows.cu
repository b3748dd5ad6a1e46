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
// 1/ksplit of the row; a block takes groups of 4 / ksplit rows, blockIdx.x and then every
// gridDim.x-th, so a grid of at most ceil(rows * ksplit / 4) blocks that is all resident at once
// makes one wave whose warps stream row after row (each group's first loads are issued before the
// previous group's sums are reduced) instead of a block per group in several waves, each ending on
// a DRAM round trip. Each lane reads 16 bytes (8 elements) per step, 4 or 8 steps unrolled so that
// as many independent loads are in flight; `in` must be a multiple of 8. The first loads of
// weights are issued before waiting for the previous kernel. A row's sums do not depend on the
// grid.
//
// Fusions around the decode layer (model.rs): with `norm` set, `x` is the fp32 residual stream and
// the block first writes RMSNorm(x) * norm (eps) as activations into its dynamic shared memory
// (NT * in 16-bit elements, twice that under bf16; common.cuh `norm_to_shared`), the input
// norm's kernel folded into the projection that reads it; with `residual` (plain only) the
// sums are added to `out` (the residual stream) instead of stored, the residual add folded into
// the projection that feeds it.

// 16 bytes of activations at element `at` of `x`: shared memory (`shared`) or read-only global.
__device__ __forceinline__ uint4 act_load(const u16* x, size_t at, bool shared) {
    return shared ? *(const uint4*)(x + at) : __ldg((const uint4*)(x + at));
}

template <class W, int NT, bool GATED>
__device__ void gemv_rows_impl(const u16* __restrict__ w, const void* __restrict__ x_in, void* out, int rows, int in,
                               float cap, int act, int ksplit, const float* norm, float eps, int residual) {
    __shared__ float red[2][2][4][NT];  // row_sums' partials, by group parity (common.cuh)
    extern __shared__ __align__(16) u16 xs[];  // the normalised input (`norm`)
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, part = warp % ksplit;
    int per_block = 4 / ksplit, n_groups = (rows + per_block - 1) / per_block;
    int n_vec_all = in >> 3;
    int chunk = (n_vec_all + ksplit - 1) / ksplit;
    int k0 = part * chunk, n_vec = min(n_vec_all, k0 + chunk);
    // loads in flight per lane: more where fewer accumulators hold registers
    const int U = NT <= 2 && !GATED ? 8 : 4;
    const int STEP = 32 * U;
    uint4 wv[U], uv[U];
    const uint4 *wr, *wu;
    // this warp's rows in group `grp` (past the end the last row stands in and writes nothing)
    auto select = [&](int grp) {
        int r = min(grp * per_block + warp / ksplit, rows - 1);
        wr = (const uint4*)(w + (size_t)r * in);
        wu = (const uint4*)(w + (size_t)(r + rows) * in);
    };
    auto load = [&](int base) { load_row_vectors<U, GATED>(wr, wu, base, lane, n_vec, wv, uv); };
    // the first weights do not depend on the previous kernel: their loads overlap its tail
    select(blockIdx.x);
    load(k0);
    float4 g[NORM_VECS];
    if (norm) norm_weights(norm, in, g);
    pdl_start();
    if (norm) norm_to_shared<W>((const float*)x_in, g, xs, NT, in, eps);
    const u16* x = norm ? xs : (const u16*)x_in;
    for (int grp = blockIdx.x; grp < n_groups; grp += gridDim.x) {
        int r = grp * per_block + warp / ksplit;
        float acc[NT], acc_u[NT];
#pragma unroll
        for (int t = 0; t < NT; t++) acc[t] = acc_u[t] = 0.f;
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
                    unpack8<W>(act_load(x, (size_t)t * in + 8 * k, norm), xf);
                    if (W::SPLIT) {
                        float xl[8];
                        unpack8<W>(act_load(x, (size_t)(NT + t) * in + 8 * k, norm), xl);
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
        // the next group's first weights load while this group's sums are reduced and stored
        if (grp + gridDim.x < n_groups) {
            select(grp + gridDim.x);
            load(k0);
        }
        if (row_sums<NT, GATED>(acc, acc_u, red[(grp / gridDim.x) & 1], warp, lane, part, ksplit) && r < rows && lane == 0) {
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (GATED) {
                    store_act<W>((u16*)out, (size_t)t * rows + r, (size_t)NT * rows, activation(acc[t], act) * acc_u[t]);
                } else if (residual) {
                    ((float*)out)[(size_t)t * rows + r] += acc[t];
                } else {
                    ((float*)out)[(size_t)t * rows + r] = softcap(acc[t], cap);
                }
            }
        }
    }
}

// Blocks per SM the 1-token kernels' registers must allow: 4 (at most 128 registers; they took
// 135-139 and ran 3 per SM). Llama-3.2-1B's down projection (2,048 row groups) then streams in 4
// rounds of a 528-block wave instead of 6 of 396: decode +5.3% (825 -> 870 tok/s), Qwen2.5-0.5B
// +3.9% (NOTES.md "lb"); 5 per SM spills. More tokens keep their registers.
#define ROWS_MIN_BLOCKS(NT) ((NT) == 1 ? 4 : 1)

// One signature for both kinds: (w, x, out, rows, in, cap, act, ksplit, norm, eps, residual).
#define GEMV_ROWS_KERNEL(NAME, W, NT)                                                                   \
    extern "C" __global__ void __launch_bounds__(128, ROWS_MIN_BLOCKS(NT))                                \
        gemv_rows_##NAME##_n##NT(const u16* w, const void* x, void* out, int rows, int in, float cap,      \
                                 int act, int ksplit, const float* norm, float eps, int residual) {        \
        gemv_rows_impl<W, NT, false>(w, x, out, rows, in, cap, act, ksplit, norm, eps, residual);          \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(128, ROWS_MIN_BLOCKS(NT))                                \
        gemv_rows_gated_##NAME##_n##NT(const u16* w, const void* x, void* out, int rows, int in,           \
                                       float cap, int act, int ksplit, const float* norm, float eps,       \
                                       int residual) {                                                     \
        gemv_rows_impl<W, NT, true>(w, x, out, rows, in, cap, act, ksplit, norm, eps, residual);           \
    }

#define GEMV_ROWS_ALL(NAME, W)                                                                        \
    GEMV_ROWS_KERNEL(NAME, W, 1) GEMV_ROWS_KERNEL(NAME, W, 2) GEMV_ROWS_KERNEL(NAME, W, 3)              \
    GEMV_ROWS_KERNEL(NAME, W, 4) GEMV_ROWS_KERNEL(NAME, W, 5) GEMV_ROWS_KERNEL(NAME, W, 6)              \
    GEMV_ROWS_KERNEL(NAME, W, 7) GEMV_ROWS_KERNEL(NAME, W, 8)

GEMV_ROWS_ALL(f16, F16)
GEMV_ROWS_ALL(bf16, BF16)
