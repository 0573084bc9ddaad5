//! Container machines on this host: make, boot, enter, stop, destroy.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::fsutil::{ensure_free_space, host_path, symlink_in_root, tail, write_in_root};
use crate::proc;
use crate::spec::{validate_name, ContainerSpec};
use crate::Error;

/// How long `start` waits for systemd inside to finish booting.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `stop` waits for a clean poweroff before killing.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of console.log quoted in errors.
const CONSOLE_TAIL: usize = 30;
/// What exec'd commands see: a login-like environment, not the caller's.
const EXEC_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("USER", "root"),
    ("LOGNAME", "root"),
    ("LANG", "C.UTF-8"),
];

/// Where a container is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Missing,
    Stopped,
    /// nspawn runs but the container's init does not exist yet (the first
    /// moments of a start).
    Starting,
    /// `leader_pid` is the container's PID 1 as the host sees it.
    Running {
        leader_pid: u32,
    },
}

/// The container machines kept under one state directory:
/// `<state>/<name>/{rootfs/,spec.json,nspawn.pid,console.log}`.
/// Everything is on disk, so values on the same directory — in this
/// process or a later one — see the same containers. Calls on one name
/// are serialised within the process.
#[derive(Debug, Clone)]
pub struct Containers {
    state_dir: PathBuf,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// spec.json: the spec, with injected files by hash (they can be large and
/// binary; only equality matters).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    name: String,
    hostname: String,
    rootfs: PathBuf,
    bridge: String,
    address: String,
    gateway: Option<String>,
    dns: Vec<String>,
    files: Vec<RecordedFile>,
    enable_units: Vec<String>,
    authorized_keys: Vec<String>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RecordedFile {
    path: String,
    mode: u32,
    sha256: String,
}

impl Record {
    fn of(s: &ContainerSpec) -> Record {
        Record {
            name: s.name.clone(),
            hostname: s.hostname.clone(),
            rootfs: s.rootfs.clone(),
            bridge: s.bridge.clone(),
            address: s.address.clone(),
            gateway: s.gateway.clone(),
            dns: s.dns.clone(),
            files: s
                .files
                .iter()
                .map(|f| RecordedFile {
                    path: f.path.clone(),
                    mode: f.mode,
                    sha256: format!("{:x}", Sha256::digest(&f.contents)),
                })
                .collect(),
            enable_units: s.enable_units.clone(),
            authorized_keys: s.authorized_keys.clone(),
        }
    }
}

impl Containers {
    pub fn new(state_dir: PathBuf) -> Self {
        Containers {
            state_dir,
            locks: Arc::default(),
        }
    }

    /// `<state>/<name>`.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.state_dir.join(name)
    }

    /// The container's console output of its latest boot (the one before
    /// is `console.log.1`).
    pub fn console_log(&self, name: &str) -> PathBuf {
        self.dir(name).join("console.log")
    }

    /// The container's root filesystem on the host.
    pub fn rootfs_dir(&self, name: &str) -> PathBuf {
        self.dir(name).join("rootfs")
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.dir(name).join("nspawn.pid")
    }

    async fn lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .locks
            .lock()
            .expect("container locks poisoned")
            .entry(name.to_owned())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    fn read_record(&self, name: &str) -> Result<Record, Error> {
        validate_name(name)?;
        let path = self.dir(name).join("spec.json");
        let bytes = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound { name: name.into() })
            }
            r => r.map_err(Error::io("reading", &path))?,
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::io("parsing", &path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
    }

    /// Makes the container: unpacks the root filesystem and configures it
    /// for its first boot. A container that exists with the same spec is
    /// left alone; with another spec it is an error.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<(), Error> {
        spec.validate()?;
        let name = spec.name.as_str();
        let _guard = self.lock(name).await;
        match self.read_record(name) {
            Ok(r) if r == Record::of(spec) => return Ok(()),
            Ok(_) => return Err(Error::SpecMismatch { name: name.into() }),
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        if !spec.rootfs.is_file() {
            return Err(Error::Io {
                what: "reading the root filesystem",
                path: spec.rootfs.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        std::fs::create_dir_all(&self.state_dir).map_err(Error::io("creating", &self.state_dir))?;
        // An unpacked bookworm with the base packages is about 400 MiB.
        ensure_free_space(&self.state_dir, 1 << 30, &format!("container {name}"))?;

        // Made beside its final place and renamed when complete, so a
        // crash leaves no container that looks whole.
        let partial = self.state_dir.join(format!(".{name}.partial"));
        remove_tree(&partial)?;
        let dir = self.dir(name);
        remove_tree(&dir)?;
        let root = partial.join("rootfs");
        std::fs::create_dir_all(&root).map_err(Error::io("creating", &root))?;
        let mut tar = Command::new("tar");
        tar.arg("--extract");
        if spec.rootfs.extension().is_some_and(|e| e == "zst") {
            tar.arg("--zstd");
        }
        tar.args(["--numeric-owner", "--xattrs", "--xattrs-include=*"])
            .args(["--same-permissions", "--same-owner", "-f"])
            .arg(&spec.rootfs)
            .arg("-C")
            .arg(&root);
        run(
            &mut tar,
            &format!("unpacking {} for {name}", spec.rootfs.display()),
        )
        .await?;

        let (root2, spec2) = (root.clone(), spec.clone());
        tokio::task::spawn_blocking(move || configure(&root2, &spec2))
            .await
            .expect("configure task panicked")?;
        let record = serde_json::to_vec_pretty(&Record::of(spec)).expect("record serialises");
        let path = partial.join("spec.json");
        std::fs::write(&path, record).map_err(Error::io("writing", &path))?;
        std::fs::rename(&partial, &dir).map_err(Error::io("renaming", &partial))?;
        tracing::info!(container = name, "created");
        Ok(())
    }

    /// Boots the container (when not running) and returns once systemd
    /// inside reports `running` or `degraded`.
    pub async fn start(&self, name: &str) -> Result<(), Error> {
        let _guard = self.lock(name).await;
        let record = self.read_record(name)?;
        if let Some(pid) = self.nspawn_pid(name) {
            return self.wait_ready(name, pid).await;
        }
        if !Path::new("/sys/class/net")
            .join(&record.bridge)
            .join("bridge")
            .is_dir()
        {
            return Err(Error::NoBridge {
                name: name.into(),
                bridge: record.bridge,
            });
        }
        let dir = self.dir(name);
        let console = self.console_log(name);
        if console.exists() {
            let old = dir.join("console.log.1");
            std::fs::rename(&console, &old).map_err(Error::io("renaming", &console))?;
        }
        let pid_file = self.pid_file(name);
        let _ = std::fs::remove_file(&pid_file);
        let log = std::fs::File::create(&console).map_err(Error::io("creating", &console))?;
        let log2 = log.try_clone().map_err(Error::io("opening", &console))?;

        // setsid --fork: nspawn runs in a session of its own whose parent
        // is not this process, so it outlives us and nobody here must
        // reap it. The shell records its pid, then becomes nspawn.
        let mut c = Command::new("setsid");
        c.args(["--fork", "sh", "-c"])
            .arg(r#"echo $$ >"$0.new" && mv -f "$0.new" "$0" && exec "$@""#)
            .arg(&pid_file)
            .args(nspawn_args(name, &self.rootfs_dir(name), &record.bridge))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let status = c.status().await.map_err(|source| Error::Spawn {
            program: "setsid systemd-nspawn".into(),
            source,
        })?;
        if !status.success() {
            return Err(Error::Command {
                what: format!("starting container {name}"),
                status: status.to_string(),
                tail: tail(&console, CONSOLE_TAIL),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Some(pid) = read_pid(&pid_file) {
                break pid;
            }
            if Instant::now() > deadline {
                return Err(Error::BootFailed {
                    name: name.into(),
                    console_tail: tail(&console, CONSOLE_TAIL),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tracing::info!(container = name, nspawn_pid = pid, "booting");
        self.wait_ready(name, pid).await
    }

    async fn wait_ready(&self, name: &str, nspawn: u32) -> Result<(), Error> {
        let start = Instant::now();
        let mut state = String::from("(not asked yet)");
        loop {
            if !proc::alive(nspawn) {
                let _ = std::fs::remove_file(self.pid_file(name));
                return Err(Error::BootFailed {
                    name: name.into(),
                    console_tail: tail(&self.console_log(name), CONSOLE_TAIL),
                });
            }
            if let Some(leader) = leader_of(nspawn) {
                let asked = tokio::time::timeout(
                    Duration::from_secs(10),
                    nsenter(leader, &["systemctl", "is-system-running"]).output(),
                )
                .await;
                if let Ok(Ok(out)) = asked {
                    state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                    if state == "running" || state == "degraded" {
                        tracing::info!(
                            container = name,
                            state,
                            secs = start.elapsed().as_secs_f64(),
                            "booted"
                        );
                        return Ok(());
                    }
                }
            }
            if start.elapsed() > BOOT_TIMEOUT {
                return Err(Error::BootTimeout {
                    name: name.into(),
                    secs: BOOT_TIMEOUT.as_secs(),
                    state,
                    console_tail: tail(&self.console_log(name), CONSOLE_TAIL),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The running nspawn of `name`: the pid file's process, if it is alive
    /// and is that container's nspawn (pids are reused).
    fn nspawn_pid(&self, name: &str) -> Option<u32> {
        let pid = read_pid(&self.pid_file(name))?;
        let argv = proc::cmdline(pid);
        let ours = argv.iter().any(|a| a.ends_with("systemd-nspawn"))
            && argv.iter().any(|a| *a == format!("--machine={name}"));
        (proc::alive(pid) && ours).then_some(pid)
    }

    /// Runs `argv` inside the container as root, in all its namespaces,
    /// with a clean environment. A command that fails is an `Output` with
    /// its status, not an error.
    pub async fn exec(&self, name: &str, argv: &[&str]) -> Result<Output, Error> {
        if argv.is_empty() {
            return Err(Error::InvalidSpec {
                name: name.into(),
                reason: "exec needs a command".into(),
            });
        }
        let leader_pid = match self.state(name).await? {
            ContainerState::Running { leader_pid } => leader_pid,
            ContainerState::Missing => return Err(Error::NotFound { name: name.into() }),
            _ => return Err(Error::NotRunning { name: name.into() }),
        };
        nsenter(leader_pid, argv)
            .output()
            .await
            .map_err(|source| Error::Spawn {
                program: format!("nsenter into {name}"),
                source,
            })
    }

    /// Powers the container off through its init, killing it if that takes
    /// longer than a minute. Stopping a stopped container does nothing.
    pub async fn stop(&self, name: &str) -> Result<(), Error> {
        let _guard = self.lock(name).await;
        self.read_record(name)?;
        self.stop_locked(name).await
    }

    async fn stop_locked(&self, name: &str) -> Result<(), Error> {
        let Some(nspawn) = self.nspawn_pid(name) else {
            let _ = std::fs::remove_file(self.pid_file(name));
            return Ok(());
        };
        match leader_of(nspawn) {
            // systemd's "poweroff" signal; nspawn exits when its init does.
            Some(leader) => {
                proc::signal(leader, libc::SIGRTMIN() + 4);
            }
            // Still setting up: nspawn passes a clean stop on to its init.
            None => {
                proc::signal(nspawn, libc::SIGTERM);
            }
        }
        if !wait_exit(nspawn, POWEROFF_TIMEOUT).await {
            tracing::warn!(container = name, "no clean poweroff; killing it");
            // SIGKILL to a PID namespace's init kills the whole namespace.
            if let Some(leader) = leader_of(nspawn) {
                proc::signal(leader, libc::SIGKILL);
            }
            if !wait_exit(nspawn, Duration::from_secs(10)).await {
                proc::signal(nspawn, libc::SIGKILL);
                wait_exit(nspawn, Duration::from_secs(10)).await;
            }
        }
        let _ = std::fs::remove_file(self.pid_file(name));
        tracing::info!(container = name, "stopped");
        Ok(())
    }

    /// Stops the container and removes it. Destroying a missing container
    /// does nothing.
    pub async fn destroy(&self, name: &str) -> Result<(), Error> {
        validate_name(name)?;
        let _guard = self.lock(name).await;
        self.stop_locked(name).await?;
        remove_tree(&self.state_dir.join(format!(".{name}.partial")))?;
        let dir = self.dir(name);
        let dir2 = dir.clone();
        tokio::task::spawn_blocking(move || remove_tree(&dir2))
            .await
            .expect("remove task panicked")?;
        if dir.exists() {
            return Err(Error::io("removing", dir)(std::io::Error::from(
                std::io::ErrorKind::DirectoryNotEmpty,
            )));
        }
        tracing::info!(container = name, "destroyed");
        Ok(())
    }

    pub async fn state(&self, name: &str) -> Result<ContainerState, Error> {
        match self.read_record(name) {
            Err(Error::NotFound { .. }) => return Ok(ContainerState::Missing),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let Some(nspawn) = self.nspawn_pid(name) else {
            return Ok(ContainerState::Stopped);
        };
        // The container's init appears moments after nspawn.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(leader_pid) = leader_of(nspawn) {
                return Ok(ContainerState::Running { leader_pid });
            }
            if !proc::alive(nspawn) {
                return Ok(ContainerState::Stopped);
            }
            if Instant::now() > deadline {
                return Ok(ContainerState::Starting);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The names of the containers, sorted.
    pub async fn list(&self) -> Result<Vec<String>, Error> {
        let entries = match std::fs::read_dir(&self.state_dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            r => r.map_err(Error::io("listing", &self.state_dir))?,
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| validate_name(n).is_ok() && self.dir(n).join("spec.json").is_file())
            .collect();
        names.sort();
        Ok(names)
    }
}

fn nspawn_args(name: &str, rootfs: &Path, bridge: &str) -> Vec<String> {
    vec![
        "systemd-nspawn".into(),
        "--boot".into(),
        // The host has no systemd (no machined, no scope units to make).
        "--register=no".into(),
        "--keep-unit".into(),
        format!("--machine={name}"),
        format!("--directory={}", rootfs.display()),
        format!("--network-bridge={bridge}"),
        // The container's own files, written at create, stay as they are.
        "--resolv-conf=off".into(),
        "--timezone=off".into(),
        "--link-journal=no".into(),
        // Console output goes to stdout (console.log); nothing reads input.
        "--console=read-only".into(),
    ]
}

/// `nsenter` into the namespaces and root of the container whose init is
/// `leader`.
fn nsenter(leader: u32, argv: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--target={leader}"))
        .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup"])
        .args(["--root", "--wd", "--"])
        .args(argv)
        .env_clear()
        .envs(EXEC_ENV.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// The container's PID 1: the child of nspawn that lives in another PID
/// namespace (nspawn's first child, still setting up, shares nspawn's).
fn leader_of(nspawn: u32) -> Option<u32> {
    let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let own = ns(nspawn)?;
    proc::children(nspawn)
        .into_iter()
        .find(|c| ns(*c).is_some_and(|n| n != own))
}

fn read_pid(path: &Path) -> Option<u32> {
    let mut s = String::new();
    std::fs::File::open(path)
        .ok()?
        .read_to_string(&mut s)
        .ok()?;
    s.trim().parse().ok()
}

async fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while proc::alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

async fn run(c: &mut Command, what: &str) -> Result<(), Error> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| Error::Spawn {
            program: what.to_owned(),
            source,
        })?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = text.lines().collect();
        return Err(Error::Command {
            what: what.to_owned(),
            status: out.status.to_string(),
            tail: lines[lines.len().saturating_sub(20)..].join("\n"),
        });
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("removing", dir)(e)),
        _ => Ok(()),
    }
}

/// Writes the container's identity, network, keys, files and units into
/// its unpacked root filesystem.
fn configure(root: &Path, spec: &ContainerSpec) -> Result<(), Error> {
    // A machine id of its own (the image's is empty); systemd would make a
    // new one every boot otherwise.
    let mut id = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .map_err(Error::io("reading", "/dev/urandom"))?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    write_in_root(root, "/etc/machine-id", format!("{id}\n").as_bytes(), 0o444)?;

    for f in spec.base_files().iter().chain(&spec.files) {
        write_in_root(root, &f.path, &f.contents, f.mode)?;
    }
    if !spec.authorized_keys.is_empty() {
        let ssh = host_path(root, "/root/.ssh")?;
        std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(Error::io("setting the mode of", &ssh))?;
    }
    for unit in &spec.enable_units {
        let file = unit_file(root, unit).ok_or_else(|| Error::MissingInRootfs {
            name: spec.name.clone(),
            what: format!("unit {unit}"),
        })?;
        symlink_in_root(
            root,
            &format!("/etc/systemd/system/multi-user.target.wants/{unit}"),
            &file,
        )?;
    }
    Ok(())
}

/// The unit file (a path inside the container) that `unit` is an instance
/// of or is.
fn unit_file(root: &Path, unit: &str) -> Option<String> {
    let template = match unit.split_once('@') {
        Some((prefix, rest)) if !rest.starts_with('.') => {
            let suffix = &rest[rest.rfind('.')?..];
            Some(format!("{prefix}@{suffix}"))
        }
        _ => None,
    };
    let dirs = [
        "/etc/systemd/system",
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
    ];
    std::iter::once(unit.to_owned())
        .chain(template)
        .flat_map(|u| dirs.iter().map(move |d| format!("{d}/{u}")))
        .find(|p| host_path(root, p).is_ok_and(|h| h.exists()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_files_and_templates() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("usr/lib/systemd/system")).unwrap();
        std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::fs::write(root.join("usr/lib/systemd/system/ssh.service"), "").unwrap();
        std::fs::write(root.join("usr/lib/systemd/system/getty@.service"), "").unwrap();
        std::fs::write(root.join("etc/systemd/system/mine.service"), "").unwrap();
        assert_eq!(
            unit_file(root, "ssh.service").as_deref(),
            Some("/lib/systemd/system/ssh.service")
        );
        assert_eq!(
            unit_file(root, "getty@tty1.service").as_deref(),
            Some("/lib/systemd/system/getty@.service")
        );
        assert_eq!(
            unit_file(root, "mine.service").as_deref(),
            Some("/etc/systemd/system/mine.service")
        );
        assert_eq!(unit_file(root, "nope.service"), None);
    }

    #[test]
    fn record_compares_files_by_content() {
        let mut a = crate::spec::tests::spec();
        let b = a.clone();
        assert_eq!(Record::of(&a), Record::of(&b));
        a.files[0].contents.push(b'x');
        assert_ne!(Record::of(&a), Record::of(&b));
    }

    #[tokio::test]
    async fn missing_containers() {
        let t = tempfile::tempdir().unwrap();
        let c = Containers::new(t.path().join("state"));
        assert_eq!(c.list().await.unwrap(), Vec::<String>::new());
        assert_eq!(c.state("a").await.unwrap(), ContainerState::Missing);
        c.destroy("a").await.unwrap();
        assert!(matches!(
            c.start("a").await.unwrap_err(),
            Error::NotFound { .. }
        ));
        let e = c.exec("a", &["true"]).await.unwrap_err().to_string();
        assert_eq!(e, "container a does not exist");
        assert!(c.state("A/..").await.is_err());
    }
}
