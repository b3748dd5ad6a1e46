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
// dynamic shared memory `attention_shared_bytes` (model.rs). Split-K ("flash decoding"): a
// token's positions are cut into n_splits = min(gridDim.y, ceil(len / SPLIT_POSITIONS)) equal
// shares (the blocks of further splits leave at once; the count depends on the token's own
// context only, so not on the batch), and split z keeps an online softmax over chunks of
// C = 256 / TP positions (TP = 1, 2, 4 threads per position for head_dim up to 64, 128, 256:
// each thread scores up to 64 dims). A chunk's key and value rows are copied into shared memory
// together (cp.async, 16- or 8-byte pieces, rows padded by 16 * TP bytes so that the threads of
// a position read different banks); each score is a dot product over its row, then each thread
// sums 8 dims of every 32nd (head_dim 64) value row. The split either writes the normalised
// output (n_splits == 1) or its (max, sum, unnormalised accumulator) to `part`; the last split of
// a (token, head) to finish (counted in `done`, which it resets to 0 for the next step) reduces
// them in split order, so the result does not depend on which split ends last.
// The next kernel (the output projection) is released when this grid ends, or with
// `release_early` right after the wait: launched early, a large projection's blocks stream its
// weights in beside these latency-bound blocks and slow them (Llama-3.2-1B f16, 8.4 MB: +0.5-4%
// when released late); a small one (quantized, or Qwen2.5-0.5B's 1.6 MB in f16) loses more from
// its later start (NOTES.md "at2", "tf"), so the host releases early below a size (model.rs
// `EARLY_RELEASE_MAX_BYTES`).
// The copies of the first chunk's rows that earlier steps wrote are issued before waiting for the
// previous kernel (they read nothing it writes: a sequence's tokens of this step, at most
// n_tokens, take consecutive positions ending at most at pos), so their DRAM latency overlaps it
// (rope_kv releases this grid before its own wait: the copies overlap the QKV projection too).
// Tried first: keys read by each thread from global memory and values after the softmax (two
// dependent DRAM round trips per chunk, both after the wait; 9.7 us per Llama-3.2-1B decode layer
// alone under ncu, NOTES.md "Per-kernel profile"); a separate combine kernel (one more launch per
// layer); one block per KV head serving its G query heads, rows read once for all of them
// (slower: decode attention 10 -> 37 us and prefill 423 -> 550 us per Llama-3.2-1B layer under
// ncu, NOTES.md v5); one dim per thread for the value sum, a chain of dependent 2-byte loads
// (llama-3.2-1b decode 568 tok/s).

// Threads per position of the scores (each up to 64 dims).
__device__ __forceinline__ int attn_threads_per_position(int head_dim) {
    return head_dim <= 64 ? 1 : head_dim <= 128 ? 2 : 4;
}

// Positions per split of decode attention: with the combine's loads in one round, 96-128 beat
// 160 (measured best before it, NOTES.md "at2") on Qwen2.5-0.5B at 512-768 positions by 1.3-2%
// and 64 lost (NOTES.md "tb", "at3"); Llama-3.2-1B's grid allows 4 splits, as many as before.
#define SPLIT_POSITIONS 96
// Most splits (gridDim.y), model.rs `MAX_SPLITS`.
#define ATTN_MAX_SPLITS 16
// Staging rounds of a chunk: its C * head_dim / 8 16-byte pieces over blockDim.x threads, C =
// blockDim.x / TP, so head_dim / (8 * TP) <= 8 for every head size up to 256.
#define STAGE_ROUNDS 8

// The output element `at` of a (token, head) from its splits' partials: sum_z e^(m_z - M) acc_z /
// sum_z e^(m_z - M) l_z over the splits in order, every split's partials loaded at once
// (`partial(z, i)`: element i of split z's (m, l, acc[head_dim]), this thread's acc element at
// 2 + threadIdx.x); an empty split has l = 0, acc = 0.
template <class W, class Partial>
__device__ __forceinline__ void combine_splits(Partial partial, int n_splits, u16* out, size_t at, size_t lo_off) {
    float mz[ATTN_MAX_SPLITS], lz[ATTN_MAX_SPLITS], az[ATTN_MAX_SPLITS];
#pragma unroll
    for (int z = 0; z < ATTN_MAX_SPLITS; z++) {
        bool ok = z < n_splits;
        mz[z] = ok ? partial(z, 0) : NEG_INF;
        lz[z] = ok ? partial(z, 1) : 0.f;
        az[z] = ok ? partial(z, 2 + threadIdx.x) : 0.f;
    }
    float mx = NEG_INF;
#pragma unroll
    for (int z = 0; z < ATTN_MAX_SPLITS; z++) mx = fmaxf(mx, mz[z]);
    float num = 0.f, den = 0.f;
#pragma unroll
    for (int z = 0; z < ATTN_MAX_SPLITS; z++) {
        float e = lz[z] > 0.f ? expf(mz[z] - mx) : 0.f;
        num += e * az[z];
        den += e * lz[z];
    }
    store_act<W>(out, at, lo_off, num / den);
}

template <class W, class KV>
__device__ void attention_impl(const float* q, const typename KV::T* k_cache, const typename KV::T* v_cache,
                               const int* positions, const int* token_seq, const int* tables, int max_blocks, u16* out,
                               float* part, int* done, int n_heads, int n_kv_heads, int head_dim, int block_size,
                               float scale, int window, float cap, float k_mul, float v_mul, int release_early) {
    typedef typename KV::T T;
    extern __shared__ __align__(16) float sh[];
    int tp = attn_threads_per_position(head_dim), C = blockDim.x / tp;
    int stride = head_dim + 16 * tp / (int)sizeof(T);  // elements per staged row
    float* qs = sh;                                    // [head_dim]
    float* p = sh + head_dim;                          // [C] scores, then weights
    float* red = p + blockDim.x;                       // [blockDim.x * 8] accumulator reduction
    T* ks = (T*)(red + blockDim.x * 8);                // [C][stride] key rows of the chunk
    T* vs = ks + C * stride;                           // [C][stride] value rows
    int n_tokens = gridDim.x / n_heads;
    int t = blockIdx.x / n_heads, h = blockIdx.x % n_heads;
    int kvh = h / (n_heads / n_kv_heads);
    // positions and block tables are written before the step starts
    int pos = positions[t];
    int first = window > 0 ? max(0, pos + 1 - window) : 0;
    int len = pos + 1 - first;
    int split = blockIdx.y, n_splits = min((int)gridDim.y, (len + SPLIT_POSITIONS - 1) / SPLIT_POSITIONS);
    if (split >= n_splits) return;
    int per = (len + n_splits - 1) / n_splits;
    int start = first + split * per, end = min(start + per, pos + 1);
    const int* table = tables + token_seq[t] * max_blocks;
    int vecs = head_dim / 8;
    // copies rows [lo, hi) of the chunk at c into ks, vs: the block-table entries of a thread's rows
    // (STAGE_ROUNDS of them) are loaded together, then the copies issued (a copy is `asm volatile`,
    // so an entry loaded in the copy loop waits for the copy before it; measured no faster, but
    // one dependent L2 round trip where there were eight: NOTES.md "tb")
    auto stage = [&](int c, int lo, int hi) {
        hi = min(hi, c + C);
        int blk[STAGE_ROUNDS];
#pragma unroll
        for (int it = 0; it < STAGE_ROUNDS; it++) {
            int i = threadIdx.x + it * blockDim.x, j = c + i / vecs;
            blk[it] = i < C * vecs && j >= lo && j < hi ? table[j / block_size] : -1;
        }
#pragma unroll
        for (int it = 0; it < STAGE_ROUNDS; it++) {
            if (blk[it] < 0) continue;
            int i = threadIdx.x + it * blockDim.x, r = i / vecs, v = i % vecs, j = c + r;
            size_t at = (((size_t)blk[it] * n_kv_heads + kvh) * block_size + j % block_size) * head_dim + v * 8;
            KV::stage8(ks + r * stride + v * 8, k_cache + at);
            KV::stage8(vs + r * stride + v * 8, v_cache + at);
        }
    };
    int written = pos + 1 - n_tokens;  // rows below were written by earlier steps
    stage(start, start, min(end, written));
    pdl_wait();
    if (release_early) pdl_trigger();
    stage(start, max(start, written), end);  // this step's rows, which rope_kv wrote
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = q[((size_t)t * n_heads + h) * head_dim + d];

    // scores: thread (jr, part) sums the part-th of every tp-th 8-dim vector of position c + jr
    int jr = threadIdx.x / tp, jpart = threadIdx.x % tp;
    // the weighted sum of values: a thread owns 8 consecutive dims (one 16-byte load) of every
    // `groups`-th position of a chunk
    int groups = blockDim.x / vecs;
    int dv = threadIdx.x % vecs, g = threadIdx.x / vecs;
    float m = NEG_INF, l = 0.f, acc[8];
#pragma unroll
    for (int e = 0; e < 8; e++) acc[e] = 0.f;
    for (int c = start; c < end; c += C) {
        if (c != start) stage(c, c, end);
        cp_async_wait();
        __syncthreads();
        int j = c + jr;
        float dot = 0.f;
        if (j < end) {
            const T* k = ks + jr * stride;
            for (int v = jpart; v < vecs; v += tp) {
                float kf[8];
                KV::load8(k + v * 8, kf);
#pragma unroll
                for (int e = 0; e < 8; e++) dot += kf[e] * qs[v * 8 + e];
            }
        }
        for (int o = 1; o < tp; o <<= 1) dot += __shfl_xor_sync(0xffffffff, dot, o);
        bool scored = j < end && jpart == 0;
        float s = scored ? softcap(dot * k_mul * scale, cap) : NEG_INF;
        float m_new = fmaxf(m, block_max(s));
        float w = scored ? expf(s - m_new) : 0.f;
        if (jpart == 0) p[jr] = w;
        float rescale = expf(m - m_new);  // 0 on the first chunk (m = -inf)
        l = l * rescale + block_sum(w);   // block_sum syncs: p is visible below
#pragma unroll
        for (int e = 0; e < 8; e++) acc[e] *= rescale;
        m = m_new;
        int n = min(C, end - c);
        if (g < groups) {
#pragma unroll 4
            for (int i = g; i < n; i += groups) {
                float vf[8];
                KV::load8(vs + i * stride + dv * 8, vf);
                float pi = p[i];
#pragma unroll
                for (int e = 0; e < 8; e++) acc[e] += pi * vf[e];
            }
        }
        __syncthreads();  // p, ks and vs are rewritten by the next chunk
    }
    // reduce the groups' accumulators: red is [groups, head_dim]
    if (g < groups) {
#pragma unroll
        for (int e = 0; e < 8; e++) red[g * head_dim + dv * 8 + e] = acc[e];
    }
    __syncthreads();
    float* mine = part + ((size_t)blockIdx.x * gridDim.y + split) * (head_dim + 2);  // (m, l, acc)
    size_t at = ((size_t)t * n_heads + h) * head_dim + threadIdx.x, lo_off = (size_t)gridDim.x * head_dim;
    if (threadIdx.x < head_dim) {
        float a = 0.f;
        for (int gg = 0; gg < groups; gg++) a += red[gg * head_dim + threadIdx.x];
        a *= v_mul;
        if (n_splits == 1) {
            store_act<W>(out, at, lo_off, l > 0.f ? a / l : 0.f);
        } else {
            mine[2 + threadIdx.x] = a;
            if (threadIdx.x == 0) {
                mine[0] = m;
                mine[1] = l;
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
    // from L2 (__ldcg): other SMs wrote them (a cluster of the splits combining through
    // distributed shared memory instead was no faster: NOTES.md "cl")
    const float* pp = part + (size_t)blockIdx.x * gridDim.y * (head_dim + 2);
    combine_splits<W>([&](int z, int i) { return __ldcg(pp + z * (head_dim + 2) + i); }, n_splits, out, at, lo_off);
}

// One signature for both caches (k_mul = v_mul = 1 for fp16): the host picks the name.
#define ATTN_KERNEL(NAME, W, KV)                                                                              \
    extern "C" __global__ void NAME(const float* q, const KV::T* k_cache, const KV::T* v_cache,              \
                                    const int* positions, const int* token_seq, const int* tables,           \
                                    int max_blocks, u16* out, float* part, int* done, int n_heads,           \
                                    int n_kv_heads, int head_dim, int block_size, float scale, int window,   \
                                    float cap, float k_mul, float v_mul, int release_early) {                \
        attention_impl<W, KV>(q, k_cache, v_cache, positions, token_seq, tables, max_blocks, out, part, done, \
                              n_heads, n_kv_heads, head_dim, block_size, scale, window, cap, k_mul, v_mul,   \
                              release_early);                                                                \
    }
#define ATTN_KERNELS(NAME, W) ATTN_KERNEL(attention_##NAME, W, KvF16) ATTN_KERNEL(attention_fp8kv_##NAME, W, KvFp8)

ATTN_KERNELS(f16, F16)
ATTN_KERNELS(bf16, BF16)

// Prefill attention on tensor cores, flash-attention style, with the masks of `attention_impl`
// (causal, sliding window, score soft cap, GQA) over the same paged cache. A block takes 64
// consecutive tokens of the step and one query head; warp w owns tokens 16w..16w+15 as the rows
// of mma m16n8k16 tiles (q as A in two fp16 parts, keys as B: S = q k^T, 64 positions per tile, fp32), keeps
// an online softmax per row in registers and adds P v (P in fp16, values staged transposed in
// shared memory) into an fp32 [16, HD] accumulator. Tokens of several sequences may share a
// block (batched prefill, decode rows after a prompt): the block makes one pass over the
// positions of each sequence among its rows, rows of the others masked; warps with no row
// inside a tile's positions skip its products (the causal triangle).
// q: fp32 [n_tokens, n_heads * HD]; out: activations [n_tokens, n_heads * HD]. An fp8 cache
// (`attention_prefill_fp8kv_*`) is staged as fp16 in its own units (value / 256, exact), k_mul
// joining the score scale and v_mul the output's normalisation (without it, fp8-cache prompts
// took `attention_impl`: 8x the time to first token at 3,584 positions, NOTES.md "hint").
// Launch: grid (ceil(n_tokens / 64), n_heads), 128 threads, HD = head_dim in {64, 128} (other
// head sizes take `attention_impl`). Tried first (v1-v7): `attention_impl` for prefill, a block per
// (token, head) reading every key and value row of its context: 423 us per Llama-3.2-1B layer at
// 512 tokens under ncu, ~70% of the prompt's time.
template <class W, int HD, class KV>
__device__ void attention_prefill_impl(const float* q, const typename KV::T* k_cache, const typename KV::T* v_cache,
                                       const int* positions, const int* token_seq, const int* tables, int max_blocks,
                                       u16* out, int n_tokens, int n_heads, int n_kv_heads, int block_size,
                                       float scale, int window, float cap, float k_mul, float v_mul) {
    scale *= k_mul;  // keys are staged in the cache's units (fp8: value / 256)
    constexpr int BQ = 64, BK = 64, KP = HD + 8, VP = BK + 8;  // rows padded: no bank conflicts on B loads
    __shared__ __align__(16) u16 ks[BK * KP];                  // keys [position][dim]
    __shared__ __align__(16) u16 vt[HD * VP];                  // values transposed [dim][position]
    __shared__ int row_seq[BQ], row_pos[BQ], row_first[BQ];
    __shared__ int s_cur, s_lo, s_hi;
    pdl_start();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, qd = lane & 3;
    int t0 = blockIdx.x * BQ, h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    if (threadIdx.x < BQ) {
        int t = t0 + threadIdx.x;
        bool ok = t < n_tokens;
        int pos = ok ? positions[t] : 0;
        row_seq[threadIdx.x] = ok ? token_seq[t] : -1;
        row_pos[threadIdx.x] = pos;
        row_first[threadIdx.x] = window > 0 ? max(0, pos + 1 - window) : 0;
    }
    // this lane's two rows: ra = 16 * warp + g and rb = ra + 8 (A fragment rows g and g + 8)
    int ra = warp * 16 + g, rb = ra + 8;
    // q as two fp16 A operands, q = hi + lo: the scores keep ~22 bits of q (with q in one fp16,
    // an fp8 cache's engine parity fell from 250 to 242 of 256 greedy tokens: NOTES.md "fp8pf")
    unsigned qf[HD / 16][4], ql[HD / 16][4];
    {
        bool oka = t0 + ra < n_tokens, okb = t0 + rb < n_tokens;
        const float* qa = q + ((size_t)(t0 + ra) * n_heads + h) * HD;
        const float* qb = q + ((size_t)(t0 + rb) * n_heads + h) * HD;
        const float2 z2 = make_float2(0.f, 0.f);
#pragma unroll
        for (int kc = 0; kc < HD / 16; kc++) {
            int d = kc * 16 + 2 * qd;
            float2 a0 = oka ? *(const float2*)(qa + d) : z2, a1 = oka ? *(const float2*)(qa + d + 8) : z2;
            float2 b0 = okb ? *(const float2*)(qb + d) : z2, b1 = okb ? *(const float2*)(qb + d + 8) : z2;
            float2 v[4] = {a0, b0, a1, b1};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                qf[kc][e] = pack2<F16>(v[e].x, v[e].y);
                ql[kc][e] = pack2<F16>(v[e].x - F16::to_f((u16)(qf[kc][e] & 0xffff)),
                                       v[e].y - F16::to_f((u16)(qf[kc][e] >> 16)));
            }
        }
    }
    float o[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};  // rows ra, rb (l: this lane's share)
    __syncthreads();
    int seq_r[2] = {row_seq[ra], row_seq[rb]}, pos_r[2] = {row_pos[ra], row_pos[rb]};
    int first_r[2] = {row_first[ra], row_first[rb]};
    for (int prev = -1;;) {
        // the next sequence among the block's rows and its positions
        if (threadIdx.x == 0) {
            s_cur = 0x7fffffff;
            s_lo = 0x7fffffff;
            s_hi = -1;
        }
        __syncthreads();
        if (threadIdx.x < BQ && row_seq[threadIdx.x] > prev) atomicMin(&s_cur, row_seq[threadIdx.x]);
        __syncthreads();
        int cur = s_cur;
        if (cur == 0x7fffffff) break;
        if (threadIdx.x < BQ && row_seq[threadIdx.x] == cur) {
            atomicMin(&s_lo, row_first[threadIdx.x]);
            atomicMax(&s_hi, row_pos[threadIdx.x] + 1);
        }
        __syncthreads();
        int lo = s_lo, hi = s_hi;
        prev = cur;
        const int* table = tables + cur * max_blocks;
        bool in_r[2] = {seq_r[0] == cur, seq_r[1] == cur};
        for (int c = lo; c < hi; c += BK) {
            // stage keys and values of positions c .. c + BK - 1 (zeros past hi)
            for (int i = threadIdx.x; i < BK * HD / 8; i += blockDim.x) {
                int j = i / (HD / 8), dv = i % (HD / 8), p = c + j;
                uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
                if (p < hi) {
                    int blk = table[p / block_size];
                    size_t off = (((size_t)blk * n_kv_heads + kvh) * block_size + p % block_size) * HD + dv * 8;
                    kv = KV::f16x8(k_cache + off);
                    vv = KV::f16x8(v_cache + off);
                }
                *(uint4*)(ks + j * KP + dv * 8) = kv;
                unsigned vw[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    vt[(dv * 8 + 2 * e) * VP + j] = (u16)(vw[e] & 0xffff);
                    vt[(dv * 8 + 2 * e + 1) * VP + j] = (u16)(vw[e] >> 16);
                }
            }
            __syncthreads();
            bool work = false;
#pragma unroll
            for (int rr = 0; rr < 2; rr++) work |= in_r[rr] && pos_r[rr] >= c && first_r[rr] < c + BK;
            if (__any_sync(0xffffffff, work)) {
                float s[BK / 8][4];
#pragma unroll
                for (int n = 0; n < BK / 8; n++) {
                    s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
                    const u16* kr = ks + (n * 8 + g) * KP + 2 * qd;
#pragma unroll
                    for (int kc = 0; kc < HD / 16; kc++) {
                        unsigned k0 = *(const unsigned*)(kr + kc * 16), k1 = *(const unsigned*)(kr + kc * 16 + 8);
                        mma16816<F16>(s[n], qf[kc][0], qf[kc][1], qf[kc][2], qf[kc][3], k0, k1);
                        mma16816<F16>(s[n], ql[kc][0], ql[kc][1], ql[kc][2], ql[kc][3], k0, k1);
                    }
                }
                // s[n][e]: row e < 2 ? ra : rb, position c + 8n + 2qd + (e & 1)
                float mx[2] = {m[0], m[1]};
#pragma unroll
                for (int n = 0; n < BK / 8; n++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int rr = e >> 1, j = c + n * 8 + 2 * qd + (e & 1);
                        bool ok = in_r[rr] && j >= first_r[rr] && j <= pos_r[rr];
                        float v = ok ? softcap(s[n][e] * scale, cap) : NEG_INF;
                        s[n][e] = v;
                        mx[rr] = fmaxf(mx[rr], v);
                    }
                }
                float base[2];
#pragma unroll
                for (int rr = 0; rr < 2; rr++) {
                    mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffff, mx[rr], 1));
                    mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffff, mx[rr], 2));
                    base[rr] = mx[rr] == NEG_INF ? 0.f : mx[rr];  // a row with nothing yet stays at 0
                    float rescale = expf(m[rr] - base[rr]);       // 0 while m = -inf
                    l[rr] *= rescale;
#pragma unroll
                    for (int n = 0; n < HD / 8; n++) {
                        o[n][2 * rr] *= rescale;
                        o[n][2 * rr + 1] *= rescale;
                    }
                    m[rr] = mx[rr];
                }
#pragma unroll
                for (int n = 0; n < BK / 8; n++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float p = expf(s[n][e] - base[e >> 1]);
                        s[n][e] = p;
                        l[e >> 1] += p;
                    }
                }
                // O += P v: P's accumulator layout is the A fragment of the next product
#pragma unroll
                for (int kk = 0; kk < BK / 16; kk++) {
                    unsigned a0 = pack2<F16>(s[2 * kk][0], s[2 * kk][1]);
                    unsigned a1 = pack2<F16>(s[2 * kk][2], s[2 * kk][3]);
                    unsigned a2 = pack2<F16>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                    unsigned a3 = pack2<F16>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
                    for (int n = 0; n < HD / 8; n++) {
                        const u16* vr = vt + (n * 8 + g) * VP + kk * 16 + 2 * qd;
                        mma16816<F16>(o[n], a0, a1, a2, a3, *(const unsigned*)vr, *(const unsigned*)(vr + 8));
                    }
                }
            }
            __syncthreads();  // the tile is rewritten next
        }
    }
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        l[rr] += __shfl_xor_sync(0xffffffff, l[rr], 1);
        l[rr] += __shfl_xor_sync(0xffffffff, l[rr], 2);
    }
    size_t lo_off = (size_t)n_tokens * n_heads * HD;
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        int t = t0 + (rr ? rb : ra);
        if (t >= n_tokens) continue;
        float inv = l[rr] > 0.f ? v_mul / l[rr] : 0.f;  // values too are in the cache's units
        u16* orow = out + ((size_t)t * n_heads + h) * HD;
#pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            int d = n * 8 + 2 * qd;
            store_act<W>(orow, d, lo_off, o[n][2 * rr] * inv);
            store_act<W>(orow, d + 1, lo_off, o[n][2 * rr + 1] * inv);
        }
    }
}

#define ATTN_PREFILL_KERNEL_KV(NAME, W, HD, KV)                                                              \
    extern "C" __global__ void __launch_bounds__(128)                                                          \
        NAME(const float* q, const KV::T* k_cache, const KV::T* v_cache, const int* positions,                 \
             const int* token_seq, const int* tables, int max_blocks, u16* out, int n_tokens, int n_heads,     \
             int n_kv_heads, int block_size, float scale, int window, float cap, float k_mul, float v_mul) {   \
        attention_prefill_impl<W, HD, KV>(q, k_cache, v_cache, positions, token_seq, tables, max_blocks, out,  \
                                          n_tokens, n_heads, n_kv_heads, block_size, scale, window, cap, k_mul, \
                                          v_mul);                                                              \
    }
#define ATTN_PREFILL_KERNEL(NAME, W, HD)                                            \
    ATTN_PREFILL_KERNEL_KV(attention_prefill_##NAME##_hd##HD, W, HD, KvF16)         \
    ATTN_PREFILL_KERNEL_KV(attention_prefill_fp8kv_##NAME##_hd##HD, W, HD, KvFp8)

ATTN_PREFILL_KERNEL(f16, F16, 64)
ATTN_PREFILL_KERNEL(f16, F16, 128)
ATTN_PREFILL_KERNEL(bf16, BF16, 64)
ATTN_PREFILL_KERNEL(bf16, BF16, 128)
