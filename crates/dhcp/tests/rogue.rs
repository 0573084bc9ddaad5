//! Rogue DHCP detection against a real second server, in private network
//! namespaces.
//!
//! Each test builds `krog-rack-<pid>-<tag>` (the rack: `dhcp0`,
//! 10.215.0.1/24, where kumo's own server runs and the probe is sent from,
//! as on a real rack) and `krog-rogue-<pid>-<tag>` (`veth`, 10.215.0.2/24,
//! where `dnsmasq` plays the rogue), joined by a veth pair. The host's own
//! interfaces are never touched. Needs root (CAP_NET_ADMIN) and
//! `bash scripts/deps-dhcp.sh`.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kumo_dhcp::{MacAddr, RogueServer, ServerConfig, SubnetConfig};

mod support;

use support::{enter_netns, ip, require, ServerThread};

const RACK_IP: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 1);
const ROGUE_IP: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 2);
const KUMO_RANGE: std::ops::RangeInclusive<Ipv4Addr> =
    Ipv4Addr::new(10, 215, 0, 100)..=Ipv4Addr::new(10, 215, 0, 150);
const ROGUE_RANGE: std::ops::RangeInclusive<Ipv4Addr> =
    Ipv4Addr::new(10, 215, 0, 50)..=Ipv4Addr::new(10, 215, 0, 60);
/// Locally administered, as the rack's probe MAC must be.
const PROBE_MAC: MacAddr = MacAddr([0x02, 0x6b, 0x75, 0x6d, 0x6f, 0x01]);
/// Long enough for a server on a veth to answer, many times over.
const WAIT: Duration = Duration::from_secs(3);

fn kumo_config() -> ServerConfig {
    ServerConfig::new(
        RACK_IP,
        vec![SubnetConfig {
            network: Ipv4Addr::new(10, 215, 0, 0),
            prefix_len: 24,
            gateway: Some(RACK_IP),
            dns_servers: vec![RACK_IP],
            domain: None,
            dynamic_ranges: vec![KUMO_RANGE],
            reserved_ranges: vec![],
            lease_secs: 600,
            hosts: vec![],
        }],
    )
}

/// The rack and the rogue's namespaces on a veth pair; deleted on drop.
struct Lab {
    rack: String,
    rogue: String,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        require("ip", "iproute2");
        let pid = std::process::id();
        let lab = Lab {
            rack: format!("krog-rack-{pid}-{tag}"),
            rogue: format!("krog-rogue-{pid}-{tag}"),
            dir: tempfile::tempdir().unwrap(),
        };
        for ns in [&lab.rack, &lab.rogue] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", &lab.rack, "link", "add", "dhcp0", "type", "veth", "peer", "name", "veth",
            "netns", &lab.rogue,
        ]);
        ip(&[
            "-n",
            &lab.rack,
            "addr",
            "add",
            "10.215.0.1/24",
            "dev",
            "dhcp0",
        ]);
        ip(&[
            "-n",
            &lab.rogue,
            "addr",
            "add",
            "10.215.0.2/24",
            "dev",
            "veth",
        ]);
        ip(&["-n", &lab.rack, "link", "set", "dhcp0", "up"]);
        ip(&["-n", &lab.rogue, "link", "set", "veth", "up"]);
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// dnsmasq as a DHCP-only server (no DNS: port 0) in the rogue
    /// namespace, once it listens on port 67.
    fn start_dnsmasq(&self) -> Dnsmasq {
        require("dnsmasq", "dnsmasq-base");
        let range = format!(
            "{},{},255.255.255.0,10m",
            ROGUE_RANGE.start(),
            ROGUE_RANGE.end()
        );
        let leases = self.path("dnsmasq.leases");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.rogue, "dnsmasq"])
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--port=0",
                "--interface=veth",
                "--bind-interfaces",
                // Answer at once rather than ping the address first.
                "--no-ping",
                "--user=root",
                "--group=root",
                "--log-dhcp",
                "--log-facility=-",
            ])
            .arg(format!("--dhcp-range={range}"))
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!("--pid-file={}", self.path("dnsmasq.pid").display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path("dnsmasq.log")).unwrap())
            .spawn()
            .expect("spawn dnsmasq");
        let d = Dnsmasq { child, leases };
        wait_for_udp_port(&self.rogue, 67, "dnsmasq", || self.dnsmasq_log());
        d
    }

    fn dnsmasq_log(&self) -> String {
        std::fs::read_to_string(self.path("dnsmasq.log")).unwrap_or_default()
    }

    /// kumo's own server on the rack's `dhcp0`, once it listens.
    fn start_kumo(&self) -> ServerThread {
        let s = ServerThread::start(&self.rack, kumo_config(), self.path("kumo.journal"));
        wait_for_udp_port(&self.rack, 67, "kumo-dhcp", String::new);
        s
    }

    /// Runs the probe from the rack namespace.
    fn probe(&self, own: &[Ipv4Addr], xid: u32) -> Vec<RogueServer> {
        let own = own.to_vec();
        in_netns(&self.rack, async move {
            kumo_dhcp::probe("dhcp0", &own, WAIT, xid, PROBE_MAC).await
        })
        .expect("probe failed")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.rack, &self.rogue] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The dnsmasq process; killed on drop.
struct Dnsmasq {
    child: Child,
    leases: PathBuf,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `fut` on a thread that has joined network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, fut: impl Future<Output = T> + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_netns(&path);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(fut)
    })
    .join()
    .expect("namespace thread panicked")
}

/// Waits until something in namespace `ns` has UDP `port` bound
/// (`/proc/net/udp` as seen from inside it).
fn wait_for_udp_port(ns: &str, port: u16, what: &str, log: impl Fn() -> String) {
    let needle = format!(":{port:04X} ");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "cat", "/proc/net/udp"])
            .output()
            .expect("read /proc/net/udp");
        let table = String::from_utf8_lossy(&out.stdout);
        // Column 2 is local_address:port.
        if table
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1))
            .any(|local| format!("{local} ").ends_with(&needle))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never listened on udp {port}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_is_dnsmasq(r: &RogueServer, lab: &Lab) {
    assert_eq!(r.interface, "dhcp0", "{r:?}");
    assert_eq!(r.server_id, ROGUE_IP, "{r:?}");
    assert_eq!(r.source_ip, ROGUE_IP, "{r:?}");
    assert_eq!(r.relay, None, "{r:?}");
    assert!(
        ROGUE_RANGE.contains(&r.offered_ip),
        "{r:?} outside dnsmasq's range; dnsmasq log:\n{}",
        lab.dnsmasq_log()
    );
}

#[test]
fn a_second_server_on_the_segment_is_reported_as_rogue() {
    let lab = Lab::new("dnsm");
    let dnsmasq = lab.start_dnsmasq();
    let rogues = lab.probe(&[RACK_IP], 0x6b75_0001);
    eprintln!("rogues: {rogues:?}");
    assert_eq!(
        rogues.len(),
        1,
        "{rogues:?}; dnsmasq log:\n{}",
        lab.dnsmasq_log()
    );
    assert_is_dnsmasq(&rogues[0], &lab);
    // The probe only DISCOVERs: dnsmasq committed no lease to it.
    let leases = std::fs::read_to_string(&dnsmasq.leases).unwrap_or_default();
    assert!(
        !leases.contains("02:6b:75:6d:6f:01"),
        "the probe took a lease: {leases}"
    );
    assert!(
        lab.dnsmasq_log().contains("DHCPOFFER"),
        "{}",
        lab.dnsmasq_log()
    );
    assert!(
        !lab.dnsmasq_log().contains("DHCPREQUEST"),
        "{}",
        lab.dnsmasq_log()
    );
}

#[test]
fn kumos_own_server_is_not_a_rogue() {
    let lab = Lab::new("kumo");
    let kumo = lab.start_kumo();
    // Unfiltered, our own server answers the probe (so the check below
    // is not vacuous)...
    let unfiltered = lab.probe(&[], 0x6b75_0002);
    assert_eq!(unfiltered.len(), 1, "{unfiltered:?}");
    assert_eq!(unfiltered[0].server_id, RACK_IP);
    assert!(KUMO_RANGE.contains(&unfiltered[0].offered_ip));
    // ...and with its server id as our own, nothing is reported.
    let rogues = lab.probe(&[RACK_IP], 0x6b75_0003);
    assert_eq!(rogues, vec![]);
    kumo.stop();
}

#[test]
fn with_kumo_and_dnsmasq_only_dnsmasq_is_reported() {
    let lab = Lab::new("both");
    let kumo = lab.start_kumo();
    let _dnsmasq = lab.start_dnsmasq();
    let rogues = lab.probe(&[RACK_IP], 0x6b75_0004);
    eprintln!("rogues: {rogues:?}");
    assert_eq!(
        rogues.len(),
        1,
        "{rogues:?}; dnsmasq log:\n{}",
        lab.dnsmasq_log()
    );
    assert_is_dnsmasq(&rogues[0], &lab);
    kumo.stop();
}

#[test]
fn a_quiet_segment_reports_nothing() {
    let lab = Lab::new("none");
    assert_eq!(lab.probe(&[RACK_IP], 0x6b75_0005), vec![]);
}
