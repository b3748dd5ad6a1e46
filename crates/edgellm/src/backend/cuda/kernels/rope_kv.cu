// QKV post-processing fused with the paged KV write: bias add (Qwen2), per-head q/k RMSNorm
// (Qwen3, Gemma 3), NeoX RoPE (element i paired with i + head_dim/2), then q goes to `q_out`
// (fp32 [n_tokens, n_heads * head_dim]) and k, v go to the cache slots of the token's position.
//
// qkv: fp32 [n_tokens, (n_heads + 2 * n_kv_heads) * head_dim], from the QKV projection.
// Cache: [n_blocks, n_kv_heads, block_size, head_dim] per layer, storage type. Block tables are
// padded: sequence s's table is tables[s * max_blocks ..]. Angles are `float(pos) * inv_freq[i]`
// with full-precision sincosf, as the CPU reference computes them.
// Launch: one block per token, 128 threads, dynamic shared memory = qkv width * 4 bytes.

template <class W>
__device__ void rope_kv_impl(const float* qkv, const float* bias, const float* q_norm, const float* k_norm,
                             const float* inv_freq, const int* positions, const int* token_seq, const int* tables,
                             int max_blocks, u16* k_cache, u16* v_cache, float* q_out, int n_heads, int n_kv_heads,
                             int head_dim, int block_size, float eps) {
    extern __shared__ float row[];
    int t = blockIdx.x;
    int width = (n_heads + 2 * n_kv_heads) * head_dim;
    const float* src = qkv + (size_t)t * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) row[i] = src[i] + (bias ? bias[i] : 0.f);
    __syncthreads();
    int n_qk = n_heads + n_kv_heads;
    if (q_norm) {
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n_warps = blockDim.x >> 5;
        for (int h = warp; h < n_qk; h += n_warps) {
            float* head = row + h * head_dim;
            const float* nw = h < n_heads ? q_norm : k_norm;
            float ss = 0.f;
            for (int d = lane; d < head_dim; d += 32) ss += head[d] * head[d];
            float s = rsqrtf(warp_sum(ss) / head_dim + eps);
            for (int d = lane; d < head_dim; d += 32) head[d] = head[d] * s * nw[d];
        }
        __syncthreads();
    }
    int pos = positions[t];
    int block = tables[token_seq[t] * max_blocks + pos / block_size];
    int slot = pos % block_size;
    int half = head_dim / 2;
    for (int i = threadIdx.x; i < n_qk * half; i += blockDim.x) {
        int h = i / half, d = i % half;
        float sn, cs;
        sincosf((float)pos * inv_freq[d], &sn, &cs);
        float a = row[h * head_dim + d], b = row[h * head_dim + d + half];
        float lo = a * cs - b * sn, hi = b * cs + a * sn;
        if (h < n_heads) {
            float* q = q_out + (size_t)t * n_heads * head_dim + h * head_dim;
            q[d] = lo;
            q[d + half] = hi;
        } else {
            int kvh = h - n_heads;
            u16* k = k_cache + (((size_t)block * n_kv_heads + kvh) * block_size + slot) * head_dim;
            k[d] = W::from_f(lo);
            k[d + half] = W::from_f(hi);
        }
    }
    const float* v = row + n_qk * head_dim;
    for (int i = threadIdx.x; i < n_kv_heads * head_dim; i += blockDim.x) {
        int kvh = i / head_dim, d = i % head_dim;
        v_cache[(((size_t)block * n_kv_heads + kvh) * block_size + slot) * head_dim + d] = W::from_f(v[i]);
    }
}

#define ROPE_KERNEL(NAME, W)                                                                               \
    extern "C" __global__ void rope_kv_##NAME(const float* qkv, const float* bias, const float* q_norm,     \
                                              const float* k_norm, const float* inv_freq, const int* positions, \
                                              const int* token_seq, const int* tables, int max_blocks,      \
                                              u16* k_cache, u16* v_cache, float* q_out, int n_heads,        \
                                              int n_kv_heads, int head_dim, int block_size, float eps) {    \
        rope_kv_impl<W>(qkv, bias, q_norm, k_norm, inv_freq, positions, token_seq, tables, max_blocks,      \
                        k_cache, v_cache, q_out, n_heads, n_kv_heads, head_dim, block_size, eps);           \
    }

ROPE_KERNEL(f16, F16)
ROPE_KERNEL(bf16, BF16)
