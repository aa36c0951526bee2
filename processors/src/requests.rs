//! Requests that move an order from outside the pipeline (staff status changes, cancellations by staff
//! or by the customer): recorded in the orders store first (the saga applies only requests it finds
//! recorded, see [`crate::saga::record_requests`]), then published to the order's partition, then awaited
//! for a few seconds so that the caller sees the outcome.

use std::time::Duration;

use orderflow_platform::bus::{Bus, BusRecord};
use orderflow_platform::store::{OrderStore, StoreError};
use orderflow_schemas::events::CancelRequested;
use orderflow_schemas::topics::{self, Topic};
use orderflow_schemas::{Envelope, Event, EventId, Order, OrderId, OrderStatus, codec};

/// How often a request polls for the saga's answer, and for how long at most.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
pub const SAGA_WAIT: Duration = Duration::from_secs(5);

/// Why a request was not sent.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no order with id {0}")]
    NotFound(OrderId),
    #[error("an order cannot move from {from} to {to}")]
    IllegalTransition { from: OrderStatus, to: OrderStatus },
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for ChangeError {
    fn from(e: StoreError) -> Self {
        ChangeError::Unavailable(e.to_string())
    }
}

/// The cancellation of `order` asked for by `requested_by` (an audit name) with `reason`.
pub fn cancellation(reason: String, requested_by: String) -> Event {
    CancelRequested { cancel_reason: reason, requested_by }.into()
}

/// Records `envelope` in the order's requests, then publishes it on `topic`, keyed by its order: the
/// processor that applies it applies only what it finds recorded, so one written to the topic by anyone
/// else moves nothing.
pub async fn record_and_publish(
    orders: &dyn OrderStore,
    bus: &dyn Bus,
    topic: Topic,
    envelope: &Envelope,
) -> Result<(), ChangeError> {
    crate::saga::record_requests(orders, std::slice::from_ref(envelope)).await?;
    let payload = codec::encode(envelope).map_err(|e| ChangeError::Unavailable(format!("encoding: {e}")))?;
    bus.publish(vec![BusRecord::new(topic, envelope.order_id.as_str(), payload)])
        .await
        .map_err(|e| ChangeError::Unavailable(format!("publishing: {e}")))
}

/// Records and publishes `body` (a request to move `order` to `to`), then waits up to [`SAGA_WAIT`] for
/// the saga to move it; returns the order as it then is (moved, or not yet if the saga is slow). Refused
/// when the order cannot move to `to` from where it is now.
pub async fn request_order_change(
    orders: &dyn OrderStore,
    bus: &dyn Bus,
    before: &Order,
    to: OrderStatus,
    body: Event,
) -> Result<Order, ChangeError> {
    let id = &before.id;
    if !before.status.can_move_to(to) {
        return Err(ChangeError::IllegalTransition { from: before.status, to });
    }
    record_and_publish(orders, bus, topics::ORDERS, &Envelope::new(EventId::random(), id.clone(), body)).await?;
    let deadline = tokio::time::Instant::now() + SAGA_WAIT;
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = orders.order(id).await?.ok_or_else(|| ChangeError::NotFound(id.clone()))?;
        if now.status != before.status {
            return Ok(now);
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(order = %id, to = %to, "the order saga has not applied a request within {SAGA_WAIT:?}");
            return Ok(now);
        }
    }
}
