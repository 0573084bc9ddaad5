//! The virsh driver against libvirt's built-in test driver (`test:///default`),
//! real virsh with no daemon. That driver's state lives only inside one virsh
//! process, so each call starts from the default: domain `test` running.

mod common;

use kumo_power::{driver_for, run_with_retries, PowerAction, PowerError, PowerState, RetryPolicy};
use serde_json::json;

fn driver(domain: &str) -> Box<dyn kumo_power::PowerDriver> {
    common::require_program("virsh", "libvirt-clients");
    driver_for(
        "virsh",
        &common::params(json!({"power_address": "test:///default", "power_id": domain})),
    )
    .unwrap()
}

#[tokio::test]
async fn query_shows_running_domain() {
    let d = driver("test");
    assert_eq!(d.power_query().await.unwrap(), PowerState::On);
}

#[tokio::test]
async fn destroy_succeeds_and_reports_off() {
    let d = driver("test");
    let got = run_with_retries(d.as_ref(), PowerAction::Off, &RetryPolicy::default()).await;
    assert_eq!(got.unwrap(), Some(PowerState::Off));
}

#[tokio::test]
async fn start_of_active_domain_is_success() {
    // `virsh start` on the already-running test domain says "already active".
    let d = driver("test");
    d.power_on().await.unwrap();
}

#[tokio::test]
async fn unknown_domain_is_fatal() {
    let d = driver("kumo-no-such-domain");
    let err = run_with_retries(d.as_ref(), PowerAction::Query, &RetryPolicy::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PowerError::Fatal { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("virsh test:///default domain kumo-no-such-domain: "),
        "{msg}"
    );
    assert!(msg.contains("kumo-no-such-domain'"), "{msg}");
    assert!(matches!(
        d.power_on().await.unwrap_err(),
        PowerError::Fatal { .. }
    ));
}

#[tokio::test]
async fn unreachable_hypervisor_is_transient() {
    // Nothing listens on this unix socket path: connection failure, not a bad domain.
    let d = driver_for(
        "virsh",
        &common::params(json!({
            "power_address": "qemu+unix:///system?socket=/nonexistent/kumo-libvirt.sock",
            "power_id": "test"
        })),
    )
    .unwrap();
    let err = d.power_query().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}
