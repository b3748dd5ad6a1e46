//! One CUDA device opened for the engine: context, stream, the compiled kernel module, cuBLAS and
//! cuBLASLt handles, device buffers and raw kernel launches.
//!
//! Launches go through the driver API with arguments by value (device pointers as `u64`), so a
//! launch recorded into a CUDA graph replays exactly, and nothing is allocated per launch on the
//! device. Every device allocation goes through [`DevBuf::new`], which counts them
//! ([`allocations`]): a test proves decode steps allocate nothing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::{result, sys, CudaContext, CudaStream};

use super::compile;
use crate::{Error, Result};

/// Where the kernels come from and go.
#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// The CUDA headers (`$CUDA_HOME/include`) for NVRTC; `None`: `/usr/local/cuda/include`.
    pub include_dir: Option<PathBuf>,
    /// Where compiled kernels are cached (`$EDGELLM_HOME/kernels`); `None`: no disk cache.
    pub kernel_cache: Option<PathBuf>,
    /// Capture decode steps as CUDA graphs (off: every step launches its kernels eagerly).
    pub graphs: bool,
    /// Kernels compiled ahead of time into a package (its plan's), tried before NVRTC. The
    /// engine fills it from the package's `plan.json`.
    pub prebuilt: Option<compile::Prebuilt>,
    /// Whether NVRTC may compile kernels (off: only `prebuilt` ones load, as where NVRTC is absent).
    pub nvrtc: bool,
}

impl CudaOptions {
    /// The defaults: standard headers, no cache, graphs on, NVRTC allowed, no package kernels.
    pub fn new() -> Self {
        CudaOptions { include_dir: None, kernel_cache: None, graphs: true, prebuilt: None, nvrtc: true }
    }

    /// The CUDA headers' directory NVRTC is given: `include_dir`, else `/usr/local/cuda/include`.
    pub fn headers(&self) -> PathBuf {
        self.include_dir.clone().unwrap_or_else(|| PathBuf::from("/usr/local/cuda/include"))
    }
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) fn driver_err(op: &'static str) -> impl Fn(result::DriverError) -> Error {
    move |e| Error::Cuda { op, detail: format!("{e:?}") }
}

/// Number of CUDA devices, 0 when there is no driver or no device.
pub fn device_count() -> usize {
    // SAFETY: only tries to open libcuda.
    if !unsafe { sys::is_culib_present() } || result::init().is_err() {
        return 0;
    }
    CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

/// A device as the driver describes it, without opening a context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The driver's name for it.
    pub name: String,
    /// Its NVRTC target ([`arch_name`]).
    pub arch: String,
    /// Memory in bytes.
    pub total_mem: usize,
}

/// Describes device `ordinal`; [`Error::NoCuda`] when there is none.
pub fn device_info(ordinal: usize) -> Result<DeviceInfo> {
    let n = device_count();
    if ordinal >= n {
        return Err(Error::NoCuda { why: format!("device cuda:{ordinal} asked for, {n} present") });
    }
    let dev = result::device::get(ordinal as i32).map_err(driver_err("cuDeviceGet"))?;
    let attr = |a| {
        // SAFETY: `dev` is a valid device handle.
        unsafe { result::device::get_attribute(dev, a) }.map_err(driver_err("cuDeviceGetAttribute"))
    };
    let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    Ok(DeviceInfo {
        name: result::device::get_name(dev).map_err(driver_err("cuDeviceGetName"))?,
        arch: arch_name((major, minor)),
        // SAFETY: `dev` is a valid device handle.
        total_mem: unsafe { result::device::total_mem(dev) }.map_err(driver_err("cuDeviceTotalMem"))?,
    })
}

/// Free memory of the current context's device, in bytes (what any allocation, ours or the
/// driver's, would take from).
pub fn free_memory() -> Result<usize> {
    result::mem_get_info().map(|(free, _)| free).map_err(driver_err("cuMemGetInfo"))
}

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// Device allocations made so far by this process (all devices).
pub fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// A device allocation, freed on drop.
pub struct DevBuf {
    ptr: sys::CUdeviceptr,
}

impl DevBuf {
    /// `bytes` of uninitialised device memory (at least 1 byte is allocated).
    pub fn new(bytes: usize) -> Result<DevBuf> {
        // SAFETY: a plain allocation; the context is current on this thread (Gpu::new binds it).
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.map_err(driver_err("cuMemAlloc"))?;
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        Ok(DevBuf { ptr })
    }

    /// The device address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from cuMemAlloc and is freed once.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// An opened device.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: sys::CUmodule,
    blas: CudaBlas,
    /// Device name as the driver reports it.
    pub name: String,
    /// Compute capability.
    pub cc: (i32, i32),
    /// Streaming multiprocessors.
    pub sm_count: usize,
    /// Device memory in bytes.
    pub total_mem: usize,
    /// Most dynamic shared memory a block may opt in to, in bytes.
    pub max_shared: usize,
    /// Launch kernels with programmatic dependent launch (sm_90+; `EDGELLM_CUDA_PDL=0` turns it
    /// off, to measure what it gains).
    pdl: bool,
    /// cuBLASLt for the GEMMs (`EDGELLM_CUDA_LT=0`: cublasGemmEx, to measure what it gains).
    lt: Option<Lt>,
    /// Row-group GEMVs in one resident wave ([`Gpu::row_group_grid`]; `EDGELLM_CUDA_ONE_WAVE=0`:
    /// a block per group, to measure what it gains).
    one_wave: bool,
    /// Where the loaded kernels came from.
    pub kernels: compile::KernelOrigin,
}

/// cuBLASLt: a handle, its workspace (allocated once) and a plan per GEMM shape.
struct Lt {
    handle: lt_sys::cublasLtHandle_t,
    workspace: DevBuf,
    plans: RefCell<HashMap<(bool, usize, usize, usize), LtPlan>>,
}

/// Workspace of the cuBLASLt GEMMs (what cuBLAS itself reserves on Hopper).
const LT_WORKSPACE: usize = 32 << 20;

/// The descriptors of one GEMM shape and the algorithm the heuristic chose for it, made at the
/// shape's first use and reused by every later call.
struct LtPlan {
    desc: lt_sys::cublasLtMatmulDesc_t,
    layouts: [lt_sys::cublasLtMatrixLayout_t; 3], // w, a, c
    algo: lt_sys::cublasLtMatmulAlgo_t,
}

impl LtPlan {
    /// The plan of `c[n, m] (f32) = a[n, k] · w[m, k]ᵀ` with `a`, `w` of type `t` (the layouts
    /// of [`Gpu::gemm`]'s cublasGemmEx call: column-major, w transposed).
    fn new(
        handle: lt_sys::cublasLtHandle_t,
        t: lt_sys::cudaDataType,
        (n, m, k): (usize, usize, usize),
    ) -> Result<LtPlan, lt::CublasError> {
        let f32t = lt_sys::cudaDataType::CUDA_R_32F;
        let desc = lt::create_matmul_desc(lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, f32t)?;
        let mut plan =
            LtPlan { desc, layouts: [std::ptr::null_mut(); 3], algo: unsafe { std::mem::zeroed() } };
        let trans = 1i32; // CUBLAS_OP_T
                          // SAFETY: `desc` is live; the attribute is an i32 as cuBLASLt documents.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &trans as *const i32 as *const c_void,
                4,
            )?
        };
        plan.layouts = [
            lt::create_matrix_layout(t, k as u64, m as u64, k as i64)?,
            lt::create_matrix_layout(t, k as u64, n as u64, k as i64)?,
            lt::create_matrix_layout(f32t, m as u64, n as u64, m as i64)?,
        ];
        let pref = lt::create_matmul_pref()?;
        let [wl, al, cl] = plan.layouts;
        // SAFETY: every descriptor is live; `pref` is destroyed below whatever happens.
        let heuristic = unsafe {
            let r = lt::set_matmul_pref_attribute(
                pref,
                lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &LT_WORKSPACE as *const usize as *const c_void,
                std::mem::size_of::<usize>(),
            )
            .and_then(|()| lt::get_matmul_algo_heuristic(handle, desc, wl, al, cl, cl, pref));
            let _ = lt::destroy_matmul_pref(pref);
            r?
        };
        plan.algo = heuristic.algo;
        Ok(plan)
    }
}

impl Drop for LtPlan {
    fn drop(&mut self) {
        // SAFETY: created in `LtPlan::new`, destroyed once.
        unsafe {
            for l in self.layouts.into_iter().filter(|l| !l.is_null()) {
                let _ = lt::destroy_matrix_layout(l);
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        self.plans.borrow_mut().clear();
        // SAFETY: the handle is destroyed once, after its plans.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// The NVRTC target for compute capability `cc`: Hopper gets its `a` target (wgmma, setmaxnreg).
pub fn arch_name(cc: (i32, i32)) -> String {
    let suffix = if cc == (9, 0) { "a" } else { "" };
    format!("sm_{}{}{suffix}", cc.0, cc.1)
}

/// Loads the kernel module for `arch` into the current context: the package's CUBIN when it
/// has a usable one, else NVRTC's ([`compile::kernels`]). A package CUBIN the driver refuses (built
/// by an NVRTC newer than the driver) falls back the same way, saying so.
fn load_module(opts: &CudaOptions, arch: &str) -> Result<(sys::CUmodule, compile::KernelOrigin)> {
    let load = |cubin: &[u8]| {
        // SAFETY: `cubin` is a complete CUBIN image for `arch`, the device's; the context is current.
        unsafe { result::module::load_data(cubin.as_ptr() as *const c_void) }
    };
    let (cubin, origin) = compile::kernels(opts, arch, None)?;
    match (load(&cubin), &origin) {
        (Ok(module), _) => Ok((module, origin)),
        (Err(e), compile::KernelOrigin::Package(path)) => {
            let why = format!("the driver refused {} ({e:?})", path.display());
            let (cubin, origin) = compile::kernels(opts, arch, Some(why))?;
            let module = load(&cubin).map_err(driver_err("cuModuleLoadData"))?;
            Ok((module, origin))
        }
        (Err(e), _) => Err(driver_err("cuModuleLoadData")(e)),
    }
}

impl Gpu {
    /// Opens device `ordinal` and loads the kernels (the package's, NVRTC's cache or a compile).
    pub fn new(ordinal: usize, opts: &CudaOptions) -> Result<Gpu> {
        let n = device_count();
        if n == 0 {
            return Err(Error::NoCuda { why: "no CUDA driver or device found; use --device cpu".into() });
        }
        if ordinal >= n {
            return Err(Error::NoCuda { why: format!("device cuda:{ordinal} asked for, {n} present") });
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err("cuCtxCreate"))?;
        // SAFETY: no CudaSlice exists yet; events would break graph capture.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver_err("cuStreamCreate"))?;
        let cc = ctx.compute_capability().map_err(driver_err("cuDeviceGetAttribute"))?;
        let name = ctx.name().map_err(driver_err("cuDeviceGetName"))?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_err("cuDeviceGetAttribute"))? as usize;
        let max_shared = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(driver_err("cuDeviceGetAttribute"))? as usize;
        // SAFETY: the device handle is valid.
        let total_mem =
            unsafe { result::device::total_mem(ctx.cu_device()) }.map_err(driver_err("cuDeviceTotalMem"))?;
        if cc.0 < 8 {
            return Err(Error::NoCuda {
                why: format!("{name} is sm_{}{}; edgellm needs sm_80 or newer", cc.0, cc.1),
            });
        }
        let (module, kernels) = load_module(opts, &arch_name(cc))?;
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| Error::Cuda { op: "cublasCreate", detail: format!("{e:?}") })?;
        let pdl = cc.0 >= 9 && std::env::var("EDGELLM_CUDA_PDL").map_or(true, |v| v != "0");
        let lt = match std::env::var("EDGELLM_CUDA_LT").map_or(true, |v| v != "0") {
            true => Some(Lt {
                handle: lt::create_handle()
                    .map_err(|e| Error::Cuda { op: "cublasLtCreate", detail: format!("{e:?}") })?,
                workspace: DevBuf::new(LT_WORKSPACE)?,
                plans: RefCell::new(HashMap::new()),
            }),
            false => None,
        };
        let one_wave = std::env::var("EDGELLM_CUDA_ONE_WAVE").map_or(true, |v| v != "0");
        Ok(Gpu {
            ctx,
            stream,
            module,
            blas,
            name,
            cc,
            sm_count,
            total_mem,
            max_shared,
            pdl,
            lt,
            one_wave,
            kernels,
        })
    }

    /// Makes the context current on the calling thread (the engine may move between threads).
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(driver_err("cuCtxSetCurrent"))
    }

    /// Launches kernel `name` on the engine's stream. `args` point at the arguments' values.
    pub fn launch(
        &self,
        name: &str,
        grid: (u32, u32),
        block: u32,
        shmem: u32,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        let f = self.function(name, shmem)?;
        // programmatic dependent launch: the kernel may start during the previous one's tail
        // (every kernel waits for it before touching its outputs: common.cuh `pdl_start`)
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue { programmaticStreamSerializationAllowed: 1 },
        };
        let config = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: 1,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: shmem,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: self.pdl as u32,
        };
        // SAFETY: each kernel's launcher in `model` passes arguments matching its signature;
        // `config` and `attr` outlive the call.
        unsafe { sys::cuLaunchKernelEx(&config, f, args.as_mut_ptr(), std::ptr::null_mut()) }
            .result()
            .map_err(|e| Error::Cuda { op: "cuLaunchKernelEx", detail: format!("{name}: {e:?}") })
    }

    /// Kernel `name` of the loaded module, allowed `shmem` bytes of dynamic shared memory.
    fn function(&self, name: &str, shmem: u32) -> Result<sys::CUfunction> {
        let cname = CString::new(name).expect("kernel names hold no NUL");
        // SAFETY: `module` is loaded; a missing name is reported as an error.
        let f = unsafe { result::module::get_function(self.module, cname) }
            .map_err(|e| Error::Cuda { op: "cuModuleGetFunction", detail: format!("{name}: {e:?}") })?;
        if shmem > 48 << 10 {
            // above the default limit a kernel must opt in (up to the device's per-block maximum)
            let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            // SAFETY: `f` is a valid function handle.
            unsafe { sys::cuFuncSetAttribute(f, attr, shmem as i32) }.result().map_err(|e| Error::Cuda {
                op: "cuFuncSetAttribute",
                detail: format!("{name}: {shmem} bytes of shared memory: {e:?}"),
            })?;
        }
        Ok(f)
    }

    /// The grid of row-group GEMV `name` (kernels/gemv_rows.cu, quant.cu: blocks of `threads`
    /// and `shmem` bytes of dynamic shared memory that loop over `groups` groups of rows): as many
    /// blocks as the SMs hold at once, at most
    /// `groups`, so the whole matrix streams in one wave.
    pub fn row_group_grid(&self, name: &str, groups: u32, threads: u32, shmem: u32) -> Result<u32> {
        if !self.one_wave {
            return Ok(groups);
        }
        let mut per_sm = 0i32;
        // SAFETY: the function handle is valid and `per_sm` outlives the call.
        unsafe {
            sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
                &mut per_sm,
                self.function(name, shmem)?,
                threads as i32,
                shmem as usize,
            )
        }
        .result()
        .map_err(|e| Error::Cuda {
            op: "cuOccupancyMaxActiveBlocksPerMultiprocessor",
            detail: format!("{name}: {e:?}"),
        })?;
        Ok(groups.min(per_sm.max(1) as u32 * self.sm_count as u32))
    }

    /// Copies `src` to device address `dst` (stream-ordered).
    pub fn htod<T: Copy>(&self, dst: u64, src: &[T]) -> Result<()> {
        // SAFETY: callers pass a destination of at least `size_of_val(src)` bytes; the copy is
        // complete before `src` can change because pageable copies are staged synchronously.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(driver_err("cuMemcpyHtoD"))
    }

    /// Copies device address `src` into `dst` and waits for it.
    pub fn dtoh<T: Copy>(&self, dst: &mut [T], src: u64) -> Result<()> {
        // SAFETY: callers pass a source of at least `size_of_val(dst)` bytes.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(driver_err("cuMemcpyDtoH"))?;
        self.sync()
    }

    /// Waits for the stream.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_err("cuStreamSynchronize"))
    }

    /// Device-to-device copy bandwidth in GB/s, counted as read + write like STREAM Copy: the
    /// best of `reps` timed copies of `bytes` between two buffers allocated (and freed) here —
    /// for benchmarks, never inside a step.
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64> {
        let (src, dst) = (DevBuf::new(bytes)?, DevBuf::new(bytes)?);
        let mut best = f64::INFINITY;
        // one untimed copy first: it pays for the pages' first touch
        for rep in 0..=reps {
            self.sync()?;
            let start = std::time::Instant::now();
            // SAFETY: both buffers hold `bytes` bytes and outlive the synchronised copy.
            unsafe { result::memcpy_dtod_async(dst.ptr(), src.ptr(), bytes, self.stream.cu_stream()) }
                .map_err(driver_err("cuMemcpyDtoD"))?;
            self.sync()?;
            if rep > 0 {
                best = best.min(start.elapsed().as_secs_f64());
            }
        }
        Ok(2.0 * bytes as f64 / best / 1e9)
    }

    /// Device memory in use by every process (total less free), in bytes.
    pub fn memory_in_use(&self) -> Result<usize> {
        Ok(self.total_mem.saturating_sub(free_memory()?))
    }

    /// A buffer holding `data`.
    pub fn upload<T: Copy>(&self, data: &[T]) -> Result<DevBuf> {
        let buf = DevBuf::new(std::mem::size_of_val(data))?;
        self.htod(buf.ptr(), data)?;
        Ok(buf)
    }

    /// Starts capturing this stream's work into a graph.
    pub fn begin_capture(&self) -> Result<()> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(driver_err("cuStreamBeginCapture"))
    }

    /// Ends the capture and instantiates the graph.
    pub fn end_capture(&self) -> Result<Graph> {
        // SAFETY: the stream is capturing (begin_capture succeeded).
        let graph = unsafe { result::stream::end_capture(self.stream.cu_stream()) }
            .map_err(driver_err("cuStreamEndCapture"))?;
        let mut exec = std::ptr::null_mut();
        // SAFETY: `graph` is a complete captured graph; `exec` is valid for writes.
        let r = unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0) };
        if let Err(e) = r.result() {
            // SAFETY: `graph` is not used again.
            unsafe { sys::cuGraphDestroy(graph) };
            return Err(driver_err("cuGraphInstantiate")(e));
        }
        Ok(Graph { graph, exec })
    }

    /// Replays `graph` on the stream.
    pub fn replay(&self, graph: &Graph) -> Result<()> {
        // SAFETY: `exec` is an instantiated graph of this context.
        unsafe { sys::cuGraphLaunch(graph.exec, self.stream.cu_stream()) }
            .result()
            .map_err(driver_err("cuGraphLaunch"))
    }

    /// `c[n, m] = a[n, k] · w[m, k]ᵀ (+ c[n, m] with `accumulate`)` with `a`, `w` in fp16 (`bf16`
    /// false) or bf16, `c` fp32, fp32 accumulation (prefill projections and LM head).
    /// cuBLASLt with the descriptors and the heuristic's algorithm of each shape made at its
    /// first use (a prompt of a new length), cublasGemmEx where cuBLASLt is turned off.
    pub fn gemm(
        &self,
        bf16: bool,
        a: u64,
        w: u64,
        c: u64,
        (n, m, k): (usize, usize, usize),
        accumulate: bool,
    ) -> Result<()> {
        let (alpha, beta) = (1f32, if accumulate { 1f32 } else { 0f32 });
        if let Some(l) = &self.lt {
            let t = if bf16 { lt_sys::cudaDataType::CUDA_R_16BF } else { lt_sys::cudaDataType::CUDA_R_16F };
            let err = |e: lt::CublasError| Error::Cuda {
                op: "cublasLtMatmul",
                detail: format!("{e:?} ({n}x{m}x{k})"),
            };
            let mut plans = l.plans.borrow_mut();
            let plan = match plans.entry((bf16, n, m, k)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(LtPlan::new(l.handle, t, (n, m, k)).map_err(err)?)
                }
            };
            let [wl, al, cl] = plan.layouts;
            // SAFETY: the plan's layouts describe these buffers (sized by the caller as for
            // cublasGemmEx below); the workspace holds LT_WORKSPACE bytes.
            return unsafe {
                lt::matmul(
                    l.handle,
                    plan.desc,
                    &alpha as *const f32 as *const c_void,
                    &beta as *const f32 as *const c_void,
                    w as *const c_void,
                    wl,
                    a as *const c_void,
                    al,
                    c as *const c_void,
                    cl,
                    c as *mut c_void,
                    cl,
                    &plan.algo,
                    l.workspace.ptr() as *mut c_void,
                    LT_WORKSPACE,
                    self.stream.cu_stream() as lt_sys::cudaStream_t,
                )
            }
            .map_err(err);
        }
        let t = if bf16 { blas_sys::cudaDataType::CUDA_R_16BF } else { blas_sys::cudaDataType::CUDA_R_16F };
        // SAFETY: row-major a [n, k] is column-major [k, n]; w [m, k] row-major is column-major
        // [k, m], transposed to [m, k]; c column-major [m, n] is row-major [n, m]. Buffers are
        // sized by the caller for these shapes.
        let status = unsafe {
            blas_sys::cublasGemmEx(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                m as i32,
                n as i32,
                k as i32,
                &alpha as *const f32 as *const c_void,
                w as *const c_void,
                t,
                k as i32,
                a as *const c_void,
                t,
                k as i32,
                &beta as *const f32 as *const c_void,
                c as *mut c_void,
                blas_sys::cudaDataType::CUDA_R_32F,
                m as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        if status != blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(Error::Cuda { op: "cublasGemmEx", detail: format!("{status:?} ({n}x{m}x{k})") });
        }
        Ok(())
    }
}

/// An instantiated CUDA graph (one captured decode step).
pub struct Graph {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: both handles were created by `end_capture` and are destroyed once.
        unsafe {
            sys::cuGraphExecDestroy(self.exec);
            sys::cuGraphDestroy(self.graph);
        }
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        let _ = self.bind();
        self.lt = None; // while the context lives
                        // SAFETY: no launch can use the module after the Gpu is gone.
        let _ = unsafe { result::module::unload(self.module) };
    }
}
