//! `edgellm build` as a user runs it on a machine without a GPU: export a tiny fixture, cross-build
//! it for Jetson Orin (sm_87), inspect it, and run it on the CPU, where the plan changes nothing.
//! The cross-build needs NVRTC (CI installs it from the `nvidia-cuda-nvrtc` wheel); without it the
//! test stops after the checks that need none, with a message, except under CI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures").join(name)
}

fn edgellm(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgellm"))
        .args(args)
        .env("EDGELLM_HOME", home)
        .output()
        .expect("runs the edgellm binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn greedy_ids(home: &Path, pkg: &str) -> serde_json::Value {
    let out =
        edgellm(home, &["run", pkg, "--device", "cpu", "--raw", "-p", "Hello there", "-n", "12", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["generated_ids"].clone()
}

#[test]
fn export_then_cross_build_for_jetson_then_inspect_and_run() {
    let home = tempfile::tempdir().unwrap();
    // NVRTC's compiles are shared with the library's tests (keyed by source hash, arch, version)
    let cache = std::env::temp_dir().join("edgellm-test-kernels");
    std::fs::create_dir_all(&cache).unwrap();
    std::os::unix::fs::symlink(&cache, home.path().join("kernels")).unwrap();
    let pkg = home.path().join("pkg");
    let pkg_s = pkg.to_str().unwrap();
    let src = fixture("tiny-qwen2");
    let out = edgellm(home.path(), &["export", src.to_str().unwrap(), "-o", pkg_s, "--weights", "fp16"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = greedy_ids(home.path(), pkg_s);

    let help = text(&edgellm(home.path(), &["build", "--help"]).stdout);
    for needle in
        ["--arch", "--kv-pool-tokens", "--max-context", "--force", "plan.json", "EDGELLM_CUDA_NVRTC=0"]
    {
        assert!(help.contains(needle), "`{needle}` missing from build --help:\n{help}");
    }
    let out = edgellm(home.path(), &["build", pkg_s, "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("prepares a package for CUDA"), "{}", text(&out.stderr));
    let out = edgellm(home.path(), &["build", src.to_str().unwrap(), "--arch", "sm_87"]);
    assert!(text(&out.stderr).contains("is not an engine package"), "{}", text(&out.stderr));
    if edgellm::backend::cuda::device_count() == 0 {
        let out = edgellm(home.path(), &["build", pkg_s]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains("--arch sm_87"), "{}", text(&out.stderr));
    }

    if !edgellm::backend::cuda::compile::nvrtc_available() {
        assert!(std::env::var_os("CI").is_none(), "NVRTC missing under CI: .ci/run must install it");
        eprintln!("skipping the cross-build: NVRTC (libnvrtc.so) not found");
        return;
    }
    let build = ["build", pkg_s, "--arch", "sm_87", "--max-context", "256", "--kv-pool-tokens", "2048"];
    let out = edgellm(home.path(), &build);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("compiling the kernels for sm_87 with NVRTC"), "{stderr}");
    assert!(
        stdout.contains("plan: 8 seqs, 512 batch tokens, context 256, KV pool 2048 positions of fp16"),
        "{stdout}"
    );
    assert!(stdout.contains("kernels/sm_87.cubin"), "{stdout}");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pkg.join("plan.json")).unwrap()).unwrap();
    assert_eq!(plan["limits"]["kv_tokens"], 2048);
    assert_eq!(plan["kernels"][0]["arch"], "sm_87");
    assert!(std::fs::read(pkg.join("kernels/sm_87.cubin")).unwrap().starts_with(b"\x7fELF"));

    let again = edgellm(home.path(), &build);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("plan.json already exists; pass --force"),
        "{}",
        text(&again.stderr)
    );

    let out = edgellm(home.path(), &["inspect", pkg_s, "--no-tensors"]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        shown.contains("engine package v1") && shown.contains("cross-built (no device measured)"),
        "{shown}"
    );

    // on the CPU the plan (made for CUDA) changes nothing
    assert_eq!(greedy_ids(home.path(), pkg_s), before);
}
