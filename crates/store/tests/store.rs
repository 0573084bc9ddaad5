//! The store's suite, run against both engines: every test below is
//! instantiated once for SQLite and once for PostgreSQL.

use kumo_model::api::{Group, Tag};
use kumo_model::{EraseMode, Machine, MachineStatus, Name, PowerState, SystemId};
use kumo_store::{
    GroupKind, MachineQuery, MachineWrite, NewAudit, NewEvent, NewPowerJob, Store, StoreError,
    UserRecord,
};

fn machine(id: [u8; 6], hostname: &str, mac: &str) -> Machine {
    Machine {
        system_id: SystemId::from_random(id),
        hostname: hostname.parse().unwrap(),
        arch: "amd64".into(),
        status: MachineStatus::New,
        previous_status: None,
        status_message: String::new(),
        owner: None,
        agent_name: None,
        commissioned: false,
        erase: EraseMode::None,
        macs: vec![mac.parse().unwrap()],
        power_type: "manual".into(),
        power_parameters: Default::default(),
        power_state: PowerState::Unknown,
        zone: Name::parse("zone", "default").unwrap(),
        pool: Name::parse("pool", "default").unwrap(),
        tags: vec![],
        cpu_count: 2,
        memory_mib: 2048,
        storage_bytes: 0,
        inventory: None,
        deadline: None,
        deployment: None,
        script_task: None,
        version: 1,
        created_at: 1000,
        updated_at: 1000,
    }
}

async fn machine_round_trip_and_filters(s: Store) {
    let a = machine([1; 6], "node-a", "52:54:00:00:00:01");
    let mut b = machine([2; 6], "node-b", "52:54:00:00:00:02");
    b.status = MachineStatus::Ready;
    b.zone = Name::parse("zone", "rack2").unwrap();
    b.tags = vec!["compute".into()];
    s.insert_machine(&a, "", None).await.unwrap();
    s.insert_machine(&b, "sealed", None).await.unwrap();

    assert_eq!(s.get_machine(a.system_id.as_str()).await.unwrap(), a);
    assert_eq!(
        s.find_machine("node-b").await.unwrap().system_id,
        b.system_id
    );
    assert_eq!(
        s.find_machine("NODE-B").await.unwrap().system_id,
        b.system_id
    );
    assert_eq!(
        s.find_machine_by_mac("52:54:00:00:00:02")
            .await
            .unwrap()
            .unwrap()
            .hostname
            .as_str(),
        "node-b"
    );
    assert!(s
        .find_machine_by_mac("52:54:00:00:00:09")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        s.sealed_secrets(b.system_id.as_str()).await.unwrap(),
        "sealed"
    );

    let all = s.list_machines(&MachineQuery::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.hostname.as_str()).collect::<Vec<_>>(),
        ["node-a", "node-b"]
    );
    assert_eq!(all[1].tags, ["compute"]);
    let ready = s
        .list_machines(&MachineQuery {
            statuses: vec![MachineStatus::Ready],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ready.len(), 1);
    let zoned = s
        .list_machines(&MachineQuery {
            zone: Some("rack2".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(zoned[0].hostname.as_str(), "node-b");
    let tagged = s
        .list_machines(&MachineQuery {
            tags: vec!["compute".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(tagged.len(), 1);
    let none = s
        .list_machines(&MachineQuery {
            tags: vec!["compute".into(), "gpu".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(s.count_machines().await.unwrap(), 2);
}

async fn duplicates_are_rejected_naming_what(s: Store) {
    s.insert_machine(&machine([1; 6], "node-a", "52:54:00:00:00:01"), "", None)
        .await
        .unwrap();
    let e = s
        .insert_machine(&machine([2; 6], "node-a", "52:54:00:00:00:02"), "", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Duplicate {
                what: "hostname",
                ..
            }
        ),
        "{e}"
    );
    let e = s
        .insert_machine(&machine([3; 6], "node-c", "52:54:00:00:00:01"), "", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Duplicate {
                what: "mac_address",
                ..
            }
        ),
        "{e}"
    );
    // The failed insert left nothing behind.
    assert!(s.find_machine("node-c").await.is_err());
    assert_eq!(s.count_machines().await.unwrap(), 1);
}

async fn concurrent_writers_conflict_instead_of_losing_a_write(s: Store) {
    let m = machine([1; 6], "node-a", "52:54:00:00:00:01");
    s.insert_machine(&m, "", None).await.unwrap();
    let read1 = s.get_machine(m.system_id.as_str()).await.unwrap();
    let read2 = read1.clone();
    let mut w1 = read1.clone();
    w1.status_message = "first".into();
    let stored = s
        .update_machine(MachineWrite::new(&w1, 2000))
        .await
        .unwrap();
    assert_eq!(stored.version, 2);
    let mut w2 = read2;
    w2.status_message = "second".into();
    let e = s
        .update_machine(MachineWrite::new(&w2, 2001))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert_eq!(
        s.get_machine(m.system_id.as_str())
            .await
            .unwrap()
            .status_message,
        "first"
    );
}

async fn a_write_carries_events_jobs_audit_and_tokens(s: Store) {
    let m = machine([1; 6], "node-a", "52:54:00:00:00:01");
    s.insert_machine(&m, "", None).await.unwrap();
    let mut next = s.get_machine(m.system_id.as_str()).await.unwrap();
    next.status = MachineStatus::Commissioning;
    next.deadline = Some(5000);
    let mut w = MachineWrite::new(&next, 2000);
    w.events.push(NewEvent {
        kind: "status",
        message: "new -> commissioning".into(),
    });
    w.jobs.push(NewPowerJob {
        op: "cycle".into(),
        complete_status: None,
    });
    w.audit = Some(NewAudit {
        username: "admin".into(),
        action: "commission".into(),
        object: "machine/node-a".into(),
        detail: String::new(),
    });
    w.new_token_hash = Some("hash1".into());
    s.update_machine(w).await.unwrap();

    let jobs = s.power_jobs().await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].op.as_str(), jobs[0].system_id.as_str()),
        ("cycle", m.system_id.as_str())
    );
    s.delete_power_job(jobs[0].id).await.unwrap();
    assert!(s.power_jobs().await.unwrap().is_empty());

    let events = s
        .machine_events(Some(m.system_id.as_str()), 10)
        .await
        .unwrap();
    assert_eq!(events.last().unwrap().message, "new -> commissioning");
    assert_eq!(s.audit_events(10).await.unwrap()[0].action, "commission");
    assert_eq!(
        s.machine_by_token_hash("hash1")
            .await
            .unwrap()
            .unwrap()
            .system_id,
        m.system_id
    );

    assert!(s.machines_past_deadline(4999).await.unwrap().is_empty());
    assert_eq!(s.machines_past_deadline(5001).await.unwrap().len(), 1);

    let mut revoke = s.get_machine(m.system_id.as_str()).await.unwrap();
    revoke.deadline = None;
    let mut w = MachineWrite::new(&revoke, 3000);
    w.revoke_tokens = true;
    s.update_machine(w).await.unwrap();
    assert!(s.machine_by_token_hash("hash1").await.unwrap().is_none());
}

async fn manual_and_automatic_tags(s: Store) {
    let a = machine([1; 6], "node-a", "52:54:00:00:00:01");
    let b = machine([2; 6], "node-b", "52:54:00:00:00:02");
    s.insert_machine(&a, "", None).await.unwrap();
    s.insert_machine(&b, "", None).await.unwrap();
    s.create_tag(&Tag {
        name: "rack1".into(),
        definition: String::new(),
        comment: String::new(),
    })
    .await
    .unwrap();
    s.create_tag(&Tag {
        name: "big".into(),
        definition: "cpu_count >= 8".into(),
        comment: String::new(),
    })
    .await
    .unwrap();
    assert!(matches!(
        s.create_tag(&Tag {
            name: "big".into(),
            definition: String::new(),
            comment: String::new()
        })
        .await,
        Err(StoreError::Duplicate { .. })
    ));
    s.tag_machines(
        "rack1",
        &[a.system_id.to_string(), b.system_id.to_string()],
        &[],
    )
    .await
    .unwrap();
    s.set_auto_tag_members("big", &[b.system_id.to_string()])
        .await
        .unwrap();
    assert_eq!(
        s.get_machine(b.system_id.as_str()).await.unwrap().tags,
        ["big", "rack1"]
    );
    s.tag_machines("rack1", &[], &[b.system_id.to_string()])
        .await
        .unwrap();
    s.set_machine_auto_tags(b.system_id.as_str(), &[])
        .await
        .unwrap();
    assert!(s
        .get_machine(b.system_id.as_str())
        .await
        .unwrap()
        .tags
        .is_empty());
    assert!(matches!(
        s.tag_machines("nope", &[], &[]).await,
        Err(StoreError::NotFound { what: "tag", .. })
    ));
    s.delete_tag("rack1").await.unwrap();
    assert!(s
        .get_machine(a.system_id.as_str())
        .await
        .unwrap()
        .tags
        .is_empty());
}

async fn groups_in_use_are_not_deleted(s: Store) {
    s.ensure_group(GroupKind::Zone, "default", "")
        .await
        .unwrap();
    s.ensure_group(GroupKind::Zone, "default", "")
        .await
        .unwrap();
    s.create_group(
        GroupKind::Zone,
        &Group {
            name: "rack2".into(),
            description: "second rack".into(),
        },
    )
    .await
    .unwrap();
    let mut m = machine([1; 6], "node-a", "52:54:00:00:00:01");
    m.zone = Name::parse("zone", "rack2").unwrap();
    s.insert_machine(&m, "", None).await.unwrap();
    let e = s.delete_group(GroupKind::Zone, "rack2").await.unwrap_err();
    assert!(matches!(e, StoreError::InUse { count: 1, .. }), "{e}");
    assert_eq!(s.list_groups(GroupKind::Zone).await.unwrap().len(), 2);
    s.create_group(
        GroupKind::Pool,
        &Group {
            name: "spare".into(),
            description: String::new(),
        },
    )
    .await
    .unwrap();
    s.delete_group(GroupKind::Pool, "spare").await.unwrap();
    assert!(s.list_groups(GroupKind::Pool).await.unwrap().is_empty());
}

async fn users_and_api_keys(s: Store) {
    s.create_user(&UserRecord {
        username: "admin".into(),
        password_hash: "h".into(),
        admin: true,
    })
    .await
    .unwrap();
    assert!(matches!(
        s.create_user(&UserRecord {
            username: "admin".into(),
            password_hash: "h".into(),
            admin: false
        })
        .await,
        Err(StoreError::Duplicate { .. })
    ));
    s.add_api_key("k1", "admin", "secrethash", 1).await.unwrap();
    let (u, h) = s.api_key("k1").await.unwrap().unwrap();
    assert!(u.admin);
    assert_eq!(h, "secrethash");
    assert!(s.api_key("k2").await.unwrap().is_none());
    assert_eq!(s.list_users().await.unwrap().len(), 1);
}

async fn scripts_and_their_results(s: Store) {
    use kumo_model::scripts::{
        NewScript, Script, ScriptOutcome, ScriptResultOutput, ScriptResultReport, ScriptTask,
        ScriptType,
    };
    let script = |name: &str, t: ScriptType| {
        Script::new(
            NewScript {
                name: name.into(),
                script_type: t,
                description: "says hello".into(),
                timeout_secs: Some(30),
                body: format!("#!/bin/sh\necho {name} 'ünïcode'\n"),
            },
            5,
        )
        .unwrap()
    };
    let a = script("a-test", ScriptType::Testing);
    s.add_script(&a).await.unwrap();
    s.add_script(&script("lshw", ScriptType::Commissioning))
        .await
        .unwrap();
    assert!(matches!(
        s.add_script(&a).await,
        Err(StoreError::Duplicate { what: "script", .. })
    ));
    assert_eq!(s.get_script("a-test").await.unwrap(), a);
    let listed = s.list_scripts().await.unwrap();
    assert_eq!(
        listed.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["a-test", "lshw"]
    );
    assert_eq!(listed[0], a.info);

    let m = machine([1; 6], "node-a", "52:54:00:00:00:01");
    s.insert_machine(&m, "", None).await.unwrap();
    let task = ScriptTask {
        script_type: ScriptType::Testing,
        scripts: vec!["a-test".into()],
        started_at: 50,
    };
    let run = |outcome, exit, stdout: &str| {
        ScriptResultOutput::from_report(
            ScriptResultReport {
                name: "a-test".into(),
                outcome,
                exit_status: exit,
                stdout: stdout.into(),
                stdout_truncated: false,
                stderr: "warn\n".into(),
                stderr_truncated: false,
                started_at: 100,
                ended_at: 1300,
            },
            &task,
            &a.info.sha256,
            2000,
        )
        .unwrap()
    };
    // A result rides on a machine write, with its event.
    let mut w = MachineWrite::new(&m, 2000);
    w.script_result = Some(run(ScriptOutcome::Failed, Some(3), "first"));
    w.events.push(NewEvent {
        kind: "script",
        message: "testing script a-test failed: exit status 3".into(),
    });
    let m = s.update_machine(w).await.unwrap();
    let mut w = MachineWrite::new(&m, 3000);
    let latest = run(ScriptOutcome::Passed, Some(0), "second ünïcode\n");
    w.script_result = Some(latest.clone());
    s.update_machine(w).await.unwrap();
    let results = s.script_results(m.system_id.as_str()).await.unwrap();
    assert_eq!(results, vec![latest.result.clone()], "the latest run only");
    assert_eq!(
        s.script_result(m.system_id.as_str(), "a-test")
            .await
            .unwrap(),
        latest
    );
    assert!(matches!(
        s.script_result(m.system_id.as_str(), "lshw").await,
        Err(StoreError::NotFound { .. })
    ));
    let events = s
        .machine_events(Some(m.system_id.as_str()), 10)
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.kind == "script"), "{events:?}");

    s.delete_script("a-test").await.unwrap();
    assert!(matches!(
        s.delete_script("a-test").await,
        Err(StoreError::NotFound { what: "script", .. })
    ));
    // Results outlive their script, and go with their machine.
    assert_eq!(
        s.script_results(m.system_id.as_str()).await.unwrap().len(),
        1
    );
    s.delete_machine(m.system_id.as_str(), 4000, None)
        .await
        .unwrap();
    assert!(s
        .script_results(m.system_id.as_str())
        .await
        .unwrap()
        .is_empty());
}

async fn model_documents_and_logs(s: Store) {
    use kumo_store::ModelWrite;
    let mut w = ModelWrite::default();
    w.docs
        .push(("model".into(), String::new(), Some("{\"a\":1}".into())));
    w.docs
        .push(("unit".into(), "web/0".into(), Some("{}".into())));
    w.logs
        .push(("unit-web-0".into(), 5, "INFO".into(), "installed".into()));
    s.write_model("default", &w).await.unwrap();
    let mut w = ModelWrite::default();
    w.docs
        .push(("model".into(), String::new(), Some("{\"a\":2}".into())));
    w.docs.push(("unit".into(), "web/0".into(), None));
    w.logs
        .push(("unit-web-0".into(), 6, "ERROR".into(), "hook failed".into()));
    s.write_model("default", &w).await.unwrap();
    s.write_model(
        "other",
        &ModelWrite {
            docs: vec![("model".into(), String::new(), Some("{}".into()))],
            logs: vec![],
        },
    )
    .await
    .unwrap();
    let docs = s.model_docs().await.unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].body, "{\"a\":2}");
    let logs = s.model_logs("default", 0, 10).await.unwrap();
    assert_eq!(
        logs.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(),
        ["installed", "hook failed"]
    );
    assert_eq!(
        s.model_logs("default", logs[0].id, 10).await.unwrap().len(),
        1
    );
    assert_eq!(s.last_model_log("default").await.unwrap(), logs[1].id);
    assert_eq!(s.last_model_log("other").await.unwrap(), 0);
    s.delete_model("default").await.unwrap();
    assert_eq!(s.model_docs().await.unwrap().len(), 1);
    assert!(s.model_logs("default", 0, 10).await.unwrap().is_empty());
}

macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $name() { let (s, _dir) = kumo_store::testing::sqlite().await; super::$name(s).await } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $name() { let (s, _url) = kumo_store::testing::postgres().await; super::$name(s).await } )*
        }
    };
}

both_engines!(
    machine_round_trip_and_filters,
    duplicates_are_rejected_naming_what,
    concurrent_writers_conflict_instead_of_losing_a_write,
    a_write_carries_events_jobs_audit_and_tokens,
    manual_and_automatic_tags,
    groups_in_use_are_not_deleted,
    users_and_api_keys,
    scripts_and_their_results,
    model_documents_and_logs,
);

#[tokio::test]
async fn reopening_a_database_keeps_data_and_does_not_migrate_twice() {
    let (s, dir) = kumo_store::testing::sqlite().await;
    s.insert_machine(&machine([1; 6], "node-a", "52:54:00:00:00:01"), "", None)
        .await
        .unwrap();
    s.close().await;
    let url = format!("sqlite:{}", dir.path().join("kumo.db").display());
    let s = Store::open(&url).await.unwrap();
    assert_eq!(s.count_machines().await.unwrap(), 1);

    let (p, url) = kumo_store::testing::postgres().await;
    p.insert_machine(&machine([1; 6], "node-a", "52:54:00:00:00:01"), "", None)
        .await
        .unwrap();
    p.close().await;
    let p = Store::open(&url).await.unwrap();
    assert_eq!(p.count_machines().await.unwrap(), 1);
}

#[tokio::test]
async fn unknown_url_scheme_is_rejected() {
    let e = Store::open("mysql://x").await.unwrap_err();
    assert!(e.to_string().contains("mysql://x"), "{e}");
}

mod network {
    use super::machine;
    use kumo_store::{StaticIp, Store, StoreError};
    use serde_json::json;

    async fn objects_and_static_ips(s: Store) {
        s.put_network_object(
            "subnet",
            "10.0.0.0/24",
            &json!({"cidr": "10.0.0.0/24", "vid": 0}),
            true,
        )
        .await
        .unwrap();
        let e = s
            .put_network_object("subnet", "10.0.0.0/24", &json!({}), true)
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Duplicate { what: "subnet", .. }),
            "{e}"
        );
        s.put_network_object(
            "subnet",
            "10.0.0.0/24",
            &json!({"cidr": "10.0.0.0/24", "vid": 5}),
            false,
        )
        .await
        .unwrap();
        assert_eq!(
            s.get_network_object("subnet", "10.0.0.0/24").await.unwrap()["vid"],
            5
        );
        assert!(matches!(
            s.put_network_object("subnet", "10.9.0.0/24", &json!({}), false)
                .await,
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(s.list_network_objects("subnet").await.unwrap().len(), 1);
        assert!(s.list_network_objects("fabric").await.unwrap().is_empty());

        let m = machine([1; 6], "node-a", "52:54:00:00:00:01");
        s.insert_machine(&m, "", None).await.unwrap();
        let ip = StaticIp {
            ip: "10.0.0.5".into(),
            subnet: "10.0.0.0/24".into(),
            system_id: m.system_id.to_string(),
            mac: "52:54:00:00:00:01".into(),
        };
        s.add_static_ip(&ip, 1).await.unwrap();
        let e = s.add_static_ip(&ip, 2).await.unwrap_err();
        assert!(matches!(e, StoreError::Duplicate { what: "ip", .. }), "{e}");
        assert_eq!(
            s.static_ips(Some("10.0.0.0/24")).await.unwrap(),
            vec![ip.clone()]
        );
        assert_eq!(
            s.machine_static_ips(m.system_id.as_str())
                .await
                .unwrap()
                .len(),
            1
        );
        // Deleting the machine frees its addresses.
        s.delete_machine(m.system_id.as_str(), 3, None)
            .await
            .unwrap();
        assert!(s.static_ips(None).await.unwrap().is_empty());
        s.delete_network_object("subnet", "10.0.0.0/24")
            .await
            .unwrap();
        assert!(matches!(
            s.get_network_object("subnet", "10.0.0.0/24").await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn sqlite_objects_and_static_ips() {
        let (s, _dir) = kumo_store::testing::sqlite().await;
        objects_and_static_ips(s).await;
    }

    #[tokio::test]
    async fn postgres_objects_and_static_ips() {
        let (s, _url) = kumo_store::testing::postgres().await;
        objects_and_static_ips(s).await;
    }
}
