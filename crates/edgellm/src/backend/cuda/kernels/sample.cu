// The rest of a step: the gated activation over a prefill GEMM's [gate | up] rows, the logit
// soft cap after a prefill-sized LM head, and greedy sampling on the device.

// out[t, i] = act(gu[t, i]) * gu[t, ffn + i]; gu fp32 [n, 2 * ffn], out storage type.
// Launch: grid (ceil(ffn / 256), n), 256 threads.
template <class W>
__device__ void gated_act_impl(const float* gu, u16* out, int ffn, int act) {
    pdl_start();
    int i = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (i >= ffn) return;
    const float* r = gu + (size_t)t * 2 * ffn;
    out[(size_t)t * ffn + i] = W::from_f(activation(r[i], act) * r[ffn + i]);
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

// ids[r] = argmax of logits row r (ties: the lowest id; NaN never wins), as the CPU sampler.
// Launch: one block per row, 1024 threads.
extern "C" __global__ void argmax_f32(const float* logits, int vocab, int* ids) {
    pdl_start();
    const float* row = logits + (size_t)blockIdx.x * vocab;
    float best = NEG_INF;
    int best_id = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = row[i];
        if (v > best) {  // strided ascending: the first max of this thread's share wins
            best = v;
            best_id = i;
        }
    }
    __shared__ float sv[32];
    __shared__ int si[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffff, best, o);
        int oi = __shfl_xor_sync(0xffffffff, best_id, o);
        if (ov > best || (ov == best && oi < best_id)) {
            best = ov;
            best_id = oi;
        }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = best_id;
    }
    __syncthreads();
    if (warp == 0) {
        int n_warps = blockDim.x >> 5;
        best = lane < n_warps ? sv[lane] : NEG_INF;
        best_id = lane < n_warps ? si[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffff, best, o);
            int oi = __shfl_xor_sync(0xffffffff, best_id, o);
            if (ov > best || (ov == best && oi < best_id)) {
                best = ov;
                best_id = oi;
            }
        }
        if (lane == 0) ids[blockIdx.x] = best_id == 0x7fffffff ? 0 : best_id;
    }
}
