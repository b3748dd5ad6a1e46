//! Compute backends. `cpu` is the complete reference implementation every other backend is
//! checked against; its kernels work on f32 activations over weights stored as f32, f16 or bf16.

pub mod cpu;
