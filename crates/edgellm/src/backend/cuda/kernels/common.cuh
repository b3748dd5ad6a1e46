// Shared device helpers: fp16/bf16 storage types with fp32 conversion, 16-byte vector
// unpacking, warp and block reductions, the MLP activations. Every kernel file is compiled
// after this one as a single NVRTC program, so no CUDA header is needed (conversions are
// single PTX instructions; `cvt.rn.bf16.f32` needs sm_80+).
//
// Each kernel is written once as a template over its storage type and instantiated as
// `extern "C"` entry points named op first, then dtype (`gemv_f16_n1`, `rmsnorm_bf16`).

typedef unsigned short u16;

#define NEG_INF __int_as_float(0xff800000)

// SPLIT: activations between kernels are stored as two arrays of the type, hi = round(v) and
// lo = round(v - hi), read back as hi + lo (16 significant bits). bf16's 8-bit significand alone
// put the tiny fixtures' logits up to 3e-2 from HF's; fp16 (11 bits) needs no second half.
struct F16 {
    static const bool SPLIT = false;
    static const bool IS_BF16 = false;
    static __device__ __forceinline__ float to_f(u16 h) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
        return f;
    }
    static __device__ __forceinline__ u16 from_f(float f) {
        u16 h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
        return h;
    }
};

struct BF16 {
    static const bool SPLIT = true;
    static const bool IS_BF16 = true;
    static __device__ __forceinline__ float to_f(u16 h) { return __uint_as_float(((unsigned)h) << 16); }
    static __device__ __forceinline__ u16 from_f(float f) {
        u16 h;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
        return h;
    }
};

// Stores activation v at out[i] (and its low half at out[i + lo_off] when W::SPLIT). A buffer
// of n rows of `dim` keeps the n rows of low halves right after the high ones: lo_off = n * dim.
template <class W>
__device__ __forceinline__ void store_act(u16* out, size_t i, size_t lo_off, float v) {
    u16 hi = W::from_f(v);
    out[i] = hi;
    if (W::SPLIT) out[i + lo_off] = W::from_f(v - W::to_f(hi));
}

// The 8 values of a 16-byte vector of 16-bit elements, in memory order.
template <class W>
__device__ __forceinline__ void unpack8(uint4 v, float* out) {
    unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        out[2 * i] = W::to_f((u16)(w[i] & 0xffff));
        out[2 * i + 1] = W::to_f((u16)(w[i] >> 16));
    }
}

// Tensor-core tile product d += a * b, mma.sync m16n8k16 with fp32 accumulation, a and b in the
// storage type of W (two 16-bit elements per register, the lower index in the low half).
// Fragments (g = lane / 4, q = lane % 4): a0 = A[g][2q..2q+1], a1 = A[g+8][2q..], a2 = A[g][2q+8..],
// a3 = A[g+8][2q+8..]; b0 = B[2q..2q+1][g], b1 = B[2q+8..2q+9][g]; d0,d1 = D[g][2q..2q+1],
// d2,d3 = D[g+8][2q..2q+1].
template <class W>
__device__ __forceinline__ void mma16816(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                         unsigned b0, unsigned b1) {
    if (W::IS_BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
}

// Two fp32 values as one register of two W elements (lo in the low half).
template <class W>
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
    return (unsigned)W::from_f(lo) | ((unsigned)W::from_f(hi) << 16);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

// A decode GEMV's 16 bytes of weights: read once per step, so not allocated in L1, where they
// evicted the activations every warp of an SM re-reads (the down projection's 16 KB input came
// from L2 once per warp): Llama-3.2-1B f16 and int4 decode +3.9%, Qwen2.5-0.5B f16 +2.3%
// (NOTES.md "hint"; an L2 evict-first policy on top gained nothing).
__device__ __forceinline__ uint4 ld_weight(const uint4* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// The decode GEMVs' weight loads (gemv_rows.cu, quant.cu): this lane's U 16-byte vectors
// base + 32u + lane (u < U) below n_vec of row `wr`, and of the up row `wu` when GATED, into wv
// and uv, all issued before any is used.
template <int U, bool GATED>
__device__ __forceinline__ void load_row_vectors(const uint4* wr, const uint4* wu, int base, int lane, int n_vec,
                                                 uint4* wv, uint4* uv) {
#pragma unroll
    for (int u = 0; u < U; u++) {
        int k = base + u * 32 + lane;
        if (k < n_vec) {
            wv[u] = ld_weight(wr + k);
            if (GATED) uv[u] = ld_weight(wu + k);
        }
    }
}

// The row reduction of the CUDA-core decode GEMVs (gemv_rows.cu, quant.cu): each warp's per-lane
// sums (and the up half's, GATED) reduced over the warp, then over the `ksplit` warps of a row
// through `red` in warp order (the same sum at every batch size). Returns whether this warp holds
// the row's totals (its first part); the others are done. Every thread of the block must call it.
// The caller alternates two `red` buffers by its group count (`__shared__ float red[2][2][4][NT]`,
// `red[i & 1]` for its i-th group): a warp writes group i + 2's partials only past group i + 1's
// barrier, which the warps summing group i reach after reading them, so one barrier per group
// suffices (a second one, before the buffer's reuse, cost the 16-bit Llama-3.2-1B decode 1.3%:
// NOTES.md "at3").
template <int NT, bool GATED>
__device__ __forceinline__ bool row_sums(float* acc, float* acc_u, float (*red)[4][NT], int warp, int lane,
                                         int part, int ksplit) {
#pragma unroll
    for (int t = 0; t < NT; t++) {
        acc[t] = warp_sum(acc[t]);
        if (GATED) acc_u[t] = warp_sum(acc_u[t]);
    }
    if (ksplit == 1) return true;
    if (lane == 0) {
#pragma unroll
        for (int t = 0; t < NT; t++) {
            red[0][warp][t] = acc[t];
            red[1][warp][t] = acc_u[t];
        }
    }
    __syncthreads();
    if (part != 0) return false;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float v = 0.f, u = 0.f;
        for (int p = 0; p < ksplit; p++) {
            v += red[0][warp + p][t];
            u += red[1][warp + p][t];
        }
        acc[t] = v;
        acc_u[t] = u;
    }
    return true;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float red[32];
    __syncthreads();  // `red` may still be read by a previous call
    v = warp_sum(v);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    int n_warps = blockDim.x >> 5;
    v = lane < n_warps ? red[lane] : 0.f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v) {
    __shared__ float red[32];
    __syncthreads();
    v = warp_max(v);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    int n_warps = blockDim.x >> 5;
    v = lane < n_warps ? red[lane] : NEG_INF;
    return warp_max(v);
}

// The decode GEMV's normalised input (gemv_rows.cu with `norm`): activations of
// RMSNorm(x[t]) * w for the n rows of the fp32 residual stream x [n, in], stored in shared memory
// `xs` in store_act's layout (n rows, then their low halves when W::SPLIT). Thread i owns the
// float4s i, i + blockDim.x, ... (at most NORM_VECS: in <= 4 * NORM_VECS * blockDim.x): its norm
// weights are loaded first (`norm_weights`, before waiting for the previous kernel: they are
// weights), its x values stay in registers between the sum of squares and the scaling. The sum
// is reduced over this block in a fixed order, so every block and every batch size gets the same
// bits (not norm.cu's: a layer's decode GEMVs take their input from here, its prefill GEMMs from
// norm.cu). Every thread of the block calls both. (Not in quant.cu: at 8 blocks per SM its
// 64 registers spilled with these arrays live, and its decode ran 23-30% slower: NOTES.md fn.)
#define NORM_VECS 8
__device__ __forceinline__ void norm_weights(const float* w, int in, float4* g) {
#pragma unroll
    for (int j = 0; j < NORM_VECS; j++) {
        int i = threadIdx.x + j * blockDim.x;
        if (i < in / 4) g[j] = __ldg((const float4*)w + i);
    }
}

template <class W>
__device__ void norm_to_shared(const float* x, const float4* g, u16* xs, int n, int in, float eps) {
    for (int t = 0; t < n; t++) {
        const float4* xr = (const float4*)(x + (size_t)t * in);
        float4 v[NORM_VECS];
        float ss = 0.f;
#pragma unroll
        for (int j = 0; j < NORM_VECS; j++) {
            int i = threadIdx.x + j * blockDim.x;
            if (i < in / 4) {
                v[j] = xr[i];
                ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
            }
        }
        float s = rsqrtf(block_sum(ss) / in + eps);
        size_t lo_off = (size_t)n * in;
#pragma unroll
        for (int j = 0; j < NORM_VECS; j++) {
            int i = threadIdx.x + j * blockDim.x;
            if (i < in / 4) {
                size_t at = (size_t)t * in + 4 * i;
                store_act<W>(xs, at, lo_off, v[j].x * s * g[j].x);
                store_act<W>(xs, at + 1, lo_off, v[j].y * s * g[j].y);
                store_act<W>(xs, at + 2, lo_off, v[j].z * s * g[j].z);
                store_act<W>(xs, at + 3, lo_off, v[j].w * s * g[j].w);
            }
        }
    }
    __syncthreads();
}

// The gated-MLP activation of `gate`: 0 = SiLU, 1 = GELU (tanh approximation).
__device__ __forceinline__ float activation(float g, int act) {
    if (act == 0) return g / (1.f + expf(-g));
    const float k = 0.7978845608f;
    return 0.5f * g * (1.f + tanhf(k * (g + 0.044715f * g * g * g)));
}

__device__ __forceinline__ float softcap(float v, float cap) { return cap > 0.f ? cap * tanhf(v / cap) : v; }

// Asynchronous global -> shared copies of BYTES (8 or 16) bytes (sm_80+), waited for by
// `cp_async_wait` (every copy this thread issued has landed; a __syncthreads makes them visible
// to the block).
template <int BYTES>
__device__ __forceinline__ void cp_async(void* shared, const void* global) {
    unsigned at;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(at) : "l"(shared));
    if (BYTES == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(at), "l"(global) : "memory");
    } else {
        asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(at), "l"(global) : "memory");
    }
}
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// Programmatic dependent launch (sm_90+; no-ops elsewhere and when a kernel was launched without
// the attribute). A kernel launched with it may start while the previous kernel of the stream
// still runs: it does only work that reads nothing an earlier kernel writes (GEMV weight loads),
// then `pdl_wait` (the previous grid has completed and its writes are visible; by induction every
// earlier one too), then `pdl_trigger` lets the next kernel start its own prologue (rope_kv
// triggers before it waits: see there). Every kernel calls `pdl_wait` before its first read or
// write of activations, caches or outputs.
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_start() {
    pdl_wait();
    pdl_trigger();
}
