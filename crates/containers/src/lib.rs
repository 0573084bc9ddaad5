//! Container machines for the `containers` provider: systemd-nspawn
//! containers booting systemd from a cached Debian root filesystem, each
//! with a static address on a host bridge.
//!
//! [`ensure_rootfs`] builds the root filesystem once (debootstrap) and
//! caches it as a tarball keyed by its recipe. [`Containers`] unpacks a copy
//! per container under its state directory, configures it before first
//! boot (hostname, systemd-networkd for `host0`, resolv.conf, keys, files,
//! units) and runs `systemd-nspawn --boot` detached, so containers outlive
//! the process that started them; everything it knows is on disk (a pid
//! file per container), so a new [`Containers`] on the same directory
//! finds running containers again. The host needs no systemd as PID 1.
//!
//! Packages: the image carries no package lists (they go stale within
//! weeks), so run `apt-get update` in a container before installing; debconf
//! is non-interactive and dpkg keeps changed configuration files, so
//! installs need no terminal. An APT proxy is per container
//! ([`apt_proxy_file`] in [`ContainerSpec::files`]), not baked into the
//! cached image: it says where packages come from, not what the image holds.
//!
//! The pure parts — name and spec validation, the files written into a
//! container, the cache key — are in `spec` and `rootfs`; the I/O is in
//! `machine` and `rootfs::ensure_rootfs`.

mod bridge;
mod fsutil;
mod machine;
mod proc;
mod rootfs;
mod spec;

use std::path::PathBuf;

pub use bridge::{
    bridge_plan, ensure_host_bridge, nameservers, BridgePlan, HostNetwork, HOST_BRIDGE,
};
pub use machine::{ContainerState, Containers};
pub use rootfs::{ensure_rootfs, ensure_rootfs_with, rootfs_key, RootfsSpec, BASE_PACKAGES};
pub use spec::{
    apt_proxy_file, networkd_file, validate_name, ContainerSpec, InjectedFile, NETWORKD_FILE,
};

/// Everything kumo-containers can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid container name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("container {name}: invalid spec: {reason}")]
    InvalidSpec { name: String, reason: String },
    #[error("container {name} does not exist")]
    NotFound { name: String },
    #[error("container {name} exists with a different spec (destroy it first)")]
    SpecMismatch { name: String },
    #[error("bridge {bridge}: {reason}")]
    Bridge { bridge: String, reason: String },
    #[error("container {name}: bridge {bridge} does not exist on this host")]
    NoBridge { name: String, bridge: String },
    #[error("container {name}: {what} not found in its root filesystem")]
    MissingInRootfs { name: String, what: String },
    #[error(
        "not enough free space in {} for {what}: {free_mib} MiB free, about {need_mib} MiB needed",
        path.display()
    )]
    NoSpace {
        path: PathBuf,
        what: String,
        free_mib: u64,
        need_mib: u64,
    },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}); last output:\n{tail}")]
    Command {
        what: String,
        status: String,
        tail: String,
    },
    #[error("container {name} is not running")]
    NotRunning { name: String },
    #[error("container {name} exited while booting; console.log ends:\n{console_tail}")]
    BootFailed { name: String, console_tail: String },
    #[error(
        "container {name} did not finish booting within {secs} s (systemd says {state:?}); \
         console.log ends:\n{console_tail}"
    )]
    BootTimeout {
        name: String,
        secs: u64,
        state: String,
        console_tail: String,
    },
}

impl Error {
    fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}
