//! Configuration flows one way: [`ModelConfig`] (what the model is, read from the source) →
//! `EngineConfig` (how it runs) → per-request [`SamplingParams`].

mod from_gguf;
mod hf;
mod model;
mod sampling;

pub use model::{Activation, Architecture, LayerAttention, ModelConfig, RopeScaling};
pub use sampling::{SamplingParams, MAX_TOP_LOGPROBS};
