//! The ephemeral environment end to end: a QEMU machine nobody registered
//! powers on, network-boots Debian's kernel and kumo's initramfs from the
//! rack, and enlists itself as New with the inventory QEMU was given; then
//! it is commissioned (powered on by hand: its power type is manual) and
//! reaches Ready with its inventory uploaded.
//!
//! One network namespace is the rack host: a bridge `kbr0` (10.217.0.2/24)
//! with `kumo region serve` and `kumo rack serve -i kbr0` inside, and the
//! QEMU machine's tap on the bridge. The image is built once with `kumo
//! images build-ephemeral` into `<repo>/.cache/ephemeral/` and rebuilt
//! only when the kumo binary changes. Needs root and
//! `bash scripts/deps-agent.sh` (scripts/test.sh runs it).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{require, wait_until, Lab};

const RACK_IP: &str = "10.217.0.2";
const MAC: &str = "52:54:00:21:70:01";
const DISK_BYTES: u64 = 3 << 30;
const MEMORY_MIB: u64 = 512;

/// Powers the machine on: QEMU with two CPUs, 512 MiB, a virtio disk
/// and a virtio NIC that boots from the network (iPXE ROM). The
/// console goes to `console.log` (appended across boots).
fn power_on(h: &Lab) {
    let disk = h.path("disk.qcow2");
    if !disk.exists() {
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg(DISK_BYTES.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let console = h.path("console.log");
    let status = h
        .on_rack("qemu-system-x86_64")
        .args(["-machine", "accel=tcg", "-smp", "2", "-m"])
        .arg(MEMORY_MIB.to_string())
        .args(["-boot", "n", "-display", "none", "-monitor", "none"])
        .args(["-serial", &format!("file:{}", console.display())])
        .args(["-daemonize", "-pidfile"])
        .arg(h.path("qemu.pid"))
        .args([
            "-drive",
            &format!("file={},if=none,id=d0,format=qcow2", disk.display()),
        ])
        .args(["-device", "virtio-blk-pci,drive=d0,serial=kumo-disk-1"])
        .args(["-netdev", "tap,id=n0,ifname=ktap0,script=no,downscript=no"])
        .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={MAC}")])
        .status()
        .unwrap();
    assert!(status.success(), "qemu did not start");
}

/// The ephemeral image for this kumo binary: built once into
/// `<repo>/.cache/ephemeral/amd64`, rebuilt when the binary's hash changes.
fn ephemeral_image(h: &Lab) -> PathBuf {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/ephemeral");
    let out = cache.join("amd64");
    let kumo = Path::new(env!("CARGO_BIN_EXE_kumo"));
    let hash = format!("{:x}", Sha256::digest(std::fs::read(kumo).unwrap()));
    let stamp = cache.join("kumo.sha256");
    let fresh = std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash)
        && out.join("vmlinuz").exists()
        && out.join("initrd.img").exists();
    if !fresh {
        let start = Instant::now();
        let log = std::fs::File::create(h.path("build.log")).unwrap();
        let status = Command::new(kumo)
            .args(["images", "build-ephemeral", "--output"])
            .arg(&out)
            .arg("--cache-dir")
            .arg(&cache)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "build-ephemeral failed:\n{}",
            h.log("build.log")
        );
        std::fs::write(&stamp, &hash).unwrap();
        eprintln!(
            "ephemeral image built in {} s: {}",
            start.elapsed().as_secs(),
            h.log("build.log").trim()
        );
    }
    out
}

fn machine_with_mac(h: &Lab) -> Option<Value> {
    h.json(&["machines", "list"])
        .as_array()?
        .iter()
        .find(|m| {
            m["macs"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == MAC))
        })
        .cloned()
}

#[test]
fn an_unknown_qemu_machine_enlists_itself_then_commissions_to_ready() {
    for cmd in [
        "qemu-system-x86_64",
        "qemu-img",
        "apt-get",
        "dpkg-deb",
        "depmod",
    ] {
        require(cmd, "deps-agent.sh");
    }
    let mut h = Lab::new(
        "ken",
        RACK_IP,
        &["region.log", "rack.log", "console.log", "build.log"],
    );
    let image = ephemeral_image(&h);
    let rack_dir = h.path("rack");
    let served = rack_dir.join("boot/ephemeral/amd64");
    std::fs::create_dir_all(&served).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(image.join(f), served.join(f)).unwrap();
    }

    h.ok(&[
        "init",
        "--listen",
        "127.0.0.1:5240",
        "--password",
        "correct-horse",
    ]);
    h.spawn_kumo(&["region", "serve"], "region.log");
    wait_until("the region to answer", 30, || {
        h.kumo(&["machines", "list"]).status.success()
    });
    h.ok(&[
        "subnets",
        "create",
        "10.217.0.0/24",
        "--gateway",
        "10.217.0.1",
    ]);
    h.ok(&[
        "ipranges",
        "create",
        "10.217.0.0/24",
        "dynamic",
        "10.217.0.100",
        "10.217.0.150",
    ]);
    h.ok(&["vlans", "update", "fabric-0", "0", "--dhcp", "on"]);
    h.spawn_kumo(
        &[
            "rack",
            "serve",
            "-i",
            "kbr0",
            "--name",
            "rack1",
            "--data-dir",
            rack_dir.to_str().unwrap(),
            "--no-dns",
            "--rogue-dhcp-interval",
            "0",
        ],
        "rack.log",
    );
    wait_until("the rack to apply the region's configuration", 30, || {
        h.log("rack.log").contains("rack configuration applied")
    });

    // Power on → New, with what QEMU was given.
    power_on(&h);
    let took = wait_until("the QEMU machine to enlist", 240, || {
        machine_with_mac(&h).is_some()
    });
    eprintln!("power-on → New in {:.1} s", took.as_secs_f64());
    let m = machine_with_mac(&h).unwrap();
    assert_eq!(m["status"], "new", "{m}");
    assert_eq!(m["power_type"], "manual", "{m}");
    assert_eq!(m["macs"][0], MAC, "the boot MAC first: {m}");
    assert_eq!(m["cpu_count"], 2, "{m}");
    let mem = m["memory_mib"].as_u64().unwrap();
    assert!(
        mem.abs_diff(MEMORY_MIB) <= MEMORY_MIB / 10,
        "{mem} MiB reported for {MEMORY_MIB}: {m}"
    );
    assert_eq!(m["storage_bytes"], DISK_BYTES, "{m}");
    let disks = m["inventory"]["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1, "{m}");
    assert_eq!(disks[0]["serial"], "kumo-disk-1", "{m}");
    let nic = &m["inventory"]["nics"][0];
    assert_eq!(
        (&nic["mac"], &nic["driver"]),
        (&MAC.into(), &"virtio_net".into()),
        "{m}"
    );
    assert_eq!(m["inventory"]["dmi"]["vendor"], "QEMU", "{m}");
    wait_until("the machine to power itself off", 60, || !h.qemu_running());

    // Commission: the operator powers it on (manual power type); the rack
    // puts the machine's token on its kernel command line.
    let hostname = m["hostname"].as_str().unwrap().to_owned();
    h.ok(&["machines", "commission", &hostname]);
    power_on(&h);
    let took = wait_until("the machine to commission to Ready", 240, || {
        machine_with_mac(&h).is_some_and(|m| m["status"] == "ready")
    });
    eprintln!("commission power-on → Ready in {:.1} s", took.as_secs_f64());
    let m = machine_with_mac(&h).unwrap();
    assert_eq!(m["cpu_count"], 2, "{m}");
    assert_eq!(m["storage_bytes"], DISK_BYTES, "{m}");
    let events = h.ok(&["events", "--machine", &hostname, "--limit", "50"]);
    assert!(events.contains("inventory: 2 CPUs"), "{events}");
    wait_until("the machine to power itself off again", 60, || {
        !h.qemu_running()
    });
}
