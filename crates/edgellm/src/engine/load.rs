//! Opening a model source (GGUF file or HF directory) into an [`Engine`] with every buffer
//! allocated.

use std::path::Path;
use std::time::Instant;

use super::executor::Executor;
use super::{Engine, EngineConfig, StepBuffers};
use crate::kv::{BlockAllocator, KvShape};
use crate::model::{LoadOptions, Model};
use crate::source::gguf::GgufFile;
use crate::source::safetensors::SafetensorsSource;
use crate::source::WeightSource;
use crate::tokenizer::Tokenizer;
use crate::{Error, ModelConfig, Result};

/// A model source opened for loading: its configuration, tensors and tokenizer.
pub struct OpenedSource {
    /// What the model is.
    pub config: ModelConfig,
    /// Its tensors.
    pub weights: Box<dyn WeightSource>,
    /// Its tokenizer (with chat template and EOS ids).
    pub tokenizer: Tokenizer,
}

impl OpenedSource {
    /// Opens a `.gguf` file or an HF checkpoint directory (`config.json`, `*.safetensors`,
    /// `tokenizer.json`).
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let config = ModelConfig::from_hf_dir(path)?;
            let tok_path = path.join("tokenizer.json");
            if !tok_path.is_file() {
                return Err(Error::Invalid {
                    what: "model directory",
                    why: format!("no tokenizer.json in {}", path.display()),
                });
            }
            let tokenizer = Tokenizer::from_file(&tok_path)?;
            let weights = Box::new(SafetensorsSource::open(path)?);
            return Ok(OpenedSource { config, weights, tokenizer });
        }
        let gguf = GgufFile::open(path)?;
        let config = ModelConfig::from_gguf(&gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        Ok(OpenedSource { config, weights: Box::new(gguf), tokenizer })
    }
}

impl Engine {
    /// Loads the model at `path` (GGUF file or HF directory) and allocates the KV pool, the
    /// activation arena and the step buffers for `cfg`.
    pub fn load(path: &Path, cfg: EngineConfig) -> Result<Engine> {
        let start = Instant::now();
        if crate::package::is_package(path) {
            return Self::load_package(path, cfg, start);
        }
        let source = OpenedSource::open(path)?;
        let cfg = cfg.resolve(&source.config)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .build()
            .map_err(|e| Error::Invalid { what: "threads", why: e.to_string() })?;
        let opts = LoadOptions { weight_format: cfg.weight_format, ..LoadOptions::default() };
        let model = pool.install(|| Model::load(source.weights.as_ref(), source.config.clone(), opts))?;
        Self::from_parts(model, source.tokenizer, cfg, pool, start)
    }

    /// Builds an engine from weights already opened (for example
    /// [`crate::source::synthetic::SyntheticSource`]) and `config`. Without a tokenizer, a
    /// stand-in of the model's vocabulary size is used ([`Tokenizer::synthetic`]): prompts must
    /// then be [`super::Prompt::Ids`], and generated text is the ids' stand-in pieces.
    pub fn from_source(
        config: ModelConfig,
        weights: &dyn WeightSource,
        tokenizer: Option<Tokenizer>,
        cfg: EngineConfig,
    ) -> Result<Engine> {
        let start = Instant::now();
        let cfg = cfg.resolve(&config)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .build()
            .map_err(|e| Error::Invalid { what: "threads", why: e.to_string() })?;
        let tokenizer = match tokenizer {
            Some(t) => t,
            None => {
                Tokenizer::synthetic(config.vocab_size, config.bos_token_id, config.eos_token_ids.clone())?
            }
        };
        let opts = LoadOptions { weight_format: cfg.weight_format, ..LoadOptions::default() };
        let model = pool.install(|| Model::load(weights, config, opts))?;
        Self::from_parts(model, tokenizer, cfg, pool, start)
    }

    /// Loads an engine package (`package`): weights mapped as stored, nothing converted. A
    /// `weight_format` other than the default f32 must match the package's layers. On CUDA, the
    /// package's `plan.json` (from `edgellm build`), when there is one and `ignore_plan` is off,
    /// supplies the limits left unset and the prebuilt kernels.
    fn load_package(path: &Path, mut cfg: EngineConfig, start: Instant) -> Result<Engine> {
        let package = crate::package::Package::open(path)?;
        let stored = &package.manifest().weights.layers;
        if cfg.weight_format != crate::quant::WeightFormat::F32 && cfg.weight_format.to_string() != *stored {
            return Err(Error::Invalid {
                what: "weight format",
                why: format!(
                    "the package at {} stores {stored} weights; --dtype {} applies only when \
                     loading a GGUF file or HF checkpoint (re-export to change it)",
                    path.display(),
                    cfg.weight_format
                ),
            });
        }
        // the format in force is the stored one (so that `auto` sees a GPU-capable package)
        cfg.weight_format =
            stored.parse().map_err(|why| Error::Invalid { what: "package weight format", why })?;
        let model = package.model()?;
        let on_cuda = super::executor::cuda_ordinal(&cfg).is_some();
        let plan = match on_cuda && !cfg.ignore_plan {
            true => crate::package::Plan::read(path, package.manifest())?,
            false => None,
        };
        if cfg.kv_dtype == super::KvDtype::Auto && plan.is_none() {
            // the package's recorded default
            let recorded = &package.manifest().kv_dtype;
            cfg.kv_dtype =
                recorded.parse().map_err(|why| Error::Invalid { what: "package kv_dtype", why })?;
        }
        let mut cfg = cfg.resolve_within(&model.config, plan.as_ref().map(|p| &p.limits))?;
        if let Some(plan) = &plan {
            cfg.cuda.prebuilt = Some(plan.prebuilt(path));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .build()
            .map_err(|e| Error::Invalid { what: "threads", why: e.to_string() })?;
        Self::from_parts(model, package.tokenizer()?, cfg, pool, start)
    }

    fn from_parts(
        model: Model,
        tokenizer: Tokenizer,
        cfg: EngineConfig,
        pool: rayon::ThreadPool,
        start: Instant,
    ) -> Result<Engine> {
        let c = &model.config;
        let shape = KvShape {
            n_layers: c.num_hidden_layers,
            n_blocks: cfg.kv_blocks(),
            block_size: cfg.kv_block_size,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        };
        let template = tokenizer.chat_template_renderer()?;
        Ok(Engine {
            exec: Executor::new(&model, &cfg, shape)?,
            alloc: BlockAllocator::new(shape.n_blocks, shape.block_size),
            step: StepBuffers::with_capacity(&cfg),
            template,
            tokenizer,
            model,
            cfg,
            pool: std::sync::Arc::new(pool),
            load_time: start.elapsed(),
        })
    }
}
