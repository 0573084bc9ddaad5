//! The controller over a real store (SQLite and PostgreSQL): what it
//! commits survives a restart, and an agent's commit is applied once even
//! when the agent resends it after the controller restarted.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{bootstrap, charm_tar, Recorder};
use kumo_controller::{Controller, ControllerConfig};
use kumo_model::orchestra::{Deploy, Relate};
use kumo_region::{ManualClock, SecretBox, SeededEntropy};
use kumo_store::Store;
use kumo_uniter::{complete, next, HookCommit, HookResult, Operation};

async fn open(store: Store, dir: &std::path::Path, provider: Arc<Recorder>) -> Controller {
    Controller::open(
        store,
        ControllerConfig::new(dir.to_path_buf()),
        Arc::new(ManualClock::new(1_000)),
        Arc::new(SeededEntropy::new(7)),
        provider,
        SecretBox::from_key([9; 32]),
    )
    .await
    .unwrap()
}

async fn restart_keeps_the_model(url: String) {
    let dir = tempfile::tempdir().unwrap();
    let provider = Arc::new(Recorder::default());
    let c = open(
        Store::open(&url).await.unwrap(),
        dir.path(),
        provider.clone(),
    )
    .await;
    c.bootstrap(bootstrap()).await.unwrap();
    let db = c
        .upload_charm(&charm_tar(
            "name: db\nsummary: d\nprovides:\n  db:\n    interface: mysql\n",
        ))
        .unwrap();
    let web = c
        .upload_charm(&charm_tar(
            "name: web\nsummary: w\nrequires:\n  db:\n    interface: mysql\n",
        ))
        .unwrap();
    let deploy = |charm: &str| Deploy {
        charm: charm.into(),
        application: None,
        config: BTreeMap::new(),
        num_units: 1,
        to: vec![],
        constraints: None,
    };
    c.deploy("default", &deploy(&db.sha256)).await.unwrap();
    c.deploy("default", &deploy(&web.sha256)).await.unwrap();
    c.relate(
        "default",
        &Relate {
            a: "web".into(),
            b: "db".into(),
        },
    )
    .await
    .unwrap();
    c.provision_pending().await.unwrap();
    let reqs = provider.0.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2);
    let web_machine = reqs
        .iter()
        .find(|r| r.agent.machine == "1")
        .unwrap()
        .agent
        .clone();

    // The agent of machine 1 runs web/0's first hook and commits it.
    let view = c
        .agent_view("default", "1", &web_machine.token, None)
        .await
        .unwrap();
    let unit = &view.units[0];
    let Operation::Run(hook) = next(&unit.view, &unit.state) else {
        panic!()
    };
    let commit = HookCommit {
        unit: unit.view.unit.clone(),
        base_version: unit.state_version,
        hook: hook.clone(),
        result: HookResult::Succeeded,
        state: complete(&unit.state, &hook, 0),
        unit_settings: BTreeMap::new(),
        app_settings: BTreeMap::new(),
        leader_settings: BTreeMap::new(),
        workload_status: None,
        ports: None,
        logs: vec![],
        output: String::new(),
        action: None,
    };
    c.agent_running("default", "1", &web_machine.token, "web/0", "install")
        .await
        .unwrap();
    let executing = c.status("default").await.unwrap().units["web/0"]
        .agent
        .clone();
    assert_eq!(executing, "executing");
    let ack = c
        .agent_commit("default", "1", &web_machine.token, &commit)
        .await
        .unwrap();
    assert_eq!(ack.state_version, 1);
    assert!(c
        .agent_commit("default", "1", "wrong", &commit)
        .await
        .is_err());
    let before = c.status("default").await.unwrap();
    drop(c);

    // A new controller on the same store: the same model; the resent
    // commit is acknowledged, not applied again.
    let c = open(
        Store::open(&url).await.unwrap(),
        dir.path(),
        provider.clone(),
    )
    .await;
    assert_eq!(
        c.status("default").await.unwrap().relations,
        before.relations
    );
    let again = c
        .agent_commit("default", "1", &web_machine.token, &commit)
        .await
        .unwrap();
    assert_eq!(again.state_version, 1);
    // An agent that died mid-hook and starts again is not "executing".
    c.agent_running("default", "1", &web_machine.token, "web/0", "start")
        .await
        .unwrap();
    let view = c
        .agent_view("default", "1", &web_machine.token, None)
        .await
        .unwrap();
    let agent = c.status("default").await.unwrap().units["web/0"]
        .agent
        .clone();
    assert_eq!(agent, "idle");
    assert_eq!(view.units[0].state_version, 1);
    assert!(view.units[0].state.installed);
    // The charms come back from the data directory.
    assert!(c.charm_archive(&web.sha256).is_ok());
}

#[tokio::test]
async fn sqlite_restart_keeps_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("kumo.db").display());
    restart_keeps_the_model(url).await;
}

#[tokio::test]
async fn postgres_restart_keeps_the_model() {
    let (_store, url) = kumo_store::testing::postgres().await;
    restart_keeps_the_model(url).await;
}

/// `lxd:N` on a manual machine: the container goes on that host over SSH
/// as the user the machine was added with, once the host has its agent.
#[tokio::test]
async fn a_container_on_a_manual_machine_goes_on_it_over_ssh() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("kumo.db").display());
    let provider = Arc::new(Recorder::default());
    let c = open(
        Store::open(&url).await.unwrap(),
        dir.path(),
        provider.clone(),
    )
    .await;
    c.bootstrap(bootstrap()).await.unwrap();
    c.add_model("hosts", Some("manual"), None).await.unwrap();
    let add = |placement: &str| kumo_model::orchestra::AddMachines {
        placement: Some(placement.into()),
        count: 1,
        constraints: None,
    };
    c.add_machines("hosts", &add("ssh:ops@10.0.0.30"))
        .await
        .unwrap();
    c.add_machines("hosts", &add("lxd:0")).await.unwrap();
    c.provision_pending().await.unwrap();
    c.provision_pending().await.unwrap();
    let reqs = provider.0.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].host, None);
    let host = reqs[1].host.as_ref().expect("the container's host");
    assert_eq!(
        (host.target.as_str(), host.address.as_str()),
        ("ops@10.0.0.30", "10.0.0.30")
    );
    assert_eq!(reqs[1].address.as_deref(), Some("10.0.0.100"));
    c.destroy_model("hosts").await.unwrap();
    assert_eq!(
        provider.1.lock().unwrap()[0],
        format!("{} on ops@10.0.0.30", reqs[1].instance)
    );
}
