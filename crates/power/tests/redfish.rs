//! The redfish driver against `sushy-emulator` (PyPI sushy-tools) with its
//! fake systems driver, over HTTPS with a self-signed certificate and HTTP
//! basic auth (bcrypt htpasswd). The fake driver applies power changes 1-11 s
//! after the request, like a real BMC, so the test polls for the new state.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::ChildGuard;
use kumo_power::{
    driver_for, run_with_retries, PowerAction, PowerDriver, PowerError, PowerState, RetryPolicy,
};
use serde_json::json;

const USER: &str = "kumo";
const PASS: &str = "s3cret-redfish";
const UUID: &str = "8f1f6a3c-5b7e-4c55-9a61-0d4c1b2e3f40";

fn sushy_emulator() -> PathBuf {
    let path = std::env::var_os("KUMO_SUSHY_EMULATOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::workspace_root().join(".cache/venv/bin/sushy-emulator"));
    assert!(
        path.is_file(),
        "{} not found: run scripts/deps-power.sh (pip installs PyPI sushy-tools into .cache/venv) \
         or set KUMO_SUSHY_EMULATOR",
        path.display()
    );
    path
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Bmc {
    sushy: ChildGuard,
    _dir: tempfile::TempDir,
    address: String,
}

fn start_bmc() -> Bmc {
    let emulator = sushy_emulator();
    let openssl = common::require_program("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);

    run(Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(d("key.pem"))
        .arg("-out")
        .arg(d("cert.pem")));

    // bcrypt, the only digest sushy accepts; its venv already has the module.
    let python = emulator.parent().unwrap().join("python");
    let out = Command::new(&python)
        .args([
            "-c",
            "import bcrypt, sys; print(sys.argv[1] + ':' + bcrypt.hashpw(sys.argv[2].encode(), bcrypt.gensalt(rounds=4)).decode())",
            USER,
            PASS,
        ])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    assert!(
        out.status.success(),
        "bcrypt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(d("htpasswd"), out.stdout).unwrap();

    let port = common::free_tcp_port();
    let p = |path: PathBuf| path.display().to_string();
    std::fs::write(
        d("emulator.conf"),
        format!(
            r#"SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'
SUSHY_EMULATOR_LISTEN_PORT = {port}
SUSHY_EMULATOR_SSL_CERT = '{cert}'
SUSHY_EMULATOR_SSL_KEY = '{key}'
SUSHY_EMULATOR_AUTH_FILE = '{auth}'
SUSHY_EMULATOR_STATE_DIR = '{state}'
SUSHY_EMULATOR_FAKE_DRIVER = True
SUSHY_EMULATOR_FAKE_SYSTEMS = [{{
    'uuid': '{UUID}',
    'name': 'kumo-node',
    'power_state': 'Off',
    'nics': [{{'mac': '52:54:00:aa:bb:cc', 'ip': '10.213.1.10'}}],
}}]
"#,
            cert = p(d("cert.pem")),
            key = p(d("key.pem")),
            auth = p(d("htpasswd")),
            state = p(d("state")),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(d("sushy.log")).unwrap();
    let child = Command::new(&emulator)
        .arg("--config")
        .arg(d("emulator.conf"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn sushy-emulator");
    Bmc {
        sushy: ChildGuard(child),
        _dir: dir,
        address: format!("127.0.0.1:{port}"),
    }
}

fn driver(address: &str, pass: &str, extra: serde_json::Value) -> Box<dyn PowerDriver> {
    let mut p =
        common::params(json!({"power_address": address, "power_user": USER, "power_pass": pass}));
    p.extend(common::params(extra));
    driver_for("redfish", &p).unwrap()
}

async fn wait_ready(d: &dyn PowerDriver, log_dir: &Path) {
    let ready = common::wait_for(Duration::from_secs(30), || async {
        d.power_query().await.is_ok()
    })
    .await;
    assert!(
        ready,
        "sushy-emulator did not answer: {}",
        std::fs::read_to_string(log_dir.join("sushy.log")).unwrap_or_default()
    );
}

async fn wait_state(d: &dyn PowerDriver, want: PowerState) {
    let got = common::wait_for(Duration::from_secs(20), || async {
        d.power_query().await.ok() == Some(want)
    })
    .await;
    assert!(got, "machine never reached {want:?}");
}

#[tokio::test]
async fn on_query_off_query() {
    let bmc = start_bmc();
    // No node_id: the driver takes the only member of /redfish/v1/Systems.
    let d = driver(&bmc.address, PASS, json!({}));
    wait_ready(d.as_ref(), bmc._dir.path()).await;
    let policy = RetryPolicy::default();

    assert_eq!(
        run_with_retries(d.as_ref(), PowerAction::Query, &policy)
            .await
            .unwrap(),
        Some(PowerState::Off)
    );
    // Redfish resets may apply later, so no state is claimed.
    assert_eq!(
        run_with_retries(d.as_ref(), PowerAction::On, &policy)
            .await
            .unwrap(),
        None
    );
    wait_state(d.as_ref(), PowerState::On).await;
    run_with_retries(d.as_ref(), PowerAction::Off, &policy)
        .await
        .unwrap();
    wait_state(d.as_ref(), PowerState::Off).await;
}

#[tokio::test]
async fn https_url_and_node_id() {
    let bmc = start_bmc();
    let url = format!("https://{}/", bmc.address);
    let d = driver(&url, PASS, json!({"node_id": UUID, "verify_tls": "false"}));
    wait_ready(d.as_ref(), bmc._dir.path()).await;
    assert_eq!(d.power_query().await.unwrap(), PowerState::Off);

    let missing = driver(&url, PASS, json!({"node_id": "no-such-node"}));
    let err = run_with_retries(
        missing.as_ref(),
        PowerAction::Query,
        &RetryPolicy::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PowerError::Fatal { .. }), "{err:?}");
    assert!(err.to_string().contains("404"), "{err}");
}

#[tokio::test]
async fn self_signed_cert_is_rejected_when_verifying() {
    let bmc = start_bmc();
    wait_ready(
        driver(&bmc.address, PASS, json!({})).as_ref(),
        bmc._dir.path(),
    )
    .await;
    let d = driver(&bmc.address, PASS, json!({"verify_tls": true}));
    let err = d.power_query().await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn wrong_password_is_fatal() {
    let bmc = start_bmc();
    wait_ready(
        driver(&bmc.address, PASS, json!({})).as_ref(),
        bmc._dir.path(),
    )
    .await;
    let d = driver(&bmc.address, "not-the-password", json!({}));
    let policy = RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_secs(60),
        max_backoff: Duration::from_secs(60),
    };
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        run_with_retries(d.as_ref(), PowerAction::On, &policy),
    )
    .await
    .expect("a wrong password must not be retried")
    .unwrap_err();
    assert!(matches!(err, PowerError::Fatal { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("redfish https://{}: ", bmc.address)),
        "{msg}"
    );
    assert!(
        msg.contains("authentication failed (401 Unauthorized)"),
        "{msg}"
    );
    assert!(!format!("{msg} {err:?}").contains("not-the-password"));
}

#[tokio::test]
async fn emulator_stopped_is_transient() {
    let mut bmc = start_bmc();
    let d = driver(&bmc.address, PASS, json!({}));
    wait_ready(d.as_ref(), bmc._dir.path()).await;
    bmc.sushy.0.kill().unwrap();
    bmc.sushy.0.wait().unwrap();
    let policy = RetryPolicy {
        attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
    };
    let err = run_with_retries(d.as_ref(), PowerAction::Query, &policy)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}
