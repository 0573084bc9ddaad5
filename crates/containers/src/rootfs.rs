//! The cached root filesystem containers are unpacked from.

use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil::{ensure_free_space, symlink_in_root, tail, write_in_root};
use crate::Error;

/// What a container machine needs on top of debootstrap's minbase: systemd
/// as init with networkd, the tools a charm's hooks expect, and OpenSSH.
pub const BASE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "iputils-ping",
    "ca-certificates",
    "curl",
    "netbase",
    "procps",
    "openssh-server",
    "sudo",
];

/// Bumped when the build steps change in a way the key cannot see.
const RECIPE_VERSION: u32 = 1;

/// Installs and package scripts inside a container run without a terminal
/// (through `exec`): debconf asks nothing, dpkg keeps changed
/// configuration files without asking, downloads retry.
const DEBCONF: &str = "debconf debconf/frontend select Noninteractive\n";

/// How a root filesystem is made. The APT proxy is used while building but
/// is not part of the result (nor of the cache key): containers get theirs
/// through [`crate::apt_proxy_file`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsSpec {
    pub suite: String,
    pub mirror: String,
    pub extra_packages: Vec<String>,
    pub apt_proxy: Option<String>,
}

impl RootfsSpec {
    pub fn bookworm() -> Self {
        RootfsSpec {
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            extra_packages: vec![],
            apt_proxy: None,
        }
    }

    /// [`BASE_PACKAGES`] and the extra ones, sorted, once each.
    pub fn packages(&self) -> Vec<String> {
        let mut all: Vec<String> = BASE_PACKAGES.iter().map(|p| p.to_string()).collect();
        all.extend(self.extra_packages.iter().cloned());
        all.sort();
        all.dedup();
        all
    }

    fn validate(&self) -> Result<(), Error> {
        let word = |s: &str| {
            !s.is_empty()
                && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-._:".contains(c))
        };
        let bad = |what: String| Error::InvalidSpec {
            name: format!("rootfs {}", self.suite),
            reason: what,
        };
        if !word(&self.suite) {
            return Err(bad(format!("{:?} is not a suite name", self.suite)));
        }
        if let Some(p) = self.extra_packages.iter().find(|p| !word(p)) {
            return Err(bad(format!("{p:?} is not a package name")));
        }
        if !(self.mirror.starts_with("http://") || self.mirror.starts_with("https://"))
            || self.mirror.contains(char::is_whitespace)
        {
            return Err(bad(format!(
                "mirror {:?} is not an http(s) URL",
                self.mirror
            )));
        }
        Ok(())
    }
}

impl Default for RootfsSpec {
    fn default() -> Self {
        Self::bookworm()
    }
}

/// A file baked into the cached root filesystem.
struct BakedFile {
    path: &'static str,
    text: String,
    mode: u32,
}

fn baked_files(spec: &RootfsSpec) -> Vec<BakedFile> {
    let mirror = spec.mirror.trim_end_matches('/');
    let suite = &spec.suite;
    let mut sources = format!("deb {mirror} {suite} main\ndeb {mirror} {suite}-updates main\n");
    // Security updates live on their own host; a private mirror's users
    // add their own mirror of it through a container file.
    if mirror == "http://deb.debian.org/debian" {
        sources.push_str(&format!(
            "deb http://deb.debian.org/debian-security {suite}-security main\n"
        ));
    }
    vec![
        BakedFile {
            path: "/etc/apt/sources.list",
            text: sources,
            mode: 0o644,
        },
        BakedFile {
            path: "/etc/apt/apt.conf.d/90kumo-container",
            text: "// kumo-containers: packages are installed without a terminal.\n\
                   Dpkg::Options { \"--force-confdef\"; \"--force-confold\"; };\n\
                   Dpkg::Use-Pty \"0\";\n\
                   Acquire::Retries \"3\";\n"
                .into(),
            mode: 0o644,
        },
        // The image carries no host keys (every container would share
        // them); each container makes its own on first boot.
        BakedFile {
            path: "/etc/systemd/system/kumo-ssh-keygen.service",
            text: "[Unit]\n\
                   Description=OpenSSH host keys for this container\n\
                   Before=ssh.service\n\
                   ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n\
                   [Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n\n\
                   [Install]\nWantedBy=multi-user.target\n"
                .into(),
            mode: 0o644,
        },
        // Services ordered after network-online.target wait for host0's
        // static address, but a missing link never holds the boot for
        // more than 30 s (the default waits for every link, for 2 min).
        BakedFile {
            path: "/etc/systemd/system/systemd-networkd-wait-online.service.d/kumo.conf",
            text: "[Service]\nExecStart=\n\
                   ExecStart=/lib/systemd/systemd-networkd-wait-online --interface=host0 --timeout=30\n"
                .into(),
            mode: 0o644,
        },
    ]
}

/// Unit symlinks made in the cached root filesystem: (link, target).
const ENABLED: &[(&str, &str)] = &[
    (
        "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        "/lib/systemd/system/systemd-networkd.service",
    ),
    (
        "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
        "/lib/systemd/system/systemd-networkd.socket",
    ),
    (
        "/etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service",
        "/lib/systemd/system/systemd-networkd-wait-online.service",
    ),
    (
        "/etc/systemd/system/multi-user.target.wants/kumo-ssh-keygen.service",
        "/etc/systemd/system/kumo-ssh-keygen.service",
    ),
];

/// The cache key of a root filesystem: a hash of everything that goes into
/// it — recipe version, suite, mirror, packages (order and repeats do not
/// matter), and every file and link baked in — but not the APT proxy,
/// which changes where packages come from, not what they are. Pure.
pub fn rootfs_key(spec: &RootfsSpec) -> String {
    let mut text = format!(
        "kumo-containers rootfs\nrecipe {RECIPE_VERSION}\nsuite {}\nmirror {}\npackages {}\n\
         debconf {DEBCONF}",
        spec.suite,
        spec.mirror.trim_end_matches('/'),
        spec.packages().join(" "),
    );
    for f in baked_files(spec) {
        let _ = write!(
            text,
            "file {} {:o} {}\n{}",
            f.path,
            f.mode,
            f.text.len(),
            f.text
        );
    }
    for (link, target) in ENABLED {
        let _ = writeln!(text, "link {link} {target}");
    }
    format!("{:x}", Sha256::digest(text.as_bytes()))[..16].to_owned()
}

/// Builds the root filesystem `spec` describes unless it is cached, and
/// returns the tarball's path: `<cache_dir>/rootfs-<key>.tar.zst` (`.tar`
/// when the host has no zstd). Progress goes to `tracing`.
pub async fn ensure_rootfs(cache_dir: &Path, spec: &RootfsSpec) -> Result<PathBuf, Error> {
    ensure_rootfs_with(cache_dir, spec, |_| {}).await
}

/// [`ensure_rootfs`], also handing each progress line to `progress`.
pub async fn ensure_rootfs_with(
    cache_dir: &Path,
    spec: &RootfsSpec,
    progress: impl Fn(&str) + Send + 'static,
) -> Result<PathBuf, Error> {
    spec.validate()?;
    let cache_dir = cache_dir.to_owned();
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || {
        let say = |line: &str| {
            tracing::info!("{line}");
            progress(line);
        };
        build_blocking(&cache_dir, &spec, &say)
    })
    .await
    .expect("rootfs build task panicked")
}

fn has_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

fn build_blocking(
    cache_dir: &Path,
    spec: &RootfsSpec,
    say: &dyn Fn(&str),
) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(cache_dir).map_err(Error::io("creating", cache_dir))?;
    // debootstrap wants an absolute target.
    let cache = std::fs::canonicalize(cache_dir).map_err(Error::io("resolving", cache_dir))?;
    let key = rootfs_key(spec);
    let candidates = [
        cache.join(format!("rootfs-{key}.tar.zst")),
        cache.join(format!("rootfs-{key}.tar")),
    ];
    let cached = || candidates.iter().find(|p| p.is_file()).cloned();
    if let Some(p) = cached() {
        return Ok(p);
    }
    // One build per key, across processes; the loser finds the cache.
    let lock_path = cache.join(format!("rootfs-{key}.lock"));
    let lock = File::create(&lock_path).map_err(Error::io("creating", &lock_path))?;
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::io("locking", &lock_path)(
            std::io::Error::last_os_error(),
        ));
    }
    if let Some(p) = cached() {
        return Ok(p);
    }
    let zstd = has_program("zstd");
    let tarball = candidates[if zstd { 0 } else { 1 }].clone();

    // debootstrap's tree (~400 MiB), its downloads and the tarball.
    ensure_free_space(&cache, 1536 << 20, "a container root filesystem")?;
    let work = cache.join(format!("rootfs-{key}.partial"));
    remove_dir(&work)?;
    let root = work.join("root");
    std::fs::create_dir_all(&root).map_err(Error::io("creating", &root))?;
    let debs = cache.join("debs");
    std::fs::create_dir_all(debs.join("partial")).map_err(Error::io("creating", &debs))?;
    let log = cache.join(format!("rootfs-{key}.log"));

    let packages = spec.packages();
    say(&format!(
        "kumo-containers: building the {} root filesystem {key} from {} (a few minutes; log: {})",
        spec.suite,
        spec.mirror,
        log.display()
    ));
    let step = Instant::now();
    // A private mount namespace: debootstrap's /proc and /sys mounts in
    // the tree vanish with it, even when it is killed, so removing an
    // interrupted tree never reaches into the host's.
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "debootstrap"])
        .args(["--variant=minbase", "--components=main"])
        .arg(format!("--include={}", packages.join(",")))
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(&spec.suite)
        .arg(&root)
        .arg(&spec.mirror);
    if let Some(proxy) = &spec.apt_proxy {
        c.env("http_proxy", proxy);
    }
    run_logged(&mut c, "debootstrap", &log, None)?;
    say(&format!(
        "kumo-containers:   debootstrap: {:.0} s",
        step.elapsed().as_secs_f64()
    ));

    for f in baked_files(spec) {
        write_in_root(&root, f.path, f.text.as_bytes(), f.mode)?;
    }
    for (link, target) in ENABLED {
        symlink_in_root(&root, link, target)?;
    }
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "chroot"])
        .arg(&root)
        .arg("debconf-set-selections");
    run_logged(&mut c, "debconf-set-selections", &log, Some(DEBCONF))?;
    generalize(&root)?;

    let step = Instant::now();
    let partial = PathBuf::from(format!("{}.partial", tarball.display()));
    let mut c = Command::new("tar");
    c.arg("--create");
    if zstd {
        c.arg("--zstd");
    }
    // --xattrs keeps file capabilities (ping's cap_net_raw); numeric
    // owners since the host's user names are not the tree's.
    c.args(["--numeric-owner", "--xattrs", "--xattrs-include=*"])
        .args(["--one-file-system", "-f"])
        .arg(&partial)
        .arg("-C")
        .arg(&root)
        .arg(".");
    run_logged(&mut c, "tar", &log, None)?;
    std::fs::rename(&partial, &tarball).map_err(Error::io("renaming", &partial))?;
    remove_dir(&work)?;
    let size = std::fs::metadata(&tarball).map(|m| m.len()).unwrap_or(0);
    say(&format!(
        "kumo-containers:   packed {} ({} MiB) in {:.0} s",
        tarball.display(),
        size >> 20,
        step.elapsed().as_secs_f64()
    ));
    Ok(tarball)
}

/// Runs `c` with its output appended to `log`; a failure carries the log's tail.
fn run_logged(c: &mut Command, what: &str, log: &Path, input: Option<&str>) -> Result<(), Error> {
    use std::io::Write;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(Error::io("opening", log))?;
    let err = out.try_clone().map_err(Error::io("opening", log))?;
    c.stdout(out).stderr(err);
    c.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = c.spawn().map_err(|source| Error::Spawn {
        program: what.to_owned(),
        source,
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| Error::Spawn {
                program: what.to_owned(),
                source,
            })?;
    }
    let status = child.wait().map_err(|source| Error::Spawn {
        program: what.to_owned(),
        source,
    })?;
    if !status.success() {
        return Err(Error::Command {
            what: format!("{what} (log: {})", log.display()),
            status: status.to_string(),
            tail: tail(log, 20),
        });
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("removing", dir)(e)),
        _ => Ok(()),
    }
}

/// Removes what makes the tree one machine rather than an image: identity,
/// host keys, stale package lists, downloads and logs.
fn generalize(root: &Path) -> Result<(), Error> {
    // Empty, not absent: each container gets its own id at create.
    write_in_root(root, "/etc/machine-id", b"", 0o444)?;
    for f in ["var/lib/dbus/machine-id", "var/lib/systemd/random-seed"] {
        let _ = std::fs::remove_file(root.join(f));
    }
    remove_matching(&root.join("etc/ssh"), |n| n.starts_with("ssh_host_"))?;
    // Lists go stale within weeks (a 404 on the next point release), and
    // are large: containers run `apt-get update` before installing.
    remove_matching(&root.join("var/lib/apt/lists"), |n| {
        n != "lock" && n != "partial" && n != "auxfiles"
    })?;
    remove_matching(&root.join("var/cache/apt/archives"), |n| {
        n.ends_with(".deb")
    })?;
    remove_matching(&root.join("var/cache/apt"), |n| n.ends_with(".bin"))?;
    remove_matching(&root.join("tmp"), |_| true)?;
    remove_matching(&root.join("var/tmp"), |_| true)?;
    empty_logs(&root.join("var/log"))
}

fn remove_matching(dir: &Path, doomed: impl Fn(&str) -> bool) -> Result<(), Error> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !doomed(&name) {
            continue;
        }
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        }
        .map_err(Error::io("removing", &p))?;
    }
    Ok(())
}

/// The build's logs say nothing about a container; directories stay,
/// since services expect them.
fn empty_logs(dir: &Path) -> Result<(), Error> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_symlink() {
            continue;
        } else if p.is_dir() {
            empty_logs(&p)?;
        } else {
            std::fs::remove_file(&p).map_err(Error::io("removing", &p))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_covers_the_recipe_but_not_the_proxy() {
        let base = RootfsSpec::bookworm();
        let k = rootfs_key(&base);
        assert_eq!(k.len(), 16);
        assert!(k.chars().all(|c| c.is_ascii_hexdigit()));

        let mut same = base.clone();
        same.apt_proxy = Some("http://10.0.0.1:8000".into());
        same.mirror.push('/');
        assert_eq!(rootfs_key(&same), k, "proxy and trailing slash");
        let mut same = base.clone();
        same.extra_packages = vec!["vim".into(), "curl".into(), "vim".into()];
        let mut reordered = base.clone();
        reordered.extra_packages = vec!["vim".into()];
        assert_eq!(rootfs_key(&same), rootfs_key(&reordered), "order, repeats");

        for change in [
            |s: &mut RootfsSpec| s.suite = "trixie".into(),
            |s: &mut RootfsSpec| s.mirror = "http://mirror.example/debian".into(),
            |s: &mut RootfsSpec| s.extra_packages = vec!["mariadb-server".into()],
        ] {
            let mut s = base.clone();
            change(&mut s);
            assert_ne!(rootfs_key(&s), k, "{s:?}");
        }
        // A base package named again changes nothing.
        let mut s = base.clone();
        s.extra_packages = vec!["curl".into()];
        assert_eq!(rootfs_key(&s), k);
    }

    #[test]
    fn security_updates_only_from_debian() {
        let text = |s: &RootfsSpec| baked_files(s).remove(0).text;
        assert_eq!(
            text(&RootfsSpec::bookworm()),
            "deb http://deb.debian.org/debian bookworm main\n\
             deb http://deb.debian.org/debian bookworm-updates main\n\
             deb http://deb.debian.org/debian-security bookworm-security main\n"
        );
        let mut m = RootfsSpec::bookworm();
        m.mirror = "http://mirror.example/debian/".into();
        assert!(!text(&m).contains("security"));
    }

    #[test]
    fn specs_are_checked() {
        let mut s = RootfsSpec::bookworm();
        s.extra_packages = vec!["a b".into()];
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("\"a b\" is not a package name"));
        let mut s = RootfsSpec::bookworm();
        s.mirror = "ftp://x".into();
        assert!(s.validate().is_err());
        RootfsSpec::bookworm().validate().unwrap();
    }
}
