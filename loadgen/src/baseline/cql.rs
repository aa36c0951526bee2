//! Raw CQL write rates with the product's driver and consistency: prepared single-row INSERTs at
//! LOCAL_QUORUM, then lightweight transactions (`INSERT ... IF NOT EXISTS`, Paxos at SERIAL) on fresh keys,
//! into a throwaway keyspace that is dropped afterwards.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::Row;
use serde::Serialize;

use super::distributed::{self, DISTRIBUTED_ORDER_PLAN, PlanTotals, Step};

/// Writes made before each measured phase (connections, prepared statements, the JIT).
const WARM_UP_WRITES: u64 = 2_000;
/// A bound no run reaches, on top of the duration.
const MAX_WRITES: u64 = 1_000_000_000;

/// One measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub duration_s: f64,
    pub writes: u64,
    pub errors: u64,
    /// LWTs that answered `[applied] = false` (none expected: every key is new).
    pub not_applied: u64,
    pub per_s: f64,
    pub value_bytes: usize,
}

/// The raw CQL figures.
#[derive(Debug, Clone, Serialize)]
pub struct CqlReport {
    pub contact_points: Vec<String>,
    pub concurrency: usize,
    /// Prepared single-row INSERT at LOCAL_QUORUM.
    pub plain: PhaseReport,
    /// `INSERT ... IF NOT EXISTS` on a new key: one Paxos round at SERIAL, committed at LOCAL_QUORUM.
    pub lwt: PhaseReport,
    pub plan: PlanTotals,
    /// The plan the totals come from, step by step.
    pub plan_steps: &'static [Step],
    /// `1 / (plan.plain_rows / plain.per_s + plan.lwts / lwt.per_s)`.
    pub orders_per_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Lwt,
}

/// Measures `duration` of plain INSERTs, then `duration` of LWTs, each with at most `concurrency` requests
/// in flight, in a fresh keyspace that is dropped at the end.
pub async fn run_cql(
    contact_points: &[String],
    security: &orderflow_platform::connection::CqlSecurity,
    concurrency: usize,
    duration: Duration,
    plain_bytes: usize,
    lwt_bytes: usize,
) -> anyhow::Result<CqlReport> {
    if contact_points.is_empty() {
        bail!("no CQL contact point given");
    }
    // The product's session: its execution profile (consistency, timeouts) and login.
    let session = orderflow_cql::session(contact_points, security)
        .await
        .with_context(|| format!("connecting to {}", contact_points.join(",")))?;
    let keyspace = format!("orderflow_bench_{}", uuid::Uuid::new_v4().simple());
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            (),
        )
        .await
        .context("creating the bench keyspace")?;
    let outcome = measure(&session, &keyspace, concurrency.max(1), duration, plain_bytes, lwt_bytes).await;
    // Throwaway: drop it whatever happened.
    if let Err(e) = session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ()).await {
        eprintln!("could not drop bench keyspace {keyspace}: {e}");
    }
    let (plain, lwt) = outcome?;
    let plan = distributed::totals(DISTRIBUTED_ORDER_PLAN);
    Ok(CqlReport {
        contact_points: contact_points.to_vec(),
        concurrency: concurrency.max(1),
        orders_per_s: distributed::cql_orders_per_s(plain.per_s, lwt.per_s, &plan),
        plain,
        lwt,
        plan,
        plan_steps: DISTRIBUTED_ORDER_PLAN,
    })
}

async fn measure(
    session: &Session,
    keyspace: &str,
    concurrency: usize,
    duration: Duration,
    plain_bytes: usize,
    lwt_bytes: usize,
) -> anyhow::Result<(PhaseReport, PhaseReport)> {
    for table in ["plain_rows", "lwt_rows"] {
        session
            .query_unpaged(format!("CREATE TABLE {keyspace}.{table} (id text PRIMARY KEY, v text)"), ())
            .await
            .with_context(|| format!("creating {keyspace}.{table}"))?;
    }
    session.await_schema_agreement().await.context("schema agreement")?;
    let mut plain = session
        .prepare(format!("INSERT INTO {keyspace}.plain_rows (id, v) VALUES (?, ?)"))
        .await
        .context("preparing the INSERT")?;
    plain.set_is_idempotent(true);
    // Never idempotent: the product never lets the driver retry an LWT.
    let mut lwt = session
        .prepare(format!("INSERT INTO {keyspace}.lwt_rows (id, v) VALUES (?, ?) IF NOT EXISTS"))
        .await
        .context("preparing the LWT")?;
    lwt.set_is_idempotent(false);
    let plain = phase(session, &plain, Kind::Plain, concurrency, duration, plain_bytes).await?;
    let lwt = phase(session, &lwt, Kind::Lwt, concurrency, duration, lwt_bytes).await?;
    Ok((plain, lwt))
}

fn value(len: usize) -> String {
    // JSON-like, like the product's order documents.
    let mut v = String::from("{\"id\":\"ld-bench\",\"pad\":\"");
    while v.len() < len {
        v.push_str("SKU-LOAD-0 quantity 2 unit_price 4.50 ");
    }
    v.truncate(len);
    v
}

/// `Ok(true)`: written (applied); `Ok(false)`: an LWT that did not apply.
fn applied(kind: Kind, result: scylla::response::query_result::QueryResult) -> anyhow::Result<bool> {
    if kind == Kind::Plain {
        return Ok(true);
    }
    let rows = result.into_rows_result().context("LWT without a result row")?;
    let first = rows.rows::<Row>()?.next().transpose()?;
    first
        .as_ref()
        .and_then(|r| r.columns.first())
        .and_then(|c| c.as_ref())
        .and_then(|v| v.as_boolean())
        .context("LWT result without a boolean [applied] column")
}

async fn phase(
    session: &Session,
    stmt: &PreparedStatement,
    kind: Kind,
    concurrency: usize,
    duration: Duration,
    value_bytes: usize,
) -> anyhow::Result<PhaseReport> {
    let v = value(value_bytes);
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let write = |i: u64| {
        let v = &v;
        let run_id = &run_id;
        async move {
            let key = format!("{run_id}-{i}");
            let result = session.execute_unpaged(stmt, (key.as_str(), v.as_str())).await?;
            applied(kind, result)
        }
    };
    let mut pending = FuturesUnordered::new();
    let mut next = 0u64;
    let mut warm_errors = 0u64;
    while next < WARM_UP_WRITES || !pending.is_empty() {
        while pending.len() < concurrency && next < WARM_UP_WRITES {
            pending.push(write(next));
            next += 1;
        }
        if let Some(Err(e)) = pending.next().await {
            warm_errors += 1;
            if warm_errors == 1 {
                eprintln!("warm-up write failed: {e:#}");
            }
        }
    }
    if warm_errors == WARM_UP_WRITES {
        bail!("no write succeeded during the warm-up");
    }
    let started = Instant::now();
    let deadline = started + duration;
    let (mut writes, mut errors, mut not_applied) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    loop {
        while pending.len() < concurrency && Instant::now() < deadline && next < MAX_WRITES {
            pending.push(write(next));
            next += 1;
        }
        match pending.next().await {
            Some(Ok(true)) => writes += 1,
            Some(Ok(false)) => not_applied += 1,
            Some(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    if let Some(e) = first_error {
        eprintln!("{errors} {kind:?} write(s) failed, the first with: {e:#}");
    }
    Ok(PhaseReport { duration_s: secs, writes, errors, not_applied, per_s: writes as f64 / secs, value_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_the_asked_size() {
        for len in [0, 10, 100, 600] {
            assert_eq!(value(len).len(), len);
        }
    }
}
