//! The provisioner as the region process runs it: machines are provisioned
//! side by side, so one slow to make (a first boot, an agent copied over
//! SSH) holds up no other, and each still gets an address of its own.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kumo_controller::docs::ProviderKind;
use kumo_controller::{Controller, ControllerConfig, Provider, ProvisionRequest};
use kumo_model::orchestra::AddMachines;
use kumo_region::{ManualClock, SecretBox, SeededEntropy};
use kumo_store::Store;
use tokio::sync::Semaphore;

/// Makes machine 0 wait until the test lets it finish; others at once.
struct Gate {
    open: Semaphore,
    asked: Mutex<Vec<String>>,
}

#[async_trait]
impl Provider for Gate {
    async fn provision(&self, req: &ProvisionRequest) -> Result<String, String> {
        self.asked.lock().unwrap().push(req.agent.machine.clone());
        if req.agent.machine == "0" {
            self.open.acquire().await.unwrap().forget();
        }
        Ok(req.address.clone().unwrap_or_default())
    }
    async fn destroy(
        &self,
        _: ProviderKind,
        _: &str,
        _: Option<&kumo_controller::HostRef>,
    ) -> Result<(), String> {
        Ok(())
    }
}

async fn wait_for(c: &Controller, what: &str, f: impl Fn(&kumo_model::orchestra::Status) -> bool) {
    for _ in 0..200 {
        if f(&c.status("default").await.unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "waiting for {what}: {:#?}",
        c.status("default").await.unwrap().machines
    );
}

#[tokio::test]
async fn a_machine_slow_to_provision_holds_up_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("kumo.db").display());
    let gate = Arc::new(Gate {
        open: Semaphore::new(0),
        asked: Mutex::new(vec![]),
    });
    let c = Controller::open(
        Store::open(&url).await.unwrap(),
        ControllerConfig::new(dir.path().to_path_buf()),
        Arc::new(ManualClock::new(1_000)),
        Arc::new(SeededEntropy::new(7)),
        gate.clone(),
        SecretBox::from_key([9; 32]),
    )
    .await
    .unwrap();
    c.bootstrap(common::bootstrap()).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let provisioner = tokio::spawn(c.clone().run_provisioner(stop_rx));
    let add = |count| AddMachines {
        placement: None,
        count,
        constraints: None,
    };
    c.add_machines("default", &add(1)).await.unwrap();
    wait_for(&c, "machine 0 to be handed to the provider", |_| {
        gate.asked.lock().unwrap().len() == 1
    })
    .await;
    // Machine 0 is still being made; two more are added meanwhile.
    c.add_machines("default", &add(2)).await.unwrap();
    let made = |s: &kumo_model::orchestra::Status, id: &str| {
        s.machines
            .get(id)
            .is_some_and(|m| m.message == "waiting for the agent")
    };
    wait_for(&c, "machines 1 and 2 made while 0 is not", |s| {
        made(s, "1") && made(s, "2") && !made(s, "0")
    })
    .await;
    gate.open.add_permits(1);
    wait_for(&c, "machine 0 made", |s| made(s, "0")).await;
    let s = c.status("default").await.unwrap();
    let mut addresses: Vec<_> = s.machines.values().map(|m| m.address.clone()).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 3, "one address each: {addresses:?}");
    // Each was handed over once.
    let mut asked = gate.asked.lock().unwrap().clone();
    asked.sort();
    assert_eq!(asked, ["0", "1", "2"]);
    stop_tx.send(true).unwrap();
    provisioner.await.unwrap();
}
