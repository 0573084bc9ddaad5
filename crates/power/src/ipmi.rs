//! IPMI via `ipmitool` (Debian package `ipmitool`).

use std::fmt;
use std::time::Duration;

use tokio::process::Command;

use crate::cmd;
use crate::params::Params;
use crate::{PowerDriver, PowerError, PowerState};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Drives a BMC with `ipmitool ... chassis power on|off|status`. The password
/// travels in the `IPMI_PASSWORD` environment variable (`-E`), never in argv
/// where `ps` would show it.
pub struct IpmiDriver {
    address: String,
    port: u16,
    user: String,
    password: String,
    interface: String,
    cipher_suite: String,
}

impl fmt::Debug for IpmiDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpmiDriver")
            .field("address", &self.address)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("interface", &self.interface)
            .field("cipher_suite", &self.cipher_suite)
            .finish()
    }
}

impl IpmiDriver {
    pub(crate) fn from_params(p: &Params) -> Result<Self, PowerError> {
        Ok(IpmiDriver {
            address: p.required("power_address")?,
            port: p.port("power_port", 623),
            user: p.required("power_user")?,
            password: p.required("power_pass")?,
            interface: p.str("interface").unwrap_or_else(|| "lanplus".into()),
            // Suite 3 (SHA1/AES) is the one nearly every BMC supports;
            // ipmitool's own default (17) is missing on older BMCs.
            cipher_suite: p.str("cipher_suite_id").unwrap_or_else(|| "3".into()),
        })
    }

    fn target(&self) -> String {
        format!("ipmi {}:{}", self.address, self.port)
    }

    async fn chassis_power(&self, verb: &str) -> Result<String, PowerError> {
        let mut c = Command::new("ipmitool");
        c.args(["-I", &self.interface, "-H", &self.address])
            .args(["-p", &self.port.to_string(), "-U", &self.user, "-E"])
            // Our own retries do the patient part; keep each try short.
            .args(["-N", "2", "-R", "2"]);
        if self.interface == "lanplus" {
            c.args(["-C", &self.cipher_suite]);
        }
        // -v makes ipmitool say *why* a session failed (bad password vs. no answer).
        c.args(["-v", "chassis", "power", verb])
            .env("IPMI_PASSWORD", &self.password);
        let target = self.target();
        let out = cmd::run(c, &target, "ipmitool", "ipmitool", TIMEOUT).await?;
        if out.success {
            return Ok(out.stdout);
        }
        Err(classify(&target, &out.stdout, &out.stderr))
    }
}

/// Sorts an ipmitool failure into fatal (credentials, unsupported command)
/// or transient (no answer, BMC busy, anything unrecognised).
fn classify(target: &str, stdout: &str, stderr: &str) -> PowerError {
    let all = format!("{stdout}\n{stderr}").to_ascii_lowercase();
    const AUTH: &[&str] = &[
        "rakp 2 hmac is invalid",
        "unauthorized name",
        "invalid user name",
        "activate session command failed",
        "insufficient privilege",
        "password",
    ];
    const REJECTED: &[&str] = &[
        "invalid authentication algorithm",
        "invalid data field",
        "invalid command",
        "not supported",
    ];
    if AUTH.iter().any(|m| all.contains(m)) {
        PowerError::fatal(target, "authentication failed")
    } else if REJECTED.iter().any(|m| all.contains(m)) {
        PowerError::fatal(
            target,
            format!("bmc rejected the request: {}", cmd::last_line(stderr)),
        )
    } else {
        PowerError::transient(
            target,
            format!("ipmitool failed: {}", cmd::last_line(stderr)),
        )
    }
}

#[async_trait::async_trait]
impl PowerDriver for IpmiDriver {
    fn power_type(&self) -> &'static str {
        "ipmi"
    }

    fn confirms_state(&self) -> bool {
        true
    }

    async fn power_on(&self) -> Result<(), PowerError> {
        self.chassis_power("on").await.map(drop)
    }

    async fn power_off(&self) -> Result<(), PowerError> {
        self.chassis_power("off").await.map(drop)
    }

    async fn power_query(&self) -> Result<PowerState, PowerError> {
        let out = self.chassis_power("status").await?;
        let out = out.to_ascii_lowercase();
        Ok(if out.contains("chassis power is on") {
            PowerState::On
        } else if out.contains("chassis power is off") {
            PowerState::Off
        } else {
            PowerState::Unknown
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_ipmitool_failures() {
        let t = "ipmi h:623";
        let auth = classify(
            t,
            "",
            "> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n",
        );
        assert!(matches!(auth, PowerError::Fatal { .. }));
        assert_eq!(auth.to_string(), "ipmi h:623: authentication failed");
        let lan = classify(
            t,
            "",
            "Activate Session command failed\nError: Unable to establish LAN session\n",
        );
        assert!(!lan.is_transient());
        let gone = classify(t, "", "Get Auth Capabilities error\nError issuing Get Channel Authentication Capabilities request\nError: Unable to establish IPMI v2 / RMCP+ session\n");
        assert!(gone.is_transient());
        let rejected = classify(
            t,
            "",
            "Set Chassis Power Control to Up/On failed: Invalid data field in request\n",
        );
        assert!(matches!(rejected, PowerError::Fatal { .. }));
    }
}
