//! `kumo lab` end to end through the real binary, as root on this host:
//! `lab up` makes a bridge, a tap and a disk, starts region and rack in the
//! background and registers a QEMU machine; the region powers that machine
//! on; `lab up` again changes nothing; `lab down --purge` leaves nothing
//! behind. The lab gets its own data and config directories, bridge
//! (`kltest0`, taps `kltest0t<N>`), network (10.249.0.0/24) and ports, so a
//! user's own lab (kumolab0, 10.248.0.0/24, :5240, :5248, :53, :69) runs
//! on undisturbed. Skips unless root; needs `bash scripts/deps-rack.sh`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::{require, stdout_of_success, wait_until};

const BRIDGE: &str = "kltest0";
const TAP: &str = "kltest0t1";
const CIDR: &str = "10.249.0.0/24";
const RACK_IP: &str = "10.249.0.1";

struct TestLab {
    dir: tempfile::TempDir,
    http_port: u16,
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in ["region.log", "rack.log"] {
                let text = std::fs::read_to_string(self.lab_dir().join(log)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("--- last lines of {log}:");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        // Whatever the test got to, take the lab down.
        let _ = self.kumo(&["lab", "down", "--purge"]);
    }
}

impl TestLab {
    fn lab_dir(&self) -> PathBuf {
        self.dir.path().join("data/lab")
    }

    fn kumo(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kumo"))
            .args(args)
            .env("KUMO_DATA_DIR", self.dir.path().join("data"))
            .env("KUMO_CONFIG_DIR", self.dir.path().join("config"))
            .env_remove("KUMO_PROFILE")
            .output()
            .expect("run kumo")
    }

    fn ok(&self, args: &[&str]) -> String {
        stdout_of_success(args, self.kumo(args))
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// `lab status` as name → (running, pid).
    fn status(&self) -> Vec<(String, bool, Option<i64>)> {
        self.json(&["lab", "status"])["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["running"].as_bool().unwrap(),
                    c["pid"].as_i64(),
                )
            })
            .collect()
    }

    fn component(&self, name: &str) -> (bool, Option<i64>) {
        self.status()
            .into_iter()
            .find(|c| c.0 == name)
            .map(|c| (c.1, c.2))
            .unwrap_or_else(|| panic!("{name} not in lab status"))
    }

    fn rack_metrics(&self) -> String {
        reqwest::blocking::get(format!("http://{RACK_IP}:{}/metrics", self.http_port))
            .and_then(|r| r.text())
            .unwrap_or_default()
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with(['Z', 'X']))
    })
}

fn free_tcp() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp() -> u16 {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Below 32768, where apt-cacher-ng can listen.
fn free_proxy_port() -> u16 {
    let start = 20000 + (std::process::id() % 10000) as u16;
    (start..32767)
        .find(|p| std::net::TcpListener::bind(("0.0.0.0", *p)).is_ok())
        .expect("a free port")
}

#[test]
fn lab_up_converges_powers_a_machine_and_down_purge_removes_it_all() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: kumo lab needs root (bridges, taps, DHCP)");
        return;
    }
    for cmd in ["qemu-system-x86_64", "qemu-img", "ip"] {
        require(cmd, "deps-rack.sh");
    }
    // A run that died half-way may have left its links.
    for link in [TAP, BRIDGE] {
        let _ = Command::new("ip").args(["link", "del", link]).output();
    }
    let lab = TestLab {
        dir: tempfile::tempdir().unwrap(),
        http_port: free_tcp(),
    };
    let region = format!("127.0.0.1:{}", free_tcp());
    let (http, tftp, dns, proxy) = (
        lab.http_port.to_string(),
        free_udp().to_string(),
        free_udp().to_string(),
        free_proxy_port().to_string(),
    );
    let up: Vec<&str> = vec![
        "lab",
        "up",
        "--machines",
        "1",
        "--bridge",
        BRIDGE,
        "--cidr",
        CIDR,
        "--region-listen",
        &region,
        "--rack-http-port",
        &http,
        "--rack-tftp-port",
        &tftp,
        "--rack-dns-port",
        &dns,
        "--package-proxy-port",
        &proxy,
        // The debug binary would make a large initramfs; enlist_e2e.rs
        // covers the ephemeral environment.
        "--no-ephemeral",
        // metal_e2e.rs deploys the Debian image; building it here would
        // add minutes and test nothing new.
        "--no-image",
    ];
    let first = lab.ok(&up);
    assert!(first.contains("kumo lab is up"), "{first}");
    assert!(first.contains("kumo machines commission lab-1"), "{first}");

    // The region knows lab-1 as a QEMU machine of the lab with an address.
    let ms = lab.json(&["machines", "list"]);
    let ms = ms.as_array().unwrap();
    assert_eq!(ms.len(), 1, "{ms:?}");
    assert_eq!(ms[0]["hostname"], "lab-1");
    assert_eq!(ms[0]["power_type"], "qemu");
    assert_eq!(ms[0]["tags"], serde_json::json!(["lab"]));
    let addrs = lab.json(&["machines", "addresses", "lab-1"]);
    assert!(
        addrs[0]["ip"].as_str().unwrap().starts_with("10.249.0."),
        "{addrs}"
    );
    // Region and rack outlived the command that started them.
    let (region_up, region_pid) = lab.component("region");
    let (rack_up, rack_pid) = lab.component("rack");
    assert!(region_up && rack_up, "{:?}", lab.status());
    assert!(link_exists(BRIDGE) && link_exists(TAP));
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", BRIDGE])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{RACK_IP}/24")),
        "{out:?}"
    );
    assert!(lab.lab_dir().join("lab-1.qcow2").exists());
    // The lab's SSH key is the admin's, so deployed machines let it in.
    let keys = lab.json(&["sshkeys", "list"]);
    assert_eq!(keys[0]["comment"], "kumo-lab", "{keys}");
    assert!(lab.lab_dir().join("id_ed25519").exists());
    if Path::new("/usr/sbin/apt-cacher-ng").exists() {
        wait_until("the rack's package proxy", 30, || {
            lab.rack_metrics()
                .lines()
                .any(|l| l == "kumo_rack_package_proxy_up 1")
        });
    } else {
        eprintln!("apt-cacher-ng not installed: not checking the package proxy");
    }

    // The region starts the registered QEMU command line.
    lab.ok(&["machines", "power-on", "lab-1"]);
    wait_until("QEMU to run lab-1", 60, || lab.component("lab-1").0);
    let qemu_pid = lab.component("lab-1").1.unwrap();
    assert!(lab.lab_dir().join("lab-1.console.log").exists());

    // Again: nothing changes, nothing restarts, nothing is duplicated.
    let second = lab.ok(&up);
    assert!(second.contains("nothing changed"), "{second}");
    assert_eq!(lab.component("region"), (true, region_pid));
    assert_eq!(lab.component("rack"), (true, rack_pid));
    assert_eq!(lab.json(&["machines", "list"]).as_array().unwrap().len(), 1);
    // Reserved, dynamic, and the container machines' reserved range.
    assert_eq!(lab.json(&["ipranges", "list"]).as_array().unwrap().len(), 3);
    // The controller is bootstrapped on the lab's bridge, once.
    let models = lab.ok(&["models"]);
    assert!(models.contains("default"), "{models}");
    assert_eq!(lab.json(&["subnets", "list"]).as_array().unwrap().len(), 1);

    // Down with --purge: processes, links and files are gone.
    let down = lab.ok(&["lab", "down", "--purge"]);
    for said in [
        "stopped the region",
        "stopped the rack",
        "powered off lab-1",
        "deleted tap kltest0t1",
        "deleted bridge kltest0",
        "removed CLI profile lab",
    ] {
        assert!(down.contains(said), "{said:?} not in:\n{down}");
    }
    for pid in [region_pid.unwrap(), rack_pid.unwrap(), qemu_pid] {
        assert!(!alive(pid), "pid {pid} outlived lab down");
    }
    assert!(!link_exists(BRIDGE) && !link_exists(TAP));
    assert!(!lab.lab_dir().exists());
    let again = lab.ok(&["lab", "down", "--purge"]);
    assert!(again.contains("nothing to do"), "{again}");
}
