//! The payment processor and its provider port. Every provider call carries an idempotency key derived
//! from the order (`<order>:capture`, `<order>:refund`), and the first result is stored per order, so a
//! redelivered command never charges twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_platform::bus::{Bus, Delivery, Handler, HandlerError};
use orderflow_platform::fencing::PartitionFences;
use orderflow_platform::store::{PaymentRecord, PaymentStore, ProviderEntry, StoreError};
use orderflow_schemas::events::{PaymentCaptured, PaymentDeclined, PaymentRefunded};
use orderflow_schemas::{Envelope, Event, EventId, Money, OrderId, UserId, now_ms, topics};

/// What a provider answered to a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureResult {
    Captured { charge_id: String },
    Declined { reason: String },
}

/// A payment service provider. Implementations must honour the idempotency key: the same key twice is
/// one charge.
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    async fn capture(&self, idempotency_key: &str, user: &UserId, amount: Money) -> Result<CaptureResult, StoreError>;
    async fn refund(&self, idempotency_key: &str, charge_id: &str, amount: Money) -> Result<String, StoreError>;
}

/// Rules of the built-in simulated provider.
#[derive(Debug, Clone, Default)]
pub struct SimulatedRules {
    /// Time each call takes, like a network round trip to a real provider.
    pub latency: Duration,
    /// Decline charges above this amount.
    pub decline_above: Option<Money>,
    /// Decline every charge of these customers.
    pub decline_users: HashSet<UserId>,
}

/// A provider that takes no real money. It keeps its own ledger (as an external provider would) in the
/// store, one entry per idempotency key.
pub struct SimulatedProvider {
    pub rules: SimulatedRules,
    pub ledger: Arc<dyn PaymentStore>,
}

impl std::fmt::Debug for SimulatedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedProvider").field("rules", &self.rules).finish_non_exhaustive()
    }
}

#[async_trait]
impl PaymentProvider for SimulatedProvider {
    async fn capture(&self, key: &str, user: &UserId, amount: Money) -> Result<CaptureResult, StoreError> {
        tokio::time::sleep(self.rules.latency).await;
        if self.rules.decline_users.contains(user) {
            return Ok(CaptureResult::Declined { reason: "card declined".into() });
        }
        if let Some(limit) = self.rules.decline_above.filter(|limit| amount > *limit) {
            return Ok(CaptureResult::Declined { reason: format!("amount over the {limit} limit") });
        }
        let entry = ProviderEntry {
            kind: "charge".into(),
            id: format!("ch_{}", uuid::Uuid::new_v4().simple()),
            amount,
            at_ms: now_ms(),
        };
        let stored = self.ledger.provider_entry_once(key, &entry).await?;
        Ok(CaptureResult::Captured { charge_id: stored.id })
    }

    async fn refund(&self, key: &str, _charge_id: &str, amount: Money) -> Result<String, StoreError> {
        tokio::time::sleep(self.rules.latency).await;
        let entry = ProviderEntry {
            kind: "refund".into(),
            id: format!("re_{}", uuid::Uuid::new_v4().simple()),
            amount,
            at_ms: now_ms(),
        };
        Ok(self.ledger.provider_entry_once(key, &entry).await?.id)
    }
}

pub struct PaymentHandler {
    pub payments: Arc<dyn PaymentStore>,
    pub provider: Arc<dyn PaymentProvider>,
    pub bus: Arc<dyn Bus>,
    /// This instance's epochs for the partitions of the payments topic it owns: every write is fenced.
    pub fences: PartitionFences,
}

impl std::fmt::Debug for PaymentHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentHandler").finish_non_exhaustive()
    }
}

impl PaymentHandler {
    async fn reply(&self, order: &OrderId, step: &str, body: impl Into<Event>) -> Result<(), HandlerError> {
        let env = Envelope::new(EventId::derived(order, step), order.clone(), body);
        self.bus.publish(vec![crate::record(topics::ORDERS, &env)?]).await?;
        Ok(())
    }
}

#[async_trait]
impl Handler for PaymentHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let env = crate::decode(&delivery.payload)?;
        let order = &env.order_id;
        let fence = self.fences.fence(delivery).await?;
        match &env.body {
            Event::CapturePayment(cmd) => {
                let record = match self.payments.payment(order).await? {
                    Some(r) => r,
                    None => {
                        let amount =
                            Money::from_cents(cmd.amount_cents).map_err(|e| HandlerError::Poison(e.to_string()))?;
                        let result = self.provider.capture(&cmd.idempotency_key, &cmd.user_id, amount).await?;
                        let record = match result {
                            CaptureResult::Captured { charge_id } => PaymentRecord::Captured { charge_id, amount },
                            CaptureResult::Declined { reason } => PaymentRecord::Declined { reason },
                        };
                        self.payments.record_new(order, &record, fence).await?;
                        record
                    }
                };
                match record {
                    PaymentRecord::Captured { charge_id, amount }
                    | PaymentRecord::Refunded { charge_id, amount, .. } => {
                        self.reply(
                            order,
                            "capture_reply",
                            PaymentCaptured { charge_id, captured_cents: amount.cents() },
                        )
                        .await
                    }
                    PaymentRecord::Declined { reason } => {
                        metrics::counter!("orderflow_payments_declined_total").increment(1);
                        self.reply(order, "capture_reply", PaymentDeclined { decline_reason: reason }).await
                    }
                }
            }
            Event::RefundPayment(_) => match self.payments.payment(order).await? {
                Some(PaymentRecord::Captured { charge_id, amount }) => {
                    let refund_id = self.provider.refund(&format!("{order}:refund"), &charge_id, amount).await?;
                    let captured = PaymentRecord::Captured { charge_id: charge_id.clone(), amount };
                    let refunded = PaymentRecord::Refunded { charge_id, refund_id, amount };
                    let stored = self.payments.replace(order, &captured, &refunded, fence).await?;
                    if let PaymentRecord::Refunded { refund_id, amount, .. } = stored {
                        self.reply(
                            order,
                            "refund_reply",
                            PaymentRefunded { refund_id, refunded_cents: amount.cents() },
                        )
                        .await?;
                    }
                    Ok(())
                }
                Some(PaymentRecord::Refunded { refund_id, amount, .. }) => {
                    self.reply(order, "refund_reply", PaymentRefunded { refund_id, refunded_cents: amount.cents() })
                        .await
                }
                // Never captured (declined, or the capture has not happened): nothing to pay back.
                Some(PaymentRecord::Declined { .. }) | None => Ok(()),
            },
            other => Err(HandlerError::Poison(format!("{} does not belong on the payments topic", other.name()))),
        }
    }
}
