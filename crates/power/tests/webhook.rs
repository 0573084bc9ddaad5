//! The webhook driver against a real local axum server that records requests.

mod common;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use kumo_power::{driver_for, run_with_retries, PowerAction, PowerError, PowerState, RetryPolicy};
use serde_json::json;

#[derive(Clone, Debug, PartialEq)]
struct Seen {
    method: Method,
    path: String,
    auth: Option<String>,
}

#[derive(Clone, Default)]
struct Machine {
    on: Arc<Mutex<bool>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Answer 503 to this many requests first (a flaky power controller).
    fail_next: Arc<Mutex<u32>>,
}

async fn handle(
    State(m): State<Machine>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> impl IntoResponse {
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    m.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: uri.path().to_owned(),
        auth: auth.clone(),
    });
    {
        let mut fail = m.fail_next.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return (StatusCode::SERVICE_UNAVAILABLE, "busy".to_owned());
        }
    }
    let ok_auth = matches!(
        auth.as_deref(),
        // admin:s3cret
        Some("Basic YWRtaW46czNjcmV0") | Some("Bearer tok-123")
    );
    if !ok_auth {
        return (StatusCode::UNAUTHORIZED, "who are you".to_owned());
    }
    match (method, uri.path()) {
        (Method::POST, "/vm/on") => *m.on.lock().unwrap() = true,
        (Method::POST, "/vm/off") => *m.on.lock().unwrap() = false,
        (Method::GET, "/vm/status") => {
            let s = if *m.on.lock().unwrap() {
                "Running"
            } else {
                "Stopped"
            };
            return (
                StatusCode::OK,
                format!(r#"{{"name": "vm", "status": "{s}"}}"#),
            );
        }
        _ => return (StatusCode::NOT_FOUND, "no such thing".to_owned()),
    }
    (StatusCode::OK, "{}".to_owned())
}

async fn serve() -> (String, Machine) {
    let m = Machine::default();
    let app = Router::new().fallback(handle).with_state(m.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), m)
}

fn hook_params(base: &str, auth: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    let mut p = common::params(json!({
        "power_on_uri": format!("{base}/vm/on"),
        "power_off_uri": format!("{base}/vm/off"),
        "power_query_uri": format!("{base}/vm/status"),
    }));
    p.extend(common::params(auth));
    p
}

#[tokio::test]
async fn on_off_query_with_basic_auth() {
    let (base, m) = serve().await;
    let d = driver_for(
        "webhook",
        &hook_params(
            &base,
            json!({"power_user": "admin", "power_pass": "s3cret"}),
        ),
    )
    .unwrap();
    let policy = RetryPolicy::default();
    assert_eq!(d.power_query().await.unwrap(), PowerState::Off);
    // Webhooks are fire-and-forget: no state claimed after on/off.
    assert_eq!(
        run_with_retries(d.as_ref(), PowerAction::On, &policy)
            .await
            .unwrap(),
        None
    );
    assert_eq!(d.power_query().await.unwrap(), PowerState::On);
    d.power_off().await.unwrap();
    assert_eq!(
        run_with_retries(d.as_ref(), PowerAction::Query, &policy)
            .await
            .unwrap(),
        Some(PowerState::Off)
    );
    let seen = m.seen.lock().unwrap().clone();
    let calls: Vec<(Method, &str)> = seen
        .iter()
        .map(|s| (s.method.clone(), s.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            (Method::GET, "/vm/status"),
            (Method::POST, "/vm/on"),
            (Method::GET, "/vm/status"),
            (Method::POST, "/vm/off"),
            (Method::GET, "/vm/status"),
        ]
    );
    assert!(seen
        .iter()
        .all(|s| s.auth.as_deref() == Some("Basic YWRtaW46czNjcmV0")));
}

#[tokio::test]
async fn bearer_token_and_custom_regex() {
    let (base, m) = serve().await;
    let d = driver_for(
        "webhook",
        &hook_params(&base, json!({"power_token": "tok-123", "power_on_regex": "\"Running\"", "power_off_regex": "\"Stopped\""})),
    )
    .unwrap();
    d.power_on().await.unwrap();
    assert_eq!(d.power_query().await.unwrap(), PowerState::On);
    assert_eq!(
        m.seen.lock().unwrap()[0].auth.as_deref(),
        Some("Bearer tok-123")
    );
}

#[tokio::test]
async fn wrong_credentials_are_fatal_and_not_retried() {
    let (base, m) = serve().await;
    let d = driver_for(
        "webhook",
        &hook_params(
            &base,
            json!({"power_user": "admin", "power_pass": "wrong-pw"}),
        ),
    )
    .unwrap();
    let err = run_with_retries(d.as_ref(), PowerAction::On, &RetryPolicy::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PowerError::Fatal { .. }), "{err:?}");
    assert_eq!(
        m.seen.lock().unwrap().len(),
        1,
        "a fatal error must not be retried"
    );
    let msg = err.to_string();
    assert_eq!(
        msg,
        format!("webhook {base}: power on: authentication failed (401 Unauthorized)")
    );
    assert!(!msg.contains("wrong-pw"));
}

#[tokio::test]
async fn server_errors_are_retried() {
    let (base, m) = serve().await;
    *m.fail_next.lock().unwrap() = 2;
    let d = driver_for(
        "webhook",
        &hook_params(&base, json!({"power_token": "tok-123"})),
    )
    .unwrap();
    let policy = RetryPolicy {
        attempts: 4,
        initial_backoff: std::time::Duration::from_millis(10),
        max_backoff: std::time::Duration::from_millis(50),
    };
    assert_eq!(
        run_with_retries(d.as_ref(), PowerAction::Query, &policy)
            .await
            .unwrap(),
        Some(PowerState::Off)
    );
    assert_eq!(m.seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn server_gone_is_transient() {
    let port = common::free_tcp_port();
    let base = format!("http://127.0.0.1:{port}");
    let d = driver_for("webhook", &hook_params(&base, json!({}))).unwrap();
    let err = d.power_query().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!("webhook {base}: ")),
        "{err}"
    );
}
