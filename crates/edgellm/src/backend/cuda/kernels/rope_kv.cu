// QKV post-processing fused with the paged KV write: bias add (Qwen2), per-head q/k RMSNorm
// (Qwen3, Gemma 3), NeoX RoPE (element i paired with i + head_dim/2), then q goes to `q_out`
// (fp32 [n_tokens, n_heads * head_dim]) and k, v go to the cache slots of the token's position.
//
// qkv: fp32 [n_tokens, (n_heads + 2 * n_kv_heads) * head_dim], from the QKV projection.
// Cache: [n_blocks, n_kv_heads, block_size, head_dim] per layer, fp16 under fp16 and bf16
// weights alike (bf16's 8-bit significand cost the fixtures' logits more than fp16's range), or
// fp8 E4M3 (`rope_kv_fp8kv_*`: stored = value / k_scale or / v_scale, per tensor). Block tables are
// padded: sequence s's table is tables[s * max_blocks ..]. Angles are `float(pos) * inv_freq[i]`
// with full-precision sincosf, as the CPU reference computes them.
// Launch: grid (n_tokens, n_heads + 2 * n_kv_heads), head_dim threads (a multiple of 32, at most
// 256): one block per head. Tried first: one block per token walking every head (16.7 us per
// decode layer of Llama-3.2-1B under ncu, a single block doing 48 heads' sincosf).

template <class W, class KV>
__device__ void rope_kv_impl(const float* qkv, const float* bias, const float* q_norm, const float* k_norm,
                             const float* inv_freq, const int* positions, const int* token_seq, const int* tables,
                             int max_blocks, typename KV::T* k_cache, typename KV::T* v_cache, float* q_out,
                             int n_heads, int n_kv_heads, int head_dim, int block_size, float eps, float k_scale,
                             float v_scale) {
    __shared__ float head[256];
    // the attention grid may launch now: what it does before its own wait (staging the cache
    // rows earlier steps wrote) reads nothing this kernel or the QKV projection writes, and its
    // DRAM latency then overlaps the projection's tail (+1.3-3.6% decode: NOTES.md "cl")
    pdl_trigger();
    pdl_wait();
    int t = blockIdx.x, h = blockIdx.y;  // h: q heads, then k heads, then v heads
    int width = (n_heads + 2 * n_kv_heads) * head_dim;
    const float* src = qkv + (size_t)t * width + h * head_dim;
    const float* b = bias ? bias + h * head_dim : nullptr;
    int d = threadIdx.x;  // blockDim.x == head_dim
    float x = src[d] + (b ? b[d] : 0.f);
    bool is_q = h < n_heads, is_k = !is_q && h < n_heads + n_kv_heads;
    if (q_norm && (is_q || is_k)) {
        float s = rsqrtf(block_sum(x * x) / head_dim + eps);
        x = x * s * (is_q ? q_norm : k_norm)[d];
    }
    int pos = positions[t];
    int block = tables[token_seq[t] * max_blocks + pos / block_size];
    int slot = pos % block_size;
    int kvh = is_k ? h - n_heads : h - n_heads - n_kv_heads;
    size_t cache_row = (((size_t)block * n_kv_heads + kvh) * block_size + slot) * head_dim;
    if (!is_q && !is_k) {
        KV::store(v_cache + cache_row + d, x, v_scale);
        return;
    }
    head[d] = x;
    __syncthreads();
    int half = head_dim / 2, i = d % half;
    float sn, cs;
    sincosf((float)pos * inv_freq[i], &sn, &cs);
    float a = head[i], bb = head[i + half];
    float y = d < half ? a * cs - bb * sn : bb * cs + a * sn;
    if (is_q) {
        q_out[((size_t)t * n_heads + h) * head_dim + d] = y;
    } else {
        KV::store(k_cache + cache_row + d, y, k_scale);
    }
}

// One signature for both caches (the scales are unused by an fp16 one): the host picks the name.
#define ROPE_KERNEL_KV(NAME, W, KV)                                                                        \
    extern "C" __global__ void NAME(const float* qkv, const float* bias, const float* q_norm,              \
                                    const float* k_norm, const float* inv_freq, const int* positions,      \
                                    const int* token_seq, const int* tables, int max_blocks, KV::T* k_cache, \
                                    KV::T* v_cache, float* q_out, int n_heads, int n_kv_heads, int head_dim, \
                                    int block_size, float eps, float k_scale, float v_scale) {             \
        rope_kv_impl<W, KV>(qkv, bias, q_norm, k_norm, inv_freq, positions, token_seq, tables, max_blocks,  \
                            k_cache, v_cache, q_out, n_heads, n_kv_heads, head_dim, block_size, eps, k_scale, \
                            v_scale);                                                                      \
    }
#define ROPE_KERNEL(NAME, W) ROPE_KERNEL_KV(rope_kv_##NAME, W, KvF16) ROPE_KERNEL_KV(rope_kv_fp8kv_##NAME, W, KvFp8)

ROPE_KERNEL(f16, F16)
ROPE_KERNEL(bf16, BF16)
