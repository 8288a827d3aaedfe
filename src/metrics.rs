//! Counters and histograms, rendered as Prometheus text at `GET /metrics`.
//!
//! Owns every `iron_proxy_*` metric (listed in docs/metrics.md, which a test
//! compares with a live scrape). Labels are decisions, statuses and
//! credential *names*: no label or value can carry a credential value.
//! The request path touches only pre-resolved handles (atomic increments):
//! label lookups happen once per (decision, status) and once per credential
//! per snapshot, never per request.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

const DECISIONS: [&str; 3] = ["allow", "deny", "error"];
const STATUSES: usize = 600;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_handles: Box<[OnceLock<IntCounter>]>,
    pub upstream_latency: Histogram,
    swaps: IntCounterVec,
    pub reloads: IntCounter,
    pub reload_failures: IntCounter,
    pub generation: IntGauge,
    pub ca_generation: IntGauge,
    pub leaf_hits: IntCounter,
    pub leaf_misses: IntCounter,
    pub leaf_mints: IntCounter,
    pub open_connections: IntGauge,
    pub refused_connections: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable_metric(name, e));
    register(registry, c.clone(), name);
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable_metric(name, e));
    register(registry, g.clone(), name);
    g
}

fn register<C: prometheus::core::Collector + 'static>(registry: &Registry, c: C, name: &str) {
    if let Err(e) = registry.register(Box::new(c)) {
        unreachable_metric(name, e)
    }
}

/// Metric definitions are constants of this file: a failure to build one is
/// a programming error caught by the unit test below, never input-driven.
#[allow(clippy::panic)]
fn unreachable_metric(name: &str, e: prometheus::Error) -> ! {
    panic!("metric {name} is mis-defined: {e}")
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "iron_proxy_requests_total",
                "Requests answered, by decision and status.",
            ),
            &["decision", "status"],
        )
        .unwrap_or_else(|e| unreachable_metric("iron_proxy_requests_total", e));
        register(&registry, requests.clone(), "iron_proxy_requests_total");
        let swaps = IntCounterVec::new(
            Opts::new(
                "iron_proxy_swaps_total",
                "Requests into which a credential's real value was swapped, by credential name.",
            ),
            &["credential"],
        )
        .unwrap_or_else(|e| unreachable_metric("iron_proxy_swaps_total", e));
        register(&registry, swaps.clone(), "iron_proxy_swaps_total");
        let upstream_latency = Histogram::with_opts(
            HistogramOpts::new(
                "iron_proxy_upstream_latency_seconds",
                "Time from sending a request upstream to its response head.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
        )
        .unwrap_or_else(|e| unreachable_metric("iron_proxy_upstream_latency_seconds", e));
        register(
            &registry,
            upstream_latency.clone(),
            "iron_proxy_upstream_latency_seconds",
        );
        let r = &registry;
        Metrics {
            request_handles: (0..DECISIONS.len() * STATUSES)
                .map(|_| OnceLock::new())
                .collect(),
            requests,
            upstream_latency,
            swaps,
            reloads: counter(r, "iron_proxy_reloads_total", "Successful reloads."),
            reload_failures: counter(
                r,
                "iron_proxy_reload_failures_total",
                "Reloads refused because something did not validate; the previous snapshot stayed.",
            ),
            generation: gauge(
                r,
                "iron_proxy_snapshot_generation",
                "Generation of the live snapshot; +1 per successful reload or credential update.",
            ),
            ca_generation: gauge(
                r,
                "iron_proxy_ca_generation",
                "Generation of the signing CA; +1 each time the CA certificate changes.",
            ),
            leaf_hits: counter(
                r,
                "iron_proxy_leaf_cache_hits_total",
                "Tunnels served a cached leaf certificate.",
            ),
            leaf_misses: counter(
                r,
                "iron_proxy_leaf_cache_misses_total",
                "Tunnels that needed a new leaf certificate.",
            ),
            leaf_mints: counter(
                r,
                "iron_proxy_leaf_mints_total",
                "Leaf certificates signed.",
            ),
            open_connections: gauge(
                r,
                "iron_proxy_open_connections",
                "Open downstream connections, tunnels included.",
            ),
            refused_connections: counter(
                r,
                "iron_proxy_refused_connections_total",
                "Connections refused over limits.max_connections.",
            ),
            registry,
        }
    }

    /// Counts one answered request.
    pub fn request(&self, decision: &str, status: u16) {
        let d = DECISIONS.iter().position(|x| *x == decision).unwrap_or(2);
        let s = usize::from(status).min(STATUSES - 1);
        let handle = self.request_handles[d * STATUSES + s].get_or_init(|| {
            self.requests
                .with_label_values(&[DECISIONS[d], &s.to_string()])
        });
        handle.inc();
    }

    /// The swap counter for one credential; resolve once per snapshot.
    pub fn swap_counter(&self, credential: &str) -> IntCounter {
        self.swaps.with_label_values(&[credential])
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_labels() {
        let m = Metrics::new();
        m.request("allow", 200);
        m.request("deny", 403);
        m.request("allow", 200);
        m.swap_counter("gh").inc();
        m.upstream_latency.observe(0.003);
        let text = m.render();
        assert!(
            text.contains("iron_proxy_requests_total{decision=\"allow\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("iron_proxy_requests_total{decision=\"deny\",status=\"403\"} 1"));
        assert!(text.contains("iron_proxy_swaps_total{credential=\"gh\"} 1"));
        assert!(text.contains("iron_proxy_upstream_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("iron_proxy_reload_failures_total 0"));
    }
}
