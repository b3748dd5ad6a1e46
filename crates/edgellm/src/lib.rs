//! edgellm: an LLM inference engine.
//!
//! The pipeline: a model *source* (GGUF file or HF checkpoint, [`source`]) gives a [`ModelConfig`]
//! and tensors; the tokenizer and chat template ([`tokenizer`]) turn requests into token ids; the
//! engine runs the batch-first forward pass on a backend (CPU reference, CUDA) over a paged KV
//! cache and samples tokens, which the tokenizer turns back into text.

#![deny(missing_docs)]

pub mod backend;
pub mod config;
pub mod engine;
mod error;
pub mod kv;
pub mod model;
pub mod package;
pub mod quant;
pub mod registry;
pub mod sampling;
pub mod scheduler;
pub mod source;
pub mod tokenizer;

pub use config::{ModelConfig, SamplingParams};
pub use error::{Error, Result};
pub use tokenizer::{ChatMessage, ChatTemplate, DecodeStream, Tokenizer};
