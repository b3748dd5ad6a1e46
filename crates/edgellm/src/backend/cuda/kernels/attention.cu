// Paged causal attention with GQA, sliding window and score soft cap, for prefill and decode
// alike: token t (at position pos, in sequence s) attends to positions [first, pos] of s's
// cache, first = max(0, pos + 1 - window) on sliding layers. This step's keys and values are
// already in the cache (rope_kv runs first).
//
// q: fp32 [n_tokens, n_heads * head_dim]; cache fp16 [n_blocks, n_kv_heads, block_size, head_dim]
// (`attention_fp8kv_*`: fp8 E4M3 codes read 8 per 8-byte load, k_mul / v_mul the per-tensor
// scales times 256, fp8.cuh);
// out: activations (`store_act`) [n_tokens, n_heads * head_dim].
// Launch: grid (n_tokens * n_heads, n_splits), 256 threads (head_dim <= 256, a multiple of 8),
// dynamic shared memory (head_dim + 256 + 256 * 8) * 4 bytes. Split-K ("flash decoding"): split z of n_splits
// takes an equal share of the positions, keeps an online softmax over chunks of 256 positions
// (one score per thread: a thread reads one key row with 16-byte loads; then each thread sums
// 8 dims of every 32nd (head_dim 64) value row, 16-byte loads again), and either writes the
// normalised output (n_splits == 1) or its (max, sum, unnormalised accumulator) to `part`; the
// last split of a (token, head) to finish (counted in `done`, which it resets to 0 for the next
// step) reduces them in split order, so the result does not depend on which split ends last.
// Tried first: a separate combine kernel (one more launch per layer); one block per KV head
// serving its G query heads, rows read once for all of them (slower: decode attention 10 -> 37 us
// and prefill 423 -> 550 us per Llama-3.2-1B layer under ncu, NOTES.md v5); one dim per thread
// for the value sum, a chain of dependent 2-byte loads (llama-3.2-1b decode 568 tok/s).

template <class W, class KV>
__device__ void attention_impl(const float* q, const typename KV::T* k_cache, const typename KV::T* v_cache,
                               const int* positions, const int* token_seq, const int* tables, int max_blocks, u16* out,
                               float* part, int* done, int n_heads, int n_kv_heads, int head_dim, int block_size,
                               float scale, int window, float cap, float k_mul, float v_mul) {
    extern __shared__ float sh[];
    pdl_start();
    float* qs = sh;                   // [head_dim]
    float* p = sh + head_dim;         // [blockDim.x] scores, then weights
    float* red = p + blockDim.x;      // [blockDim.x * 8] accumulator reduction
    int t = blockIdx.x / n_heads, h = blockIdx.x % n_heads;
    int kvh = h / (n_heads / n_kv_heads);
    int split = blockIdx.y, n_splits = gridDim.y;
    int pos = positions[t];
    int first = window > 0 ? max(0, pos + 1 - window) : 0;
    int len = pos + 1 - first;
    int per = (len + n_splits - 1) / n_splits;
    int start = first + split * per, end = min(start + per, pos + 1);
    const int* table = tables + token_seq[t] * max_blocks;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = q[((size_t)t * n_heads + h) * head_dim + d];
    __syncthreads();

    // the weighted sum of values: a thread owns 8 consecutive dims (one 16-byte load) of every
    // `groups`-th position of a chunk
    int vecs = head_dim / 8, groups = blockDim.x / vecs;
    int dv = threadIdx.x % vecs, g = threadIdx.x / vecs;
    float m = NEG_INF, l = 0.f, acc[8];
#pragma unroll
    for (int e = 0; e < 8; e++) acc[e] = 0.f;
    for (int c = start; c < end; c += blockDim.x) {
        int j = c + threadIdx.x;
        float s = NEG_INF;
        if (j < end) {
            int blk = table[j / block_size];
            const typename KV::T* k = k_cache + (((size_t)blk * n_kv_heads + kvh) * block_size + j % block_size) * head_dim;
            float dot = 0.f;
#pragma unroll 8
            for (int v = 0; v < vecs; v++) {
                float kf[8];
                KV::load8(k + v * 8, kf);
#pragma unroll
                for (int e = 0; e < 8; e++) dot += kf[e] * qs[v * 8 + e];
            }
            s = softcap(dot * k_mul * scale, cap);
        }
        float m_new = fmaxf(m, block_max(s));
        float w = j < end ? expf(s - m_new) : 0.f;
        p[threadIdx.x] = w;
        float rescale = expf(m - m_new);  // 0 on the first chunk (m = -inf)
        l = l * rescale + block_sum(w);   // block_sum syncs: p is visible below
#pragma unroll
        for (int e = 0; e < 8; e++) acc[e] *= rescale;
        m = m_new;
        int n = min((int)blockDim.x, end - c);
        if (g < groups) {
#pragma unroll 4
            for (int i = g; i < n; i += groups) {
                int jj = c + i;
                int blk = table[jj / block_size];
                float vf[8];
                KV::load8(v_cache + (((size_t)blk * n_kv_heads + kvh) * block_size + jj % block_size) * head_dim + dv * 8, vf);
                float pi = p[i];
#pragma unroll
                for (int e = 0; e < 8; e++) acc[e] += pi * vf[e];
            }
        }
        __syncthreads();  // p is rewritten by the next chunk
    }
    // reduce the groups' accumulators: red is [groups, head_dim]
    if (g < groups) {
#pragma unroll
        for (int e = 0; e < 8; e++) red[g * head_dim + dv * 8 + e] = acc[e];
    }
    __syncthreads();
    if (threadIdx.x < head_dim) {
        float a = 0.f;
        for (int gg = 0; gg < groups; gg++) a += red[gg * head_dim + threadIdx.x];
        a *= v_mul;
        if (n_splits == 1) {
            store_act<W>(out, ((size_t)t * n_heads + h) * head_dim + threadIdx.x, (size_t)gridDim.x * head_dim,
                         l > 0.f ? a / l : 0.f);
        } else {
            float* pp = part + (((size_t)t * n_heads + h) * n_splits + split) * (head_dim + 2);
            pp[2 + threadIdx.x] = a;
            if (threadIdx.x == 0) {
                pp[0] = m;
                pp[1] = l;
            }
        }
    }
    if (n_splits == 1) return;
    __shared__ bool last;
    __threadfence();  // this split's partials are visible before it is counted
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(&done[blockIdx.x], 1) == n_splits - 1;
        if (last) done[blockIdx.x] = 0;
    }
    __syncthreads();
    if (!last || threadIdx.x >= head_dim) return;
    __threadfence();
    // sum_z e^(m_z - M) acc_z / sum_z e^(m_z - M) l_z; L2 reads (__ldcg): other SMs wrote them
    const float* pp = part + (size_t)blockIdx.x * n_splits * (head_dim + 2);
    float mx = NEG_INF;
    for (int z = 0; z < n_splits; z++) mx = fmaxf(mx, __ldcg(pp + z * (head_dim + 2)));
    float num = 0.f, den = 0.f;
    for (int z = 0; z < n_splits; z++) {
        const float* pz = pp + z * (head_dim + 2);
        float lz = __ldcg(pz + 1);
        if (lz == 0.f) continue;  // an empty split
        float e = expf(__ldcg(pz) - mx);
        num += e * __ldcg(pz + 2 + threadIdx.x);
        den += e * lz;
    }
    store_act<W>(out, ((size_t)t * n_heads + h) * head_dim + threadIdx.x, (size_t)(gridDim.x) * head_dim, num / den);
}

#define ATTN_KERNELS(NAME, W)                                                                                  \
    extern "C" __global__ void attention_##NAME(const float* q, const u16* k_cache, const u16* v_cache,         \
                                                const int* positions, const int* token_seq, const int* tables,  \
                                                int max_blocks, u16* out, float* part, int* done, int n_heads,  \
                                                int n_kv_heads, int head_dim, int block_size, float scale,      \
                                                int window, float cap) {                                        \
        attention_impl<W, KvF16>(q, k_cache, v_cache, positions, token_seq, tables, max_blocks, out, part, done, \
                                 n_heads, n_kv_heads, head_dim, block_size, scale, window, cap, 1.f, 1.f);      \
    }                                                                                                          \
    extern "C" __global__ void attention_fp8kv_##NAME(                                                         \
        const float* q, const unsigned char* k_cache, const unsigned char* v_cache, const int* positions,      \
        const int* token_seq, const int* tables, int max_blocks, u16* out, float* part, int* done, int n_heads, \
        int n_kv_heads, int head_dim, int block_size, float scale, int window, float cap, float k_mul,         \
        float v_mul) {                                                                                         \
        attention_impl<W, KvFp8>(q, k_cache, v_cache, positions, token_seq, tables, max_blocks, out, part, done, \
                                 n_heads, n_kv_heads, head_dim, block_size, scale, window, cap, k_mul, v_mul);  \
    }

ATTN_KERNELS(f16, F16)
ATTN_KERNELS(bf16, BF16)
