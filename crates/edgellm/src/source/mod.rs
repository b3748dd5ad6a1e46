//! Readers of model sources: GGUF files (`gguf`, with the ggml block formats in `ggml`), HF
//! safetensors checkpoints (`safetensors`) and HF directories (`hf`), plus random weights of a
//! given shape for benchmarks (`synthetic`). Each exposes its tensors
//! through [`WeightSource`], in row-major shape order (outermost dimension first, as HF and PyTorch
//! write them; GGUF's innermost-first dims are reversed on read).

pub mod ggml;
pub mod gguf;
pub mod safetensors;
pub mod synthetic;

use std::path::Path;

use crate::Result;
pub use ggml::GgmlType;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// IEEE f32.
    F32,
    /// IEEE f16.
    F16,
    /// bfloat16.
    BF16,
    /// i8 (engine packages' int8 weights).
    I8,
    /// u8 (engine packages' packed int4 weights).
    U8,
    /// fp8 E4M3 (`F8_E4M3`).
    F8E4M3,
    /// A ggml type (block-quantized or plain) from a GGUF file.
    Ggml(GgmlType),
}

/// Name, shape and type of one tensor in a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name as the source spells it.
    pub name: String,
    /// Row-major shape, outermost first (`[out_features, in_features]` for a linear weight).
    pub shape: Vec<usize>,
    /// Stored element type.
    pub dtype: DType,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A set of named tensors that can be read, dequantized, as f32.
pub trait WeightSource: Send + Sync {
    /// The file or directory, for error messages.
    fn path(&self) -> &Path;
    /// Every tensor, in the source's order.
    fn tensor_infos(&self) -> Vec<TensorInfo>;
    /// One tensor's info, or `None` when absent.
    fn tensor_info(&self, name: &str) -> Option<TensorInfo>;
    /// The tensor's elements as f32, row-major, dequantized when stored quantized.
    fn read_f32(&self, name: &str) -> Result<Vec<f32>>;
    /// [`WeightSource::read_f32`] into a caller's buffer of exactly `numel` elements (lets the
    /// loader dequantize straight into a fused matrix instead of copying).
    fn read_f32_into(&self, name: &str, out: &mut [f32]) -> Result<()> {
        let v = self.read_f32(name)?;
        if v.len() != out.len() {
            return Err(crate::Error::Shape {
                what: name.to_string(),
                expected: vec![out.len()],
                got: vec![v.len()],
            });
        }
        out.copy_from_slice(&v);
        Ok(())
    }
    /// The tensor's stored bytes (little-endian elements or ggml blocks, row-major).
    fn read_raw(&self, name: &str) -> Result<&[u8]>;
}
