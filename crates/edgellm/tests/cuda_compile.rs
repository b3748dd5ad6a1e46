//! Every CUDA kernel compiles with NVRTC for Hopper (sm_90a) and Jetson Orin (sm_87), on a
//! machine without a GPU: only the NVRTC library is needed (CI installs it from the
//! `nvidia-cuda-nvrtc` wheel and points `LD_LIBRARY_PATH` and `CUDA_HOME` at it). Without NVRTC
//! the test is skipped with a message, except under CI, where that is a failure. The CUBINs go
//! into the tests' shared kernel cache (keyed by source hash, arch and NVRTC version), where the
//! cross-build tests (`tests/plan.rs`, the CLI's `tests/build.rs`) find them instead of compiling
//! again; a changed kernel has a new key and is compiled here first.

mod common;

use edgellm::backend::cuda::compile;

#[test]
fn every_kernel_compiles_for_sm90a_and_sm87() {
    if !compile::nvrtc_available() {
        assert!(std::env::var_os("CI").is_none(), "NVRTC missing under CI: .ci/run must install it");
        eprintln!("skipping: NVRTC (libnvrtc.so) not found; set LD_LIBRARY_PATH to a CUDA 13 NVRTC");
        return;
    }
    let include = std::env::var_os("CUDA_HOME").map(|h| std::path::PathBuf::from(h).join("include"));
    let version = compile::nvrtc_version().unwrap();
    for arch in ["sm_90a", "sm_87"] {
        let cache = Some(common::kernel_cache());
        let cubin = compile::load_or_compile(cache.as_deref(), arch, include.as_deref())
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        // an ELF image, not an empty or PTX result
        assert!(cubin.len() > 10_000 && cubin.starts_with(b"\x7fELF"), "{arch}: {} bytes", cubin.len());
        eprintln!("{arch}: {} bytes of CUBIN (NVRTC {}.{})", cubin.len(), version.0, version.1);
    }
}

#[test]
fn kernel_cache_key_changes_with_arch_and_version() {
    let dir = std::path::Path::new("/cache");
    let a = compile::cache_path(dir, "sm_90a", (13, 0));
    assert_ne!(a, compile::cache_path(dir, "sm_87", (13, 0)));
    assert_ne!(a, compile::cache_path(dir, "sm_90a", (13, 1)));
    assert_eq!(a, compile::cache_path(dir, "sm_90a", (13, 0)));
}
