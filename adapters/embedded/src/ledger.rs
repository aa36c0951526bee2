//! The simulated payment provider's ledger ([`ProviderLedger`]) in the data directory: the fjall keyspace
//! `provider`, `provider[idempotency key] = ProviderEntry`. The store's tables are other keyspaces of the
//! same database (as the bus's log is): the ledger shares the engine, its journal and its single writer,
//! and no data with them; the store's code never touches this keyspace.

use std::sync::Arc;

use async_trait::async_trait;
use fjall::Readable;
use orderflow_platform::ledger::{ProviderEntry, ProviderLedger};
use orderflow_platform::store::Result;

use super::{Db, from_row, to_row, unavailable};

/// The simulated provider's ledger on the embedded database.
pub struct EmbeddedLedger {
    db: Arc<Db>,
}

impl std::fmt::Debug for EmbeddedLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLedger").finish_non_exhaustive()
    }
}

impl EmbeddedLedger {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db }
    }
}

/// fjall's single-writer transactions serialise the read and the write of `record_once`, and one process
/// holds the data directory: the first entry under a key is the only one.
#[async_trait]
impl ProviderLedger for EmbeddedLedger {
    async fn record_once(&self, idempotency_key: &str, entry: &ProviderEntry) -> Result<ProviderEntry> {
        let (key, entry) = (idempotency_key.to_owned(), entry.clone());
        self.db
            .write(move |db, tx| {
                if let Some(first) = tx.get(&db.provider, key.as_bytes()).map_err(unavailable)? {
                    return from_row(&first);
                }
                tx.insert(&db.provider, key.as_bytes(), to_row(&entry)?);
                Ok(entry)
            })
            .await
    }

    async fn entry(&self, idempotency_key: &str) -> Result<Option<ProviderEntry>> {
        match self.db.provider.get(idempotency_key.as_bytes()).map_err(unavailable)? {
            Some(row) => Ok(Some(from_row(&row)?)),
            None => Ok(None),
        }
    }

    async fn entries(&self) -> Result<Vec<(String, ProviderEntry)>> {
        // In key order: fjall keeps keys sorted.
        self.db
            .provider
            .inner()
            .iter()
            .map(|g| {
                let (k, v) = g.into_inner().map_err(unavailable)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), from_row(&v)?))
            })
            .collect()
    }
}
