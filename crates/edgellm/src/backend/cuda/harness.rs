//! Direct access to the kernels for the parity tests (tests/cuda_kernels.rs): device buffers,
//! raw launches by name, and the projection path of the model ([`GpuMatrix`]) on one matrix.
//! Not part of the engine's API; the engine goes through [`super::CudaModel`].

use std::ffi::c_void;

use super::gpu::{CudaOptions, DevBuf, Gpu};
use super::qweights::GpuMatrix;

pub use super::model::{attention_shared_bytes, Epilogue, Fusion, GemvKernel, ATTENTION_THREADS};
use crate::backend::cpu::Matrix;
use crate::Result;

/// One kernel argument by value.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    /// A device address.
    Ptr(u64),
    /// A 32-bit integer.
    I32(i32),
    /// A 32-bit float.
    F32(f32),
}

/// A device buffer of the harness.
pub struct Buffer(DevBuf);

impl Buffer {
    /// The device address.
    pub fn ptr(&self) -> u64 {
        self.0.ptr()
    }
}

/// An opened device with the kernels loaded.
pub struct Kernels {
    gpu: Gpu,
}

impl Kernels {
    /// Opens device `ordinal` and loads the kernels.
    pub fn new(ordinal: usize, opts: &CudaOptions) -> Result<Self> {
        Ok(Kernels { gpu: Gpu::new(ordinal, opts)? })
    }

    /// Streaming multiprocessors of the device.
    pub fn sm_count(&self) -> usize {
        self.gpu.sm_count
    }

    /// A buffer holding `data`.
    pub fn upload<T: bytemuck::Pod>(&self, data: &[T]) -> Result<Buffer> {
        Ok(Buffer(self.gpu.upload(data)?))
    }

    /// `bytes` bytes all 0xFF (NaN as f32 and f16), so an element a kernel fails to write shows.
    pub fn poisoned(&self, bytes: usize) -> Result<Buffer> {
        self.upload(&vec![0xFFu8; bytes])
    }

    /// The first `n` elements of `buf` (waits for the stream).
    pub fn download<T: bytemuck::Pod>(&self, buf: &Buffer, n: usize) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); n];
        self.gpu.dtoh(&mut out, buf.ptr())?;
        Ok(out)
    }

    /// Launches kernel `name`.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters in number and type, and every buffer must be
    /// large enough for the launch shape.
    pub unsafe fn launch(
        &self,
        name: &str,
        grid: (u32, u32),
        block: u32,
        shmem: u32,
        args: &[Arg],
    ) -> Result<()> {
        let mut ptrs: Vec<*mut c_void> = args
            .iter()
            .map(|a| match a {
                Arg::Ptr(p) => p as *const u64 as *mut c_void,
                Arg::I32(v) => v as *const i32 as *mut c_void,
                Arg::F32(v) => v as *const f32 as *mut c_void,
            })
            .collect();
        self.gpu.launch(name, grid, block, shmem, &mut ptrs)?;
        self.gpu.sync()
    }

    /// `x[n, cols] · mᵀ` (fp32 `[n, rows]`, soft-capped when `cap > 0`) by the model's path for a
    /// matrix not in the activation type: the GEMV up to 8 tokens, above that dequantization and
    /// the cuBLAS GEMM with an fp16 scratch of `scratch` elements (0: the GEMV over groups of 8
    /// tokens). `x` is rounded to fp16 activations.
    pub fn matmul(&self, m: &Matrix, x: &[f32], n: usize, cap: f32, scratch: usize) -> Result<Vec<f32>> {
        let w = GpuMatrix::upload(&self.gpu, m)?;
        let xb = self.upload(&to_f16(x))?;
        let out = self.poisoned(n * m.rows * 4)?;
        let sc = DevBuf::new(scratch.max(1) * 2)?;
        w.matmul(&self.gpu, xb.ptr(), n, out.ptr(), cap, (sc.ptr(), scratch))?;
        self.download(&out, n * m.rows)
    }

    /// The decode GEMV of `family` over 16-bit weights as the model launches it
    /// (`model::launch_gemv`): `x` holds `n` tokens of activations in `dt`, `out` gets fp32
    /// `[n, rows]` or, gated, activations `[n, rows]` from `w` = `[gate; up]`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemv16(
        &self,
        family: GemvKernel,
        dt: &str,
        epi: Epilogue,
        act: i32,
        (x, n): (&Buffer, usize),
        w: &Buffer,
        out: &Buffer,
        shape: (usize, usize),
    ) -> Result<()> {
        let (x, w, out) = ((x.ptr(), n), w.ptr(), out.ptr());
        super::model::launch_gemv(&self.gpu, family, dt, epi, act, x, w, out, shape, Fusion::NONE)?;
        self.gpu.sync()
    }

    /// A decode layer's projection of 16-bit `m` (in `dt`) over `n` ≤ 8 tokens with `fuse` folded
    /// in, as the model runs it (the CUDA-core GEMV): plain (fp32 `[n, rows]` into `out`) or
    /// `gated` (`m` = `[gate; up]`, SiLU).
    #[allow(clippy::too_many_arguments)]
    pub fn project(
        &self,
        m: &Matrix,
        dt: &str,
        x: &Buffer,
        n: usize,
        out: &Buffer,
        gated: bool,
        fuse: Fusion,
    ) -> Result<()> {
        let w = GpuMatrix::upload(&self.gpu, m)?;
        if !w.is_native(dt) {
            let why = format!("a {:?} matrix is not in the activation type {dt}", w.format);
            return Err(crate::Error::Invalid { what: "matrix", why });
        }
        let rows = if gated { m.rows / 2 } else { m.rows };
        let epi = if gated { Epilogue::Gated } else { Epilogue::Plain { cap: 0.0 } };
        let (x, w, out) = ((x.ptr(), n), w.w.ptr(), out.ptr());
        super::model::launch_gemv(&self.gpu, GemvKernel::Rows, dt, epi, 0, x, w, out, (rows, m.cols), fuse)?;
        self.gpu.sync()
    }

    /// The fused gate/up GEMV (n ≤ 8): `m` is `[gate; up]` and the result `act(gate) · up`
    /// (`act` 0 SiLU, 1 GELU-tanh), fp16 activations read back as f32 `[n, rows / 2]`.
    pub fn gated(&self, m: &Matrix, x: &[f32], n: usize, act: i32) -> Result<Vec<f32>> {
        let w = GpuMatrix::upload(&self.gpu, m)?;
        let xb = self.upload(&to_f16(x))?;
        let ffn = m.rows / 2;
        let out = self.poisoned(n * ffn * 2)?;
        w.gemv_gated(&self.gpu, xb.ptr(), n, out.ptr(), act)?;
        let h: Vec<u16> = self.download(&out, n * ffn)?;
        Ok(h.into_iter().map(|b| half::f16::from_bits(b).to_f32()).collect())
    }
}

fn to_f16(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect()
}
