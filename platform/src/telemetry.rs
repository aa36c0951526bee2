//! Logs (tracing, to stderr; `RUST_LOG` or `ORDERFLOW_LOG` filter) and metrics (the `metrics` facade,
//! rendered in Prometheus text format at `GET /metrics`). Counter names follow
//! `orderflow_<name>_<unit>_total` with low-cardinality labels.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the log subscriber once; later calls (tests) do nothing.
pub fn init_logging(default_filter: &str) {
    let filter = std::env::var("ORDERFLOW_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default_filter.to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Installs the Prometheus recorder once and returns its handle (`None` if another recorder was
/// installed first, e.g. by a test harness).
pub fn prometheus() -> Option<PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
                .ok()?
                // Statements per grouped CQL write request (a count, not seconds).
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("orderflow_cql_write_group_statements".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0],
                )
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}
