//! Weight quantization formats and their CPU quantize/dequantize: what a weight matrix looks like
//! in memory (and, later, in an engine package) when it is not stored as floats.
//!
//! - [`int8`]: per-output-channel symmetric, one f32 scale per row, values in `[-127, 127]`.
//! - [`int4`]: group-wise symmetric along the input dimension (group 128 by default), one f32
//!   scale per (row, group), values in `[-8, 7]` packed two per byte.
//! - [`fp8`]: E4M3 codes, one f32 scale per output channel.
//! - [`awq`]: activation-aware scaling before int4 quantization, over a calibration text (export).
//!
//! [`Buf`] holds the arrays, owned or borrowed from a memory-mapped engine package.
//!
//! Both layouts are plain arrays (`i8`/`u8` values, `f32` scales, row-major by output feature)
//! so they can be written to a package as they are. The matmul kernels that read them are in
//! `backend::cpu::qmatmul`.

pub mod awq;
mod buf;
pub mod fp8;
mod gptq;
pub mod int4;
pub mod int8;

pub use buf::Buf;

use std::fmt;
use std::str::FromStr;

/// How weight matrices are stored on the CPU: one mechanism for the engine config, the loader and
/// the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum WeightFormat {
    /// f32 elements (exact).
    #[default]
    F32,
    /// bf16 elements.
    BF16,
    /// f16 elements.
    F16,
    /// int8 per output channel ([`int8`]).
    Int8,
    /// int4 in groups of `group` input features ([`int4`]); `group` is a multiple of
    /// [`int4::CHUNK`].
    Int4 {
        /// Input features per scale.
        group: usize,
    },
    /// fp8 E4M3 per output channel ([`fp8`]).
    Fp8,
}

impl WeightFormat {
    /// int4 with the default group size.
    pub const INT4: WeightFormat = WeightFormat::Int4 { group: int4::DEFAULT_GROUP };

    /// Whether the format is an integer quantization (the embedding table then stays in bf16
    /// for the row gather).
    pub fn is_quantized(self) -> bool {
        matches!(self, WeightFormat::Int8 | WeightFormat::Int4 { .. } | WeightFormat::Fp8)
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightFormat::F32 => f.write_str("f32"),
            WeightFormat::BF16 => f.write_str("bf16"),
            WeightFormat::F16 => f.write_str("f16"),
            WeightFormat::Int8 => f.write_str("int8"),
            WeightFormat::Int4 { group } if *group == int4::DEFAULT_GROUP => f.write_str("int4"),
            WeightFormat::Int4 { group } => write!(f, "int4-g{group}"),
            WeightFormat::Fp8 => f.write_str("fp8"),
        }
    }
}

impl From<WeightFormat> for String {
    fn from(f: WeightFormat) -> String {
        f.to_string()
    }
}

impl TryFrom<String> for WeightFormat {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl FromStr for WeightFormat {
    type Err = String;

    /// `f32`, `bf16`, `f16` (or `fp16`), `int8`, `int4` (group 128), `int4-gN` or `fp8`.
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "f32" => WeightFormat::F32,
            "bf16" => WeightFormat::BF16,
            "f16" | "fp16" => WeightFormat::F16,
            "int8" => WeightFormat::Int8,
            "int4" => WeightFormat::INT4,
            "fp8" => WeightFormat::Fp8,
            _ => match s.strip_prefix("int4-g").and_then(|g| g.parse().ok()) {
                Some(group) => WeightFormat::Int4 { group },
                None => {
                    return Err(format!(
                        "unknown weight format `{s}` (f32, bf16, f16, int8, int4, int4-gN, fp8)"
                    ))
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for f in [
            WeightFormat::F32,
            WeightFormat::BF16,
            WeightFormat::F16,
            WeightFormat::Int8,
            WeightFormat::INT4,
            WeightFormat::Int4 { group: 64 },
            WeightFormat::Fp8,
        ] {
            assert_eq!(f.to_string().parse::<WeightFormat>().unwrap(), f);
        }
        assert!("int3".parse::<WeightFormat>().is_err());
    }
}
