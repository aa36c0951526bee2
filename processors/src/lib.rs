//! The processors: each consumes one topic in its own consumer group, does its one job idempotently,
//! and answers on the orders topic. Pure decisions ([`saga::decide`]) are kept apart from the handlers
//! that read and write the ports.
//!
//! - [`saga`]: the order saga, single writer of order state; decides the next step and compensation.
//! - [`inventory`]: holds an order's units of one SKU (one command per SKU); release and commit.
//! - [`payment`]: capture and refund through the [`payment::PaymentProvider`] port (typed answers and
//!   errors, one file per adapter) with idempotency keys.
//! - [`catalog`]: catalog writes and their `ProductUpdated` events, the projector into the read model.
//! - [`fulfillment`]: creates the shipment of a confirmed order.
//! - [`runtime`]: starts roles as consumers and keeps them running until shutdown.

pub mod catalog;
pub mod fulfillment;
pub mod inventory;
pub mod payment;
pub mod requests;
pub mod runtime;
pub mod saga;

use orderflow_platform::bus::{BusRecord, Delivery, HandlerError};
use orderflow_platform::fencing::PartitionFences;
use orderflow_schemas::topics::Topic;
use orderflow_schemas::{Envelope, codec};

/// Encodes `env` for `topic`, keyed by its order id.
pub(crate) fn record(topic: Topic, env: &Envelope) -> Result<BusRecord, HandlerError> {
    record_keyed(topic, env.order_id.as_str(), env)
}

/// Encodes `env` for `topic` under `key`.
pub(crate) fn record_keyed(topic: Topic, key: &str, env: &Envelope) -> Result<BusRecord, HandlerError> {
    let payload =
        codec::encode(env).map_err(|e| HandlerError::Poison(format!("cannot encode {}: {e}", env.body.name())))?;
    Ok(BusRecord::new(topic, key, payload))
}

/// Runs `execute` for every delivery of a batch of one partition and returns the answers in delivery
/// order: side by side when no two deliveries share a key (an order, on the payment and fulfillment
/// topics), one after the other otherwise, so one order's commands stay in order. The partition's epoch
/// is claimed (when new) before anything runs side by side, so it is claimed once.
pub(crate) async fn side_by_side<'a, T, F, Fut>(
    fences: &PartitionFences,
    deliveries: &'a [Delivery],
    execute: F,
) -> Result<Vec<T>, HandlerError>
where
    F: Fn(&'a Delivery) -> Fut,
    Fut: std::future::Future<Output = Result<T, HandlerError>>,
{
    let Some(first) = deliveries.first() else { return Ok(Vec::new()) };
    fences.fence(first).await?;
    let mut keys: Vec<&str> = deliveries.iter().map(|d| d.key.as_str()).collect();
    keys.sort_unstable();
    if keys.windows(2).all(|w| w[0] != w[1]) {
        return futures::future::try_join_all(deliveries.iter().map(execute)).await;
    }
    let mut answers = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        answers.push(execute(d).await?);
    }
    Ok(answers)
}

/// Decodes a delivery; a record that is not a valid envelope can never be handled.
pub(crate) fn decode(payload: &[u8]) -> Result<Envelope, HandlerError> {
    codec::decode(payload).map_err(|e| HandlerError::Poison(format!("undecodable record: {e}")))
}
