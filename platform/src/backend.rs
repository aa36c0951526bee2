//! Picking adapters from URL-like settings: `embedded` (the default, in the data directory),
//! `kafka://host:port[,host:port]` for the bus and `scylla://host:port[,...]` for the store.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::bus::Bus;
use crate::store::Stores;

/// A backend setting as given on the command line or in `ORDERFLOW_BUS` / `ORDERFLOW_STORE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendUrl {
    /// In-process, durable, in the data directory.
    Embedded,
    /// Apache Kafka bootstrap servers.
    Kafka(Vec<String>),
    /// ScyllaDB / Apache Cassandra contact points.
    Scylla(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("unsupported backend {0:?}: use `embedded`, `kafka://HOST:PORT[,HOST:PORT]` or `scylla://HOST:PORT[,...]`")]
    Unsupported(String),
    #[error("{0} needs at least one HOST:PORT")]
    NoHosts(String),
    #[error("{what} {url} cannot be used as the {role}")]
    WrongRole { what: &'static str, url: String, role: &'static str },
    #[error("the CQL store is not usable: {0}")]
    Cql(String),
    /// The server did not answer (down, restarting, not reachable yet): worth waiting for at start-up.
    #[error("{what} at {url} does not answer: {reason}")]
    Unreachable { what: &'static str, url: String, reason: String },
    #[error("Kafka at the given bootstrap servers is not usable: {0}")]
    Kafka(String),
    #[error("cannot open the embedded data directory {path}: {reason}")]
    Embedded { path: PathBuf, reason: String },
}

impl BackendError {
    /// Whether opening again later may succeed (the server was not reachable), as opposed to a wrong
    /// URL, a missing schema or a data directory that cannot be used.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

impl FromStr for BackendUrl {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, BackendError> {
        let hosts = |rest: &str| -> Result<Vec<String>, BackendError> {
            let hosts: Vec<String> =
                rest.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_owned).collect();
            if hosts.is_empty() { Err(BackendError::NoHosts(s.to_owned())) } else { Ok(hosts) }
        };
        if s == "embedded" {
            Ok(Self::Embedded)
        } else if let Some(rest) = s.strip_prefix("kafka://") {
            Ok(Self::Kafka(hosts(rest)?))
        } else if let Some(rest) = s.strip_prefix("scylla://").or_else(|| s.strip_prefix("cassandra://")) {
            Ok(Self::Scylla(hosts(rest)?))
        } else {
            Err(BackendError::Unsupported(s.to_owned()))
        }
    }
}

impl std::fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("embedded"),
            Self::Kafka(h) => write!(f, "kafka://{}", h.join(",")),
            Self::Scylla(h) => write!(f, "scylla://{}", h.join(",")),
        }
    }
}

/// The adapters a process runs on.
#[derive(Clone, Debug)]
pub struct Backends {
    pub bus: Arc<dyn Bus>,
    pub stores: Stores,
}

/// Options of the adapters (embedded and Kafka).
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Replication factor of topics orderflow creates on Kafka (3 on a production cluster).
    pub kafka_replication_factor: i32,
    /// fsync every write (survives power loss, slower). Off: every write reaches the OS before it is
    /// acknowledged, which survives a crash or `kill -9` of the process, and the journal is synced in
    /// the background.
    pub sync_writes: bool,
    /// Apply the CQL schema on start-up (single-process `serve`); separate roles expect `orderflow migrate`.
    pub migrate_cql: bool,
    /// The embedded engine's memory bounds (block cache, memtables, journal).
    pub embedded_memory: EmbeddedMemory,
    /// Orders the saga of this process keeps in memory as their partition's owner, to answer reads of
    /// them without the store (see [`crate::store::OwnedOrders`]; on CQL also the saga's own state, see
    /// [`crate::cql::CqlStore::with_owned_order_entries`]); 0 turns it off.
    pub owned_order_entries: u64,
    /// The largest record consumers hand to their handlers, per topic; larger ones are dead-lettered.
    pub record_limits: crate::bus::limits::RecordLimits,
}

/// What the embedded engine may hold in memory, in MiB. Resident memory levels off once these fill:
/// about `cache + memtable x keyspaces in use`, plus the process's own working set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedMemory {
    /// Block cache shared by every table (recently read data blocks).
    pub cache_mib: u64,
    /// Largest memtable per table before it is written out as a sorted file.
    pub memtable_mib: u64,
    /// Largest write-ahead journal before the tables it holds are flushed and it is recycled.
    pub journal_mib: u64,
}

impl Default for EmbeddedMemory {
    fn default() -> Self {
        Self { cache_mib: 64, memtable_mib: 8, journal_mib: 128 }
    }
}

/// Default of [`BackendOptions::owned_order_entries`]: about 20 MB of orders at 2 KB each.
pub const DEFAULT_OWNED_ORDER_ENTRIES: u64 = 10_000;

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            kafka_replication_factor: 1,
            sync_writes: false,
            migrate_cql: false,
            embedded_memory: EmbeddedMemory::default(),
            owned_order_entries: DEFAULT_OWNED_ORDER_ENTRIES,
            record_limits: crate::bus::limits::RecordLimits::default(),
        }
    }
}

impl Backends {
    /// Opens the adapters named by `bus` and `store`; `data_dir` holds whatever is embedded. For Kafka
    /// this checks the cluster answers and creates missing topics.
    pub async fn open(
        bus: &BackendUrl,
        store: &BackendUrl,
        data_dir: &Path,
        options: &BackendOptions,
    ) -> Result<Self, BackendError> {
        let backends = match (bus, store) {
            (BackendUrl::Scylla(_), _) => {
                Err(BackendError::WrongRole { what: "ScyllaDB", url: bus.to_string(), role: "bus" })
            }
            (_, BackendUrl::Kafka(_)) => {
                Err(BackendError::WrongRole { what: "Kafka", url: store.to_string(), role: "store" })
            }
            (BackendUrl::Embedded, BackendUrl::Embedded) => crate::embedded::open(data_dir, options),
            (BackendUrl::Kafka(hosts), BackendUrl::Embedded) => {
                let embedded = crate::embedded::open(data_dir, options)?;
                Ok(Backends { bus: Arc::new(kafka_bus(hosts, options).await?), stores: embedded.stores })
            }
            (BackendUrl::Embedded, BackendUrl::Scylla(points)) => {
                let embedded = crate::embedded::open(data_dir, options)?;
                Ok(Backends { bus: embedded.bus, stores: cql_stores(points, options).await? })
            }
            (BackendUrl::Kafka(hosts), BackendUrl::Scylla(points)) => Ok(Backends {
                bus: Arc::new(kafka_bus(hosts, options).await?),
                stores: cql_stores(points, options).await?,
            }),
        }?;
        // Every consumer dead-letters records over its topic's size limit before any decoder sees them.
        let bus = Arc::new(crate::bus::limits::LimitedBus::new(backends.bus, options.record_limits.clone()));
        Ok(Backends { bus, stores: backends.stores.with_owned_orders(options.owned_order_entries) })
    }
}

impl Backends {
    /// [`Backends::open`], waiting up to `wait` for a Kafka or CQL server that does not answer yet (one
    /// that is starting or restarting, as after a host reboot or in a chaos run), retrying with
    /// exponential backoff and a warning per attempt. Any other error, or the wait spent, is returned.
    pub async fn open_waiting(
        bus: &BackendUrl,
        store: &BackendUrl,
        data_dir: &Path,
        options: &BackendOptions,
        wait: std::time::Duration,
    ) -> Result<Self, BackendError> {
        use backon::{BackoffBuilder, ExponentialBuilder};
        let deadline = tokio::time::Instant::now() + wait;
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(250))
            .with_max_delay(std::time::Duration::from_secs(5))
            .without_max_times()
            .build();
        loop {
            match Self::open(bus, store, data_dir, options).await {
                Err(e) if e.is_unreachable() && tokio::time::Instant::now() < deadline => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let next = delays.next().unwrap_or(std::time::Duration::from_secs(5)).min(left);
                    tracing::warn!(error = %e, retry_in = ?next, "waiting for the bus and store to answer (--startup-wait)");
                    tokio::time::sleep(next).await;
                }
                other => return other,
            }
        }
    }
}

/// Applies the CQL schema (keyspaces and tables) idempotently: `orderflow migrate`.
pub async fn migrate_cql(store: &BackendUrl) -> Result<(), BackendError> {
    let BackendUrl::Scylla(points) = store else {
        return Err(BackendError::WrongRole {
            what: "this store",
            url: store.to_string(),
            role: "CQL store to migrate",
        });
    };
    let session = crate::cql::session(points).await.map_err(|e| BackendError::Cql(e.to_string()))?;
    crate::cql::schema::migrate(&session).await.map_err(|e| BackendError::Cql(e.to_string()))
}

async fn cql_stores(points: &[String], options: &BackendOptions) -> Result<Stores, BackendError> {
    let session = crate::cql::session(points).await.map_err(|e| BackendError::Unreachable {
        what: "the CQL store",
        url: points.join(","),
        reason: e.to_string(),
    })?;
    let opened = if options.migrate_cql {
        crate::cql::connect_and_migrate_session(session).await
    } else {
        crate::cql::CqlStore::new(session).await
    };
    match opened {
        Ok(store) => Ok(Arc::new(store.with_owned_order_entries(options.owned_order_entries)).stores()),
        // A server that went away between connecting and preparing is unreachable, not unmigrated: worth
        // waiting for (`--startup-wait`) rather than a schema hint and an exit.
        Err(e) if !cql_answers(points).await => {
            Err(BackendError::Unreachable { what: "the CQL store", url: points.join(","), reason: e.to_string() })
        }
        Err(e) => Err(BackendError::Cql(format!("{e} (has the schema been applied? run `orderflow migrate`)"))),
    }
}

/// Whether a CQL server at `points` answers a trivial query now.
async fn cql_answers(points: &[String]) -> bool {
    match crate::cql::session(points).await {
        Ok(session) => session.query_unpaged("SELECT release_version FROM system.local", ()).await.is_ok(),
        Err(_) => false,
    }
}

async fn kafka_bus(hosts: &[String], options: &BackendOptions) -> Result<crate::kafka::KafkaBus, BackendError> {
    let bus = crate::kafka::KafkaBus::connect(crate::kafka::KafkaOptions {
        bootstrap: hosts.to_vec(),
        replication_factor: options.kafka_replication_factor,
    })
    .map_err(|e| BackendError::Kafka(e.to_string()))?;
    bus.ensure_topics().await.map_err(|e| BackendError::Unreachable {
        what: "Kafka",
        url: hosts.join(","),
        reason: e.to_string(),
    })?;
    Ok(bus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backend_urls() {
        assert_eq!("embedded".parse::<BackendUrl>().ok(), Some(BackendUrl::Embedded));
        assert_eq!(
            "kafka://a:9092, b:9092".parse::<BackendUrl>().ok(),
            Some(BackendUrl::Kafka(vec!["a:9092".into(), "b:9092".into()]))
        );
        assert!(matches!("kafka://".parse::<BackendUrl>(), Err(BackendError::NoHosts(_))));
        assert!(matches!("redis://x".parse::<BackendUrl>(), Err(BackendError::Unsupported(_))));
    }
}
