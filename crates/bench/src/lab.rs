//! The rack benchmarks' test bed: two network namespaces joined by a veth
//! pair (server and client side, private 10.x addresses), servers started
//! in one and load tools in the other, all torn down on drop — on success,
//! on error, and when Ctrl-C drops the benchmark future. The host's own
//! interfaces are never touched.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tokio::process::{Child, Command};

/// A server namespace and a client namespace with one veth link.
pub struct Lab {
    pub server_ns: String,
    pub client_ns: String,
    pub server_if: String,
    pub client_if: String,
    pub server_ip: Ipv4Addr,
    pub client_ip: Ipv4Addr,
    pub prefix_len: u8,
}

impl Lab {
    /// Creates `kb<tag>s<pid>` and `kb<tag>c<pid>` with the server on
    /// `net.1` and the client on `net.2` (a /16 from `net`, e.g. 10.77.0.0).
    pub fn create(tag: &str, net: Ipv4Addr) -> Result<Lab> {
        ensure!(
            unsafe { libc::geteuid() } == 0,
            "the rack benchmarks need root (network namespaces)"
        );
        let pid = std::process::id() % 100_000;
        let [a, b, _, _] = net.octets();
        let lab = Lab {
            server_ns: format!("kb{tag}s{pid}"),
            client_ns: format!("kb{tag}c{pid}"),
            // Interface names are at most 15 bytes.
            server_if: format!("kb{tag}s{pid}"),
            client_if: format!("kb{tag}c{pid}"),
            server_ip: Ipv4Addr::new(a, b, 0, 1),
            client_ip: Ipv4Addr::new(a, b, 0, 2),
            prefix_len: 16,
        };
        // From here on, dropping `lab` removes whatever was created.
        lab.setup().context("creating the network namespaces")?;
        Ok(lab)
    }

    fn setup(&self) -> Result<()> {
        let (s, c) = (&self.server_ns, &self.client_ns);
        ip(&["netns", "add", s])?;
        ip(&["netns", "add", c])?;
        ip(&[
            "link",
            "add",
            &self.server_if,
            "netns",
            s,
            "type",
            "veth",
            "peer",
            "name",
            &self.client_if,
            "netns",
            c,
        ])?;
        for (ns, ifname, addr) in [
            (s, &self.server_if, self.server_ip),
            (c, &self.client_if, self.client_ip),
        ] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/{}", self.prefix_len),
                "dev",
                ifname,
            ])?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }
        // Permanent neighbour entries: no ARP during a measurement, and no
        // first packets dropped while an address resolves.
        let server_mac = mac(s, &self.server_if)?;
        let client_mac = mac(c, &self.client_if)?;
        for (ns, ifname, addr, lladdr) in [
            (s, &self.server_if, self.client_ip, &client_mac),
            (c, &self.client_if, self.server_ip, &server_mac),
        ] {
            let addr = addr.to_string();
            ip(&[
                "-n",
                ns,
                "neigh",
                "replace",
                &addr,
                "lladdr",
                lladdr,
                "dev",
                ifname,
                "nud",
                "permanent",
            ])?;
        }
        Ok(())
    }

    /// `program args…` inside the server namespace; killed when dropped.
    pub fn server_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        in_ns(&self.server_ns, program)
    }

    pub fn client_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        in_ns(&self.client_ns, program)
    }

    /// Waits until something in the server namespace listens on UDP `port`.
    pub async fn wait_udp(&self, server: &mut Daemon, port: u16) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before listening:\n{}",
                    server.name,
                    server.log_tail()
                );
            }
            let out = StdCommand::new("ip")
                .args(["netns", "exec", &self.server_ns, "ss", "-Hlun"])
                .output()
                .context("running ss")?;
            let text = String::from_utf8_lossy(&out.stdout);
            if text.lines().any(|l| {
                l.split_whitespace()
                    .any(|f| f.ends_with(&format!(":{port}")))
            }) {
                // Listening is not yet serving for every daemon (BIND loads
                // zones after binding); a moment more is cheap.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{} did not listen on udp {port} within 30 s:\n{}",
                    server.name,
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and so the pair.
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = StdCommand::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The link-layer address of `ifname` in `ns`.
fn mac(ns: &str, ifname: &str) -> Result<String> {
    let out = StdCommand::new("ip")
        .args(["-n", ns, "-o", "link", "show", "dev", ifname])
        .output()
        .context("running ip (iproute2)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words
        .find(|w| *w == "link/ether")
        .and(words.next())
        .map(str::to_owned)
        .with_context(|| format!("no link/ether address for {ifname} in {ns}: {text}"))
}

fn ip(args: &[&str]) -> Result<()> {
    let out = StdCommand::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn in_ns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    // `ip netns exec` execs the program, so killing the child kills it.
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c.stdin(Stdio::null()).kill_on_drop(true);
    c
}

/// A server process with its output in a log file; killed when dropped.
pub struct Daemon {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Daemon> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdout(out.try_clone()?).stderr(out);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Daemon {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kills the server and reaps it.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited during the benchmark ({status}):\n{}",
                self.name,
                self.log_tail()
            );
        }
        self.child.kill().await?;
        Ok(())
    }
}

/// Runs a load tool to completion and returns its stdout (stderr appended),
/// failing with both when it exits non-zero.
pub async fn output(cmd: Command, what: &str) -> Result<(String, Duration)> {
    output_ok(cmd, what, &[0]).await
}

/// [`output`], accepting the exit codes in `ok` (perfdhcp exits 3 when
/// packets were dropped, which at saturation they are).
pub async fn output_ok(mut cmd: Command, what: &str, ok: &[i32]) -> Result<(String, Duration)> {
    let start = Instant::now();
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    let elapsed = start.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.code().is_some_and(|c| ok.contains(&c)),
        "{what} failed ({}):\n{text}",
        out.status
    );
    Ok((text, elapsed))
}

/// The first line of `program args` (a peer's version), or "unknown".
pub fn version(program: &str, args: &[&str]) -> String {
    StdCommand::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let t = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            t.lines().next().unwrap_or("").trim().to_owned()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The number after `key` on the first line containing it, e.g.
/// `field(text, "Queries per second:")`.
pub fn field(text: &str, key: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains(key))?;
    let rest = &line[line.find(key)? + key.len()..];
    rest.split(|c: char| c.is_whitespace() || c == '(' || c == ',')
        .find(|w| !w.is_empty())?
        .trim_end_matches(['%', ')'])
        .parse()
        .ok()
}

/// This binary, for running kumo's server shells as their own processes.
pub fn this_exe() -> Result<PathBuf> {
    std::env::current_exe().context("locating kumo-bench")
}

/// A temporary directory every server can read (tftpd-hpa and named may
/// drop privileges).
pub fn world_readable_tempdir() -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("kumo-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_reads_the_number_after_a_key() {
        let t = "  Queries lost:         10 (0.01%)\n  Queries per second:   99999.5\nAverage Latency (s):  0.000951 (min 0.000034, max 0.006497)";
        assert_eq!(field(t, "Queries lost:"), Some(10.0));
        assert_eq!(field(t, "Queries per second:"), Some(99999.5));
        assert_eq!(field(t, "Average Latency (s):"), Some(0.000951));
        assert_eq!(field(t, "max"), Some(0.006497));
        assert_eq!(field(t, "absent"), None);
    }
}
