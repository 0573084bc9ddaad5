//! The `metal` provider's logic against a fake region (the real one is
//! exercised with QEMU machines by `kumo`'s `metal_e2e` suite): machines
//! are allocated by their constraints to the model's owner, recorded at
//! once, deployed, waited for and given an agent over SSH when deployed;
//! a restarted controller resumes with the machine it recorded instead of
//! allocating another; a miss leaves the machine in error naming the
//! constraint; containers on a machine (`lxd:N`) wait for it and go on it
//! over SSH; `ssh:` placements are refused; destroying the model releases.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::{bootstrap, charm_tar, Recorder};
use kumo_controller::docs::ProviderKind;
use kumo_controller::{Controller, ControllerConfig, MetalBackend, MetalMachine};
use kumo_model::orchestra::{AddMachines, Deploy};
use kumo_model::MachineStatus;
use kumo_region::{ManualClock, SecretBox, SeededEntropy};
use kumo_store::Store;

/// Region machines with manual tags; allocation by `tags=` only.
#[derive(Default)]
struct FakeRegion {
    machines: Mutex<Vec<(MetalMachine, Vec<String>)>>,
    /// System id → the agent name it was allocated under.
    agent_names: Mutex<BTreeMap<String, String>>,
    calls: Mutex<Vec<String>>,
    /// The next allocation is made, but its answer is lost on the way.
    lose_next_answer: Mutex<bool>,
}

impl FakeRegion {
    fn with(machines: &[(&str, &str, &[&str])]) -> FakeRegion {
        let r = FakeRegion::default();
        for (id, host, tags) in machines {
            r.machines.lock().unwrap().push((
                MetalMachine {
                    system_id: id.to_string(),
                    hostname: host.to_string(),
                    status: MachineStatus::Ready,
                    status_message: String::new(),
                    owner: None,
                    addresses: vec![],
                },
                tags.iter().map(|t| t.to_string()).collect(),
            ));
        }
        r
    }

    fn set(&self, id: &str, f: impl FnOnce(&mut MetalMachine)) {
        let mut ms = self.machines.lock().unwrap();
        f(&mut ms.iter_mut().find(|(m, _)| m.system_id == id).unwrap().0);
    }

    fn get(&self, id: &str) -> MetalMachine {
        let ms = self.machines.lock().unwrap();
        ms.iter()
            .find(|(m, _)| m.system_id == id)
            .unwrap()
            .0
            .clone()
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl MetalBackend for FakeRegion {
    async fn allocate(
        &self,
        owner: &str,
        constraints: &str,
        agent_name: &str,
    ) -> Result<MetalMachine, String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("allocate {owner} {constraints}"));
        let held = self
            .agent_names
            .lock()
            .unwrap()
            .iter()
            .find(|(_, name)| *name == agent_name)
            .map(|(id, _)| self.get(id))
            .filter(|m| m.owner.as_deref() == Some(owner));
        if let Some(m) = held {
            return Ok(m);
        }
        let answer = self.allocate_ready(owner, constraints);
        if let Ok(m) = &answer {
            self.agent_names
                .lock()
                .unwrap()
                .insert(m.system_id.clone(), agent_name.to_string());
            if std::mem::take(&mut *self.lose_next_answer.lock().unwrap()) {
                return Err("connection reset by peer".into());
            }
        }
        answer
    }

    async fn deploy(&self, owner: &str, system_id: &str) -> Result<MetalMachine, String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("deploy {owner} {system_id}"));
        self.set(system_id, |m| m.status = MachineStatus::Deploying);
        Ok(self.get(system_id))
    }

    async fn machine(&self, _: &str, system_id: &str) -> Result<Option<MetalMachine>, String> {
        let ms = self.machines.lock().unwrap();
        Ok(ms
            .iter()
            .find(|(m, _)| m.system_id == system_id)
            .map(|(m, _)| m.clone()))
    }

    async fn release(&self, owner: &str, system_id: &str) -> Result<(), String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("release {owner} {system_id}"));
        self.set(system_id, |m| {
            if m.owner.as_deref() == Some(owner) {
                m.status = MachineStatus::Ready;
                m.owner = None;
                m.addresses.clear();
            }
        });
        self.agent_names.lock().unwrap().remove(system_id);
        Ok(())
    }
}

impl FakeRegion {
    fn allocate_ready(&self, owner: &str, constraints: &str) -> Result<MetalMachine, String> {
        let wanted: Vec<&str> = constraints
            .split_whitespace()
            .filter_map(|c| c.strip_prefix("tags="))
            .flat_map(|t| t.split(','))
            .collect();
        let mut ms = self.machines.lock().unwrap();
        let ready = ms
            .iter()
            .filter(|(m, _)| m.status == MachineStatus::Ready)
            .count();
        match ms.iter_mut().find(|(m, tags)| {
            m.status == MachineStatus::Ready && wanted.iter().all(|w| tags.iter().any(|t| t == w))
        }) {
            Some((m, _)) => {
                m.status = MachineStatus::Allocated;
                m.owner = Some(owner.to_string());
                Ok(m.clone())
            }
            None => Err(format!(
                "no ready machine matches {constraints:?}: tags ruled out {ready}"
            )),
        }
    }
}

async fn open(
    url: &str,
    dir: &std::path::Path,
    provider: Arc<Recorder>,
    region: Arc<FakeRegion>,
    clock: Arc<ManualClock>,
) -> Controller {
    let c = Controller::open(
        Store::open(url).await.unwrap(),
        ControllerConfig::new(dir.to_path_buf()),
        clock,
        Arc::new(SeededEntropy::new(7)),
        provider,
        SecretBox::from_key([9; 32]),
    )
    .await
    .unwrap();
    c.set_metal_backend(region);
    c
}

fn machine(s: &kumo_model::orchestra::Status, id: &str) -> (String, String, Option<String>) {
    let m = &s.machines[id];
    (m.state.clone(), m.message.clone(), m.instance.clone())
}

#[tokio::test]
async fn metal_machines_are_allocated_by_constraints_deployed_resumed_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("kumo.db").display());
    let provider = Arc::new(Recorder::default());
    let region = Arc::new(FakeRegion::with(&[
        ("aaa111", "node1", &[]),
        ("bbb222", "node2", &["physical1"]),
    ]));
    let clock = Arc::new(ManualClock::new(1_000));
    let c = open(
        &url,
        dir.path(),
        provider.clone(),
        region.clone(),
        clock.clone(),
    )
    .await;
    c.bootstrap(bootstrap()).await.unwrap();
    c.add_model("m", Some("metal"), Some("alice"))
        .await
        .unwrap();
    let web = c
        .upload_charm(&charm_tar("name: web\nsummary: w\n"))
        .unwrap();

    // `ssh:` on a metal model is refused before anything changes.
    let refused = c
        .add_machines(
            "m",
            &AddMachines {
                placement: Some("ssh:root@10.0.0.9".into()),
                count: 1,
                constraints: None,
            },
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("metal"), "{refused}");
    assert!(
        refused.to_string().contains("ssh:root@10.0.0.9"),
        "{refused}"
    );

    // A unit without a machine gets one by the application's constraints.
    let deploy = Deploy {
        charm: web.sha256.clone(),
        application: None,
        config: BTreeMap::new(),
        num_units: 1,
        to: vec![],
        constraints: Some("tags=physical1".into()),
    };
    assert_eq!(c.deploy("m", &deploy).await.unwrap(), vec!["web/0"]);
    let refused = c
        .deploy(
            "m",
            &Deploy {
                application: Some("web2".into()),
                to: vec!["lxd:7".into()],
                ..deploy.clone()
            },
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("no machine 7"), "{refused}");
    // No region machine has this tag.
    c.add_machines(
        "m",
        &AddMachines {
            placement: None,
            count: 1,
            constraints: Some("tags=gpu".into()),
        },
    )
    .await
    .unwrap();
    let s = c.status("m").await.unwrap();
    assert_eq!(s.machines.len(), 2, "{s:?}");
    assert!(!s.applications.contains_key("web2"));

    c.provision_pending().await.unwrap();
    assert_eq!(
        region.calls(),
        [
            "allocate alice tags=physical1",
            "deploy alice bbb222",
            "allocate alice tags=gpu"
        ]
    );
    let s = c.status("m").await.unwrap();
    let (state, message, instance) = machine(&s, "0");
    assert_eq!(state, "provisioning");
    assert!(message.contains("deploying node2"), "{message}");
    assert_eq!(instance.as_deref(), Some("bbb222"));
    let (state, message, _) = machine(&s, "1");
    assert_eq!(state, "error");
    assert!(message.contains("tags=gpu"), "{message}");

    // Still deploying: waited for, not allocated again; the failed one
    // waits for its back-off.
    region.set("bbb222", |m| m.status_message = "writing the image".into());
    c.provision_pending().await.unwrap();
    assert_eq!(region.calls().len(), 3, "{:?}", region.calls());
    let (_, message, _) = machine(&c.status("m").await.unwrap(), "0");
    assert!(message.contains("writing the image"), "{message}");

    // A restarted controller resumes with the recorded machine.
    drop(c);
    let c = open(
        &url,
        dir.path(),
        provider.clone(),
        region.clone(),
        clock.clone(),
    )
    .await;
    c.provision_pending().await.unwrap();
    let calls = region.calls();
    assert!(
        !calls[3..].iter().any(|c| c.contains("tags=physical1")),
        "{calls:?}"
    );
    assert!(provider.0.lock().unwrap().is_empty());

    // Deployed: the agent goes on over SSH as debian, at its address.
    region.set("bbb222", |m| {
        m.status = MachineStatus::Deployed;
        m.addresses = vec!["10.0.0.21".into()];
    });
    c.provision_pending().await.unwrap();
    let reqs = provider.0.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].kind, ProviderKind::Metal);
    assert_eq!(reqs[0].instance, "bbb222");
    assert_eq!(reqs[0].placement.as_deref(), Some("ssh:debian@10.0.0.21"));
    assert_eq!(reqs[0].agent.machine, "0");
    let s = c.status("m").await.unwrap();
    let m0 = &s.machines["0"];
    assert_eq!(m0.address.as_deref(), Some("10.0.0.21"));
    assert_eq!(m0.message, "waiting for the agent");
    // Installed: nothing more to do for it.
    c.provision_pending().await.unwrap();
    assert_eq!(provider.0.lock().unwrap().len(), 1);

    // remove-machine: refused while a unit is on it; a machine without
    // one is released.
    let refused = c.remove_machine("m", "0").await.unwrap_err();
    assert!(
        refused.to_string().contains("hosts unit web/0"),
        "{refused}"
    );
    region.machines.lock().unwrap().push((
        MetalMachine {
            system_id: "ccc333".into(),
            hostname: "node3".into(),
            status: MachineStatus::Ready,
            status_message: String::new(),
            owner: None,
            addresses: vec![],
        },
        vec!["gpu".into()],
    ));
    clock.advance(60_000);
    c.provision_pending().await.unwrap();
    let (state, _, instance) = machine(&c.status("m").await.unwrap(), "1");
    assert_eq!(state, "provisioning");
    assert_eq!(instance.as_deref(), Some("ccc333"));
    c.remove_machine("m", "1").await.unwrap();
    assert!(region.calls().contains(&"release alice ccc333".to_string()));
    assert_eq!(region.get("ccc333").status, MachineStatus::Ready);
    assert_eq!(c.status("m").await.unwrap().machines.len(), 1);

    // Destroying the model gives the machine back to the region.
    c.destroy_model("m").await.unwrap();
    assert!(
        region.calls().contains(&"release alice bbb222".to_string()),
        "{:?}",
        region.calls()
    );
    assert_eq!(region.get("bbb222").status, MachineStatus::Ready);
}

#[tokio::test]
async fn a_failed_deployment_is_released_and_retried_afresh() {
    let region = Arc::new(FakeRegion::with(&[("aaa111", "node1", &[])]));
    let clock = Arc::new(ManualClock::new(1_000));
    let (c, _dir) = metal_model_with_a_machine(region.clone(), clock).await;
    c.provision_pending().await.unwrap();
    region.set("aaa111", |m| {
        m.status = MachineStatus::FailedDeployment;
        m.status_message = "machine powered off while deploying".into();
    });
    c.provision_pending().await.unwrap();
    let s = c.status("m").await.unwrap();
    let (state, message, instance) = machine(&s, "0");
    assert_eq!(state, "error");
    assert!(
        message.contains("node1 failed to deploy: machine powered off"),
        "{message}"
    );
    assert_eq!(instance, None);
    assert_eq!(region.get("aaa111").status, MachineStatus::Ready);
}

#[tokio::test]
async fn an_allocation_whose_answer_was_lost_is_found_again_not_doubled() {
    let region = Arc::new(FakeRegion::with(&[
        ("aaa111", "node1", &[]),
        ("bbb222", "node2", &[]),
    ]));
    *region.lose_next_answer.lock().unwrap() = true;
    let clock = Arc::new(ManualClock::new(1_000));
    let (c, _dir) = metal_model_with_a_machine(region.clone(), clock.clone()).await;
    c.provision_pending().await.unwrap();
    let (state, message, _) = machine(&c.status("m").await.unwrap(), "0");
    assert_eq!(state, "error");
    assert!(message.contains("connection reset"), "{message}");
    assert_eq!(region.get("aaa111").status, MachineStatus::Allocated);
    // After the back-off, asking again under the same name finds the
    // machine the lost answer was about.
    clock.advance(60_000);
    c.provision_pending().await.unwrap();
    let (state, _, instance) = machine(&c.status("m").await.unwrap(), "0");
    assert_eq!(state, "provisioning");
    assert_eq!(instance.as_deref(), Some("aaa111"));
    assert_eq!(region.get("bbb222").status, MachineStatus::Ready);
    assert_eq!(region.get("bbb222").owner, None);
}

/// A bootstrapped controller with metal model `m` of alice's holding one
/// machine without constraints, not yet provisioned.
async fn metal_model_with_a_machine(
    region: Arc<FakeRegion>,
    clock: Arc<ManualClock>,
) -> (Controller, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("kumo.db").display());
    let provider = Arc::new(Recorder::default());
    let c = open(&url, dir.path(), provider, region, clock).await;
    c.bootstrap(bootstrap()).await.unwrap();
    c.add_model("m", Some("metal"), Some("alice"))
        .await
        .unwrap();
    c.add_machines(
        "m",
        &AddMachines {
            placement: None,
            count: 1,
            constraints: None,
        },
    )
    .await
    .unwrap();
    (c, dir)
}

#[tokio::test]
async fn a_container_on_a_metal_machine_waits_for_it_then_goes_on_it_over_ssh() {
    let region = Arc::new(FakeRegion::with(&[("aaa111", "node1", &[])]));
    let clock = Arc::new(ManualClock::new(1_000));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("kumo.db").display());
    let provider = Arc::new(Recorder::default());
    let c = open(&url, dir.path(), provider.clone(), region.clone(), clock).await;
    c.bootstrap(bootstrap()).await.unwrap();
    c.add_model("m", Some("metal"), Some("alice"))
        .await
        .unwrap();
    let add = |placement: Option<&str>| AddMachines {
        placement: placement.map(String::from),
        count: 1,
        constraints: None,
    };
    assert_eq!(c.add_machines("m", &add(None)).await.unwrap(), ["0"]);
    assert_eq!(
        c.add_machines("m", &add(Some("lxd:0"))).await.unwrap(),
        ["0/lxd/0"]
    );

    // The host is allocated and deploying: the container waits.
    c.provision_pending().await.unwrap();
    let (state, message, _) = machine(&c.status("m").await.unwrap(), "0/lxd/0");
    assert_eq!(
        (state.as_str(), message.as_str()),
        ("pending", "waiting for machine 0")
    );
    assert!(provider.0.lock().unwrap().is_empty());

    // Deployed: its agent goes on, then the container, on the host over
    // SSH, with an address from the controller's range.
    region.set("aaa111", |m| {
        m.status = MachineStatus::Deployed;
        m.addresses = vec!["10.0.0.21".into()];
    });
    c.provision_pending().await.unwrap();
    c.provision_pending().await.unwrap();
    let reqs = provider.0.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let container = &reqs[1];
    assert_eq!(container.agent.machine, "0/lxd/0");
    assert_eq!(container.kind, ProviderKind::Metal);
    assert_eq!(container.address.as_deref(), Some("10.0.0.100"));
    let host = container.host.as_ref().expect("a host");
    assert_eq!(
        (
            host.instance.as_str(),
            host.target.as_str(),
            host.address.as_str()
        ),
        ("aaa111", "debian@10.0.0.21", "10.0.0.21")
    );
    let s = c.status("m").await.unwrap();
    assert_eq!(s.machines["0/lxd/0"].address.as_deref(), Some("10.0.0.100"));
    // Nothing more for either.
    c.provision_pending().await.unwrap();
    assert_eq!(provider.0.lock().unwrap().len(), 2);

    // The host is not given back while it hosts the container.
    let refused = c.remove_machine("m", "0").await.unwrap_err();
    assert!(
        refused.to_string().contains("hosts container 0/lxd/0"),
        "{refused}"
    );
    // The container is removed from its host; only the host goes back to
    // the region.
    c.destroy_model("m").await.unwrap();
    let removed = provider.1.lock().unwrap().clone();
    assert_eq!(
        removed[0],
        format!("{} on debian@10.0.0.21", container.instance)
    );
    assert_eq!(
        region
            .calls()
            .iter()
            .filter(|c| c.starts_with("release"))
            .collect::<Vec<_>>(),
        ["release alice aaa111"]
    );
}
