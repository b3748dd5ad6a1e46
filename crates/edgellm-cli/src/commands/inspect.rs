//! `edgellm inspect FILE`: a GGUF or safetensors file's metadata and tensor table; for an
//! engine package, its manifest and build plan first.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use edgellm::package;
use edgellm::source::gguf::{GgufFile, GgufValue};
use edgellm::source::safetensors::SafetensorsSource;
use edgellm::source::{TensorInfo, WeightSource};

/// Arguments of `edgellm inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A .gguf file, a .safetensors file, an HF checkpoint directory or an engine package
    pub file: PathBuf,
    /// Show every element of long metadata arrays (default: the first 8)
    #[arg(long)]
    pub full: bool,
    /// Leave out the tensor table
    #[arg(long)]
    pub no_tensors: bool,
}

/// Prints the file's description.
pub fn run(args: &InspectArgs) -> Result<()> {
    let path = &args.file;
    let is_gguf = std::fs::File::open(path)
        .and_then(|mut f| {
            let mut magic = [0u8; 4];
            std::io::Read::read_exact(&mut f, &mut magic).map(|()| &magic == b"GGUF")
        })
        .unwrap_or(false);
    let tensors = if package::is_package(path) {
        print_package(path)?;
        SafetensorsSource::open(&path.join(package::WEIGHTS_FILE))?.tensor_infos()
    } else if is_gguf {
        let g = GgufFile::open(path)?;
        println!(
            "{}: GGUF v{}, alignment {}, {} metadata keys",
            path.display(),
            g.version(),
            g.alignment(),
            g.metadata().len()
        );
        for (key, value) in g.metadata() {
            println!("  {key:<44} {}", show(value, if args.full { usize::MAX } else { 8 }));
        }
        g.tensor_infos()
    } else {
        let src = SafetensorsSource::open(path)
            .with_context(|| format!("{} is neither GGUF nor safetensors", path.display()))?;
        println!("{}: safetensors, {} shard(s)", path.display(), src.shard_paths().len());
        src.tensor_infos()
    };
    if !args.no_tensors {
        print_tensors(&tensors);
    }
    Ok(())
}

/// An engine package's manifest and, when built, its plan.
fn print_package(path: &std::path::Path) -> Result<()> {
    let pkg = package::Package::open(path)?;
    let m = pkg.manifest();
    println!(
        "{}: engine package v{} ({:?}, edgellm {}), layers {}, embedding {}, LM head {}, KV {}",
        path.display(),
        m.format_version,
        m.config.architecture,
        m.edgellm_version,
        m.weights.layers,
        m.weights.embed,
        m.weights.lm_head.as_deref().unwrap_or("tied"),
        m.kv_dtype
    );
    // a plan that would be refused at load is shown as such, with the package still described
    match package::Plan::read(path, m) {
        Ok(Some(plan)) => print!("{}", super::build::describe(&plan)),
        Ok(None) => println!("no {} (not built for CUDA; see `edgellm build`)", package::PLAN_FILE),
        Err(e) => println!("{} refused: {e}", package::PLAN_FILE),
    }
    Ok(())
}

fn show(value: &GgufValue, max_items: usize) -> String {
    match value {
        GgufValue::String(s) if s.len() > 120 && max_items != usize::MAX => {
            format!("{:?}… ({} bytes)", s.chars().take(100).collect::<String>(), s.len())
        }
        GgufValue::String(s) => format!("{s:?}"),
        GgufValue::Array(a) => {
            let shown: Vec<String> =
                (0..a.len().min(max_items)).filter_map(|i| a.get(i)).map(|v| show(&v, max_items)).collect();
            let more = if a.len() > max_items {
                format!(", … ({} {})", a.len(), a.elem_type_name())
            } else {
                String::new()
            };
            format!("[{}{more}]", shown.join(", "))
        }
        other => format!("{other:?}"),
    }
}

fn print_tensors(tensors: &[TensorInfo]) {
    let total: usize = tensors.iter().map(TensorInfo::numel).sum();
    println!("{} tensors, {:.1} M parameters", tensors.len(), total as f64 / 1e6);
    for t in tensors {
        println!(
            "  {:<48} {:<10} {:?}",
            t.name,
            format!("{:?}", t.dtype).replace("Ggml(", "").replace(')', ""),
            t.shape
        );
    }
}
