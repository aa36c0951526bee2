//! Payments: `orderflow_payments.payments_v2` (one record per order, written by the owner of the order's
//! payments partition, fenced by its epoch). The simulated provider's books are not here: see `ledger.rs`.

use async_trait::async_trait;
use orderflow_schemas::{Money, OrderId};
use scylla::statement::prepared::PreparedStatement;

use super::{CqlStore, Scope, corrupt, prepare};
use orderflow_platform::store::{Fence, PaymentRecord, PaymentStore, Result, StoreError};

pub(super) struct Statements {
    put: PreparedStatement,
    get: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(s: &Scope<'_>) -> Result<Self> {
        let get = prepare(
            s,
            "SELECT kind, charge_id, refund_id, amount_cents, reason, client_secret, refunds FROM \
             orderflow_payments.payments_v2 WHERE order_id = ?",
            true,
        )
        .await?;
        Ok(Self {
            put: prepare(
                s,
                "INSERT INTO orderflow_payments.payments_v2 (order_id, kind, charge_id, refund_id, amount_cents, reason, \
                 client_secret, refunds) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                true,
            )
            .await?,
            get,
        })
    }
}

/// A record as its columns: kind, charge (or payment) id, refund id, amount in cents, reason (for a
/// payment waiting for the customer: the next action), client secret, partial refunds (JSON) ('' and 0
/// where absent, so that a compare-and-set on every column compares the whole record).
type Columns<'a> = (&'a str, &'a str, &'a str, i64, &'a str, &'a str, String);
type RecordTuple =
    (Option<String>, Option<String>, Option<String>, Option<i64>, Option<String>, Option<String>, Option<String>);

fn to_columns(r: &PaymentRecord) -> Result<Columns<'_>> {
    let none = String::new;
    Ok(match r {
        PaymentRecord::PartlyRefunded { charge_id, amount, refunds } => {
            let refunds = serde_json::to_string(refunds).map_err(corrupt)?;
            ("partly_refunded", charge_id, "", amount.cents(), "", "", refunds)
        }
        PaymentRecord::ActionRequired { payment_id, amount, client_secret, next_action } => {
            ("action_required", payment_id, "", amount.cents(), next_action, client_secret, none())
        }
        PaymentRecord::Authorised { payment_id, amount } => {
            ("authorised", payment_id, "", amount.cents(), "", "", none())
        }
        PaymentRecord::Captured { charge_id, amount } => ("captured", charge_id, "", amount.cents(), "", "", none()),
        PaymentRecord::Voided { payment_id, amount } => ("voided", payment_id, "", amount.cents(), "", "", none()),
        PaymentRecord::Declined { reason } => ("declined", "", "", 0, reason, "", none()),
        PaymentRecord::Refunded { charge_id, refund_id, amount } => {
            ("refunded", charge_id, refund_id, amount.cents(), "", "", none())
        }
    })
}

fn from_columns(order: &OrderId, row: RecordTuple) -> Result<PaymentRecord> {
    let (kind, charge_id, refund_id, amount_cents, reason, client_secret, refunds) = row;
    let amount = || Money::from_cents(amount_cents.unwrap_or(0)).map_err(corrupt);
    Ok(match kind.as_deref() {
        Some("partly_refunded") => PaymentRecord::PartlyRefunded {
            charge_id: charge_id.unwrap_or_default(),
            amount: amount()?,
            refunds: serde_json::from_str(refunds.as_deref().unwrap_or("[]")).map_err(corrupt)?,
        },
        Some("action_required") => PaymentRecord::ActionRequired {
            payment_id: charge_id.unwrap_or_default(),
            amount: amount()?,
            client_secret: client_secret.unwrap_or_default(),
            next_action: reason.unwrap_or_default(),
        },
        Some("authorised") => {
            PaymentRecord::Authorised { payment_id: charge_id.unwrap_or_default(), amount: amount()? }
        }
        Some("captured") => PaymentRecord::Captured { charge_id: charge_id.unwrap_or_default(), amount: amount()? },
        Some("voided") => PaymentRecord::Voided { payment_id: charge_id.unwrap_or_default(), amount: amount()? },
        Some("declined") => PaymentRecord::Declined { reason: reason.unwrap_or_default() },
        Some("refunded") => PaymentRecord::Refunded {
            charge_id: charge_id.unwrap_or_default(),
            refund_id: refund_id.unwrap_or_default(),
            amount: amount()?,
        },
        other => return Err(StoreError::Corrupt(format!("payment of {order}: unknown kind {other:?}"))),
    })
}

impl CqlStore {
    async fn payment_write(&self, order: &OrderId, record: &PaymentRecord, fence: Fence) -> Result<()> {
        let (kind, charge_id, refund_id, amount, reason, client_secret, refunds) = to_columns(record)?;
        let values =
            (order.as_str(), kind, charge_id, refund_id, amount, reason, client_secret, refunds, fence.timestamp());
        self.write(&self.payments.put, values).await
    }
}

/// Only the owner of the order's payments partition writes its record (a zombie's late write carries an
/// older epoch and loses), so reading and then writing is safe: no lightweight transaction needed.
#[async_trait]
impl PaymentStore for CqlStore {
    async fn payment(&self, order: &OrderId) -> Result<Option<PaymentRecord>> {
        self.first_row::<RecordTuple>(&self.payments.get, (order.as_str(),))
            .await?
            .map(|r| from_columns(order, r))
            .transpose()
    }

    async fn record_new(&self, order: &OrderId, record: &PaymentRecord, fence: Fence) -> Result<()> {
        self.payment_write(order, record, fence).await
    }

    async fn replace(
        &self,
        order: &OrderId,
        from: &PaymentRecord,
        to: &PaymentRecord,
        fence: Fence,
    ) -> Result<PaymentRecord> {
        match self.payment(order).await? {
            None => Err(StoreError::Corrupt(format!("no payment to replace for order {order}"))),
            Some(current) if current == *from => {
                self.payment_write(order, to, fence).await?;
                Ok(to.clone())
            }
            Some(current) => Ok(current),
        }
    }
}
