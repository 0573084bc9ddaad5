//! What the controller's integration tests share.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::sync::Mutex;

use async_trait::async_trait;
use kumo_controller::docs::ProviderKind;
use kumo_controller::{Provider, ProvisionRequest};

/// Records what it was asked to make and remove; the machines are not
/// real here (the containers provider is exercised by the orchestration
/// e2e suite, containers on metal machines by `metal_e2e`).
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<ProvisionRequest>>, pub Mutex<Vec<String>>);

#[async_trait]
impl Provider for Recorder {
    async fn provision(&self, req: &ProvisionRequest) -> Result<String, String> {
        self.0.lock().unwrap().push(req.clone());
        // As the real one: a manual machine's address is its SSH host.
        let ssh_host = req
            .placement
            .as_deref()
            .and_then(|p| p.rsplit(['@', ':']).next())
            .map(String::from);
        Ok(req.address.clone().or(ssh_host).unwrap_or_default())
    }
    async fn destroy(
        &self,
        _: ProviderKind,
        instance: &str,
        host: Option<&kumo_controller::HostRef>,
    ) -> Result<(), String> {
        let on = host
            .map(|h| format!(" on {}", h.target))
            .unwrap_or_default();
        self.1.lock().unwrap().push(format!("{instance}{on}"));
        Ok(())
    }
}

/// A controller configuration for tests: agents at 10.0.0.1, container
/// machines from 10.0.0.100–110 on br0.
pub fn bootstrap() -> kumo_model::orchestra::Bootstrap {
    kumo_model::orchestra::Bootstrap {
        agent_url: "http://10.0.0.1:5240".into(),
        bridge: "br0".into(),
        address_range: "10.0.0.100-10.0.0.110".into(),
        prefix: 24,
        gateway: None,
        dns: vec![],
        apt_proxy: None,
        authorized_keys: vec![],
        controller_id: String::new(),
    }
}

/// A charm archive holding only `metadata.yaml`.
pub fn charm_tar(metadata: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(metadata.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "metadata.yaml", metadata.as_bytes())
        .unwrap();
    b.into_inner().unwrap()
}
