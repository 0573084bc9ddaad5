//! What the network end-to-end suites share: a rack host in a network
//! namespace (a bridge `kbr0` with the rack's address and a tap `ktap0`
//! for a QEMU machine), the real `kumo` binary run inside it, and clean-up
//! that prints the logs when a test fails.

#![allow(dead_code)] // each suite uses its own part

pub mod controller;
pub mod raw;

/// The stdout of a `kumo` run that must succeed; else fails the test with
/// both of its outputs.
pub fn stdout_of_success(args: &[&str], out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "kumo {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A rack host (and any client namespaces) that removes itself on drop.
pub struct Lab {
    pub dir: tempfile::TempDir,
    /// The rack host's namespace.
    pub ns: String,
    /// Client namespaces added with [`Lab::add_namespace`].
    others: Vec<String>,
    children: Vec<Child>,
    /// Logs below `dir` printed when the test panics.
    logs: &'static [&'static str],
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in self.logs {
                let text = self.log(log);
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- last lines of {log}:");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        // Every QEMU the lab started, whoever started it, left a pid file.
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".pid") {
                    self.kill_qemu_of(&name);
                }
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in std::iter::once(&self.ns).chain(&self.others) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `cmd` is on the PATH.
pub fn found(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Fails naming the script that installs `cmd` when it is missing.
pub fn require(cmd: &str, deps_script: &str) {
    assert!(
        found(cmd),
        "{cmd} not found: run bash scripts/{deps_script}"
    );
}

/// Polls `f` until it holds; returns how long that took.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {secs} s waiting for {what}");
}

fn fresh_namespace(ns: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
    ip(&["netns", "add", ns]);
    ip(&["-n", ns, "link", "set", "lo", "up"]);
}

impl Lab {
    /// The rack host `<tag>-<pid>`: `kbr0` with `rack_ip`/24 and `ktap0`
    /// on it. Needs root.
    pub fn new(tag: &str, rack_ip: &str, logs: &'static [&'static str]) -> Lab {
        // SAFETY: geteuid(2) has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this suite needs root");
        let lab = Lab {
            dir: tempfile::tempdir().unwrap(),
            ns: format!("{tag}-{}", std::process::id()),
            others: vec![],
            children: vec![],
            logs,
        };
        let ns = lab.ns.as_str();
        fresh_namespace(ns);
        ip(&["-n", ns, "link", "add", "kbr0", "type", "bridge"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{rack_ip}/24"),
            "dev",
            "kbr0",
        ]);
        ip(&["-n", ns, "link", "set", "kbr0", "up"]);
        ip(&["-n", ns, "tuntap", "add", "ktap0", "mode", "tap"]);
        ip(&["-n", ns, "link", "set", "ktap0", "master", "kbr0", "up"]);
        lab
    }

    /// A namespace `<tag>-<pid>` removed with the lab.
    pub fn add_namespace(&mut self, tag: &str) -> String {
        let ns = format!("{tag}-{}", std::process::id());
        fresh_namespace(&ns);
        self.others.push(ns.clone());
        ns
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `program` in namespace `ns`, with the lab's kumo profile and data.
    pub fn in_ns(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program])
            .env("KUMO_LOG", "info,kumo_rack=debug,kumo_dhcp=debug")
            .env("KUMO_CONFIG_DIR", self.path("config"))
            .env("KUMO_DATA_DIR", self.path("data"))
            .env_remove("KUMO_PROFILE");
        c
    }

    /// `program` on the rack host.
    pub fn on_rack(&self, program: &str) -> Command {
        self.in_ns(&self.ns, program)
    }

    pub fn kumo(&self, args: &[&str]) -> Output {
        self.on_rack(env!("CARGO_BIN_EXE_kumo"))
            .args(args)
            .output()
            .expect("run kumo")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        stdout_of_success(args, self.kumo(args))
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Starts `program` in `ns` in the background, its output in `log`.
    pub fn spawn(&mut self, ns: &str, program: &str, args: &[&str], log: &str) {
        let log = std::fs::File::create(self.path(log)).unwrap();
        let child = self
            .in_ns(ns, program)
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        self.children.push(child);
    }

    /// `kumo ARGS` on the rack host in the background.
    pub fn spawn_kumo(&mut self, args: &[&str], log: &str) {
        let ns = self.ns.clone();
        self.spawn(&ns, env!("CARGO_BIN_EXE_kumo"), args, log);
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// A tap `name` on the rack host's bridge, for another machine.
    pub fn add_tap(&self, name: &str) {
        let ns = self.ns.as_str();
        ip(&["-n", ns, "tuntap", "add", name, "mode", "tap"]);
        ip(&["-n", ns, "link", "set", name, "master", "kbr0", "up"]);
    }

    /// Kills the QEMU whose pid file is `qemu.pid` in the lab directory.
    pub fn kill_qemu(&self) {
        self.kill_qemu_of("qemu.pid")
    }

    pub fn qemu_running(&self) -> bool {
        self.qemu_running_of("qemu.pid")
    }

    /// Kills the QEMU whose pid file is `pidfile` in the lab directory.
    pub fn kill_qemu_of(&self, pidfile: &str) {
        if let Some(pid) = self.pid_in(pidfile) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    pub fn qemu_running_of(&self, pidfile: &str) -> bool {
        // SAFETY: kill(2) with signal 0 only checks the process exists.
        self.pid_in(pidfile)
            .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0)
    }

    fn pid_in(&self, pidfile: &str) -> Option<i32> {
        std::fs::read_to_string(self.path(pidfile))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}
