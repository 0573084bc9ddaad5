//! Checks the dependency directions ARCHITECTURE.md writes down:
//! protocol cores and the domain model ← services ← API ← binary.
//! A new crate must be given its place here before it builds into kumo.

use std::collections::BTreeMap;
use std::path::Path;

/// Each crate and the kumo crates it may depend on.
const ALLOWED: &[(&str, &[&str])] = &[
    // Pure: no I/O, no kumo dependencies.
    ("kumo-model", &[]),
    // Charms and bundles as data, and the pure deploy planner.
    ("kumo-charm", &[]),
    // The unit agent's protocol and hook decisions, pure.
    ("kumo-uniter", &[]),
    // Edges: talk to the outside world, know nothing of the region.
    ("kumo-power", &[]),
    // Container machines (systemd-nspawn) for the orchestration layer.
    ("kumo-containers", &[]),
    // Protocol cores with their thin socket shells.
    ("kumo-dhcp", &[]),
    ("kumo-tftp", &[]),
    ("kumo-dns", &[]),
    ("kumo-store", &["kumo-model"]),
    // Services.
    ("kumo-region", &["kumo-model", "kumo-store", "kumo-power"]),
    // The orchestration controller: models in the store, charms and the
    // uniter protocol, container machines; the region for auth and time.
    (
        "kumo-controller",
        &[
            "kumo-model",
            "kumo-store",
            "kumo-region",
            "kumo-charm",
            "kumo-uniter",
            "kumo-containers",
        ],
    ),
    // Interfaces.
    (
        "kumo-api",
        &[
            "kumo-model",
            "kumo-region",
            "kumo-store",
            "kumo-power",
            "kumo-controller",
            "kumo-uniter",
        ],
    ),
    ("kumo-client", &["kumo-model"]),
    // The rack service reaches the region only through its API client.
    (
        "kumo-rack",
        &[
            "kumo-model",
            "kumo-client",
            "kumo-dhcp",
            "kumo-dns",
            "kumo-tftp",
        ],
    ),
    // The machine-side agent, too, reaches the region only through the client.
    ("kumo-agent", &["kumo-model", "kumo-client", "kumo-uniter"]),
    // Binaries: anything.
    (
        "kumo",
        &[
            "kumo-model",
            "kumo-store",
            "kumo-power",
            "kumo-region",
            "kumo-api",
            "kumo-client",
            "kumo-rack",
            "kumo-agent",
            "kumo-containers",
            "kumo-controller",
            "kumo-uniter",
            "kumo-charm",
        ],
    ),
    (
        "kumo-bench",
        &[
            "kumo-model",
            "kumo-store",
            "kumo-power",
            "kumo-region",
            "kumo-api",
            "kumo-client",
            "kumo-controller",
            "kumo-uniter",
            "kumo-dhcp",
            "kumo-dns",
            "kumo-tftp",
        ],
    ),
];

fn kumo_deps(manifest: &toml::Value) -> Vec<String> {
    // Dev-dependencies may reach further (tests wire real parts together);
    // what ships is [dependencies].
    manifest
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|t| {
            t.keys()
                .filter(|k| k.starts_with("kumo"))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn crate_dependencies_point_inwards() {
    let crates_dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut seen = 0;
    for entry in std::fs::read_dir(crates_dir).unwrap() {
        let manifest_path = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest_path) else {
            continue;
        };
        let manifest: toml::Value = text
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display()));
        let name = manifest["package"]["name"].as_str().unwrap().to_owned();
        let Some(ok) = allowed.get(name.as_str()) else {
            panic!("crate {name} ({}) has no place in the dependency rules: add it to ALLOWED and ARCHITECTURE.md", manifest_path.display());
        };
        for dep in kumo_deps(&manifest) {
            assert!(
                ok.contains(&dep.as_str()),
                "{name} must not depend on {dep}: see ARCHITECTURE.md, dependency directions"
            );
        }
        seen += 1;
    }
    assert!(
        seen >= 7,
        "found only {seen} crates under {}",
        crates_dir.display()
    );
}

#[test]
fn the_model_crate_does_no_io() {
    // The lifecycle and constraint logic must stay pure: no clocks, no
    // sockets, no files, no randomness read inside the model. (Address
    // values such as Ipv4Addr are data, not I/O.)
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("model/src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for banned in [
            "SystemTime",
            "Instant::now",
            "std::fs",
            "TcpStream",
            "TcpListener",
            "UdpSocket",
            "tokio",
            "thread_rng",
            "OsRng",
        ] {
            assert!(
                !text.contains(banned),
                "{} uses {banned}; the model crate is pure",
                path.display()
            );
        }
    }
}

#[test]
fn the_charm_crate_is_pure() {
    // Bundles plan and apply as data; only loading a charm directory
    // (charm.rs) reads files.
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("charm/src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut banned = vec![
            "SystemTime",
            "Instant::now",
            "TcpStream",
            "TcpListener",
            "UdpSocket",
            "tokio",
            "thread_rng",
            "OsRng",
        ];
        if path.file_name().unwrap() != "charm.rs" {
            banned.push("std::fs");
        }
        for banned in banned {
            assert!(
                !text.contains(banned),
                "{} uses {banned}; the charm crate is pure",
                path.display()
            );
        }
    }
}
