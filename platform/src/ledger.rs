//! The simulated payment provider's own ledger: one entry per idempotency key, the way an external provider
//! keeps its books. It is not a table of orderflow's (not part of [`crate::store::Stores`]): the simulated
//! provider stands in for an external system, and only it, the tests and the chaos checker's audit read it.
//!
//! Each adapter keeps it apart from the production store's data, where every payment process of a
//! deployment shares it (so they share its idempotency): the embedded adapter in a keyspace of its own in
//! the data directory, the CQL adapter in a keyspace of its own (`orderflow_provider`).

use async_trait::async_trait;
use orderflow_schemas::Money;
use serde::{Deserialize, Serialize};

use crate::store::Result;

/// One money movement at the simulated provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderEntry {
    /// `authorisation`, `charge`, `void` or `refund`.
    pub kind: String,
    pub id: String,
    pub amount: Money,
    pub at_ms: i64,
}

/// The simulated provider's books.
#[async_trait]
pub trait ProviderLedger: Send + Sync + std::fmt::Debug {
    /// Records `entry` under `idempotency_key` unless the key has one; returns the entry stored under it
    /// (the first one: a later call with the same key changes nothing). Safe to call from several
    /// processes with one key: they all get back one entry for it.
    async fn record_once(&self, idempotency_key: &str, entry: &ProviderEntry) -> Result<ProviderEntry>;
    /// The entry under `idempotency_key`, if any: one keyed read.
    async fn entry(&self, idempotency_key: &str) -> Result<Option<ProviderEntry>>;
    /// Every entry, sorted by idempotency key: the audit listing that tests and the chaos checker read.
    /// A full read of the ledger, O(entries): never on a request path.
    async fn entries(&self) -> Result<Vec<(String, ProviderEntry)>>;
}
