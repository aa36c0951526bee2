//! The embedded store: every port of [`orderflow_platform::store`] on fjall keyspaces. Rows are JSON; keys are laid out
//! so each query is one prefix or range scan (see the key notes on each method). One file per port,
//! mirroring the CQL adapter (`orderflow-cql`): catalog, inventory, alerts, orders, payments, fulfillment,
//! fencing.

mod alerts;
mod catalog;
mod fencing;
mod fulfillment;
mod inventory;
mod orders;
mod payments;

pub(crate) use inventory::upgrade_reservations;

use std::sync::Arc;

use async_trait::async_trait;
use fjall::Readable;

use super::{Db, from_row, unavailable};
use orderflow_platform::store::*;

/// The embedded adapter of every store port.
pub struct EmbeddedStore {
    db: Arc<Db>,
    /// No order placed before this time (ms) was PENDING at the last stalled-order sweep, so the next
    /// sweep starts there (see [`OrderStore::stalled`]).
    sweep_floors: SweepFloors,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db, sweep_floors: SweepFloors::default() }
    }
}

fn get_row<T: serde::de::DeserializeOwned>(
    r: &impl Readable,
    ks: &fjall::SingleWriterTxKeyspace,
    key: impl AsRef<[u8]>,
) -> Result<Option<T>> {
    match r.get(ks, key).map_err(unavailable)? {
        Some(v) => Ok(Some(from_row(&v)?)),
        None => Ok(None),
    }
}

fn get_latest<T: serde::de::DeserializeOwned>(
    ks: &fjall::SingleWriterTxKeyspace,
    key: impl AsRef<[u8]>,
) -> Result<Option<T>> {
    match ks.get(key).map_err(unavailable)? {
        Some(v) => Ok(Some(from_row(&v)?)),
        None => Ok(None),
    }
}

/// Keyset page over the keys `prefix + suffix`, in key order (or reversed), starting after `after`.
fn page_keys(
    ks: &fjall::SingleWriterTxKeyspace,
    prefix: &[u8],
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<String>, bool)> {
    let mut start = prefix.to_vec();
    if let Some(after) = after {
        start.extend_from_slice(after.as_bytes());
        start.push(0);
    }
    let mut end = prefix.to_vec();
    end.push(0xFF);
    let mut out = Vec::with_capacity(limit + 1);
    for guard in ks.inner().range(start..end).take(limit + 1) {
        let key = guard.key().map_err(unavailable)?;
        let suffix = key.get(prefix.len()..).unwrap_or_default();
        out.push(String::from_utf8_lossy(suffix).into_owned());
    }
    let has_next = out.len() > limit;
    out.truncate(limit);
    Ok((out, has_next))
}

#[async_trait]
impl Readiness for EmbeddedStore {
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
