//! The metal layer end to end, on machines that really boot. Two QEMU
//! machines nobody registered power on, network-boot Debian's kernel and
//! kumo's initramfs from the rack and enlist as New with the inventory
//! QEMU was given. They get the qemu power driver, commission to Ready,
//! get tags, and deploy in parallel a Debian 12 image made by `kumo images
//! build`: the ephemeral environment streams it onto the disk, the power
//! driver restarts them, iPXE hands over to the disk and cloud-init's
//! first boot applies kumo's hostname, static address and the user's SSH
//! key. `ssh` proves it. Released with quick erase, they return to Ready.
//! Then one machine is powered off mid-deploy (Failed deployment, the
//! reason in its events) and another deploy is aborted.
//!
//! Commissioning also runs a user's commissioning script, whose output
//! reaches the region, and one machine then passes a testing script.
//!
//! One of the two deployments is the controller's: a `metal` model in the
//! same region deploys a charm with `--constraints tags=physical1`, so the
//! controller allocates the one machine with that tag, deploys it beside
//! the other, installs the agent on it over SSH with the lab's key, and
//! the unit goes active; destroying the model releases the machine. A
//! machine whose constraints no region machine meets is left in error,
//! saying which constraint ruled them out.
//!
//! One network namespace is the rack host: a bridge `kbr0` (10.217.0.2/24)
//! with `kumo region serve` and `kumo rack serve -i kbr0` inside, and the
//! machines' taps on the bridge. Images are cached under `<repo>/.cache/`:
//! the ephemeral one is rebuilt when the kumo binary changes, the Debian
//! one reuses its cached root file system. Needs root and
//! `bash scripts/deps-agent.sh` and `bash scripts/deps-images.sh`
//! (scripts/test.sh runs both).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::raw::{RawBounds, RawRun, RawSetup};
use support::{require, wait_until, Lab};

const RACK_IP: &str = "10.217.0.2";
const DISK_BYTES: u64 = 4 << 30;
const MEMORY_MIB: u64 = 768;

/// One lab machine: its NIC, disk, console and QEMU control files.
struct Vm {
    n: usize,
    mac: String,
    tap: String,
}

impl Vm {
    fn new(n: usize) -> Vm {
        Vm {
            n,
            mac: format!("52:54:00:21:70:{n:02x}"),
            tap: format!("ktap{}", n - 1),
        }
    }

    fn pidfile(&self) -> String {
        format!("qemu-{}.pid", self.n)
    }

    fn console(&self) -> String {
        format!("console-{}.log", self.n)
    }

    /// QEMU as the power driver starts it (it adds `-daemonize`): one CPU,
    /// a virtio disk and a virtio NIC that boots from the network (iPXE),
    /// the console appended to a file across boots.
    fn argv(&self, h: &Lab) -> Vec<String> {
        let qemu = String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v qemu-system-x86_64"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let p = |name: &str| h.path(name).display().to_string();
        let disk = p(&format!("disk-{}.qcow2", self.n));
        [
            qemu.trim(),
            "-machine",
            "accel=tcg",
            "-smp",
            "1",
            "-m",
            &MEMORY_MIB.to_string(),
            "-boot",
            "n",
            "-display",
            "none",
            "-monitor",
            "none",
            "-chardev",
            &format!("file,id=con,path={},append=on", p(&self.console())),
            "-serial",
            "chardev:con",
            "-pidfile",
            &p(&self.pidfile()),
            "-qmp",
            &format!("unix:{},server=on,wait=off", p(&format!("qmp-{}", self.n))),
            "-drive",
            &format!("file={disk},if=none,id=d0,format=qcow2"),
            "-device",
            &format!("virtio-blk-pci,drive=d0,serial=kumo-disk-{}", self.n),
            "-netdev",
            &format!("tap,id=n0,ifname={},script=no,downscript=no", self.tap),
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={}", self.mac),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Creates the disk and starts QEMU by hand, as an operator pressing
    /// the power button of a machine kumo does not know yet.
    fn power_on_by_hand(&self, h: &Lab) {
        let disk = h.path(&format!("disk-{}.qcow2", self.n));
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg(DISK_BYTES.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let argv = self.argv(h);
        let status = h
            .on_rack(&argv[0])
            .args(&argv[1..])
            .arg("-daemonize")
            .status()
            .unwrap();
        assert!(status.success(), "qemu {} did not start", self.n);
    }

    fn running(&self, h: &Lab) -> bool {
        h.qemu_running_of(&self.pidfile())
    }

    fn machine(&self, h: &Lab) -> Option<Value> {
        h.json(&["machines", "list"])
            .as_array()?
            .iter()
            .find(|m| {
                m["macs"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == self.mac.as_str()))
            })
            .cloned()
    }

    fn status(&self, h: &Lab) -> String {
        self.machine(h)
            .and_then(|m| m["status"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

fn repo_cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache")
}

/// The ephemeral image for this kumo binary: built once into
/// `<repo>/.cache/ephemeral/amd64`, rebuilt when the binary's hash changes.
fn ephemeral_image(h: &Lab) -> PathBuf {
    let cache = repo_cache().join("ephemeral");
    let out = cache.join("amd64");
    let kumo = Path::new(env!("CARGO_BIN_EXE_kumo"));
    let hash = format!("{:x}", Sha256::digest(std::fs::read(kumo).unwrap()));
    let stamp = cache.join("kumo.sha256");
    let fresh = std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash)
        && out.join("vmlinuz").exists()
        && out.join("initrd.img").exists();
    if !fresh {
        let start = Instant::now();
        run_logged(
            h,
            Command::new(kumo)
                .args(["images", "build-ephemeral", "--output"])
                .arg(&out)
                .arg("--cache-dir")
                .arg(&cache),
            "build.log",
        );
        std::fs::write(&stamp, &hash).unwrap();
        eprintln!("ephemeral image built in {} s", start.elapsed().as_secs());
    }
    out
}

/// The Debian 12 disk image, from `kumo images build` (which caches its
/// root file system under `<repo>/.cache/images`). Returns its manifest.
fn debian_image(h: &Lab) -> PathBuf {
    // A manifest of an image built elsewhere, to iterate on deploy alone.
    if let Some(m) = std::env::var_os("KUMO_TEST_DEBIAN_IMAGE") {
        return m.into();
    }
    let cache = repo_cache().join("images");
    let out = cache.join("out");
    let start = Instant::now();
    run_logged(
        h,
        Command::new(env!("CARGO_BIN_EXE_kumo"))
            .args(["images", "build", "--no-upload", "--output"])
            .arg(&out)
            .arg("--cache-dir")
            .arg(&cache),
        "image.log",
    );
    eprintln!("debian image ready in {} s", start.elapsed().as_secs());
    out.join("debian-12.json")
}

fn run_logged(h: &Lab, cmd: &mut Command, log: &str) {
    let file = std::fs::File::create(h.path(log)).unwrap();
    let status = cmd
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    assert!(status.success(), "{cmd:?} failed:\n{}", h.log(log));
}

/// Milliseconds of the first event of `m` whose message contains `needle`.
fn event_at(events: &[Value], needle: &str) -> Option<i64> {
    events
        .iter()
        .filter(|e| e["message"].as_str().is_some_and(|m| m.contains(needle)))
        .filter_map(|e| e["at"].as_i64())
        .min()
}

#[test]
fn two_qemu_machines_enlist_commission_deploy_answer_ssh_and_release() {
    for cmd in [
        "qemu-system-x86_64",
        "qemu-img",
        "apt-get",
        "dpkg-deb",
        "depmod",
        "ssh",
        "ssh-keygen",
    ] {
        require(cmd, "deps-agent.sh");
    }
    require("debootstrap", "deps-images.sh");
    let mut h = Lab::new(
        "kmetal",
        RACK_IP,
        &[
            "region.log",
            "rack.log",
            "console-1.log",
            "console-2.log",
            "build.log",
            "image.log",
        ],
    );
    let vms = [Vm::new(1), Vm::new(2)];
    h.add_tap(&vms[1].tap);

    let image = ephemeral_image(&h);
    let manifest = debian_image(&h);
    let rack_dir = h.path("rack");
    let served = rack_dir.join("boot/ephemeral/amd64");
    std::fs::create_dir_all(&served).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(image.join(f), served.join(f)).unwrap();
    }

    // On the bridge: the agents of the controller's machines call in here.
    h.ok(&[
        "init",
        "--listen",
        &format!("{RACK_IP}:5240"),
        "--password",
        "correct-horse",
    ]);
    // The container root filesystem the other suites use, built once
    // here, where the mirror is reachable (the rack host is not).
    let containers_cache = repo_cache().join("containers");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(kumo_containers::ensure_rootfs(
            &containers_cache,
            &kumo_containers::RootfsSpec::bookworm(),
        ))
        .expect("the container root filesystem");
    h.spawn_kumo(
        &[
            "region",
            "serve",
            "--containers-cache",
            containers_cache.to_str().unwrap(),
        ],
        "region.log",
    );
    wait_until("the region to answer", 30, || {
        h.kumo(&["machines", "list"]).status.success()
    });
    h.ok(&["domains", "create", "lab.kumo"]);
    h.ok(&[
        "subnets",
        "create",
        "10.217.0.0/24",
        "--gateway",
        "10.217.0.1",
        "--domain",
        "lab.kumo",
    ]);
    // The rack's own address must never be handed to a machine.
    h.ok(&[
        "ipranges",
        "create",
        "10.217.0.0/24",
        "reserved",
        "10.217.0.1",
        "10.217.0.9",
    ]);
    h.ok(&[
        "ipranges",
        "create",
        "10.217.0.0/24",
        "dynamic",
        "10.217.0.100",
        "10.217.0.150",
    ]);
    // The controller's container addresses (its --address-range): the
    // region gives them to no machine.
    h.ok(&[
        "ipranges",
        "create",
        "10.217.0.0/24",
        "reserved",
        "10.217.0.200",
        "10.217.0.220",
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
            "--rogue-dhcp-interval",
            "0",
        ],
        "rack.log",
    );
    wait_until("the rack to apply the region's configuration", 30, || {
        h.log("rack.log").contains("rack configuration applied")
    });
    let uploaded = Instant::now();
    h.ok(&["images", "upload", manifest.to_str().unwrap()]);
    let listed = h.ok(&["images", "list"]);
    assert!(listed.contains("debian-12"), "{listed}");

    // Power on → New, with what QEMU was given.
    for vm in &vms {
        vm.power_on_by_hand(&h);
    }
    let took = wait_until("both machines to enlist", 300, || {
        vms.iter().all(|vm| vm.machine(&h).is_some())
    });
    eprintln!("power-on → New (both) in {:.1} s", took.as_secs_f64());
    let mut hosts = Vec::new();
    for vm in &vms {
        let m = vm.machine(&h).unwrap();
        assert_eq!(m["status"], "new", "{m}");
        assert_eq!(m["macs"][0], vm.mac.as_str(), "the boot MAC first: {m}");
        assert_eq!(m["cpu_count"], 1, "{m}");
        let mem = m["memory_mib"].as_u64().unwrap();
        assert!(
            mem.abs_diff(MEMORY_MIB) <= MEMORY_MIB / 10,
            "{mem} MiB reported for {MEMORY_MIB}: {m}"
        );
        assert_eq!(m["storage_bytes"], DISK_BYTES, "{m}");
        let disk = &m["inventory"]["disks"][0];
        assert_eq!(disk["serial"], format!("kumo-disk-{}", vm.n), "{m}");
        assert_eq!(m["inventory"]["nics"][0]["driver"], "virtio_net", "{m}");
        assert_eq!(m["inventory"]["dmi"]["vendor"], "QEMU", "{m}");
        hosts.push(m["hostname"].as_str().unwrap().to_owned());
    }
    wait_until("the machines to power themselves off", 60, || {
        vms.iter().all(|vm| !vm.running(&h))
    });

    // A commissioning script runs after the inventory; a testing script
    // waits for `kumo machines test`.
    let cpus = h.path("cpus.sh");
    std::fs::write(
        &cpus,
        "#!/bin/sh\necho kumo-script-ok $(grep -c ^processor /proc/cpuinfo) $KUMO_MACHINE\n",
    )
    .unwrap();
    h.ok(&[
        "scripts",
        "add",
        cpus.to_str().unwrap(),
        "--type",
        "commissioning",
    ]);
    let mem = h.path("mem.sh");
    std::fs::write(&mem, "#!/bin/sh\nfree\ngrep -q MemTotal /proc/meminfo\n").unwrap();
    h.ok(&["scripts", "add", mem.to_str().unwrap(), "--type", "testing"]);

    // From now on kumo drives their power.
    for (vm, host) in vms.iter().zip(&hosts) {
        let argv = serde_json::to_string(&vm.argv(&h)).unwrap();
        let qmp = h.path(&format!("qmp-{}", vm.n));
        h.ok(&[
            "machines",
            "update",
            host,
            "--power-type",
            "qemu",
            "--power-param",
            &format!("qmp_socket={}", qmp.display()),
            "--power-param",
            &format!("command={argv}"),
        ]);
        h.ok(&["machines", "commission", host]);
    }
    let took = wait_until("both machines to commission to Ready", 300, || {
        vms.iter().all(|vm| vm.status(&h) == "ready")
    });
    eprintln!("commission → Ready (both) in {:.1} s", took.as_secs_f64());
    wait_until("the machines to power off after commissioning", 60, || {
        vms.iter().all(|vm| !vm.running(&h))
    });
    for (vm, host) in vms.iter().zip(&hosts) {
        let id = vm.machine(&h).unwrap()["system_id"].clone();
        let out = h.ok(&["machines", "script-output", host, "cpus"]);
        assert_eq!(
            out.trim(),
            format!("kumo-script-ok 1 {}", id.as_str().unwrap())
        );
    }
    h.ok(&["machines", "test", &hosts[0]]);
    let took = wait_until("a machine to pass its tests", 300, || {
        let s = vms[0].status(&h);
        assert_ne!(
            s,
            "failed_testing",
            "{}",
            h.ok(&["events", "--machine", &hosts[0], "--limit", "20"])
        );
        s == "ready"
    });
    eprintln!("test → Ready in {:.1} s", took.as_secs_f64());
    let shown = h.ok(&["machines", "show", &hosts[0]]);
    assert!(
        shown
            .lines()
            .any(|l| l.contains("mem") && l.contains("passed")),
        "{shown}"
    );
    wait_until("the tested machine to power off", 60, || {
        !vms[0].running(&h)
    });

    // Tags: one by hand, one from the inventory.
    h.ok(&["tags", "create", "metal"]);
    h.ok(&[
        "tags",
        "create",
        "virtio",
        "--definition",
        "cpu_count == 1 && memory_mib < 1024",
    ]);
    for host in &hosts {
        h.ok(&["tags", "add", "metal", host]);
    }
    for vm in &vms {
        let tags = vm.machine(&h).unwrap()["tags"].clone();
        assert_eq!(tags, serde_json::json!(["metal", "virtio"]));
    }
    // The seed's tag: the controller's machine is chosen by it.
    h.ok(&["tags", "create", "physical1"]);
    h.ok(&["tags", "add", "physical1", &hosts[1]]);

    // A controller in this region with a metal model and a charm whose
    // hooks only say where they ran.
    h.ok(&[
        "bootstrap",
        "--agent-url",
        &format!("http://{RACK_IP}:5240"),
        "--bridge",
        "kbr0",
        "--address-range",
        "10.217.0.200-10.217.0.220",
    ]);
    h.ok(&["add-model", "m", "--provider", "metal"]);
    let charm = h.path("hello");
    std::fs::create_dir_all(charm.join("hooks")).unwrap();
    std::fs::write(
        charm.join("metadata.yaml"),
        "name: hello\nsummary: says where it runs\n",
    )
    .unwrap();
    for (hook, body) in [
        ("install", "status-set maintenance installing\n"),
        ("start", "status-set active \"running on $(hostname)\"\n"),
    ] {
        let path = charm.join("hooks").join(hook);
        std::fs::write(&path, format!("#!/bin/sh\nset -e\n{body}")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // No region machine has 64 GiB: the machine is left in error saying
    // which constraint ruled out how many (and is retried with back-off).
    h.ok(&["add-machine", "-m", "m", "--constraints", "mem=64G"]);
    wait_until("the unsatisfiable machine to be in error", 60, || {
        h.json(&["status", "-m", "m"])["machines"]["0"]["state"] == "error"
    });
    let m0 = h.json(&["status", "-m", "m"])["machines"]["0"].clone();
    assert!(
        m0["message"]
            .as_str()
            .unwrap()
            .contains("mem>=65536M ruled out 2"),
        "{m0}"
    );

    // Deploy both at once, with the user's key: the lab's key, which the
    // controller also installs its agents with.
    std::fs::create_dir_all(h.path("data/lab")).unwrap();
    let key = h.path("data/lab/id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "metal-e2e", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    h.ok(&[
        "sshkeys",
        "add",
        "--file",
        &format!("{}.pub", key.display()),
    ]);
    wait_until("the rack to mirror the image", 120, || {
        h.log("rack.log").contains("image mirrored")
    });
    eprintln!(
        "image uploaded and mirrored in {:.1} s",
        uploaded.elapsed().as_secs_f64()
    );
    let raw = raw_bounds(&h, &image, &manifest, vms.len());
    let deploy_started = Instant::now();
    h.ok(&["machines", "deploy", &hosts[0]]);
    // The other is the controller's: allocated by the tag, then deployed.
    h.ok(&[
        "deploy",
        charm.to_str().unwrap(),
        "-m",
        "m",
        "--constraints",
        "tags=physical1",
    ]);
    wait_until("both machines to deploy", 900, || {
        let m = h.json(&["status", "-m", "m"])["machines"]["1"].clone();
        assert_ne!(m["state"], "error", "the controller's machine: {m}");
        let s: Vec<String> = vms.iter().map(|vm| vm.status(&h)).collect();
        assert!(
            !s.iter().any(|s| s == "failed_deployment"),
            "a deployment failed: {s:?}\n{}",
            h.ok(&["events", "--limit", "40"])
        );
        s.iter().all(|s| s == "deployed")
    });
    eprintln!(
        "deploy → Deployed (both, in parallel) in {:.1} s",
        deploy_started.elapsed().as_secs_f64()
    );

    for (host, raw_machine) in hosts.iter().zip(&raw.machines) {
        let addrs = h.json(&["machines", "addresses", host]);
        let ip = addrs[0]["ip"]
            .as_str()
            .expect("a static address")
            .to_owned();
        let out = ssh(&h, &key, &ip)
            .arg("hostname; ip -4 -o addr show")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ssh debian@{ip}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(said.lines().next(), Some(host.as_str()), "{said}");
        assert!(said.contains(&format!("inet {ip}/24")), "{said}");
        let os_boot = os_boot_seconds(&h, &key, &ip);
        print_breakdown(&h, host, &raw, raw_machine, os_boot);
    }

    // The controller installs its agent on the machine it deployed, and
    // the unit's hooks run there.
    let deployed_at = Instant::now();
    wait_until(
        "the unit on the controller's machine to be active",
        300,
        || {
            let s = h.json(&["status", "-m", "m"]);
            let m = &s["machines"]["1"];
            assert_ne!(m["state"], "error", "the controller's machine: {m}");
            s["units"]["hello/0"]["workload"] == "active"
        },
    );
    eprintln!(
        "deployed → agent installed, unit active in {:.1} s",
        deployed_at.elapsed().as_secs_f64()
    );
    let s = h.json(&["status", "-m", "m"]);
    let ours = vms[1].machine(&h).unwrap();
    assert_eq!(s["machines"]["1"]["instance"], ours["system_id"], "{s}");
    assert_eq!(
        s["units"]["hello/0"]["message"],
        format!("running on {}", hosts[1]),
        "{s}"
    );
    let ip = h.json(&["machines", "addresses", &hosts[1]])[0]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    // As root: the image has no D-Bus for an unprivileged systemctl.
    let out = ssh(&h, &key, &ip)
        .arg("sudo -n systemctl is-active kumo-agent")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "active",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.ok(&["remove-machine", "0", "-m", "m"]);

    // A unit in a container on the controller's machine (`lxd:1`): the
    // machine's interface is bridged, the controller's root filesystem is
    // copied over, and the container boots as a unit of the machine's
    // systemd with an address from the controller's range.
    let in_container = Instant::now();
    h.ok(&["add-unit", "hello", "-m", "m", "--to", "lxd:1"]);
    wait_until(
        "the unit in a container on machine 1 to be active",
        900,
        || {
            let s = h.json(&["status", "-m", "m"]);
            let m = &s["machines"]["1/lxd/0"];
            assert_ne!(m["state"], "error", "the container: {m}");
            s["units"]["hello/1"]["workload"] == "active"
        },
    );
    eprintln!(
        "add-unit --to lxd:1 → unit active in {:.1} s",
        in_container.elapsed().as_secs_f64()
    );
    let s = h.json(&["status", "-m", "m"]);
    let container = s["machines"]["1/lxd/0"].clone();
    let name = container["instance"].as_str().unwrap().to_owned();
    let address = container["address"].as_str().unwrap().to_owned();
    assert!(address.starts_with("10.217.0.2"), "{container}");
    assert_eq!(
        s["units"]["hello/1"]["message"],
        format!("running on {name}"),
        "{s}"
    );
    let out = ssh(&h, &key, &ip)
        .arg("ip -4 -o addr show kumobr0")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("inet {ip}/24")), "{said}");
    // Its unit is active once systemd inside says it finished booting,
    // which may come after the agent is up.
    wait_until("the container's unit to be active", 300, || {
        let out = ssh(&h, &key, &ip)
            .arg(format!("sudo -n systemctl is-active kumo-container@{name}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "active"
    });
    // Reachable from outside its host, on the machines' network.
    let out = h
        .on_rack("ping")
        .args(["-c", "1", "-W", "5", &address])
        .output()
        .unwrap();
    assert!(out.status.success(), "ping {address}: {out:?}");
    // Removed from its host with the machine.
    h.ok(&["remove-unit", "hello/1", "-m", "m"]);
    wait_until("the unit in the container to go", 120, || {
        h.json(&["status", "-m", "m"])["units"]
            .get("hello/1")
            .is_none()
    });
    h.ok(&["remove-machine", "1/lxd/0", "-m", "m"]);
    let out = ssh(&h, &key, &ip)
        .arg(format!(
            "test -e /var/lib/kumo/containers/{name} && echo left || echo gone"
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "gone");

    // Release: one with quick erase by hand, the controller's by
    // destroying its model (the region's default erase). The disks are
    // wiped, the machines are Ready.
    h.ok(&["machines", "release", &hosts[0], "--erase", "quick"]);
    h.ok(&["destroy-model", "m", "--yes"]);
    wait_until("both machines to erase and return to Ready", 300, || {
        vms.iter().all(|vm| vm.status(&h) == "ready")
    });
    wait_until("the machines to power off after erasing", 60, || {
        vms.iter().all(|vm| !vm.running(&h))
    });
    let events = h.ok(&["events", "--machine", &hosts[0], "--limit", "100"]);
    assert!(
        events.contains("quick erase of 1 disks finished"),
        "{events}"
    );

    // Powered off mid-deploy: Failed deployment, and the events say why.
    h.ok(&["machines", "deploy", &hosts[0]]);
    wait_until("the image download to start", 240, || {
        h.ok(&["events", "--machine", &hosts[0], "--limit", "5"])
            .contains("downloading image")
    });
    h.kill_qemu_of(&vms[0].pidfile());
    wait_until("the machine to fail its deployment", 60, || {
        vms[0].status(&h) == "failed_deployment"
    });
    let events = h.ok(&["events", "--machine", &hosts[0], "--limit", "10"]);
    assert!(
        events.contains("machine powered off while deploying"),
        "{events}"
    );

    // Abort: back where the deploy began, and powered off.
    h.ok(&["machines", "deploy", &hosts[1]]);
    wait_until("the second machine to power on", 60, || vms[1].running(&h));
    h.ok(&["machines", "abort", &hosts[1]]);
    let m = vms[1].machine(&h).unwrap();
    assert_eq!(m["status"], "allocated", "{m}");
    wait_until("the aborted machine to power off", 60, || {
        !vms[1].running(&h)
    });
}

/// The raw lower bounds of a deployment's steps, measured on this host
/// without kumo (see `support::raw`): one raw machine per lab machine, run
/// at once while the lab's machines are off, and the image write on the
/// host. About a minute.
fn raw_bounds(h: &Lab, ephemeral: &Path, manifest: &Path, n: usize) -> RawRun {
    let m: Value = serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    let image = manifest
        .parent()
        .unwrap()
        .join(m["path"].as_str().expect("an image path in the manifest"));
    let start = Instant::now();
    let raw = RawSetup {
        dir: h.dir.path(),
        ephemeral,
        image: &image,
        memory_mib: MEMORY_MIB,
        disk_bytes: DISK_BYTES,
    }
    .measure(n);
    eprintln!(
        "raw lower bounds measured in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    raw
}

/// Prints, per phase of one deployment, kumo's seconds beside the lower
/// bound of the raw steps measured on this host and the difference,
/// kumo's own overhead. `os_boot` is how long the deployed OS took to
/// start cloud-init's final stage.
fn print_breakdown(h: &Lab, host: &str, raw: &RawRun, m: &RawBounds, os_boot: Result<f64, String>) {
    let v = h.json(&["events", "--machine", host, "--limit", "200"]);
    let events = v.as_array().unwrap();
    // The last deployment's events (an earlier cycle may be in the log).
    let start = events
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("deploy by"))
        })
        .filter_map(|e| e["at"].as_i64())
        .max()
        .expect("a deploy event");
    let recent: Vec<Value> = events
        .iter()
        .filter(|e| e["at"].as_i64().is_some_and(|t| t >= start))
        .cloned()
        .collect();
    let at = |needle: &str| event_at(&recent, needle);
    let secs = |d: std::time::Duration| Some(d.as_secs_f64());
    let to_kernel = m.to_kernel.as_secs_f64();
    let phases = [
        (
            "power on, firmware, DHCP, iPXE",
            Some(start),
            at("fetched its deploy script"),
            secs(m.to_ipxe),
            "a new QEMU until iPXE asks for a script, \
             less its DHCP exchange with QEMU's own server"
                .to_owned(),
        ),
        (
            "boot files, kernel, agent up",
            at("fetched its deploy script"),
            at("downloading image"),
            secs(m.to_agent),
            "iPXE loads kernel and initramfs from a plain HTTP server, \
             boots until init starts the agent"
                .to_owned(),
        ),
        (
            "image download and write",
            at("downloading image"),
            at("written to"),
            secs(m.image_write),
            format!(
                "wget | zstd -dc | dd conv=sparse,fsync in a VM like it; \
                 natively on the host {:.1} s",
                raw.host_write
            ),
        ),
        (
            "seed first boot, ask for reboot",
            at("written to"),
            at("rebooting from local disk"),
            secs(m.seed),
            "in that VM: re-read partitions, mount, write the seed, unmount".to_owned(),
        ),
        (
            "power cycle, firmware, DHCP, iPXE",
            at("rebooting from local disk"),
            at("fetched its local-disk script"),
            secs(m.to_ipxe),
            "as in the first phase: kumo's power cycle starts a new QEMU".to_owned(),
        ),
        (
            "disk boot and cloud-init first boot",
            at("fetched its local-disk script"),
            at("→ deployed"),
            os_boot.clone().ok().map(|os| to_kernel + os),
            format!(
                "in that VM sanboot and GRUB until the kernel starts {to_kernel:.1} s; then on \
                 the deployed machine, by systemd's clock, its kernel's start until \
                 cloud-init's final stage (which reports) starts {}",
                os_boot
                    .as_ref()
                    .map_or("?".to_owned(), |os| format!("{os:.1} s"))
            ),
        ),
    ];
    eprintln!("deployment of {host}: seconds per phase, kumo's beside the raw steps' lower bound");
    let (mut kumo_total, mut raw_total) = (Some(0.0), Some(0.0));
    for (name, from, to, raw, how) in phases {
        let kumo = from.zip(to).map(|(a, b)| (b - a) as f64 / 1000.0);
        kumo_total = kumo_total.zip(kumo).map(|(t, k)| t + k);
        raw_total = raw_total.zip(raw).map(|(t, r)| t + r);
        eprintln!("  {}   (raw: {how})", row(name, kumo, raw));
    }
    eprintln!("  {}", row("total", kumo_total, raw_total));
    if let Some(written) = recent
        .iter()
        .filter_map(|e| e["message"].as_str())
        .find(|m| m.contains("written to"))
    {
        eprintln!("  (agent: {written})");
    }
    if let Err(e) = os_boot {
        eprintln!("  (no figure from the deployed machine's systemd: {e})");
    }
}

/// `ssh debian@ip` from the rack's namespace with the test's key, asking
/// nothing of a terminal; the caller adds the remote command.
fn ssh(h: &Lab, key: &Path, ip: &str) -> Command {
    let mut cmd = h.on_rack("ssh");
    cmd.args(["-i", key.to_str().unwrap()])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .args(["-o", "ConnectTimeout=10", "-o", "BatchMode=yes"])
        .arg(format!("debian@{ip}"));
    cmd
}

/// Seconds from the deployed OS's kernel starting to cloud-init's final
/// stage starting, by systemd's monotonic clock. That stage runs kumo's
/// report (the end of the phase), so this stays inside the phase, where
/// `systemd-analyze`'s figure runs on to the stage's end, past the
/// report. As root: the image has no D-Bus for an unprivileged systemctl.
fn os_boot_seconds(h: &Lab, key: &Path, ip: &str) -> Result<f64, String> {
    let out = ssh(h, key, ip)
        .arg("sudo -n systemctl show -p InactiveExitTimestampMonotonic --value cloud-final.service")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    match said.trim().parse::<u64>() {
        Ok(us) if us > 0 => Ok(us as f64 / 1e6),
        _ => Err(format!(
            "{}{}",
            said.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// `name   kumo 138.2 s   raw ≥ 95.1 s   overhead 43.1 s`, with `?` for
/// what is missing.
fn row(name: &str, kumo: Option<f64>, raw: Option<f64>) -> String {
    let s = |v: Option<f64>| v.map_or("     ?".to_owned(), |v| format!("{v:>6.1}"));
    format!(
        "{name:<36} kumo {} s   raw ≥ {} s   overhead {} s",
        s(kumo),
        s(raw),
        s(kumo.zip(raw).map(|(k, r)| k - r))
    )
}
