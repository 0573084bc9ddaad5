//! The `metal` provider's view of a region reached over its API: what a
//! controller bootstrapped on a machine of its own (`kumo bootstrap --to
//! … --region-profile P`) allocates, deploys and releases region machines
//! through, as the user of profile P's API key. Every model's machines are
//! that one user's in the region; they are shown to the controller as the
//! model owner's.

use std::path::Path;

use anyhow::{Context, Result};
use kumo_client::{enc, Client, ClientError};
use kumo_controller::{MetalBackend, MetalMachine};
use kumo_model::api::{ActionOptions, AllocateRequest, MachineView};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::OnceCell;

/// `<data dir>/metal-region.json`: the region and the API key the
/// controller uses it with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteRegionFile {
    pub url: String,
    pub key: String,
}

pub const FILE_NAME: &str = "metal-region.json";

impl RemoteRegionFile {
    pub fn load(data_dir: &Path) -> Result<Option<RemoteRegionFile>> {
        let path = data_dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

pub struct RemoteRegion {
    client: Client,
    /// The key's user, asked of the region the first time it is needed
    /// (the region may be down when the controller starts).
    user: OnceCell<String>,
}

fn text(e: ClientError) -> String {
    e.to_string()
}

impl RemoteRegion {
    pub fn new(f: &RemoteRegionFile) -> RemoteRegion {
        RemoteRegion {
            client: Client::new(&f.url, Some(f.key.clone())),
            user: OnceCell::new(),
        }
    }

    async fn user(&self) -> Result<&str, String> {
        self.user
            .get_or_try_init(|| async {
                let me: Value = self.client.get("/api/v1/whoami").await.map_err(text)?;
                me["username"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{}: whoami names no user", self.client.base()))
            })
            .await
            .map(String::as_str)
    }

    async fn view(&self, owner: &str, v: MachineView) -> Result<MetalMachine, String> {
        let m = v.machine;
        let id = m.system_id.to_string();
        let addresses: Vec<Value> = self
            .client
            .get(&format!("/api/v1/machines/{}/addresses", enc(&id)))
            .await
            .map_err(text)?;
        let user = self.user().await?;
        Ok(MetalMachine {
            system_id: id,
            hostname: m.hostname.to_string(),
            status: m.status,
            status_message: m.status_message,
            owner: m
                .owner
                .map(|o| if o == user { owner.to_string() } else { o }),
            addresses: addresses
                .iter()
                .filter_map(|a| a["ip"].as_str().map(str::to_string))
                .collect(),
        })
    }

    async fn action(&self, id: &str, action: &str) -> Result<MachineView, String> {
        self.client
            .post(
                &format!("/api/v1/machines/{}/actions/{action}", enc(id)),
                &ActionOptions::default(),
            )
            .await
            .map_err(text)
    }
}

#[async_trait::async_trait]
impl MetalBackend for RemoteRegion {
    async fn allocate(
        &self,
        owner: &str,
        constraints: &str,
        agent_name: &str,
    ) -> Result<MetalMachine, String> {
        let req = AllocateRequest {
            constraints: constraints.to_string(),
            agent_name: Some(agent_name.to_string()),
        };
        let v: MachineView = self
            .client
            .post("/api/v1/machines/allocate", &req)
            .await
            .map_err(text)?;
        self.view(owner, v).await
    }

    async fn deploy(&self, owner: &str, system_id: &str) -> Result<MetalMachine, String> {
        let v = self.action(system_id, "deploy").await?;
        self.view(owner, v).await
    }

    async fn machine(&self, owner: &str, system_id: &str) -> Result<Option<MetalMachine>, String> {
        match self
            .client
            .get::<MachineView>(&format!("/api/v1/machines/{}", enc(system_id)))
            .await
        {
            Ok(v) => self.view(owner, v).await.map(Some),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(text(e)),
        }
    }

    async fn release(&self, owner: &str, system_id: &str) -> Result<(), String> {
        let Some(m) = self.machine(owner, system_id).await? else {
            return Ok(());
        };
        // Someone else's now (released and allocated again): not ours.
        if m.owner.as_deref() != Some(owner) {
            return Ok(());
        }
        // Aborting is an admin's action: the profile's key must be an admin's.
        for action in kumo_controller::provider::release_actions(m.status) {
            self.action(system_id, action).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Against a real region served over HTTP on loopback, its machines
    //! commissioned through the same calls a machine's own report makes.

    use super::*;
    use kumo_model::api::{AddMachine, ReportEvent, ReportResult, StatusReport};
    use kumo_model::MachineStatus;
    use kumo_region::{Actor, Region, RegionConfig};

    async fn region_with_ready_machines(
        names: &[&str],
    ) -> (Region, String, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("kumo.db").display());
        let region = Region::open(
            &url,
            &dir.path().join("secret.key"),
            RegionConfig::default(),
        )
        .await
        .unwrap();
        let sys = Actor::system();
        region
            .create_user(
                &sys,
                kumo_model::api::CreateUser {
                    username: "ops".into(),
                    password: "correct-horse-battery".into(),
                    admin: true,
                },
            )
            .await
            .unwrap();
        let key = region.create_api_key(&sys, "ops").await.unwrap().key;
        for (i, name) in names.iter().enumerate() {
            region
                .add_machine(
                    &sys,
                    AddMachine {
                        hostname: name.to_string(),
                        macs: vec![format!("52:54:00:00:01:0{i}")],
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            region
                .machine_action(&sys, name, "commission", ActionOptions::default())
                .await
                .unwrap();
            let token = region.machine_token(name).await.unwrap().unwrap();
            region
                .machine_report(
                    &token,
                    StatusReport {
                        event: ReportEvent::Finished,
                        result: Some(ReportResult::Success),
                        message: String::new(),
                    },
                )
                .await
                .unwrap();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let served = region.clone();
        tokio::spawn(async move {
            kumo_api::serve(served, listener, std::future::pending::<()>()).await
        });
        (region, base, key, dir)
    }

    #[tokio::test]
    async fn machines_are_allocated_shown_as_the_owners_and_released_over_the_api() {
        let (region, base, key, _dir) = region_with_ready_machines(&["n1", "n2"]).await;
        let r = RemoteRegion::new(&RemoteRegionFile { url: base, key });
        let m = r.allocate("alice", "", "kumo:c/m@1/0").await.unwrap();
        assert_eq!(m.status, MachineStatus::Allocated);
        // The region holds it for the key's user; the controller sees alice's.
        assert_eq!(m.owner.as_deref(), Some("alice"));
        assert_eq!(
            region.machine(&m.system_id).await.unwrap().owner.as_deref(),
            Some("ops")
        );
        // The same agent name finds the same machine.
        let again = r.allocate("alice", "", "kumo:c/m@1/0").await.unwrap();
        assert_eq!(again.system_id, m.system_id);
        let seen = r.machine("alice", &m.system_id).await.unwrap().unwrap();
        assert_eq!(seen.hostname, m.hostname);
        assert!(r.machine("alice", "nosuch").await.unwrap().is_none());
        // No image in this region: the region's reason comes back whole.
        let err = r.deploy("alice", &m.system_id).await.unwrap_err();
        assert!(err.contains("image"), "{err}");
        let err = r
            .allocate("alice", "tags=gpu", "kumo:c/m@1/1")
            .await
            .unwrap_err();
        assert!(err.contains("tags=gpu"), "{err}");
        r.release("alice", &m.system_id).await.unwrap();
        // The region finishes a release without erase with its power worker.
        region.drain_power_jobs().await.unwrap();
        assert_eq!(
            region.machine(&m.system_id).await.unwrap().status,
            MachineStatus::Ready
        );
        // Releasing again, or one never held, is nothing to do.
        r.release("alice", &m.system_id).await.unwrap();
    }
}
