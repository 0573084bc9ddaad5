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

/// A unit of `charm` with its config defaults (and `overrides`), and the
/// variables its hook passes to render-template.
fn openstack_context(
    charm: &str,
    overrides: &[(&str, serde_json::Value)],
    vars: serde_json::Value,
) -> serde_json::Value {
    let c = Charm::load_dir(charms_dir().join(charm)).unwrap();
    let mut config: Vec<(&str, serde_json::Value)> = c
        .config
        .options
        .iter()
        .filter_map(|(k, o)| {
            o.default.as_ref().map(|d| {
                let v = match d {
                    kumo_charm::Value::String(s) => serde_json::json!(s),
                    kumo_charm::Value::Int(i) => serde_json::json!(i),
                    kumo_charm::Value::Float(x) => serde_json::json!(x),
                    kumo_charm::Value::Boolean(b) => serde_json::json!(b),
                };
                (k.as_str(), v)
            })
        })
        .collect();
    config.extend(overrides.iter().cloned());
    let mut ctx = context(charm, &config, &[]);
    ctx["vars"] = vars;
    ctx
}

/// The variables of a `[keystone_authtoken]` section (lib.sh's
/// authtoken_vars), with placeholders for what the deployment generates.
fn authtoken(extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "auth_url": "http://10.248.0.103:5000/v3",
        "region": "RegionOne",
        "user": "SERVICE-USER",
        "password": "SERVICE-PASSWORD",
        "db": "mysql+pymysql://APP:DB-PASSWORD@10.248.0.104/APP",
        "amqp": "rabbit://APP:AMQP-PASSWORD@10.248.0.108:5672/",
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

#[test]
fn openstack_config_files() {
    let cases: Vec<(&str, &str, serde_json::Value)> = vec![
        (
            "keystone",
            "keystone.conf",
            serde_json::json!({"db": "mysql+pymysql://keystone:DB-PASSWORD@10.248.0.104/keystone",
                "memcache": "10.248.0.101:11211"}),
        ),
        (
            "glance",
            "glance-api.conf",
            authtoken(serde_json::json!({})),
        ),
        (
            "placement",
            "placement.conf",
            authtoken(serde_json::json!({})),
        ),
        (
            "nova-cloud-controller",
            "nova.conf",
            authtoken(serde_json::json!({
                "db_api": "mysql+pymysql://nova_cloud_controller:DB-PASSWORD@10.248.0.104/nova_api",
                "glance": "http://10.248.0.102:9292",
                "metadata_secret": "METADATA-SECRET"})),
        ),
        (
            "nova-compute",
            "nova.conf",
            authtoken(serde_json::json!({
                "glance": "http://10.248.0.102:9292",
                "novnc": "http://10.248.0.105:6080/vnc_auto.html"})),
        ),
        (
            "neutron-api",
            "neutron.conf",
            authtoken(serde_json::json!({})),
        ),
        ("neutron-api", "ml2_conf.ini", serde_json::json!({})),
        ("neutron-gateway", "dhcp_agent.ini", serde_json::json!({})),
        (
            "neutron-gateway",
            "dnsmasq-neutron.conf",
            serde_json::json!({}),
        ),
        (
            "neutron-gateway",
            "metadata_agent.ini",
            serde_json::json!({"nova_host": "10.248.0.105", "secret": "METADATA-SECRET"}),
        ),
        (
            "neutron-linuxbridge",
            "linuxbridge_agent.ini",
            authtoken(serde_json::json!({"l2pop": "true"})),
        ),
        (
            "cinder",
            "cinder.conf",
            authtoken(serde_json::json!({"glance": "http://10.248.0.102:9292"})),
        ),
        (
            "openstack-dashboard",
            "_90_kumo.py",
            serde_json::json!({"auth_url": "http://10.248.0.103:5000/v3",
                "keystone_host": "10.248.0.103", "memcache": "10.248.0.101:11211",
                "secret_key": "SECRET-KEY"}),
        ),
    ];
    for (charm, template, vars) in cases {
        let ctx = openstack_context(charm, &[], vars);
        let text = render(charm, template, &ctx);
        insta::assert_snapshot!(format!("{charm}__{template}"), text);
    }
}

#[test]
fn the_openstack_bundle_validates_against_the_charms() {
    let root = charms_dir().join("../bundles/openstack.yaml");
    let text = std::fs::read_to_string(root).unwrap();
    let bundle = kumo_charm::Bundle::parse("openstack.yaml", &text).unwrap();
    let charms: BTreeMap<String, Charm> = bundle
        .applications
        .values()
        .map(|a| {
            (
                a.charm.clone(),
                Charm::load_dir(charms_dir().join(&a.charm)).unwrap(),
            )
        })
        .collect();
    kumo_charm::validate(&bundle, &charms).unwrap();
}
