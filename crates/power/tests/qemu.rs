//! The qemu driver against real `qemu-system-x86_64` processes (TCG, no disk).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::ChildGuard;
use kumo_power::{driver_for, run_with_retries, PowerAction, PowerError, PowerState, RetryPolicy};
use serde_json::json;

fn qemu_argv(qmp: &Path, extra: &[&str]) -> Vec<String> {
    let qemu = common::require_program("qemu-system-x86_64", "qemu-system-x86");
    let mut argv: Vec<String> = [
        qemu.to_str().unwrap(),
        "-machine",
        "pc",
        "-accel",
        "tcg",
        "-nodefaults",
        "-display",
        "none",
        "-m",
        "32",
        // Stopped at start: "powered off" until cont.
        "-S",
        "-qmp",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.push(format!("unix:{},server=on,wait=off", qmp.display()));
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv
}

/// Kills a daemonized QEMU (found via its -pidfile) when the test ends.
struct PidfileGuard(PathBuf);

impl Drop for PidfileGuard {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

async fn wait_for_socket(path: &Path) {
    assert!(
        common::wait_for(Duration::from_secs(20), || async { path.exists() }).await,
        "qemu did not create {}",
        path.display()
    );
}

#[tokio::test]
async fn cont_query_quit() {
    let dir = tempfile::tempdir().unwrap();
    let qmp = dir.path().join("qmp.sock");
    let argv = qemu_argv(&qmp, &[]);
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn qemu");
    let mut guard = ChildGuard(child);
    wait_for_socket(&qmp).await;

    let d = driver_for("qemu", &common::params(json!({"qmp_socket": qmp}))).unwrap();
    let policy = RetryPolicy::default();
    // -S: prelaunch counts as off.
    assert_eq!(d.power_query().await.unwrap(), PowerState::Off);
    assert_eq!(
        run_with_retries(d.as_ref(), PowerAction::On, &policy)
            .await
            .unwrap(),
        Some(PowerState::On)
    );
    assert_eq!(d.power_query().await.unwrap(), PowerState::On);
    // Powering on a running machine is a no-op.
    d.power_on().await.unwrap();

    assert_eq!(
        run_with_retries(d.as_ref(), PowerAction::Off, &policy)
            .await
            .unwrap(),
        Some(PowerState::Off)
    );
    let exited = common::wait_for(Duration::from_secs(10), || {
        let done = guard.0.try_wait().unwrap().is_some();
        async move { done }
    })
    .await;
    assert!(exited, "qemu process still alive after quit");
    assert_eq!(d.power_query().await.unwrap(), PowerState::Off);
    // Off again is a no-op; on without a command cannot start anything.
    d.power_off().await.unwrap();
    let err = d.power_on().await.unwrap_err();
    assert!(matches!(err, PowerError::Fatal { .. }), "{err:?}");
}

#[tokio::test]
async fn power_on_from_off_starts_command() {
    let dir = tempfile::tempdir().unwrap();
    let qmp = dir.path().join("qmp.sock");
    let pidfile = dir.path().join("qemu.pid");
    let _guard = PidfileGuard(pidfile.clone());
    let argv = qemu_argv(&qmp, &["-pidfile", pidfile.to_str().unwrap()]);
    let d = driver_for(
        "qemu",
        &common::params(json!({"qmp_socket": qmp, "command": argv})),
    )
    .unwrap();

    assert_eq!(d.power_query().await.unwrap(), PowerState::Off);
    d.power_on().await.unwrap();
    assert!(pidfile.exists(), "driver did not start qemu");
    // Started with -S, so the driver also had to cont it.
    assert_eq!(d.power_query().await.unwrap(), PowerState::On);
    d.power_off().await.unwrap();
    assert_eq!(d.power_query().await.unwrap(), PowerState::Off);
}

#[tokio::test]
async fn bad_command_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let qmp = dir.path().join("qmp.sock");
    let argv = qemu_argv(&qmp, &["-no-such-option"]);
    let d = driver_for(
        "qemu",
        &common::params(json!({"qmp_socket": qmp, "command": argv})),
    )
    .unwrap();
    let err = run_with_retries(d.as_ref(), PowerAction::On, &RetryPolicy::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PowerError::Fatal { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-option"), "{err}");
}
