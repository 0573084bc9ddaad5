//! What the orchestration suites share: a bridge of the suite's own, an
//! apt-cacher-ng package proxy on it (configured as a rack configures it),
//! a region serving the controller, and `kumo bootstrap` onto the bridge.
//! On drop: the model's machines go, then the processes and the bridge;
//! when the test failed, the region's log and the model's debug-log first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{found, stdout_of_success};

/// The suite's own network and where its package cache lives.
pub struct Net {
    pub bridge: &'static str,
    pub host_ip: &'static str,
    pub proxy_port: u16,
    /// Addresses for container machines, `FIRST-LAST`.
    pub range: &'static str,
    /// A package cache kept between runs (under `.cache/`); `None` for a
    /// fresh one in the test's directory.
    pub proxy_cache: Option<PathBuf>,
}

pub struct ControllerLab {
    pub dir: tempfile::TempDir,
    pub net: Net,
    pub listen: String,
    /// The SSH key the controller logs in to manual machines with.
    pub key: PathBuf,
    children: Vec<Child>,
    /// Models destroyed on drop.
    pub models: Vec<String>,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh").args(["-c", cmd]).output().expect("sh")
}

/// Why an orchestration suite cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root".into());
    }
    for (cmd, script) in [
        ("systemd-nspawn", "deps-containers.sh"),
        ("debootstrap", "deps-containers.sh"),
        ("apt-cacher-ng", "deps-rack.sh"),
        ("curl", "deps-rack.sh"),
    ] {
        if !found(cmd) && !Path::new(&format!("/usr/sbin/{cmd}")).exists() {
            return Some(format!("{cmd} not found: run bash scripts/{script}"));
        }
    }
    None
}

impl ControllerLab {
    /// The bridge, the proxy and a region with its controller bootstrapped.
    pub fn start(net: Net) -> ControllerLab {
        let (bridge, host_ip) = (net.bridge, net.host_ip);
        let _ = sh(&format!("ip link del {bridge} 2>/dev/null"));
        let out = sh(&format!(
            "ip link add {bridge} type bridge && ip addr add {host_ip}/24 dev {bridge} \
             && ip link set {bridge} up"
        ));
        assert!(
            out.status.success(),
            "making {bridge}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = {
            let l = std::net::TcpListener::bind((host_ip, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        let mut h = ControllerLab {
            listen: format!("{host_ip}:{port}"),
            dir,
            net,
            key,
            children: vec![],
            models: vec!["default".into()],
        };

        let proxy_dir = h.dir.path().join("proxy");
        let cache = h
            .net
            .proxy_cache
            .clone()
            .unwrap_or_else(|| proxy_dir.join("cache"));
        for d in [cache.clone(), proxy_dir.join("log"), proxy_dir.join("conf")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir_all(proxy_dir.join("run")).unwrap();
        std::fs::write(
            proxy_dir.join("conf/acng.conf"),
            format!(
                "CacheDir: {c}\nLogDir: {p}/log\nSupportDir: /usr/lib/apt-cacher-ng\n\
                 SocketPath: {p}/run/socket\nPort: {port}\nBindAddress: {host_ip}\n\
                 ForeGround: 1\nPassThroughPattern: .*:443$\n",
                c = cache.display(),
                p = proxy_dir.display(),
                port = h.net.proxy_port,
            ),
        )
        .unwrap();
        let _ = sh(&format!(
            "chown -R apt-cacher-ng {} {} 2>/dev/null",
            proxy_dir.display(),
            cache.display()
        ));
        h.spawn(
            "/usr/sbin/apt-cacher-ng",
            &["-c", proxy_dir.join("conf").to_str().unwrap()],
            "proxy.log",
        );

        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "kumo-test", "-f"])
            .arg(&h.key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::env::set_var("KUMO_SSH_KEY", &h.key);

        let pubkey = format!("{}.pub", h.key.display());
        let listen = h.listen.clone();
        h.ok(&["init", "--listen", &listen, "--password", "correct-horse"]);
        let containers_cache = repo().join(".cache/containers");
        h.spawn(
            env!("CARGO_BIN_EXE_kumo"),
            &[
                "region",
                "serve",
                "--containers-cache",
                containers_cache.to_str().unwrap(),
            ],
            "region.log",
        );
        super::wait_until("the region to answer", 30, || {
            h.kumo(&["models"]).status.success() || h.kumo(&["whoami"]).status.success()
        });
        h.ok(&[
            "bootstrap",
            "--agent-url",
            &format!("http://{listen}"),
            "--bridge",
            bridge,
            "--address-range",
            h.net.range,
            "--prefix",
            "24",
            "--gateway",
            host_ip,
            "--apt-proxy",
            &h.apt_proxy(),
            // The suite's key logs in to the machines as root.
            "--authorized-key",
            &pubkey,
        ]);
        h
    }

    pub fn apt_proxy(&self) -> String {
        format!("http://{}:{}/", self.net.host_ip, self.net.proxy_port)
    }

    pub fn kumo(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kumo"))
            .args(args)
            .env("KUMO_DATA_DIR", self.dir.path().join("data"))
            .env("KUMO_CONFIG_DIR", self.dir.path().join("config"))
            .env_remove("KUMO_PROFILE")
            .current_dir(repo())
            .output()
            .expect("run kumo")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        stdout_of_success(args, self.kumo(args))
    }

    pub fn status(&self) -> Value {
        self.status_of("default")
    }

    pub fn status_of(&self, model: &str) -> Value {
        serde_json::from_str(&self.ok(&["status", "-m", model, "--format", "json"])).unwrap()
    }

    pub fn spawn(&mut self, program: &str, args: &[&str], log: &str) {
        let log = std::fs::File::create(self.dir.path().join(log)).unwrap();
        let child = Command::new(program)
            .args(args)
            .env("KUMO_DATA_DIR", self.dir.path().join("data"))
            .env("KUMO_CONFIG_DIR", self.dir.path().join("config"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        self.children.push(child);
    }

    /// Waits for `f` on `kumo status`, printing each new summary line.
    pub fn wait_status(&self, what: &str, secs: u64, f: impl FnMut(&Value) -> bool) -> Duration {
        self.wait_status_of("default", what, secs, f)
    }

    pub fn wait_status_of(
        &self,
        model: &str,
        what: &str,
        secs: u64,
        mut f: impl FnMut(&Value) -> bool,
    ) -> Duration {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            let s = self.status_of(model);
            let line = summary(&s);
            if line != last {
                eprintln!("[{:>6.1}s] {line}", start.elapsed().as_secs_f64());
                last = line;
            }
            if f(&s) {
                return start.elapsed();
            }
            if start.elapsed() >= Duration::from_secs(secs) {
                // A failed hook's output is what explains a timeout.
                let failures: String = s["units"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, u)| u["workload"] == "error")
                    .map(|(name, _)| {
                        let out = self.kumo(&["show-unit", "-m", model, name]);
                        format!(
                            "--- kumo show-unit {name}:\n{}{}\n",
                            String::from_utf8_lossy(&out.stdout),
                            String::from_utf8_lossy(&out.stderr)
                        )
                    })
                    .collect();
                panic!("timed out after {secs} s waiting for {what}: {s:#}\n{failures}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for ControllerLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("region.log")).unwrap_or_default();
            eprintln!("--- last lines of region.log:");
            for l in log.lines().rev().take(40).collect::<Vec<_>>().iter().rev() {
                eprintln!("{l}");
            }
            for m in &self.models {
                let out = self.kumo(&["debug-log", "-m", m, "--no-tail", "--lines", "80"]);
                eprintln!(
                    "--- debug-log of {m}:\n{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        // Containers are the models' machines: destroying them stops them.
        for m in &self.models {
            let _ = self.kumo(&["destroy-model", m, "--yes"]);
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Anything a failed destroy left behind, and manual hosts.
        for state in [
            self.dir.path().join("data/containers"),
            self.dir.path().join("hosts"),
        ] {
            if let Ok(entries) = std::fs::read_dir(&state) {
                for e in entries.flatten() {
                    if let Ok(pid) = std::fs::read_to_string(e.path().join("nspawn.pid")) {
                        let _ = sh(&format!("kill -9 {} 2>/dev/null", pid.trim()));
                    }
                }
            }
        }
        let _ = sh(&format!("ip link del {} 2>/dev/null", self.net.bridge));
    }
}

/// One line: every machine's state and every unit's workload, agent and
/// message.
pub fn summary(s: &Value) -> String {
    let mut parts = vec![];
    if let Some(m) = s["machines"].as_object() {
        for (id, m) in m {
            parts.push(format!(
                "machine {id} {}/{}",
                m["state"].as_str().unwrap_or(""),
                m["agent"].as_str().unwrap_or("")
            ));
        }
    }
    if let Some(u) = s["units"].as_object() {
        for (name, u) in u {
            parts.push(format!(
                "{name} {} ({}) {}",
                u["workload"].as_str().unwrap_or(""),
                u["agent"].as_str().unwrap_or(""),
                u["message"].as_str().unwrap_or("")
            ));
        }
    }
    parts.join("; ")
}

pub fn unit<'a>(s: &'a Value, name: &str) -> &'a Value {
    &s["units"][name]
}

pub fn workload(s: &Value, name: &str) -> String {
    unit(s, name)["workload"].as_str().unwrap_or("").to_string()
}

pub fn idle(s: &Value, name: &str) -> bool {
    unit(s, name)["agent"].as_str() == Some("idle")
}

pub fn http_get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
