//! libvirt domains via `virsh` (Debian package `libvirt-clients`).

use std::time::Duration;

use tokio::process::Command;

use crate::cmd;
use crate::params::Params;
use crate::{PowerDriver, PowerError, PowerState};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `virsh -c URI start|destroy|domstate DOMAIN`. `destroy` is libvirt's
/// hard power-off. Credentials live in the URI's transport (ssh keys), not here.
#[derive(Debug, Clone)]
pub struct VirshDriver {
    uri: String,
    domain: String,
}

impl VirshDriver {
    pub(crate) fn from_params(p: &Params) -> Result<Self, PowerError> {
        Ok(VirshDriver {
            uri: p.required("power_address")?,
            domain: p.required("power_id")?,
        })
    }

    fn target(&self) -> String {
        format!("virsh {} domain {}", self.uri, self.domain)
    }

    async fn virsh(&self, verb: &str) -> Result<cmd::Output, PowerError> {
        let mut c = Command::new("virsh");
        c.args(["-q", "-c", &self.uri, verb, &self.domain]);
        cmd::run(c, &self.target(), "virsh", "libvirt-clients", TIMEOUT).await
    }

    /// Runs `verb`; `already` is the error text meaning the domain is already
    /// in the wanted state, which counts as success.
    async fn act(&self, verb: &str, already: &str) -> Result<(), PowerError> {
        let out = self.virsh(verb).await?;
        if out.success || out.stderr.to_ascii_lowercase().contains(already) {
            return Ok(());
        }
        Err(classify(&self.target(), &out.stderr))
    }
}

fn classify(target: &str, stderr: &str) -> PowerError {
    let err = stderr.to_ascii_lowercase();
    let line = cmd::last_line(stderr);
    const FATAL: &[&str] = &[
        "failed to get domain",
        "domain not found",
        "no domain with matching name",
        "authentication failed",
        "permission denied",
        "unsupported configuration",
        "invalid argument",
        "no connection driver available",
    ];
    if FATAL.iter().any(|m| err.contains(m)) {
        PowerError::fatal(target, line.trim_start_matches("error: ").to_owned())
    } else {
        // "failed to connect to the hypervisor", ssh hiccups, daemon restarts...
        PowerError::transient(target, line.trim_start_matches("error: ").to_owned())
    }
}

/// Maps `virsh domstate` output the way MAAS does: paused counts as off.
fn parse_domstate(s: &str) -> PowerState {
    match s.trim() {
        "running" | "idle" | "blocked" | "in shutdown" => PowerState::On,
        "shut off" | "shutdown" | "paused" | "crashed" | "pmsuspended" | "dying" => PowerState::Off,
        _ => PowerState::Unknown,
    }
}

#[async_trait::async_trait]
impl PowerDriver for VirshDriver {
    fn power_type(&self) -> &'static str {
        "virsh"
    }

    fn confirms_state(&self) -> bool {
        true
    }

    async fn power_on(&self) -> Result<(), PowerError> {
        self.act("start", "domain is already active").await
    }

    async fn power_off(&self) -> Result<(), PowerError> {
        self.act("destroy", "domain is not running").await
    }

    async fn power_query(&self) -> Result<PowerState, PowerError> {
        let out = self.virsh("domstate").await?;
        if !out.success {
            return Err(classify(&self.target(), &out.stderr));
        }
        Ok(parse_domstate(&out.stdout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domstate_mapping() {
        assert_eq!(parse_domstate("running\n\n"), PowerState::On);
        assert_eq!(parse_domstate("shut off\n"), PowerState::Off);
        assert_eq!(parse_domstate("paused"), PowerState::Off);
        assert_eq!(parse_domstate("something new"), PowerState::Unknown);
    }

    #[test]
    fn classify_virsh_errors() {
        let e = classify("virsh t", "error: failed to get domain 'nope'\n");
        assert!(matches!(e, PowerError::Fatal { .. }));
        assert_eq!(e.to_string(), "virsh t: failed to get domain 'nope'");
        let e = classify("virsh t", "error: failed to connect to the hypervisor\nerror: Cannot recv data: Connection reset by peer\n");
        assert!(e.is_transient());
    }
}
