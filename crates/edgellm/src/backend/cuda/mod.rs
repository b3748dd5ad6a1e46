//! The CUDA backend: the forward pass of `model/transformer.rs` on an NVIDIA GPU.
//!
//! cudarc loads libcuda, NVRTC and cuBLAS at run time, so the binary builds and runs on machines
//! without CUDA; asking for a device there is a clear [`crate::Error::NoCuda`]. The kernels are the
//! `.cu` files under `kernels/`, embedded in the binary and compiled by NVRTC for the device's
//! architecture at first use ([`compile`], cached on disk), or loaded from an engine package
//! prepared by `edgellm build` ([`Prebuilt`]: no NVRTC needed). [`CudaModel`] holds the weights, the
//! paged KV pool and every buffer on the device; decode steps replay CUDA graphs. Weights run
//! in fp16, bf16, int8, int4 or fp8 ([`qweights`]), the KV cache in fp16 or fp8 E4M3.

/// Launches kernel `$name` on `$gpu` with the arguments by value (device pointers as `u64`):
/// `gpu.launch(name, grid, block, shmem, args)` with each argument passed by address.
macro_rules! launch {
    ($gpu:expr, $name:expr, $grid:expr, $block:expr, $shmem:expr; $($arg:expr),* $(,)?) => {
        $gpu.launch(&$name, $grid, $block, $shmem, &mut [$(&$arg as *const _ as *mut std::ffi::c_void),*])
    };
}

pub mod compile;
mod gpu;
#[doc(hidden)]
pub mod harness;
mod model;
mod qweights;
mod sample;

pub use compile::{KernelImage, KernelOrigin, Prebuilt};
pub use gpu::{allocations, arch_name, device_count, device_info, free_memory, CudaOptions, DeviceInfo};
pub use model::{CudaLimits, CudaModel};
pub use qweights::MAX_GEMV_TOKENS;
pub use sample::{StandaloneSampler, HOST_ROW};
