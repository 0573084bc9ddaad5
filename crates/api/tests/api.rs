//! The REST API over real HTTP on loopback, against a real SQLite store.

use std::sync::Arc;

use kumo_model::api::CreateUser;
use kumo_region::{Actor, ManualClock, Region, RegionConfig, SecretBox, SeededEntropy};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Api {
    base: String,
    admin_key: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Api {
    async fn start() -> Api {
        let (store, dir) = kumo_store::testing::sqlite().await;
        let region = Region::new(
            store,
            SecretBox::from_key([1; 32]),
            Arc::new(ManualClock::new(1_700_000_000_000)),
            Arc::new(SeededEntropy::new(5)),
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
        let admin_key = region
            .create_api_key(&Actor::system(), "admin")
            .await
            .unwrap()
            .key;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(kumo_api::serve(region, listener, async move {
            let _ = rx.await;
        }));
        Api {
            base,
            admin_key,
            http: reqwest::Client::new(),
            _dir: dir,
            stop: Some(tx),
            server,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{}", self.base, path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
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

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, path, Some(&self.admin_key.clone()), body)
            .await
    }
}

async fn token_of(api: &Api, machine: &str) -> String {
    let (_, t) = api
        .admin("GET", &format!("/api/v1/machines/{machine}/token"), None)
        .await;
    t["token"].as_str().unwrap().to_owned()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}

#[tokio::test]
async fn every_user_endpoint_needs_a_valid_key() {
    let api = Api::start().await;
    for (m, p) in [
        ("GET", "/api/v1/machines"),
        ("POST", "/api/v1/machines"),
        ("GET", "/api/v1/tags"),
        ("GET", "/api/v1/audit"),
    ] {
        let (s, v) = api.call(m, p, None, None).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{m} {p}"
        );
        let (s, _) = api
            .call(m, p, Some("kumo_0123456789abcdef_wrong"), None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {p} with a wrong key");
    }
    let (s, v) = api.call("GET", "/api/v1/version", None, None).await;
    assert_eq!((s, v["api"].as_str()), (StatusCode::OK, Some("v1")));
    let (s, v) = api.admin("GET", "/api/v1/whoami", None).await;
    assert_eq!((s, v["username"].as_str()), (StatusCode::OK, Some("admin")));
}

#[tokio::test]
async fn bad_bodies_get_4xx_with_stable_codes_and_the_field() {
    let api = Api::start().await;
    let (s, v) = api
        .admin(
            "POST",
            "/api/v1/machines",
            Some(json!({"hostname": "n1", "macs": ["52:54:00:zz:00:01"]})),
        )
        .await;
    assert_eq!(
        (s, code(&v), v["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, "invalid_field", Some("macs[0]")),
        "{v}"
    );
    let (s, v) = api
        .admin(
            "POST",
            "/api/v1/machines",
            Some(json!({"hostname": 5, "macs": []})),
        )
        .await;
    assert!(s.is_client_error() && code(&v) == "invalid_body", "{s} {v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("hostname"),
        "{v}"
    );
    let (s, v) = api
        .admin(
            "POST",
            "/api/v1/machines",
            Some(json!({"hostname": "n1", "macs": ["52:54:00:00:00:01"], "colour": "red"})),
        )
        .await;
    assert!(
        s.is_client_error()
            && code(&v) == "invalid_body"
            && v["error"]["message"].as_str().unwrap().contains("colour"),
        "{v}"
    );
    let resp = api
        .http
        .post(format!("{}/api/v1/machines", api.base))
        .bearer_auth(&api.admin_key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (s, v) = api.admin("POST", "/api/v1/machines", Some(json!({"hostname": "n1", "macs": ["52:54:00:00:00:01"], "power_type": "ipmi", "power_parameters": {"power_address": "10.0.0.1", "power_pass": "x", "power_port": "not-a-port"}}))).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_power_parameters"),
        "{v}"
    );
    assert_eq!(
        v["error"]["field"].as_str(),
        Some("power_parameters.power_port")
    );
    let (s, v) = api
        .admin("GET", "/api/v1/machines?status=flying", None)
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_field"),
        "{v}"
    );
    let (s, v) = api.admin("GET", "/api/v1/machines/nosuch", None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, v) = api.admin("GET", "/api/v1/nothing-here", None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    // None of the rejected requests left a machine behind.
    let (_, v) = api.admin("GET", "/api/v1/machines", None).await;
    assert_eq!(v.as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn lifecycle_over_http_with_the_machine_facing_api() {
    let api = Api::start().await;
    let (s, m) = api
        .admin("POST", "/api/v1/machines", Some(json!({"hostname": "node1", "macs": ["52:54:00:00:00:01"], "power_type": "ipmi", "power_parameters": {"power_address": "10.0.0.1", "power_user": "u", "power_pass": "bmc-pass"}})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{m}");
    assert!(
        !m.to_string().contains("bmc-pass"),
        "the BMC password came back: {m}"
    );
    assert!(m["allowed_actions"]
        .as_array()
        .unwrap()
        .contains(&json!("commission")));
    let id = m["system_id"].as_str().unwrap().to_owned();

    let (s, v) = api
        .admin("POST", "/api/v1/machines/node1/actions/deploy", None)
        .await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "illegal_transition"));
    assert!(
        v["error"]["allowed_actions"]
            .as_array()
            .unwrap()
            .contains(&json!("commission")),
        "{v}"
    );

    let (s, v) = api
        .admin(
            "POST",
            &format!("/api/v1/machines/{id}/actions/commission"),
            None,
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("commissioning"))
    );
    let (_, t) = api.admin("GET", "/api/v1/machines/node1/token", None).await;
    let token = t["token"].as_str().unwrap().to_owned();

    let (s, _) = api
        .call("GET", "/metadata/v1/instructions", Some("wrong"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, i) = api
        .call("GET", "/metadata/v1/instructions", Some(&token), None)
        .await;
    assert_eq!(
        (s, i["task"].as_str()),
        (StatusCode::OK, Some("commission"))
    );
    let inv = json!({"cpu": {"model": "QEMU", "count": 4}, "memory_mib": 4096, "disks": [{"name": "vda", "size_bytes": 10000000000u64}], "nics": [{"name": "ens3", "mac": "52:54:00:00:00:01"}]});
    let (s, v) = api
        .call("POST", "/metadata/v1/inventory", Some(&token), Some(inv))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/metadata/v1/status",
            Some(&token),
            Some(json!({"event": "finished", "result": "success"})),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("ready")),
        "{v}"
    );

    let (s, v) = api
        .admin(
            "POST",
            "/api/v1/tags",
            Some(json!({"name": "small", "definition": "cpu_count <= 4"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = api
        .admin(
            "POST",
            "/api/v1/tags",
            Some(json!({"name": "bad", "definition": "cpu_count <="})),
        )
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_tag_definition")
    );
    let (s, v) = api
        .admin(
            "POST",
            "/api/v1/machines/allocate",
            Some(json!({"constraints": "tags=small cores=8"})),
        )
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "no_machine_matches"),
        "{v}"
    );
    let (s, v) = api
        .admin(
            "POST",
            "/api/v1/machines/allocate",
            Some(json!({"constraints": "tags=small"})),
        )
        .await;
    assert_eq!(
        (s, v["hostname"].as_str(), v["status"].as_str()),
        (StatusCode::OK, Some("node1"), Some("allocated")),
        "{v}"
    );
    let (s, v) = api
        .admin(
            "POST",
            "/api/v1/machines/node1/actions/release",
            Some(json!({"erase": "sideways"})),
        )
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_body"),
        "{v}"
    );
    let (s, v) = api.admin("DELETE", "/api/v1/machines/node1", None).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "illegal_transition"),
        "an allocated machine is not deleted: {v}"
    );

    let (_, ev) = api
        .admin("GET", "/api/v1/machines/node1/events", None)
        .await;
    assert!(
        ev.as_array().unwrap().iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .contains("commissioning → ready")),
        "{ev}"
    );
    let (_, audit) = api.admin("GET", "/api/v1/audit", None).await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"create")
            && actions.contains(&"commission")
            && actions.contains(&"allocate"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn normal_users_cannot_administer_or_touch_others_machines() {
    let api = Api::start().await;
    let (s, _) = api
        .admin(
            "POST",
            "/api/v1/users",
            Some(json!({"username": "bob", "password": "bob-password"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, k) = api.admin("POST", "/api/v1/users/bob/api-keys", None).await;
    assert_eq!(s, StatusCode::CREATED);
    let bob = k["key"].as_str().unwrap().to_owned();
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/machines",
            Some(&bob),
            Some(json!({"hostname": "n1", "macs": ["52:54:00:00:00:01"]})),
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    let (s, v) = api.call("GET", "/api/v1/audit", Some(&bob), None).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    let (s, _) = api.call("GET", "/api/v1/machines", Some(&bob), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = api
        .call("GET", "/api/v1/machines/x/token", Some(&bob), None)
        .await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_shutdown_is_graceful() {
    let mut api = Api::start().await;
    api.admin("GET", "/api/v1/machines", None).await;
    let resp = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("kumo_region_api_requests_total{method=\"GET\",status=\"200\"}"),
        "{text}"
    );
    assert!(
        text.contains("kumo_region_machines{status=\"ready\"} 0"),
        "{text}"
    );
    api.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), &mut api.server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    assert!(
        api.http
            .get(format!("{}/healthz", api.base))
            .send()
            .await
            .is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn rack_config_long_polls_by_etag_and_rogue_reports_are_checked() {
    let api = Api::start().await;
    let url = format!("{}/api/v1/rack/config", api.base);
    let first = api
        .http
        .get(&url)
        .bearer_auth(&api.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    // Unchanged within the wait: 304 with the same tag.
    let again = api
        .http
        .get(format!("{url}?wait=1"))
        .bearer_auth(&api.admin_key)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    // A stale tag gets the configuration at once.
    let stale = api
        .http
        .get(format!("{url}?wait=60"))
        .bearer_auth(&api.admin_key)
        .header("if-none-match", "\"0000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    let (s, body) = api.admin("GET", "/api/v1/rack/config?wait=301", None).await;
    assert_eq!((s, code(&body)), (StatusCode::BAD_REQUEST, "invalid_query"));
    let (s, body) = api.admin("GET", "/api/v1/rack/config?wiat=3", None).await;
    assert_eq!((s, code(&body)), (StatusCode::BAD_REQUEST, "invalid_query"));

    let rogue = json!({"rack": "rack1", "servers": [
        {"interface": "br0", "server_id": "10.0.0.250", "offered_ip": "10.0.0.77"}]});
    let (s, body) = api
        .admin("POST", "/api/v1/rack/rogue-dhcp", Some(json!({"rack": "rack1", "servers": [{"interface": "br0", "server_id": "10.0.0.999"}]})))
        .await;
    assert_eq!(
        (s, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        "{body}"
    );
    let (s, _) = api
        .admin("POST", "/api/v1/rack/rogue-dhcp", Some(rogue.clone()))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, listed) = api.admin("GET", "/api/v1/rack/rogue-dhcp", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(listed[0]["servers"][0]["server_id"], "10.0.0.250");
    let (s, events) = api
        .admin("GET", "/api/v1/events?machine=rack:rack1", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(events[0]["kind"], "rogue-dhcp", "{events}");
}

#[tokio::test]
async fn an_unknown_machine_enlists_anonymously_once() {
    let api = Api::start().await;
    let inv = json!({
        "cpu": {"model": "QEMU Virtual CPU", "count": 2},
        "memory_mib": 512,
        "disks": [{"name": "vda", "size_bytes": 2147483648u64}],
        "nics": [{"name": "ens3", "mac": "52:54:00:00:e1:01", "driver": "virtio_net", "link_up": true}],
    });
    let body = json!({"inventory": inv, "boot_mac": "52:54:00:00:e1:01"});
    let (s, m) = api
        .call("POST", "/metadata/v1/enlist", None, Some(body.clone()))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{m}");
    assert_eq!(m["status"], "new");
    assert_eq!(m["cpu_count"], 2);
    assert_eq!(m["memory_mib"], 512);
    assert_eq!(m["power_type"], "manual");
    let hostname = m["hostname"].as_str().unwrap().to_owned();

    let (s, e) = api
        .call("POST", "/metadata/v1/enlist", None, Some(body))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(code(&e), "already_enlisted");
    assert!(
        e["error"]["message"].as_str().unwrap().contains(&hostname),
        "{e}"
    );

    let (s, e) = api
        .call(
            "POST",
            "/metadata/v1/enlist",
            None,
            Some(json!({"inventory": {"nics": [{"name": "x"}]}})),
        )
        .await;
    assert!(s.is_client_error(), "{s}");
    assert_eq!(code(&e), "invalid_body", "{e}");

    let (_, list) = api.admin("GET", "/api/v1/machines", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn scripts_and_their_results_over_http() {
    let api = Api::start().await;
    let (s, v) = api
        .admin(
            "POST",
            "/api/v1/scripts",
            Some(json!({"name": "hello", "type": "testing", "body": "#!/bin/sh\necho hi\n", "timeout_secs": 30})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["size"].as_u64(), v["timeout_secs"].as_u64()),
        (Some(18), Some(30))
    );
    assert!(v.get("body").is_none(), "{v}");
    let (s, v) = api
        .admin(
            "POST",
            "/api/v1/scripts",
            Some(json!({"name": "bad", "type": "testing", "body": "echo hi\n"})),
        )
        .await;
    assert_eq!(
        (s, code(&v), v["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, "invalid_field", Some("body")),
        "{v}"
    );
    let (s, v) = api
        .admin(
            "POST",
            "/api/v1/scripts",
            Some(json!({"name": "bad", "type": "weekly", "body": "#!/bin/sh\n"})),
        )
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        "{v}"
    );
    // Nearly 1 MiB of quotes is over 2 MB as JSON: still accepted.
    let big = format!("#!/bin/sh\n#{}\n", "\"".repeat((1 << 20) - 20));
    let (s, v) = api
        .admin(
            "POST",
            "/api/v1/scripts",
            Some(json!({"name": "big", "type": "commissioning", "body": big})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, list) = api.admin("GET", "/api/v1/scripts", None).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["big", "hello"]);
    let (_, one) = api.admin("GET", "/api/v1/scripts/hello", None).await;
    assert_eq!(one["body"], "#!/bin/sh\necho hi\n");

    let (s, _) = api
        .admin(
            "POST",
            "/api/v1/machines",
            Some(json!({"hostname": "node1", "macs": ["52:54:00:00:07:01"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = api
        .admin(
            "POST",
            "/api/v1/machines/node1/actions/commission",
            Some(json!({"scripts": []})),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("commissioning")),
        "{v}"
    );
    let t = token_of(&api, "node1").await;
    let (_, ts) = api
        .call("GET", "/metadata/v1/scripts", Some(&t), None)
        .await;
    assert_eq!(
        ts["scripts"],
        json!([]),
        "\"scripts\": [] runs the inventory alone"
    );
    let (s, _) = api
        .call(
            "POST",
            "/metadata/v1/status",
            Some(&t),
            Some(json!({"event": "finished", "result": "success"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    let (s, v) = api
        .admin(
            "POST",
            "/api/v1/machines/node1/actions/test",
            Some(json!({"scripts": ["nope"]})),
        )
        .await;
    assert_eq!(
        (s, code(&v), v["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, "invalid_field", Some("scripts")),
        "{v}"
    );
    let (s, v) = api
        .admin("POST", "/api/v1/machines/node1/actions/test", None)
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("testing")),
        "{v}"
    );
    let t = token_of(&api, "node1").await;
    let (s, ts) = api
        .call("GET", "/metadata/v1/scripts", Some(&t), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{ts}");
    assert_eq!(
        (ts["type"].as_str(), ts["scripts"][0]["name"].as_str()),
        (Some("testing"), Some("hello"))
    );
    // 1 MiB of control characters is 6 MiB of JSON.
    let noisy = "\u{1}".repeat(1 << 20);
    let (s, v) = api
        .call(
            "POST",
            "/metadata/v1/script-results",
            Some(&t),
            Some(json!({"name": "hello", "outcome": "passed", "exit_status": 0, "stdout": noisy,
                        "stderr": "fine\n", "started_at": 1_700_000_000_000i64, "ended_at": 1_700_000_000_500i64})),
        )
        .await;
    assert_eq!(
        (s, v["outcome"].as_str()),
        (StatusCode::OK, Some("passed")),
        "{v}"
    );
    let (_, v) = api
        .call(
            "POST",
            "/metadata/v1/status",
            Some(&t),
            Some(json!({"event": "finished", "result": "success"})),
        )
        .await;
    assert_eq!(v["status"], "ready", "{v}");

    let (_, rs) = api
        .admin("GET", "/api/v1/machines/node1/script-results", None)
        .await;
    assert_eq!(rs[0]["name"], "hello", "{rs}");
    assert_eq!(rs[0]["type"], "testing", "{rs}");
    assert!(rs[0].get("stdout").is_none(), "lists leave the output out");
    let (_, r) = api
        .admin("GET", "/api/v1/machines/node1/script-results/hello", None)
        .await;
    assert_eq!(r["stdout"].as_str().map(str::len), Some(1 << 20));
    assert_eq!(
        (r["stderr"].as_str(), r["stdout_truncated"].as_bool()),
        (Some("fine\n"), Some(false))
    );
    let (s, v) = api
        .admin("GET", "/api/v1/machines/node1/script-results/big", None)
        .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");

    let (s, _) = api.admin("DELETE", "/api/v1/scripts/hello", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = api.admin("GET", "/api/v1/scripts/hello", None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
}
