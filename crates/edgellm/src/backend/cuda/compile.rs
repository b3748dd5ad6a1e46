//! Run-time compilation of the kernels: the `.cu` files under `kernels/` are embedded in the
//! binary and compiled by NVRTC into one CUBIN for the device's exact architecture at first use,
//! then cached on disk as `<cache>/<arch>-<source hash>-nvrtc<version>.cubin`, so a second start
//! loads in milliseconds and a changed kernel or NVRTC never reuses a stale binary.

use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use sha2::{Digest, Sha256};

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
    let mut opts = vec![format!("--gpu-architecture={arch}"), "-std=c++17".into(), "-lineinfo".into()];
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
    let hash = Sha256::digest(program_source().as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
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
        let tmp = p.with_extension("tmp");
        let written =
            p.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&tmp, &cubin));
        if written.and_then(|()| std::fs::rename(&tmp, p)).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(cubin)
}
