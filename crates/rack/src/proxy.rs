//! The rack's package proxy, as MAAS racks have one: machines on the
//! provisioning network reach Debian's archive through the rack, which
//! caches what they fetch, so a rack of machines downloads each package
//! once and machines need no route to the internet.
//!
//! kumo does not implement a proxy: it writes a configuration for Debian's
//! `apt-cacher-ng` (an HTTP proxy that understands APT repositories: it
//! caches `.deb`s for good and revalidates index files) under
//! `<rack data dir>/proxy/` and runs it as a supervised child, restarted
//! with back-off when it exits and stopped with the rack. Without the
//! package installed the rack serves on and says so.
//!
//! The daemon runs as the rack's user. Debian runs it as its own
//! `apt-cacher-ng` user, but here its files live under the rack's data
//! directory, which other users usually cannot reach (`/root`, or a data
//! directory `kumo init` made 0700); it listens on the served interfaces
//! only and exposes no report or maintenance page.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;

use crate::Error;

/// Where Debian's package installs the daemon.
pub const PROGRAM: &str = "/usr/sbin/apt-cacher-ng";
/// The Debian package to install for it.
pub const PACKAGE: &str = "apt-cacher-ng";
/// apt-cacher-ng 3.7 (Debian 12) fails to bind ports above this one
/// ("Error resolving address for binding"), so they are refused up front.
pub const MAX_PORT: u16 = 32767;

/// Back-off between restarts: doubles from the first to the last, and
/// starts over once the proxy has stayed up for `STABLE`.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
const STABLE: Duration = Duration::from_secs(60);

/// What the proxy serves, and where it keeps its files.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub program: PathBuf,
    /// `conf/`, `cache/`, `log/` and `run/` live here.
    pub dir: PathBuf,
    pub port: u16,
    /// The served interfaces' addresses: the proxy listens on these only.
    pub bind: Vec<Ipv4Addr>,
    /// A proxy the rack itself must use to reach the archive (the rack's
    /// `http_proxy`), if any.
    pub upstream: Option<String>,
}

impl ProxyConfig {
    pub fn new(dir: PathBuf, port: u16, bind: Vec<Ipv4Addr>) -> Self {
        let upstream = ["http_proxy", "HTTP_PROXY"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
        ProxyConfig {
            program: PROGRAM.into(),
            dir,
            port,
            bind,
            upstream,
        }
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("conf")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn pid_file(&self) -> PathBuf {
        self.run_dir().join("apt-cacher-ng.pid")
    }

    /// The proxy's URL for machines behind the first served address.
    pub fn url(&self) -> Option<String> {
        self.bind
            .first()
            .map(|a| format!("http://{a}:{}/", self.port))
    }

    /// `acng.conf`. Only what differs from apt-cacher-ng's built-in
    /// defaults: no report or maintenance page and no local directories
    /// are configured, so machines get the proxy and nothing else.
    pub fn render(&self) -> String {
        let addrs: Vec<String> = self.bind.iter().map(|a| a.to_string()).collect();
        let mut s = format!(
            "# Written by kumo rack on every start; changes here are lost.\n\
             CacheDir: {cache}\n\
             LogDir: {log}\n\
             SupportDir: /usr/lib/apt-cacher-ng\n\
             SocketPath: {run}/socket\n\
             Port: {port}\n\
             BindAddress: {addrs}\n\
             ForeGround: 1\n\
             # https:// sources go through uncached as CONNECT tunnels.\n\
             PassThroughPattern: .*:443$\n\
             # Expire unreferenced files once their index has gone for 4 days.\n\
             ExThreshold: 4\n",
            cache = self.cache_dir().display(),
            log = self.log_dir().display(),
            run = self.run_dir().display(),
            port = self.port,
            addrs = addrs.join(" "),
        );
        if let Some(up) = &self.upstream {
            s.push_str(&format!("Proxy: {up}\n"));
        }
        s
    }

    /// Creates the directories and writes the configuration.
    fn prepare(&self) -> Result<(), Error> {
        let io = |p: &Path| {
            let path = p.display().to_string();
            move |source| Error::Io { path, source }
        };
        for d in [
            self.conf_dir(),
            self.cache_dir(),
            self.log_dir(),
            self.run_dir(),
        ] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let conf = self.conf_dir().join("acng.conf");
        std::fs::write(&conf, self.render()).map_err(io(&conf))
    }
}

/// Whether the proxy runs and accepts connections, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct ProxyStatus(Arc<AtomicBool>);

impl ProxyStatus {
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed)
    }
}

/// Whether `pid` runs. A zombie counts as gone: an orphaned proxy's new
/// parent (PID 1 in a container) may never reap it.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// Stops an apt-cacher-ng a previous rack left running with this
/// configuration (a rack killed with SIGKILL cannot stop its child), which
/// would otherwise hold the port. The process's command line must name our
/// configuration directory, so a recycled pid is never signalled.
async fn stop_stale(cfg: &ProxyConfig) {
    let Some(pid) = std::fs::read_to_string(cfg.pid_file())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let conf = cfg.conf_dir().display().to_string();
    let ours = String::from_utf8_lossy(&cmdline)
        .split('\0')
        .any(|a| a == conf);
    if ours && alive(pid) {
        tracing::warn!(
            pid,
            "stopping the package proxy a previous rack left running"
        );
        signal(pid, libc::SIGTERM);
        for _ in 0..50 {
            if !alive(pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if alive(pid) {
            signal(pid, libc::SIGKILL);
        }
    }
    let _ = std::fs::remove_file(cfg.pid_file());
}

/// Runs the proxy until `stop` completes, restarting it with back-off when
/// it exits. Never returns early: a missing program or a proxy that keeps
/// failing is logged, and the rack serves on without it.
pub async fn supervise(cfg: ProxyConfig, status: ProxyStatus, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    if !cfg.program.exists() {
        tracing::warn!(program = %cfg.program.display(), package = PACKAGE, "no package proxy: install Debian's {PACKAGE} package (apt-get install {PACKAGE}) for machines to fetch packages through the rack");
        stop.await;
        return;
    }
    if cfg.port > MAX_PORT {
        tracing::error!(port = cfg.port, "no package proxy: apt-cacher-ng cannot listen on ports above {MAX_PORT}; choose another --package-proxy-port");
        stop.await;
        return;
    }
    let mut backoff = BACKOFF_FIRST;
    loop {
        stop_stale(&cfg).await;
        let started = Instant::now();
        match run_once(&cfg, &status, &mut stop).await {
            Ok(None) => return,
            Ok(Some(exit)) => {
                tracing::warn!(%exit, retry_in = ?backoff, "package proxy exited; restarting")
            }
            Err(e) => {
                let cause = std::error::Error::source(&e)
                    .map(|c| c.to_string())
                    .unwrap_or_default();
                tracing::warn!(error = %e, %cause, retry_in = ?backoff, "package proxy not started")
            }
        }
        status.set(false);
        if started.elapsed() >= STABLE {
            backoff = BACKOFF_FIRST;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut stop => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One run of the daemon: `Ok(Some(status))` when it exited on its own,
/// `Ok(None)` when `stop` ended it.
async fn run_once(
    cfg: &ProxyConfig,
    status: &ProxyStatus,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<std::process::ExitStatus>, Error> {
    cfg.prepare()?;
    let program = cfg.program.display().to_string();
    let mut cmd = tokio::process::Command::new(&cfg.program);
    cmd.arg("-c")
        .arg(cfg.conf_dir())
        .current_dir(&cfg.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Should the rack's task be dropped without a stop, the proxy goes too.
        .kill_on_drop(true);
    // And should the rack die outright (SIGKILL, a panic that aborts),
    // the kernel sends the proxy SIGTERM: PR_SET_PDEATHSIG fires when the
    // spawning thread exits, here a runtime worker that lives as long as
    // the rack. A parent gone before prctl ran is caught by getppid.
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid).
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the rack exited"));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| Error::Io {
        path: program.clone(),
        source,
    })?;
    let pid = child.id().unwrap_or_default() as i32;
    let _ = std::fs::write(cfg.pid_file(), format!("{pid}\n"));
    tracing::info!(pid, port = cfg.port, bind = ?cfg.bind, conf = %cfg.conf_dir().display(), "package proxy starting");
    if let Some(stderr) = child.stderr.take() {
        // apt-cacher-ng reports start-up failures (a taken port) on stderr.
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(%line, "apt-cacher-ng");
            }
        });
    }
    let probe_addr = cfg
        .bind
        .first()
        .map(|a| SocketAddr::new((*a).into(), cfg.port));
    let mut probe = tokio::time::interval(Duration::from_millis(200));
    let result = loop {
        tokio::select! {
            exit = child.wait() => {
                break Ok(Some(exit.map_err(|source| Error::Io { path: program.clone(), source })?));
            }
            () = stop.as_mut() => {
                // SIGTERM lets it finish writing what it is caching.
                signal(pid, libc::SIGTERM);
                if tokio::time::timeout(Duration::from_secs(3), child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                break Ok(None);
            }
            _ = probe.tick(), if !status.is_up() => {
                let up = match probe_addr {
                    Some(a) => tokio::net::TcpStream::connect(a).await.is_ok(),
                    None => false,
                };
                if up {
                    tracing::info!(pid, url = cfg.url().unwrap_or_default(), "package proxy serving");
                    status.set(true);
                }
            }
        }
    };
    status.set(false);
    let _ = std::fs::remove_file(cfg.pid_file());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_binds_the_served_addresses_and_keeps_state_in_the_rack_dir() {
        let mut cfg = ProxyConfig::new(
            "/var/lib/kumo/rack/proxy".into(),
            8000,
            vec![Ipv4Addr::new(10, 248, 0, 1), Ipv4Addr::new(10, 249, 0, 1)],
        );
        cfg.upstream = None;
        let conf = cfg.render();
        for line in [
            "CacheDir: /var/lib/kumo/rack/proxy/cache\n",
            "LogDir: /var/lib/kumo/rack/proxy/log\n",
            "Port: 8000\n",
            "BindAddress: 10.248.0.1 10.249.0.1\n",
            "ForeGround: 1\n",
            "PassThroughPattern: .*:443$\n",
        ] {
            assert!(conf.contains(line), "{line:?} missing from:\n{conf}");
        }
        assert!(!conf.contains("ReportPage"), "{conf}");
        assert!(!conf.contains("Proxy:"), "{conf}");
        assert_eq!(cfg.url().as_deref(), Some("http://10.248.0.1:8000/"));
        cfg.upstream = Some("http://proxy.example:3128/".into());
        assert!(cfg.render().contains("Proxy: http://proxy.example:3128/\n"));
    }
}
