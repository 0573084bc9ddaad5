//! Real DHCP clients against the real server, in private network namespaces.
//!
//! Each test builds `kdhcp-srv-<pid>-<tag>` (server side of a veth pair,
//! `dhcp0`, 10.214.0.1/24) and `kdhcp-cli-<pid>-<tag>` (client side,
//! `veth`, no address), runs [`kumo_dhcp::run`] on a thread that has
//! joined the server namespace, and runs ISC `dhclient` or busybox `udhcpc`
//! in the client namespace with a script that records what it was given.
//! The host's own interfaces are never touched. Needs root (CAP_NET_ADMIN)
//! and `bash scripts/deps-dhcp.sh`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kumo_dhcp::{BootConfig, HostReservation, ServerConfig, SubnetConfig};

mod support;

use support::{ip, require, ServerThread};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 214, 0, 1);
const HOST_MAC: &str = "52:54:00:21:40:10";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 214, 0, 10);
const RANGE: std::ops::RangeInclusive<Ipv4Addr> =
    Ipv4Addr::new(10, 214, 0, 100)..=Ipv4Addr::new(10, 214, 0, 150);

fn config() -> ServerConfig {
    let mut c = ServerConfig::new(
        SERVER_IP,
        vec![SubnetConfig {
            network: Ipv4Addr::new(10, 214, 0, 0),
            prefix_len: 24,
            gateway: Some(SERVER_IP),
            dns_servers: vec![SERVER_IP],
            domain: Some("lab.internal".into()),
            dynamic_ranges: vec![RANGE],
            reserved_ranges: vec![],
            lease_secs: 600,
            hosts: vec![HostReservation {
                mac: HOST_MAC.parse().unwrap(),
                ip: HOST_IP,
                hostname: Some("node10".into()),
            }],
        }],
    );
    c.boot = Some(BootConfig {
        next_server: SERVER_IP,
        bios_file: "undionly.kpxe".into(),
        uefi_file: "snp.efi".into(),
        ipxe_script_url: "http://10.214.0.1:5248/ipxe/boot.ipxe".into(),
    });
    c
}

/// Two namespaces joined by a veth pair; deleted on drop, even on failure.
struct Lab {
    srv: String,
    cli: String,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let pid = std::process::id();
        let lab = Lab {
            srv: format!("kdhcp-srv-{pid}-{tag}"),
            cli: format!("kdhcp-cli-{pid}-{tag}"),
            dir: tempfile::tempdir().unwrap(),
        };
        for ns in [&lab.srv, &lab.cli] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", &lab.srv, "link", "add", "dhcp0", "type", "veth", "peer", "name", "veth",
            "netns", &lab.cli,
        ]);
        ip(&[
            "-n",
            &lab.srv,
            "addr",
            "add",
            "10.214.0.1/24",
            "dev",
            "dhcp0",
        ]);
        ip(&["-n", &lab.srv, "link", "set", "dhcp0", "up"]);
        ip(&["-n", &lab.cli, "link", "set", "veth", "up"]);
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn set_client_mac(&self, mac: &str) {
        ip(&["-n", &self.cli, "link", "set", "veth", "down"]);
        ip(&["-n", &self.cli, "link", "set", "veth", "address", mac]);
        ip(&["-n", &self.cli, "addr", "flush", "dev", "veth"]);
        ip(&["-n", &self.cli, "link", "set", "veth", "up"]);
    }

    fn start_server(&self) -> ServerThread {
        ServerThread::start(&self.srv, config(), self.path("leases.journal"))
    }

    /// A client process in the client namespace.
    fn spawn(&self, args: &[&str]) -> ChildGuard {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.cli])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
        ChildGuard(child)
    }

    /// Runs `dhclient` once with a fresh or existing lease file `lf` until
    /// it reports a lease; returns the script's record of it.
    fn dhclient(&self, lf: &str) -> Record {
        let log = self.path(&format!("{lf}.events"));
        let _ = std::fs::remove_file(&log);
        let script = self.script(
            &format!("{lf}.sh"),
            &format!(
                "echo \"$reason ip=$new_ip_address server=$new_dhcp_server_identifier file=$new_filename host=$new_host_name\" >> {}",
                log.display()
            ),
        );
        let lease_file = self.path(lf);
        let pid_file = self.path(&format!("{lf}.pid"));
        let _client = self.spawn(&[
            "dhclient",
            "-d",
            "-1",
            "-v",
            "-sf",
            script.to_str().unwrap(),
            "-lf",
            lease_file.to_str().unwrap(),
            "-pf",
            pid_file.to_str().unwrap(),
            "veth",
        ]);
        wait_for(&log, &["BOUND", "REBOOT", "RENEW"], "dhclient")
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\nexit 0\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A udhcpc script that configures the address (so unicast renewals
    /// work) and records each event.
    fn udhcpc_script(&self, log: &Path) -> PathBuf {
        self.script(
            "udhcpc.sh",
            &format!(
                r#"case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    echo "$1 ip=$ip server=$serverid file=$boot_file siaddr=$siaddr host=$hostname" >> {log} ;;
  deconfig) ip addr flush dev "$interface" ;;
esac"#,
                log = log.display()
            ),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.srv, &self.cli] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One line a client script wrote: event and `key=value` fields.
#[derive(Debug, Clone)]
struct Record {
    event: String,
    fields: Vec<(String, String)>,
}

impl Record {
    fn get(&self, key: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in {self:?}"))
    }

    fn ip(&self) -> Ipv4Addr {
        self.get("ip")
            .parse()
            .unwrap_or_else(|_| panic!("bad ip in {self:?}"))
    }
}

fn records(log: &Path) -> Vec<Record> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut parts = l.split(' ');
            let event = parts.next().unwrap_or_default().to_string();
            let fields = parts
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Record { event, fields }
        })
        .collect()
}

/// Waits (generously: clients back off between retries) for the first
/// record with one of `events`.
fn wait_for(log: &Path, events: &[&str], client: &str) -> Record {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(r) = records(log)
            .into_iter()
            .find(|r| events.contains(&r.event.as_str()))
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{client} got no lease ({events:?}); its events: {:?}",
            records(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Shown with `--nocapture`: what each client was actually given.
fn show(what: &str, r: &Record) {
    eprintln!("{what}: {} {:?}", r.event, r.fields);
}

#[test]
fn dhclient_gets_a_dynamic_address_and_reboots_into_it() {
    require("dhclient", "isc-dhcp-client");
    let lab = Lab::new("dhc");
    lab.set_client_mac("52:54:00:21:40:01");
    let server = lab.start_server();
    let first = lab.dhclient("a.leases");
    show("dhclient", &first);
    assert_eq!(first.event, "BOUND", "{first:?}");
    assert!(
        RANGE.contains(&first.ip()),
        "{first:?} outside the dynamic range"
    );
    assert_eq!(first.get("server"), "10.214.0.1");
    // dhclient is not booting: no boot file.
    assert_eq!(first.get("file"), "");
    // Run again with its lease file: INIT-REBOOT asks for the same address.
    let again = lab.dhclient("a.leases");
    show("dhclient again", &again);
    assert_eq!(again.event, "REBOOT", "{again:?}");
    assert_eq!(again.ip(), first.ip());
    server.stop();
}

#[test]
fn udhcpc_unknown_dynamic_known_host_static_with_pxe_and_renewal() {
    require("udhcpc", "udhcpc");
    let lab = Lab::new("udh");
    let server = lab.start_server();

    lab.set_client_mac("52:54:00:21:40:02");
    let log = lab.path("unknown.events");
    let script = lab.udhcpc_script(&log);
    let status = Command::new("ip")
        .args([
            "netns", "exec", &lab.cli, "udhcpc", "-f", "-q", "-n", "-t", "10", "-T", "2", "-i",
            "veth", "-s",
        ])
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "udhcpc found no lease: {:?}",
        records(&log)
    );
    let unknown = wait_for(&log, &["bound"], "udhcpc");
    show("udhcpc unknown", &unknown);
    assert!(
        RANGE.contains(&unknown.ip()),
        "{unknown:?} outside the dynamic range"
    );

    // The known host, booting like BIOS PXE firmware: static address, hostname, boot file.
    lab.set_client_mac(HOST_MAC);
    let log = lab.path("host.events");
    let script = lab.udhcpc_script(&log);
    let script = script.to_str().unwrap();
    let _client = lab.spawn(&[
        "udhcpc",
        "-f",
        "-t",
        "10",
        "-T",
        "2",
        "-i",
        "veth",
        "-V",
        "PXEClient:Arch:00000:UNDI:002001",
        "-x",
        "0x5d:0000",
        "-s",
        script,
    ]);
    let bound = wait_for(&log, &["bound"], "udhcpc");
    show("udhcpc known host", &bound);
    assert_eq!(bound.ip(), HOST_IP, "{bound:?}");
    assert_eq!(bound.get("host"), "node10");
    assert_eq!(bound.get("file"), "undionly.kpxe");
    assert_eq!(bound.get("siaddr"), "10.214.0.1");
    // SIGUSR1: renew now, a unicast REQUEST from the configured address.
    let pid = _client.0.id();
    // `ip netns exec` execs udhcpc in place, so the child's pid is udhcpc's.
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
    let renewed = wait_for(&log, &["renew"], "udhcpc renew");
    show("udhcpc renew", &renewed);
    assert_eq!(renewed.ip(), HOST_IP, "{renewed:?}");
    server.stop();
}

#[test]
fn restart_from_the_journal_keeps_the_lease() {
    require("dhclient", "isc-dhcp-client");
    let lab = Lab::new("rst");
    lab.set_client_mac("52:54:00:21:40:03");
    let server = lab.start_server();
    let first = lab.dhclient("first.leases");
    show("before restart", &first);
    let first = first.ip();
    server.stop();
    let journal = std::fs::read_to_string(lab.path("leases.journal")).unwrap();
    assert!(
        journal.contains("52:54:00:21:40:03") && journal.contains(&first.to_string()),
        "journal: {journal}"
    );

    let server = lab.start_server();
    // Another machine never gets the live lease...
    lab.set_client_mac("52:54:00:21:40:04");
    let other = lab.dhclient("other.leases");
    show("other mac after restart", &other);
    let other = other.ip();
    assert_ne!(
        other, first,
        "the restarted server handed a live lease to another MAC"
    );
    // ...and the owner, forgetting its own lease file, gets it back.
    lab.set_client_mac("52:54:00:21:40:03");
    let back = lab.dhclient("fresh.leases");
    show("owner after restart", &back);
    assert_eq!(back.event, "BOUND");
    assert_eq!(back.ip(), first);
    server.stop();
}
