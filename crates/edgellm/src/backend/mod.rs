//! Compute backends. `cpu` is the complete reference implementation every other backend is
//! checked against; its kernels work on f32 activations over weights stored as f32, f16 or bf16.
//! `cuda` runs the same forward pass on an NVIDIA GPU over f16 or bf16 weights.

pub mod cpu;
pub mod cuda;

use crate::{Error, Result};

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// A CUDA device when one is present and the weights suit it, otherwise the CPU.
    Auto,
    /// The CPU backend.
    #[default]
    Cpu,
    /// CUDA device `N` (an error when there is none).
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad =
            || Error::Invalid { what: "device", why: format!("`{s}`: expected auto, cpu, cuda or cuda:N") };
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Device::Cuda).ok_or_else(bad),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Auto => write!(f, "auto"),
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
