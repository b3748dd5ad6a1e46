// Quantized weights on the GPU: the weight-format policies (how one 16-byte vector of a weight
// row unpacks into floats), the decode GEMV over them, and the dequantization to fp16 that feeds
// the prefill GEMM. Layouts are the CPU's (`quant::int8`, `quant::int4`, `quant::fp8`), uploaded
// as they are: the GEMV reads them with 16-byte loads already, so no re-layout is done at load.
//
// A policy P gives:
//   ELEMS                 elements per 16-byte vector (int8/fp8 16, int4 32, bf16 8)
//   seg_start(v, s)       row index of the first element of segment s (8 consecutive elements) of
//                         vector v, s < ELEMS / 8
//   unpack(raw, s, w)     the 8 values of segment s, before any scale
// Scales: one f32 per row (int8, fp8; times `row_factor`, 256 for fp8 whose codes unpack as
// value / 256), or with `vpg` > 0 one per `vpg` vectors of a row (int4 groups: [rows, cols / group]).
// Activations are fp16 (`store_act<F16>`): models with quantized matrices run fp16 activations.
//
// Unpacking in registers, exact and without a table: int8 and int4 place the (biased) byte or
// nibble in the mantissa of 2^23 (`__byte_perm` / a mask) and subtract 2^23 + bias; fp8 E4M3
// codes become the f16 whose value is theirs / 256 (quant/fp8.rs), two per 32-bit word.

__device__ __forceinline__ float magic_u8(unsigned word, int byte) {
    // 0x4B0000bb = 2^23 + bb
    return __uint_as_float(__byte_perm(word, 0x4B000000u, 0x7540 | byte));
}

struct WInt8 {
    static const int ELEMS = 16;
    static __device__ __forceinline__ int seg_start(int v, int s) { return v * 16 + s * 8; }
    static __device__ __forceinline__ void unpack(uint4 raw, int s, float* w) {
        // q + 128 in each byte (xor flips the sign bit), then 2^23 + q + 128 - (2^23 + 128)
        unsigned a = (s ? raw.z : raw.x) ^ 0x80808080u, b = (s ? raw.w : raw.y) ^ 0x80808080u;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            w[i] = magic_u8(a, i) - 8388736.f;
            w[4 + i] = magic_u8(b, i) - 8388736.f;
        }
    }
};

// int4 runs of 64 elements in 32 bytes: byte i holds element i (low nibble) and i + 32 (high),
// biased by 8. Vector v is bytes 16v .. 16v + 15 of the row: half (v & 1) of run v / 2.
// Segment s: bytes 8 (s & 1) .. + 7 of the vector, low nibbles (s < 2) or high (s >= 2).
struct WInt4 {
    static const int ELEMS = 32;
    static __device__ __forceinline__ int seg_start(int v, int s) {
        return (v >> 1) * 64 + (s >> 1) * 32 + (v & 1) * 16 + (s & 1) * 8;
    }
    static __device__ __forceinline__ void unpack(uint4 raw, int s, float* w) {
        unsigned a = (s & 1) ? raw.z : raw.x, b = (s & 1) ? raw.w : raw.y;
        int shift = (s >> 1) * 4;
        a >>= shift;
        b >>= shift;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            w[i] = __uint_as_float(0x4B000000u | ((a >> (8 * i)) & 0xFu)) - 8388616.f;
            w[4 + i] = __uint_as_float(0x4B000000u | ((b >> (8 * i)) & 0xFu)) - 8388616.f;
        }
    }
};

struct WFp8 {
    static const int ELEMS = 16;
    static __device__ __forceinline__ int seg_start(int v, int s) { return v * 16 + s * 8; }
    static __device__ __forceinline__ void unpack(uint4 raw, int s, float* w) {
        fp8x4_to_f(s ? raw.z : raw.x, w);
        fp8x4_to_f(s ? raw.w : raw.y, w + 4);
    }
};

// 16-bit float weights against fp16 activations (bf16 matrices of a model whose other matrices
// are quantized; fp16 ones take gemv.cu in the model, this instance is the skeleton's own check).
template <class W>
struct WHalf {
    static const int ELEMS = 8;
    static __device__ __forceinline__ int seg_start(int v, int) { return v * 8; }
    static __device__ __forceinline__ void unpack(uint4 raw, int, float* w) { unpack8<W>(raw, w); }
};

// Decode GEMV: out[t, r] = sum_k x[t, k] * w[r, k] for NT <= 8 tokens, with the epilogues of
// gemv.cu (soft cap; GATED: w is [gate; up], out = act(gate) * up as fp16 activations).
// Launch as gemv_rows.cu: 128 threads, `ksplit` warps per row (each a contiguous 1/ksplit of the
// row's vectors), groups of 4 / ksplit rows per block in turn, grid at most ceil(rows * ksplit /
// 4) (one resident wave: gemv_rows.cu); U 16-byte loads per lane in flight, the first issued
// before waiting for the previous kernel (or the previous group's reduction). `in` is a multiple of P::ELEMS. Sums are in fp32: per
// vector for grouped scales (scaled once per vector), per row otherwise (scaled at the end).
// The row reduction is gemv_rows.cu's (common.cuh `row_sums`); the load loop and epilogue differ
// by the policy's unpacking and scales.
template <class P, int NT, bool GATED>
__device__ void qgemv_impl(const uint4* __restrict__ w, const float* __restrict__ scales, const u16* __restrict__ x,
                           void* out, int rows, int in, int vpg, float row_factor, float cap, int act, int ksplit) {
    __shared__ float red[2][2][4][NT];  // row_sums' partials, by group parity (common.cuh)
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, part = warp % ksplit;
    int per_block = 4 / ksplit, n_row_groups = (rows + per_block - 1) / per_block;
    int n_vec_all = in / P::ELEMS;
    int n_groups = vpg > 0 ? n_vec_all / vpg : 0;
    int chunk = (n_vec_all + ksplit - 1) / ksplit;
    int k0 = part * chunk, n_vec = min(n_vec_all, k0 + chunk);
    // loads in flight per lane: a quantized vector holds 16-32 weights, so 4 cover a warp's share
    // of every row here (llama's down projection: 4 per lane); 8 only for 16-bit weights. Fewer
    // registers let 8 blocks share an SM (QGEMV_MIN_BLOCKS): one wave where 6 took two.
    const int U = NT <= 2 && !GATED && P::ELEMS == 8 ? 8 : 4;
    const int STEP = 32 * U;
    uint4 wv[U], uv[U];
    const uint4 *wr, *wu;
    const float *sr, *su;
    // this warp's rows in group `grp` (past the end the last row stands in and writes nothing)
    auto select = [&](int grp) {
        int r = min(grp * per_block + warp / ksplit, rows - 1);
        wr = w + (size_t)r * n_vec_all;
        wu = w + (size_t)(r + rows) * n_vec_all;
        sr = scales ? scales + (size_t)r * (vpg > 0 ? n_groups : 1) : nullptr;
        su = scales ? scales + (size_t)(r + rows) * (vpg > 0 ? n_groups : 1) : nullptr;
    };
    auto load = [&](int base) { load_row_vectors<U, GATED>(wr, wu, base, lane, n_vec, wv, uv); };
    select(blockIdx.x);
    load(k0);
    pdl_start();
    for (int grp = blockIdx.x; grp < n_row_groups; grp += gridDim.x) {
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
                float dw[NT], du[NT];
#pragma unroll
                for (int t = 0; t < NT; t++) dw[t] = du[t] = 0.f;
#pragma unroll
                for (int s = 0; s < P::ELEMS / 8; s++) {
                    float wf[8], uf[8];
                    P::unpack(wv[u], s, wf);
                    if (GATED) P::unpack(uv[u], s, uf);
                    int e = P::seg_start(k, s);
#pragma unroll
                    for (int t = 0; t < NT; t++) {
                        float xf[8];
                        unpack8<F16>(__ldg((const uint4*)(x + (size_t)t * in + e)), xf);
#pragma unroll
                        for (int j = 0; j < 8; j++) {
                            dw[t] += wf[j] * xf[j];
                            if (GATED) du[t] += uf[j] * xf[j];
                        }
                    }
                }
                float gw = 1.f, gu = 1.f;
                if (vpg > 0) {
                    gw = __ldg(sr + k / vpg);
                    if (GATED) gu = __ldg(su + k / vpg);
                }
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    acc[t] += gw * dw[t];
                    if (GATED) acc_u[t] += gu * du[t];
                }
            }
        }
        // the row scales of this group, then the next group's first weights load while this
        // group's sums are reduced and stored
        float rw = 1.f, ru = 1.f;
        if (scales && vpg == 0) {
            rw = __ldg(sr) * row_factor;
            if (GATED) ru = __ldg(su) * row_factor;
        }
        if (grp + gridDim.x < n_row_groups) {
            select(grp + gridDim.x);
            load(k0);
        }
        if (row_sums<NT, GATED>(acc, acc_u, red[(grp / gridDim.x) & 1], warp, lane, part, ksplit) && r < rows && lane == 0) {
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (GATED) {
                    store_act<F16>((u16*)out, (size_t)t * rows + r, 0, activation(acc[t] * rw, act) * (acc_u[t] * ru));
                } else {
                    ((float*)out)[(size_t)t * rows + r] = softcap(acc[t] * rw, cap);
                }
            }
        }
    }
}

template <class P>
__device__ void dequant_impl(const uint4* w, const float* scales, u16* out, int rows, int in, int vpg,
                             float row_factor) {
    pdl_start();
    int n_vec_all = in / P::ELEMS;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * n_vec_all) return;
    int r = (int)(i / n_vec_all), k = (int)(i % n_vec_all);
    float sc = 1.f;
    if (scales) sc = vpg > 0 ? scales[(size_t)r * (n_vec_all / vpg) + k / vpg] : scales[r] * row_factor;
    uint4 raw = w[i];
    u16* row = out + (size_t)r * in;
#pragma unroll
    for (int s = 0; s < P::ELEMS / 8; s++) {
        float f[8];
        P::unpack(raw, s, f);
        unsigned h[4];
#pragma unroll
        for (int j = 0; j < 4; j++)
            h[j] = (unsigned)F16::from_f(f[2 * j] * sc) | ((unsigned)F16::from_f(f[2 * j + 1] * sc) << 16);
        *(uint4*)(row + P::seg_start(k, s)) = make_uint4(h[0], h[1], h[2], h[3]);
    }
}

// Blocks per SM the register budget must allow: 8 at 1 token (batch-1 decode, where a second
// wave of blocks costs another DRAM round trip; the gated kernel spills ~50 bytes for it); more
// tokens keep their registers (at 2, 8 blocks would spill ~200 bytes).
#define QGEMV_MIN_BLOCKS(NT) ((NT) == 1 ? 8 : 1)

#define QGEMV_KERNEL(NAME, P, NT)                                                                         \
    extern "C" __global__ void __launch_bounds__(128, QGEMV_MIN_BLOCKS(NT))                                 \
        qgemv_##NAME##_n##NT(const uint4* w, const float* scales, const u16* x, float* out, int rows, int in, \
                             int vpg, float row_factor, float cap, int ksplit) {                             \
        qgemv_impl<P, NT, false>(w, scales, x, out, rows, in, vpg, row_factor, cap, 0, ksplit);              \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(128, QGEMV_MIN_BLOCKS(NT))                                 \
        qgemv_gated_##NAME##_n##NT(const uint4* w, const float* scales, const u16* x, u16* out, int rows,     \
                                   int in, int vpg, float row_factor, int act, int ksplit) {                 \
        qgemv_impl<P, NT, true>(w, scales, x, out, rows, in, vpg, row_factor, 0.f, act, ksplit);             \
    }

#define QGEMV_ALL(NAME, P)                                                                                  \
    QGEMV_KERNEL(NAME, P, 1) QGEMV_KERNEL(NAME, P, 2) QGEMV_KERNEL(NAME, P, 3) QGEMV_KERNEL(NAME, P, 4)     \
    QGEMV_KERNEL(NAME, P, 5) QGEMV_KERNEL(NAME, P, 6) QGEMV_KERNEL(NAME, P, 7) QGEMV_KERNEL(NAME, P, 8)     \
    extern "C" __global__ void dequant_##NAME(const uint4* w, const float* scales, u16* out, int rows,     \
                                              int in, int vpg, float row_factor) {                         \
        dequant_impl<P>(w, scales, out, rows, in, vpg, row_factor);                                        \
    }

QGEMV_ALL(i8, WInt8)
QGEMV_ALL(i4, WInt4)
QGEMV_ALL(fp8, WFp8)
QGEMV_ALL(bf16, WHalf<BF16>)
QGEMV_ALL(f16, WHalf<F16>)
