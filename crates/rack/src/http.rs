//! The rack's HTTP boot server: iPXE scripts rendered per MAC from the
//! current configuration, boot files (with Range requests), metrics, and
//! the region's machine-facing `/metadata/v1` forwarded (booted machines
//! reach only the rack).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use kumo_client::Client;
use kumo_model::boot::BootPurpose;
use kumo_model::network::RackBoot;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tower_http::services::ServeDir;

use crate::script::{ScriptInput, Scripts};

/// What a machine may send through to the region's `/metadata/v1`: as much
/// as the region itself accepts there.
const METADATA_BODY_LIMIT: usize = 16 << 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurposeLabel {
    purpose: String,
}

/// What the HTTP handlers share with the rest of the rack.
pub struct BootState {
    pub rack: String,
    /// `host:port` used when a request carries no usable Host header.
    pub default_host: String,
    pub boot_dir: PathBuf,
    table: RwLock<HashMap<String, RackBoot>>,
    scripts: Scripts,
    scripts_served: Family<PurposeLabel, Counter>,
    bad_requests: Counter,
    registry: Registry,
    /// The region, for `/metadata/v1` and machine tokens; unset in tests
    /// of the boot files alone.
    region: OnceLock<Client>,
    /// Machine tokens by system id, with when they were fetched.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

/// How long a fetched machine token is reused. The region issues a new one
/// for every task, so a cached one must not outlive the boot it was for.
const TOKEN_TTL: Duration = Duration::from_secs(30);

impl BootState {
    pub fn new(rack: &str, default_host: String, boot_dir: PathBuf) -> Arc<Self> {
        let mut registry = Registry::with_prefix("kumo_rack");
        let scripts_served = Family::<PurposeLabel, Counter>::default();
        let bad_requests = Counter::default();
        registry.register(
            "boot_scripts",
            "Per-MAC iPXE scripts served, by boot purpose",
            scripts_served.clone(),
        );
        registry.register(
            "http_bad_requests",
            "HTTP boot requests refused as malformed",
            bad_requests.clone(),
        );
        Arc::new(BootState {
            rack: rack.to_owned(),
            default_host,
            boot_dir,
            table: RwLock::default(),
            scripts: Scripts::new(),
            scripts_served,
            bad_requests,
            registry,
            region: OnceLock::new(),
            tokens: Mutex::default(),
        })
    }

    /// The region client (with an admin key) that `/metadata/v1` is
    /// forwarded to and machine tokens are fetched from. Set once.
    pub fn set_region(&self, region: Client) {
        let _ = self.region.set(region);
    }

    /// Replaces what each known MAC boots into.
    pub fn set_boot_table(&self, boot: &[RackBoot]) {
        let table = boot
            .iter()
            .map(|b| (b.mac.to_ascii_lowercase(), b.clone()))
            .collect::<HashMap<_, _>>();
        let mut old = self.table.write().expect("boot table lock");
        // A machine whose boot changed is on a new task, with a new token.
        let mut tokens = self.tokens.lock().expect("token cache lock");
        for (mac, b) in old.iter() {
            if table.get(mac) != Some(b) {
                tokens.remove(&b.system_id);
            }
        }
        *old = table;
    }

    /// Adds the rack's other metrics (DHCP, DNS, TFTP) to `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The machine's token for its current task: cached for [`TOKEN_TTL`],
    /// else fetched with the admin key. `None` (logged) when the region has
    /// none or cannot be asked; the script is then rendered without it.
    async fn token(&self, system_id: &str) -> Option<String> {
        if let Some((t, at)) = self.tokens.lock().expect("token cache lock").get(system_id) {
            if at.elapsed() < TOKEN_TTL {
                return Some(t.clone());
            }
        }
        let region = self.region.get()?;
        let path = format!("/api/v1/machines/{}/token", kumo_client::enc(system_id));
        match region.get::<serde_json::Value>(&path).await {
            Ok(v) => match v["token"].as_str() {
                Some(t) => {
                    self.tokens
                        .lock()
                        .expect("token cache lock")
                        .insert(system_id.to_owned(), (t.to_owned(), Instant::now()));
                    Some(t.to_owned())
                }
                None => {
                    tracing::warn!(%system_id, "the region has no token for this machine; its boot script goes without");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(%system_id, error = %e, "machine token not fetched; its boot script goes without");
                None
            }
        }
    }

    fn lookup(&self, mac: &str) -> Option<RackBoot> {
        self.table
            .read()
            .expect("boot table lock")
            .get(mac)
            .cloned()
    }
}

/// The router; serve it with `axum::serve`.
pub fn router(
    state: Arc<BootState>,
    extra_metrics: Arc<dyn Fn() -> String + Send + Sync>,
) -> Router {
    // Large reads: boot files are kernels and images, read once, start to end.
    let files = ServeDir::new(&state.boot_dir).with_buf_chunk_size(1 << 20);
    Router::new()
        .route("/ipxe/boot.ipxe", get(generic))
        .route("/ipxe/mac/{mac}", get(for_mac))
        .route(
            "/metrics",
            get(move |State(s): State<Arc<BootState>>| {
                let extra = extra_metrics.clone();
                async move {
                    let mut text = String::new();
                    prometheus_client::encoding::text::encode_registry(&mut text, s.registry())
                        .expect("writing to a string");
                    text.push_str(&extra());
                    text.push_str("# EOF\n");
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metadata/v1/{*rest}",
            // Script results carry up to 2 MiB of output, JSON-escaped.
            any(metadata).layer(axum::extract::DefaultBodyLimit::max(METADATA_BODY_LIMIT)),
        )
        .nest_service("/boot", files)
        .with_state(state)
}

fn ipxe(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

/// The Host header if it is a plain `host[:port]`, so nothing a client
/// sends can reach the script other than an address.
fn host(state: &BootState, headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| state.default_host.clone())
}

async fn generic(State(s): State<Arc<BootState>>, headers: HeaderMap) -> Response {
    match s.scripts.generic(&s.rack, &host(&s, &headers)) {
        Ok(text) => ipxe(text),
        Err(e) => internal(e),
    }
}

/// Parses `52-54-00-12-34-56` (iPXE's `hexhyp`) or colon-separated.
fn parse_mac(raw: &str) -> Option<String> {
    let parts: Vec<&str> = raw.split(['-', ':']).collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

#[derive(serde::Serialize)]
struct BootEvent {
    system_id: String,
    message: String,
}

async fn for_mac(
    State(s): State<Arc<BootState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(mac) = parse_mac(&raw) else {
        s.bad_requests.inc();
        return (
            StatusCode::BAD_REQUEST,
            format!("not a MAC address: {raw:?}; expected e.g. 52-54-00-12-34-56\n"),
        )
            .into_response();
    };
    let known = s.lookup(&mac);
    let purpose = known
        .as_ref()
        .map(|b| b.purpose)
        .unwrap_or(BootPurpose::Enlist);
    let host = host(&s, &headers);
    let token = match &known {
        Some(b) if purpose.is_ephemeral() => s.token(&b.system_id).await,
        _ => None,
    };
    let input = ScriptInput {
        rack: &s.rack,
        host: &host,
        mac: &mac,
        hostname: known.as_ref().map(|b| b.hostname.as_str()),
        system_id: known.as_ref().map(|b| b.system_id.as_str()),
        purpose,
        arch: "amd64",
        token: token.as_deref(),
    };
    match s.scripts.for_mac(&input) {
        Ok(text) => {
            s.scripts_served
                .get_or_create(&PurposeLabel {
                    purpose: purpose.name().into(),
                })
                .inc();
            tracing::info!(%mac, %purpose, machine = input.hostname.unwrap_or("unknown"), "boot script served");
            if let (Some(b), Some(region)) = (&known, s.region.get()) {
                // Into the machine's events, so the time from power-on to
                // iPXE (firmware, DHCP) shows in its history. Best effort.
                let (region, body) = (
                    region.clone(),
                    BootEvent {
                        system_id: b.system_id.clone(),
                        message: format!("iPXE fetched its {purpose} script from rack {}", s.rack),
                    },
                );
                tokio::spawn(async move {
                    if let Err(e) = region
                        .post::<_, serde_json::Value>("/api/v1/rack/boot-events", &body)
                        .await
                    {
                        tracing::debug!(error = %e, "boot event not recorded");
                    }
                });
            }
            ipxe(text)
        }
        Err(e) => internal(e),
    }
}

/// Forwards a machine's `/metadata/v1` call to the region as it came:
/// method, path and query, its token, content type and body; the region's
/// answer goes back as it is.
async fn metadata(
    State(s): State<Arc<BootState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(region) = s.region.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this rack forwards to no region\n",
        )
            .into_response();
    };
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(uri.path());
    // Plain word segments only: nothing (`..`, `%2e%2e`) that URL
    // normalisation could turn into a path outside /metadata/v1.
    let plain = uri.path().split('/').skip(3).all(|seg| {
        !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !plain {
        s.bad_requests.inc();
        return (
            StatusCode::BAD_REQUEST,
            format!("not a metadata path: {:?}\n", uri.path()),
        )
            .into_response();
    }
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    match region
        .forward(
            method.as_str(),
            path,
            header(header::AUTHORIZATION),
            header(header::CONTENT_TYPE),
            body.to_vec(),
        )
        .await
    {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut resp = (status, r.body).into_response();
            if let Some(ct) = r.content_type.and_then(|c| c.parse().ok()) {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            resp
        }
        Err(e) => {
            tracing::warn!(%method, %path, error = %e, "metadata request not forwarded");
            let body = serde_json::json!({"error": {
                "code": "region_unreachable",
                "message": format!("the rack could not reach the region: {e}"),
            }});
            (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
        }
    }
}

fn internal(e: crate::Error) -> Response {
    tracing::error!(error = %e, "rendering a boot script");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_in_both_notations_and_nothing_else() {
        assert_eq!(
            parse_mac("52-54-00-AB-cd-01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        assert_eq!(
            parse_mac("52:54:00:ab:cd:01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        for bad in [
            "",
            "52-54-00-ab-cd",
            "52-54-00-ab-cd-0g",
            "5254.00ab.cd01",
            "52-54-00-ab-cd-011",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
