//! The payment processor and its provider port. Every provider call carries an idempotency key derived
//! from the order (`<order>:capture`, `<order>:refund`), and the first result is stored per order, so a
//! redelivered command never charges twice.
//!
//! - [`provider`]: the port ([`PaymentProvider`]) and its typed answers and errors.
//! - [`simulated`]: the built-in provider that takes no real money (the quick start's default).

pub mod provider;
pub mod simulated;

pub use provider::{CaptureResult, PaymentProvider, ProviderError};
pub use simulated::{SimulatedProvider, SimulatedRules};

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_platform::bus::{Bus, BusRecord, Delivery, Handler, HandlerError};
use orderflow_platform::fencing::PartitionFences;
use orderflow_platform::store::{PaymentRecord, PaymentStore};
use orderflow_schemas::events::{PaymentCaptured, PaymentDeclined, PaymentRefunded};
use orderflow_schemas::{Envelope, Event, EventId, Money, OrderId, topics};

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

/// The reply to a payment command, with an id derived from (order, step).
fn reply(order: &OrderId, step: &str, body: impl Into<Event>) -> Result<Option<BusRecord>, HandlerError> {
    let env = Envelope::new(EventId::derived(order, step), order.clone(), body);
    Ok(Some(crate::record(topics::ORDERS, &env)?))
}

/// Commands of one partition taken together at most: the captures and refunds of different orders run
/// side by side (each waits on the provider) and their replies go out in one append.
pub const MAX_PAYMENT_BATCH: usize = 32;

impl PaymentHandler {
    /// Does what the command asks (once per order) and returns the reply to publish, if any.
    async fn execute(&self, delivery: &Delivery) -> Result<Option<BusRecord>, HandlerError> {
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
                        reply(order, "capture_reply", PaymentCaptured { charge_id, captured_cents: amount.cents() })
                    }
                    PaymentRecord::Declined { reason } => {
                        metrics::counter!("orderflow_payments_declined_total").increment(1);
                        reply(order, "capture_reply", PaymentDeclined { decline_reason: reason })
                    }
                }
            }
            Event::RefundPayment(_) => match self.payments.payment(order).await? {
                Some(PaymentRecord::Captured { charge_id, amount }) => {
                    let refund_id = self.provider.refund(&format!("{order}:refund"), &charge_id, amount).await?;
                    let captured = PaymentRecord::Captured { charge_id: charge_id.clone(), amount };
                    let refunded = PaymentRecord::Refunded { charge_id, refund_id, amount };
                    let stored = self.payments.replace(order, &captured, &refunded, fence).await?;
                    match stored {
                        PaymentRecord::Refunded { refund_id, amount, .. } => {
                            reply(order, "refund_reply", PaymentRefunded { refund_id, refunded_cents: amount.cents() })
                        }
                        _ => Ok(None),
                    }
                }
                Some(PaymentRecord::Refunded { refund_id, amount, .. }) => {
                    reply(order, "refund_reply", PaymentRefunded { refund_id, refunded_cents: amount.cents() })
                }
                // Never captured (declined, or the capture has not happened): nothing to pay back.
                Some(PaymentRecord::Declined { .. }) | None => Ok(None),
            },
            other => Err(HandlerError::Poison(format!("{} does not belong on the payments topic", other.name()))),
        }
    }
}

#[async_trait]
impl Handler for PaymentHandler {
    fn max_batch(&self) -> usize {
        MAX_PAYMENT_BATCH
    }

    /// Commands of different orders side by side, one append for their replies. Two commands of one
    /// order (a capture and its refund) in the batch: one after the other, in order.
    async fn handle_batch(&self, deliveries: &[Delivery]) -> Result<(), HandlerError> {
        let replies = crate::side_by_side(&self.fences, deliveries, |d| self.execute(d)).await?;
        self.bus.publish(replies.into_iter().flatten().collect()).await?;
        Ok(())
    }

    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let reply = self.execute(delivery).await?;
        self.bus.publish(reply.into_iter().collect()).await?;
        Ok(())
    }
}
