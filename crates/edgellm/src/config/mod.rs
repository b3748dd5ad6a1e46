//! Configuration flows one way: [`ModelConfig`] (what the model is, read from the source) →
//! `EngineConfig` (how it runs) → per-request `SamplingParams`.

mod from_gguf;
mod model;

pub use model::{Activation, Architecture, LayerAttention, ModelConfig, RopeScaling};
