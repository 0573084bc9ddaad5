//! The README's path, end to end, through the real binary: `kumo init`,
//! `kumo region serve`, then the CLI adds a QEMU machine with the `qemu`
//! power driver, tags it, allocates it by tag and walks it through its
//! lifecycle. The real QEMU process is powered on and off by kumo; the
//! machine's own reports (which the ephemeral environment will send) go to
//! the machine-facing API over HTTP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Lab {
    dir: tempfile::TempDir,
    url: String,
    region: Child,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.region.kill();
        let _ = self.region.wait();
        // Any QEMU this test started wrote a pidfile here.
        for entry in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.path().extension().is_some_and(|e| e == "pid") {
                if let Some(pid) = std::fs::read_to_string(entry.path())
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

fn kumo(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kumo"))
        .args(args)
        .env("KUMO_CONFIG_DIR", dir.join("config"))
        .env("KUMO_DATA_DIR", dir.join("data"))
        .env_remove("KUMO_PROFILE")
        .output()
        .expect("run kumo")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = kumo(dir, args);
    assert!(
        out.status.success(),
        "kumo {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_of(dir: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    serde_json::from_str(&ok(dir, &a)).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {secs} s waiting for {what}");
}

fn qemu() -> PathBuf {
    let p = Path::new("/usr/bin/qemu-system-x86_64");
    assert!(
        p.exists(),
        "qemu-system-x86_64 not found: apt-get install qemu-system-x86 (scripts/test.sh does)"
    );
    p.to_owned()
}

fn start() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let init = ok(
        dir.path(),
        &["init", "--listen", &listen, "--password", "correct-horse"],
    );
    assert!(init.contains("API key:   kumo_"), "{init}");
    let region = Command::new(env!("CARGO_BIN_EXE_kumo"))
        .args(["region", "serve"])
        .env("KUMO_DATA_DIR", dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = format!("http://{listen}");
    wait_until("the region to answer", 30, || {
        reqwest::blocking::get(format!("{url}/healthz")).is_ok()
    });
    Lab { dir, url, region }
}

fn machine(lab: &Lab, name: &str) -> Value {
    json_of(lab.dir.path(), &["machines", "show", name])
}

fn report(lab: &Lab, name: &str, path: &str, body: Value) {
    let token = json_of(lab.dir.path(), &["machines", "show", name])["system_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = {
        let p: Value = serde_json::from_str(
            &std::fs::read_to_string(lab.dir.path().join("config/profiles.json")).unwrap(),
        )
        .unwrap();
        p["profiles"]["local"]["key"].as_str().unwrap().to_owned()
    };
    let http = reqwest::blocking::Client::new();
    let t: Value = http
        .get(format!("{}/api/v1/machines/{token}/token", lab.url))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let resp = http
        .post(format!("{}/metadata/v1/{path}", lab.url))
        .bearer_auth(t["token"].as_str().unwrap())
        .json(&body)
        .send()
        .unwrap();
    assert!(
        resp.status().is_success(),
        "{path}: {}",
        resp.text().unwrap()
    );
}

fn qemu_alive(lab: &Lab, name: &str) -> bool {
    std::fs::read_to_string(lab.dir.path().join(format!("{name}.pid")))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        // SAFETY: signal 0 only checks that the process exists.
        .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0)
}

#[test]
fn init_serve_add_tag_allocate_and_walk_a_qemu_machine_through_its_lifecycle() {
    let lab = start();
    let d = lab.dir.path();
    let qmp = d.join("vm1.qmp");
    let command = json!([
        qemu(),
        "-machine",
        "pc",
        "-accel",
        "tcg",
        "-nodefaults",
        "-display",
        "none",
        "-m",
        "32",
        "-qmp",
        format!("unix:{},server=on,wait=off", qmp.display()),
        "-pidfile",
        d.join("vm1.pid"),
    ]);
    ok(
        d,
        &[
            "machines",
            "add",
            "--hostname",
            "vm1",
            "--mac",
            "52:54:00:12:00:01",
            "--power-type",
            "qemu",
            "--power-param",
            &format!("qmp_socket={}", qmp.display()),
            "--power-param",
            &format!("command={command}"),
            "--cores",
            "1",
            "--memory",
            "32",
        ],
    );
    ok(
        d,
        &[
            "machines",
            "add",
            "--hostname",
            "vm2",
            "--mac",
            "52:54:00:12:00:02",
        ],
    );
    let list = ok(d, &["machines", "list"]);
    assert!(
        list.contains("vm1") && list.contains("vm2") && list.contains("new"),
        "{list}"
    );

    // Bad input is refused with the field named, and the exit code says so.
    let bad = kumo(
        d,
        &[
            "machines",
            "add",
            "--hostname",
            "vm3",
            "--mac",
            "52:54:00:12:00:zz",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("macs[0]"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let illegal = kumo(d, &["machines", "deploy", "vm1"]);
    assert!(!illegal.status.success());
    assert!(
        String::from_utf8_lossy(&illegal.stderr).contains("allowed: commission"),
        "{}",
        String::from_utf8_lossy(&illegal.stderr)
    );

    // Commission: kumo powers the real QEMU machine on.
    ok(d, &["machines", "commission", "vm1"]);
    wait_until("QEMU to be powered on", 60, || {
        qemu_alive(&lab, "vm1") && machine(&lab, "vm1")["power_state"] == "on"
    });
    assert_eq!(ok(d, &["machines", "power-state", "vm1"]).trim(), "vm1: on");
    report(
        &lab,
        "vm1",
        "inventory",
        json!({"cpu": {"model": "QEMU Virtual CPU", "count": 1}, "memory_mib": 32, "nics": [{"name": "ens3", "mac": "52:54:00:12:00:01"}]}),
    );
    report(
        &lab,
        "vm1",
        "status",
        json!({"event": "finished", "result": "success"}),
    );
    assert_eq!(machine(&lab, "vm1")["status"], "ready");
    // Commissioning done: kumo powers it off again.
    wait_until("QEMU to be powered off", 60, || {
        !qemu_alive(&lab, "vm1") && machine(&lab, "vm1")["power_state"] == "off"
    });

    ok(d, &["tags", "create", "lab"]);
    ok(d, &["tags", "add", "lab", "vm1"]);
    ok(
        d,
        &["tags", "create", "tiny", "--definition", "memory_mib <= 64"],
    );
    let tags = machine(&lab, "vm1")["tags"].clone();
    assert_eq!(tags, json!(["lab", "tiny"]));
    let miss = kumo(
        d,
        &["machines", "allocate", "--constraints", "tags=lab cores=4"],
    );
    assert!(
        String::from_utf8_lossy(&miss.stderr).contains("cores>=4 ruled out 1"),
        "{}",
        String::from_utf8_lossy(&miss.stderr)
    );
    let got = json_of(d, &["machines", "allocate", "--constraints", "tags=lab"]);
    assert_eq!(
        (got["hostname"].as_str(), got["status"].as_str()),
        (Some("vm1"), Some("allocated"))
    );

    // Deploying needs an image: the refusal says how to get one.
    let no_image = kumo(d, &["machines", "deploy", "vm1"]);
    assert!(
        String::from_utf8_lossy(&no_image.stderr).contains("kumo images build"),
        "{}",
        String::from_utf8_lossy(&no_image.stderr)
    );
    let image_dir = d.join("built");
    std::fs::create_dir_all(&image_dir).unwrap();
    let body = b"a tiny stand-in for a disk image";
    std::fs::write(image_dir.join("tiny.img.zst"), body).unwrap();
    let manifest = |sha: &str| {
        json!({"name": "tiny", "path": "tiny.img.zst", "sha256": sha, "raw_size": 1 << 20,
               "os": "debian", "release": "bookworm", "arch": "amd64"})
        .to_string()
    };
    std::fs::write(image_dir.join("tiny.json"), manifest(&"0".repeat(64))).unwrap();
    let corrupt = kumo(
        d,
        &[
            "images",
            "upload",
            image_dir.join("tiny.json").to_str().unwrap(),
        ],
    );
    assert!(
        String::from_utf8_lossy(&corrupt.stderr).contains("not the announced"),
        "a body that does not match its checksum is refused: {}",
        String::from_utf8_lossy(&corrupt.stderr)
    );
    let sha = {
        use sha2::Digest;
        hex_of(&sha2::Sha256::digest(body))
    };
    std::fs::write(image_dir.join("tiny.json"), manifest(&sha)).unwrap();
    ok(
        d,
        &[
            "images",
            "upload",
            image_dir.join("tiny.json").to_str().unwrap(),
        ],
    );
    let listed = ok(d, &["images", "list"]);
    assert!(
        listed.contains("tiny") && listed.contains("bookworm"),
        "{listed}"
    );
    ok(d, &["sshkeys", "add", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPUYHB3P4QFb+8f1A5+RYSsWcGhfpdub+t893nu4Vr/R alice@lab"]);
    assert!(
        ok(d, &["sshkeys", "list"]).contains("SHA256:XRcpt+iMenwlYgw9QArqsx8a4+sQK6XCjvbBvKEMUa4")
    );

    ok(d, &["machines", "deploy", "vm1"]);
    wait_until("QEMU to boot for deployment", 60, || {
        qemu_alive(&lab, "vm1")
    });
    report(
        &lab,
        "vm1",
        "status",
        json!({"event": "progress", "message": "writing image"}),
    );
    report(
        &lab,
        "vm1",
        "status",
        json!({"event": "finished", "result": "success"}),
    );
    assert_eq!(machine(&lab, "vm1")["status"], "deployed");

    ok(d, &["machines", "release", "vm1", "--erase", "quick"]);
    assert_eq!(machine(&lab, "vm1")["status"], "disk_erasing");
    report(
        &lab,
        "vm1",
        "status",
        json!({"event": "finished", "result": "success"}),
    );
    let m = machine(&lab, "vm1");
    assert_eq!(
        (m["status"].as_str(), m["owner"].as_null()),
        (Some("ready"), Some(()))
    );
    wait_until("QEMU to be powered off after erasing", 60, || {
        !qemu_alive(&lab, "vm1")
    });

    let events = ok(d, &["events", "--machine", "vm1", "--limit", "100"]);
    for needle in [
        "commission by admin",
        "writing image",
        "deploying → deployed",
        "disk erasing → ready",
        "power off: done",
    ] {
        assert!(events.contains(needle), "missing {needle:?} in:\n{events}");
    }
    let audit = ok(d, &["audit"]);
    assert!(
        audit.contains("deploy") && audit.contains("machine/"),
        "{audit}"
    );
}

/// A webhook BMC whose first power-on request stalls, as a BMC that hangs
/// mid-operation would; every later request answers at once.
fn stalling_bmc() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::sync::{Arc, Mutex};
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = calls.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let on = {
                let calls = seen.clone();
                move || {
                    let calls = calls.clone();
                    async move {
                        let first = {
                            let mut c = calls.lock().unwrap();
                            c.push("on".into());
                            c.len() == 1
                        };
                        if first {
                            tokio::time::sleep(Duration::from_secs(600)).await;
                        }
                        "ok"
                    }
                }
            };
            let query = {
                let calls = seen.clone();
                move || {
                    let calls = calls.clone();
                    async move {
                        if calls.lock().unwrap().len() > 1 {
                            "status: running"
                        } else {
                            "status: stopped"
                        }
                    }
                }
            };
            let app = axum::Router::new()
                .route("/on", axum::routing::post(on))
                .route("/off", axum::routing::post(|| async { "ok" }))
                .route("/status", axum::routing::get(query));
            axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), app)
                .await
                .unwrap();
        });
    });
    (url, calls)
}

#[test]
fn a_region_killed_mid_power_operation_resumes_it_after_restart() {
    let (bmc, calls) = stalling_bmc();
    let mut lab = start();
    let d = lab.dir.path().to_owned();
    ok(
        &d,
        &[
            "machines",
            "add",
            "--hostname",
            "n1",
            "--mac",
            "52:54:00:13:00:01",
            "--power-type",
            "webhook",
            "--power-param",
            &format!("power_on_uri={bmc}/on"),
            "--power-param",
            &format!("power_off_uri={bmc}/off"),
            "--power-param",
            &format!("power_query_uri={bmc}/status"),
        ],
    );
    ok(&d, &["machines", "commission", "n1"]);
    wait_until("the power-on request to reach the BMC", 30, || {
        !calls.lock().unwrap().is_empty()
    });

    // kill -9: no graceful shutdown, the power job is half done.
    lab.region.kill().unwrap();
    lab.region.wait().unwrap();
    lab.region = Command::new(env!("CARGO_BIN_EXE_kumo"))
        .args(["region", "serve"])
        .env("KUMO_DATA_DIR", d.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_until("the restarted region to power the machine on", 60, || {
        reqwest::blocking::get(format!("{}/healthz", lab.url)).is_ok()
            && machine(&lab, "n1")["power_state"] == "on"
    });
    assert_eq!(
        calls.lock().unwrap().len(),
        2,
        "the interrupted power-on ran again, once"
    );
    let m = machine(&lab, "n1");
    assert_eq!(
        m["status"], "commissioning",
        "the action itself was not lost: {m}"
    );
}

#[test]
fn the_seed_network_setup_from_the_cli() {
    let lab = start();
    let d = lab.dir.path();
    ok(
        d,
        &[
            "subnets",
            "create",
            "10.20.0.0/24",
            "--gateway",
            "10.20.0.1",
            "--dns-server",
            "10.20.0.2",
            "--domain",
            "maas.test",
        ],
    );
    // "Provide DHCP" is refused until the VLAN has a dynamic range.
    let refused = kumo(d, &["vlans", "update", "fabric-0", "0", "--dhcp", "on"]);
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("dynamic range"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    ok(
        d,
        &[
            "ipranges",
            "create",
            "10.20.0.0/24",
            "dynamic",
            "10.20.0.100",
            "10.20.0.199",
            "--comment",
            "enlistment",
        ],
    );
    ok(
        d,
        &[
            "ipranges",
            "create",
            "10.20.0.0/24",
            "reserved",
            "10.20.0.2",
            "10.20.0.9",
        ],
    );
    ok(d, &["vlans", "update", "fabric-0", "0", "--dhcp", "on"]);
    let bad = kumo(
        d,
        &[
            "ipranges",
            "create",
            "10.20.0.0/24",
            "dynamic",
            "10.20.0.199",
            "10.20.1.5",
        ],
    );
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a host address of subnet 10.20.0.0/24"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let swapped = kumo(d, &["subnets", "create", "10.20.0.5/24"]);
    assert!(
        String::from_utf8_lossy(&swapped.stderr).contains("did you mean 10.20.0.0/24"),
        "{}",
        String::from_utf8_lossy(&swapped.stderr)
    );

    ok(d, &["domains", "create", "maas.test"]);
    ok(
        d,
        &[
            "dns-records",
            "create",
            "maas.test",
            "region",
            "A",
            "10.20.0.2",
        ],
    );
    ok(
        d,
        &[
            "machines",
            "add",
            "--hostname",
            "node1",
            "--mac",
            "52:54:00:14:00:01",
        ],
    );
    let link = json_of(
        d,
        &[
            "machines",
            "link",
            "node1",
            "--mac",
            "52:54:00:14:00:01",
            "--subnet",
            "10.20.0.0/24",
        ],
    );
    assert_eq!(link["ip"], "10.20.0.10");
    let cfg = json_of(d, &["rack", "config"]);
    assert_eq!(
        cfg["subnets"][0]["hosts"][0],
        json!({"mac": "52:54:00:14:00:01", "ip": "10.20.0.10", "hostname": "node1"})
    );
    assert_eq!(cfg["hosts"][0], json!(["node1.maas.test", "10.20.0.10"]));
    ok(
        d,
        &[
            "fabrics",
            "create",
            "fabric-1",
            "--description",
            "second rack",
        ],
    );
    let fabrics = ok(d, &["fabrics", "list"]);
    assert!(
        fabrics.contains("fabric-0") && fabrics.contains("second rack"),
        "{fabrics}"
    );
    assert!(
        ok(d, &["vlans", "list"]).contains("fabric-1"),
        "a new fabric has its untagged VLAN"
    );
    ok(d, &["fabrics", "delete", "fabric-1"]);
    assert!(!ok(d, &["fabrics", "list"]).contains("fabric-1"));
    let table = ok(d, &["ipranges", "list"]);
    assert!(
        table.contains("dynamic") && table.contains("100") && table.contains("enlistment"),
        "{table}"
    );
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn scripts_from_the_cli_and_their_output_on_the_machine() {
    let lab = start();
    let d = lab.dir.path();
    std::fs::write(
        d.join("cpu-count.sh"),
        "#!/bin/sh\ngrep -c processor /proc/cpuinfo\n",
    )
    .unwrap();
    std::fs::write(d.join("notascript.sh"), "grep -c processor /proc/cpuinfo\n").unwrap();
    let added = ok(
        d,
        &[
            "scripts",
            "add",
            d.join("cpu-count.sh").to_str().unwrap(),
            "--type",
            "commissioning",
            "--timeout",
            "60",
            "--description",
            "counts CPUs",
        ],
    );
    assert!(
        added.contains("cpu-count") && added.contains("60 s"),
        "{added}"
    );
    let bad = kumo(
        d,
        &[
            "scripts",
            "add",
            d.join("notascript.sh").to_str().unwrap(),
            "--type",
            "testing",
        ],
    );
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("#! line"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let listed = ok(d, &["scripts", "list"]);
    assert!(
        listed.contains("cpu-count")
            && listed.contains("counts CPUs")
            && !listed.contains("notascript"),
        "{listed}"
    );
    let shown = ok(d, &["scripts", "show", "cpu-count"]);
    assert!(shown.contains("grep -c processor /proc/cpuinfo"), "{shown}");

    ok(
        d,
        &[
            "machines",
            "add",
            "--hostname",
            "n1",
            "--mac",
            "52:54:00:15:00:01",
        ],
    );
    let unknown = kumo(
        d,
        &[
            "machines",
            "commission",
            "n1",
            "--scripts",
            "cpu-count,nope",
        ],
    );
    assert!(
        !unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("\"nope\""),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    assert_eq!(machine(&lab, "n1")["status"], "new");
    let m = json_of(
        d,
        &["machines", "commission", "n1", "--scripts", "cpu-count"],
    );
    assert_eq!(m["script_task"]["scripts"], json!(["cpu-count"]), "{m}");
    report(
        &lab,
        "n1",
        "script-results",
        json!({"name": "cpu-count", "outcome": "passed", "exit_status": 0, "stdout": "4\n",
               "stderr": "a warning\n", "started_at": 1_700_000_000_000i64, "ended_at": 1_700_000_002_500i64}),
    );
    report(
        &lab,
        "n1",
        "status",
        json!({"event": "finished", "result": "success"}),
    );
    assert_eq!(machine(&lab, "n1")["status"], "ready");

    let shown = ok(d, &["machines", "show", "n1"]);
    let row = shown
        .lines()
        .find(|l| l.trim_start().starts_with("cpu-count"))
        .unwrap_or_else(|| panic!("no result row in:\n{shown}"));
    for cell in ["commissioning", "passed", "0", "2.5"] {
        assert!(row.contains(cell), "{cell:?} missing from {row:?}");
    }
    assert_eq!(
        ok(d, &["machines", "script-output", "n1", "cpu-count"]),
        "4\n"
    );
    assert_eq!(
        ok(
            d,
            &["machines", "script-output", "n1", "cpu-count", "--stderr"]
        ),
        "a warning\n"
    );
    let events = ok(d, &["events", "--machine", "n1"]);
    assert!(
        events.contains("commissioning script cpu-count passed in 2.5 s"),
        "{events}"
    );
    ok(d, &["scripts", "delete", "cpu-count"]);
    assert!(!ok(d, &["scripts", "list"]).contains("cpu-count"));
}
