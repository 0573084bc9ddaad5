//! The ipmi driver (real ipmitool) against OpenIPMI's `ipmi_sim` BMC
//! simulator. The simulated chassis power is a file flipped by a
//! `chassis_control` script, which is how ipmi_sim delegates power control.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::ChildGuard;
use kumo_power::{
    driver_for, run_with_retries, PowerAction, PowerDriver, PowerError, PowerState, RetryPolicy,
};
use serde_json::json;

const USER: &str = "kumo";
const PASS: &str = "s3cret-bmc";

struct Bmc {
    _sim: ChildGuard,
    _dir: tempfile::TempDir,
    port: u16,
    state_file: std::path::PathBuf,
}

fn start_bmc() -> Bmc {
    let sim = common::require_program("ipmi_sim", "openipmi");
    common::require_program("ipmitool", "ipmitool");
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_udp_port();
    let state_file = dir.path().join("power");
    let script = dir.path().join("chassis.sh");
    // ipmi_sim runs "<script> get power" (expects "power:0|1") and
    // "<script> set power 0|1".
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nSTATE='{}'\ncase \"$1\" in\n  get) [ -f \"$STATE\" ] || echo 0 > \"$STATE\"; echo \"power:$(cat \"$STATE\")\" ;;\n  set) shift; while [ $# -gt 0 ]; do [ \"$1\" = power ] && echo \"$2\" | tr -d '\"' > \"$STATE\"; shift 2; done ;;\nesac\n",
            state_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let lan_conf = dir.path().join("lan.conf");
    std::fs::write(
        &lan_conf,
        format!(
            r#"name "kumo{port}"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{script}"
  user 2 true "{USER}" "{PASS}" admin 10 none md2 md5 straight
"#,
            script = script.display()
        ),
    )
    .unwrap();
    let emu = dir.path().join("bmc.emu");
    std::fs::write(
        &emu,
        "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n",
    )
    .unwrap();
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).unwrap();
    let child = Command::new(sim)
        .arg("-c")
        .arg(&lan_conf)
        .arg("-f")
        .arg(&emu)
        .arg("-s")
        .arg(&state_dir)
        .arg("-n")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn ipmi_sim");
    Bmc {
        _sim: ChildGuard(child),
        _dir: dir,
        port,
        state_file,
    }
}

fn driver(port: u16, pass: &str, interface: &str) -> Box<dyn PowerDriver> {
    driver_for(
        "ipmi",
        &common::params(json!({
            "power_address": "127.0.0.1",
            "power_port": port,
            "power_user": USER,
            "power_pass": pass,
            "interface": interface,
        })),
    )
    .unwrap()
}

async fn wait_ready(d: &dyn PowerDriver) {
    let ready = common::wait_for(Duration::from_secs(15), || async {
        d.power_query().await.is_ok()
    })
    .await;
    assert!(ready, "ipmi_sim did not answer");
}

#[tokio::test]
async fn off_on_query_off_query() {
    let bmc = start_bmc();
    let d = driver(bmc.port, PASS, "lanplus");
    wait_ready(d.as_ref()).await;
    let policy = RetryPolicy::default();

    d.power_off().await.unwrap();
    assert_eq!(d.power_query().await.unwrap(), PowerState::Off);
    assert_eq!(
        run_with_retries(d.as_ref(), PowerAction::On, &policy)
            .await
            .unwrap(),
        Some(PowerState::On)
    );
    assert_eq!(
        std::fs::read_to_string(&bmc.state_file).unwrap().trim(),
        "1"
    );
    assert_eq!(
        run_with_retries(d.as_ref(), PowerAction::Query, &policy)
            .await
            .unwrap(),
        Some(PowerState::On)
    );
    run_with_retries(d.as_ref(), PowerAction::Off, &policy)
        .await
        .unwrap();
    assert_eq!(d.power_query().await.unwrap(), PowerState::Off);
    assert_eq!(
        std::fs::read_to_string(&bmc.state_file).unwrap().trim(),
        "0"
    );
}

#[tokio::test]
async fn ipmi_1_5_lan_interface() {
    let bmc = start_bmc();
    let d = driver(bmc.port, PASS, "lan");
    wait_ready(d.as_ref()).await;
    d.power_on().await.unwrap();
    assert_eq!(d.power_query().await.unwrap(), PowerState::On);
}

#[tokio::test]
async fn wrong_password_is_fatal() {
    let bmc = start_bmc();
    wait_ready(driver(bmc.port, PASS, "lanplus").as_ref()).await;
    for iface in ["lanplus", "lan"] {
        let d = driver(bmc.port, "not-the-password", iface);
        // A retry would sleep for a minute first; the timeout catches that.
        let policy = RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(60),
        };
        let err = tokio::time::timeout(
            Duration::from_secs(40),
            run_with_retries(d.as_ref(), PowerAction::On, &policy),
        )
        .await
        .unwrap_or_else(|_| panic!("{iface}: wrong password was retried"))
        .unwrap_err();
        assert!(matches!(err, PowerError::Fatal { .. }), "{iface}: {err:?}");
        assert_eq!(
            err.to_string(),
            format!("ipmi 127.0.0.1:{}: authentication failed", bmc.port)
        );
        assert!(!format!("{err:?}").contains("not-the-password"));
    }
    assert_eq!(
        std::fs::read_to_string(&bmc.state_file).unwrap().trim(),
        "0"
    );
}

#[tokio::test]
async fn no_bmc_is_transient() {
    common::require_program("ipmitool", "ipmitool");
    let d = driver(common::free_udp_port(), PASS, "lanplus");
    let err = d.power_query().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}
