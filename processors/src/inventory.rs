//! The inventory processor: reserves every line of an order or none, releases on cancel or failure,
//! commits when the order leaves. The store makes each of these conditional and idempotent per order,
//! so a redelivered command returns the stored answer and never moves stock twice.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_platform::bus::{Bus, BusRecord, Delivery, Handler, HandlerError};
use orderflow_platform::store::{InventoryStore, Reservation, ReservationEnd};
use orderflow_schemas::events::{ReserveStock, StockRejected, StockReserved};
use orderflow_schemas::{Envelope, Event, EventId, Sku, StockAlert, stock_alert, topics};

pub struct InventoryHandler {
    pub inventory: Arc<dyn InventoryStore>,
    pub bus: Arc<dyn Bus>,
}

impl std::fmt::Debug for InventoryHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InventoryHandler").finish_non_exhaustive()
    }
}

/// Checks each SKU's low-stock state after its level changed and publishes what crossed: one
/// `InventoryLow` / `InventoryRestocked` per crossing on [`topics::STOCK_ALERTS`], keyed by SKU, with an
/// id derived from (SKU, crossing) so a republished alert is recognisable. An alert is marked published
/// only after the bus has it; one left unmarked by a crash is published again by the SKU's next check.
/// Every path that changes available units calls this (reservations and releases here, staff stock
/// adjustments and threshold changes in the GraphQL API).
pub async fn publish_stock_alerts(
    inventory: &dyn InventoryStore,
    bus: &dyn Bus,
    skus: &[Sku],
) -> Result<Vec<StockAlert>, HandlerError> {
    let mut published = Vec::new();
    for sku in skus {
        let alerts = inventory.settle_low_stock(sku).await?;
        if alerts.is_empty() {
            continue;
        }
        let records = alerts
            .iter()
            .map(|a| {
                let payload = stock_alert::encode(a)
                    .map_err(|e| HandlerError::Poison(format!("cannot encode a stock alert: {e}")))?;
                Ok(BusRecord::new(topics::STOCK_ALERTS, a.sku.as_str(), payload))
            })
            .collect::<Result<Vec<_>, HandlerError>>()?;
        bus.publish(records).await?;
        for a in &alerts {
            inventory.mark_alert_published(&a.sku, a.seq).await?;
            metrics::counter!("orderflow_stock_alerts_total", "kind" => a.kind.as_str()).increment(1);
            tracing::info!(sku = %a.sku, kind = %a.kind, available = a.available, threshold = a.threshold, "stock alert");
        }
        published.extend(alerts);
    }
    Ok(published)
}

/// Reservations taken together at most (one store call and one publish for all of them).
pub const MAX_RESERVATION_BATCH: usize = 64;

impl InventoryHandler {
    /// Reserves for every command of `batch` in one store call, publishes every reply in one append,
    /// then settles each SKU's low-stock state once.
    async fn reserve_batch(&self, batch: &[(Envelope, &ReserveStock)]) -> Result<(), HandlerError> {
        let requests: Vec<_> = batch
            .iter()
            .map(|(env, cmd)| (env.order_id.clone(), cmd.lines.iter().map(|l| (l.sku.clone(), l.quantity)).collect()))
            .collect();
        let outcomes = self.inventory.reserve_many(&requests).await?;
        if outcomes.len() != batch.len() {
            return Err(HandlerError::Transient(format!(
                "{} answers for {} reservations",
                outcomes.len(),
                batch.len()
            )));
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut touched: Vec<Sku> = Vec::new();
        for ((env, cmd), outcome) in batch.iter().zip(outcomes) {
            let reply: Event = match outcome {
                Reservation::Reserved { units } => {
                    for l in &cmd.lines {
                        if !touched.contains(&l.sku) {
                            touched.push(l.sku.clone());
                        }
                    }
                    StockReserved { units_reserved: i64::try_from(units).unwrap_or(i64::MAX) }.into()
                }
                Reservation::Rejected { reason, sku } => {
                    metrics::counter!("orderflow_reservations_rejected_total", "reason" => reason.clone()).increment(1);
                    StockRejected { reason, sku }.into()
                }
            };
            let reply = Envelope::new(EventId::derived(&env.order_id, "reserve_reply"), env.order_id.clone(), reply);
            replies.push(crate::record(topics::ORDERS, &reply)?);
        }
        self.bus.publish(replies).await?;
        publish_stock_alerts(&*self.inventory, &*self.bus, &touched).await?;
        Ok(())
    }
}

#[async_trait]
impl Handler for InventoryHandler {
    fn max_batch(&self) -> usize {
        MAX_RESERVATION_BATCH
    }

    /// Runs of consecutive reservations are reserved together; anything else in between is handled
    /// on its own, in order (a release must follow the reservation it releases).
    async fn handle_batch(&self, deliveries: &[Delivery]) -> Result<(), HandlerError> {
        let envs = deliveries.iter().map(|d| crate::decode(&d.payload)).collect::<Result<Vec<_>, _>>()?;
        let mut run: Vec<(Envelope, &ReserveStock)> = Vec::new();
        for (env, d) in envs.iter().zip(deliveries) {
            if let Event::ReserveStock(cmd) = &env.body {
                run.push((env.clone(), cmd));
                continue;
            }
            if !run.is_empty() {
                self.reserve_batch(&run).await?;
                run.clear();
            }
            self.handle(d).await?;
        }
        if !run.is_empty() {
            self.reserve_batch(&run).await?;
        }
        Ok(())
    }

    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let env = crate::decode(&delivery.payload)?;
        match &env.body {
            Event::ReserveStock(cmd) => self.reserve_batch(&[(env.clone(), cmd)]).await?,
            Event::ReleaseStock(cmd) => {
                self.inventory.end_reservation(&env.order_id, &cmd.skus, ReservationEnd::Released).await?;
                publish_stock_alerts(&*self.inventory, &*self.bus, &cmd.skus).await?;
            }
            Event::CommitStock(cmd) => {
                self.inventory.end_reservation(&env.order_id, &cmd.skus, ReservationEnd::Committed).await?;
            }
            other => {
                return Err(HandlerError::Poison(format!("{} does not belong on the inventory topic", other.name())));
            }
        }
        Ok(())
    }
}
