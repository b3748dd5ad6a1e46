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
