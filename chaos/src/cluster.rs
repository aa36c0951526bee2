//! The system under test: orderflow as one process per role instance on real Kafka and Cassandra, and the
//! faults done to it (kill -9 and restart of a role process, SIGSTOP past the session timeout, restarts of
//! the broker and of the database node through `scripts/test-env/restart`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The staff token the role processes accept (the workload's cancels and restocks use it).
pub const ADMIN_TOKEN: &str = "chaos-admin-token-0123456789abcdef0123";

/// A role process: `orderflow <args>` on its own port and data directory.
#[derive(Debug)]
pub struct RoleProc {
    pub name: String,
    args: Vec<&'static str>,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    paused: bool,
    pub starts: u32,
    /// Times it exited on its own (not killed here): a role that ended and made the process exit.
    pub exits: u32,
}

impl RoleProc {
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Where and how the role processes run.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub orderflow: PathBuf,
    pub kafka: String,
    pub cql: String,
    pub dir: PathBuf,
    pub instances: usize,
    /// Extra environment for every role process (decline rules, timeouts).
    pub env: Vec<(String, String)>,
}

/// Every role process, by name.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    pub procs: BTreeMap<String, RoleProc>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// What runs: `instances` processes of every role.
fn layout(instances: usize) -> Vec<(String, Vec<&'static str>)> {
    let mut out = Vec::new();
    for i in 0..instances {
        out.push((format!("ingest-{i}"), vec!["ingest"]));
        out.push((format!("graphql-{i}"), vec!["graphql"]));
    }
    for role in ["catalog", "orders", "inventory", "payment", "fulfillment"] {
        for i in 0..instances {
            out.push((format!("{role}-{i}"), vec!["process", role]));
        }
    }
    out
}

impl Cluster {
    pub fn new(config: ClusterConfig) -> anyhow::Result<Cluster> {
        let mut procs = BTreeMap::new();
        for (name, args) in layout(config.instances) {
            let dir = config.dir.join(&name);
            std::fs::create_dir_all(&dir)?;
            let port = free_port()?;
            procs.insert(
                name.clone(),
                RoleProc { name, args, port, dir, child: None, paused: false, starts: 0, exits: 0 },
            );
        }
        Ok(Cluster { config, procs })
    }

    /// `orderflow migrate` on the CQL store (what an operator does before starting separate roles).
    pub fn migrate(&self) -> anyhow::Result<()> {
        let out = Command::new(&self.config.orderflow)
            .args(["--store", &format!("scylla://{}", self.config.cql), "migrate"])
            .envs(orderflow_platform::conformance::test_engine_env())
            .output()
            .context("running orderflow migrate")?;
        if !out.status.success() {
            bail!("orderflow migrate failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    pub fn start_all(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self.procs.keys().cloned().collect();
        for name in names {
            self.start(&name)?;
        }
        Ok(())
    }

    pub fn start(&mut self, name: &str) -> anyhow::Result<()> {
        let c = &self.config;
        let p = self.procs.get_mut(name).context("no such role process")?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(p.dir.join("orderflow.log"))?;
        let mut cmd = Command::new(&c.orderflow);
        cmd.args(&p.args)
            .envs(orderflow_platform::conformance::test_engine_env())
            .env("ORDERFLOW_BUS", format!("kafka://{}", c.kafka))
            .env("ORDERFLOW_STORE", format!("scylla://{}", c.cql))
            .env("ORDERFLOW_LISTEN", format!("127.0.0.1:{}", p.port))
            .env("ORDERFLOW_DATA_DIR", &p.dir)
            .env("ORDERFLOW_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("ORDERFLOW_SEED_CATALOG", "none")
            .env("ORDERFLOW_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &c.env {
            cmd.env(k, v);
        }
        p.child = Some(cmd.spawn().with_context(|| format!("starting {}", p.name))?);
        p.paused = false;
        p.starts += 1;
        Ok(())
    }

    /// `kill -9`: no shutdown hooks, no flushing. Returns false if it was not running.
    pub fn kill9(&mut self, name: &str) -> bool {
        let Some(p) = self.procs.get_mut(name) else { return false };
        let Some(mut child) = p.child.take() else { return false };
        if p.paused {
            signal(child.id(), "-CONT");
            p.paused = false;
        }
        let _ = child.kill();
        let _ = child.wait();
        true
    }

    /// SIGSTOP (`pause`) or SIGCONT a running process. Returns false if it was not running or already so.
    pub fn set_paused(&mut self, name: &str, pause: bool) -> bool {
        let Some(p) = self.procs.get_mut(name) else { return false };
        match &p.child {
            Some(child) if p.paused != pause => {
                signal(child.id(), if pause { "-STOP" } else { "-CONT" });
                p.paused = pause;
                true
            }
            _ => false,
        }
    }

    /// Role processes that exited on their own since the last call (the supervisor's view): each is
    /// counted and started again, as systemd or Kubernetes would.
    pub fn reap_and_restart(&mut self) -> anyhow::Result<Vec<(String, String)>> {
        let mut exited = Vec::new();
        for p in self.procs.values_mut() {
            if let Some(child) = p.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                p.child = None;
                p.exits += 1;
                exited.push((p.name.clone(), status.to_string()));
            }
        }
        for (name, _) in &exited {
            self.start(name)?;
        }
        Ok(exited)
    }

    /// Names of the running, not paused processes whose name starts with one of `prefixes` (all if empty).
    pub fn running(&self, prefixes: &[&str]) -> Vec<String> {
        self.procs
            .values()
            .filter(|p| p.child.is_some() && !p.paused)
            .filter(|p| prefixes.is_empty() || prefixes.iter().any(|x| p.name.starts_with(x)))
            .map(|p| p.name.clone())
            .collect()
    }

    pub fn bases(&self, prefix: &str) -> Vec<String> {
        self.procs.values().filter(|p| p.name.starts_with(prefix)).map(RoleProc::base).collect()
    }

    pub fn stop_all(&mut self) {
        let names: Vec<String> = self.procs.keys().cloned().collect();
        for name in names {
            self.kill9(&name);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// Waits until every process answers `/readyz` (bus, store and roles up), up to `limit`.
pub async fn wait_ready(http: &reqwest::Client, bases: &[String], limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    for base in bases {
        loop {
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            if started.elapsed() > limit {
                bail!("{base} not ready after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Restarts the broker or the database node (SIGKILL, then start on the same ports and data) and waits
/// until it answers again; returns how long it was gone. A failed start is tried again (up to three
/// times): the harness's job is to bring the server back, whatever the fault did.
pub async fn restart_engine(scripts: &Path, run_dir: &Path, what: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut last = String::new();
    for attempt in 1..=3 {
        let out = tokio::process::Command::new(scripts.join("test-env/restart"))
            .args([what, "--kill"])
            .env("ORDERFLOW_TEST_RUN_DIR", run_dir)
            .output()
            .await
            .with_context(|| format!("running scripts/test-env/restart {what}"))?;
        if out.status.success() {
            return Ok(started.elapsed());
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("chaos: restarting {what} failed (attempt {attempt}): {last}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    bail!("could not restart {what}: {last}")
}
