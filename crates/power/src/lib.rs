//! Power control for machines: one [`PowerDriver`] trait, a driver per power
//! type, each telling transient from fatal errors, and [`run_with_retries`].

use serde_json::{Map, Value};

mod cmd;
mod error;
mod http;
mod ipmi;
mod manual;
mod params;
mod qemu;
mod qmp;
mod redfish;
mod retry;
mod virsh;
mod webhook;
mod wol;

pub use error::PowerError;
pub use ipmi::IpmiDriver;
pub use manual::ManualDriver;
pub use params::{parameter_specs, validate_parameters, ParamKind, ParameterSpec, POWER_TYPES};
pub use qemu::QemuDriver;
pub use redfish::RedfishDriver;
pub use retry::{run_with_retries, RetryPolicy};
pub use virsh::VirshDriver;
pub use webhook::WebhookDriver;
pub use wol::{magic_packet, WolDriver};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    Off,
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    On,
    Off,
    Query,
}

#[async_trait::async_trait]
pub trait PowerDriver: Send + Sync {
    fn power_type(&self) -> &'static str;
    async fn power_on(&self) -> Result<(), PowerError>;
    async fn power_off(&self) -> Result<(), PowerError>;
    async fn power_query(&self) -> Result<PowerState, PowerError>;

    /// Whether a successful `power_on`/`power_off` means the machine is now
    /// in that state. False for fire-and-forget or asynchronous peers
    /// (wake-on-LAN, webhooks, Redfish BMCs applying resets later).
    fn confirms_state(&self) -> bool {
        false
    }
}

/// Builds the driver for `power_type` after [`validate_parameters`].
pub fn driver_for(
    power_type: &str,
    params: &Map<String, Value>,
) -> Result<Box<dyn PowerDriver>, PowerError> {
    validate_parameters(power_type, params)?;
    let p = params::Params(params);
    Ok(match power_type {
        "ipmi" => Box::new(IpmiDriver::from_params(&p)?),
        "redfish" => Box::new(RedfishDriver::from_params(&p)?),
        "qemu" => Box::new(QemuDriver::from_params(&p)?),
        "virsh" => Box::new(VirshDriver::from_params(&p)?),
        "wol" => Box::new(WolDriver::from_params(&p)?),
        "webhook" => Box::new(WebhookDriver::from_params(&p)?),
        "manual" => Box::new(ManualDriver),
        // validate_parameters rejected every other name.
        other => unreachable!("validated power type {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn power_state_serializes_lowercase() {
        assert_eq!(serde_json::to_string(&PowerState::On).unwrap(), "\"on\"");
        assert_eq!(
            serde_json::from_str::<PowerState>("\"unknown\"").unwrap(),
            PowerState::Unknown
        );
    }

    #[test]
    fn driver_for_builds_each_type() {
        let cases = [
            (
                "ipmi",
                json!({"power_address": "10.0.0.5", "power_user": "u", "power_pass": "p"}),
            ),
            (
                "redfish",
                json!({"power_address": "10.0.0.5", "power_user": "u", "power_pass": "p"}),
            ),
            ("qemu", json!({"qmp_socket": "/tmp/x.sock"})),
            (
                "virsh",
                json!({"power_address": "test:///default", "power_id": "test"}),
            ),
            ("wol", json!({"mac_address": "52:54:00:12:34:56"})),
            (
                "webhook",
                json!({"power_on_uri": "http://h/on", "power_off_uri": "http://h/off", "power_query_uri": "http://h/q"}),
            ),
            ("manual", json!({})),
        ];
        for (t, p) in cases {
            let d = driver_for(t, p.as_object().unwrap()).unwrap();
            assert_eq!(d.power_type(), t);
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let m = |v: Value| v.as_object().unwrap().clone();
        let ipmi = m(json!({"power_address": "h", "power_user": "u", "power_pass": "hunter2"}));
        let hook = m(
            json!({"power_on_uri": "http://h/on", "power_off_uri": "http://h/off",
            "power_query_uri": "http://h/q", "power_user": "u", "power_pass": "hunter2"}),
        );
        let hook2 = m(
            json!({"power_on_uri": "http://h/on", "power_off_uri": "http://h/off",
            "power_query_uri": "http://h/q", "power_token": "hunter2"}),
        );
        let dbgs = [
            format!(
                "{:?}",
                IpmiDriver::from_params(&params::Params(&ipmi)).unwrap()
            ),
            format!(
                "{:?}",
                RedfishDriver::from_params(&params::Params(&ipmi)).unwrap()
            ),
            format!(
                "{:?}",
                WebhookDriver::from_params(&params::Params(&hook)).unwrap()
            ),
            format!(
                "{:?}",
                WebhookDriver::from_params(&params::Params(&hook2)).unwrap()
            ),
        ];
        for dbg in dbgs {
            assert!(!dbg.contains("hunter2"), "{dbg}");
            assert!(dbg.contains("<redacted>"), "{dbg}");
        }
    }
}
