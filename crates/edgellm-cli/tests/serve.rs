//! `edgellm serve` on the real Qwen2.5-Coder-0.5B model, driven by the official `openai` Python
//! client (`tests/scripts/openai_client.py`), then stopped with SIGTERM, which must let it exit
//! cleanly. Skips, with a message, when the model or the `openai` package is missing, unless `CI`
//! is set.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "qwen2.5-coder-0.5b-instruct";

fn skip_or_panic(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{why} (required under CI)");
    }
    eprintln!("skipping: {why}");
}

fn model_path() -> Option<PathBuf> {
    let home = std::env::var_os("EDGELLM_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/edgellm"));
    let path = home.join("models").join(MODEL).join("model.gguf");
    if path.is_file() {
        return Some(path);
    }
    skip_or_panic(&format!("{} not present (run `edgellm pull {MODEL}`)", path.display()));
    None
}

fn has_openai() -> bool {
    let ok = Command::new("python3").args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    if !ok {
        skip_or_panic("the Python `openai` package is not installed (pip install openai)");
    }
    ok
}

/// Kills the server if the test fails before stopping it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn openai_client_against_serve() {
    let Some(model) = model_path() else { return };
    if !has_openai() {
        return;
    }
    let key = "test-key";
    let child = Command::new(env!("CARGO_BIN_EXE_edgellm"))
        .arg("serve")
        .arg(&model)
        .args(["--port", "0", "--api-key", key, "--max-seqs", "8", "--ctx", "1024", "--dtype", "bf16"])
        .args(["--served-model-name", MODEL])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts edgellm serve");
    let mut server = Server(child);

    // the first line on stdout is the address; /health answers once it is printed
    let mut stdout = BufReader::new(server.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr =
        line.trim().strip_prefix("listening on http://").unwrap_or_else(|| panic!("{line:?}")).to_string();
    let start = Instant::now();
    while !get(&addr, "/health").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(start.elapsed() < Duration::from_secs(60), "/health never answered");
        std::thread::sleep(Duration::from_millis(100));
    }

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/openai_client.py");
    let status = Command::new("python3")
        .arg(&script)
        .args([format!("http://{addr}"), key.to_string(), MODEL.to_string()])
        .status()
        .expect("runs python3");
    assert!(status.success(), "{} failed", script.display());

    // SIGTERM: graceful shutdown, exit status 0
    let pid = server.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let start = Instant::now();
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            assert!(status.success(), "serve exited with {status}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "serve did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}
