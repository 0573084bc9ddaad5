//! The orchestration verbs through the real binary against a real region:
//! `kumo bootstrap`, models, deploying charm directories and bundles,
//! config, relations, plans, diffs and exports, status. No containers are
//! made: applications have no units, and the one machine added is a manual
//! one on a host that does not resolve, so its provisioning fails at once.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use serde_json::Value;
use support::{stdout_of_success, wait_until};

struct Region {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("region.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of the region's log:");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Region {
    fn start() -> Region {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut r = Region { child: None, dir };
        r.ok(&["init", "--listen", &listen, "--password", "correct-horse"]);
        let log = std::fs::File::create(r.path("region.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kumo"))
            .args(["region", "serve"])
            .env("KUMO_DATA_DIR", r.path("data"))
            // Never the shared cache: nothing here should build a rootfs.
            .env("KUMO_CONTAINERS_CACHE", r.path("containers-cache"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        r.child = Some(child);
        let url = format!("http://{listen}/healthz");
        wait_until("the region to answer", 30, || {
            reqwest::blocking::get(&url).is_ok()
        });
        r
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn kumo(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kumo"))
            .args(args)
            .current_dir(self.dir.path())
            .env("KUMO_CONFIG_DIR", self.path("config"))
            .env("KUMO_DATA_DIR", self.path("data"))
            .env("KUMO_CHARM_PATH", self.path("charms"))
            .env_remove("KUMO_PROFILE")
            .env_remove("KUMO_MODEL")
            .output()
            .expect("run kumo")
    }

    fn ok(&self, args: &[&str]) -> String {
        stdout_of_success(args, self.kumo(args))
    }

    /// The stderr of a run that must fail with exit code 1.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.kumo(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "kumo {args:?} should fail:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// web (provides website: http; an int option), proxy (requires http) and
/// db (provides mysql), under `<dir>/charms`.
fn charms(r: &Region) {
    write(
        &r.path("charms/web/metadata.yaml"),
        "name: web\nsummary: a web server\nprovides:\n  website:\n    interface: http\n",
    );
    write(
        &r.path("charms/web/config.yaml"),
        "options:\n  port:\n    type: int\n    default: 80\n    description: The port it listens on.\n  greeting:\n    type: string\n    default: hello\n    description: What it says.\n",
    );
    write(&r.path("charms/web/hooks/install"), "#!/bin/sh\nexit 0\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        r.path("charms/web/hooks/install"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    write(
        &r.path("charms/proxy/metadata.yaml"),
        "name: proxy\nsummary: a proxy\nrequires:\n  backend:\n    interface: http\n",
    );
    write(
        &r.path("charms/db/metadata.yaml"),
        "name: db\nsummary: a database\nprovides:\n  db:\n    interface: mysql\n",
    );
}

#[test]
fn orchestration_verbs_through_the_cli() {
    let r = Region::start();
    charms(&r);
    let pid = std::process::id();

    // Nothing works before the controller is bootstrapped.
    let err = r.fails(&["add-model", "early"]);
    assert!(err.contains("bootstrap"), "{err}");

    write(
        &r.path("key.pub"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests test@kumo\n",
    );
    let out = r.ok(&[
        "bootstrap",
        "--agent-url",
        "http://127.0.0.1:1",
        "--bridge",
        "kumo-no-br0",
        "--address-range",
        "10.254.0.10-10.254.0.20",
        "--dns",
        "10.254.0.1",
        "--authorized-key",
        r.path("key.pub").to_str().unwrap(),
    ]);
    assert!(out.contains("current model: default"), "{out}");
    assert!(out.contains("1 SSH key(s) authorized"), "{out}");
    // Bad bootstraps are refused before anything is done.
    let err = r.fails(&[
        "bootstrap",
        "--bridge",
        "b",
        "--address-range",
        "10.0.0.1-10.0.0.2",
    ]);
    assert!(err.contains("--agent-url is required"), "{err}");
    for to in ["root@host", "ssh:host", "ssh:@host", "ssh:root@"] {
        let err = r.fails(&[
            "bootstrap",
            "--to",
            to,
            "--bridge",
            "b",
            "--address-range",
            "10.0.0.1-10.0.0.2",
        ]);
        assert!(err.contains("expected ssh:USER@HOST"), "{to}: {err}");
    }
    let models = r.ok(&["models"]);
    assert!(models.contains("default*"), "{models}");

    // Models: add (and switch to), switch, destroy.
    let manual = format!("manual-{pid}");
    let out = r.ok(&["add-model", &manual, "--provider", "manual"]);
    assert!(out.contains("now the current model"), "{out}");
    let models = r.ok(&["models"]);
    assert!(models.contains(&format!("{manual}*")), "{models}");
    assert!(!models.contains("default*"), "{models}");
    let err = r.fails(&["switch", "nosuch"]);
    assert!(err.contains("nosuch") && err.contains("default"), "{err}");
    r.ok(&["switch", "default"]);
    assert!(r.ok(&["models"]).contains("default*"));

    // A manual machine on a host that does not resolve: status shows it
    // failing, with the reason.
    let out = r.ok(&["add-machine", "-m", &manual, "ssh:nobody@kumo-test.invalid"]);
    assert!(out.contains("created machine 0"), "{out}");
    let mut state = String::new();
    wait_until("the machine's provisioning to fail", 30, || {
        let s = r.json(&["status", "-m", &manual]);
        state = s["machines"]["0"]["state"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        state == "error"
    });
    let s = r.ok(&["status", "-m", &manual]);
    assert!(s.contains("Machine") && s.contains("error"), "{s}");
    assert!(s.contains("kumo-test.invalid"), "{s}");
    assert!(!s.contains("App "), "empty sections are left out:\n{s}");
    // (The provisioner retries failed machines; stop it here.)
    r.ok(&["destroy-model", &manual, "--yes"]);

    // Charm directories, by path and by name.
    let out = r.ok(&["deploy", "./charms/web", "-n", "0"]);
    assert!(out.contains("deployed web (charm web"), "{out}");
    assert!(out.contains("with no units"), "{out}");
    let out = r.ok(&["deploy", "db", "-n", "0"]);
    assert!(out.contains("deployed db"), "{out}");
    let err = r.fails(&["deploy", "nosuch", "-n", "0"]);
    assert!(
        err.contains("looked in") && err.contains("charms/nosuch"),
        "{err}"
    );
    // The same directory packs to the same archive: a second application
    // of it shares the charm.
    write(&r.path("web.yaml"), "web2:\n  port: 8081\n");
    let out = r.ok(&[
        "deploy",
        "./charms/web",
        "web2",
        "-n",
        "0",
        "--config",
        "web.yaml",
    ]);
    let sha = |o: &str| o.split(", ").nth(1).unwrap()[..12].to_owned();
    let first = r.ok(&[
        "deploy",
        "./charms/web",
        "web3",
        "-n",
        "0",
        "--config",
        "port=82",
    ]);
    assert_eq!(sha(&out), sha(&first), "{out}{first}");
    let cfg = r.json(&["config", "web2"]);
    assert_eq!(cfg["port"]["value"], 8081, "{cfg}");
    assert_eq!(cfg["port"]["source"], "user", "{cfg}");

    // Config: typed against the charm's schema.
    let err = r.fails(&["config", "web", "port=abc"]);
    assert!(err.contains("port"), "{err}");
    r.ok(&["config", "web", "port=81"]);
    let table = r.ok(&["config", "web"]);
    let port = table
        .lines()
        .find(|l| l.trim_start().starts_with("port"))
        .unwrap();
    assert!(
        port.contains("81") && port.contains("80") && port.contains("int"),
        "{table}"
    );
    assert!(
        table.contains("DESCRIPTION") && table.contains("The port it listens on."),
        "{table}"
    );
    assert_eq!(r.ok(&["config", "web", "port"]).trim(), "81");
    r.ok(&["config", "web", "--reset", "port"]);
    assert_eq!(r.json(&["config", "web"])["port"]["source"], "default");

    // Relations: interfaces must match.
    let err = r.fails(&["relate", "web", "db"]);
    assert!(err.contains("interface"), "{err}");
    r.ok(&["deploy", "proxy", "-n", "0"]);
    let out = r.ok(&["add-relation", "web", "proxy"]);
    assert!(out.contains("related web and proxy"), "{out}");
    r.ok(&["expose", "web"]);

    let s = r.ok(&["status"]);
    for want in [
        "Model",
        "default",
        "App",
        "web",
        "Relation provider",
        "web:website",
        "proxy:backend",
        "http",
    ] {
        assert!(s.contains(want), "{want} missing from:\n{s}");
    }
    assert!(!s.contains("Unit "), "no units, no Unit section:\n{s}");
    let y: serde_yaml::Value =
        serde_yaml::from_str(&r.ok(&["status", "--format", "yaml"])).unwrap();
    assert_eq!(
        y["applications"]["web"]["exposed"],
        serde_yaml::Value::Bool(true)
    );
    r.ok(&["remove-relation", "web", "proxy"]);
    assert_eq!(r.json(&["status"])["relations"], serde_json::json!([]));
    r.ok(&["remove-application", "web3"]);

    let log = r.ok(&["debug-log", "--no-tail", "--lines", "100"]);
    assert!(log.contains(" model "), "{log}");

    // Bundles, in a model of their own; charms found beside the bundle's
    // directory (../charms/NAME) or by path.
    let bm = format!("bundles-{pid}");
    r.ok(&["add-model", &bm]);
    write(
        &r.path("bundles/site.yaml"),
        "applications:\n  site:\n    charm: web\n    num_units: 0\n    options:\n      port: 8080\n  front:\n    charm: ./../charms/proxy\n    num_units: 0\nrelations:\n  - [site:website, front:backend]\n",
    );
    let plan = r.ok(&["plan", "bundles/site.yaml"]);
    assert!(plan.contains("  1. "), "{plan}");
    assert!(plan.contains("dry run"), "{plan}");
    let diff = r.ok(&["diff-bundle", "bundles/site.yaml"]);
    assert!(!diff.contains("no differences"), "{diff}");
    let out = r.ok(&["deploy", "bundles/site.yaml"]);
    assert!(out.contains("  1. ") && out.contains("applied"), "{out}");
    let again = r.ok(&["deploy", "bundles/site.yaml"]);
    assert!(
        again.contains("nothing to do: the model matches the bundle"),
        "{again}"
    );
    assert!(r
        .ok(&["plan", "bundles/site.yaml"])
        .contains("nothing to do"));
    assert_eq!(
        r.ok(&["diff-bundle", "bundles/site.yaml"]).trim(),
        "no differences"
    );
    assert_eq!(r.json(&["config", "site"])["port"]["value"], 8080);

    let exported = r.ok(&["export-bundle"]);
    let y: serde_yaml::Value = serde_yaml::from_str(&exported).unwrap();
    assert!(y["applications"]["site"]["charm"].is_string(), "{exported}");
    assert!(y["applications"]["front"].is_mapping(), "{exported}");
    r.ok(&["export-bundle", "-o", "bundles/exported.yaml"]);
    assert_eq!(
        std::fs::read_to_string(r.path("bundles/exported.yaml")).unwrap(),
        exported
    );
    let replan = r.ok(&["plan", "bundles/exported.yaml"]);
    assert!(
        replan.contains("nothing to do"),
        "the export plans nothing:\n{replan}\n{exported}"
    );

    write(
        &r.path("bundles/bad.yaml"),
        "applications:\n  site:\n    charm: web\n    num_units: [1\n",
    );
    let err = r.fails(&["deploy", "bundles/bad.yaml"]);
    assert!(err.contains("bad.yaml:"), "{err}");
    let at = err.split("bad.yaml:").nth(1).unwrap();
    assert!(
        at.starts_with(|c: char| c.is_ascii_digit()),
        "file:line: {err}"
    );

    // Destroying takes --yes.
    let err = r.fails(&["destroy-model", &bm]);
    assert!(err.contains("--yes"), "{err}");
    r.ok(&["destroy-model", &bm, "--yes"]);
    let models = r.ok(&["models"]);
    assert!(!models.contains(&bm), "{models}");
    // It was current: the default is again.
    assert!(r.ok(&["status"]).contains("default"));
}
