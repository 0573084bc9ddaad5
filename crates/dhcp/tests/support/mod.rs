//! What the namespace suites share: root and program checks, `ip`, and
//! kumo's DHCP server run inside a namespace on its own thread.

#![allow(dead_code)] // each suite uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;

use kumo_dhcp::ServerConfig;
use tokio::sync::{mpsc, oneshot};

/// Fails unless `program` is installed (naming its Debian `package`) and
/// the test runs as root.
pub fn require(program: &str, package: &str) {
    let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).exists());
    assert!(
        found,
        "{program} not found: install the Debian package {package} (bash scripts/deps-dhcp.sh)"
    );
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the dhcp namespace tests need root to create network namespaces"
    );
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (Debian package iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &str) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: setns(2) on a valid fd affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// kumo's server on `dhcp0` in namespace `ns`, on its own thread and
/// runtime; stopped (and its result checked) by [`ServerThread::stop`],
/// or stopped quietly on drop.
pub struct ServerThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), kumo_dhcp::Error>>>,
    _reload: mpsc::Sender<ServerConfig>,
}

impl ServerThread {
    pub fn start(ns: &str, config: ServerConfig, journal: PathBuf) -> ServerThread {
        let path = format!("/run/netns/{ns}");
        let (stop, stopped) = oneshot::channel::<()>();
        let (reload, reloads) = mpsc::channel(1);
        let thread = std::thread::spawn(move || {
            enter_netns(&path);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(kumo_dhcp::run(
                config,
                &journal,
                "dhcp0",
                async {
                    let _ = stopped.await;
                },
                reloads,
            ))
        });
        ServerThread {
            stop: Some(stop),
            thread: Some(thread),
            _reload: reload,
        }
    }

    pub fn stop(mut self) {
        self.shutdown().expect("dhcp server failed");
    }

    fn shutdown(&mut self) -> Result<(), kumo_dhcp::Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().expect("dhcp server thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
