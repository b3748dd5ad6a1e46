// Decode GEMV on tensor cores: out[t, r] = sum_k x[t, k] * w[r, k] for NT <= 8 tokens, the weights
// read once for all of them. w is [rows, in] row-major in the storage type, x is [NT, in]
// activations (`store_act`); `in` must be a multiple of 8. Epilogues (EPI):
//   EPI_PLAIN  out fp32 [NT, rows], soft-capped when cap > 0 (cap * tanh(v / cap): Gemma's LM head);
//   EPI_GATED  w holds [gate; up] (2 * rows rows); out[t, r] = act(gate[r]) * up[r] as activations
//              (the fused gate/up projection feeding the down projection).
//
// Layout: one block per group of 8 rows, blockDim = 32 * ks with ks <= 16 warps, each taking a
// contiguous share of the rows' 32-element column groups (ks depends on the shape only, so a
// token's sums are the same at every batch size: model.rs `gemv_layout`). Lane (g = lane / 4,
// q = lane % 4) loads 16 bytes of row g at column 32 * group + 8 * q; per group the warp holds
// 8 rows x 32 columns, fed to two mma m16n8k16 as rows 0-7 of A (rows 8-15 zero). The column
// order inside a group is permuted alike in A and in B (x, token n = g, zero for g >= NT), so the
// dot products are unchanged. U groups per lane in flight (8; GATED 4 gate + 4 up), the first
// ones before waiting for the previous kernel (pdl_start). The warps' partial sums are added in
// warp order through shared memory.
// Tried first (NOTES.md v1-v8b): 1-4 warps per row with fp32 FMAs (v6): at 8 tokens the unpacking
// and FMAs (64 per 16-byte weight load) bounded the step, not DRAM (batch 8 4.4x batch 1, now
// 6.5x), though at 1 token it was 6-13% faster than this; double-buffered loads here (124-156
// registers: too few blocks resident); the residual add and the next RMSNorm folded into these
// GEMVs (a last-block norm, or partial sums of squares and a normed B operand): slower than
// the separate `residual_rmsnorm` kernel, whose launch PDL already hides.

#define EPI_PLAIN 0
#define EPI_GATED 1
template <class W, int NT, int EPI>
__device__ void gemv_impl(const u16* __restrict__ w, const u16* __restrict__ x, void* out, int rows, int in,
                          float cap, int act) {
    constexpr bool GATED = EPI == EPI_GATED;
    constexpr int U = GATED ? 4 : 8;
    constexpr int NV = GATED ? 4 : 2;  // values per lane reduced across warps
    __shared__ float red[16][32][NV];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, ks = blockDim.x >> 5;
    int g = lane >> 2, q = lane & 3;
    int r = blockIdx.x * 8 + g;
    bool valid = r < rows;
    int rr = valid ? r : rows - 1;  // a padding row loads a real row and writes nothing
    const uint4* wr = (const uint4*)(w + (size_t)rr * in);
    const uint4* wu = (const uint4*)(w + (size_t)(rr + rows) * in);
    int tg = min(g, NT - 1);  // this lane's token in B (lanes g >= NT feed zeros)
    const uint4* xr = (const uint4*)(x + (size_t)tg * in);
    const uint4* xl = (const uint4*)(x + (size_t)(NT + tg) * in);  // bf16 low halves
    int n_vec = in >> 3, n_grp = (n_vec + 3) >> 2;
    int chunk = (n_grp + ks - 1) / ks;
    int g0 = warp * chunk, g1 = min(n_grp, g0 + chunk);
    const uint4 zero = make_uint4(0, 0, 0, 0);
    float acc[4] = {0.f, 0.f, 0.f, 0.f}, acc_u[4] = {0.f, 0.f, 0.f, 0.f};
    uint4 wc[U], uc[U];
    auto load_w = [&](int base) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            int k = (base + u) * 4 + q;
            bool in_range = base + u < g1 && k < n_vec;
            wc[u] = in_range ? __ldg(wr + k) : zero;
            if (GATED) uc[u] = in_range ? __ldg(wu + k) : zero;
        }
    };
    auto mul = [&](int base) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            int k = (base + u) * 4 + q;
            bool in_range = g < NT && base + u < g1 && k < n_vec;
            uint4 xv = zero, xlv = zero;
            if (in_range) {
                xv = __ldg(xr + k);
                if (W::SPLIT) xlv = __ldg(xl + k);
            }
            mma16816<W>(acc, wc[u].x, 0u, wc[u].y, 0u, xv.x, xv.y);
            mma16816<W>(acc, wc[u].z, 0u, wc[u].w, 0u, xv.z, xv.w);
            if (W::SPLIT) {
                mma16816<W>(acc, wc[u].x, 0u, wc[u].y, 0u, xlv.x, xlv.y);
                mma16816<W>(acc, wc[u].z, 0u, wc[u].w, 0u, xlv.z, xlv.w);
            }
            if (GATED) {
                mma16816<W>(acc_u, uc[u].x, 0u, uc[u].y, 0u, xv.x, xv.y);
                mma16816<W>(acc_u, uc[u].z, 0u, uc[u].w, 0u, xv.z, xv.w);
                if (W::SPLIT) {
                    mma16816<W>(acc_u, uc[u].x, 0u, uc[u].y, 0u, xlv.x, xlv.y);
                    mma16816<W>(acc_u, uc[u].z, 0u, uc[u].w, 0u, xlv.z, xlv.w);
                }
            }
        }
    };
    // the first weights do not depend on the previous kernel: their loads overlap its tail
    load_w(g0);
    pdl_start();
    for (int base = g0; base < g1; base += U) {
        if (base != g0) load_w(base);
        mul(base);
    }
    // acc[0..1] = D[g][2q..2q+1]: row r, tokens 2q and 2q + 1
    if (ks > 1) {
        red[warp][lane][0] = acc[0];
        red[warp][lane][1] = acc[1];
        if (GATED) {
            red[warp][lane][2] = acc_u[0];
            red[warp][lane][3] = acc_u[1];
        }
        __syncthreads();
    }
    if (warp != 0 || !valid) return;
    if (ks > 1) {
        float s[NV];
#pragma unroll
        for (int j = 0; j < NV; j++) s[j] = 0.f;
        for (int p = 0; p < ks; p++) {  // in order: the same sum at every batch size
#pragma unroll
            for (int j = 0; j < NV; j++) s[j] += red[p][lane][j];
        }
        acc[0] = s[0];
        acc[1] = s[1];
        if (GATED) {
            acc_u[0] = s[NV - 2];
            acc_u[1] = s[NV - 1];
        }
    }
#pragma unroll
    for (int j = 0; j < 2; j++) {
        int t = 2 * q + j;
        if (t >= NT) continue;
        size_t o = (size_t)t * rows + r;
        if (EPI == EPI_PLAIN) ((float*)out)[o] = softcap(acc[j], cap);
        if (EPI == EPI_GATED) store_act<W>((u16*)out, o, (size_t)NT * rows, activation(acc[j], act) * acc_u[j]);
    }
}

// One signature for both kinds: (w, x, out, rows, in, cap, act); `cap` is for EPI_PLAIN, `act` for
// EPI_GATED (common.cuh `activation`).
#define GEMV_KERNEL(NAME, W, NT)                                                                          \
    extern "C" __global__ void __launch_bounds__(512, 2)                                                    \
        gemv_##NAME##_n##NT(const u16* w, const u16* x, void* out, int rows, int in, float cap, int act) { \
        gemv_impl<W, NT, EPI_PLAIN>(w, x, out, rows, in, cap, act);                                      \
    }                                                                                                    \
    extern "C" __global__ void __launch_bounds__(512, 2) gemv_gated_##NAME##_n##NT(                          \
        const u16* w, const u16* x, void* out, int rows, int in, float cap, int act) {                    \
        gemv_impl<W, NT, EPI_GATED>(w, x, out, rows, in, cap, act);                                      \
    }

#define GEMV_ALL(NAME, W) \
    GEMV_KERNEL(NAME, W, 1) GEMV_KERNEL(NAME, W, 2) GEMV_KERNEL(NAME, W, 3) GEMV_KERNEL(NAME, W, 4) \
    GEMV_KERNEL(NAME, W, 5) GEMV_KERNEL(NAME, W, 6) GEMV_KERNEL(NAME, W, 7) GEMV_KERNEL(NAME, W, 8)

GEMV_ALL(f16, F16)
GEMV_ALL(bf16, BF16)
