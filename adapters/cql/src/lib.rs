//! The CQL adapter of every store port, for ScyllaDB and Apache Cassandra, on the `scylla` driver, and of the
//! simulated payment provider's ledger ([`CqlLedger`], in a keyspace of its own).
//!
//! The tables are in `schemas/cql/*.cql` (one keyspace per service, a comment above each table saying which
//! query it serves and why its key is what it is); [`migrate`] applies them. [`CqlStore::new`] prepares every
//! statement once; the hot paths only ever run prepared statements.
//!
//! Consistency: plain reads and writes run at LOCAL_QUORUM; lightweight transactions (LWT) run their Paxos
//! phase at SERIAL (linearizable across data centres, which is what "never oversell" needs) and commit at
//! LOCAL_QUORUM; reads that decide what happened to an LWT run at SERIAL.
//!
//! LWT rules this module keeps (see the project's field notes):
//! - every conditional write reads `[applied]`: "not applied" is a successful query, not an error;
//! - no LWT statement is marked idempotent, so the driver never retries or speculates one;
//! - an LWT that fails (timeout, lost connection) has an unknown outcome: it is settled with a SERIAL read of
//!   a row that only that write could have written, before anything is decided or retried. The lost request
//!   may still reach the cluster later, so every LWT is conditioned on a version, a state or a row that must
//!   not exist: a late original and its retry can never both apply (adjust_stock, the one change without a
//!   natural key, also looks up each of its unsettled attempts by its own row before every new attempt);
//! - cells written by LWTs are never written by plain writes;
//! - state owned by a partition (orders, payments, shipments) is written only by the partition's owner, with
//!   plain writes stamped `USING TIMESTAMP` from its claimed epoch and the record's offset (see
//!   [`orderflow_platform::store::Fence`]): one LWT per assignment (the epoch claim), none per record;
//! - stock and money are never counters.

mod alerts;
mod catalog;
mod fencing;
mod fulfillment;
mod inventory;
pub mod keyspaces;
mod ledger;
mod orders;
mod payments;
pub mod schema;
mod writes;

pub use ledger::CqlLedger;
pub use writes::WriteCounts;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

pub use orderflow_platform::connection::CqlSecurity;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::ExecutionError;
use scylla::response::query_result::QueryResult;
use scylla::serialize::batch::BatchValues;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::Row;

pub use schema::{DEFAULT_REPLICATION, migrate, migrate_with_replication, refuse_earlier_format};

use orderflow_platform::store::{Result, StoreError, Stores};

/// How long the driver waits for one request before giving up (the outcome of an LWT is then unknown and is
/// settled with a SERIAL read). Above Cassandra's own write and CAS-contention timeouts, so the server's
/// answer normally arrives first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(12);

/// Bound on compare-and-set rounds for one contended row (each lost round means another writer won one).
const MAX_CAS_ROUNDS: u32 = 96;

/// Bound on re-running one uncontended LWT whose outcome stayed unknown.
const MAX_UNKNOWN_RETRIES: u32 = 6;

/// How long a readiness probe waits for the node it asks: far below [`REQUEST_TIMEOUT`], since a
/// readiness check that hangs for 12 s is as bad as a wrong answer to the supervisor asking.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The CQL adapter: one driver session and every prepared statement.
pub struct CqlStore {
    /// Shared with the ledger ([`CqlStore::ledger`]).
    session: Arc<Session>,
    /// The deployment's keyspace names (the ledger's too).
    keyspaces: keyspaces::Keyspaces,
    catalog: catalog::Statements,
    inventory: inventory::Statements,
    alerts: alerts::Statements,
    orders: orders::Statements,
    payments: payments::Statements,
    fulfillment: fulfillment::Statements,
    fencing: fencing::Statements,
    /// Where each stalled-order sweep starts next (see `OrderStore::stalled`).
    sweep_floors: orderflow_platform::store::SweepFloors,
    /// The saga state this process last wrote of each order it owns (see [`orders::OwnerStates`]).
    owner_states: orders::OwnerStates,
    /// SKUs whose alerts this process knows to be published (see [`alerts::CleanSkus`]).
    clean_skus: alerts::CleanSkus,
    /// Plain writes made at the same time, sent as one request (see [`writes`]); the ledger's go out with
    /// them.
    writes: Arc<writes::GroupedWrites>,
    /// The newest index bucket whose `order_buckets` row this process has written (see `orders.rs`).
    bucket_listed: std::sync::atomic::AtomicI64,
}

impl fmt::Debug for CqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CqlStore").finish_non_exhaustive()
    }
}

/// One read of the node-local `system.local` row: answered by the coordinator alone, whatever the
/// keyspaces' replication, so it says the node is reachable and serving without touching user data.
#[async_trait::async_trait]
impl orderflow_platform::store::Readiness for CqlStore {
    async fn ping(&self) -> Result<()> {
        let mut probe = scylla::statement::unprepared::Statement::new("SELECT release_version FROM system.local");
        probe.set_consistency(Consistency::One);
        probe.set_request_timeout(Some(PING_TIMEOUT));
        probe.set_is_idempotent(true);
        self.session.query_unpaged(probe, &[]).await.map_err(unavailable)?;
        Ok(())
    }
}

/// Opens a driver session to the cluster (contact points are `host:port`), logging in and checking the
/// nodes' certificates as `security` says.
pub async fn session(contact_points: &[String], security: &CqlSecurity) -> Result<Session> {
    if contact_points.is_empty() {
        return Err(StoreError::Unavailable("no CQL contact points given".into()));
    }
    let profile = ExecutionProfile::builder()
        .consistency(Consistency::LocalQuorum)
        .serial_consistency(Some(SerialConsistency::Serial))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .build();
    let mut builder =
        SessionBuilder::new().known_nodes(contact_points).default_execution_profile_handle(profile.into_handle());
    if let Some(login) = &security.login {
        builder = builder.user(login.username.clone(), login.password.expose());
    }
    if let Some(tls) = &security.tls {
        builder = builder.tls_context(Some(tls_context(tls)?));
    }
    builder
        .build()
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot connect to {}: {e}", contact_points.join(","))))
}

/// An OpenSSL client context that checks the nodes' certificate chains against the CA file, or the
/// system's trusted roots. Nodes are reached by the addresses the cluster advertises, usually IPs, so
/// the chain is checked and host names are not.
fn tls_context(tls: &orderflow_platform::connection::Tls) -> Result<openssl::ssl::SslContext> {
    use openssl::ssl::{SslContextBuilder, SslMethod, SslVerifyMode};
    let invalid = |what: &str, e: openssl::error::ErrorStack| StoreError::Unavailable(format!("CQL TLS: {what}: {e}"));
    let mut builder = SslContextBuilder::new(SslMethod::tls_client()).map_err(|e| invalid("OpenSSL", e))?;
    match &tls.ca {
        Some(ca) => {
            builder.set_ca_file(ca).map_err(|e| invalid(&format!("cannot read the CA file {}", ca.display()), e))?
        }
        None => builder.set_default_verify_paths().map_err(|e| invalid("the system's trusted roots", e))?,
    }
    builder.set_verify(SslVerifyMode::PEER);
    Ok(builder.build())
}

/// Connects and prepares every statement. The schema must exist: run [`migrate`] first (once per deploy),
/// or use [`connect_and_migrate`].
pub async fn connect(contact_points: &[String], security: &CqlSecurity) -> Result<CqlStore> {
    CqlStore::new(session(contact_points, security).await?).await
}

/// Connects and prepares the simulated provider's ledger alone (for audits and tests; a process that also
/// has the store takes [`CqlStore::ledger`], which shares its session). The schema must exist.
pub async fn connect_ledger(contact_points: &[String], security: &CqlSecurity) -> Result<CqlLedger> {
    let session = Arc::new(session(contact_points, security).await?);
    let writes = Arc::new(writes::GroupedWrites::new(orderflow_platform::backend::DEFAULT_CQL_WRITE_GROUP));
    CqlLedger::new_in(session, &keyspaces::Keyspaces::default(), writes).await
}

/// Connects, applies the schema (idempotent) and prepares every statement.
pub async fn connect_and_migrate(contact_points: &[String], security: &CqlSecurity) -> Result<CqlStore> {
    connect_and_migrate_session(session(contact_points, security).await?, schema::DEFAULT_REPLICATION).await
}

/// Applies the schema (idempotent) on an open session, creating missing keyspaces with `replication` (a
/// CQL replication map), and prepares every statement.
pub async fn connect_and_migrate_session(session: Session, replication: &str) -> Result<CqlStore> {
    connect_and_migrate_in(session, replication, keyspaces::Keyspaces::default()).await
}

/// [`connect_and_migrate_session`] for the keyspaces of a namespace.
pub async fn connect_and_migrate_in(
    session: Session,
    replication: &str,
    keyspaces: keyspaces::Keyspaces,
) -> Result<CqlStore> {
    schema::migrate_in(&session, replication, &keyspaces).await?;
    CqlStore::new_in(session, keyspaces).await
}

impl CqlStore {
    /// Keeps at most `entries` orders' saga state as this process last wrote it (0: every saga step reads
    /// the order first). The default is [`orderflow_platform::backend::DEFAULT_OWNED_ORDER_ENTRIES`].
    pub fn with_owned_order_entries(mut self, entries: u64) -> Self {
        self.owner_states = orders::OwnerStates::new(entries);
        self
    }

    /// Sends at most `statements` statements of plain writes made at the same time as one request (1: every
    /// write on its own). The default is [`orderflow_platform::backend::DEFAULT_CQL_WRITE_GROUP`].
    pub fn with_write_group(mut self, statements: usize) -> Self {
        self.writes = Arc::new(writes::GroupedWrites::new(statements));
        self
    }

    /// Prepares every statement on `session` (whose cluster must already have the schema).
    pub async fn new(session: Session) -> Result<CqlStore> {
        Self::new_in(session, keyspaces::Keyspaces::default()).await
    }

    /// [`CqlStore::new`] on the keyspaces of a namespace.
    pub async fn new_in(session: Session, keyspaces: keyspaces::Keyspaces) -> Result<CqlStore> {
        schema::refuse_earlier_format_in(&session, &keyspaces).await?;
        let scope = Scope { session: &session, keyspaces: &keyspaces };
        Ok(CqlStore {
            catalog: catalog::Statements::prepare(&scope).await?,
            inventory: inventory::Statements::prepare(&scope).await?,
            alerts: alerts::Statements::prepare(&scope).await?,
            orders: orders::Statements::prepare(&scope).await?,
            payments: payments::Statements::prepare(&scope).await?,
            fulfillment: fulfillment::Statements::prepare(&scope).await?,
            fencing: fencing::Statements::prepare(&scope).await?,
            sweep_floors: orderflow_platform::store::SweepFloors::default(),
            owner_states: orders::OwnerStates::new(orderflow_platform::backend::DEFAULT_OWNED_ORDER_ENTRIES),
            clean_skus: alerts::CleanSkus::new(),
            writes: Arc::new(writes::GroupedWrites::new(orderflow_platform::backend::DEFAULT_CQL_WRITE_GROUP)),
            bucket_listed: std::sync::atomic::AtomicI64::new(i64::MIN),
            session: Arc::new(session),
            keyspaces,
        })
    }

    /// The simulated provider's ledger on this adapter's session and keyspaces, its plain writes grouped
    /// with the store's (so make it after [`CqlStore::with_write_group`]). It is no part of
    /// [`CqlStore::stores`]: see [`orderflow_platform::ledger`].
    pub async fn ledger(&self) -> Result<CqlLedger> {
        CqlLedger::new_in(Arc::clone(&self.session), &self.keyspaces, Arc::clone(&self.writes)).await
    }

    /// How many plain writes this adapter took, and in how many requests it sent them (see [`writes`]).
    pub fn write_counts(&self) -> WriteCounts {
        self.writes.counts()
    }

    /// The driver session, e.g. to run [`migrate`] or a health check.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The store handles of every port, all on this adapter.
    pub fn stores(self: Arc<CqlStore>) -> Stores {
        Stores {
            catalog: self.clone(),
            catalog_view: self.clone(),
            inventory: self.clone(),
            orders: self.clone(),
            payments: self.clone(),
            shipments: self.clone(),
            epochs: self.clone(),
            readiness: self,
            owned_orders: Arc::new(orderflow_platform::store::OwnedOrders::off()),
        }
    }

    /// Runs a read and returns every row (the statements that use this are bounded by a key or a LIMIT).
    async fn rows<R>(&self, stmt: &PreparedStatement, values: impl SerializeRow) -> Result<Vec<R>>
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        let result = self.session.execute_unpaged(stmt, values).await.map_err(unavailable)?;
        decode_rows(result)
    }

    async fn first_row<R>(&self, stmt: &PreparedStatement, values: impl SerializeRow) -> Result<Option<R>>
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        Ok(self.rows(stmt, values).await?.into_iter().next())
    }

    /// Every row of a paged query (for reads bounded by their partition).
    async fn stream_rows<R>(&self, stmt: &PreparedStatement, values: impl SerializeRow) -> Result<Vec<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + 'static,
    {
        let pager = self.session.execute_iter(stmt.clone(), values).await.map_err(unavailable)?;
        pager.rows_stream::<R>().map_err(corrupt)?.map_err(unavailable).try_collect().await
    }

    /// A plain (idempotent) write, sent with the other plain writes made at the same time.
    async fn write(&self, stmt: &PreparedStatement, values: impl SerializeRow) -> Result<()> {
        self.writes.write(&self.session, stmt, values).await
    }

    /// A plain (idempotent) batch of writes, kept together; an unlogged one is sent with the other plain
    /// writes made at the same time.
    async fn write_batch(&self, batch: &Batch, values: impl BatchValues) -> Result<()> {
        self.writes.write_batch(&self.session, batch, values).await
    }

    /// Runs one lightweight transaction and reads its `[applied]` flag.
    async fn lwt(&self, stmt: &PreparedStatement, values: impl SerializeRow) -> Result<Lwt> {
        lwt_outcome(self.session.execute_unpaged(stmt, values).await)
    }
}

/// What became of a lightweight transaction.
#[derive(Debug)]
enum Lwt {
    Applied,
    /// The condition did not hold; nothing was written.
    NotApplied,
    /// The request failed after it may have reached the cluster: it may or may not have applied, and a
    /// proposal may still be in flight. Settle it with a SERIAL read before deciding anything.
    Unknown(String),
}

fn lwt_outcome(result: std::result::Result<QueryResult, ExecutionError>) -> Result<Lwt> {
    let result = match result {
        Ok(r) => r,
        // Refused by the driver before anything was sent: certainly not applied, and retrying will not help.
        Err(e @ ExecutionError::BadQuery(_)) => return Err(unavailable(e)),
        Err(e) => return Ok(Lwt::Unknown(e.to_string())),
    };
    let rows = result.into_rows_result().map_err(|e| corrupt(format!("LWT returned no [applied] row: {e}")))?;
    let first = rows.rows::<Row>().map_err(corrupt)?.next().transpose().map_err(corrupt)?;
    // Both Cassandra and ScyllaDB put `[applied]` first; the other columns (the current values) vary.
    match first.as_ref().and_then(|r| r.columns.first()).and_then(|c| c.as_ref()).and_then(|v| v.as_boolean()) {
        Some(true) => Ok(Lwt::Applied),
        Some(false) => Ok(Lwt::NotApplied),
        None => Err(corrupt("LWT result without a boolean [applied] column")),
    }
}

fn decode_rows<R>(result: QueryResult) -> Result<Vec<R>>
where
    R: for<'f> DeserializeRow<'f, 'f>,
{
    let rows = result.into_rows_result().map_err(unavailable)?;
    rows.rows::<R>().map_err(corrupt)?.map(|r| r.map_err(corrupt)).collect()
}

fn unavailable(e: impl fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Where statements are prepared: the session, and the deployment's keyspace names.
struct Scope<'a> {
    session: &'a Session,
    keyspaces: &'a keyspaces::Keyspaces,
}

/// Prepares a statement that runs at the session's default (LOCAL_QUORUM). `idempotent` only for reads and
/// plain upserts/deletes, which the driver may then retry; never for an LWT.
async fn prepare(scope: &Scope<'_>, cql: &str, idempotent: bool) -> Result<PreparedStatement> {
    let cql = scope.keyspaces.qualify(cql);
    let mut stmt = scope
        .session
        .prepare(cql.as_str())
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot prepare `{cql}`: {e}")))?;
    stmt.set_is_idempotent(idempotent);
    Ok(stmt)
}

/// The same prepared statement, read at SERIAL: it sees (and completes) every LWT accepted before it, so its
/// answer settles whether an earlier LWT applied.
fn serial(stmt: &PreparedStatement) -> PreparedStatement {
    let mut s = stmt.clone();
    s.set_consistency(Consistency::Serial);
    s
}

/// A batch of prepared statements (conditional batches must stay in one partition).
fn batch(kind: scylla::statement::batch::BatchType, stmts: &[&PreparedStatement], idempotent: bool) -> Batch {
    let mut b = Batch::new(kind);
    for s in stmts {
        b.append_statement((*s).clone());
    }
    b.set_is_idempotent(idempotent);
    b
}

/// A short randomised pause before the next compare-and-set round, growing with `round` (at most ~64 ms), so
/// contending writers spread out instead of colliding again.
async fn backoff(round: u32) {
    let cap_ms = 1u64 << round.min(6);
    let jitter = (uuid::Uuid::new_v4().as_u128() as u64) % (cap_ms + 1);
    tokio::time::sleep(Duration::from_millis(jitter)).await;
}

fn to_u64(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is negative ({v})")))
}

fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is out of range ({v})")))
}
