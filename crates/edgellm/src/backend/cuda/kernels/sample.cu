// The rest of a step: the gated activation over a prefill GEMM's [gate | up] rows, the logit
// soft cap after a prefill-sized LM head, and greedy sampling on the device.

// out[t, i] = act(gu[t, i]) * gu[t, ffn + i]; gu fp32 [n, 2 * ffn], out activations (`store_act`).
// Launch: grid (ceil(ffn / 256), n), 256 threads.
template <class W>
__device__ void gated_act_impl(const float* gu, u16* out, int ffn, int act) {
    pdl_start();
    int i = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (i >= ffn) return;
    const float* r = gu + (size_t)t * 2 * ffn;
    store_act<W>(out, (size_t)t * ffn + i, (size_t)gridDim.y * ffn, activation(r[i], act) * r[ffn + i]);
}

extern "C" __global__ void gated_act_f16(const float* gu, u16* out, int ffn, int act) {
    gated_act_impl<F16>(gu, out, ffn, act);
}
extern "C" __global__ void gated_act_bf16(const float* gu, u16* out, int ffn, int act) {
    gated_act_impl<BF16>(gu, out, ffn, act);
}

// x = cap * tanh(x / cap) over n elements. Launch: ceil(n / 256) blocks of 256.
extern "C" __global__ void softcap_f32(float* x, int n, float cap) {
    pdl_start();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = softcap(x[i], cap);
}

// Keeps the better of two (value, id) candidates: the larger value, the lower id on ties.
__device__ __forceinline__ void better(float& best, int& id, float ov, int oi) {
    if (ov > best || (ov == best && oi < id)) {
        best = ov;
        id = oi;
    }
}

__device__ __forceinline__ void warp_argmax(float& best, int& id) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) better(best, id, __shfl_xor_sync(0xffffffff, best, o), __shfl_xor_sync(0xffffffff, id, o));
}

// ids[r] = argmax of logits row r (ties: the lowest id; NaN never wins), as the CPU sampler.
// Launch: grid (rows, 32), 256 threads: block z takes the z-th 32nd of the row and writes its
// candidate to cand_v/cand_i [rows, 32]; the last block of a row to finish (counted in done[r],
// which it resets to 0 for the next step) reduces the 32 candidates. Tried first: one
// 1024-thread block per row (54 us per decode step for a 128k vocabulary under ncu).
extern "C" __global__ void argmax_f32(const float* logits, int vocab, float* cand_v, int* cand_i, int* done,
                                      int* ids) {
    pdl_start();
    int row = blockIdx.x, z = blockIdx.y, nz = gridDim.y;
    int per = (vocab + nz - 1) / nz, start = z * per, end = min(vocab, start + per);
    const float* lr = logits + (size_t)row * vocab;
    float best = NEG_INF;
    int best_id = 0x7fffffff;
    for (int i = start + threadIdx.x; i < end; i += blockDim.x) {
        float v = lr[i];
        if (v > best) {  // strided ascending: the first max of this thread's share wins
            best = v;
            best_id = i;
        }
    }
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ bool last;
    warp_argmax(best, best_id);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = best_id;
    }
    __syncthreads();
    if (warp != 0) return;
    int n_warps = blockDim.x >> 5;
    best = lane < n_warps ? sv[lane] : NEG_INF;
    best_id = lane < n_warps ? si[lane] : 0x7fffffff;
    warp_argmax(best, best_id);
    if (lane == 0) {
        cand_v[row * nz + z] = best;
        cand_i[row * nz + z] = best_id;
        __threadfence();  // the candidate is visible before it is counted
        last = atomicAdd(&done[row], 1) == nz - 1;
        if (last) done[row] = 0;
    }
    __syncwarp();
    if (!last) return;
    __threadfence();
    best = lane < nz ? __ldcg(cand_v + row * nz + lane) : NEG_INF;
    best_id = lane < nz ? __ldcg(cand_i + row * nz + lane) : 0x7fffffff;
    warp_argmax(best, best_id);
    if (lane == 0) ids[row] = best_id == 0x7fffffff ? 0 : best_id;
}

// ---------------------------------------------------------------------------------------------
// Sampling on the device: temperature, min-p, top-k, top-p and the seeded draw, bit for bit the
// CPU sampler's (sampling/logits.rs states the rules; they are exact integer arithmetic over
// weights W(d) ≈ 2^40·e^-d of the distance d = M − l below the best scaled logit M).
//
// Per row, parameters (SAMPLE_WORDS u32, filled by the step's one host-to-device copy):
//   [0] 1 = sample, 0 = greedy   [1] temperature (f32 bits)   [2] top_k (0: off)
//   [3] top-p fraction of 2^32 (0: off)   [4] max distance (f32 bits: min(27, −ln min_p))
//   [5..7) seed (lo, hi)   [7..9) draw counter (lo, hi)
//
// Four kernels, each over grid (rows, nz) with 1024 threads, block z taking the z-th nz-th of the
// row; a kernel's per-row summary is finished by the last of the row's blocks (counted in
// done[row], which it resets), as in argmax_f32 above:
//   sample_max    the best scaled logit as a packed (key, ~id) by atomicMax (greedy: the argmax);
//   sample_hist   counts and weights of candidates in SAMPLE_BINS bins of d (monotone in rank);
//                 the last block finds the bins where the top-k and top-p cuts can fall;
//   sample_gather collects the candidates of those bins (at most SAMPLE_CAP; more: the id is
//                 0xffffffff and the host samples that row from its logits); the last block sorts
//                 them by rank, cuts exactly, and — when every kept token is among them — draws;
//   sample_walk   otherwise the kept weight of each block's chunk in id order, then the last block
//                 walks the chunk holding the draw. It also writes greedy rows' ids and resets.
// Everything lives in buffers allocated at load (backend/cuda/sample.rs); the kernels leave
// them ready for the next step, so the four launches are captured in the decode graph.
// ---------------------------------------------------------------------------------------------

#define SAMPLE_WORDS 9
#define SAMPLE_BINS 2048
#define SAMPLE_CAP 4096
#define SAMPLE_MAX_D 27.0f
typedef unsigned long long u64;

struct SampleRow {
    bool sample;
    float temp, max_d;
    unsigned top_k, top_p;
    u64 seed, counter;
};

__device__ __forceinline__ SampleRow sample_row(const unsigned* params, int row) {
    const unsigned* p = params + row * SAMPLE_WORDS;
    SampleRow s;
    s.sample = p[0] != 0;
    s.temp = __uint_as_float(p[1]);
    s.top_k = p[2];
    s.top_p = p[3];
    s.max_d = __uint_as_float(p[4]);
    s.seed = (u64)p[5] | ((u64)p[6] << 32);
    s.counter = (u64)p[7] | ((u64)p[8] << 32);
    return s;
}

// Per-row state between the kernels (u64 words).
#define PLAN_BLO 0    // first bin not wholly kept (SAMPLE_BINS: every candidate is kept)
#define PLAN_BHI 1    // last bin whose candidates are gathered
#define PLAN_CNTLO 2  // candidates in bins < b_lo
#define PLAN_MASSLO 3 // their weight
#define PLAN_TOTAL 4  // weight of all candidates (the top-k set's when top-k cuts nothing)
#define PLAN_FULLK 5  // 1: top-k cuts nothing
#define PLAN_STATE 6  // 0: walk needed, 1: id written
#define PLAN_CUT 7    // (key << 32 | id) of the last kept candidate in rank order, if PLAN_HASCUT
#define PLAN_HASCUT 8
#define PLAN_TARGET 9 // the draw's target in running weight
#define PLAN_WORDS 10

// f32 → u32 whose unsigned order is the float order (NaN excluded by the callers).
__device__ __forceinline__ unsigned f2key(float v) {
    unsigned b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key2f(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The scaled logit, rounded exactly as the CPU's `l / t`.
__device__ __forceinline__ float scaled(float x, const SampleRow& s) { return s.sample ? __fdiv_rn(x, s.temp) : x; }

// sampling/logits.rs `weight`: the same correctly rounded f32 operations, never fused.
__device__ __forceinline__ u64 sample_weight(float d) {
    const unsigned c[7] = {0x3f800000u, 0xbf317218u, 0x3e75fdf0u, 0xbd635847u, 0x3c1d955bu, 0xbaaec3ffu, 0x39218489u};
    float y = __fmul_rn(d, __uint_as_float(0x3fb8aa3bu));
    float n = floorf(__fadd_rn(y, 0.5f));
    float f = __fsub_rn(y, n);
    float p = __uint_as_float(c[6]);
#pragma unroll
    for (int k = 5; k >= 0; k--) p = __fadd_rn(__fmul_rn(p, f), __uint_as_float(c[k]));
    float scale = __uint_as_float((unsigned)(127 + 40 - (int)n) << 23);
    return __float2ull_rz(__fmul_rn(p, scale));
}

// The bin of distance d in [0, SAMPLE_MAX_D]: non-decreasing in d, hence in rank.
__device__ __forceinline__ int sample_bin(float d) {
    return min((int)(d * (SAMPLE_BINS / SAMPLE_MAX_D)), SAMPLE_BINS - 1);
}

// sampling/rng.rs `splitmix64`.
__device__ __forceinline__ u64 splitmix64(u64 seed, u64 counter) {
    u64 z = seed + (counter + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// a · b as 128 bits, and a 128-bit comparison.
struct U128 {
    u64 hi, lo;
};
__device__ __forceinline__ U128 mul128(u64 a, u64 b) { return {__umul64hi(a, b), a * b}; }
__device__ __forceinline__ bool lt128(U128 a, U128 b) { return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo); }
__device__ __forceinline__ U128 shl32(u64 a) { return {a >> 32, a << 32}; }

__device__ __forceinline__ bool valid(float v) { return v == v && v > NEG_INF; }

// This block's share [start, end) of a row of n.
__device__ __forceinline__ void block_range(int n, int& start, int& end) {
    int per = (n + gridDim.y - 1) / gridDim.y;
    start = min(n, (int)blockIdx.y * per);
    end = min(n, start + per);
}

// Inclusive prefix sum over the block of one value per thread (blockDim.x = 1024); returns the
// inclusive sum and writes the block total.
__device__ __forceinline__ u64 block_scan(u64 v, u64& total) {
    __shared__ u64 warp_tot[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        u64 t = __shfl_up_sync(0xffffffff, v, o);
        if (lane >= o) v += t;
    }
    __syncthreads();  // warp_tot may still be read by a previous call
    if (lane == 31) warp_tot[warp] = v;
    __syncthreads();
    if (warp == 0) {
        u64 w = warp_tot[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            u64 t = __shfl_up_sync(0xffffffff, w, o);
            if (lane >= o) w += t;
        }
        warp_tot[lane] = w;
    }
    __syncthreads();
    total = warp_tot[31];
    return v + (warp > 0 ? warp_tot[warp - 1] : 0);
}

__device__ __forceinline__ u64 block_max_u64(u64 v) {
    __shared__ u64 red[32];
    __syncthreads();
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffff, v, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    v = red[threadIdx.x & 31];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// Whether this block is the last of its row to finish (all threads get the answer); its
// writes before the call are visible to that last block.
__device__ __forceinline__ bool last_block(int* done, int row) {
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(&done[row], 1) == (int)gridDim.y - 1;
        if (last) done[row] = 0;
    }
    __syncthreads();
    if (last) __threadfence();
    return last;
}

// The best scaled logit of the row M (its key and lowest id, packed) and whether it is finite.
__device__ __forceinline__ bool row_best(const u64* rowmax, int row, float& m) {
    u64 packed = __ldcg(rowmax + row);
    if (packed == 0) return false;
    m = key2f((unsigned)(packed >> 32));
    return m < __uint_as_float(0x7f800000u);
}

// rowmax[r] = max over valid l of (key(l) << 32 | ~id). Launch: grid (rows, nz), 1024 threads.
extern "C" __global__ void sample_max(const float* logits, int vocab, const unsigned* params, u64* rowmax) {
    pdl_start();
    int row = blockIdx.x, start, end;
    block_range(vocab, start, end);
    SampleRow s = sample_row(params, row);
    const float* lr = logits + (size_t)row * vocab;
    u64 best = 0;
    for (int i = start + threadIdx.x; i < end; i += blockDim.x) {
        float l = scaled(lr[i], s);
        if (valid(l)) best = max(best, ((u64)f2key(l) << 32) | (0xffffffffu - (unsigned)i));
    }
    best = block_max_u64(best);
    if (threadIdx.x == 0 && best != 0) atomicMax(rowmax + row, best);
}

// Candidate counts and weights per bin; the last block plans the cut. hist_cnt [rows, BINS] and
// hist_mass [rows, BINS] are zero between steps. Launch: grid (rows, nz), 1024 threads.
extern "C" __global__ void sample_hist(const float* logits, int vocab, const unsigned* params, const u64* rowmax,
                                       unsigned* hist_cnt, u64* hist_mass, u64* plan, int* done) {
    pdl_start();
    int row = blockIdx.x, start, end;
    SampleRow s = sample_row(params, row);
    float m;
    if (!s.sample || !row_best(rowmax, row, m)) return;
    __shared__ unsigned cnt[SAMPLE_BINS];
    __shared__ u64 mass[SAMPLE_BINS];
    for (int b = threadIdx.x; b < SAMPLE_BINS; b += blockDim.x) {
        cnt[b] = 0;
        mass[b] = 0;
    }
    __syncthreads();
    block_range(vocab, start, end);
    const float* lr = logits + (size_t)row * vocab;
    for (int i = start + threadIdx.x; i < end; i += blockDim.x) {
        float d = __fsub_rn(m, scaled(lr[i], s));
        if (d <= s.max_d) {
            int b = sample_bin(d);
            atomicAdd(&cnt[b], 1u);
            atomicAdd(&mass[b], sample_weight(d));
        }
    }
    __syncthreads();
    unsigned* gc = hist_cnt + (size_t)row * SAMPLE_BINS;
    u64* gm = hist_mass + (size_t)row * SAMPLE_BINS;
    for (int b = threadIdx.x; b < SAMPLE_BINS; b += blockDim.x) {
        if (cnt[b]) {
            atomicAdd(&gc[b], cnt[b]);
            atomicAdd(&gm[b], mass[b]);
        }
    }
    if (!last_block(done, row)) return;

    // the plan: thread t owns bins 2t, 2t + 1 (blockDim.x = SAMPLE_BINS / 2)
    int b0 = 2 * threadIdx.x;
    unsigned c0 = __ldcg(gc + b0), c1 = __ldcg(gc + b0 + 1);
    u64 m0 = __ldcg(gm + b0), m1 = __ldcg(gm + b0 + 1);
    gc[b0] = gc[b0 + 1] = 0;  // zero for the next step
    gm[b0] = gm[b0 + 1] = 0;
    u64 tot_c, tot_m;
    u64 ic = block_scan(c0 + c1, tot_c);
    u64 im = block_scan(m0 + m1, tot_m);
    // inclusive prefixes at bins b0 and b0 + 1, and before b0
    u64 pc1 = ic, pc0 = ic - c1, pcb = pc0 - c0;
    u64 pm1 = im, pm0 = im - m1, pmb = pm0 - m0;
    __shared__ int b_k, b_lo;
    __shared__ u64 s_lo;
    bool full_k = s.top_k == 0 || tot_c <= s.top_k;
    if (threadIdx.x == 0) {
        b_k = SAMPLE_BINS - 1;
        b_lo = SAMPLE_BINS;
    }
    __syncthreads();
    // top-k: the bin holding the k-th candidate; the weight before it bounds the top-k set's
    if (!full_k) {
        if (pcb < s.top_k && pc0 >= s.top_k) b_k = b0, s_lo = pmb;
        else if (pc0 < s.top_k && pc1 >= s.top_k) b_k = b0 + 1, s_lo = pm0;
    }
    __syncthreads();
    if (s.top_p != 0) {
        // the first bin that top-p may cut: bins whose cumulative weight · 2^32 is at most
        // top_p · (a lower bound of the top-k set's weight) are kept whole
        U128 t = mul128(s.top_p, full_k ? tot_m : s_lo);
        bool cb = lt128(t, shl32(pmb)), c0b = lt128(t, shl32(pm0)), c1b = lt128(t, shl32(pm1));
        if (!cb && c0b) b_lo = b0;
        else if (!c0b && c1b) b_lo = b0 + 1;
        __syncthreads();
        if (threadIdx.x == 0 && !full_k) b_lo = min(b_lo, b_k);
    } else if (!full_k && threadIdx.x == 0) {
        b_lo = b_k;
    }
    __syncthreads();
    // candidates and weight before b_lo
    if (b_lo == b0) plan[row * PLAN_WORDS + PLAN_CNTLO] = pcb, plan[row * PLAN_WORDS + PLAN_MASSLO] = pmb;
    if (b_lo == b0 + 1) plan[row * PLAN_WORDS + PLAN_CNTLO] = pc0, plan[row * PLAN_WORDS + PLAN_MASSLO] = pm0;
    if (threadIdx.x == 0) {
        u64* p = plan + row * PLAN_WORDS;
        if (b_lo == SAMPLE_BINS) p[PLAN_CNTLO] = tot_c, p[PLAN_MASSLO] = tot_m;
        p[PLAN_BLO] = b_lo;
        p[PLAN_BHI] = full_k ? b_lo : b_k;
        p[PLAN_TOTAL] = tot_m;
        p[PLAN_FULLK] = full_k;
    }
}

// Bitonic sort of n_pow2 (key, id) pairs in shared memory; `by_rank`: key descending then id
// ascending, else id ascending.
__device__ void sort_pairs(unsigned* key, unsigned* id, int n_pow2, bool by_rank) {
    for (int k = 2; k <= n_pow2; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < n_pow2; i += blockDim.x) {
                int o = i ^ j;
                if (o <= i) continue;
                bool o_first = by_rank ? (key[o] > key[i] || (key[o] == key[i] && id[o] < id[i])) : id[o] < id[i];
                if (o_first == ((i & k) == 0)) {
                    unsigned tk = key[i], ti = id[i];
                    key[i] = key[o], id[i] = id[o];
                    key[o] = tk, id[o] = ti;
                }
            }
            __syncthreads();
        }
    }
}

// Gathers the candidates of bins [b_lo, b_hi] into cand_key/cand_id [rows, CAP] (count in
// n_cand, zero between steps); the last block cuts and, when it can, draws. Launch: grid
// (rows, nz), 1024 threads.
extern "C" __global__ void sample_gather(const float* logits, int vocab, const unsigned* params, const u64* rowmax,
                                         u64* plan, unsigned* cand_key, unsigned* cand_id, unsigned* n_cand,
                                         int* done, unsigned* ids) {
    pdl_start();
    int row = blockIdx.x, start, end;
    SampleRow s = sample_row(params, row);
    float m;
    if (!s.sample || !row_best(rowmax, row, m)) return;
    u64* p = plan + row * PLAN_WORDS;
    int b_lo = (int)__ldcg(p + PLAN_BLO), b_hi = (int)__ldcg(p + PLAN_BHI);
    block_range(vocab, start, end);
    const float* lr = logits + (size_t)row * vocab;
    unsigned* ck = cand_key + (size_t)row * SAMPLE_CAP;
    unsigned* ci = cand_id + (size_t)row * SAMPLE_CAP;
    int lane = threadIdx.x & 31;
    if (b_lo < SAMPLE_BINS) {
        for (int i0 = start; i0 < end; i0 += blockDim.x) {
            int i = i0 + threadIdx.x;
            float l = i < end ? scaled(lr[i], s) : NEG_INF;
            float d = __fsub_rn(m, l);
            bool take = false;
            if (d <= s.max_d) {
                int b = sample_bin(d);
                take = b >= b_lo && b <= b_hi;
            }
            // one atomic per warp
            unsigned mask = __ballot_sync(0xffffffff, take);
            if (mask == 0) continue;
            unsigned base = 0;
            if (lane == __ffs(mask) - 1) base = atomicAdd(n_cand + row, __popc(mask));
            base = __shfl_sync(0xffffffff, base, __ffs(mask) - 1);
            unsigned slot = base + __popc(mask & ((1u << lane) - 1));
            if (take && slot < SAMPLE_CAP) {
                ck[slot] = f2key(l);
                ci[slot] = i;
            }
        }
    } else if (blockIdx.y != 0) {
        return;  // nothing to gather: block 0 alone finishes the plan
    }
    if (b_lo < SAMPLE_BINS && !last_block(done, row)) return;

    __shared__ unsigned sk[SAMPLE_CAP], si[SAMPLE_CAP];
    __shared__ u64 s_kept;
    __shared__ int n_kept;
    unsigned n = b_lo < SAMPLE_BINS ? __ldcg(n_cand + row) : 0;
    __syncthreads();
    if (threadIdx.x == 0) {
        n_cand[row] = 0;
        n_kept = 0;
    }
    if (n > SAMPLE_CAP) {  // too many to sort here: the host samples this row
        if (threadIdx.x == 0) {
            ids[row] = 0xffffffffu;
            p[PLAN_STATE] = 1;
        }
        return;
    }
    int n_pow2 = 1;
    while (n_pow2 < (int)n) n_pow2 <<= 1;
    for (int i = threadIdx.x; i < n_pow2; i += blockDim.x) {
        bool in = i < (int)n;
        sk[i] = in ? __ldcg(ck + i) : 0u;
        si[i] = in ? __ldcg(ci + i) : 0xffffffffu;
    }
    __syncthreads();
    sort_pairs(sk, si, n_pow2, true);
    u64 cnt_lo = __ldcg(p + PLAN_CNTLO), mass_lo = __ldcg(p + PLAN_MASSLO);
    bool full_k = __ldcg(p + PLAN_FULLK) != 0;
    // thread t owns sorted candidates [4t, 4t + 4)
    int nk = full_k ? (int)n : (int)min((u64)n, (u64)s.top_k - cnt_lo);
    u64 w[4], local = 0;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int e = 4 * threadIdx.x + j;
        w[j] = e < nk ? sample_weight(__fsub_rn(m, key2f(sk[e]))) : 0;
        local += w[j];
    }
    u64 top_k_mass;
    u64 before = block_scan(local, top_k_mass) - local;  // weight of candidates ranked before 4t
    u64 s_k = full_k ? __ldcg(p + PLAN_TOTAL) : mass_lo + top_k_mass;
    // top-p: kept iff 2^32 · (weight ranked before) < top_p · s_k
    int kept_here = 0;
    u64 run = mass_lo + before;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int e = 4 * threadIdx.x + j;
        if (e < nk && (s.top_p == 0 || lt128(shl32(run), mul128(s.top_p, s_k)))) kept_here++;
        run += w[j];
    }
    if (kept_here) atomicAdd(&n_kept, kept_here);
    __syncthreads();
    int np = n_kept;
    u64 kept_local = 0;
#pragma unroll
    for (int j = 0; j < 4; j++) kept_local += 4 * threadIdx.x + j < np ? w[j] : 0;
    u64 kept_cands;
    block_scan(kept_local, kept_cands);
    u64 total = mass_lo + kept_cands;
    u64 draw = splitmix64(s.seed, s.counter);
    U128 prod = mul128(draw >> 11, total);
    u64 target = (prod.hi << 11) | (prod.lo >> 53);
    if (mass_lo != 0) {  // kept tokens outside the gathered bins: sample_walk draws
        if (threadIdx.x == 0) {
            p[PLAN_STATE] = 0;
            p[PLAN_HASCUT] = np > 0;
            p[PLAN_CUT] = np > 0 ? ((u64)sk[np - 1] << 32) | si[np - 1] : 0;
            p[PLAN_TARGET] = target;
        }
        return;
    }
    // every kept token is here: walk them in id order
    __syncthreads();
    for (int i = threadIdx.x; i < n_pow2; i += blockDim.x)
        if (i >= np) si[i] = 0xffffffffu;
    __syncthreads();
    sort_pairs(sk, si, n_pow2, false);
    local = 0;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int e = 4 * threadIdx.x + j;
        w[j] = e < np ? sample_weight(__fsub_rn(m, key2f(sk[e]))) : 0;
        local += w[j];
    }
    u64 all;
    run = block_scan(local, all) - local;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int e = 4 * threadIdx.x + j;
        if (e < np && run <= target && target < run + w[j]) ids[row] = si[e];
        run += w[j];
    }
    if (threadIdx.x == 0) p[PLAN_STATE] = 1;
}

// Whether a candidate at distance d with key/id is kept under the row's plan.
__device__ __forceinline__ bool kept_by_plan(float d, unsigned key, unsigned id, int b_lo, bool has_cut, u64 cut) {
    if (sample_bin(d) < b_lo) return true;
    if (!has_cut) return false;
    unsigned ck = (unsigned)(cut >> 32), cid = (unsigned)cut;
    return key > ck || (key == ck && id <= cid);
}

// The draw over kept tokens in id order, block chunks first. chunk_mass [rows, nz]. Also writes
// greedy rows' ids and leaves rowmax and the plan ready for the next step. Launch: grid (rows,
// nz), 1024 threads.
extern "C" __global__ void sample_walk(const float* logits, int vocab, const unsigned* params, u64* rowmax,
                                       u64* plan, u64* chunk_mass, int* done, unsigned* ids) {
    pdl_start();
    int row = blockIdx.x, start, end;
    SampleRow s = sample_row(params, row);
    u64* p = plan + row * PLAN_WORDS;
    float m;
    bool finite = row_best(rowmax, row, m);
    if (!s.sample || !finite || __ldcg(p + PLAN_STATE) == 1) {
        if (blockIdx.y == 0 && threadIdx.x == 0) {
            u64 packed = rowmax[row];
            if (!s.sample || !finite) ids[row] = packed == 0 ? 0 : 0xffffffffu - (unsigned)packed;
            // the other blocks then read 0 (not finite) or already returned; sample_gather
            // rewrites PLAN_STATE every step
            rowmax[row] = 0;
        }
        return;
    }
    int b_lo = (int)__ldcg(p + PLAN_BLO);
    bool has_cut = __ldcg(p + PLAN_HASCUT) != 0;
    u64 cut = __ldcg(p + PLAN_CUT), target = __ldcg(p + PLAN_TARGET);
    block_range(vocab, start, end);
    const float* lr = logits + (size_t)row * vocab;
    u64 local = 0;
    for (int i = start + threadIdx.x; i < end; i += blockDim.x) {
        float l = scaled(lr[i], s);
        float d = __fsub_rn(m, l);
        if (d <= s.max_d && kept_by_plan(d, f2key(l), i, b_lo, has_cut, cut)) local += sample_weight(d);
    }
    u64 chunk;
    block_scan(local, chunk);
    if (threadIdx.x == 0) chunk_mass[row * gridDim.y + blockIdx.y] = chunk;
    if (!last_block(done, row)) return;

    // the chunk holding the target, then the thread whose contiguous share holds it
    __shared__ int z_hit;
    __shared__ u64 before_hit;
    if (threadIdx.x == 0) {
        u64 cum = 0;
        z_hit = 0, before_hit = 0;
        for (int z = 0; z < (int)gridDim.y; z++) {  // nz ≤ 32: one thread is enough
            u64 c = __ldcg(chunk_mass + row * gridDim.y + z);
            if (cum <= target && target < cum + c) z_hit = z, before_hit = cum;
            cum += c;
        }
    }
    __syncthreads();
    int per = (vocab + gridDim.y - 1) / gridDim.y;
    int c_start = min(vocab, z_hit * per), c_end = min(vocab, c_start + per);
    int share = (c_end - c_start + blockDim.x - 1) / blockDim.x;
    int t_start = min(c_end, c_start + (int)threadIdx.x * share), t_end = min(c_end, t_start + share);
    local = 0;
    for (int i = t_start; i < t_end; i++) {
        float l = scaled(lr[i], s);
        float d = __fsub_rn(m, l);
        if (d <= s.max_d && kept_by_plan(d, f2key(l), i, b_lo, has_cut, cut)) local += sample_weight(d);
    }
    u64 all;
    u64 run = before_hit + block_scan(local, all) - local;
    if (run <= target && target < run + local) {
        for (int i = t_start; i < t_end; i++) {
            float l = scaled(lr[i], s);
            float d = __fsub_rn(m, l);
            if (d <= s.max_d && kept_by_plan(d, f2key(l), i, b_lo, has_cut, cut)) {
                run += sample_weight(d);
                if (run > target) {
                    ids[row] = i;
                    break;
                }
            }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) rowmax[row] = 0;
}
