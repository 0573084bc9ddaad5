use std::collections::BTreeMap;

use super::*;
use crate::uniter::{complete, RelationState};

fn ctx(hook: Hook) -> HookContext {
    let mut remote = BTreeMap::new();
    remote.insert(
        "mariadb/0".to_string(),
        Versioned {
            version: 2,
            data: [
                ("host".to_string(), "10.0.0.9".to_string()),
                ("password".to_string(), "s3cret x".to_string()),
            ]
            .into_iter()
            .collect(),
        },
    );
    let view = UnitView {
        unit: "web/0".into(),
        application: "web".into(),
        charm: CharmRef {
            name: "web".into(),
            sha256: "c".into(),
        },
        config: [
            ("port".to_string(), serde_json::json!(8080)),
            ("title".to_string(), serde_json::json!("Hello")),
        ]
        .into_iter()
        .collect(),
        life: Life::Alive,
        leader: false,
        leader_settings: Versioned {
            version: 1,
            data: [("k".to_string(), "v".to_string())].into_iter().collect(),
        },
        relations: vec![RelationView {
            id: 3,
            endpoint: "db".into(),
            interface: "mysql".into(),
            remote_application: "mariadb".into(),
            life: Life::Alive,
            remote_units: remote,
            remote_app: Versioned {
                version: 1,
                data: [("database".to_string(), "web".to_string())]
                    .into_iter()
                    .collect(),
            },
            local_unit: Default::default(),
            local_app: Default::default(),
        }],
        resolve: Default::default(),
        private_address: "10.0.0.5".into(),
        public_address: "10.0.0.5".into(),
        actions: vec![],
    };
    let mut state = UniterState::default();
    state.relations.insert(
        3,
        RelationState {
            endpoint: "db".into(),
            remote_application: "mariadb".into(),
            ..Default::default()
        },
    );
    HookContext::new(
        view,
        state,
        hook,
        WorkloadStatus {
            state: WorkloadState::Unknown,
            message: String::new(),
        },
        Default::default(),
    )
}

fn joined() -> Hook {
    Hook::RelationJoined {
        relation: 3,
        endpoint: "db".into(),
        remote_application: "mariadb".into(),
        remote_unit: "mariadb/0".into(),
    }
}

fn call(c: &mut HookContext, tool: &str, args: &[&str]) -> ToolOutput {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run(c, tool, &args, &|p| {
        (p == "templates/app.conf").then(|| {
            "db={{ relations.db[0].units['mariadb/0'].host }} port={{ config.port }}\n".to_string()
        })
    })
}

#[test]
fn relation_get_reads_the_remote_unit_of_the_hook() {
    let mut c = ctx(joined());
    assert_eq!(call(&mut c, "relation-get", &["host"]).stdout, "10.0.0.9\n");
    assert_eq!(
        call(&mut c, "relation-get", &[]).stdout,
        "host: 10.0.0.9\npassword: \"s3cret x\"\n"
    );
    assert_eq!(
        call(
            &mut c,
            "relation-get",
            &["-r", "db:3", "--format=json", "-", "mariadb/0"]
        )
        .stdout,
        "{\"host\":\"10.0.0.9\",\"password\":\"s3cret x\"}\n"
    );
    assert_eq!(
        call(&mut c, "relation-get", &["--app", "database"]).stdout,
        "web\n"
    );
}

#[test]
fn relation_set_is_buffered_and_visible_to_the_hook_itself() {
    let mut c = ctx(joined());
    assert_eq!(
        call(&mut c, "relation-set", &["url=http://x", "empty="]).code,
        0
    );
    assert_eq!(
        call(&mut c, "relation-get", &["url", "web/0"]).stdout,
        "http://x\n"
    );
    assert_eq!(c.unit_settings[&3]["url"].as_deref(), Some("http://x"));
    assert_eq!(c.unit_settings[&3]["empty"], None);
    let out = call(&mut c, "relation-set", &["--app", "a=b"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("not the leader"), "{}", out.stderr);
}

#[test]
fn relation_list_includes_the_joining_unit() {
    let mut c = ctx(joined());
    assert_eq!(call(&mut c, "relation-list", &[]).stdout, "mariadb/0\n");
    assert_eq!(call(&mut c, "relation-ids", &["db"]).stdout, "db:3\n");
    let mut c = ctx(Hook::Start);
    assert_eq!(call(&mut c, "relation-list", &["-r", "3"]).stdout, "");
    let out = call(&mut c, "relation-list", &[]);
    assert!(out.stderr.contains("not a relation hook"));
}

#[test]
fn config_status_ports_and_logs() {
    let mut c = ctx(Hook::Start);
    assert_eq!(call(&mut c, "config-get", &["port"]).stdout, "8080\n");
    assert_eq!(call(&mut c, "config-get", &["title"]).stdout, "Hello\n");
    assert_eq!(call(&mut c, "config-get", &["missing"]).stdout, "");
    assert_eq!(
        call(&mut c, "status-set", &["active", "ready", "now"]).code,
        0
    );
    assert_eq!(
        c.status,
        WorkloadStatus {
            state: WorkloadState::Active,
            message: "ready now".into()
        }
    );
    assert!(call(&mut c, "status-set", &["great"])
        .stderr
        .contains("invalid status"));
    call(&mut c, "open-port", &["8080/tcp"]);
    call(&mut c, "open-port", &["53/udp"]);
    assert_eq!(
        call(&mut c, "opened-ports", &[]).stdout,
        "53/udp\n8080/tcp\n"
    );
    call(&mut c, "close-port", &["53/udp"]);
    assert!(c.ports_changed);
    assert_eq!(call(&mut c, "open-port", &["0"]).code, 2);
    call(&mut c, "juju-log", &["-l", "WARNING", "disk", "low"]);
    assert_eq!(
        c.logs,
        [LogLine {
            level: Level::Warning,
            message: "disk low".into()
        }]
    );
    assert_eq!(call(&mut c, "is-leader", &[]).stdout, "False\n");
    assert_eq!(call(&mut c, "leader-get", &["k"]).stdout, "v\n");
    assert!(call(&mut c, "leader-set", &["k=w"])
        .stderr
        .contains("not the leader"));
    assert_eq!(
        call(&mut c, "unit-get", &["private-address"]).stdout,
        "10.0.0.5\n"
    );
}

#[test]
fn render_template_uses_config_and_relation_data() {
    let mut c = ctx(Hook::RelationChanged {
        relation: 3,
        endpoint: "db".into(),
        remote_application: "mariadb".into(),
        remote_unit: Some("mariadb/0".into()),
        version: 2,
    });
    c.state = complete(&c.state, &joined(), 0);
    let out = call(&mut c, "render-template", &["app.conf", "/etc/app.conf"]);
    assert_eq!(
        out.write,
        Some((
            "/etc/app.conf".to_string(),
            "db=10.0.0.9 port=8080\n".to_string()
        )),
        "{out:?}"
    );
    let bad = render("t", "{{ nope }}", &c.template_context()).unwrap_err();
    assert!(bad.to_string().starts_with("template t: "), "{bad}");
    assert!(call(&mut c, "render-template", &["missing.conf"])
        .stderr
        .contains("no template"));
}

#[test]
fn hook_environment_names_the_relation_and_remote_unit() {
    let c = ctx(joined());
    let env: BTreeMap<_, _> = c.env().into_iter().collect();
    assert_eq!(env["JUJU_RELATION_ID"], "db:3");
    assert_eq!(env["JUJU_REMOTE_UNIT"], "mariadb/0");
    assert_eq!(env["JUJU_HOOK_NAME"], "db-relation-joined");
}

proptest::proptest! {
    /// Whatever a hook passes to whatever tool, the agent answers (an error
    /// at worst) and never panics.
    #[test]
    fn any_tool_call_is_answered(
        tool in proptest::sample::select(TOOLS.to_vec()),
        args in proptest::collection::vec("(-{0,2}[a-z=:/0-9 ]{0,8}|db:3|-r|--app|--format=json|-)", 0..6),
    ) {
        let mut c = ctx(joined());
        let out = call(&mut c, tool, &args.iter().map(String::as_str).collect::<Vec<_>>());
        proptest::prop_assert!(out.code == 0 || !out.stderr.is_empty(), "{tool} {args:?}: {out:?}");
    }
}
