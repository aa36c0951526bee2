//! The payment processor and its provider port. A payment is authorised, then captured; a payment that
//! will not be kept is voided (before the capture) or refunded (after it). Every provider call carries an
//! idempotency key derived from the order and the step (`<order>:authorise`, `<order>:capture`,
//! `<order>:void`, `<order>:refund`), identical across retries, redeliveries and restarts, and each step's
//! outcome is stored per order before the next, so a redelivered command repeats no step with money in
//! it (docs/adr/0002-exactly-once-at-the-provider.md).
//!
//! - [`provider`]: the port ([`PaymentProvider`]) and its typed answers and errors.
//! - [`simulated`]: the built-in provider that takes no real money (the quick start's default).
//! - [`stripe`]: Stripe's PaymentIntents and Refunds over its HTTP API.

pub mod provider;
pub mod simulated;
pub mod stripe;
pub mod stripe_webhook;

pub use provider::{Authorisation, Capture, PaymentProvider, PaymentRequest, ProviderError};
pub use simulated::{SimulatedProvider, SimulatedRules};
pub use stripe::{StripeConfig, StripeProvider};

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_platform::bus::{Bus, BusRecord, Delivery, Handler, HandlerError};
use orderflow_platform::fencing::PartitionFences;
use orderflow_platform::store::{Fence, OrderStore, PartRefund, PaymentRecord, PaymentStore};
use orderflow_schemas::events::{CapturePayment, PaymentCaptured, PaymentDeclined, PaymentRefunded, RefundPayment};
use orderflow_schemas::{Currency, Envelope, Event, EventId, Money, OrderId, topics};

pub struct PaymentHandler {
    pub payments: Arc<dyn PaymentStore>,
    /// Where staff refunds are recorded before they are published (checked before one is paid).
    pub orders: Arc<dyn OrderStore>,
    pub provider: Arc<dyn PaymentProvider>,
    pub bus: Arc<dyn Bus>,
    /// This instance's epochs for the partitions of the payments topic it owns: every write is fenced.
    pub fences: PartitionFences,
    /// The shop's currency (`--currency`): the currency of a command from before orders had their own.
    pub currency: Currency,
}

impl std::fmt::Debug for PaymentHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentHandler").field("provider", &self.provider.name()).finish_non_exhaustive()
    }
}

/// The reply to a payment command, with an id derived from (order, step).
fn reply(order: &OrderId, step: &str, body: impl Into<Event>) -> Result<Option<BusRecord>, HandlerError> {
    let env = Envelope::new(EventId::derived(order, step), order.clone(), body);
    Ok(Some(crate::record(topics::ORDERS, &env)?))
}

/// The idempotency key of `step` of `order`'s payment at the provider.
pub fn idempotency_key(order: &OrderId, step: &str) -> String {
    format!("{order}:{step}")
}

/// The record of a provider's answer to an authorisation of `amount`.
fn stored(answer: Authorisation, amount: Money) -> PaymentRecord {
    match answer {
        Authorisation::Authorised { payment_id } => {
            outcome("authorise", "authorised");
            PaymentRecord::Authorised { payment_id, amount }
        }
        Authorisation::Declined { reason } => {
            outcome("authorise", "declined");
            PaymentRecord::Declined { reason }
        }
        Authorisation::ActionRequired { payment_id, client_secret, next_action } => {
            outcome("authorise", "action_required");
            PaymentRecord::ActionRequired { payment_id, amount, client_secret, next_action }
        }
    }
}

/// Commands of one partition taken together at most: the captures and refunds of different orders run
/// side by side (each waits on the provider) and their replies go out in one append.
pub const MAX_PAYMENT_BATCH: usize = 32;

fn outcome(step: &'static str, result: &'static str) {
    metrics::counter!("orderflow_payment_steps_total", "step" => step, "result" => result).increment(1);
}

impl PaymentHandler {
    /// Does what the command asks (once per order) and returns the reply to publish, if any.
    async fn execute(&self, delivery: &Delivery) -> Result<Option<BusRecord>, HandlerError> {
        let env = crate::decode(&delivery.payload)?;
        let order = &env.order_id;
        let fence = self.fences.fence(delivery).await?;
        match &env.body {
            Event::CapturePayment(cmd) => {
                // The reply to an authorisation held for a capture at dispatch has an id of its own: the
                // capture's reply follows it later.
                let step = if cmd.authorise_only { "authorise_reply" } else { "capture_reply" };
                match self.take_payment(order, cmd, fence).await? {
                    Some(
                        PaymentRecord::Captured { charge_id, amount }
                        | PaymentRecord::PartlyRefunded { charge_id, amount, .. }
                        | PaymentRecord::Refunded { charge_id, amount, .. },
                    ) if !cmd.authorise_only => {
                        let authorisation_id = Some(charge_id.clone());
                        let captured_cents = amount.cents();
                        reply(
                            order,
                            step,
                            PaymentCaptured { charge_id, captured_cents, authorisation_id, authorised_only: false },
                        )
                    }
                    Some(PaymentRecord::Authorised { payment_id, .. }) if cmd.authorise_only => {
                        let authorisation_id = Some(payment_id.clone());
                        let body = PaymentCaptured {
                            charge_id: payment_id,
                            captured_cents: 0,
                            authorisation_id,
                            authorised_only: true,
                        };
                        reply(order, step, body)
                    }
                    Some(PaymentRecord::Declined { reason }) => {
                        metrics::counter!("orderflow_payments_declined_total").increment(1);
                        reply(order, step, PaymentDeclined { decline_reason: reason })
                    }
                    // Waiting for the customer: the order stays PROCESSING until the provider's webhook
                    // brings the command again, or the stuck-order sweep rejects it (and the refund voids
                    // it). Released without a capture after the saga moved on: nothing to tell it. An
                    // authorisation command redelivered after the capture: the saga has moved on.
                    Some(_) | None => Ok(None),
                }
            }
            Event::RefundPayment(cmd @ RefundPayment { refund_key: Some(key), .. }) => {
                self.staff_refund(&env, key, cmd, fence).await
            }
            Event::RefundPayment(RefundPayment { currency, .. }) => match self.payments.payment(order).await? {
                // Captured, perhaps partly refunded by staff: what is left goes back.
                Some(taken @ (PaymentRecord::Captured { .. } | PaymentRecord::PartlyRefunded { .. })) => {
                    let (Some(charge_id), Some(left)) = (taken.payment_id(), taken.refundable()) else {
                        return Ok(None);
                    };
                    let key = idempotency_key(order, "refund");
                    let currency = currency.unwrap_or(self.currency);
                    let refund_id = self.provider.refund(&key, charge_id, left, currency).await?;
                    outcome("refund", "refunded");
                    let refunded = PaymentRecord::Refunded { charge_id: charge_id.to_owned(), refund_id, amount: left };
                    match self.payments.replace(order, &taken, &refunded, fence).await? {
                        PaymentRecord::Refunded { refund_id, amount, .. } => {
                            reply(order, "refund_reply", PaymentRefunded::refund(refund_id, amount.cents()))
                        }
                        _ => Ok(None),
                    }
                }
                Some(PaymentRecord::Refunded { refund_id, amount, .. }) => {
                    reply(order, "refund_reply", PaymentRefunded::refund(refund_id, amount.cents()))
                }
                // Held (or waiting for the customer), never taken: release the hold, and say so.
                Some(held @ (PaymentRecord::Authorised { .. } | PaymentRecord::ActionRequired { .. })) => {
                    let payment_id = self.void(order, &held, fence).await?;
                    reply(order, "refund_reply", PaymentRefunded::void(payment_id))
                }
                // Released before (a redelivered command): the same reply, recognised by its id.
                Some(PaymentRecord::Voided { payment_id, .. }) => {
                    reply(order, "refund_reply", PaymentRefunded::void(payment_id))
                }
                // Never captured (declined, or the capture has not happened): nothing to pay back.
                Some(PaymentRecord::Declined { .. }) | None => Ok(None),
            },
            other => Err(HandlerError::Poison(format!("{} does not belong on the payments topic", other.name()))),
        }
    }

    /// Authorises the order's payment unless a step of it is stored already, then captures it; returns the
    /// record stored at the end. Each step's outcome is stored before the next step starts, so a
    /// redelivered command resumes after the last stored step (and repeats an unstored one under the same
    /// key, which the provider answers with its first answer). A payment that waits for the customer
    /// (3-D Secure) is looked up again when the command comes again (the provider's webhook sends it).
    async fn take_payment(
        &self,
        order: &OrderId,
        cmd: &CapturePayment,
        fence: Fence,
    ) -> Result<Option<PaymentRecord>, HandlerError> {
        let mut record = self.payments.payment(order).await?;
        if record.is_none() {
            let amount = Money::from_cents(cmd.amount_cents).map_err(|e| HandlerError::Poison(e.to_string()))?;
            let request = PaymentRequest {
                order,
                user: &cmd.user_id,
                amount,
                currency: cmd.currency.unwrap_or(self.currency),
                payment_method: cmd.payment_method.as_ref(),
            };
            let answer = self.provider.authorise(&idempotency_key(order, "authorise"), request).await?;
            let first = stored(answer, amount);
            self.payments.record_new(order, &first, fence).await?;
            record = Some(first);
        }
        if let Some(waiting @ PaymentRecord::ActionRequired { payment_id, amount, .. }) = &record {
            let now = stored(self.provider.lookup(order, payment_id).await?, *amount);
            if now != *waiting {
                record = Some(self.payments.replace(order, waiting, &now, fence).await?);
            }
        }
        if let Some(held @ PaymentRecord::Authorised { payment_id, amount }) = &record
            && !cmd.authorise_only
        {
            let next = match self.provider.capture(&cmd.idempotency_key, payment_id, *amount).await? {
                Capture::Captured { charge_id } => {
                    outcome("capture", "captured");
                    PaymentRecord::Captured { charge_id, amount: *amount }
                }
                Capture::Failed { reason } => {
                    outcome("capture", "failed");
                    self.provider.void(&idempotency_key(order, "void"), payment_id).await?;
                    // The release is in the record (and so in the order's timeline) with the provider's id.
                    PaymentRecord::Declined {
                        reason: format!("capture_failed: {reason} (authorisation {payment_id} voided)"),
                    }
                }
            };
            record = Some(self.payments.replace(order, held, &next, fence).await?);
        }
        Ok(record)
    }

    /// A partial refund staff asked for under `key`: once per key, never more than is left of the
    /// capture, and only if orderflow recorded the request (a refund written to the topic by anyone else
    /// moves no money). Or, with `provider_refunded_cents` (the provider's webhook), refunds the provider
    /// made that orderflow's books lack: recorded under `key`, no money moved.
    async fn staff_refund(
        &self,
        env: &Envelope,
        key: &str,
        cmd: &RefundPayment,
        fence: Fence,
    ) -> Result<Option<BusRecord>, HandlerError> {
        let currency = cmd.currency.unwrap_or(self.currency);
        let order = &env.order_id;
        let asked = crate::saga::request_name(&env.body);
        if asked.is_none() || self.orders.recorded_request(order, env.event_id).await? != asked {
            metrics::counter!("orderflow_events_refused_total", "event" => "RefundPayment").increment(1);
            tracing::warn!(%order, event_id = %env.event_id, "a refund orderflow did not record was refused");
            return Ok(None);
        }
        let reply_step = format!("refund_reply:{key}");
        let Some(current) = self.payments.payment(order).await? else {
            tracing::warn!(%order, "a staff refund found no payment to pay back");
            return Ok(None);
        };
        if let Some(done) = current.refund_under(key) {
            let body = PaymentRefunded::refund(done.refund_id.clone(), done.amount.cents());
            return reply(order, &reply_step, body);
        }
        let (charge_id, captured, mut refunds) = match &current {
            PaymentRecord::Captured { charge_id, amount } => (charge_id.clone(), *amount, Vec::new()),
            PaymentRecord::PartlyRefunded { charge_id, amount, refunds } => {
                (charge_id.clone(), *amount, refunds.clone())
            }
            other => {
                tracing::warn!(%order, payment = ?other, "a staff refund found nothing captured to pay back");
                return Ok(None);
            }
        };
        if let Some(reported) = cmd.provider_refunded_cents {
            // Refunded at the provider in all, against what the books hold: the difference was refunded
            // outside orderflow (orderflow's own refunds of this order were recorded before this command,
            // which comes after them on the order's partition).
            let back = captured.cents() - current.refundable().map_or(captured.cents(), Money::cents);
            let missing = reported.min(captured.cents()) - back;
            if cmd.provider_refund_id.as_deref().is_some_and(|id| refunds.iter().any(|r| r.refund_id == id))
                || missing <= 0
            {
                return Ok(None); // the books hold every refund the provider reports
            }
            let amount = Money::from_cents(missing).map_err(|e| HandlerError::Poison(e.to_string()))?;
            let refund_id = cmd.provider_refund_id.clone().unwrap_or_else(|| key.to_owned());
            outcome("refund_at_provider", "recorded");
            tracing::info!(%order, %amount, refund_id, "a refund made at the provider is now in the books");
            refunds.push(PartRefund { key: key.to_owned(), refund_id: refund_id.clone(), amount });
            let next = PaymentRecord::PartlyRefunded { charge_id, amount: captured, refunds };
            self.payments.replace(order, &current, &next, fence).await?;
            return reply(order, &reply_step, PaymentRefunded::refund(refund_id, amount.cents()));
        }
        let amount =
            Money::from_cents(cmd.amount_cents.unwrap_or(0)).map_err(|e| HandlerError::Poison(e.to_string()))?;
        if amount == Money::ZERO || current.refundable().is_none_or(|left| amount > left) {
            tracing::warn!(%order, %amount, "a staff refund asked for more than is left of the capture");
            return Ok(None);
        }
        let refund_key = idempotency_key(order, &format!("refund:{key}"));
        let refund_id = self.provider.refund(&refund_key, &charge_id, amount, currency).await?;
        outcome("partial_refund", "refunded");
        refunds.push(PartRefund { key: key.to_owned(), refund_id: refund_id.clone(), amount });
        let next = PaymentRecord::PartlyRefunded { charge_id, amount: captured, refunds };
        self.payments.replace(order, &current, &next, fence).await?;
        reply(order, &reply_step, PaymentRefunded::refund(refund_id, amount.cents()))
    }

    /// Releases an authorisation that will not be captured, records that it was, and returns its id.
    async fn void(&self, order: &OrderId, held: &PaymentRecord, fence: Fence) -> Result<String, HandlerError> {
        let (PaymentRecord::Authorised { payment_id, amount }
        | PaymentRecord::ActionRequired { payment_id, amount, .. }) = held
        else {
            return Err(HandlerError::Poison(format!("voiding {order}: nothing is held ({held:?})")));
        };
        self.provider.void(&idempotency_key(order, "void"), payment_id).await?;
        outcome("void", "voided");
        let voided = PaymentRecord::Voided { payment_id: payment_id.clone(), amount: *amount };
        self.payments.replace(order, held, &voided, fence).await?;
        Ok(payment_id.clone())
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
