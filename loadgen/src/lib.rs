//! `orderflow-load`: drives a running orderflow over HTTP and GraphQL and measures it next to
//! baselines taken in the same run (a bare axum handler, raw fjall writes, raw Kafka produce and raw CQL
//! writes).
//!
//! A tool crate: the library exists so the binary and the smoke test share one implementation, and it
//! reports errors with `anyhow` like a binary does.

pub mod baseline;
pub mod chart;
pub mod client;
pub mod cpu;
pub mod load;
pub mod stats;

pub use load::{CheckoutReport, Load, Report, RunConfig, Scenario, run};

use serde::Serialize;

/// The product next to the bare baseline for one operation: `ratio = product / bare`.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub op: String,
    pub product_per_s: f64,
    pub bare_per_s: f64,
    pub throughput_ratio: f64,
    pub product_p99_ms: f64,
    pub bare_p99_ms: f64,
    pub p99_ratio: f64,
}

impl Comparison {
    /// Compares `place_order` of two runs made with the same load settings.
    pub fn place(product: &Report, bare: &Report) -> Option<Self> {
        let (p, b) = (product.op("place_order")?, bare.op("place_order")?);
        Some(Self {
            op: "place_order".into(),
            product_per_s: p.throughput_per_s,
            bare_per_s: b.throughput_per_s,
            throughput_ratio: p.throughput_per_s / b.throughput_per_s.max(1e-9),
            product_p99_ms: p.latency_ms.p99,
            bare_p99_ms: b.latency_ms.p99,
            p99_ratio: p.latency_ms.p99 / b.latency_ms.p99.max(1e-9),
        })
    }
}

/// A human summary of a report, one line per operation.
pub fn summary(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let load = match report.load {
        Load::Closed { users, iterations, think_ms } => format!(
            "closed loop, {users} users{}{}",
            iterations.map(|i| format!(", {i} iterations each")).unwrap_or_default(),
            if think_ms > 0 {
                format!(", think time {think_ms} ms +-{:.0} %", report.think_jitter * 100.0)
            } else {
                String::new()
            }
        ),
        Load::Open { rate_per_s, .. } => format!("open loop, {rate_per_s} req/s"),
    };
    let _ = writeln!(
        out,
        "scenario {:?} ({load}) against {} for {:.1} s",
        report.scenario, report.target, report.elapsed_s
    );
    let _ = writeln!(
        out,
        "{:<12} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op", "requests", "req/s", "err %", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for o in report.stats.ops.iter().chain(std::iter::once(&report.stats.total)) {
        let l = &o.latency_ms;
        let _ = writeln!(
            out,
            "{:<12} {:>9} {:>9.1} {:>8.3} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            o.op, o.requests, o.throughput_per_s, o.error_rate_pct, l.p50, l.p90, l.p99, l.p999, l.max
        );
    }
    for (kind, n) in &report.stats.errors_by_kind {
        let _ = writeln!(out, "  errors {kind}: {n}");
    }
    for sample in &report.stats.error_samples {
        let _ = writeln!(out, "  e.g. {sample}");
    }
    if let Some(e) = &report.e2e {
        let _ = writeln!(
            out,
            "end-to-end placed -> CONFIRMED/REJECTED over {} sampled orders: {} confirmed, {} rejected, {} not finished; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            e.sampled, e.confirmed, e.rejected, e.not_terminal, e.latency_ms.p50, e.latency_ms.p99, e.latency_ms.max
        );
    }
    if let Some(p) = &report.pipeline {
        let _ = writeln!(
            out,
            "pipeline: {} orders accepted, {} processed during the load ({:.1}/s), {} after draining",
            p.accepted_orders, p.processed_during_load, p.processed_per_s_during_load, p.processed_after_drain
        );
    }
    if let Some(c) = &report.checkout {
        let l = &c.latency_ms;
        let s = &c.server_latency_ms;
        let _ = writeln!(
            out,
            "checkout: {} completed = {:.1} checkouts/s ({} CONFIRMED, {} REJECTED, {} CANCELLED); errors {} ({:.3} %: \
             {} timed out after {:.0} s, {} placements failed); {} unfinished at the end of the run; {} started",
            c.completed,
            c.completed_per_s,
            c.confirmed,
            c.rejected,
            c.cancelled,
            c.errors,
            c.error_rate_pct,
            c.timed_out,
            c.timeout_s,
            c.place_failed,
            c.unfinished_at_end,
            c.started
        );
        let _ = writeln!(
            out,
            "checkout placed -> final, client (POST sent -> poll that saw it, every {:.0} ms): p50 {:.1} ms, p90 {:.1} ms, \
             p99 {:.1} ms, max {:.1} ms; server timeline: p50 {:.1} ms, p99 {:.1} ms; {:.1} polls per checkout",
            c.poll_interval_ms, l.p50, l.p90, l.p99, l.max, s.p50, s.p99, c.polls_per_checkout
        );
    }
    for c in &report.cpu {
        let fmt = |v: Option<f64>, unit: &str| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}{unit}"));
        let _ = writeln!(
            out,
            "cpu {} (pid {}): idle {:.3} cores over {:.1} s; {} CPU in {:.1} s ({} cores), net of idle {}; \
             {} per order ({} {})",
            c.label,
            c.pid,
            c.idle_rate,
            c.idle_s,
            fmt(c.run_cpu_s, " s"),
            c.run_s,
            fmt(c.run_cores, ""),
            fmt(c.net_cpu_s, " s"),
            fmt(c.cpu_ms_per_order, " ms"),
            c.orders,
            c.orders_counted
        );
    }
    if let (Some(cap), Some(last)) = (report.max_orders, report.placement_progress.last()) {
        let _ = writeln!(out, "placed {} of at most {cap} orders in {:.1} s", last.orders, last.at_s);
    }
    out
}
