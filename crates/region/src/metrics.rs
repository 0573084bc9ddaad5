//! Region metrics, rendered in Prometheus text format at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PowerLabels {
    pub op: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

pub struct Metrics {
    registry: Registry,
    pub power_operations: Family<PowerLabels, Counter>,
    pub api_requests: Family<ApiLabels, Counter>,
    pub transitions: Counter,
    pub watchdog_expiries: Counter,
    pub machines: Family<StatusLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kumo_region");
        let power_operations = Family::<PowerLabels, Counter>::default();
        let api_requests = Family::<ApiLabels, Counter>::default();
        let transitions = Counter::default();
        let watchdog_expiries = Counter::default();
        let machines = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "power_operations",
            "Power operations by op and result",
            power_operations.clone(),
        );
        registry.register(
            "api_requests",
            "API requests by method and status",
            api_requests.clone(),
        );
        registry.register(
            "machine_transitions",
            "Machine lifecycle transitions",
            transitions.clone(),
        );
        registry.register(
            "watchdog_expiries",
            "Machines failed by the watchdog",
            watchdog_expiries.clone(),
        );
        registry.register("machines", "Machines by status", machines.clone());
        Metrics {
            registry,
            power_operations,
            api_requests,
            transitions,
            watchdog_expiries,
            machines,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a string cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
