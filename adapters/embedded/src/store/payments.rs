//! Payment records and the simulated provider's ledger.

use async_trait::async_trait;
use orderflow_schemas::OrderId;

use super::super::{from_row, to_row, unavailable};
use super::{EmbeddedStore, get_latest, get_row};
use orderflow_platform::store::*;

// Payments: payments[order] = PaymentRecord; provider[idempotency key] = ProviderEntry.

#[async_trait]
impl PaymentStore for EmbeddedStore {
    async fn payment(&self, order: &OrderId) -> Result<Option<PaymentRecord>> {
        get_latest(&self.db.payments, order.as_str())
    }

    async fn record_new(&self, order: &OrderId, record: &PaymentRecord, _fence: Fence) -> Result<()> {
        let (order, row) = (order.clone(), to_row(record)?);
        self.db
            .write(move |db, tx| {
                tx.insert(&db.payments, order.as_str(), row);
                Ok(())
            })
            .await
    }

    async fn replace(
        &self,
        order: &OrderId,
        from: &PaymentRecord,
        to: &PaymentRecord,
        _fence: Fence,
    ) -> Result<PaymentRecord> {
        let (order, from, to) = (order.clone(), from.clone(), to.clone());
        self.db
            .write(move |db, tx| {
                let current: Option<PaymentRecord> = get_row(tx, &db.payments, order.as_str())?;
                match current {
                    Some(c) if c == from => {
                        tx.insert(&db.payments, order.as_str(), to_row(&to)?);
                        Ok(to)
                    }
                    Some(c) => Ok(c),
                    None => Err(StoreError::Corrupt(format!("no payment to replace for order {order}"))),
                }
            })
            .await
    }

    async fn provider_entry_once(&self, idempotency_key: &str, entry: &ProviderEntry) -> Result<ProviderEntry> {
        let (key, entry) = (idempotency_key.to_owned(), entry.clone());
        self.db
            .write(move |db, tx| {
                if let Some(first) = get_row(tx, &db.provider, key.as_bytes())? {
                    return Ok(first);
                }
                tx.insert(&db.provider, key.as_bytes(), to_row(&entry)?);
                Ok(entry)
            })
            .await
    }

    async fn provider_entries(&self) -> Result<Vec<(String, ProviderEntry)>> {
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
