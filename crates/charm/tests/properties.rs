//! Generated bundles: rendering round-trips, deploying twice changes
//! nothing, and an exported model reads back as itself.

use std::collections::BTreeMap;

use kumo_charm::{
    apply, diff, export, plan, Application, Bundle, Charm, ConfigSchema, MachineSpec, Metadata,
    ModelState, OptionValue, Placement, RelationEnd, Value,
};
use proptest::prelude::*;

fn charms() -> BTreeMap<String, Charm> {
    let mut m = BTreeMap::new();
    for (meta, config) in [
        (
            "name: db\nprovides:\n  db: mysql\n",
            "options:\n  port: {type: int, default: 3306}\n  ratio: {type: float}\n  on: {type: boolean, default: false}\n  label: {type: string, default: x}\n",
        ),
        ("name: web\nrequires:\n  db: mysql\n", "options:\n  title: {type: string}\n"),
    ] {
        let c = Charm::new(
            Metadata::parse("metadata.yaml", meta).unwrap(),
            ConfigSchema::parse("config.yaml", config).unwrap(),
        );
        m.insert(c.metadata.name.clone(), c);
    }
    m
}

fn value_for(key: &str) -> BoxedStrategy<Value> {
    match key {
        "port" => any::<i64>().prop_map(Value::Int).boxed(),
        "ratio" => (-1e6f64..1e6).prop_map(Value::Float).boxed(),
        "on" => any::<bool>().prop_map(Value::Boolean).boxed(),
        _ => any::<String>().prop_map(Value::String).boxed(),
    }
}

fn options(charm: &str) -> BoxedStrategy<BTreeMap<String, OptionValue>> {
    let keys: &[&str] = if charm == "db" {
        &["port", "ratio", "on", "label"]
    } else {
        &["title"]
    };
    let parts: Vec<_> = keys
        .iter()
        .map(|k| {
            let k = k.to_string();
            proptest::option::of(value_for(&k)).prop_map(move |v| (k.clone(), v))
        })
        .collect();
    parts
        .prop_map(|kv| {
            kv.into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, OptionValue::from(&v))))
                .collect()
        })
        .boxed()
}

fn placement(machines: usize) -> BoxedStrategy<Placement> {
    let m = machines.max(1);
    prop_oneof![
        Just(Placement::New),
        Just(Placement::Container {
            kind: "lxd".into(),
            host: None
        }),
        (0..m).prop_map(|i| Placement::Machine(i.to_string())),
        (0..m).prop_map(|i| Placement::Container {
            kind: "lxd".into(),
            host: Some(i.to_string())
        }),
    ]
    .prop_filter("needs machines", move |p| {
        machines > 0 || matches!(p, Placement::New | Placement::Container { host: None, .. })
    })
    .boxed()
}

/// Applications db0..dbN on charm db, web0..webN on web: a name always
/// means the same charm, so any two bundles can deploy into one model.
fn bundle() -> impl Strategy<Value = Bundle> {
    (0usize..3, 0usize..3, 0usize..3).prop_flat_map(|(machines, dbs, webs)| {
        let apps: Vec<_> = (0..dbs)
            .map(|i| (format!("db{i}x"), "db"))
            .chain((0..webs).map(|i| (format!("web{i}x"), "web")))
            .map(|(name, charm)| {
                (
                    0u32..4,
                    proptest::collection::vec(placement(machines), 0..4),
                    options(charm),
                    any::<bool>(),
                )
                    .prop_map(move |(n, mut to, options, expose)| {
                        to.truncate(n as usize);
                        (
                            name.clone(),
                            Application {
                                charm: charm.to_owned(),
                                channel: None,
                                num_units: n,
                                to,
                                options,
                                constraints: expose.then(|| "mem=1G".to_owned()),
                                expose,
                            },
                        )
                    })
            })
            .collect();
        let relations =
            proptest::collection::vec((0..dbs.max(1), 0..webs.max(1), any::<bool>()), 0..3);
        (apps, relations).prop_map(move |(apps, rels)| {
            let mut relations = Vec::new();
            if dbs > 0 && webs > 0 {
                for (d, w, named) in rels {
                    let pair = [
                        RelationEnd {
                            application: format!("web{w}x"),
                            endpoint: named.then(|| "db".to_owned()),
                        },
                        RelationEnd {
                            application: format!("db{d}x"),
                            endpoint: Some("db".to_owned()),
                        },
                    ];
                    if !relations.contains(&pair) {
                        relations.push(pair);
                    }
                }
            }
            Bundle {
                name: None,
                description: None,
                applications: apps.into_iter().collect(),
                machines: (0..machines)
                    .map(|i| {
                        (
                            i.to_string(),
                            MachineSpec {
                                constraints: (i == 0).then(|| "cores=2".into()),
                                series: None,
                            },
                        )
                    })
                    .collect(),
                relations,
                spans: Default::default(),
            }
        })
    })
}

fn deploy(model: &mut ModelState, b: &Bundle, charms: &BTreeMap<String, Charm>) {
    for s in plan(model, b, charms).unwrap() {
        apply(model, &s).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn render_then_parse_is_identity(b in bundle()) {
        let text = b.render();
        let again = Bundle::parse("b.yaml", &text).unwrap();
        prop_assert_eq!(again, b, "{}", text);
    }

    #[test]
    fn deploying_twice_changes_nothing(b1 in bundle(), b2 in bundle()) {
        let charms = charms();
        let mut model = ModelState::default();
        deploy(&mut model, &b1, &charms);
        deploy(&mut model, &b2, &charms);
        prop_assert_eq!(plan(&model, &b2, &charms).unwrap(), vec![]);
    }

    #[test]
    fn a_fresh_deploy_leaves_no_difference(b in bundle()) {
        let charms = charms();
        let mut model = ModelState::default();
        deploy(&mut model, &b, &charms);
        prop_assert_eq!(diff(&model, &b, &charms).unwrap(), vec![]);
    }

    #[test]
    fn export_round_trips(b1 in bundle(), b2 in bundle()) {
        let charms = charms();
        let mut model = ModelState::default();
        deploy(&mut model, &b1, &charms);
        deploy(&mut model, &b2, &charms);
        let exported = export(&model);
        let again = Bundle::parse("export.yaml", &exported.render()).unwrap();
        prop_assert_eq!(&again, &exported);
        // The exported bundle checks against the charms as well.
        kumo_charm::validate(&exported, &charms).unwrap();
    }
}
