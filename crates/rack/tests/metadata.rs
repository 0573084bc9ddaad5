//! The rack's HTTP server against a real region (kumo_api on loopback, a
//! SQLite store): `/metadata/v1` is forwarded as the machine sent it, and
//! a known machine's ephemeral boot script carries its token.

use std::sync::Arc;

use kumo_client::Client;
use kumo_model::api::{ActionOptions, AddMachine, CreateUser};
use kumo_model::boot::BootPurpose;
use kumo_model::network::RackBoot;
use kumo_rack::http::{router, BootState};
use kumo_region::{Actor, ManualClock, Region, RegionConfig, SecretBox, SeededEntropy};
use reqwest::StatusCode;
use serde_json::{json, Value};

const MAC: &str = "52:54:00:00:d0:01";

struct Lab {
    region: Region,
    /// The rack's HTTP server.
    rack: String,
    boot: Arc<BootState>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

impl Lab {
    async fn start() -> Lab {
        let (store, dir) = kumo_store::testing::sqlite().await;
        let region = Region::new(
            store,
            SecretBox::from_key([3; 32]),
            Arc::new(ManualClock::new(1_700_000_000_000)),
            Arc::new(SeededEntropy::new(11)),
            RegionConfig::default(),
        );
        region.ensure_defaults().await.unwrap();
        region
            .create_user(
                &Actor::system(),
                CreateUser {
                    username: "admin".into(),
                    password: "admin-password".into(),
                    admin: true,
                },
            )
            .await
            .unwrap();
        let key = region
            .create_api_key(&Actor::system(), "admin")
            .await
            .unwrap()
            .key;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let region_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(kumo_api::serve(
            region.clone(),
            listener,
            std::future::pending(),
        ));
        let boot = BootState::new("rack1", "10.0.0.2:5248".into(), dir.path().join("boot"));
        boot.set_region(Client::new(&region_url, Some(key)));
        let rack = serve(router(boot.clone(), Arc::new(String::new))).await;
        Lab {
            region,
            rack,
            boot,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.rack));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn script(&self, mac: &str) -> String {
        self.http
            .get(format!("{}/ipxe/mac/{}", self.rack, mac.replace(':', "-")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

async fn raw_get(base: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    out
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}

#[tokio::test]
async fn metadata_calls_reach_the_region_through_the_rack_with_the_machine_s_token() {
    let lab = Lab::start().await;
    let m = lab
        .region
        .add_machine(
            &Actor::system(),
            AddMachine {
                hostname: "node1".into(),
                arch: None,
                macs: vec![MAC.into()],
                power_type: None,
                power_parameters: Default::default(),
                zone: None,
                pool: None,
                tags: vec![],
                cpu_count: None,
                memory_mib: None,
            },
        )
        .await
        .unwrap();
    let sid = m.system_id.to_string();
    lab.region
        .machine_action(
            &Actor::system(),
            &sid,
            "commission",
            ActionOptions::default(),
        )
        .await
        .unwrap();
    let token = lab.region.machine_token(&sid).await.unwrap().unwrap();
    let entry = RackBoot {
        mac: MAC.into(),
        system_id: sid.clone(),
        hostname: "node1".into(),
        purpose: BootPurpose::Commission,
    };
    lab.boot.set_boot_table(std::slice::from_ref(&entry));

    // The boot script carries the token the region issued for this task.
    let script = lab.script(MAC).await;
    assert!(
        script.contains(&format!("kumo.system_id={sid} kumo.token={token} ")),
        "{script}"
    );

    // Through the rack: the machine's token works, no token is refused by
    // the region (the rack adds no credentials of its own), bodies and
    // queries go through.
    let (s, v) = lab
        .call("GET", "/metadata/v1/instructions?x=1", Some(&token), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["task"], "commission");
    assert_eq!(v["system_id"], sid.as_str());
    let (s, v) = lab
        .call("GET", "/metadata/v1/instructions", None, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(code(&v), "unauthorized");
    let inv = json!({"cpu": {"model": "QEMU", "count": 2}, "memory_mib": 512,
        "nics": [{"name": "ens3", "mac": MAC, "driver": "virtio_net", "link_up": true}]});
    let (s, v) = lab
        .call("POST", "/metadata/v1/inventory", Some(&token), Some(inv))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = lab
        .call(
            "POST",
            "/metadata/v1/status",
            Some(&token),
            Some(json!({"event": "finished", "result": "success"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "ready");
    assert_eq!(lab.region.machine(&sid).await.unwrap().cpu_count, 2);

    // Enlisting through the rack: created, then refused as a duplicate.
    let enlist = json!({"inventory": {"nics": [{"name": "ens3", "mac": "52:54:00:00:d0:02"}]},
        "boot_mac": "52:54:00:00:d0:02"});
    let (s, v) = lab
        .call("POST", "/metadata/v1/enlist", None, Some(enlist.clone()))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = lab
        .call("POST", "/metadata/v1/enlist", None, Some(enlist))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(code(&v), "already_enlisted");

    // Nothing that normalises to a path outside /metadata/v1 is forwarded.
    for path in [
        "/metadata/v1/%2e%2e/%2e%2e/api/v1/machines",
        "/metadata/v1/x/%2E./y",
    ] {
        // Raw, since reqwest would normalise the dots away itself.
        let answer = raw_get(&lab.rack, path).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }

    // The next task gets a new token; a changed boot entry drops the
    // cached one, so the next script carries the new token.
    lab.region
        .machine_action(
            &Actor::system(),
            &sid,
            "commission",
            ActionOptions::default(),
        )
        .await
        .unwrap();
    let second = lab.region.machine_token(&sid).await.unwrap().unwrap();
    assert_ne!(second, token);
    lab.boot.set_boot_table(&[RackBoot {
        purpose: BootPurpose::PowerOff,
        ..entry.clone()
    }]);
    lab.boot.set_boot_table(&[entry]);
    let script = lab.script(MAC).await;
    assert!(
        script.contains(&format!("kumo.token={second} ")),
        "{script}"
    );

    // An unknown MAC enlists, with no token to look up.
    let script = lab.script("52:54:00:00:d0:09").await;
    assert!(
        script.contains("kumo.purpose=enlist") && !script.contains("kumo.token"),
        "{script}"
    );
}

#[tokio::test]
async fn a_region_that_cannot_be_reached_is_a_502_and_scripts_go_without_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let boot = BootState::new("rack1", "10.0.0.2:5248".into(), dir.path().join("boot"));
    // Nothing listens on port 9 of loopback.
    boot.set_region(Client::new("http://127.0.0.1:9", Some("key".into())));
    boot.set_boot_table(&[RackBoot {
        mac: MAC.into(),
        system_id: "abc123".into(),
        hostname: "node1".into(),
        purpose: BootPurpose::Commission,
    }]);
    let rack = serve(router(boot, Arc::new(String::new))).await;
    let resp = reqwest::get(format!("{rack}/metadata/v1/instructions"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(code(&v), "region_unreachable");
    let script = reqwest::get(format!("{rack}/ipxe/mac/52-54-00-00-d0-01"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        script.contains("kumo.system_id=abc123") && !script.contains("kumo.token"),
        "{script}"
    );
}
