//! The rack's package proxy against its real peers: Debian's apt-cacher-ng,
//! supervised by `kumo_rack::proxy`, and Debian's archive fetched through
//! it with curl. It binds loopback, so it needs no root and no network
//! namespace (`tests/lab_e2e.rs` in the kumo crate sees it serve on a lab
//! bridge). Skips when apt-cacher-ng is not installed (`bash
//! scripts/deps-rack.sh`); needs deb.debian.org.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kumo_rack::proxy::{ProxyConfig, ProxyStatus, PROGRAM};

const RELEASE: &str = "http://deb.debian.org/debian/dists/bookworm/Release";

/// A free port below 32768: apt-cacher-ng 3.7 cannot listen above
/// (see `proxy::MAX_PORT`), and the kernel's ephemeral ports all are.
fn free_port() -> u16 {
    let start = 20000 + (std::process::id() % 10000) as u16;
    (start..=kumo_rack::proxy::MAX_PORT)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port")
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {secs} s waiting for {what}");
}

/// HTTP status and body length of `url` fetched through `proxy`.
fn fetch(proxy: &str, url: &str) -> (String, usize) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .args(["--max-time", "60", "-x", proxy, url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, size) = text.split_once(' ').unwrap_or((&text, "0"));
    (code.to_owned(), size.parse().unwrap_or(0))
}

fn pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("run/apt-cacher-ng.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` runs; a zombie no one reaps (PID 1 in a container) does not.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn machines_fetch_debian_through_the_supervised_proxy_and_it_caches() {
    if !Path::new(PROGRAM).exists() {
        eprintln!("skipped: {PROGRAM} not installed (bash scripts/deps-rack.sh)");
        return;
    }
    // The supervisor's log, shown when the test fails.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let proxy_dir = dir.path().join("proxy");
    let port = free_port();
    let mut cfg = ProxyConfig::new(proxy_dir.clone(), port, vec![Ipv4Addr::LOCALHOST]);
    cfg.upstream = None;
    let url = cfg.url().unwrap();
    let status = ProxyStatus::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let supervisor = tokio::spawn(kumo_rack::proxy::supervise(cfg, status.clone(), async {
        let _ = stop_rx.await;
    }));
    wait_until("the proxy to accept connections", 30, || status.is_up()).await;

    // Twice through the proxy: both answered in full, the file is in the
    // cache, and the log shows both deliveries. (Release is an index file,
    // which apt-cacher-ng revalidates upstream on each request.)
    let proxy = url.clone();
    let (first, second) =
        tokio::task::spawn_blocking(move || (fetch(&proxy, RELEASE), fetch(&proxy, RELEASE)))
            .await
            .unwrap();
    assert_eq!(first.0, "200", "first fetch through {url}");
    assert_eq!(second.0, "200", "second fetch through {url}");
    assert!(
        first.1 > 1000 && first.1 == second.1,
        "{first:?} {second:?}"
    );
    let cached = proxy_dir.join("cache/deb.debian.org/debian/dists/bookworm/Release");
    assert_eq!(
        std::fs::metadata(&cached).map(|m| m.len() as usize).ok(),
        Some(first.1),
        "{} holds the file",
        cached.display()
    );
    let log = std::fs::read_to_string(proxy_dir.join("log/apt-cacher.log")).unwrap_or_default();
    let served = log
        .lines()
        .filter(|l| {
            l.contains("|O|") && l.ends_with("deb.debian.org/debian/dists/bookworm/Release")
        })
        .count();
    assert_eq!(served, 2, "two deliveries in apt-cacher.log:\n{log}");

    // Killed from outside, it is restarted.
    let old = pid(&proxy_dir).expect("pid file");
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(old, libc::SIGKILL) };
    wait_until("the supervisor to notice", 10, || !status.is_up()).await;
    wait_until("the proxy to be restarted", 30, || {
        status.is_up() && pid(&proxy_dir).is_some_and(|p| p != old)
    })
    .await;
    let restarted = pid(&proxy_dir).unwrap();

    // Stopping the rack stops the proxy.
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), supervisor)
        .await
        .expect("the supervisor returns on stop")
        .unwrap();
    assert!(
        !alive(restarted),
        "apt-cacher-ng {restarted} outlived the rack"
    );
    assert!(!status.is_up());
}

/// A rack killed outright (SIGKILL: no chance to stop its child) takes
/// its package proxy with it.
#[test]
fn the_proxy_dies_with_a_killed_rack() {
    if !Path::new(PROGRAM).exists() {
        eprintln!("skipped: {PROGRAM} not installed (bash scripts/deps-rack.sh)");
        return;
    }
    // The "rack" is this test binary run again as the helper below.
    let dir = tempfile::tempdir().unwrap();
    let mut rack = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "proxy_helper_rack", "--ignored"])
        .env("KUMO_PROXY_HELPER_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let proxy_dir = dir.path().join("proxy");
    let start = Instant::now();
    let pid = loop {
        if let Some(p) = pid(&proxy_dir).filter(|p| alive(*p)) {
            break p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the helper rack started no proxy"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    rack.kill().unwrap();
    rack.wait().unwrap();
    let start = Instant::now();
    while alive(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "apt-cacher-ng {pid} outlived its killed rack"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Not a test: the rack `the_proxy_dies_with_a_killed_rack` kills.
#[test]
#[ignore = "a helper process for the_proxy_dies_with_a_killed_rack"]
fn proxy_helper_rack() {
    let Some(dir) = std::env::var_os("KUMO_PROXY_HELPER_DIR") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cfg = ProxyConfig::new(
            Path::new(&dir).join("proxy"),
            free_port(),
            vec![Ipv4Addr::LOCALHOST],
        );
        cfg.upstream = None;
        kumo_rack::proxy::supervise(cfg, ProxyStatus::default(), std::future::pending()).await;
    });
}
