//! The simulated payment provider's ledger ([`ProviderLedger`]): `orderflow_provider.ledger`, a keyspace of
//! its own (see `schemas/cql/provider.cql`), one entry per idempotency key. It shares the store's driver
//! session and its grouped plain writes, and nothing else: no table of the store's is read or written here.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use orderflow_platform::ledger::{ProviderEntry, ProviderLedger};
use orderflow_platform::store::Result;
use orderflow_schemas::Money;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::keyspaces::Keyspaces;
use super::writes::GroupedWrites;
use super::{Scope, corrupt, decode_rows, prepare, unavailable};

/// The simulated provider's ledger on a CQL cluster (the schema must exist: see [`crate::migrate`]).
pub struct CqlLedger {
    session: Arc<Session>,
    writes: Arc<GroupedWrites>,
    put: PreparedStatement,
    get: PreparedStatement,
    all: PreparedStatement,
}

impl fmt::Debug for CqlLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CqlLedger").finish_non_exhaustive()
    }
}

/// Rows per page of the audit listing.
const LISTING_PAGE_ROWS: i32 = 1000;

impl CqlLedger {
    /// Prepares the ledger's statements on `session`, in the keyspace of `keyspaces`; plain writes go out
    /// through `writes`.
    pub(crate) async fn new_in(
        session: Arc<Session>,
        keyspaces: &Keyspaces,
        writes: Arc<GroupedWrites>,
    ) -> Result<CqlLedger> {
        let scope = Scope { session: &session, keyspaces };
        let columns = "idempotency_key, kind, entry_id, amount_cents, at_ms";
        let get = prepare(
            &scope,
            &format!("SELECT {columns} FROM orderflow_provider.ledger WHERE idempotency_key = ?"),
            true,
        )
        .await?;
        let mut all = prepare(&scope, &format!("SELECT {columns} FROM orderflow_provider.ledger"), true).await?;
        all.set_page_size(LISTING_PAGE_ROWS);
        let put =
            prepare(&scope, &format!("INSERT INTO orderflow_provider.ledger ({columns}) VALUES (?, ?, ?, ?, ?)"), true)
                .await?;
        Ok(CqlLedger { session, writes, put, get, all })
    }
}

/// Key, kind, entry id, amount in cents, time (ms).
type EntryTuple = (String, Option<String>, Option<String>, Option<i64>, Option<i64>);

fn entry_from_row(row: EntryTuple) -> Result<(String, ProviderEntry)> {
    let (key, kind, id, amount_cents, at_ms) = row;
    Ok((
        key,
        ProviderEntry {
            kind: kind.unwrap_or_default(),
            id: id.unwrap_or_default(),
            amount: Money::from_cents(amount_cents.unwrap_or(0)).map_err(corrupt)?,
            at_ms: at_ms.unwrap_or(0),
        },
    ))
}

#[async_trait]
impl ProviderLedger for CqlLedger {
    /// A read, then a plain write when the key has no entry (no lightweight transaction: see ADR 0001). Two
    /// calls with one key at the same moment (an owner and its zombie) may both write: the simulated provider
    /// derives its entries from the key, so they write the same movement of money and the books show one.
    async fn record_once(&self, idempotency_key: &str, entry: &ProviderEntry) -> Result<ProviderEntry> {
        if let Some(first) = self.entry(idempotency_key).await? {
            return Ok(first);
        }
        let values = (idempotency_key, &entry.kind, &entry.id, entry.amount.cents(), entry.at_ms);
        self.writes.write(&self.session, &self.put, values).await?;
        Ok(entry.clone())
    }

    async fn entry(&self, idempotency_key: &str) -> Result<Option<ProviderEntry>> {
        let result = self.session.execute_unpaged(&self.get, (idempotency_key,)).await.map_err(unavailable)?;
        let rows: Vec<EntryTuple> = decode_rows(result)?;
        rows.into_iter().next().map(|row| entry_from_row(row).map(|(_, e)| e)).transpose()
    }

    async fn entries(&self) -> Result<Vec<(String, ProviderEntry)>> {
        // A full scan, paged, in token order: for audits and tests (see provider.cql). Sorted by key like
        // the embedded adapter's.
        let pager = self.session.execute_iter(self.all.clone(), ()).await.map_err(unavailable)?;
        let rows: Vec<EntryTuple> =
            pager.rows_stream::<EntryTuple>().map_err(corrupt)?.map_err(unavailable).try_collect().await?;
        let mut entries = rows.into_iter().map(entry_from_row).collect::<Result<Vec<_>>>()?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }
}
