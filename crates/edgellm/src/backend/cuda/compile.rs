//! Compilation of the kernels: the `.cu` files under `kernels/` are embedded in the binary and
//! compiled by NVRTC into one CUBIN for the device's exact architecture at first use, then cached
//! on disk as `<cache>/<arch>-<source hash>-nvrtc<version>.cubin`, so a second start loads in
//! milliseconds and a changed kernel or NVRTC never reuses a stale binary.
//!
//! Ahead of time, `edgellm build` compiles the same CUBIN (for the device's arch or any other, no
//! GPU needed) into an engine package, recorded as a [`KernelImage`]: at load, [`kernels`] takes
//! the package's image for the device's arch when it was built from these very sources and is
//! intact, so a deployment (a Jetson) needs no NVRTC at all. An image that does not fit is never
//! used silently: NVRTC compiles instead with a one-line warning, or, without NVRTC, loading
//! fails saying why.

use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};
use std::time::Instant;

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::CudaOptions;
use crate::{Error, Result};

/// The kernel sources in compile order (`common.cuh` and `fp8.cuh` first: the others use their helpers).
pub const SOURCES: [(&str, &str); 9] = [
    ("common.cuh", include_str!("kernels/common.cuh")),
    ("fp8.cuh", include_str!("kernels/fp8.cuh")),
    ("norm.cu", include_str!("kernels/norm.cu")),
    ("gemv.cu", include_str!("kernels/gemv.cu")),
    ("gemv_rows.cu", include_str!("kernels/gemv_rows.cu")),
    ("quant.cu", include_str!("kernels/quant.cu")),
    ("rope_kv.cu", include_str!("kernels/rope_kv.cu")),
    ("attention.cu", include_str!("kernels/attention.cu")),
    ("sample.cu", include_str!("kernels/sample.cu")),
];

/// Everything NVRTC compiles, as one translation unit.
pub fn program_source() -> String {
    let mut src = String::new();
    for (name, text) in SOURCES {
        src.push_str(&format!("// ---- {name} ----\n{text}\n"));
    }
    src
}

/// The NVRTC options every CUBIN is compiled with, besides its `--gpu-architecture`.
const OPTIONS: [&str; 2] = ["-std=c++17", "-lineinfo"];

/// SHA-256 (hex) of everything that decides a CUBIN's code for a given arch and NVRTC: the
/// sources and the compile options. A package's kernels are used only under the same hash.
pub fn source_hash() -> String {
    let mut h = Sha256::new();
    h.update(program_source().as_bytes());
    for opt in OPTIONS {
        h.update(b"\0");
        h.update(opt.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `arch` names a CUDA target the way NVRTC spells it: `sm_` then digits, optionally
/// followed by one letter (`sm_87`, `sm_90a`, `sm_100f`).
pub fn is_arch(arch: &str) -> bool {
    let Some(rest) = arch.strip_prefix("sm_") else { return false };
    let digits = rest.trim_end_matches(|c: char| c.is_ascii_lowercase());
    (2..=3).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && rest.len() - digits.len() <= 1
}

/// Whether the NVRTC library can be loaded.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the library; nothing is called through it.
    unsafe { nvrtc_sys::is_culib_present() }
}

/// NVRTC's `(major, minor)` version.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_available() {
        return Err(Error::NoCuda { why: "the NVRTC library (libnvrtc.so) was not found".into() });
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; both pointers are valid for writes.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Cuda { op: "nvrtcVersion", detail: format!("{e:?}") })?;
    Ok((major, minor))
}

/// Compiles [`program_source`] into a CUBIN for `arch` (e.g. `sm_90a`, `sm_87`). `include` is
/// the CUDA headers' directory, passed to NVRTC when it exists (the kernels need no header
/// today, but a kernel that includes one then still compiles).
pub fn compile_cubin(arch: &str, include: Option<&Path>) -> Result<Vec<u8>> {
    nvrtc_version()?;
    let err = |op, e: nvrtc::NvrtcError| Error::Cuda { op, detail: format!("{e:?}") };
    let src = CString::new(program_source()).expect("kernel sources hold no NUL");
    let name = CString::new("edgellm_kernels.cu").expect("no NUL");
    let prog = nvrtc::create_program(&src, Some(&name)).map_err(|e| err("nvrtcCreateProgram", e))?;
    if !is_arch(arch) {
        return Err(Error::Invalid {
            what: "CUDA arch",
            why: format!("`{arch}` is not like sm_87 or sm_90a"),
        });
    }
    let mut opts = vec![format!("--gpu-architecture={arch}")];
    opts.extend(OPTIONS.map(String::from));
    if let Some(dir) = include.filter(|d| d.is_dir()) {
        opts.push(format!("-I{}", dir.display()));
    }
    // SAFETY: `prog` is a live program; options are valid strings.
    let compiled = unsafe { nvrtc::compile_program(prog, &opts) };
    let result = match compiled {
        Err(e) => {
            // SAFETY: `prog` is live; the log is read before the program is destroyed.
            let log = unsafe { nvrtc::get_program_log(prog) }.unwrap_or_default();
            let log: Vec<u8> = log.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
            Err(Error::Cuda {
                op: "nvrtcCompileProgram",
                detail: format!("{e:?} for {arch}:\n{}", String::from_utf8_lossy(&log)),
            })
        }
        Ok(()) => cubin(prog),
    };
    // SAFETY: `prog` is live and not used after this.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    result
}

fn cubin(prog: nvrtc_sys::nvrtcProgram) -> Result<Vec<u8>> {
    let err = |op, e: nvrtc_sys::nvrtcResult| Error::Cuda { op, detail: format!("{e:?}") };
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully; `size` is valid for writes.
    let r = unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) };
    if r != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(err("nvrtcGetCUBINSize", r));
    }
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` holds the `size` bytes NVRTC reported.
    let r = unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char) };
    if r != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(err("nvrtcGetCUBIN", r));
    }
    Ok(buf)
}

/// The cache file of the current sources compiled for `arch` by NVRTC `version`.
pub fn cache_path(dir: &Path, arch: &str, version: (i32, i32)) -> PathBuf {
    let hex = &source_hash()[..16];
    dir.join(format!("{arch}-{hex}-nvrtc{}.{}.cubin", version.0, version.1))
}

/// The CUBIN for `arch`: read from `cache_dir` when present there, otherwise compiled and
/// written there (a cache that cannot be written only costs the next start a compile).
pub fn load_or_compile(cache_dir: Option<&Path>, arch: &str, include: Option<&Path>) -> Result<Vec<u8>> {
    let version = nvrtc_version()?;
    let path = cache_dir.map(|d| cache_path(d, arch, version));
    if let Some(bytes) = path.as_ref().and_then(|p| std::fs::read(p).ok()) {
        return Ok(bytes);
    }
    let cubin = compile_cubin(arch, include)?;
    if let Some(p) = &path {
        // a name of its own: two processes (or test threads) compiling at once must not write
        // into one temporary file, or one could rename the other's half-written file into place
        static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = p.with_extension(format!("{}-{n}.tmp", std::process::id()));
        let written =
            p.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&tmp, &cubin));
        if written.and_then(|()| std::fs::rename(&tmp, p)).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(cubin)
}

/// A CUBIN compiled ahead of time into a package (`edgellm build`), as `plan.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelImage {
    /// The target, e.g. `sm_87`; the file is `kernels/<arch>.cubin`.
    pub arch: String,
    /// The file, relative to the package: always `kernels/<arch>.cubin`.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// [`source_hash`] of the binary that compiled it.
    pub source_sha256: String,
    /// The NVRTC that compiled it, `major.minor`.
    pub nvrtc: String,
}

impl KernelImage {
    /// The file of `arch`'s image, relative to the package: the one layout every image has.
    pub fn file_for(arch: &str) -> String {
        format!("kernels/{arch}.cubin")
    }

    /// Records `cubin`, compiled for `arch` by NVRTC `nvrtc` from this binary's sources.
    pub fn new(arch: &str, cubin: &[u8], nvrtc: (i32, i32)) -> KernelImage {
        KernelImage {
            arch: arch.to_string(),
            file: Self::file_for(arch),
            bytes: cubin.len() as u64,
            sha256: Sha256::digest(cubin).iter().map(|b| format!("{b:02x}")).collect(),
            source_sha256: source_hash(),
            nvrtc: format!("{}.{}", nvrtc.0, nvrtc.1),
        }
    }

    /// The image read from package `dir` when it is usable for `arch` by this binary; otherwise
    /// why not, in words.
    fn read_for(&self, dir: &Path, arch: &str) -> std::result::Result<Vec<u8>, String> {
        if self.source_sha256 != source_hash() {
            return Err(format!(
                "the package's {} kernels were built from other kernel sources (hash {}, this \
                 edgellm's {})",
                self.arch,
                &self.source_sha256[..self.source_sha256.len().min(12)],
                &source_hash()[..12]
            ));
        }
        let path = dir.join(&self.file);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let sha: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        if bytes.len() as u64 != self.bytes || sha != self.sha256 {
            return Err(format!("{} does not match plan.json (damaged or replaced)", path.display()));
        }
        debug_assert_eq!(self.arch, arch);
        Ok(bytes)
    }
}

/// Kernels prepared ahead of time: a package directory and the images its plan records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prebuilt {
    /// The package directory the images' files are relative to.
    pub dir: PathBuf,
    /// One image per arch.
    pub images: Vec<KernelImage>,
}

impl Prebuilt {
    /// The CUBIN for `arch`, or why the package has none usable.
    pub fn cubin(&self, arch: &str) -> std::result::Result<(Vec<u8>, PathBuf), String> {
        let Some(image) = self.images.iter().find(|i| i.arch == arch) else {
            let have: Vec<&str> = self.images.iter().map(|i| i.arch.as_str()).collect();
            return Err(format!(
                "the package's kernels are for {}, not this device's {arch}",
                if have.is_empty() { "no arch".to_string() } else { have.join(", ") }
            ));
        };
        image.read_for(&self.dir, arch).map(|bytes| (bytes, self.dir.join(&image.file)))
    }
}

/// Where a loaded CUBIN came from (said on the engine's load line).
#[derive(Debug, Clone, PartialEq)]
pub enum KernelOrigin {
    /// A package's `kernels/<arch>.cubin` (`edgellm build`); NVRTC was not used.
    Package(PathBuf),
    /// The on-disk cache of an earlier NVRTC compile.
    Cache(PathBuf),
    /// Compiled by NVRTC now, taking `seconds`.
    Compiled {
        /// NVRTC's `major.minor`.
        nvrtc: String,
        /// Compile time.
        seconds: f64,
    },
}

impl std::fmt::Display for KernelOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelOrigin::Package(p) => write!(f, "from the package: {}", p.display()),
            KernelOrigin::Cache(p) => write!(f, "NVRTC-compiled, cached: {}", p.display()),
            KernelOrigin::Compiled { nvrtc, seconds } => {
                write!(f, "compiled by NVRTC {nvrtc} in {seconds:.1} s")
            }
        }
    }
}

/// The CUBIN for `arch` and where it came from: the package's image when `opts.prebuilt` has a
/// usable one, else NVRTC (its disk cache first) unless `opts.nvrtc` is off or NVRTC is absent.
/// `fallback_from` is why an earlier candidate was refused (a package image the driver would not
/// load), so that the warning or error says it.
pub fn kernels(
    opts: &CudaOptions,
    arch: &str,
    fallback_from: Option<String>,
) -> Result<(Vec<u8>, KernelOrigin)> {
    let mut refused = fallback_from;
    if let (Some(pre), None) = (&opts.prebuilt, &refused) {
        match pre.cubin(arch) {
            Ok((bytes, path)) => return Ok((bytes, KernelOrigin::Package(path))),
            Err(why) => refused = Some(why),
        }
    }
    let nvrtc_ok = opts.nvrtc && nvrtc_available();
    if !nvrtc_ok {
        let missing = if opts.nvrtc { "NVRTC (libnvrtc.so) is not available" } else { "NVRTC is turned off" };
        let why = match refused {
            Some(why) => format!("{why}, and {missing} to compile them"),
            None => format!("{missing} and no package kernels were given"),
        };
        return Err(Error::NoCuda {
            why: format!("{why}; build the package for this device: edgellm build PKG --arch {arch} --force"),
        });
    }
    if let Some(why) = refused {
        eprintln!("warning: {why}; compiling the kernels with NVRTC instead");
    }
    let include = opts.headers();
    let version = nvrtc_version()?;
    if let Some(path) = opts.kernel_cache.as_deref().map(|d| cache_path(d, arch, version)) {
        if let Ok(bytes) = std::fs::read(&path) {
            return Ok((bytes, KernelOrigin::Cache(path)));
        }
    }
    let start = Instant::now();
    let cubin = load_or_compile(opts.kernel_cache.as_deref(), arch, Some(&include))?;
    let origin = KernelOrigin::Compiled {
        nvrtc: format!("{}.{}", version.0, version.1),
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((cubin, origin))
}
