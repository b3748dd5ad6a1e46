//! `plan.json` and `kernels/`: what `edgellm build` adds to a package for running on CUDA — the
//! engine's limits (sequences, batch tokens, context, KV pool positions and dtype), fixed once
//! against a device's memory, and the kernels compiled ahead of time for one or more archs, so a
//! deployment loads them without NVRTC.
//!
//! This is a layer over the package, not part of it: building changes nothing the manifest
//! covers (the weights are the same on every device), and a plan is bound to the package's
//! weights by their SHA-256 instead. Each CUBIN is checked against its recorded size and SHA-256
//! and the hash of the kernel sources it was compiled from before it is used
//! ([`crate::backend::cuda::compile`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Manifest, Package};
use crate::backend::cuda::{self, compile, CudaOptions, DeviceInfo, KernelImage, Prebuilt};
use crate::backend::Device;
use crate::engine::{Engine, EngineConfig, KvDtype};
use crate::{Error, ModelConfig, Result};

/// The plan file's name.
pub const PLAN_FILE: &str = "plan.json";

/// The `format` value of every plan.
pub const PLAN_FORMAT: &str = "edgellm-plan";

/// The plan layout this version writes and reads.
pub const PLAN_FORMAT_VERSION: u32 = 1;

/// The KV-cache dtypes a plan may fix: those the CUDA backend keeps.
const PLAN_KV_DTYPES: [&str; 2] = ["fp16", "fp8"];

/// Device memory left free when the KV pool is sized from it: a tenth of what is free after
/// loading, at least this much (CUDA graphs, cuBLASLt plans and other processes' growth).
const MIN_HEADROOM: usize = 256 << 20;

/// `plan.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Always [`PLAN_FORMAT`].
    pub format: String,
    /// [`PLAN_FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// The edgellm version that built it.
    pub edgellm_version: String,
    /// SHA-256 of the package's `weights.safetensors` (the manifest's): the package it is for.
    pub weights_sha256: String,
    /// The engine's limits.
    pub limits: PlanLimits,
    /// Bytes of the KV pool these limits allocate on the device.
    pub kv_bytes: u64,
    /// The device the limits were measured on; `None` when cross-built without one.
    pub device: Option<BuiltOn>,
    /// The compiled kernels, one image per arch.
    pub kernels: Vec<KernelImage>,
}

/// The limits a plan fixes (the [`EngineConfig`] fields of the same names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    /// Most sequences in one batch.
    pub max_seqs: usize,
    /// Most tokens in one forward pass.
    pub max_batch_tokens: usize,
    /// Longest sequence.
    pub max_context: usize,
    /// Token positions in the KV pool.
    pub kv_tokens: usize,
    /// Positions per KV block.
    pub kv_block_size: usize,
    /// KV-cache element type: `fp16` or `fp8`.
    pub kv_dtype: String,
}

/// The device a plan was measured on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltOn {
    /// The driver's name for it.
    pub name: String,
    /// Its arch, e.g. `sm_90a`.
    pub arch: String,
    /// Its memory in bytes.
    pub memory_bytes: u64,
    /// Memory free once the model was loaded, before the KV pool was sized from it.
    pub free_bytes: u64,
}

impl Plan {
    /// Reads and checks the plan of the package in `dir` (whose manifest is `manifest`);
    /// `None` when the package has no plan.
    pub fn read(dir: &Path, manifest: &Manifest) -> Result<Option<Plan>> {
        let path = dir.join(PLAN_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let plan = Self::parse(&text, &path)?;
        plan.check(manifest).map_err(|what| Error::malformed(&path, "engine plan", what))?;
        Ok(Some(plan))
    }

    /// Parses plan text (read from `path`), checking its format and version.
    fn parse(text: &str, path: &Path) -> Result<Plan> {
        let bad = |what: String| Error::malformed(path, "engine plan", what);
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if value["format"] != PLAN_FORMAT {
            return Err(bad(format!("`format` is {}, not \"{PLAN_FORMAT}\"", value["format"])));
        }
        if value["format_version"] != PLAN_FORMAT_VERSION {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                what: format!(
                    "plan format version {} (this edgellm reads {PLAN_FORMAT_VERSION}); rebuild it: \
                     edgellm build PKG --force",
                    value["format_version"]
                ),
            });
        }
        serde_json::from_value(value).map_err(|e| bad(e.to_string()))
    }

    /// Whether the plan fits the package of `manifest`; otherwise what is wrong, with the fix.
    pub fn check(&self, manifest: &Manifest) -> std::result::Result<(), String> {
        if self.weights_sha256 != manifest.weights_file.sha256 {
            return Err(format!(
                "built for other weights (sha256 {}, the package's are {}); rebuild it: edgellm build \
                 PKG --force",
                short(&self.weights_sha256),
                short(&manifest.weights_file.sha256)
            ));
        }
        self.limits.check(&manifest.config)?;
        let mut archs: Vec<&str> = Vec::new();
        for k in &self.kernels {
            if !compile::is_arch(&k.arch) {
                return Err(format!("kernel arch `{}` is not like sm_87 or sm_90a", k.arch));
            }
            if k.file != KernelImage::file_for(&k.arch) {
                return Err(format!("kernel file `{}` is not {}", k.file, KernelImage::file_for(&k.arch)));
            }
            if archs.contains(&k.arch.as_str()) {
                return Err(format!("two kernel images for {}", k.arch));
            }
            archs.push(&k.arch);
        }
        Ok(())
    }

    /// The plan's kernels, as the CUDA backend takes them, for the package in `dir`.
    pub fn prebuilt(&self, dir: &Path) -> Prebuilt {
        Prebuilt { dir: dir.to_path_buf(), images: self.kernels.clone() }
    }

    /// Writes the plan and its kernels (`cubins`, one per image, in order) into package `dir`:
    /// every file is written aside and renamed into place, `plan.json` last, then CUBINs of archs
    /// no longer planned are removed.
    pub fn write(&self, dir: &Path, cubins: &[Vec<u8>]) -> Result<()> {
        assert_eq!(cubins.len(), self.kernels.len(), "one CUBIN per kernel image");
        let kernels = dir.join("kernels");
        std::fs::create_dir_all(&kernels).map_err(|e| Error::io(&kernels, e))?;
        for (image, cubin) in self.kernels.iter().zip(cubins) {
            write_atomic(&dir.join(&image.file), cubin)?;
        }
        let text = serde_json::to_string_pretty(self).expect("a plan serializes") + "\n";
        write_atomic(&dir.join(PLAN_FILE), text.as_bytes())?;
        let entries = std::fs::read_dir(&kernels).map_err(|e| Error::io(&kernels, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let planned = self.kernels.iter().any(|k| k.file == format!("kernels/{name}"));
            if name.starts_with("sm_") && name.ends_with(".cubin") && !planned {
                std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            }
        }
        Ok(())
    }
}

impl PlanLimits {
    /// Whether the limits are usable for `model`; otherwise what is wrong.
    pub fn check(&self, model: &ModelConfig) -> std::result::Result<(), String> {
        let positive = [
            ("max_seqs", self.max_seqs),
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_context", self.max_context),
            ("kv_tokens", self.kv_tokens),
            ("kv_block_size", self.kv_block_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} is 0"));
        }
        let model_max = model.max_position_embeddings.max(1);
        if self.max_context > model_max {
            return Err(format!(
                "max_context {} exceeds the model's {model_max} positions",
                self.max_context
            ));
        }
        if self.kv_tokens < self.max_context {
            return Err(format!(
                "kv_tokens {} cannot hold one sequence of max_context {}",
                self.kv_tokens, self.max_context
            ));
        }
        if !PLAN_KV_DTYPES.contains(&self.kv_dtype.as_str()) {
            return Err(format!("kv_dtype `{}` is not one of {PLAN_KV_DTYPES:?}", self.kv_dtype));
        }
        Ok(())
    }

    /// Bytes of the KV pool these limits allocate for `model`.
    pub fn kv_bytes(&self, model: &ModelConfig) -> u64 {
        let positions = self.kv_tokens.div_ceil(self.kv_block_size) * self.kv_block_size;
        (positions * kv_position_bytes(model, &self.kv_dtype)) as u64
    }
}

/// Bytes one token position takes in the KV pool (K and V of every layer).
fn kv_position_bytes(model: &ModelConfig, kv_dtype: &str) -> usize {
    let elt = if kv_dtype == "fp8" { 1 } else { 2 };
    model.num_hidden_layers * 2 * model.num_key_value_heads * model.head_dim * elt
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Writes `bytes` to `path` through a temporary file renamed into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// What `edgellm build` is asked for; a limit left at 0 takes its default.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The CUDA device to measure on and compile for (`cuda:N`).
    pub ordinal: usize,
    /// The archs to compile for (empty: the device's). The device is measured only when its arch
    /// is among them; otherwise the build is a cross-build.
    pub archs: Vec<String>,
    /// Most sequences in one batch (0: 8).
    pub max_seqs: usize,
    /// Most tokens in one forward pass (0: 512).
    pub max_batch_tokens: usize,
    /// Longest sequence (0: the model's limit, at most 4096).
    pub max_context: usize,
    /// KV pool positions (0: `max_seqs × max_context`, or fewer where the device's free memory
    /// holds fewer; required when cross-building).
    pub kv_tokens: usize,
    /// KV-cache element type (`Auto`: the package's recorded one).
    pub kv_dtype: KvDtype,
    /// NVRTC headers and kernel cache.
    pub cuda: CudaOptions,
    /// Replace an existing plan.
    pub force: bool,
}

/// Progress of [`build`], one event per stage.
#[derive(Debug, Clone)]
pub enum BuildEvent {
    /// The package's checksum is being verified.
    Verifying,
    /// The model is being loaded on the device to measure its free memory.
    Measuring(DeviceInfo),
    /// Cross-building without a device.
    CrossBuilding,
    /// NVRTC is compiling the kernels for `arch`.
    Compiling(String),
    /// The kernels for `arch` are compiled (`bytes` of CUBIN in `seconds`).
    Compiled {
        /// The arch.
        arch: String,
        /// CUBIN size.
        bytes: usize,
        /// Compile time (0 when NVRTC's disk cache had it).
        seconds: f64,
    },
}

impl std::fmt::Display for BuildEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildEvent::Verifying => f.write_str("verifying the package's weights (SHA-256)…"),
            BuildEvent::Measuring(d) => write!(
                f,
                "loading the model on {} ({}, {:.1} GiB) to size the KV pool from its free memory…",
                d.name,
                d.arch,
                d.total_mem as f64 / (1u64 << 30) as f64
            ),
            BuildEvent::CrossBuilding => f.write_str("cross-building: no device is measured"),
            BuildEvent::Compiling(arch) => write!(f, "compiling the kernels for {arch} with NVRTC…"),
            BuildEvent::Compiled { arch, bytes, seconds } => {
                write!(f, "compiled {arch}: {:.2} MB of CUBIN in {seconds:.1} s", *bytes as f64 / 1e6)
            }
        }
    }
}

/// Builds the package in `dir` for CUDA: fixes the limits (measured on the device when its arch
/// is built for), compiles the kernels for every arch and writes `plan.json` and
/// `kernels/<arch>.cubin`. An existing plan is replaced only with `force`.
pub fn build(dir: &Path, opts: &BuildOptions, progress: &mut dyn FnMut(BuildEvent)) -> Result<Plan> {
    let plan_path = dir.join(PLAN_FILE);
    if plan_path.exists() && !opts.force {
        return Err(Error::Invalid {
            what: "build",
            why: format!("{} already exists; pass --force to replace it", plan_path.display()),
        });
    }
    progress(BuildEvent::Verifying);
    let package = Package::open(dir)?;
    let manifest = package.manifest();
    let model = &manifest.config;
    if manifest.weights.layers == "f32" {
        return Err(Error::Invalid {
            what: "build",
            why: "the package stores f32 weights, which run on the CPU only; export it with --weights \
                  bf16, fp16, int8, int4 or fp8 for CUDA"
                .into(),
        });
    }
    let kv_dtype = match opts.kv_dtype {
        KvDtype::Auto => manifest.kv_dtype.clone(),
        KvDtype::F16 => "fp16".into(),
        KvDtype::Fp8 => "fp8".into(),
        other => {
            return Err(Error::Invalid {
                what: "kv dtype",
                why: format!("the CUDA backend keeps the KV cache in fp16 or fp8, not {other:?}"),
            })
        }
    };
    if !PLAN_KV_DTYPES.contains(&kv_dtype.as_str()) {
        return Err(Error::Invalid {
            what: "kv dtype",
            why: format!(
                "the package records a {kv_dtype} KV cache, which CUDA does not keep; pass --kv-dtype"
            ),
        });
    }
    let device = device_for(opts)?;
    let archs = match (&device, opts.archs.is_empty()) {
        (Some(d), true) => vec![d.arch.clone()],
        _ => opts.archs.clone(),
    };
    let mut cfg = EngineConfig {
        max_seqs: opts.max_seqs,
        max_batch_tokens: opts.max_batch_tokens,
        max_context: opts.max_context,
        kv_dtype: kv_dtype.parse().expect("fp16 or fp8"),
        device: Device::Cuda(opts.ordinal),
        cuda: CudaOptions { prebuilt: None, nvrtc: true, ..opts.cuda.clone() },
        ignore_plan: true,
        ..EngineConfig::default()
    }
    .resolve(model)?;
    let per_position = kv_position_bytes(model, &kv_dtype);
    let built_on = match device {
        Some(info) => {
            progress(BuildEvent::Measuring(info.clone()));
            let (fit, free) = measure(dir, &cfg, &info, per_position)?;
            cfg.kv_tokens =
                size_pool(opts.kv_tokens, cfg.max_seqs * cfg.max_context, fit, cfg.max_context).map_err(
                    |why| Error::Invalid { what: "KV pool", why: format!("{why} on {}", info.name) },
                )?;
            Some(BuiltOn {
                name: info.name,
                arch: info.arch,
                memory_bytes: info.total_mem as u64,
                free_bytes: free as u64,
            })
        }
        None if opts.kv_tokens == 0 => {
            let want = cfg.max_seqs * cfg.max_context;
            return Err(Error::Invalid {
                what: "build",
                why: format!(
                    "without a device to size the KV pool from, pass --kv-pool-tokens N (max_seqs × \
                     max_context = {want} positions take {:.0} MB of {kv_dtype} KV for this model)",
                    (want * per_position) as f64 / 1e6
                ),
            });
        }
        None => {
            progress(BuildEvent::CrossBuilding);
            cfg.kv_tokens = opts.kv_tokens;
            None
        }
    };
    let limits = PlanLimits {
        max_seqs: cfg.max_seqs,
        max_batch_tokens: cfg.max_batch_tokens,
        max_context: cfg.max_context,
        kv_tokens: cfg.kv_tokens,
        kv_block_size: cfg.kv_block_size,
        kv_dtype,
    };
    limits.check(model).map_err(|why| Error::Invalid { what: "build", why })?;
    let (images, cubins) = compile_all(&archs, &opts.cuda, progress)?;
    let plan = Plan {
        format: PLAN_FORMAT.into(),
        format_version: PLAN_FORMAT_VERSION,
        edgellm_version: env!("CARGO_PKG_VERSION").into(),
        weights_sha256: manifest.weights_file.sha256.clone(),
        kv_bytes: limits.kv_bytes(model),
        limits,
        device: built_on,
        kernels: images,
    };
    plan.check(manifest).map_err(|why| Error::Invalid { what: "build", why })?;
    plan.write(dir, &cubins)?;
    Ok(plan)
}

/// The device to measure: `opts.ordinal`'s when no arch is asked for (then it must exist) or
/// when its arch is among those asked for; `None` for a cross-build.
fn device_for(opts: &BuildOptions) -> Result<Option<DeviceInfo>> {
    if let Some(bad) = opts.archs.iter().find(|a| !compile::is_arch(a)) {
        return Err(Error::Invalid {
            what: "CUDA arch",
            why: format!("`{bad}` is not like sm_87 or sm_90a"),
        });
    }
    if opts.archs.is_empty() {
        return cuda::device_info(opts.ordinal).map(Some).map_err(|e| match e {
            Error::NoCuda { why } => Error::NoCuda {
                why: format!(
                    "{why}; to build without a device, name the target: --arch sm_87 (Jetson Orin), \
                     sm_90a (H100), … with --kv-pool-tokens N"
                ),
            },
            e => e,
        });
    }
    match cuda::device_info(opts.ordinal) {
        Ok(d) if opts.archs.contains(&d.arch) => Ok(Some(d)),
        _ => Ok(None),
    }
}

/// Loads the package on the device with a pool of one sequence and returns how many KV
/// positions the memory left free would hold (keeping a headroom) and that free memory.
fn measure(dir: &Path, cfg: &EngineConfig, info: &DeviceInfo, per_position: usize) -> Result<(usize, usize)> {
    let probe = cfg.max_context.min(cfg.max_batch_tokens).div_ceil(cfg.kv_block_size) * cfg.kv_block_size;
    let engine = Engine::load(dir, EngineConfig { kv_tokens: probe, ..cfg.clone() })?;
    let in_use = engine.device_memory_in_use().expect("the engine runs on CUDA")?;
    let free = info.total_mem.saturating_sub(in_use);
    let usable = free.saturating_sub((free / 10).max(MIN_HEADROOM)) + probe * per_position;
    let fit = usable / per_position / cfg.kv_block_size * cfg.kv_block_size;
    Ok((fit, free))
}

/// The pool's positions: `asked` (0: `want`, or `fit` where fewer fit), refused when it does not
/// fit or cannot hold one sequence of `max_context`.
fn size_pool(
    asked: usize,
    want: usize,
    fit: usize,
    max_context: usize,
) -> std::result::Result<usize, String> {
    let tokens = match asked {
        0 => want.min(fit),
        n if n > fit => return Err(format!("--kv-pool-tokens {n} does not fit: {fit} positions do")),
        n => n,
    };
    if tokens < max_context {
        return Err(format!(
            "a pool of {tokens} KV positions ({fit} fit) cannot hold one sequence of max context \
             {max_context}; lower --max-context"
        ));
    }
    Ok(tokens)
}

/// Compiles (or takes from NVRTC's cache) the kernels for each arch.
fn compile_all(
    archs: &[String],
    cuda: &CudaOptions,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<(Vec<KernelImage>, Vec<Vec<u8>>)> {
    let version = compile::nvrtc_version().map_err(|e| Error::NoCuda {
        why: format!("{e}: `edgellm build` compiles the kernels with NVRTC (set LD_LIBRARY_PATH to it)"),
    })?;
    let include = cuda.headers();
    let mut out = (Vec::new(), Vec::new());
    for arch in archs {
        progress(BuildEvent::Compiling(arch.clone()));
        let start = std::time::Instant::now();
        let cubin = compile::load_or_compile(cuda.kernel_cache.as_deref(), arch, Some(&include))?;
        let seconds = start.elapsed().as_secs_f64();
        progress(BuildEvent::Compiled { arch: arch.clone(), bytes: cubin.len(), seconds });
        out.0.push(KernelImage::new(arch, &cubin, version));
        out.1.push(cubin);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_pool_takes_the_smaller_of_want_and_fit_and_refuses_what_does_not_fit() {
        assert_eq!(size_pool(0, 32768, 100_000, 4096), Ok(32768));
        assert_eq!(size_pool(0, 32768, 8192, 4096), Ok(8192));
        assert_eq!(size_pool(5000, 32768, 8192, 4096), Ok(5000));
        assert!(size_pool(9000, 32768, 8192, 4096).unwrap_err().contains("does not fit"));
        assert!(size_pool(0, 32768, 2048, 4096).unwrap_err().contains("lower --max-context"));
        assert!(size_pool(1024, 32768, 8192, 4096).unwrap_err().contains("cannot hold one sequence"));
    }
}
