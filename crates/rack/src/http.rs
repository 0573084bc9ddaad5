//! The rack's HTTP boot server: iPXE scripts rendered per MAC from the
//! current configuration, boot files (with Range requests), metrics.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use kumo_model::boot::BootPurpose;
use kumo_model::network::RackBoot;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tower_http::services::ServeDir;

use crate::script::{ScriptInput, Scripts};

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
}

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
        })
    }

    /// Replaces what each known MAC boots into.
    pub fn set_boot_table(&self, boot: &[RackBoot]) {
        let table = boot
            .iter()
            .map(|b| (b.mac.to_ascii_lowercase(), b.clone()))
            .collect();
        *self.table.write().expect("boot table lock") = table;
    }

    /// Adds the rack's other metrics (DHCP, DNS, TFTP) to `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
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
    let input = ScriptInput {
        rack: &s.rack,
        host: &host,
        mac: &mac,
        hostname: known.as_ref().map(|b| b.hostname.as_str()),
        system_id: known.as_ref().map(|b| b.system_id.as_str()),
        purpose,
        arch: "amd64",
    };
    match s.scripts.for_mac(&input) {
        Ok(text) => {
            s.scripts_served
                .get_or_create(&PurposeLabel {
                    purpose: purpose.name().into(),
                })
                .inc();
            tracing::info!(%mac, %purpose, machine = input.hostname.unwrap_or("unknown"), "boot script served");
            ipxe(text)
        }
        Err(e) => internal(e),
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
