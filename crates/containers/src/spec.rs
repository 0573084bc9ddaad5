//! What a container is made of, and the files that make it so: pure.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Where the static network configuration goes. It sorts before systemd's
/// own `80-container-host0.network` (DHCP), and networkd uses the first
/// file that matches a link.
pub const NETWORKD_FILE: &str = "/etc/systemd/network/10-kumo-host0.network";

/// One container machine, as [`crate::Containers::create`] makes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The machine name: `[a-z0-9-]`, at most 60 characters.
    pub name: String,
    pub hostname: String,
    /// The tarball from [`crate::ensure_rootfs`].
    pub rootfs: PathBuf,
    /// An existing Linux bridge on the host; the container's `host0` is
    /// the other end of a veth pair on it.
    pub bridge: String,
    /// The container's address on the bridge, in CIDR form (`10.248.0.50/24`).
    pub address: String,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
    /// Written into the root filesystem before first boot, after kumo's
    /// own files (so they may replace them).
    pub files: Vec<InjectedFile>,
    /// systemd units enabled (wanted by `multi-user.target`) before first
    /// boot; their unit files must be in the root filesystem or `files`.
    pub enable_units: Vec<String>,
    /// OpenSSH public keys for root.
    pub authorized_keys: Vec<String>,
}

/// A file written into a container's root filesystem before first boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectedFile {
    /// Absolute path inside the container.
    pub path: String,
    pub contents: Vec<u8>,
    /// Permission bits, e.g. `0o644`.
    pub mode: u32,
}

impl InjectedFile {
    pub fn new(path: impl Into<String>, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        InjectedFile {
            path: path.into(),
            contents: contents.into(),
            mode,
        }
    }
}

/// The APT proxy setting for a container (`/etc/apt/apt.conf.d/01proxy`),
/// to put in [`ContainerSpec::files`]. It belongs to the container rather
/// than the cached root filesystem: the proxy says where packages come
/// from, not what the filesystem holds, so it must not re-key the cache.
pub fn apt_proxy_file(url: &str) -> InjectedFile {
    InjectedFile::new(
        "/etc/apt/apt.conf.d/01proxy",
        format!("Acquire::http::Proxy \"{url}\";\n"),
        0o644,
    )
}

/// Checks a container name: `[a-z0-9-]`, at most 60 characters, starting
/// with a letter or digit (it becomes a directory, a machine name and part
/// of nspawn's arguments).
pub fn validate_name(name: &str) -> Result<(), Error> {
    let bad = |reason: &str| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 60 {
        return bad("longer than 60 characters");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return bad(&format!("{c:?} is not one of a-z, 0-9 and -"));
    }
    if name.starts_with('-') {
        return bad("starts with -");
    }
    Ok(())
}

/// `10.0.0.5/24` → (address, prefix).
fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// An absolute path with plain components only (no `.`, `..` or `//`).
pub(crate) fn valid_inner_path(p: &str) -> bool {
    p.len() > 1
        && p.starts_with('/')
        && p[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

impl ContainerSpec {
    /// Checks everything that can be checked without the host.
    pub fn validate(&self) -> Result<(), Error> {
        validate_name(&self.name)?;
        let bad = |reason: String| {
            Err(Error::InvalidSpec {
                name: self.name.clone(),
                reason,
            })
        };
        if !valid_hostname(&self.hostname) {
            return bad(format!("hostname {:?} is not a host name", self.hostname));
        }
        // IFNAMSIZ: 15 characters and a NUL.
        if self.bridge.is_empty()
            || self.bridge.len() > 15
            || self
                .bridge
                .chars()
                .any(|c| c == '/' || c.is_whitespace() || c == ':')
        {
            return bad(format!("bridge {:?} is not an interface name", self.bridge));
        }
        if parse_cidr(&self.address).is_none() {
            return bad(format!(
                "address {:?} is not an address with a prefix length (10.0.0.5/24)",
                self.address
            ));
        }
        for (what, a) in self
            .gateway
            .iter()
            .map(|g| ("gateway", g))
            .chain(self.dns.iter().map(|d| ("dns server", d)))
        {
            if a.parse::<IpAddr>().is_err() {
                return bad(format!("{what} {a:?} is not an IP address"));
            }
        }
        for f in &self.files {
            if !valid_inner_path(&f.path) {
                return bad(format!(
                    "file path {:?} is not an absolute path of plain components",
                    f.path
                ));
            }
            if f.mode > 0o7777 {
                return bad(format!("file {} has mode {:o}", f.path, f.mode));
            }
        }
        for u in &self.enable_units {
            let suffix_ok = [
                ".service", ".socket", ".timer", ".path", ".target", ".mount",
            ]
            .iter()
            .any(|s| u.ends_with(s));
            if !suffix_ok || u.contains('/') || u.starts_with('.') {
                return bad(format!("{u:?} is not a unit name"));
            }
        }
        if let Some(k) = self.authorized_keys.iter().find(|k| k.contains('\n')) {
            return bad(format!("authorized key {k:?} spans lines"));
        }
        Ok(())
    }

    /// The address without its prefix length.
    pub fn ip(&self) -> Option<IpAddr> {
        parse_cidr(&self.address).map(|(a, _)| a)
    }

    /// kumo's own files, written before [`ContainerSpec::files`]: identity,
    /// network, resolver and root's keys. Call on a validated spec.
    pub fn base_files(&self) -> Vec<InjectedFile> {
        let short = self.hostname.split('.').next().unwrap_or(&self.hostname);
        let names = if short == self.hostname {
            self.hostname.clone()
        } else {
            format!("{} {short}", self.hostname)
        };
        let ip = self.ip().map(|a| a.to_string()).unwrap_or_default();
        let hosts = format!(
            "127.0.0.1\tlocalhost\n{ip}\t{names}\n\
             ::1\t\tlocalhost ip6-localhost ip6-loopback\n\
             ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n"
        );
        // Static: the rootfs has no systemd-resolved, and nspawn is told
        // to leave the file alone.
        let mut resolv = String::from("# Written by kumo-containers.\n");
        for d in &self.dns {
            resolv.push_str(&format!("nameserver {d}\n"));
        }
        let mut files = vec![
            InjectedFile::new("/etc/hostname", format!("{}\n", self.hostname), 0o644),
            InjectedFile::new("/etc/hosts", hosts, 0o644),
            InjectedFile::new("/etc/resolv.conf", resolv, 0o644),
            InjectedFile::new(NETWORKD_FILE, networkd_file(self), 0o644),
        ];
        if !self.authorized_keys.is_empty() {
            let mut keys = self.authorized_keys.join("\n");
            keys.push('\n');
            files.push(InjectedFile::new("/root/.ssh/authorized_keys", keys, 0o600));
        }
        files
    }
}

/// systemd-networkd's configuration of the container's `host0`: the static
/// address, gateway and DNS servers, and no IPv6 autoconfiguration (which
/// would keep `systemd-networkd-wait-online` waiting for a router that
/// never answers).
pub fn networkd_file(spec: &ContainerSpec) -> String {
    let mut s = String::from(
        "# Written by kumo-containers: the static address on the host's bridge.\n\
         [Match]\nName=host0\n\n[Network]\n",
    );
    s.push_str(&format!("Address={}\n", spec.address));
    if let Some(g) = &spec.gateway {
        s.push_str(&format!("Gateway={g}\n"));
    }
    for d in &spec.dns {
        s.push_str(&format!("DNS={d}\n"));
    }
    s.push_str("LinkLocalAddressing=no\nIPv6AcceptRA=no\n");
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "kumo-m-default-1".into(),
            hostname: "juju-1.maas".into(),
            rootfs: "/var/cache/kumo/rootfs-0123.tar.zst".into(),
            bridge: "br-kumo".into(),
            address: "10.248.0.50/24".into(),
            gateway: Some("10.248.0.1".into()),
            dns: vec!["10.248.0.1".into(), "9.9.9.9".into()],
            files: vec![apt_proxy_file("http://10.248.0.1:8000")],
            enable_units: vec!["ssh.service".into()],
            authorized_keys: vec!["ssh-ed25519 AAAAC3Nza test@kumo".into()],
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "kumo-m-default-1", "0abc", &"x".repeat(60)] {
            validate_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("", "empty"),
            (&"x".repeat(61), "longer than 60"),
            ("Kumo", "'K' is not one of"),
            ("a_b", "'_' is not one of"),
            ("a.b", "'.' is not one of"),
            ("../x", "'.' is not one of"),
            ("-rf", "starts with -"),
        ] {
            let e = validate_name(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.starts_with("invalid container name"), "{e}");
        }
    }

    #[test]
    fn spec_validation_names_the_field() {
        spec().validate().unwrap();
        type Change = fn(&mut ContainerSpec);
        let cases: Vec<(Change, &str)> = vec![
            (|s| s.hostname = "a..b".into(), "hostname"),
            (|s| s.bridge = "a-bridge-name-too-long".into(), "bridge"),
            (|s| s.address = "10.248.0.50".into(), "address"),
            (|s| s.address = "10.248.0.50/33".into(), "address"),
            (|s| s.gateway = Some("gw".into()), "gateway \"gw\""),
            (|s| s.dns = vec!["1.1.1".into()], "dns server"),
            (
                |s| s.files = vec![InjectedFile::new("etc/x", "", 0o644)],
                "file path",
            ),
            (
                |s| s.files = vec![InjectedFile::new("/etc/../x", "", 0o644)],
                "file path",
            ),
            (
                |s| s.enable_units = vec!["../x.service".into()],
                "unit name",
            ),
            (|s| s.enable_units = vec!["ssh".into()], "unit name"),
            (|s| s.authorized_keys = vec!["a\nb".into()], "spans lines"),
        ];
        for (change, want) in cases {
            let mut s = spec();
            change(&mut s);
            let e = s.validate().unwrap_err().to_string();
            assert!(
                e.starts_with("container kumo-m-default-1: invalid spec"),
                "{e}"
            );
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }

    #[test]
    fn networkd_rendering() {
        insta::assert_snapshot!(networkd_file(&spec()), @r"
        # Written by kumo-containers: the static address on the host's bridge.
        [Match]
        Name=host0

        [Network]
        Address=10.248.0.50/24
        Gateway=10.248.0.1
        DNS=10.248.0.1
        DNS=9.9.9.9
        LinkLocalAddressing=no
        IPv6AcceptRA=no
        ");
        let mut bare = spec();
        bare.gateway = None;
        bare.dns.clear();
        insta::assert_snapshot!(networkd_file(&bare), @r"
        # Written by kumo-containers: the static address on the host's bridge.
        [Match]
        Name=host0

        [Network]
        Address=10.248.0.50/24
        LinkLocalAddressing=no
        IPv6AcceptRA=no
        ");
    }

    #[test]
    fn base_files() {
        let files = spec().base_files();
        let text = |p: &str| {
            let f = files.iter().find(|f| f.path == p).unwrap();
            String::from_utf8(f.contents.clone()).unwrap()
        };
        assert_eq!(text("/etc/hostname"), "juju-1.maas\n");
        assert!(text("/etc/hosts").contains("10.248.0.50\tjuju-1.maas juju-1\n"));
        assert_eq!(
            text("/etc/resolv.conf"),
            "# Written by kumo-containers.\nnameserver 10.248.0.1\nnameserver 9.9.9.9\n"
        );
        let keys = files
            .iter()
            .find(|f| f.path == "/root/.ssh/authorized_keys")
            .unwrap();
        assert_eq!(keys.mode, 0o600);
        assert_eq!(
            apt_proxy_file("http://p:8000").contents,
            b"Acquire::http::Proxy \"http://p:8000\";\n"
        );
    }
}
