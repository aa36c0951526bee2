//! The inventory processor: reserves every line of an order or none, releases on cancel or failure,
//! commits when the order leaves. The store makes each of these conditional and idempotent per order,
//! so a redelivered command returns the stored answer and never moves stock twice.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_platform::bus::{Bus, Delivery, Handler, HandlerError};
use orderflow_platform::store::{InventoryStore, Reservation, ReservationEnd};
use orderflow_schemas::events::{StockRejected, StockReserved};
use orderflow_schemas::{Envelope, Event, EventId, topics};

pub struct InventoryHandler {
    pub inventory: Arc<dyn InventoryStore>,
    pub bus: Arc<dyn Bus>,
}

impl std::fmt::Debug for InventoryHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InventoryHandler").finish_non_exhaustive()
    }
}

#[async_trait]
impl Handler for InventoryHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let env = crate::decode(&delivery.payload)?;
        match &env.body {
            Event::ReserveStock(cmd) => {
                let lines: Vec<_> = cmd.lines.iter().map(|l| (l.sku.clone(), l.quantity)).collect();
                let outcome = self.inventory.reserve(&env.order_id, &lines).await?;
                let reply: Event = match outcome {
                    Reservation::Reserved { units } => {
                        StockReserved { units_reserved: i64::try_from(units).unwrap_or(i64::MAX) }.into()
                    }
                    Reservation::Rejected { reason, sku } => {
                        metrics::counter!("orderflow_reservations_rejected_total", "reason" => reason.clone())
                            .increment(1);
                        StockRejected { reason, sku }.into()
                    }
                };
                let reply =
                    Envelope::new(EventId::derived(&env.order_id, "reserve_reply"), env.order_id.clone(), reply);
                self.bus.publish(vec![crate::record(topics::ORDERS, &reply)?]).await?;
            }
            Event::ReleaseStock(_) => {
                self.inventory.end_reservation(&env.order_id, ReservationEnd::Released).await?;
            }
            Event::CommitStock(_) => {
                self.inventory.end_reservation(&env.order_id, ReservationEnd::Committed).await?;
            }
            other => {
                return Err(HandlerError::Poison(format!("{} does not belong on the inventory topic", other.name())));
            }
        }
        Ok(())
    }
}
