//! Payment records. (The simulated provider's ledger is not the store's: see `ledger.rs`.)

use async_trait::async_trait;
use orderflow_schemas::OrderId;

use super::super::to_row;
use super::{EmbeddedStore, get_latest, get_row};
use orderflow_platform::store::*;

// Payments: payments[order] = PaymentRecord.

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
}
