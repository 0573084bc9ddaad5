//! Orchestration end to end, through the real binary, as root on this
//! host: the region hosts the controller; `kumo deploy charms/bundle.yaml`
//! makes two systemd-nspawn container machines on a bridge of the test's
//! own (`kotest0`, 10.252.0.0/24), their agents install MariaDB and the
//! web application from Debian's packages (through an apt-cacher-ng proxy
//! on the bridge), relate them, and the application answers over HTTP with
//! a row from the database. Then: a second deploy changes nothing,
//! `add-unit` scales the application onto a new machine, an agent killed
//! while a hook runs comes back and converges without completing a hook
//! twice, and `remove-relation` leaves the application blocked.
//!
//! Skips unless root with systemd-nspawn, debootstrap and apt-cacher-ng
//! (`bash scripts/deps-containers.sh`, `bash scripts/deps-rack.sh`).

mod support;

use std::process::Stdio;
use std::time::Instant;

use serde_json::Value;
use support::controller::{
    http_get, idle, repo, sh, skip_reason, unit, workload, ControllerLab, Net,
};

const BRIDGE: &str = "kotest0";
const HOST_IP: &str = "10.252.0.1";
const PROXY_PORT: u16 = 3143;

fn count_log(h: &ControllerLab, entity: &str, message: &str) -> usize {
    let out = h.ok(&[
        "debug-log",
        "--no-tail",
        "--lines",
        "100000",
        "--include",
        entity,
    ]);
    out.lines().filter(|l| l.contains(message)).count()
}

#[test]
fn a_bundle_of_mariadb_and_a_web_app_on_container_machines() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let h = ControllerLab::start(Net {
        bridge: BRIDGE,
        host_ip: HOST_IP,
        proxy_port: PROXY_PORT,
        range: "10.252.0.100-10.252.0.150",
        proxy_cache: None,
    });
    let key = h.key.clone();
    let cache = repo().join(".cache/containers");

    // Bad input is refused before anything changes.
    let bad = h.kumo(&[
        "deploy",
        "./charms/webapp",
        "broken",
        "--config",
        "port=eighty",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("port"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(h.status()["applications"]
        .as_object()
        .is_none_or(|a| a.is_empty()));

    let plan = h.ok(&["plan", "charms/bundle.yaml"]);
    eprintln!("{plan}");
    assert!(plan.contains("deploy application mariadb"), "{plan}");
    let started = Instant::now();
    h.ok(&["deploy", "charms/bundle.yaml"]);
    let deployed = h.wait_status("both applications active", 1500, |s| {
        workload(s, "mariadb/0") == "active"
            && workload(s, "webapp/0") == "active"
            && idle(s, "mariadb/0")
            && idle(s, "webapp/0")
    });
    eprintln!(
        "bundle deployed and active in {:.1} s",
        deployed.as_secs_f64()
    );
    let s = h.status();
    let web = unit(&s, "webapp/0")["address"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = http_get(&format!("http://{web}:8080/"));
    assert_eq!((code, body.trim()), (200, "hello from mariadb"));

    // The database password is a secret: the app has it, kumo never shows it.
    let conf = h.ok(&[
        "exec",
        "--unit",
        "webapp/0",
        "--",
        "cat",
        "/etc/webapp/db.json",
    ]);
    let conf_json = &conf[conf.find('{').expect("db.json printed")..conf.rfind('}').unwrap() + 1];
    let password = serde_json::from_str::<Value>(conf_json).unwrap()["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(password.len() >= 20, "{conf}");
    for args in [
        vec!["status", "--format", "json"],
        vec!["show-unit", "webapp/0"],
        vec!["show-unit", "mariadb/0"],
        vec!["debug-log", "--no-tail", "--lines", "100000"],
    ] {
        let out = h.ok(&args);
        assert!(
            !out.contains(&password),
            "kumo {args:?} shows the database password"
        );
    }
    let show = h.ok(&["show-unit", "webapp/0"]);
    assert!(show.contains("mariadb/password-webapp"), "{show}");

    // An action, with its results.
    let action = h.ok(&["run-action", "mariadb/0", "list-databases", "--wait"]);
    assert!(action.contains("webapp"), "{action}");

    // Idempotent: nothing to do the second time.
    let again = h.ok(&["deploy", "charms/bundle.yaml"]);
    assert!(again.contains("nothing to do"), "{again}");

    // Scale out onto a new machine.
    h.ok(&["add-unit", "webapp"]);
    let scaled = h.wait_status("webapp/1 active", 900, |s| {
        workload(s, "webapp/1") == "active" && idle(s, "webapp/1")
    });
    eprintln!("add-unit to active in {:.1} s", scaled.as_secs_f64());
    let s = h.status();
    let web1 = unit(&s, "webapp/1")["address"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(web, web1);
    let (code, body) = http_get(&format!("http://{web1}:8080/"));
    assert_eq!((code, body.trim()), (200, "hello from mariadb"));

    // Kill webapp/0's agent while its config-changed hook runs.
    let before = count_log(&h, "webapp/0", "ran config-changed hook");
    h.ok(&["config", "webapp", "port=8081"]);
    h.wait_status("webapp/0 running a hook", 120, |s| {
        unit(s, "webapp/0")["agent"].as_str() == Some("executing")
    });
    let machine = unit(&h.status(), "webapp/0")["machine"]
        .as_str()
        .unwrap()
        .to_string();
    let instance = h.status()["machines"][&machine]["instance"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = std::fs::read_to_string(
        h.dir
            .path()
            .join(format!("data/containers/{instance}/nspawn.pid")),
    )
    .unwrap();
    let out = sh(&format!(
        "leader=$(pgrep -P {} | head -n1); nsenter -t $leader -a pkill -9 -f 'kumo agent machine'",
        pid.trim()
    ));
    assert!(
        out.status.success(),
        "killing the agent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.wait_status(
        "webapp/0 to converge after its agent was killed",
        300,
        |s| {
            workload(s, "webapp/0") == "active"
                && idle(s, "webapp/0")
                && unit(s, "webapp/0")["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("8081")
        },
    );
    let (code, body) = http_get(&format!("http://{web}:8081/"));
    assert_eq!((code, body.trim()), (200, "hello from mariadb"));
    let after = count_log(&h, "webapp/0", "ran config-changed hook");
    assert_eq!(
        after,
        before + 1,
        "config-changed completed exactly once more"
    );

    // A hook that fails leaves the unit in error, its output in
    // show-unit; fixing the config and `resolve` (retry) recovers it.
    h.ok(&["config", "webapp", "port=70000"]);
    h.wait_status("webapp/0 in error", 120, |s| {
        workload(s, "webapp/0") == "error"
    });
    let show = h.ok(&["show-unit", "webapp/0"]);
    assert!(
        show.contains("invalid port"),
        "the failed hook's output: {show}"
    );
    h.ok(&["config", "webapp", "port=8081"]);
    h.ok(&["resolve", "webapp/0"]);
    h.wait_status("webapp/0 resolved", 120, |s| {
        workload(s, "webapp/0") == "active" && idle(s, "webapp/0")
    });
    h.wait_status("webapp/1 resolved", 120, |s| {
        if workload(s, "webapp/1") == "error" {
            let _ = h.kumo(&["resolve", "webapp/1"]);
        }
        workload(s, "webapp/1") == "active" && idle(s, "webapp/1")
    });

    // Without the relation the application has no database: blocked.
    h.ok(&["remove-relation", "webapp", "mariadb"]);
    h.wait_status("webapp blocked", 300, |s| {
        ["webapp/0", "webapp/1"]
            .iter()
            .all(|u| workload(s, u) == "blocked" && idle(s, u))
    });
    let s = h.status();
    assert_eq!(unit(&s, "webapp/0")["message"], "needs a database relation");
    let (code, _) = http_get(&format!("http://{web}:8081/"));
    assert_ne!(code, 200);
    // A new version of a charm: units run upgrade-charm, then config-changed.
    let v2 = h.dir.path().join("webapp-v2");
    let out = sh(&format!(
        "cp -a {} {} && echo '# v2' >> {}/hooks/update-status",
        repo().join("charms/webapp").display(),
        v2.display(),
        v2.display()
    ));
    assert!(out.status.success());
    h.ok(&["refresh", "webapp", "--path", v2.to_str().unwrap()]);
    h.wait_status("webapp refreshed", 120, |_| {
        count_log(&h, "webapp/1", "ran upgrade-charm hook") == 1
    });

    // An existing host over SSH: the manual provider installs the same
    // agent there, and removes it with the model.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hosts = kumo_containers::Containers::new(h.dir.path().join("hosts"));
    let rootfs = rt
        .block_on(kumo_containers::ensure_rootfs(
            &cache,
            &kumo_containers::RootfsSpec::bookworm(),
        ))
        .unwrap();
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let spec = kumo_containers::ContainerSpec {
        name: "kotest-host".into(),
        hostname: "manual-host".into(),
        rootfs,
        bridge: BRIDGE.into(),
        address: "10.252.0.160/24".into(),
        gateway: Some(HOST_IP.into()),
        dns: vec![],
        files: vec![kumo_containers::apt_proxy_file(&format!(
            "http://{HOST_IP}:{PROXY_PORT}/"
        ))],
        enable_units: vec![],
        authorized_keys: vec![public.trim().to_string()],
    };
    rt.block_on(hosts.create(&spec)).unwrap();
    rt.block_on(hosts.start("kotest-host")).unwrap();
    h.ok(&["add-model", "hosts", "--provider", "manual"]);
    h.ok(&["add-machine", "-m", "hosts", "ssh:root@10.252.0.160"]);
    h.wait_status_of("hosts", "the manual machine's agent", 120, |s| {
        s["machines"]["0"]["agent"] == "started"
    });
    h.ok(&["deploy", "-m", "hosts", "./charms/webapp", "--to", "0"]);
    h.wait_status_of("hosts", "webapp on the manual machine", 300, |s| {
        workload(s, "webapp/0") == "blocked" && idle(s, "webapp/0")
    });
    h.ok(&["destroy-model", "hosts", "--yes"]);
    let out = rt
        .block_on(hosts.exec("kotest-host", &["systemctl", "is-active", "kumo-agent"]))
        .unwrap();
    assert_ne!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "active",
        "the agent left the host"
    );

    // The controller on a machine: bootstrapped onto the host over SSH,
    // it runs as a service there with a database of its own, and drives a
    // model's machines itself (here the host, added back as a manual
    // machine). The CLI's profile for it is made current.
    let pubkey = key.with_extension("pub");
    let on_host = [
        "bootstrap",
        "--to",
        "ssh:root@10.252.0.160",
        "--name",
        "onhost",
        "--bridge",
        BRIDGE,
        "--address-range",
        "10.252.0.170-10.252.0.179",
        "--authorized-key",
        pubkey.to_str().unwrap(),
    ];
    let out = h.ok(&on_host);
    eprintln!("{out}");
    let controller_key = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("ssh-ed25519 ") && l.contains("kumo-controller@"))
        .unwrap_or_else(|| panic!("the controller's SSH key in: {out}"))
        .to_string();
    // Bootstrapping again keeps the database, keys and service; this time
    // metal models take machines from the suite's region, over its API.
    let again = h.ok(&[&on_host[..], &["--region-profile", "local"]].concat());
    assert!(again.contains(&controller_key), "{again}");
    let region_keys = h.ok(&["sshkeys", "list", "--profile", "local"]);
    assert!(
        region_keys.contains("kumo-controller@10.252.0.160"),
        "the controller's key is the region user's: {region_keys}"
    );
    let out = rt
        .block_on(hosts.exec(
            "kotest-host",
            &[
                "sh",
                "-c",
                &format!("echo '{controller_key}' >> /root/.ssh/authorized_keys && systemctl is-active kumo-controller"),
            ],
        ))
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "active");
    assert!(h.ok(&["whoami"]).contains("admin"));
    h.ok(&["add-model", "onhost-m", "--provider", "manual"]);
    h.ok(&["add-machine", "-m", "onhost-m", "ssh:root@10.252.0.160"]);
    h.wait_status_of(
        "onhost-m",
        "the host's own agent, under the host's controller",
        120,
        |s| s["machines"]["0"]["agent"] == "started",
    );
    h.ok(&["deploy", "-m", "onhost-m", "./charms/webapp", "--to", "0"]);
    h.wait_status_of("onhost-m", "webapp under the host's controller", 300, |s| {
        workload(s, "webapp/0") == "blocked" && idle(s, "webapp/0")
    });
    // A metal model there asks the suite's region, which has no machines:
    // the region's own reason shows on the machine.
    h.ok(&["add-model", "onhost-metal", "--provider", "metal"]);
    h.ok(&["add-machine", "-m", "onhost-metal"]);
    h.wait_status_of("onhost-metal", "the region's answer", 60, |s| {
        s["machines"]["0"]["state"] == "error"
            && s["machines"]["0"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("no ready machine")
    });
    h.ok(&["destroy-model", "onhost-metal", "--yes"]);
    // The region's controller knows nothing of it.
    let models = h.ok(&["models", "--profile", "local"]);
    assert!(!models.contains("onhost-m"), "{models}");
    h.ok(&["destroy-model", "onhost-m", "--yes"]);
    rt.block_on(hosts.destroy("kotest-host")).unwrap();

    eprintln!("whole suite: {:.1} s", started.elapsed().as_secs_f64());
    let _ = Stdio::null();
}
