//! `kumo images build` end to end: the real binary builds the Debian disk
//! image (its root filesystem cached under `<repo>/.cache/images`, so only
//! the first run debootstraps), and QEMU boots it from a copy-on-write
//! overlay bigger than the image, as a deployed machine's disk is. cloud-init
//! gets its NoCloud seed over HTTP from this test (QEMU passes the URL in
//! the SMBIOS serial number); the test then logs in as root over SSH with a
//! key it made and finds the hostname from the seed's meta-data, the root
//! filesystem found by label and grown to the disk.
//!
//! Needs root (loop devices, mounts, chroot) and `bash
//! scripts/deps-images.sh` (scripts/test.sh runs it); skips otherwise.
//! QEMU runs under TCG, so it works in VMs without nested KVM.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::found;

const HOSTNAME: &str = "kumo-image-e2e";
/// Bigger than the 2 GiB image: cloud-init grows the root partition.
const DISK_BYTES: u64 = 4 << 30;
/// TCG boots take about a minute; a busy host may need several.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The tools the build and this test run.
const TOOLS: &[&str] = &[
    "debootstrap",
    "sfdisk",
    "mkfs.ext4",
    "losetup",
    "partx",
    "zstd",
    "qemu-system-x86_64",
    "qemu-img",
    "ssh",
    "ssh-keygen",
];

#[test]
fn a_built_image_boots_and_answers_ssh_with_the_seeded_hostname() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: kumo images build needs root (loop devices, mounts, chroot)");
        return;
    }
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !found(t)).collect();
    if !missing.is_empty() {
        eprintln!("skipped: {missing:?} not found: run bash scripts/deps-images.sh");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);

    let image = build_image(dir.path());
    let raw = path("disk.raw");
    run(Command::new("zstd")
        .args(["-q", "-d", "-o"])
        .arg(&raw)
        .arg(&image.path));
    assert_eq!(
        sha256_of(&raw),
        image.raw_sha256,
        "the decompressed image is not what the manifest says"
    );
    let disk = path("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&raw)
        .arg(&disk)
        .arg(DISK_BYTES.to_string()));

    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kumo-e2e", "-f"])
        .arg(path("key")));
    let public_key = std::fs::read_to_string(path("key.pub")).unwrap();
    let seed = SeedServer::start(vec![
        (
            "/meta-data",
            format!("instance-id: iid-kumo-e2e-1\nlocal-hostname: {HOSTNAME}\n"),
        ),
        (
            "/user-data",
            format!(
                "#cloud-config\ndisable_root: false\nssh_authorized_keys:\n  - {}\n",
                public_key.trim()
            ),
        ),
        ("/vendor-data", String::new()),
    ]);

    let ssh_port = free_port();
    let mut vm = Vm::start(&disk, &path("console.log"), ssh_port, seed.port);
    let ssh = Ssh {
        key: path("key"),
        port: ssh_port,
    };
    let start = Instant::now();
    let hostname = loop {
        let out = ssh.run("hostname");
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        assert!(
            vm.running(),
            "QEMU exited; seed requests: {:?}",
            seed.requests()
        );
        assert!(
            start.elapsed() < BOOT_TIMEOUT,
            "no SSH after {} s (last: {}); seed requests: {:?}",
            BOOT_TIMEOUT.as_secs(),
            String::from_utf8_lossy(&out.stderr).trim(),
            seed.requests()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!(
        "QEMU start → SSH answering: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(hostname, HOSTNAME, "seed requests: {:?}", seed.requests());

    // cloud-init's first boot is over (or failed: status says which).
    let status = ssh.ok("cloud-init status --wait --long");
    assert!(status.contains("status: done"), "{status}");
    assert!(status.contains("DataSourceNoCloud"), "{status}");
    let root = ssh.ok("findmnt -n -o FSTYPE,LABEL,SIZE -b /");
    let fields: Vec<&str> = root.split_whitespace().collect();
    assert_eq!(fields[..2], ["ext4", "kumo-root"], "{root}");
    let size: u64 = fields[2].parse().unwrap();
    assert!(
        size > DISK_BYTES * 3 / 4,
        "the root filesystem was not grown to the disk: {root}"
    );
    let cmdline = ssh.ok("cat /proc/cmdline");
    assert!(cmdline.contains("root=LABEL=kumo-root"), "{cmdline}");
    // A machine of its own: a fresh machine-id and host keys.
    assert_eq!(ssh.ok("cat /etc/machine-id").trim().len(), 32);
    assert!(
        ssh.ok("ls /etc/ssh").contains("ssh_host_ed25519_key.pub"),
        "no host keys"
    );
    let failed = ssh.ok("systemctl --failed --no-legend --plain");
    assert!(failed.trim().is_empty(), "failed units: {failed}");
    // Where the boot's time went, for whoever trims the image next.
    eprintln!(
        "{}",
        ssh.ok("systemd-analyze; systemd-analyze blame --no-pager | head -12")
    );
}

/// The manifest `kumo images build` wrote, checked against the file.
struct Built {
    path: PathBuf,
    raw_sha256: String,
}

/// Runs `kumo images build` with the repository's image cache.
fn build_image(dir: &Path) -> Built {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/images");
    let output = dir.join("images");
    let log = dir.join("build.log");
    let file = std::fs::File::create(&log).unwrap();
    let start = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_kumo"))
        .args(["images", "build", "--no-upload", "--output"])
        .arg(&output)
        .arg("--cache-dir")
        .arg(&cache)
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    if !status.success() {
        let detail = std::fs::read_to_string(output.join("debian-12.build.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!("kumo images build failed:\n{text}\n--- build log tail:\n{detail}");
    }
    eprintln!(
        "kumo images build: {:.0} s\n{}",
        start.elapsed().as_secs_f64(),
        text.trim_end()
    );
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("debian-12.json")).unwrap())
            .unwrap();
    let path = PathBuf::from(manifest["path"].as_str().unwrap());
    assert_eq!(
        path,
        output.canonicalize().unwrap().join("debian-12.img.zst")
    );
    assert_eq!(
        manifest["size"].as_u64().unwrap(),
        std::fs::metadata(&path).unwrap().len(),
        "{manifest}"
    );
    assert_eq!(manifest["sha256"], sha256_of(&path), "{manifest}");
    assert_eq!(manifest["raw_size"], 2u64 << 30, "{manifest}");
    assert_eq!(
        (&manifest["os"], &manifest["release"], &manifest["arch"]),
        (&"debian".into(), &"bookworm".into(), &"amd64".into())
    );
    Built {
        path,
        raw_sha256: manifest["raw_sha256"].as_str().unwrap().to_owned(),
    }
}

/// The QEMU machine, killed on drop; its serial console's last lines are
/// printed when the test fails.
struct Vm {
    child: Child,
    console: PathBuf,
}

impl Vm {
    /// BIOS boot from a virtio disk, user-mode networking with the guest's
    /// SSH on 127.0.0.1:`ssh_port`, and the NoCloud seed's URL (the host
    /// is 10.0.2.2 to the guest) in the SMBIOS serial number. cloud-init
    /// 22.4 (bookworm's) applies an HTTP seed only under the
    /// `ds=nocloud-net` name: with `ds=nocloud` it fetches the seed in its
    /// network stage but then ignores it as meant for the local stage.
    fn start(disk: &Path, console: &Path, ssh_port: u16, seed_port: u16) -> Vm {
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-smp", "2", "-m", "1024"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .args(["-serial", &format!("file:{}", console.display())])
            .args([
                "-drive",
                &format!("file={},if=virtio,format=qcow2", disk.display()),
            ])
            .args([
                "-netdev",
                &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"),
            ])
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .args([
                "-smbios",
                &format!("type=1,serial=ds=nocloud-net;s=http://10.0.2.2:{seed_port}/"),
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start qemu-system-x86_64");
        Vm {
            child,
            console: console.to_owned(),
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.console).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- last lines of the serial console:");
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Ssh {
    key: PathBuf,
    port: u16,
}

impl Ssh {
    fn run(&self, cmd: &str) -> Output {
        Command::new("ssh")
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
            .args(["-o", "LogLevel=ERROR"])
            .arg("root@127.0.0.1")
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    }

    fn ok(&self, cmd: &str) -> String {
        let out = self.run(cmd);
        assert!(
            out.status.success(),
            "ssh {cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// A tiny HTTP server for the NoCloud seed: fixed files by path, 404
/// otherwise; it records what was asked for, to explain a failed boot.
struct SeedServer {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl SeedServer {
    fn start(files: Vec<(&'static str, String)>) -> SeedServer {
        // QEMU's user network forwards the guest's 10.0.2.2 to loopback.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(vec![]));
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve(stream, &files, &log);
            }
        });
        SeedServer { port, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(
    mut stream: TcpStream,
    files: &[(&str, String)],
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The headers: read to the blank line and ignore.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
    let body = files.iter().find(|(p, _)| *p == path).map(|(_, b)| b);
    log.lock()
        .unwrap()
        .push(format!("{path} {}", if body.is_some() { 200 } else { 404 }));
    let (status, body) = match body {
        Some(b) => ("200 OK", b.as_str()),
        None => ("404 Not Found", ""),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// A port nothing listens on now (QEMU binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sha256_of(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("{:x}", hasher.finalize())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
