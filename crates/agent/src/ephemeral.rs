//! `kumo agent ephemeral`: what a network-booted machine does. The rack's
//! iPXE script puts everything on the kernel command line — the purpose,
//! the metadata URL (the rack, which forwards to the region), the system id
//! and, for known machines, the machine's token — so the agent needs no
//! other configuration.

use std::path::Path;
use std::time::Duration;

use kumo_client::{Client, ClientError};
use kumo_model::api::{EnlistRequest, ReportEvent, ReportResult, StatusReport};
use kumo_model::{Inventory, MacAddress};
use serde_json::Value;

use crate::{inventory, AgentError};

/// The `kumo.*` and `BOOTIF` parameters of `/proc/cmdline`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootParams {
    pub purpose: Option<String>,
    pub metadata_url: Option<String>,
    pub system_id: Option<String>,
    pub token: Option<String>,
    /// The NIC iPXE booted from (`BOOTIF=01-aa-bb-cc-dd-ee-ff`).
    pub boot_mac: Option<MacAddress>,
}

impl BootParams {
    /// Reads the parameters kumo cares about; others are ignored. Pure.
    pub fn parse(cmdline: &str) -> BootParams {
        let mut p = BootParams::default();
        for word in cmdline.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let value = Some(value.to_owned()).filter(|v| !v.is_empty());
            match key {
                "kumo.purpose" => p.purpose = value,
                "kumo.metadata_url" => p.metadata_url = value,
                "kumo.system_id" => p.system_id = value,
                "kumo.token" => p.token = value,
                "BOOTIF" => {
                    // The leading "01-" is the ARP hardware type (Ethernet).
                    p.boot_mac = value
                        .as_deref()
                        .and_then(|v| v.strip_prefix("01-"))
                        .and_then(|m| m.parse().ok())
                }
                _ => {}
            }
        }
        p
    }
}

/// What the machine does once the agent is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The task is over and reported: power off.
    PowerOff,
    /// Nothing (more) to do automatically: stay up for an operator.
    StayUp,
}

/// Runs the task `params` name, reading the hardware below `root`.
pub async fn run(params: &BootParams, root: &Path) -> Result<Outcome, AgentError> {
    let url = params
        .metadata_url
        .as_deref()
        .ok_or_else(|| AgentError::Cmdline("no kumo.metadata_url".into()))?;
    let purpose = params.purpose.as_deref().unwrap_or("");
    let client = Client::new(url, params.token.clone());
    match purpose {
        "enlist" => {
            let inv = inventory::collect(root)?;
            tracing::info!(
                cpus = inv.cpu.count,
                memory_mib = inv.memory_mib,
                disks = inv.disks.len(),
                nics = inv.nics.len(),
                "enlisting"
            );
            enlist(&client, inv, params.boot_mac).await?;
            Ok(Outcome::PowerOff)
        }
        "commission" => {
            if params.token.is_none() {
                return Err(AgentError::Cmdline(
                    "commissioning needs kumo.token, which the rack adds for known machines".into(),
                ));
            }
            report(
                &client,
                ReportEvent::Progress,
                None,
                "commissioning: collecting inventory",
            )
            .await?;
            let inv = inventory::collect(root)?;
            retry("inventory upload", || {
                client.post::<_, Value>("/inventory", &inv)
            })
            .await?;
            report(
                &client,
                ReportEvent::Finished,
                Some(ReportResult::Success),
                "commissioning finished",
            )
            .await?;
            Ok(Outcome::PowerOff)
        }
        // TODO(issue 4): deploy writes the image to disk and reports; erase
        // wipes the disks (quick or full, from /instructions); test runs the
        // testing scripts; rescue stays up with SSH. Until then a machine
        // with a token reports the failure so its task does not hang until
        // the watchdog, and stays up for an operator.
        other => {
            let message = format!("kumo agent: purpose {other:?} is not implemented yet");
            tracing::warn!("{message}");
            if params.token.is_some() {
                report(
                    &client,
                    ReportEvent::Finished,
                    Some(ReportResult::Failure),
                    &message,
                )
                .await?;
            }
            Ok(Outcome::StayUp)
        }
    }
}

/// Registers this machine as New. A machine the region already knows by
/// one of these MACs is left alone (`already_enlisted`), which is success:
/// it was enlisted before.
async fn enlist(
    client: &Client,
    inventory: Inventory,
    boot_mac: Option<MacAddress>,
) -> Result<(), AgentError> {
    let req = EnlistRequest {
        inventory,
        boot_mac: boot_mac.map(|m| m.to_string()),
    };
    match retry("enlistment", || client.post::<_, Value>("/enlist", &req)).await {
        Ok(m) => {
            tracing::info!(system_id = %m["system_id"], hostname = %m["hostname"], "enlisted as new");
            Ok(())
        }
        Err(ClientError::Api { code, message, .. }) if code == "already_enlisted" => {
            tracing::info!("{message}");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn report(
    client: &Client,
    event: ReportEvent,
    result: Option<ReportResult>,
    message: &str,
) -> Result<(), AgentError> {
    let body = StatusReport {
        event,
        result,
        message: message.to_owned(),
    };
    retry("status report", || {
        client.post::<_, Value>("/status", &body)
    })
    .await?;
    Ok(())
}

/// Retries what failed to reach the region (the network may still be
/// settling right after DHCP); the region's own answers are final.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut wait = Duration::from_millis(250);
    for _ in 0..8 {
        match f().await {
            Err(e @ ClientError::Transport { .. }) => {
                tracing::warn!(error = %e, retry_in = ?wait, "{what} not delivered");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            r => return r,
        }
    }
    f().await
}

/// Powers the machine off at once (`poweroff -f`): everything is in RAM, so
/// there is nothing to sync or unmount.
pub fn power_off() -> Result<(), AgentError> {
    let status = std::process::Command::new("poweroff")
        .arg("-f")
        .status()
        .map_err(|e| AgentError::PowerOff(format!("running poweroff -f: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(AgentError::PowerOff(format!(
            "poweroff -f exited with {status}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rack_s_command_line_parses() {
        let p = BootParams::parse(
            "initrd=initrd.img console=tty0 console=ttyS0,115200n8 BOOTIF=01-52-54-00-aa-00-01 \
             kumo.purpose=commission kumo.metadata_url=http://10.0.0.2:5248/metadata/v1/ \
             kumo.system_id=abc123 kumo.token=s3cret quiet\n",
        );
        assert_eq!(p.purpose.as_deref(), Some("commission"));
        assert_eq!(
            p.metadata_url.as_deref(),
            Some("http://10.0.0.2:5248/metadata/v1/")
        );
        assert_eq!(p.system_id.as_deref(), Some("abc123"));
        assert_eq!(p.token.as_deref(), Some("s3cret"));
        assert_eq!(p.boot_mac.unwrap().to_string(), "52:54:00:aa:00:01");
    }

    #[test]
    fn missing_and_malformed_parameters_are_none() {
        let p = BootParams::parse("BOOTIF=52-54-00-aa-00-01 kumo.token= kumo.purpose=enlist");
        assert_eq!(p.boot_mac, None, "no hardware type prefix");
        assert_eq!(p.token, None);
        assert_eq!(p.purpose.as_deref(), Some("enlist"));
        assert_eq!(BootParams::parse(""), BootParams::default());
    }

    #[tokio::test]
    async fn without_a_metadata_url_nothing_runs() {
        let err = run(&BootParams::default(), Path::new("/nonexistent"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("kumo.metadata_url"), "{err}");
    }

    #[tokio::test]
    async fn commissioning_without_a_token_is_refused() {
        let p = BootParams::parse("kumo.purpose=commission kumo.metadata_url=http://127.0.0.1:9/");
        let err = run(&p, Path::new("/nonexistent")).await.unwrap_err();
        assert!(err.to_string().contains("kumo.token"), "{err}");
    }

    #[tokio::test]
    async fn unimplemented_purposes_stay_up() {
        let p = BootParams::parse("kumo.purpose=deploy kumo.metadata_url=http://127.0.0.1:9/");
        assert_eq!(
            run(&p, Path::new("/nonexistent")).await.unwrap(),
            Outcome::StayUp
        );
    }
}
