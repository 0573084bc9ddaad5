//! The region service end to end over a real store (SQLite and PostgreSQL)
//! and real power peers (an HTTP webhook server on loopback).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kumo_model::api::{
    ActionOptions, AddMachine, AllocateRequest, EnlistRequest, ReportEvent, ReportResult,
    StatusReport, Tag, UpdateMachine, UpdateTagMachines,
};
use kumo_model::boot::BootPurpose;
use kumo_model::inventory::{Cpu, Disk, Nic};
use kumo_model::{EraseMode, Inventory, MachineStatus, ModelError, PowerState};
use kumo_power::RetryPolicy;
use kumo_region::{
    Actor, ManualClock, Region, RegionConfig, RegionError, SecretBox, SeededEntropy,
};
use kumo_store::Store;
use serde_json::json;

fn admin() -> Actor {
    Actor {
        username: "admin".into(),
        admin: true,
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

fn config() -> RegionConfig {
    RegionConfig {
        images_dir: Some(
            std::env::temp_dir().join(format!("kumo-region-test-images-{}", std::process::id())),
        ),
        power_retry: RetryPolicy {
            attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
        },
        ..Default::default()
    }
}

async fn region_on(store: Store, clock: Arc<ManualClock>, seed: u64) -> Region {
    let r = Region::new(
        store,
        SecretBox::from_key([9; 32]),
        clock,
        Arc::new(SeededEntropy::new(seed)),
        config(),
    );
    r.ensure_defaults().await.unwrap();
    r
}

async fn sqlite_region() -> (Region, Arc<ManualClock>, tempfile::TempDir) {
    let (store, dir) = kumo_store::testing::sqlite().await;
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    (region_on(store, clock.clone(), 1).await, clock, dir)
}

/// A real HTTP power peer: records the operations it is asked for and
/// answers queries with the state they leave.
#[derive(Clone, Default)]
struct WebhookBmc {
    calls: Arc<Mutex<Vec<String>>>,
    on: Arc<Mutex<HashMap<String, bool>>>,
}

impl WebhookBmc {
    async fn start() -> (WebhookBmc, String) {
        use axum::extract::{Path, State};
        use axum::routing::{get, post};
        let bmc = WebhookBmc::default();
        let app = axum::Router::new()
            .route(
                "/{node}/on",
                post(
                    |State(b): State<WebhookBmc>, Path(n): Path<String>| async move {
                        b.calls.lock().unwrap().push(format!("{n} on"));
                        b.on.lock().unwrap().insert(n, true);
                        "ok"
                    },
                ),
            )
            .route(
                "/{node}/off",
                post(
                    |State(b): State<WebhookBmc>, Path(n): Path<String>| async move {
                        b.calls.lock().unwrap().push(format!("{n} off"));
                        b.on.lock().unwrap().insert(n, false);
                        "ok"
                    },
                ),
            )
            .route(
                "/{node}/status",
                get(
                    |State(b): State<WebhookBmc>, Path(n): Path<String>| async move {
                        if *b.on.lock().unwrap().get(&n).unwrap_or(&false) {
                            "status: running"
                        } else {
                            "status: stopped"
                        }
                    },
                ),
            )
            .with_state(bmc.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (bmc, url)
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

fn webhook_machine(name: &str, mac: &str, base: &str) -> AddMachine {
    AddMachine {
        hostname: name.into(),
        macs: vec![mac.into()],
        power_type: Some("webhook".into()),
        power_parameters: json!({
            "power_on_uri": format!("{base}/{name}/on"),
            "power_off_uri": format!("{base}/{name}/off"),
            "power_query_uri": format!("{base}/{name}/status"),
            "power_token": "bmc-secret-token",
        })
        .as_object()
        .unwrap()
        .clone(),
        ..Default::default()
    }
}

fn inventory(mac: &str) -> Inventory {
    Inventory {
        cpu: Cpu {
            model: "QEMU Virtual CPU".into(),
            count: 8,
        },
        memory_mib: 16384,
        disks: vec![Disk {
            name: "vda".into(),
            size_bytes: 600_000_000_000,
            model: "QEMU HARDDISK".into(),
            serial: "d1".into(),
        }],
        nics: vec![Nic {
            name: "ens3".into(),
            mac: mac.parse().unwrap(),
            driver: "virtio_net".into(),
            link_up: true,
        }],
        ..Default::default()
    }
}

fn finished(ok: bool) -> StatusReport {
    StatusReport {
        event: ReportEvent::Finished,
        result: Some(if ok {
            ReportResult::Success
        } else {
            ReportResult::Failure
        }),
        message: String::new(),
    }
}

#[tokio::test]
async fn a_machine_walks_the_whole_lifecycle_with_real_power() {
    let (bmc, base) = WebhookBmc::start().await;
    let (r, _clock, _dir) = sqlite_region().await;
    r.create_tag(
        &admin(),
        Tag {
            name: "big".into(),
            definition: "cpu_count >= 8 && storage_gb >= 500".into(),
            comment: String::new(),
        },
    )
    .await
    .unwrap();
    let m = r
        .add_machine(
            &admin(),
            webhook_machine("node1", "52:54:00:00:01:01", &base),
        )
        .await
        .unwrap();
    assert_eq!(m.status, MachineStatus::New);
    assert!(m.tags.is_empty());

    let m = r
        .machine_action(&admin(), "node1", "commission", ActionOptions::default())
        .await
        .unwrap();
    assert_eq!(m.status, MachineStatus::Commissioning);
    assert!(m.deadline.is_some());
    r.drain_power_jobs().await.unwrap();
    assert_eq!(bmc.calls(), ["node1 on"]);
    assert_eq!(
        r.machine("node1").await.unwrap().power_state,
        PowerState::On
    );

    // The booted machine talks to the machine-facing API with its token.
    let token = r
        .machine_token("node1")
        .await
        .unwrap()
        .expect("commissioning issues a token");
    assert_eq!(r.instructions(&token).await.unwrap().task, "commission");
    r.machine_inventory(&token, inventory("52:54:00:00:01:02"))
        .await
        .unwrap();
    let m = r.machine_report(&token, finished(true)).await.unwrap();
    assert_eq!(m.status, MachineStatus::Ready);
    assert_eq!((m.cpu_count, m.memory_mib), (8, 16384));
    assert_eq!(m.tags, ["big"], "the automatic tag follows the inventory");
    assert_eq!(m.macs.len(), 2);
    // Commissioning done: the token is revoked and the machine powered off.
    assert!(matches!(
        r.instructions(&token).await,
        Err(RegionError::Unauthorized)
    ));
    r.drain_power_jobs().await.unwrap();
    assert_eq!(bmc.calls(), ["node1 on", "node1 off"]);

    let m = r
        .allocate(
            &admin(),
            AllocateRequest {
                constraints: "tags=big cores=4".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (m.status, m.owner.as_deref()),
        (MachineStatus::Allocated, Some("admin"))
    );
    let image = b"not really a disk".as_slice();
    r.upload_image(
        &admin(),
        kumo_model::api::ImageUpload {
            name: "debian-12".into(),
            sha256: sha256_hex(image),
            ..Default::default()
        },
        image,
    )
    .await
    .unwrap();
    let m = r
        .machine_action(&admin(), "node1", "deploy", ActionOptions::default())
        .await
        .unwrap();
    assert_eq!(m.status, MachineStatus::Deploying);
    r.drain_power_jobs().await.unwrap();
    let token = r.machine_token("node1").await.unwrap().unwrap();
    let i = r.instructions(&token).await.unwrap();
    assert_eq!(i.task, "deploy");
    let d = i.deploy.expect("deploy instructions");
    assert_eq!(d.sha256, sha256_hex(image));
    assert_eq!(d.path, format!("/boot/images/{}.img.zst", d.sha256));
    let boot_of = |cfg: &kumo_model::network::RackConfig| {
        cfg.boot
            .iter()
            .find(|b| b.hostname == "node1")
            .map(|b| b.purpose)
    };
    let cfg = r.rack_config().await.unwrap();
    assert_eq!(boot_of(&cfg), Some(BootPurpose::Deploy));
    assert_eq!(cfg.images.len(), 1, "racks mirror the image");

    // The owner's SSH key and the machine's name reach the first boot.
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPUYHB3P4QFb+8f1A5+RYSsWcGhfpdub+t893nu4Vr/R alice@lab";
    r.create_user(
        &admin(),
        kumo_model::api::CreateUser {
            username: "admin".into(),
            password: "long enough".into(),
            admin: true,
        },
    )
    .await
    .unwrap();
    r.add_ssh_key(&admin(), key).await.unwrap();
    assert_eq!(
        r.add_ssh_key(&admin(), key).await.unwrap_err().code(),
        "already_exists"
    );
    let docs = r
        .cloud_init(&token, "http://10.0.0.2:5248/metadata/v1/")
        .await
        .unwrap();
    assert!(docs.vendor_data.contains(key), "{}", docs.vendor_data);
    assert!(docs
        .vendor_data
        .contains("http://10.0.0.2:5248/metadata/v1/status"));
    assert!(
        docs.meta_data.contains("\"local-hostname\":\"node1\""),
        "{}",
        docs.meta_data
    );
    assert!(
        docs.network_config.contains("52:54:00:00:01:01"),
        "{}",
        docs.network_config
    );

    // The image is on disk: the rack now boots the disk, and the power
    // driver restarts the machine through off.
    let reply = r.machine_installed(&token).await.unwrap();
    assert_eq!(reply.reboot, "power");
    assert_eq!(
        boot_of(&r.rack_config().await.unwrap()),
        Some(BootPurpose::LocalDisk)
    );
    let before = bmc.calls().len();
    r.drain_power_jobs().await.unwrap();
    assert_eq!(bmc.calls()[before..], ["node1 off", "node1 on"]);
    assert_eq!(
        r.delete_image(&admin(), "debian-12")
            .await
            .unwrap_err()
            .code(),
        "in_use",
        "an image being deployed stays"
    );
    r.machine_report(
        &token,
        StatusReport {
            event: ReportEvent::Progress,
            result: None,
            message: "writing image".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        r.machine_report(&token, finished(true))
            .await
            .unwrap()
            .status,
        MachineStatus::Deployed
    );

    let m = r
        .machine_action(
            &admin(),
            "node1",
            "release",
            ActionOptions {
                erase: Some(EraseMode::Quick),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(m.status, MachineStatus::DiskErasing);
    r.drain_power_jobs().await.unwrap();
    let token = r.machine_token("node1").await.unwrap().unwrap();
    let i = r.instructions(&token).await.unwrap();
    assert_eq!((i.task.as_str(), i.erase), ("erase", EraseMode::Quick));
    let m = r.machine_report(&token, finished(true)).await.unwrap();
    assert_eq!((m.status, m.owner), (MachineStatus::Ready, None));
    r.drain_power_jobs().await.unwrap();

    // Release without erase is finished by the power worker itself.
    r.machine_action(&admin(), "node1", "allocate", ActionOptions::default())
        .await
        .unwrap();
    let m = r
        .machine_action(&admin(), "node1", "release", ActionOptions::default())
        .await
        .unwrap();
    assert_eq!(m.status, MachineStatus::Releasing);
    r.drain_power_jobs().await.unwrap();
    assert_eq!(
        r.machine("node1").await.unwrap().status,
        MachineStatus::Ready
    );

    let events = r.machine_events(Some("node1"), 100).await.unwrap();
    let text: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("commission by admin: new → commissioning")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|t| t.contains("writing image")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|t| t.contains("deploying → deployed")),
        "{text:#?}"
    );
}

#[tokio::test]
async fn illegal_actions_name_the_allowed_ones() {
    let (r, _c, _d) = sqlite_region().await;
    r.add_machine(
        &admin(),
        AddMachine {
            hostname: "n1".into(),
            macs: vec!["52:54:00:00:00:01".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let e = r
        .machine_action(&admin(), "n1", "deploy", ActionOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "illegal_transition");
    assert!(
        e.allowed_actions().contains(&"commission".to_string()),
        "{:?}",
        e.allowed_actions()
    );
    let e = r
        .machine_action(&admin(), "n1", "fly", ActionOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.field().as_deref()),
        ("invalid_field", Some("action"))
    );
}

#[tokio::test]
async fn bad_input_is_rejected_naming_the_field_and_nothing_is_stored() {
    let (r, _c, _d) = sqlite_region().await;
    let cases = [
        (
            AddMachine {
                hostname: "bad_name".into(),
                macs: vec!["52:54:00:00:00:01".into()],
                ..Default::default()
            },
            "hostname",
        ),
        (
            AddMachine {
                hostname: "ok".into(),
                macs: vec!["52:54:00:00:00:0z".into()],
                ..Default::default()
            },
            "macs[0]",
        ),
        (
            AddMachine {
                hostname: "ok".into(),
                macs: vec![],
                ..Default::default()
            },
            "macs",
        ),
        (
            AddMachine {
                hostname: "ok".into(),
                macs: vec!["52:54:00:00:00:01".into()],
                arch: Some("vax".into()),
                ..Default::default()
            },
            "arch",
        ),
        (
            AddMachine {
                hostname: "ok".into(),
                macs: vec!["52:54:00:00:00:01".into()],
                zone: Some("nowhere".into()),
                ..Default::default()
            },
            "zone",
        ),
        (
            AddMachine {
                hostname: "ok".into(),
                macs: vec!["52:54:00:00:00:01".into()],
                power_type: Some("ipmi".into()),
                ..Default::default()
            },
            "power_parameters.power_address",
        ),
    ];
    for (req, field) in cases {
        let e = r.add_machine(&admin(), req).await.unwrap_err();
        assert_eq!(e.field().as_deref(), Some(field), "{e}");
        assert!(e.code().starts_with("invalid"), "{e}");
    }
    assert_eq!(r.store().count_machines().await.unwrap(), 0);
    let normal = Actor {
        username: "bob".into(),
        admin: false,
    };
    let e = r
        .add_machine(
            &normal,
            AddMachine {
                hostname: "x".into(),
                macs: vec!["52:54:00:00:00:01".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "forbidden");
}

#[tokio::test]
async fn bmc_secrets_are_sealed_at_rest_and_never_in_the_machine_record() {
    let (r, _c, dir) = sqlite_region().await;
    let req = AddMachine {
        hostname: "n1".into(),
        macs: vec!["52:54:00:00:00:01".into()],
        power_type: Some("ipmi".into()),
        power_parameters: json!({"power_address": "127.0.0.1", "power_user": "admin", "power_pass": "hunter2-bmc"}).as_object().unwrap().clone(),
        ..Default::default()
    };
    let m = r.add_machine(&admin(), req).await.unwrap();
    let shown = serde_json::to_string(&r.view(m.clone())).unwrap();
    assert!(!shown.contains("hunter2-bmc"), "{shown}");
    assert!(shown.contains("power_user"));
    let db = std::fs::read(dir.path().join("kumo.db")).unwrap();
    assert!(
        !db.windows(11).any(|w| w == b"hunter2-bmc"),
        "the password is in the database file in clear"
    );
    assert_eq!(
        r.power_parameters(&m).await.unwrap()["power_pass"],
        "hunter2-bmc"
    );

    // Updating another parameter keeps the sealed password.
    let upd = UpdateMachine {
        power_parameters: Some(json!({"power_user": "root"}).as_object().unwrap().clone()),
        ..Default::default()
    };
    let m = r.update_machine(&admin(), "n1", upd).await.unwrap();
    let p = r.power_parameters(&m).await.unwrap();
    assert_eq!(
        (p["power_user"].as_str(), p["power_pass"].as_str()),
        (Some("root"), Some("hunter2-bmc"))
    );
}

#[tokio::test]
async fn the_watchdog_fails_a_machine_that_stops_reporting() {
    let (r, clock, _d) = sqlite_region().await;
    r.add_machine(
        &admin(),
        AddMachine {
            hostname: "n1".into(),
            macs: vec!["52:54:00:00:00:01".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    r.machine_action(&admin(), "n1", "commission", ActionOptions::default())
        .await
        .unwrap();
    let token = r.machine_token("n1").await.unwrap().unwrap();
    clock.advance(1_000 * 1_000);
    assert_eq!(
        r.run_watchdog().await.unwrap(),
        0,
        "still within the 1200 s timeout"
    );
    // A progress report pushes the deadline out again.
    r.machine_report(
        &token,
        StatusReport {
            event: ReportEvent::Progress,
            result: None,
            message: "running lshw".into(),
        },
    )
    .await
    .unwrap();
    clock.advance(1_000 * 1_000);
    assert_eq!(r.run_watchdog().await.unwrap(), 0);
    clock.advance(300 * 1_000);
    assert_eq!(r.run_watchdog().await.unwrap(), 1);
    let m = r.machine("n1").await.unwrap();
    assert_eq!(m.status, MachineStatus::FailedCommissioning);
    assert!(
        m.status_message
            .contains("no report from the machine for 1200 s while commissioning"),
        "{}",
        m.status_message
    );
    assert_eq!(
        r.run_watchdog().await.unwrap(),
        0,
        "a failed machine is not failed twice"
    );
}

#[tokio::test]
async fn a_power_failure_fails_the_task_and_says_why() {
    let (r, _c, _d) = sqlite_region().await;
    // Nothing listens on port 9 of loopback: every attempt is refused.
    let mut req = webhook_machine("n1", "52:54:00:00:00:01", "http://127.0.0.1:9");
    req.power_parameters.remove("power_token");
    r.add_machine(&admin(), req).await.unwrap();
    r.machine_action(&admin(), "n1", "commission", ActionOptions::default())
        .await
        .unwrap();
    r.drain_power_jobs().await.unwrap();
    let m = r.machine("n1").await.unwrap();
    assert_eq!(
        (m.status, m.power_state),
        (MachineStatus::FailedCommissioning, PowerState::Error)
    );
    assert!(
        m.status_message.contains("power cycle failed"),
        "{}",
        m.status_message
    );
}

#[tokio::test]
async fn allocation_explains_what_ruled_machines_out() {
    let (r, _c, _d) = sqlite_region().await;
    r.create_tag(
        &admin(),
        Tag {
            name: "compute".into(),
            definition: String::new(),
            comment: String::new(),
        },
    )
    .await
    .unwrap();
    for (i, cores) in [(1, 4), (2, 16)] {
        let name = format!("n{i}");
        r.add_machine(
            &admin(),
            AddMachine {
                hostname: name.clone(),
                macs: vec![format!("52:54:00:00:00:0{i}")],
                cpu_count: Some(cores),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        r.machine_action(&admin(), &name, "commission", ActionOptions::default())
            .await
            .unwrap();
        let t = r.machine_token(&name).await.unwrap().unwrap();
        r.machine_report(&t, finished(true)).await.unwrap();
    }
    r.tag_machines(
        &admin(),
        "compute",
        UpdateTagMachines {
            add: vec!["n1".into()],
            remove: vec![],
        },
    )
    .await
    .unwrap();
    let e = r
        .allocate(
            &admin(),
            AllocateRequest {
                constraints: "tags=compute cores=8".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "no_machine_matches");
    let msg = e.to_string();
    assert!(
        msg.contains("of 2 ready machines")
            && msg.contains("tags=compute ruled out 1")
            && msg.contains("cores>=8 ruled out 1"),
        "{msg}"
    );
    let e = r
        .allocate(
            &admin(),
            AllocateRequest {
                constraints: "cores=lots".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_constraint");
    let m = r
        .allocate(
            &admin(),
            AllocateRequest {
                constraints: "tags=compute".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(m.hostname.as_str(), "n1");
    assert!(matches!(
        r.allocate(
            &admin(),
            AllocateRequest {
                constraints: "tags=compute".into(),
                ..Default::default()
            }
        )
        .await,
        Err(RegionError::Model(ModelError::NoMachineMatches { .. }))
    ));

    // An agent name makes allocation safe to repeat: a caller that
    // crashed before noting what it got asks again and gets the same one.
    let named = |name: &str| AllocateRequest {
        constraints: String::new(),
        agent_name: Some(name.into()),
    };
    let first = r.allocate(&admin(), named("kumo/m/0")).await.unwrap();
    assert_eq!(first.hostname.as_str(), "n2");
    assert_eq!(first.agent_name.as_deref(), Some("kumo/m/0"));
    let again = r.allocate(&admin(), named("kumo/m/0")).await.unwrap();
    assert_eq!(again.system_id, first.system_id);
    assert!(matches!(
        r.allocate(&admin(), named("kumo/m/1")).await,
        Err(RegionError::Model(ModelError::NoMachineMatches { .. }))
    ));
    // Another owner's request of the same name is not answered with it.
    let other = Actor {
        username: "bob".into(),
        admin: false,
    };
    assert!(r.allocate(&other, named("kumo/m/0")).await.is_err());
    assert_eq!(
        r.allocate(&admin(), named("")).await.unwrap_err().code(),
        "invalid_field"
    );
    // Released, the machine forgets the name with its owner.
    r.machine_action(&admin(), "n2", "release", ActionOptions::default())
        .await
        .unwrap();
    r.drain_power_jobs().await.unwrap();
    let m = r.machine("n2").await.unwrap();
    assert_eq!((m.status, m.agent_name), (MachineStatus::Ready, None));
}

/// Two region processes share one PostgreSQL database; actions fired at the
/// same machine from both at once are serialised and none is lost.
#[tokio::test]
async fn concurrent_actions_from_two_regions_are_serialised_not_lost() {
    let (store_a, url) = kumo_store::testing::postgres().await;
    let store_b = Store::open(&url).await.unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let a = region_on(store_a, clock.clone(), 1).await;
    let b = region_on(store_b, clock.clone(), 2).await;
    for i in 0..20 {
        a.add_machine(
            &admin(),
            AddMachine {
                hostname: format!("n{i}"),
                macs: vec![format!("52:54:00:00:01:{i:02x}")],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("n{i}");
            let who = admin();
            let (x, y) = tokio::join!(
                a.machine_action(&who, &name, "commission", ActionOptions::default()),
                b.machine_action(
                    &who,
                    &name,
                    "mark-broken",
                    ActionOptions {
                        reason: Some("psu".into()),
                        ..Default::default()
                    }
                ),
            );
            (x.is_ok(), y.is_ok())
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (commissioned, broken) = t.await.unwrap();
        // Both orders are legal (commission from Broken, mark-broken while
        // commissioning), so both must have landed, one after the other.
        assert!(
            commissioned && broken,
            "n{i}: commission {commissioned}, mark-broken {broken}"
        );
        let events = a.machine_events(Some(&format!("n{i}")), 50).await.unwrap();
        assert_eq!(
            events
                .iter()
                .filter(|e| e.kind == "status" && e.message.contains("→"))
                .count(),
            2,
            "{events:#?}"
        );
    }
}

/// A region killed after recording an action but before powering the
/// machine resumes the power work from the store when it restarts.
#[tokio::test]
async fn a_restarted_region_resumes_queued_power_work() {
    let (bmc, base) = WebhookBmc::start().await;
    let (store, dir) = kumo_store::testing::sqlite().await;
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let first = region_on(store, clock.clone(), 1).await;
    first
        .add_machine(&admin(), webhook_machine("n1", "52:54:00:00:00:01", &base))
        .await
        .unwrap();
    first
        .machine_action(&admin(), "n1", "commission", ActionOptions::default())
        .await
        .unwrap();
    first.store().close().await;
    drop(first);
    assert!(bmc.calls().is_empty());

    let url = format!("sqlite:{}", dir.path().join("kumo.db").display());
    let second = region_on(Store::open(&url).await.unwrap(), clock, 2).await;
    second.drain_power_jobs().await.unwrap();
    assert_eq!(bmc.calls(), ["n1 on"]);
    assert_eq!(
        second.machine("n1").await.unwrap().status,
        MachineStatus::Commissioning
    );
    assert!(
        second.store().power_jobs().await.unwrap().is_empty(),
        "done work is not redone"
    );
}

#[tokio::test]
async fn an_unknown_machine_enlists_once_as_new_with_its_inventory_and_auto_tags() {
    let (r, _clock, _dir) = sqlite_region().await;
    r.create_tag(
        &admin(),
        Tag {
            name: "big".into(),
            definition: "cpu_count >= 8 && memory_mib >= 16384".into(),
            comment: String::new(),
        },
    )
    .await
    .unwrap();
    let mut inv = inventory("52:54:00:00:e0:02");
    inv.nics.insert(
        0,
        Nic {
            name: "ens4".into(),
            mac: "52:54:00:00:e0:01".parse().unwrap(),
            driver: "e1000".into(),
            link_up: false,
        },
    );
    let m = r
        .enlist(EnlistRequest {
            inventory: inv.clone(),
            boot_mac: Some("52-54-00-00-E0-02".into()),
        })
        .await
        .unwrap();
    assert_eq!(m.status, MachineStatus::New);
    assert!(
        m.hostname.to_string().starts_with("node-"),
        "{}",
        m.hostname
    );
    assert_eq!(m.arch, "amd64");
    assert_eq!(m.power_type, "manual");
    let macs: Vec<String> = m.macs.iter().map(|m| m.to_string()).collect();
    assert_eq!(
        macs,
        ["52:54:00:00:e0:02", "52:54:00:00:e0:01"],
        "the boot MAC first"
    );
    assert_eq!((m.cpu_count, m.memory_mib), (8, 16384));
    assert_eq!(m.storage_bytes, 600_000_000_000);
    assert_eq!(m.inventory.as_ref(), Some(&inv));
    assert_eq!(m.tags, ["big"]);
    assert!(!m.commissioned);

    // Booting again (any of its MACs) does not make a second machine.
    let err = r
        .enlist(EnlistRequest {
            inventory: inventory("52:54:00:00:e0:01"),
            boot_mac: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "already_enlisted");
    assert!(
        err.to_string().contains(m.hostname.as_str())
            && err.to_string().contains(m.system_id.as_str()),
        "{err}"
    );
    assert_eq!(r.list_machines(&Default::default()).await.unwrap().len(), 1);

    // Nothing to boot from, or a malformed boot MAC, names the field.
    let err = r
        .enlist(EnlistRequest {
            inventory: Inventory::default(),
            boot_mac: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.field().as_deref(), Some("inventory.nics"), "{err}");
    let err = r
        .enlist(EnlistRequest {
            inventory: inventory("52:54:00:00:e0:09"),
            boot_mac: Some("not-a-mac".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.field().as_deref(), Some("boot_mac"), "{err}");
}

mod scripts {
    use super::*;
    use kumo_model::scripts::{
        NewScript, ScriptOutcome, ScriptResultReport, ScriptType, MAX_SCRIPT_BYTES,
    };

    fn new(name: &str, t: ScriptType, body: &str) -> NewScript {
        NewScript {
            name: name.into(),
            script_type: t,
            description: String::new(),
            timeout_secs: None,
            body: body.into(),
        }
    }

    fn ok_script(name: &str, t: ScriptType) -> NewScript {
        new(name, t, &format!("#!/bin/sh\necho {name}\n"))
    }

    fn result(name: &str, exit: i32) -> ScriptResultReport {
        ScriptResultReport {
            name: name.into(),
            outcome: if exit == 0 {
                ScriptOutcome::Passed
            } else {
                ScriptOutcome::Failed
            },
            exit_status: Some(exit),
            stdout: format!("{name} says hi\n"),
            stdout_truncated: false,
            stderr: String::new(),
            stderr_truncated: false,
            started_at: 1_700_000_000_000,
            ended_at: 1_700_000_001_200,
        }
    }

    fn scripts_of(opts: &[&str]) -> ActionOptions {
        ActionOptions {
            scripts: Some(opts.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    async fn manual_machine(r: &Region, name: &str, mac: &str) {
        r.add_machine(
            &admin(),
            AddMachine {
                hostname: name.into(),
                macs: vec![mac.into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn scripts_are_added_listed_checked_and_deleted_by_admins() {
        let (r, _c, _d) = sqlite_region().await;
        let info = r
            .add_script(&admin(), ok_script("cpu-count", ScriptType::Commissioning))
            .await
            .unwrap();
        assert_eq!((info.timeout_secs, info.size), (600, 25));
        r.add_script(&admin(), ok_script("burn-in", ScriptType::Testing))
            .await
            .unwrap();
        let names: Vec<String> = r
            .scripts()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["burn-in", "cpu-count"]);
        assert_eq!(
            r.script("cpu-count").await.unwrap().body,
            "#!/bin/sh\necho cpu-count\n"
        );

        let big = format!("#!/bin/sh\n{}", "#".repeat(MAX_SCRIPT_BYTES));
        for (req, field) in [
            (ok_script("bad name", ScriptType::Testing), "name"),
            (new("x", ScriptType::Testing, "echo no shebang\n"), "body"),
            (new("x", ScriptType::Testing, &big), "body"),
            (
                NewScript {
                    timeout_secs: Some(0),
                    ..ok_script("x", ScriptType::Testing)
                },
                "timeout_secs",
            ),
        ] {
            let e = r.add_script(&admin(), req).await.unwrap_err();
            assert_eq!(
                (e.code(), e.field().as_deref()),
                ("invalid_field", Some(field)),
                "{e}"
            );
        }
        let e = r
            .add_script(&admin(), ok_script("cpu-count", ScriptType::Testing))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "already_exists", "{e}");
        let bob = Actor {
            username: "bob".into(),
            admin: false,
        };
        let e = r
            .add_script(&bob, ok_script("mine", ScriptType::Testing))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "forbidden");
        assert_eq!(
            r.delete_script(&bob, "cpu-count").await.unwrap_err().code(),
            "forbidden"
        );
        assert_eq!(
            r.scripts().await.unwrap().len(),
            2,
            "nothing bad was stored"
        );

        r.delete_script(&admin(), "cpu-count").await.unwrap();
        assert_eq!(
            r.delete_script(&admin(), "cpu-count")
                .await
                .unwrap_err()
                .code(),
            "not_found"
        );
        assert_eq!(r.scripts().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn commissioning_runs_the_chosen_scripts_and_a_failed_one_fails_it() {
        let (r, clock, _d) = sqlite_region().await;
        for (n, t) in [
            ("a-lshw", ScriptType::Commissioning),
            ("b-count", ScriptType::Commissioning),
            ("smart", ScriptType::Testing),
        ] {
            r.add_script(&admin(), ok_script(n, t)).await.unwrap();
        }
        manual_machine(&r, "n1", "52:54:00:00:05:01").await;

        // Names that are not commissioning scripts are refused before
        // anything moves: no status change, no power job.
        for bad in [&["nope"][..], &["smart"], &["a-lshw", "nope"]] {
            let e = r
                .machine_action(&admin(), "n1", "commission", scripts_of(bad))
                .await
                .unwrap_err();
            assert_eq!(
                (e.code(), e.field().as_deref()),
                ("invalid_field", Some("scripts")),
                "{e}"
            );
        }
        let e = r
            .machine_action(&admin(), "n1", "deploy", scripts_of(&["a-lshw"]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "illegal_transition", "illegality first: {e}");
        let e = r
            .machine_action(&admin(), "n1", "mark-broken", scripts_of(&["a-lshw"]))
            .await
            .unwrap_err();
        assert_eq!(e.field().as_deref(), Some("scripts"), "{e}");
        assert_eq!(r.machine("n1").await.unwrap().status, MachineStatus::New);
        assert!(r.store().power_jobs().await.unwrap().is_empty());

        // By default every commissioning script runs, by name.
        let m = r
            .machine_action(&admin(), "n1", "commission", ActionOptions::default())
            .await
            .unwrap();
        let task = m.script_task.clone().unwrap();
        assert_eq!(
            (task.script_type, task.scripts.clone()),
            (
                ScriptType::Commissioning,
                vec!["a-lshw".into(), "b-count".into()]
            )
        );
        r.machine_action(&admin(), "n1", "abort", ActionOptions::default())
            .await
            .unwrap();

        clock.advance(1_000);
        let m = r
            .machine_action(&admin(), "n1", "commission", scripts_of(&["b-count"]))
            .await
            .unwrap();
        assert_eq!(m.script_task.as_ref().unwrap().scripts, ["b-count"]);
        let e = r.delete_script(&admin(), "b-count").await.unwrap_err();
        assert_eq!(e.code(), "in_use", "a running task's script stays: {e}");
        let token = r.machine_token("n1").await.unwrap().unwrap();
        let ts = r.task_scripts(&token).await.unwrap();
        assert_eq!(ts.script_type, ScriptType::Commissioning);
        assert_eq!(ts.hostname, "n1");
        assert_eq!(ts.scripts.len(), 1);
        assert_eq!(ts.scripts[0].body, "#!/bin/sh\necho b-count\n");

        // Only the task's own scripts may report.
        let e = r
            .report_script_result(&token, result("a-lshw", 0))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.field().as_deref()),
            ("invalid_field", Some("name"))
        );
        clock.advance(1_100 * 1_000);
        let failed = r
            .report_script_result(&token, result("b-count", 3))
            .await
            .unwrap();
        assert_eq!(failed.outcome, ScriptOutcome::Failed);
        clock.advance(1_100 * 1_000);
        assert_eq!(
            r.run_watchdog().await.unwrap(),
            0,
            "an uploaded result counts as a report for the watchdog"
        );

        // An agent that claims success anyway does not get it.
        let m = r.machine_report(&token, finished(true)).await.unwrap();
        assert_eq!(m.status, MachineStatus::FailedCommissioning);
        assert!(
            m.status_message.contains("b-count (exit status 3)"),
            "{}",
            m.status_message
        );
        assert!(!m.commissioned);
        let events = r.machine_events(Some("n1"), 50).await.unwrap();
        assert!(
            events.iter().any(|e| e.kind == "script"
                && e.message == "commissioning script b-count failed: exit status 3"),
            "{events:#?}"
        );
        let results = r.machine_script_results("n1").await.unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].exit_status, Some(3));
        let out = r.machine_script_result("n1", "b-count").await.unwrap();
        assert_eq!(out.stdout, "b-count says hi\n");
        assert_eq!(
            r.machine_script_result("n1", "a-lshw")
                .await
                .unwrap_err()
                .code(),
            "not_found"
        );
        // The task is over: no more uploads, and its scripts may go.
        assert!(r
            .report_script_result(&token, result("b-count", 0))
            .await
            .is_err());
        r.delete_script(&admin(), "b-count").await.unwrap();
    }

    #[tokio::test]
    async fn testing_passes_to_ready_and_fails_to_failed_testing() {
        let (r, clock, _d) = sqlite_region().await;
        manual_machine(&r, "n1", "52:54:00:00:06:01").await;
        let e = r
            .machine_action(&admin(), "n1", "test", ActionOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), "illegal_transition", "{e}");
        r.machine_action(&admin(), "n1", "commission", ActionOptions::default())
            .await
            .unwrap();
        let token = r.machine_token("n1").await.unwrap().unwrap();
        assert!(r.task_scripts(&token).await.unwrap().scripts.is_empty());
        let m = r.machine_report(&token, finished(true)).await.unwrap();
        assert_eq!(
            m.status,
            MachineStatus::Ready,
            "no scripts, nothing to fail"
        );

        let e = r
            .machine_action(&admin(), "n1", "test", ActionOptions::default())
            .await
            .unwrap_err();
        assert!(
            e.field().as_deref() == Some("scripts") && e.to_string().contains("no testing scripts"),
            "{e}"
        );
        for n in ["mem", "disk"] {
            r.add_script(&admin(), ok_script(n, ScriptType::Testing))
                .await
                .unwrap();
        }

        clock.advance(1_000);
        let m = r
            .machine_action(&admin(), "n1", "test", ActionOptions::default())
            .await
            .unwrap();
        assert_eq!(m.status, MachineStatus::Testing);
        let token = r.machine_token("n1").await.unwrap().unwrap();
        assert_eq!(r.instructions(&token).await.unwrap().task, "test");
        let ts = r.task_scripts(&token).await.unwrap();
        let names: Vec<&str> = ts.scripts.iter().map(|s| s.info.name.as_str()).collect();
        assert_eq!(names, ["disk", "mem"]);
        for n in names {
            r.report_script_result(&token, result(n, 0)).await.unwrap();
        }
        let m = r.machine_report(&token, finished(true)).await.unwrap();
        assert_eq!(m.status, MachineStatus::Ready);

        clock.advance(1_000);
        r.machine_action(&admin(), "n1", "test", scripts_of(&["mem"]))
            .await
            .unwrap();
        let token = r.machine_token("n1").await.unwrap().unwrap();
        // A success claimed without a result is not a pass.
        let m = r.machine_report(&token, finished(true)).await.unwrap();
        assert_eq!(m.status, MachineStatus::FailedTesting);
        assert!(
            m.status_message.contains("mem (no result)"),
            "{}",
            m.status_message
        );

        clock.advance(1_000);
        r.machine_action(&admin(), "n1", "test", scripts_of(&["mem"]))
            .await
            .unwrap();
        let token = r.machine_token("n1").await.unwrap().unwrap();
        r.report_script_result(&token, result("mem", 1))
            .await
            .unwrap();
        let m = r
            .machine_report(
                &token,
                StatusReport {
                    event: ReportEvent::Finished,
                    result: Some(ReportResult::Failure),
                    message: "testing script failed: mem (exit status 1)".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(m.status, MachineStatus::FailedTesting);
        let results = r.machine_script_results("n1").await.unwrap();
        let summary: Vec<(&str, Option<i32>)> = results
            .iter()
            .map(|r| (r.name.as_str(), r.exit_status))
            .collect();
        assert_eq!(
            summary,
            [("disk", Some(0)), ("mem", Some(1))],
            "the latest of each"
        );
        let events = r.machine_events(Some("n1"), 50).await.unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.message == "testing script disk passed in 1.2 s"),
            "{events:#?}"
        );
    }
}
