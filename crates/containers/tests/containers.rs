//! Real container machines: a Debian bookworm root filesystem built with
//! debootstrap (cached under `<repo>/.cache/containers/`), two containers
//! booted with systemd-nspawn on a bridge of the test's own, pinged from
//! the host and from each other, entered, stopped, restarted, found again
//! by a new `Containers` value and destroyed. One container installs a
//! package with apt through a small HTTP proxy the test runs on the
//! bridge (the bridge has no route out).
//!
//! Needs root, systemd-nspawn and debootstrap (`scripts/deps-containers.sh`);
//! skipped with the reason printed otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kumo_containers::{
    apt_proxy_file, ensure_rootfs_with, ContainerSpec, ContainerState, Containers, InjectedFile,
    RootfsSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for p in [
        "systemd-nspawn",
        "debootstrap",
        "nsenter",
        "setsid",
        "ip",
        "ping",
    ] {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()));
        if !found {
            return Some(format!("{p} not installed (scripts/deps-containers.sh)"));
        }
    }
    None
}

fn repo_cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/containers")
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops and removes what a test run made — containers, state directory,
/// bridge — when dropped, so a failing assertion leaves nothing running.
struct Lab {
    state: PathBuf,
    bridge: String,
}

impl Lab {
    fn new(state: PathBuf, bridge: String, cidr: &str) -> Lab {
        std::fs::create_dir_all(&state).unwrap();
        // Read by a later run if this one is killed before Drop.
        std::fs::write(state.join("bridge"), &bridge).unwrap();
        let lab = Lab { state, bridge };
        sh(&["ip", "link", "add", &lab.bridge, "type", "bridge"]);
        sh(&["ip", "addr", "add", cidr, "dev", &lab.bridge]);
        sh(&["ip", "link", "set", &lab.bridge, "up"]);
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        teardown(&self.state, &self.bridge);
    }
}

/// Destroys every container under `state`, then the bridge and the
/// directory. Runs on a thread of its own: Drop may run inside the test's
/// runtime, which cannot be blocked on.
fn teardown(state: &Path, bridge: &str) {
    let state = state.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = Containers::new(state.clone());
            for name in c.list().await.unwrap_or_default() {
                if let Err(e) = c.destroy(&name).await {
                    eprintln!("cleanup: {e}");
                }
            }
        });
        let _ = std::fs::remove_dir_all(&state);
    })
    .join()
    .unwrap();
    let _ = Command::new("ip").args(["link", "del", bridge]).output();
}

/// Containers and bridges of earlier runs that died before cleaning up.
fn clean_earlier_runs(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("state-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let bridge = std::fs::read_to_string(e.path().join("bridge")).unwrap_or_default();
        eprintln!("removing the leftovers of run {pid} (bridge {bridge:?})");
        teardown(&e.path(), bridge.trim());
    }
}

/// A forward HTTP proxy for apt: each connection goes to the host its
/// first request names (apt keeps one connection per host).
async fn http_proxy(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut head = vec![];
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            let Some(host) = line
                .split_whitespace()
                .nth(1)
                .and_then(|u| u.strip_prefix("http://"))
                .and_then(|u| u.split('/').next())
                .map(|h| {
                    if h.contains(':') {
                        h.to_owned()
                    } else {
                        format!("{h}:80")
                    }
                })
            else {
                return;
            };
            let Ok(mut upstream) = tokio::net::TcpStream::connect(&host).await else {
                return;
            };
            // Origin servers accept the absolute form proxies receive.
            if upstream.write_all(&head).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_boot_network_restart_and_go_away() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping the container suite: {why}");
        return;
    }
    let cache = repo_cache();
    std::fs::create_dir_all(&cache).unwrap();
    clean_earlier_runs(&cache);

    let t = Instant::now();
    let rootfs = ensure_rootfs_with(&cache, &RootfsSpec::bookworm(), |l| eprintln!("{l}"))
        .await
        .unwrap();
    eprintln!(
        "root filesystem: {} in {:.1} s",
        rootfs.display(),
        t.elapsed().as_secs_f64()
    );

    let pid = std::process::id();
    let x = pid % 250 + 1;
    let gateway = format!("10.250.{x}.1");
    let lab = Lab::new(
        cache.join(format!("state-{pid}")),
        format!("kct{}", pid % 10000),
        &format!("{gateway}/24"),
    );
    let proxy = tokio::net::TcpListener::bind((gateway.as_str(), 0))
        .await
        .unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    tokio::spawn(http_proxy(proxy));

    let (ip_a, ip_b) = (format!("10.250.{x}.10"), format!("10.250.{x}.11"));
    let spec = |name: &str, ip: &str| ContainerSpec {
        name: name.into(),
        hostname: format!("{name}.test"),
        rootfs: rootfs.clone(),
        bridge: lab.bridge.clone(),
        address: format!("{ip}/24"),
        gateway: Some(gateway.clone()),
        dns: vec![gateway.clone()],
        files: vec![
            apt_proxy_file(&proxy_url),
            InjectedFile::new(
                "/etc/systemd/system/kumo-hello.service",
                "[Service]\nType=oneshot\nExecStart=/usr/bin/touch /run/kumo-hello\n",
                0o644,
            ),
        ],
        enable_units: vec!["kumo-hello.service".into()],
        authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2v test@kumo".into()],
    };
    let a = spec("kct-a", &ip_a);
    let b = spec("kct-b", &ip_b);
    let c = Containers::new(lab.state.clone());

    let t = Instant::now();
    c.create(&a).await.unwrap();
    eprintln!(
        "create (unpack + configure): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    c.create(&b).await.unwrap();
    // Idempotent with the same spec, refused with another.
    c.create(&a).await.unwrap();
    let mut other = a.clone();
    other.address = format!("10.250.{x}.12/24");
    let e = c.create(&other).await.unwrap_err().to_string();
    assert!(e.contains("kct-a exists with a different spec"), "{e}");
    assert_eq!(c.list().await.unwrap(), ["kct-a", "kct-b"]);
    assert_eq!(c.state("kct-a").await.unwrap(), ContainerState::Stopped);

    let t = Instant::now();
    c.start("kct-a").await.unwrap();
    eprintln!(
        "boot to running (kct-a): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    c.start("kct-b").await.unwrap();
    eprintln!(
        "boot to running (kct-b): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    c.start("kct-a").await.unwrap(); // idempotent

    for (name, ip) in [("kct-a", &ip_a), ("kct-b", &ip_b)] {
        sh(&["ping", "-c1", "-W5", ip]);
        let out = c.exec(name, &["hostname"]).await.unwrap();
        assert_eq!(text(&out), format!("{name}.test"));
        let out = c
            .exec(name, &["systemctl", "is-system-running"])
            .await
            .unwrap();
        let state = text(&out);
        if state == "degraded" {
            let failed = c
                .exec(name, &["systemctl", "--failed", "--no-legend"])
                .await
                .unwrap();
            eprintln!("{name} degraded: {}", text(&failed));
        }
        assert!(
            ["running", "degraded"].contains(&state.as_str()),
            "{name}: {state}"
        );
        // The injected unit ran, root's key is in place, ssh has host keys.
        let out = c
            .exec(name, &["sh", "-c", "test -e /run/kumo-hello && cat /root/.ssh/authorized_keys && systemctl is-active ssh"])
            .await
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        assert!(
            text(&out).ends_with("test@kumo\nactive"),
            "{name}: {}",
            text(&out)
        );
    }
    let out = c
        .exec("kct-a", &["ping", "-c1", "-W5", &ip_b])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "a → b: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Exit statuses come back as they are.
    let out = c
        .exec("kct-a", &["sh", "-c", "echo oops >&2; exit 3"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    // Failures say which container and why.
    let mut c_spec = spec("kct-c", &format!("10.250.{x}.13"));
    c_spec.bridge = "kct-nobridge".into();
    c.create(&c_spec).await.unwrap();
    let e = c.start("kct-c").await.unwrap_err().to_string();
    assert_eq!(
        e,
        "container kct-c: bridge kct-nobridge does not exist on this host"
    );
    c.destroy("kct-c").await.unwrap();
    let c_spec = spec("kct-c", &format!("10.250.{x}.13"));
    c.create(&c_spec).await.unwrap();
    let root = c.rootfs_dir("kct-c");
    for init in ["usr/lib/systemd/systemd", "usr/sbin/init"] {
        std::fs::remove_file(root.join(init)).unwrap();
    }
    let e = c.start("kct-c").await.unwrap_err().to_string();
    assert!(
        e.starts_with("container kct-c exited while booting; console.log ends:\n"),
        "{e}"
    );
    assert!(e.contains("execv(/usr/lib/systemd/systemd"), "{e}");
    assert_eq!(c.state("kct-c").await.unwrap(), ContainerState::Stopped);
    c.destroy("kct-c").await.unwrap();

    // apt works inside, without a terminal, through the injected proxy.
    let t = Instant::now();
    let out = c
        .exec(
            "kct-b",
            &[
                "sh",
                "-c",
                "apt-get -q update && apt-get -q -y install hello && hello",
            ],
        )
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "apt in kct-b: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text(&out).ends_with("Hello, world!"));
    eprintln!(
        "apt-get update + install hello: {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Stop, and start again.
    let t = Instant::now();
    c.stop("kct-b").await.unwrap();
    eprintln!("stop (clean poweroff): {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(c.state("kct-b").await.unwrap(), ContainerState::Stopped);
    c.stop("kct-b").await.unwrap(); // idempotent
    let e = c.exec("kct-b", &["true"]).await.unwrap_err().to_string();
    assert_eq!(e, "container kct-b is not running");
    let t = Instant::now();
    c.start("kct-b").await.unwrap();
    eprintln!(
        "reboot to running (kct-b): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let out = c.exec("kct-b", &["hello"]).await.unwrap();
    assert_eq!(
        text(&out),
        "Hello, world!",
        "installed packages survive a restart"
    );
    sh(&["ping", "-c1", "-W5", &ip_b]);

    // A new value on the same directory (a restarted controller) finds them.
    let ContainerState::Running { leader_pid } = c.state("kct-a").await.unwrap() else {
        panic!("kct-a not running");
    };
    drop(c);
    let c = Containers::new(lab.state.clone());
    assert_eq!(
        c.state("kct-a").await.unwrap(),
        ContainerState::Running { leader_pid }
    );
    assert!(matches!(
        c.state("kct-b").await.unwrap(),
        ContainerState::Running { .. }
    ));
    let out = c.exec("kct-a", &["hostname"]).await.unwrap();
    assert_eq!(text(&out), "kct-a.test");

    for name in ["kct-a", "kct-b"] {
        let t = Instant::now();
        c.destroy(name).await.unwrap();
        eprintln!(
            "destroy ({name}, running): {:.1} s",
            t.elapsed().as_secs_f64()
        );
        assert_eq!(c.state(name).await.unwrap(), ContainerState::Missing);
        c.destroy(name).await.unwrap(); // idempotent
    }
    assert!(c.list().await.unwrap().is_empty());
    // The containers' veths went with them.
    let out = Command::new("ip")
        .args(["-br", "link", "show", "master", &lab.bridge])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
    drop(lab);
}
