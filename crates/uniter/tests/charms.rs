//! The repository's charms (`charms/`): each is a valid charm, and its
//! templates render, for a unit with and without its relations, into the
//! files an operator can read beside the install guide (insta snapshots).

use std::collections::BTreeMap;
use std::path::PathBuf;

use kumo_charm::Charm;
use kumo_uniter::tools::HookContext;
use kumo_uniter::*;

fn charms_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../charms")
}

fn context(
    app: &str,
    config: &[(&str, serde_json::Value)],
    db_units: &[(&str, &[(&str, &str)])],
) -> serde_json::Value {
    let mut relations = vec![];
    if !db_units.is_empty() {
        let remote_units: BTreeMap<String, Versioned> = db_units
            .iter()
            .map(|(u, kv)| {
                (
                    u.to_string(),
                    Versioned {
                        version: 1,
                        data: kv
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    },
                )
            })
            .collect();
        relations.push(RelationView {
            id: 1,
            endpoint: "db".into(),
            interface: "mysql".into(),
            remote_application: "mariadb".into(),
            life: Life::Alive,
            remote_units,
            remote_app: Versioned::default(),
            local_unit: Default::default(),
            local_app: Default::default(),
        });
    }
    let view = UnitView {
        unit: format!("{app}/0"),
        application: app.into(),
        charm: CharmRef {
            name: app.into(),
            sha256: "0".into(),
        },
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        life: Life::Alive,
        leader: true,
        leader_settings: Versioned::default(),
        relations,
        resolve: Resolve::default(),
        private_address: "10.248.0.100".into(),
        public_address: "10.248.0.100".into(),
        actions: vec![],
    };
    let mut state = UniterState::default();
    for (u, _) in db_units {
        state
            .relations
            .entry(1)
            .or_default()
            .units
            .insert(u.to_string(), Some(1));
    }
    HookContext::new(
        view,
        state,
        Hook::Start,
        WorkloadStatus {
            state: WorkloadState::Unknown,
            message: String::new(),
        },
        Default::default(),
    )
    .template_context()
}

fn render(charm: &str, template: &str, ctx: &serde_json::Value) -> String {
    // As render-template does: `vars` holds the KEY=VALUE arguments.
    let mut ctx = ctx.clone();
    if ctx.get("vars").is_none() {
        ctx["vars"] = serde_json::json!({});
    }
    let ctx = &ctx;
    let c =
        Charm::load_dir(charms_dir().join(charm)).unwrap_or_else(|e| panic!("charm {charm}: {e}"));
    assert!(
        c.templates.contains(template),
        "{charm} has no template {template}"
    );
    let text = std::fs::read_to_string(c.dir.join("templates").join(template)).unwrap();
    tools::render(template, &text, ctx).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn mariadb_config() {
    let ctx = context(
        "mariadb",
        &[
            ("max-connections", serde_json::json!(100)),
            ("bind-address", serde_json::json!("0.0.0.0")),
        ],
        &[],
    );
    insta::assert_snapshot!(render("mariadb", "99-kumo.cnf", &ctx));
}

#[test]
fn webapp_config_with_a_database() {
    let ctx = context(
        "webapp",
        &[
            ("port", serde_json::json!(8080)),
            ("greeting", serde_json::json!("hi")),
        ],
        &[(
            "mariadb/0",
            &[
                ("host", "10.248.0.101"),
                ("port", "3306"),
                ("database", "webapp"),
                ("user", "webapp"),
                ("secret", "mariadb/password-webapp"),
            ],
        )],
    );
    let mut ctx = ctx;
    ctx["vars"] = serde_json::json!({"password": "p\"w"});
    insta::assert_snapshot!(render("webapp", "db.json", &ctx));
}

#[test]
fn webapp_config_without_a_database() {
    let ctx = context(
        "webapp",
        &[
            ("port", serde_json::json!(8080)),
            ("greeting", serde_json::json!("hi")),
        ],
        &[],
    );
    let text = render("webapp", "db.json", &ctx);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["host"], "");
    // Joined but no credentials yet: still no host.
    let ctx = context(
        "webapp",
        &[("port", serde_json::json!(8080))],
        &[("mariadb/0", &[])],
    );
    let v: serde_json::Value = serde_json::from_str(&render("webapp", "db.json", &ctx)).unwrap();
    assert_eq!(v["host"], "");
    assert_eq!(v["port"], 8080);
}

#[test]
fn the_demo_bundle_validates_against_the_charms() {
    let text = std::fs::read_to_string(charms_dir().join("bundle.yaml")).unwrap();
    let bundle = kumo_charm::Bundle::parse("bundle.yaml", &text).unwrap();
    let charms: BTreeMap<String, Charm> = ["mariadb", "webapp"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                Charm::load_dir(charms_dir().join(n)).unwrap(),
            )
        })
        .collect();
    kumo_charm::validate(&bundle, &charms).unwrap();
}
