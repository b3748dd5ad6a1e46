//! `edgellm build`'s layer of a package (`plan.json`, `kernels/<arch>.cubin`), without a GPU:
//! cross-building CUBINs for sm_87 and sm_90a with NVRTC writes a plan that reads back and
//! leaves the package's manifest and checksum untouched; malformed or foreign plans are refused
//! with a clear error; the kernel loader takes a package CUBIN only when it is the device's arch,
//! from these kernel sources and intact, and otherwise falls back to NVRTC or says why it cannot.
//!
//! Cross-building needs NVRTC (CI installs it from the `nvidia-cuda-nvrtc` wheel): without it,
//! those tests skip with a message, except under CI, where that is a failure.

mod common;

use std::path::Path;

use edgellm::backend::cuda::{compile, CudaOptions, KernelImage, KernelOrigin, Prebuilt};
use edgellm::engine::KvDtype;
use edgellm::package::{self, BuildOptions, Package, Plan, PLAN_FILE};
use edgellm::quant::WeightFormat;
use edgellm::Error;

fn export_fixture(out: &Path) {
    let opts = package::ExportOptions {
        weights: WeightFormat::F16,
        lm_head: None,
        kv_dtype: "fp16".into(),
        awq: None,
    };
    package::export(&common::fixture("tiny-qwen2"), out, &opts, None, false, &mut |_| {}).unwrap();
}

fn have_nvrtc() -> bool {
    if compile::nvrtc_available() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "NVRTC missing under CI: .ci/run must install it");
    eprintln!("skipping: NVRTC (libnvrtc.so) not found; set LD_LIBRARY_PATH to a CUDA 13 NVRTC");
    false
}

fn cross_build(archs: &[&str], force: bool) -> BuildOptions {
    BuildOptions {
        // without a GPU nothing is measured (on a GPU machine, its device is, when its arch is
        // among those asked for)
        ordinal: 0,
        archs: archs.iter().map(|a| a.to_string()).collect(),
        max_seqs: 4,
        max_batch_tokens: 128,
        max_context: 256,
        kv_tokens: 2048,
        kv_dtype: KvDtype::Auto,
        cuda: CudaOptions {
            include_dir: std::env::var_os("CUDA_HOME").map(|h| Path::new(&h).join("include")),
            kernel_cache: Some(common::kernel_cache()),
            ..CudaOptions::new()
        },
        force,
    }
}

#[test]
fn cross_build_for_sm87_and_sm90a_writes_a_plan_that_reads_back() {
    if !have_nvrtc() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("pkg");
    export_fixture(&pkg);
    let manifest_before = std::fs::read(pkg.join(package::MANIFEST_FILE)).unwrap();
    let mut events = Vec::new();
    let plan =
        package::build(&pkg, &cross_build(&["sm_87", "sm_90a"], false), &mut |e| events.push(e.to_string()))
            .unwrap();
    if edgellm::backend::cuda::device_count() == 0 {
        assert!(events.iter().any(|e| e.contains("cross-building")), "{events:?}");
        assert_eq!(plan.device, None);
    }
    assert_eq!(
        (plan.limits.max_seqs, plan.limits.max_batch_tokens, plan.limits.max_context, plan.limits.kv_tokens),
        (4, 128, 256, 2048)
    );
    assert_eq!(plan.limits.kv_dtype, "fp16");
    // K and V, every layer, fp16
    let c = Package::open(&pkg).unwrap().manifest().config.clone();
    assert_eq!(
        plan.kv_bytes,
        (2048 * c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * 2) as u64
    );

    // the plan reads back as written, and the package is untouched and still verifies
    let reread = Plan::read(&pkg, Package::open(&pkg).unwrap().manifest()).unwrap().unwrap();
    assert_eq!(reread, plan);
    assert_eq!(std::fs::read(pkg.join(package::MANIFEST_FILE)).unwrap(), manifest_before);
    let version = compile::nvrtc_version().unwrap();
    for (image, arch) in plan.kernels.iter().zip(["sm_87", "sm_90a"]) {
        let bytes = std::fs::read(pkg.join(format!("kernels/{arch}.cubin"))).unwrap();
        assert!(bytes.starts_with(b"\x7fELF") && bytes.len() > 10_000, "{arch}: {} bytes", bytes.len());
        assert_eq!(image, &KernelImage::new(arch, &bytes, version));
        assert_eq!(image.source_sha256, compile::source_hash());
    }

    // a second build needs --force; the forced one keeps only the archs it names
    let again = package::build(&pkg, &cross_build(&["sm_87"], false), &mut |_| {});
    assert!(again.unwrap_err().to_string().contains("pass --force"));
    let forced = package::build(&pkg, &cross_build(&["sm_87"], true), &mut |_| {}).unwrap();
    assert_eq!(forced.kernels.len(), 1);
    assert!(pkg.join("kernels/sm_87.cubin").is_file());
    assert!(!pkg.join("kernels/sm_90a.cubin").exists(), "a CUBIN the plan no longer lists stays");
}

#[test]
fn build_refuses_what_it_cannot_derive_or_keep() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("pkg");
    export_fixture(&pkg);
    let err = |opts: BuildOptions| package::build(&pkg, &opts, &mut |_| {}).unwrap_err().to_string();
    let no_pool = BuildOptions { kv_tokens: 0, ..cross_build(&["sm_87"], false) };
    assert!(err(no_pool).contains("pass --kv-pool-tokens N"));
    let bad_arch = cross_build(&["compute_87"], false);
    assert!(err(bad_arch).contains("`compute_87` is not like sm_87"));
    let bf16 = BuildOptions { kv_dtype: KvDtype::Bf16, ..cross_build(&["sm_87"], false) };
    assert!(err(bf16).contains("fp16 or fp8"));
    let long = BuildOptions { max_context: 100_000, ..cross_build(&["sm_87"], false) };
    assert!(err(long).contains("exceeds the model's"));
    let small_pool = BuildOptions { kv_tokens: 100, ..cross_build(&["sm_87"], false) };
    assert!(err(small_pool).contains("cannot hold one sequence"));
    if edgellm::backend::cuda::device_count() == 0 {
        let no_device = BuildOptions { archs: vec![], ..cross_build(&[], false) };
        assert!(err(no_device).contains("--arch sm_87"));
    }
    assert!(!pkg.join(PLAN_FILE).exists(), "a refused build wrote a plan");
}

/// A plan for the exported fixture, written by hand (its kernel image need not exist: reading a
/// plan checks its records; the image itself is checked when a device loads it).
fn plan_json(pkg: &Path) -> serde_json::Value {
    let sha = Package::open(pkg).unwrap().manifest().weights_file.sha256.clone();
    serde_json::json!({
        "format": "edgellm-plan",
        "format_version": 1,
        "edgellm_version": "0.1.0",
        "weights_sha256": sha,
        "limits": {
            "max_seqs": 2, "max_batch_tokens": 64, "max_context": 256,
            "kv_tokens": 512, "kv_block_size": 16, "kv_dtype": "fp16"
        },
        "kv_bytes": 0,
        "device": null,
        "kernels": [{
            "arch": "sm_87", "file": "kernels/sm_87.cubin", "bytes": 4,
            "sha256": "00", "source_sha256": "00", "nvrtc": "13.0"
        }]
    })
}

#[test]
fn malformed_or_foreign_plans_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("pkg");
    export_fixture(&pkg);
    let read = |plan: &serde_json::Value| {
        std::fs::write(pkg.join(PLAN_FILE), plan.to_string()).unwrap();
        Plan::read(&pkg, Package::open(&pkg).unwrap().manifest())
    };
    let good = plan_json(&pkg);
    assert_eq!(read(&good).unwrap().unwrap().limits.kv_tokens, 512);

    use serde_json::json;
    // (a path into the plan, the value put there, what the error must say)
    let cases: [(&[&str], serde_json::Value, &str); 10] = [
        (&["format"], json!("something-else"), "not \"edgellm-plan\""),
        (&["format_version"], json!(2), "plan format version 2"),
        (&["weights_sha256"], json!("ab".repeat(32)), "built for other weights"),
        (&["limits", "kv_tokens"], json!(100), "cannot hold one sequence"),
        (&["limits", "max_context"], json!(1_000_000), "exceeds the model's"),
        (&["limits", "max_seqs"], json!(0), "max_seqs is 0"),
        (&["limits", "kv_dtype"], json!("bf16"), "kv_dtype `bf16`"),
        (&["kernels", "0", "file"], json!("../sm_87.cubin"), "is not kernels/sm_87.cubin"),
        (&["kernels", "0", "arch"], json!("compute_87"), "`compute_87` is not like sm_87"),
        (&["extra"], json!(1), "unknown field `extra`"),
    ];
    for (path, value, needle) in cases {
        let mut plan = good.clone();
        let slot = path.iter().fold(&mut plan, |v, key| match key.parse::<usize>() {
            Ok(i) => &mut v[i],
            Err(_) => &mut v[*key],
        });
        *slot = value;
        let key = path.join(".");
        let e = read(&plan).unwrap_err();
        assert!(e.to_string().contains(needle), "{key}: `{e}` lacks `{needle}`");
    }
    let mut twice = good.clone();
    let image = twice["kernels"][0].clone();
    twice["kernels"].as_array_mut().unwrap().push(image);
    assert!(read(&twice).unwrap_err().to_string().contains("two kernel images for sm_87"));
    std::fs::write(pkg.join(PLAN_FILE), "{ not json").unwrap();
    assert!(matches!(
        Plan::read(&pkg, Package::open(&pkg).unwrap().manifest()),
        Err(Error::Malformed { .. })
    ));
    // the manifest's own checks are unchanged by a plan: the weights still verify
    Package::open(&pkg).unwrap();
}

/// Options that load `cubin` as the package's kernels for `arch`, NVRTC allowed or not.
fn prebuilt(dir: &Path, arch: &str, cubin: &[u8], nvrtc: bool) -> CudaOptions {
    std::fs::create_dir_all(dir.join("kernels")).unwrap();
    std::fs::write(dir.join(KernelImage::file_for(arch)), cubin).unwrap();
    let image = KernelImage::new(arch, cubin, (13, 0));
    CudaOptions {
        prebuilt: Some(Prebuilt { dir: dir.to_path_buf(), images: vec![image] }),
        nvrtc,
        kernel_cache: Some(common::kernel_cache()),
        include_dir: std::env::var_os("CUDA_HOME").map(|h| Path::new(&h).join("include")),
        ..CudaOptions::new()
    }
}

#[test]
fn package_kernels_load_only_for_their_arch_sources_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cubin = b"\x7fELF stand-in CUBIN bytes".to_vec();
    // the device's arch, these sources, intact: taken as is, NVRTC never asked
    let opts = prebuilt(dir.path(), "sm_87", &cubin, false);
    let (bytes, origin) = compile::kernels(&opts, "sm_87", None).unwrap();
    assert_eq!(bytes, cubin);
    assert_eq!(origin, KernelOrigin::Package(dir.path().join("kernels/sm_87.cubin")));
    assert!(origin.to_string().starts_with("from the package: "));

    // without NVRTC, each unusable image is an error that says why and how to fix it
    let no_nvrtc =
        |opts: &CudaOptions, arch: &str| compile::kernels(opts, arch, None).unwrap_err().to_string();
    let e = no_nvrtc(&opts, "sm_90a");
    assert!(e.contains("kernels are for sm_87, not this device's sm_90a"), "{e}");
    assert!(e.contains("NVRTC is turned off") && e.contains("edgellm build PKG --arch sm_90a"), "{e}");
    let mut other_sources = opts.clone();
    other_sources.prebuilt.as_mut().unwrap().images[0].source_sha256 = "ab".repeat(32);
    assert!(no_nvrtc(&other_sources, "sm_87").contains("built from other kernel sources"));
    std::fs::write(dir.path().join("kernels/sm_87.cubin"), b"\x7fELF stand-in CUBIN bytez").unwrap();
    assert!(no_nvrtc(&opts, "sm_87").contains("does not match plan.json"));
    let none = CudaOptions { nvrtc: false, ..CudaOptions::new() };
    assert!(no_nvrtc(&none, "sm_87").contains("no package kernels were given"));

    // with NVRTC, an unusable image falls back to a real compile (or NVRTC's cache of one)
    if !have_nvrtc() {
        return;
    }
    let with_nvrtc = CudaOptions { nvrtc: true, ..opts };
    let (bytes, origin) = compile::kernels(&with_nvrtc, "sm_87", None).unwrap();
    assert!(bytes.starts_with(b"\x7fELF") && bytes.len() > 10_000);
    assert!(matches!(origin, KernelOrigin::Cache(_) | KernelOrigin::Compiled { .. }), "{origin:?}");
}
