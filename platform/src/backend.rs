//! What a process runs on: the URL-like settings that name its adapters (`embedded`, the default, in the
//! data directory; `kafka://host:port[,host:port]` for the bus; `scylla://host:port[,...]` for the store),
//! the adapters' options, and the opened pair. Opening them is the binary's job (`src/backend.rs`), the one
//! place that knows every adapter crate.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::bus::Bus;
use crate::ledger::ProviderLedger;
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
    /// The simulated payment provider's own books, on the same engine as `stores` but apart from its data
    /// (see [`crate::ledger`]).
    pub ledger: Arc<dyn ProviderLedger>,
}

/// Options of the adapters (embedded and Kafka).
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Replication factor of topics orderflow creates on Kafka (3 on a production cluster).
    pub kafka_replication_factor: i32,
    /// `min.insync.replicas` of the topics orderflow creates; `None`: the broker's default.
    pub kafka_min_insync_replicas: Option<i32>,
    /// How the keyspaces the CQL migration creates are replicated.
    pub cql_replication: CqlReplication,
    /// The deployment's namespace on a shared Kafka and CQL cluster (`None`: the plain names).
    pub namespace: Option<Namespace>,
    /// How the Kafka clients log in and check the brokers (SASL, TLS).
    pub kafka_security: crate::connection::KafkaSecurity,
    /// How the CQL driver logs in and checks the nodes (password, TLS).
    pub cql_security: crate::connection::CqlSecurity,
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
    /// On CQL, the most statements of plain writes made at the same time that go to the database as one
    /// request (one unlogged batch); 1 sends every write on its own.
    pub cql_write_group: usize,
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

/// Default of [`BackendOptions::cql_write_group`].
pub const DEFAULT_CQL_WRITE_GROUP: usize = 64;

/// Default of [`BackendOptions::owned_order_entries`]: about 20 MB of orders at 2 KB each.
pub const DEFAULT_OWNED_ORDER_ENTRIES: u64 = 10_000;

/// A deployment's namespace (`--namespace`): 1-16 of `[a-z0-9_]`. On Kafka every topic and consumer group
/// is `<namespace>.<name>`, on CQL every keyspace `<namespace>_<name>`, so that several deployments
/// (staging, production, tenants) share one cluster without taking each other's records or rows. The
/// embedded backends need none: a deployment is its data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace(String);

impl Namespace {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok =
            (1..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok { Ok(Self(s.to_owned())) } else { Err(format!("{s:?}: a namespace is 1-16 of a-z, 0-9 and _")) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How CQL keyspaces are replicated when the migration creates them (an existing keyspace keeps its
/// replication: change it with `ALTER KEYSPACE` and a repair).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CqlReplication {
    /// `SimpleStrategy` with this many replicas: one data centre.
    Simple(u32),
    /// `NetworkTopologyStrategy` with replicas per data centre.
    NetworkTopology(Vec<(String, u32)>),
}

impl Default for CqlReplication {
    fn default() -> Self {
        Self::Simple(1)
    }
}

impl CqlReplication {
    /// `3` (SimpleStrategy) or `NetworkTopologyStrategy:dc1=3,dc2=3`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let factor = |v: &str| match v.trim().parse::<u32>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!("{v:?} is not a replication factor (a whole number from 1)")),
        };
        let s = s.trim();
        let Some(dcs) = s.strip_prefix("NetworkTopologyStrategy:") else {
            return factor(s.strip_prefix("SimpleStrategy:").unwrap_or(s))
                .map(Self::Simple)
                .map_err(|e| format!("{e}; use a factor such as `3` or `NetworkTopologyStrategy:dc1=3,dc2=3`"));
        };
        let mut out = Vec::new();
        for dc in dcs.split(',').filter(|d| !d.trim().is_empty()) {
            let (name, n) = dc.split_once('=').ok_or_else(|| format!("{dc:?}: write DATACENTRE=FACTOR"))?;
            let name = name.trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(format!("{name:?} is not a data centre name"));
            }
            out.push((name.to_owned(), factor(n)?));
        }
        if out.is_empty() {
            return Err("NetworkTopologyStrategy needs at least one DATACENTRE=FACTOR".into());
        }
        Ok(Self::NetworkTopology(out))
    }

    /// The CQL replication map.
    pub fn to_cql(&self) -> String {
        match self {
            Self::Simple(n) => format!("{{'class': 'SimpleStrategy', 'replication_factor': {n}}}"),
            Self::NetworkTopology(dcs) => {
                let dcs: Vec<String> = dcs.iter().map(|(dc, n)| format!("'{dc}': {n}")).collect();
                format!("{{'class': 'NetworkTopologyStrategy', {}}}", dcs.join(", "))
            }
        }
    }

    /// The fewest replicas any data centre keeps.
    pub fn min_factor(&self) -> u32 {
        match self {
            Self::Simple(n) => *n,
            Self::NetworkTopology(dcs) => dcs.iter().map(|(_, n)| *n).min().unwrap_or(0),
        }
    }
}

impl std::fmt::Display for CqlReplication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Simple(n) => write!(f, "{n}"),
            Self::NetworkTopology(dcs) => {
                let dcs: Vec<String> = dcs.iter().map(|(dc, n)| format!("{dc}={n}")).collect();
                write!(f, "NetworkTopologyStrategy:{}", dcs.join(","))
            }
        }
    }
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            kafka_replication_factor: 1,
            kafka_min_insync_replicas: None,
            cql_replication: CqlReplication::default(),
            namespace: None,
            kafka_security: Default::default(),
            cql_security: Default::default(),
            sync_writes: false,
            migrate_cql: false,
            embedded_memory: EmbeddedMemory::default(),
            owned_order_entries: DEFAULT_OWNED_ORDER_ENTRIES,
            cql_write_group: DEFAULT_CQL_WRITE_GROUP,
            record_limits: crate::bus::limits::RecordLimits::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replication_settings_parse_into_cql_maps() {
        use super::CqlReplication;
        assert_eq!(CqlReplication::parse("3"), Ok(CqlReplication::Simple(3)));
        assert_eq!(
            CqlReplication::parse("3").map(|r| r.to_cql()),
            Ok("{'class': 'SimpleStrategy', 'replication_factor': 3}".into())
        );
        let nts = CqlReplication::parse("NetworkTopologyStrategy:dc1=3, dc2=2").unwrap_or_default();
        assert_eq!(nts.to_cql(), "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}");
        assert_eq!(nts.min_factor(), 2);
        assert_eq!(nts.to_string(), "NetworkTopologyStrategy:dc1=3,dc2=2");
        for bad in
            ["0", "x", "NetworkTopologyStrategy:", "NetworkTopologyStrategy:dc1", "NetworkTopologyStrategy:d'c=3"]
        {
            assert!(CqlReplication::parse(bad).is_err(), "{bad}");
        }
    }

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
