//! The example bundle (MariaDB and WordPress) end to end through the pure
//! core: charm directories, bundle, plan, apply, re-plan, diff, export.

use std::collections::BTreeMap;
use std::path::Path;

use kumo_charm::{apply, diff, export, plan, Bundle, Charm, ModelState};

fn data(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(p)
}

fn charms() -> BTreeMap<String, Charm> {
    ["mariadb", "wordpress"]
        .into_iter()
        .map(|n| {
            (
                n.to_owned(),
                Charm::load_dir(data(&format!("charms/{n}"))).unwrap(),
            )
        })
        .collect()
}

fn bundle() -> Bundle {
    let text = std::fs::read_to_string(data("bundle.yaml")).unwrap();
    Bundle::parse("bundle.yaml", &text).unwrap()
}

#[test]
fn charm_directories_load() {
    let c = charms();
    assert_eq!(c["mariadb"].hooks.len(), 4);
    assert!(c["mariadb"].templates.contains("my.cnf"));
    assert_eq!(c["wordpress"].config.options.len(), 2);
}

#[test]
fn deploy_plans_applies_and_is_idempotent() {
    let charms = charms();
    let bundle = bundle();
    let mut model = ModelState::default();
    let steps = plan(&model, &bundle, &charms).unwrap();
    let shown: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
    insta::assert_snapshot!(shown.join("\n"));
    for s in &steps {
        apply(&mut model, s).unwrap();
    }
    assert_eq!(plan(&model, &bundle, &charms).unwrap(), []);
    assert_eq!(diff(&model, &bundle, &charms).unwrap(), []);

    let exported = export(&model);
    insta::assert_snapshot!(exported.render());
    let again = Bundle::parse("export.yaml", &exported.render()).unwrap();
    assert_eq!(again, exported);
}

#[test]
fn diff_shows_both_directions_and_plan_only_adds() {
    let charms = charms();
    let bundle = bundle();
    let mut model = ModelState::default();
    for s in plan(&model, &bundle, &charms).unwrap() {
        apply(&mut model, &s).unwrap();
    }
    let text = std::fs::read_to_string(data("bundle.yaml"))
        .unwrap()
        .replace("max-connections: 500", "max-connections: 600")
        .replace("num_units: 2", "num_units: 1")
        .replace("to: [\"lxd:1\", \"new\"]", "to: [\"lxd:1\"]");
    let changed = Bundle::parse("bundle.yaml", &text).unwrap();
    let shown: Vec<String> = diff(&model, &changed, &charms)
        .unwrap()
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(
        shown,
        [
            "application mariadb: option max-connections is 500 in the model, 600 in the bundle",
            "application wordpress: 2 units in the model, 1 in the bundle",
        ]
    );
    let steps: Vec<String> = plan(&model, &changed, &charms)
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        steps,
        ["set config of application mariadb: max-connections=600"]
    );
}

#[test]
fn bad_config_is_rejected_before_any_step() {
    let charms = charms();
    let text = std::fs::read_to_string(data("bundle.yaml"))
        .unwrap()
        .replace("binlog: true", "binlog: sometimes");
    let b = Bundle::parse("bundle.yaml", &text).unwrap();
    let e = plan(&ModelState::default(), &b, &charms)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "bundle.yaml:15:7: applications.mariadb.options.binlog: expected true or false, found \"sometimes\" (boolean option)"
    );
}
