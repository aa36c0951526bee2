//! The fulfillment processor: hands a confirmed order to the warehouse by creating its shipment, once.
//! Later moves (preparing, out for delivery, delivered) come from staff or courier webhooks through the
//! order saga.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_platform::bus::{Bus, BusRecord, Delivery, Handler, HandlerError};
use orderflow_platform::fencing::PartitionFences;
use orderflow_platform::store::{Shipment, ShipmentStore};
use orderflow_schemas::events::ShipmentCreated;
use orderflow_schemas::{Envelope, Event, EventId, now_ms, topics};

pub struct FulfillmentHandler {
    pub shipments: Arc<dyn ShipmentStore>,
    pub bus: Arc<dyn Bus>,
    /// This instance's epochs for the partitions of the fulfillment topic it owns: every write is fenced.
    pub fences: PartitionFences,
}

impl std::fmt::Debug for FulfillmentHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FulfillmentHandler").finish_non_exhaustive()
    }
}

/// Commands of one partition taken together at most: their shipments are created side by side and the
/// replies go out in one append.
pub const MAX_SHIPMENT_BATCH: usize = 64;

impl FulfillmentHandler {
    /// Creates the order's shipment (once) and returns the reply to publish.
    async fn execute(&self, delivery: &Delivery) -> Result<BusRecord, HandlerError> {
        let env = crate::decode(&delivery.payload)?;
        let Event::CreateShipment(cmd) = &env.body else {
            return Err(HandlerError::Poison(format!("{} does not belong on the fulfillment topic", env.body.name())));
        };
        let wanted = Shipment {
            shipment_id: format!("sh_{}", EventId::derived(&env.order_id, "shipment").0.simple()),
            order_id: env.order_id.clone(),
            user_id: cmd.ship_to_user_id.clone(),
            lines: cmd.lines.iter().map(|l| (l.sku.clone(), l.quantity)).collect(),
            created_at_ms: now_ms(),
        };
        let fence = self.fences.fence(delivery).await?;
        let shipment = self.shipments.create_once(&wanted, fence).await?;
        let reply = Envelope::new(
            EventId::derived(&env.order_id, "shipment_created"),
            env.order_id.clone(),
            ShipmentCreated { shipment_id: shipment.shipment_id },
        );
        crate::record(topics::ORDERS, &reply)
    }
}

#[async_trait]
impl Handler for FulfillmentHandler {
    fn max_batch(&self) -> usize {
        MAX_SHIPMENT_BATCH
    }

    /// Shipments of different orders side by side, one append for their replies (a repeated command of
    /// one order in the batch: one after the other).
    async fn handle_batch(&self, deliveries: &[Delivery]) -> Result<(), HandlerError> {
        let replies = crate::side_by_side(&self.fences, deliveries, |d| self.execute(d)).await?;
        self.bus.publish(replies).await?;
        Ok(())
    }

    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let reply = self.execute(delivery).await?;
        self.bus.publish(vec![reply]).await?;
        Ok(())
    }
}
