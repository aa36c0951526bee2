//! Latency and error accounting: one HDR histogram per operation for the whole run, plus one per
//! operation per second of the run for the latency-over-time chart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest latency a histogram holds (longer ones are clamped to it): two minutes, in µs.
const MAX_LATENCY_US: u64 = 120_000_000;
/// Per-second windows kept for the chart: one hour; later completions land in the last window.
const MAX_WINDOWS: usize = 3600;
/// Error messages kept verbatim for the report (the rest are only counted by kind).
const MAX_ERROR_SAMPLES: usize = 8;

/// An empty latency histogram of microseconds (1 µs .. 2 min).
pub(crate) fn histogram() -> Histogram<u64> {
    // Constant, valid bounds (1 µs .. 2 min, 3 significant digits): this cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// A duration as histogram microseconds, clamped to the histogram's range.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, MAX_LATENCY_US)
}

#[derive(Debug)]
struct OpStats {
    latency_us: Histogram<u64>,
    errors: u64,
}

impl OpStats {
    fn new() -> Self {
        Self { latency_us: histogram(), errors: 0 }
    }
}

/// Collects every request's outcome. Callers hold its lock only for one `record` (no await inside).
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    ops: BTreeMap<&'static str, OpStats>,
    windows: Vec<BTreeMap<&'static str, OpStats>>,
    error_kinds: BTreeMap<String, u64>,
    error_samples: Vec<String>,
}

impl Recorder {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            ops: BTreeMap::new(),
            windows: Vec::new(),
            error_kinds: BTreeMap::new(),
            error_samples: Vec::new(),
        }
    }

    /// Records one request of `op` that completed at `done` after `latency` (measured from the intended
    /// send time in open loop); `error` is `(kind, message)` when it failed.
    pub fn record(&mut self, op: &'static str, done: Instant, latency: Duration, error: Option<(String, String)>) {
        let us = micros(latency);
        let failed = error.is_some();
        let stats = self.ops.entry(op).or_insert_with(OpStats::new);
        stats.latency_us.saturating_record(us);
        let second = usize::try_from(done.saturating_duration_since(self.started).as_secs())
            .unwrap_or(usize::MAX)
            .min(MAX_WINDOWS - 1);
        if self.windows.len() <= second {
            self.windows.resize_with(second + 1, BTreeMap::new);
        }
        if let Some(window) = self.windows.get_mut(second) {
            let w = window.entry(op).or_insert_with(OpStats::new);
            w.latency_us.saturating_record(us);
            w.errors += u64::from(failed);
        }
        if let Some((kind, message)) = error {
            stats.errors += 1;
            *self.error_kinds.entry(format!("{op}:{kind}")).or_default() += 1;
            if self.error_samples.len() < MAX_ERROR_SAMPLES {
                self.error_samples.push(format!("{op}: {message}"));
            }
        }
    }

    /// Requests recorded so far and how many failed.
    pub fn totals(&self) -> (u64, u64) {
        self.ops.values().fold((0, 0), |(n, e), s| (n + s.latency_us.len(), e + s.errors))
    }

    /// The summary over `elapsed` (the length of the load phase).
    pub fn report(&self, elapsed: Duration) -> StatsReport {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut all = OpStats::new();
        let mut ops = Vec::new();
        for (name, s) in &self.ops {
            // Same bounds on both sides: adding cannot fail; a failure would only drop the total line.
            let _ = all.latency_us.add(&s.latency_us);
            all.errors += s.errors;
            ops.push(OpReport::of(name, s, secs));
        }
        let timeline = self
            .windows
            .iter()
            .enumerate()
            .map(|(second, w)| WindowReport {
                second: second as u64,
                ops: w
                    .iter()
                    .map(|(name, s)| {
                        let l = LatencyMs::of(&s.latency_us);
                        ((*name).to_owned(), WindowOp { requests: s.latency_us.len(), errors: s.errors, latency_ms: l })
                    })
                    .collect(),
            })
            .collect();
        StatsReport {
            total: OpReport::of("total", &all, secs),
            ops,
            errors_by_kind: self.error_kinds.clone(),
            error_samples: self.error_samples.clone(),
            timeline,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencyMs {
    /// Percentiles of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    /// Percentiles of plain millisecond samples (end-to-end times from order timelines).
    pub fn of_millis(samples: &[u64]) -> Self {
        let mut h = histogram();
        for ms in samples {
            h.saturating_record(ms.saturating_mul(1000).clamp(1, MAX_LATENCY_US));
        }
        Self::of(&h)
    }
}

/// One operation over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    pub op: String,
    pub requests: u64,
    pub errors: u64,
    /// Errors / requests, in percent.
    pub error_rate_pct: f64,
    pub throughput_per_s: f64,
    pub latency_ms: LatencyMs,
}

impl OpReport {
    fn of(name: &str, s: &OpStats, secs: f64) -> Self {
        let requests = s.latency_us.len();
        Self {
            op: name.to_owned(),
            requests,
            errors: s.errors,
            error_rate_pct: if requests == 0 { 0.0 } else { 100.0 * s.errors as f64 / requests as f64 },
            throughput_per_s: requests as f64 / secs,
            latency_ms: LatencyMs::of(&s.latency_us),
        }
    }
}

/// One second of the run (by completion time).
#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    pub second: u64,
    pub ops: BTreeMap<String, WindowOp>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowOp {
    pub requests: u64,
    pub errors: u64,
    pub latency_ms: LatencyMs,
}

/// What [`Recorder::report`] returns.
#[derive(Debug, Clone, Serialize)]
pub struct StatsReport {
    pub total: OpReport,
    pub ops: Vec<OpReport>,
    /// `op:kind` -> count; kinds are `transport`, `http_<status>`, `graphql_errors`, `decode`.
    pub errors_by_kind: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
    pub timeline: Vec<WindowReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_errors_and_windows() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0);
        for i in 1..=100u64 {
            r.record("a", t0 + Duration::from_millis(i * 20), Duration::from_millis(i), None);
        }
        r.record("a", t0, Duration::from_millis(5), Some(("http_500".into(), "boom".into())));
        let rep = r.report(Duration::from_secs(2));
        assert_eq!(rep.total.requests, 101);
        assert_eq!(rep.total.errors, 1);
        assert!((rep.ops[0].latency_ms.p50 - 50.0).abs() < 1.0, "{:?}", rep.ops[0].latency_ms);
        assert!((rep.ops[0].latency_ms.max - 100.0).abs() < 0.2);
        assert_eq!(rep.timeline.len(), 3);
        assert_eq!(rep.errors_by_kind.get("a:http_500"), Some(&1));
        assert_eq!(LatencyMs::of_millis(&[10, 20, 30]).max.round(), 30.0);
    }
}
