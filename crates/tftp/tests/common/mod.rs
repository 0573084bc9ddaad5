//! Helpers for the integration tests: a real server on 127.0.0.1, files
//! with known checksums, and the real clients.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use kumo_tftp::{CounterSnapshot, Counters, DirResolver, FileResolver, Limits, Server};
use sha2::{Digest, Sha256};

/// Fails the test (never skips it) when a client is missing.
pub fn require_program(program: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{program} not found: install the Debian package {package} \
                 (scripts/deps-tftp.sh does it)"
            )
        })
}

pub struct TestServer {
    pub port: u16,
    pub root: tempfile::TempDir,
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(Limits::default()).await
    }

    pub async fn start_with(limits: Limits) -> TestServer {
        let root = tempfile::tempdir().unwrap();
        let resolver = DirResolver::new(root.path()).unwrap();
        Self::start_with_resolver(root, Arc::new(resolver), limits).await
    }

    pub async fn start_with_resolver(
        root: tempfile::TempDir,
        resolver: Arc<dyn FileResolver>,
        limits: Limits,
    ) -> TestServer {
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), resolver, limits)
            .await
            .unwrap();
        let port = server.local_addr().port();
        let counters = server.counters();
        let task = tokio::spawn(async move {
            server.run().await.expect("tftp server");
        });
        TestServer {
            port,
            root,
            counters,
            task,
        }
    }

    /// Writes `len` pseudo-random bytes to `name` under the root; returns
    /// their SHA-256.
    pub fn add_file(&self, name: &str, len: usize, seed: u64) -> String {
        let path = self.root.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes = pseudo_random(len, seed);
        std::fs::write(&path, &bytes).unwrap();
        sha256(&bytes)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }
}

pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("downloaded file {} missing: {e}", path.display()));
    sha256(&bytes)
}

/// Runs a client to completion (killing it after `limit`), returning its
/// output with stdout and stderr for assertion messages.
pub async fn run(program: &Path, args: &[&str], limit: Duration) -> (Output, String) {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} {args:?} did not finish within {limit:?}",
                program.display()
            )
        })
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!(
        "{} {args:?}: {}\nstdout: {}\nstderr: {}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

pub fn tftp_hpa() -> PathBuf {
    require_program("tftp", "tftp-hpa")
}

pub fn atftp() -> PathBuf {
    require_program("atftp", "atftp")
}

pub fn curl() -> PathBuf {
    require_program("curl", "curl")
}

/// `tftp -m MODE 127.0.0.1 PORT -c get REMOTE LOCAL` (tftp-hpa; it has no
/// options support, so this is plain RFC 1350 with 512-byte blocks).
pub async fn tftp_hpa_get(port: u16, mode: &str, remote: &str, local: &Path) -> (Output, String) {
    let port = port.to_string();
    let local = local.to_str().unwrap();
    run(
        &tftp_hpa(),
        &["-m", mode, "127.0.0.1", &port, "-c", "get", remote, local],
        Duration::from_secs(300),
    )
    .await
}

/// `atftp --get` with `--option` arguments such as "blksize 1428".
pub async fn atftp_get(
    port: u16,
    options: &[&str],
    remote: &str,
    local: &Path,
) -> (Output, String) {
    let port = port.to_string();
    let mut args = vec![
        "--trace",
        "--get",
        "-r",
        remote,
        "-l",
        local.to_str().unwrap(),
    ];
    for o in options {
        args.push("--option");
        args.push(o);
    }
    args.push("127.0.0.1");
    args.push(&port);
    run(&atftp(), &args, Duration::from_secs(300)).await
}

/// Waits until `pred` holds for the counters (they are updated by the
/// server's tasks after the packets the test sees).
pub async fn counters_until(
    counters: &Counters,
    pred: impl Fn(&CounterSnapshot) -> bool,
) -> CounterSnapshot {
    for _ in 0..3000 {
        let c = counters.snapshot();
        if pred(&c) {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "counters never reached the expected state: {:?}",
        counters.snapshot()
    );
}
