//! The engine's one error type. Variants are grouped by the stage that raises them and carry
//! structured fields; the CLI and server add context with `anyhow` on top.

use std::path::PathBuf;

/// Everything that can go wrong inside the engine library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- files ---
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A model file whose bytes do not follow its format (truncated, corrupt, lying header).
    #[error("{path}: malformed {format} file: {what}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The format expected (`GGUF`, `safetensors`, `config.json`, …).
        format: &'static str,
        /// What is wrong, with the offending values.
        what: String,
    },
    /// A feature of a file that this version does not implement (a tensor type, a GGUF version).
    #[error("{path}: unsupported {what}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is unsupported.
        what: String,
    },

    // --- model description ---
    /// A model architecture edgellm does not implement.
    #[error("unsupported architecture `{name}`; supported: {supported}")]
    UnsupportedArchitecture {
        /// The architecture named by the source.
        name: String,
        /// The supported ones, comma separated.
        supported: String,
    },
    /// A configuration field that is missing or out of range.
    #[error("{source_name}: config field `{field}`: {what}")]
    Config {
        /// Where the configuration came from (a path or `GGUF metadata of …`).
        source_name: String,
        /// The field.
        field: String,
        /// What is wrong with it.
        what: String,
    },

    // --- weights ---
    /// A tensor the model needs is not in the source.
    #[error("tensor `{name}` missing from {path}")]
    MissingTensor {
        /// The tensor name as the source spells it.
        name: String,
        /// The source file or directory.
        path: PathBuf,
    },
    /// A tensor whose shape differs from what the configuration implies.
    #[error("{what}: expected shape {expected:?}, got {got:?}")]
    Shape {
        /// The tensor or operation.
        what: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape found.
        got: Vec<usize>,
    },

    // --- tokenizer and templates ---
    /// The tokenizer could not be built or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),

    // --- model registry and downloads ---
    /// A model name the registry does not know.
    #[error("unknown model `{name}`; known models: {known}")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The known names, comma separated.
        known: String,
    },
    /// Fetching or assembling a model failed.
    #[error("pull {model}: {what}")]
    Pull {
        /// The model being pulled.
        model: String,
        /// What failed, with the fix where one is known.
        what: String,
    },

    // --- running ---
    /// A request or engine option that cannot be honoured.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// The parameter.
        what: &'static str,
        /// Why it is invalid.
        why: String,
    },
    /// The KV cache has no room for the request.
    #[error("KV cache full: need {needed} blocks, {free} free")]
    KvFull {
        /// Blocks requested.
        needed: usize,
        /// Blocks free.
        free: usize,
    },
    /// The scheduler's queue is full; the request was not accepted.
    #[error("server busy: {waiting} requests are waiting (limit {limit}); retry later")]
    Busy {
        /// Requests waiting when this one arrived.
        waiting: usize,
        /// The queue's limit.
        limit: usize,
    },
    /// A forward step failed while the request was running.
    #[error("generation failed: {0}")]
    Generation(String),
    /// The scheduler thread has stopped (shut down or panicked).
    #[error("the scheduler has stopped")]
    SchedulerStopped,

    // --- cuda ---
    /// CUDA was asked for but cannot be used here (no driver, no device, bad ordinal).
    #[error("CUDA unavailable: {why}")]
    NoCuda {
        /// What is missing, and what to do instead.
        why: String,
    },
    /// A CUDA driver, NVRTC or cuBLAS call failed.
    #[error("CUDA {op}: {detail}")]
    Cuda {
        /// The call or kernel.
        op: &'static str,
        /// The library's message (for NVRTC, the compile log).
        detail: String,
    },
}

/// `Result` with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A malformed-file error.
    pub fn malformed(path: impl Into<PathBuf>, format: &'static str, what: impl Into<String>) -> Self {
        Error::Malformed { path: path.into(), format, what: what.into() }
    }
}
