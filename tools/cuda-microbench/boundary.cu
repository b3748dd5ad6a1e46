// Microbenchmark (not part of edgellm): what a kernel boundary costs in a replayed CUDA graph with
// programmatic dependent launch, against a grid-wide barrier inside one persistent kernel.
#include <cstdio>
#include <cuda_runtime.h>
#include <cooperative_groups.h>
namespace cg = cooperative_groups;

__global__ void k_wait_trigger(int* x) {  // wait, then release the next (edgellm's pdl_start)
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (threadIdx.x == 0 && blockIdx.x == 0) x[0]++;
}
__global__ void k_trigger_wait(int* x) {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (threadIdx.x == 0 && blockIdx.x == 0) x[0]++;
}
__global__ void k_late(int* x) {  // released at its end
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (threadIdx.x == 0 && blockIdx.x == 0) x[0]++;
}
__global__ void k_persistent(int* x, int n) {
    cg::grid_group g = cg::this_grid();
    for (int i = 0; i < n; i++) {
        if (threadIdx.x == 0 && blockIdx.x == 0) x[0]++;
        g.sync();
    }
}
// hand-made barrier: one counter, generation by value
__global__ void k_persistent_atomic(unsigned* bar, int n) {
    unsigned nb = gridDim.x;
    for (int i = 1; i <= n; i++) {
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            atomicAdd(bar, 1);
            unsigned target = nb * i;
            while (true) {
                unsigned v;
                asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(v) : "l"(bar));
                if (v >= target) break;
            }
        }
        __syncthreads();
    }
}

template <class F>
float graph_time(F kernel, int blocks, int threads, int n, bool pdl, int* x, cudaStream_t s) {
    cudaGraph_t graph;
    cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
    for (int i = 0; i < n; i++) {
        cudaLaunchAttribute attr;
        attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr.val.programmaticStreamSerializationAllowed = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = blocks; cfg.blockDim = threads; cfg.stream = s;
        cfg.attrs = &attr; cfg.numAttrs = pdl ? 1 : 0;
        cudaLaunchKernelEx(&cfg, kernel, x);
    }
    cudaStreamEndCapture(s, &graph);
    cudaGraphExec_t exec;
    cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphLaunch(exec, s); cudaStreamSynchronize(s);
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
    float best = 1e9;
    for (int r = 0; r < 5; r++) {
        cudaEventRecord(a, s); cudaGraphLaunch(exec, s); cudaEventRecord(b, s); cudaEventSynchronize(b);
        float ms; cudaEventElapsedTime(&ms, a, b); if (ms < best) best = ms;
    }
    return best * 1000.f / n;
}

int main() {
    int* x; cudaMalloc(&x, 64); cudaMemset(x, 0, 64);
    unsigned* bar; cudaMalloc(&bar, 64);
    cudaStream_t s; cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    cudaDeviceProp p; cudaGetDeviceProperties(&p, 0);
    int sms = p.multiProcessorCount, n = 200;
    printf("%s, %d SMs; us per kernel (graph of %d launches, best of 5)\n", p.name, sms, n);
    for (int per_sm : {1, 3, 8}) {
        int blocks = sms * per_sm;
        printf("blocks %4d x 128: no PDL %.2f | PDL wait+trigger %.2f | trigger+wait %.2f | released at end %.2f\n", blocks,
               graph_time(k_wait_trigger, blocks, 128, n, false, x, s), graph_time(k_wait_trigger, blocks, 128, n, true, x, s),
               graph_time(k_trigger_wait, blocks, 128, n, true, x, s), graph_time(k_late, blocks, 128, n, true, x, s));
    }
    for (int per_sm : {1, 3}) {
        int blocks = sms * per_sm, iters = 1000;
        void* args[] = {&x, &iters};
        cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
        cudaLaunchCooperativeKernel((void*)k_persistent, blocks, 128, args, 0, s); cudaStreamSynchronize(s);
        cudaEventRecord(a, s);
        cudaLaunchCooperativeKernel((void*)k_persistent, blocks, 128, args, 0, s);
        cudaEventRecord(b, s); cudaEventSynchronize(b);
        float ms; cudaEventElapsedTime(&ms, a, b);
        cudaMemset(bar, 0, 64);
        void* args2[] = {&bar, &iters};
        cudaEventRecord(a, s);
        cudaLaunchCooperativeKernel((void*)k_persistent_atomic, blocks, 128, args2, 0, s);
        cudaEventRecord(b, s); cudaEventSynchronize(b);
        float ms2; cudaEventElapsedTime(&ms2, a, b);
        printf("persistent %4d x 128: cg grid.sync %.2f us | atomic barrier %.2f us per barrier (%s)\n", blocks,
               ms * 1000.f / iters, ms2 * 1000.f / iters, cudaGetErrorString(cudaGetLastError()));
    }
    return 0;
}
