//! CPU time of other processes on this machine (the server, the broker, the database) during a run, from
//! `/proc/<pid>/stat` (utime + stime, every thread of the process): read over an idle window just before the
//! load to get each process's background rate, then at the start and the end of the load phase. What the
//! load cost a process is its CPU during the run minus its idle rate over the run's length.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

/// `LABEL=PID`, as `--cpu-pid` takes it.
pub fn parse_pid_arg(s: &str) -> Result<(String, u32), String> {
    let (label, pid) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected LABEL=PID"))?;
    let label = label.trim();
    if label.is_empty() {
        return Err(format!("{s:?}: the label is empty"));
    }
    let pid: u32 = pid.trim().parse().map_err(|e| format!("{s:?}: the pid is not a number ({e})"))?;
    Ok((label.to_owned(), pid))
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_ticks(&stat).with_context(|| format!("parsing {path}"))
}

/// Fields 14 (utime) and 15 (stime) of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces or parentheses itself, so fields are counted from the last `)`.
fn parse_stat_ticks(stat: &str) -> anyhow::Result<u64> {
    let rest = stat.rfind(')').and_then(|i| stat.get(i + 1..)).context("no ')' after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    let field = |i: usize| -> anyhow::Result<u64> {
        let f = fields.get(i).with_context(|| format!("only {} fields after the command name", fields.len()))?;
        f.parse::<u64>().with_context(|| format!("field {} is {f:?}", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// Longest wait for the watched processes to settle before the idle window (see [`CpuWatch::idle`]).
const SETTLE_MAX: Duration = Duration::from_secs(60);
/// Length of one settling sample.
const SETTLE_STEP: Duration = Duration::from_secs(3);
/// Settled: the combined rate fell by less than this (cores) from one sample to the next.
const SETTLE_TOLERANCE_CORES: f64 = 0.03;

/// What the load cost one process.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    pub label: String,
    pub pid: u32,
    /// Length of the idle window measured just before the load (0: none, the idle rate is taken as 0).
    pub idle_s: f64,
    pub idle_cpu_s: f64,
    /// CPU-seconds per second while idle (1.0 = one core busy all the time).
    pub idle_rate: f64,
    /// The load phase, start to last answer.
    pub run_s: f64,
    /// `None` when the process could not be read at the end (it exited).
    pub run_cpu_s: Option<f64>,
    /// `run_cpu_s - idle_rate x run_s`: the CPU the load made the process spend.
    pub net_cpu_s: Option<f64>,
    /// Average cores the process kept busy during the run.
    pub run_cores: Option<f64>,
    /// What the per-order figure divides by (see `orders_counted`).
    pub orders: u64,
    pub orders_counted: String,
    /// `net_cpu_s / orders`, in ms.
    pub cpu_ms_per_order: Option<f64>,
}

#[derive(Debug)]
struct Probe {
    label: String,
    pid: u32,
    idle: Option<(Duration, u64)>,
    start: u64,
    end: Option<u64>,
}

/// The processes watched during one run.
#[derive(Debug)]
pub struct CpuWatch {
    probes: Vec<Probe>,
    ticks_per_s: f64,
    run: Duration,
}

impl CpuWatch {
    /// Checks that every process can be read now (a wrong pid fails before the run, not after).
    pub fn new(pids: &[(String, u32)], clk_tck: u64) -> anyhow::Result<Self> {
        if clk_tck == 0 {
            bail!("--clk-tck must be positive (see `getconf CLK_TCK`)");
        }
        let mut probes = Vec::with_capacity(pids.len());
        for (label, pid) in pids {
            let start = cpu_ticks(*pid).with_context(|| format!("--cpu-pid {label}={pid}"))?;
            probes.push(Probe { label: label.clone(), pid: *pid, idle: None, start, end: None });
        }
        Ok(Self { probes, ticks_per_s: clk_tck as f64, run: Duration::ZERO })
    }

    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// Measures every process's background rate over `window`, sending nothing. First waits (at most
    /// [`SETTLE_MAX`]) until the processes' combined rate stops falling: a database that is still flushing
    /// and compacting after an earlier run would otherwise count that work as its idle rate (seen: an idle
    /// rate above the rate under load, and a negative CPU per order).
    pub async fn idle(&mut self, window: Duration) -> anyhow::Result<()> {
        if self.probes.is_empty() || window.is_zero() {
            return Ok(());
        }
        let started = Instant::now();
        let mut last_rate = f64::INFINITY;
        while started.elapsed() < SETTLE_MAX {
            let a: u64 = self.read_all()?.iter().sum();
            tokio::time::sleep(SETTLE_STEP).await;
            let b: u64 = self.read_all()?.iter().sum();
            let rate = b.saturating_sub(a) as f64 / self.ticks_per_s / SETTLE_STEP.as_secs_f64();
            if last_rate - rate < SETTLE_TOLERANCE_CORES {
                break;
            }
            last_rate = rate;
        }
        let before = self.read_all()?;
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let after = self.read_all()?;
        let took = t0.elapsed();
        for ((p, a), b) in self.probes.iter_mut().zip(before).zip(after) {
            p.idle = Some((took, b.saturating_sub(a)));
        }
        Ok(())
    }

    /// Reads every process at the start of the load phase.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let now = self.read_all()?;
        for (p, t) in self.probes.iter_mut().zip(now) {
            p.start = t;
        }
        Ok(())
    }

    /// Reads every process at the end of the load phase, `run` after [`CpuWatch::start`]. A process that
    /// cannot be read any more gets no figure (the run's other figures stay valid).
    pub fn stop(&mut self, run: Duration) {
        self.run = run;
        for p in &mut self.probes {
            p.end = cpu_ticks(p.pid).ok();
        }
    }

    fn read_all(&self) -> anyhow::Result<Vec<u64>> {
        self.probes
            .iter()
            .map(|p| cpu_ticks(p.pid).with_context(|| format!("{} (pid {}) is gone", p.label, p.pid)))
            .collect()
    }

    /// The figures, per order of `orders` (described by `counted`).
    pub fn report(&self, orders: u64, counted: &str) -> Vec<CpuReport> {
        let secs = |ticks: u64| ticks as f64 / self.ticks_per_s;
        let run_s = self.run.as_secs_f64();
        self.probes
            .iter()
            .map(|p| {
                let (idle_s, idle_cpu_s) = p.idle.map_or((0.0, 0.0), |(d, t)| (d.as_secs_f64(), secs(t)));
                let idle_rate = if idle_s > 0.0 { idle_cpu_s / idle_s } else { 0.0 };
                let run_cpu_s = p.end.map(|e| secs(e.saturating_sub(p.start)));
                let net_cpu_s = run_cpu_s.map(|c| c - idle_rate * run_s);
                CpuReport {
                    label: p.label.clone(),
                    pid: p.pid,
                    idle_s,
                    idle_cpu_s,
                    idle_rate,
                    run_s,
                    run_cpu_s,
                    net_cpu_s,
                    run_cores: run_cpu_s.map(|c| c / run_s.max(1e-9)),
                    orders,
                    orders_counted: counted.to_owned(),
                    cpu_ms_per_order: net_cpu_s.filter(|_| orders > 0).map(|n| n * 1000.0 / orders as f64),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (java (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 750 250 0 0 20 0 60 0 99 1 2 3";
        assert_eq!(parse_stat_ticks(line).unwrap(), 1000);
        assert!(parse_stat_ticks("4242 (short) S 1 2").is_err());
        assert!(parse_stat_ticks("no parenthesis").is_err());
        // This process can be read, and its counter never goes back.
        let me = std::process::id();
        let a = cpu_ticks(me).unwrap();
        assert!(cpu_ticks(me).unwrap() >= a);
    }

    #[test]
    fn pid_arguments() {
        assert_eq!(parse_pid_arg("cassandra=123"), Ok(("cassandra".into(), 123)));
        assert!(parse_pid_arg("cassandra").is_err());
        assert!(parse_pid_arg("=1").is_err());
        assert!(parse_pid_arg("x=y").is_err());
    }

    #[test]
    fn per_order_cost_subtracts_the_idle_rate() {
        let mut w = CpuWatch {
            probes: vec![Probe {
                label: "db".into(),
                pid: 1,
                idle: Some((Duration::from_secs(10), 100)), // 1 s of CPU in 10 s: 0.1 core idle
                start: 1000,
                end: Some(1600), // 6 s of CPU during the run
            }],
            ticks_per_s: 100.0,
            run: Duration::ZERO,
        };
        w.run = Duration::from_secs(20);
        let r = &w.report(400, "checkouts completed")[0];
        assert!((r.idle_rate - 0.1).abs() < 1e-9);
        assert!((r.net_cpu_s.unwrap() - 4.0).abs() < 1e-9); // 6 - 0.1 x 20
        assert!((r.cpu_ms_per_order.unwrap() - 10.0).abs() < 1e-9);
        assert!((r.run_cores.unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(w.report(0, "none")[0].cpu_ms_per_order, None);
    }
}
