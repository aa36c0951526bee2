//! The inventory processor, the one writer of stock: holds an order's units of one SKU (one command per
//! SKU, on that SKU's partition), releases on cancel or failure, commits when the order leaves, and
//! applies staff stock changes (adjustments, low-stock thresholds), which reach it as commands on the
//! same partition. Every store write carries the fence of the
//! command (the partition's epoch, claimed once per assignment, and the record's offset), so a zombie
//! instance's late writes lose (ADR 0001). The store makes each command idempotent per (order, SKU) or per
//! request key, so a redelivered command returns the stored answer and never moves stock twice.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_platform::bus::{Bus, BusRecord, Delivery, Handler, HandlerError};
use orderflow_platform::fencing::PartitionFences;
use orderflow_platform::store::{Fence, Hold, InventoryStore, Reservation, ReservationEnd, StockError};
use orderflow_schemas::events::{ReserveStock, StockRejected, StockReserved};
use orderflow_schemas::stock_command::{self, StockChange, StockCommand};
use orderflow_schemas::{Envelope, Event, EventId, OrderId, Sku, StockAlert, stock_alert, topics};

pub struct InventoryHandler {
    pub inventory: Arc<dyn InventoryStore>,
    pub bus: Arc<dyn Bus>,
    pub fences: PartitionFences,
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
/// Every path that changes available units or a threshold calls this (reservations, releases and staff
/// stock changes, all here), with the fence of the last command it applied.
pub async fn publish_stock_alerts(
    inventory: &dyn InventoryStore,
    bus: &dyn Bus,
    skus: &[Sku],
    fence: Fence,
) -> Result<Vec<StockAlert>, HandlerError> {
    let mut published = Vec::new();
    for sku in skus {
        let alerts = inventory.settle_low_stock(sku, fence).await?;
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
            inventory.mark_alert_published(&a.sku, a.seq, fence).await?;
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
    async fn reserve_batch(&self, batch: &[(Envelope, &ReserveStock, Fence)]) -> Result<(), HandlerError> {
        let Some((_, _, last)) = batch.last() else { return Ok(()) };
        let mut holds = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut touched: Vec<Sku> = Vec::new();
        for (env, cmd, fence) in batch {
            match (cmd.sku(), hold_of(&env.order_id, cmd)) {
                (Some(_), Some(hold)) => holds.push((hold, *fence)),
                // A command from before per-SKU reservations names several SKUs, on the order's partition,
                // not theirs: their stock is written only by their own partitions' owners, so it is refused.
                _ => {
                    let refused = Reservation::Rejected { reason: LEGACY_MULTI_SKU.into(), sku: None };
                    tracing::warn!(order = %env.order_id, "refusing a ReserveStock for several SKUs (envelope v2)");
                    replies.push(crate::record(topics::ORDERS, &reply(&env.order_id, None, refused))?);
                }
            }
        }
        let outcomes = self.inventory.reserve_many(&holds).await?;
        if outcomes.len() != holds.len() {
            return Err(HandlerError::Transient(format!(
                "{} answers for {} reservations",
                outcomes.len(),
                holds.len()
            )));
        }
        for ((hold, _), outcome) in holds.iter().zip(outcomes) {
            if matches!(outcome, Reservation::Reserved { .. }) {
                touch(&mut touched, [&hold.sku]);
            }
            replies.push(crate::record(topics::ORDERS, &reply(&hold.order, Some(&hold.sku), outcome))?);
        }
        self.bus.publish(replies).await?;
        publish_stock_alerts(&*self.inventory, &*self.bus, &touched, *last).await?;
        Ok(())
    }

    /// Ends the order's hold of the SKU of a release or commit (one per command since per-SKU reservations).
    async fn end(&self, order: &OrderId, skus: &[Sku], end: ReservationEnd, fence: Fence) -> Result<(), HandlerError> {
        match skus {
            [sku] => {
                self.inventory.end_reservation(order, sku, end, fence).await?;
                Ok(())
            }
            // Only envelope v1 writers left the SKUs out; a v1 order's hold cannot be found without them.
            [] => Err(HandlerError::Poison(format!("a release or commit for {order} names no SKU (envelope v1)"))),
            // Several SKUs: written before per-SKU reservations, on the order's partition rather than theirs.
            _ => Err(HandlerError::Poison(format!(
                "a release or commit for {order} names several SKUs (envelope v2): end each SKU's hold with its \
                 own command, on that SKU's partition"
            ))),
        }
    }
}

/// The reason a `ReserveStock` naming several SKUs (envelope v2, before per-SKU reservations) is refused.
pub const LEGACY_MULTI_SKU: &str = "multi_sku_reservation_retired";

/// The hold a per-SKU `ReserveStock` asks for.
fn hold_of(order: &OrderId, cmd: &ReserveStock) -> Option<Hold> {
    let sku = cmd.sku()?;
    Hold::new(order.clone(), sku.clone(), cmd.lines.iter().map(|l| l.quantity))
}

fn touch<'a>(touched: &mut Vec<Sku>, skus: impl IntoIterator<Item = &'a Sku>) {
    for sku in skus {
        if !touched.contains(sku) {
            touched.push(sku.clone());
        }
    }
}

/// The reply to a reservation, with an id derived from (order, SKU) so that a redelivered command's
/// reply is recognisable and the replies of an order's SKUs are not (`sku` is `None` for a command from
/// before per-SKU reservations).
fn reply(order: &OrderId, sku: Option<&Sku>, outcome: Reservation) -> Envelope {
    let step = sku.map_or_else(|| "reserve_reply".to_owned(), |s| format!("reserve_reply:{s}"));
    let body: Event = match outcome {
        Reservation::Reserved { units } => {
            StockReserved { units_reserved: i64::try_from(units).unwrap_or(i64::MAX), sku: sku.cloned() }.into()
        }
        Reservation::Rejected { reason, sku: refused } => {
            metrics::counter!("orderflow_reservations_rejected_total", "reason" => reason.clone()).increment(1);
            // A per-SKU refusal always names its SKU: the saga gives back the order's other SKUs.
            StockRejected { reason, sku: refused.or_else(|| sku.cloned()) }.into()
        }
    };
    Envelope::new(EventId::derived(order, &step), order.clone(), body)
}

/// A record of the inventory topic: an order's command (an envelope) or a staff stock change.
enum Command {
    Order(Envelope),
    Stock(StockCommand),
}

fn decode_command(payload: &[u8]) -> Result<Command, HandlerError> {
    if stock_command::is_stock_command(payload) {
        let cmd = stock_command::decode(payload)
            .map_err(|e| HandlerError::Poison(format!("undecodable stock command: {e}")))?;
        return Ok(Command::Stock(cmd));
    }
    crate::decode(payload).map(Command::Order)
}

impl InventoryHandler {
    /// Applies a staff stock change: its answer (applied, or refused and why) is recorded under its
    /// request key by the store, where the waiting mutation reads it; a repeat changes nothing.
    async fn change_stock(&self, cmd: &StockCommand, fence: Fence) -> Result<(), HandlerError> {
        let sku = &cmd.sku;
        let key = Some(cmd.request.as_str());
        let outcome = match &cmd.change {
            StockChange::Adjust { delta, reason } => {
                self.inventory.adjust_stock(sku, *delta, reason, key, fence).await.map(|_| ())
            }
            StockChange::SetLowStockThreshold { threshold } => {
                self.inventory.set_low_stock_threshold(sku, *threshold, key, fence).await.map(|_| ())
            }
        };
        match outcome {
            Ok(()) => {}
            Err(StockError::Store(e)) => return Err(e.into()),
            // Refusals are answers (recorded for a keyed adjustment); a reused key keeps its first answer.
            Err(refused) => {
                tracing::info!(%sku, request = %cmd.request, requested_by = %cmd.requested_by, error = %refused, "stock change refused");
            }
        }
        publish_stock_alerts(&*self.inventory, &*self.bus, std::slice::from_ref(sku), fence).await?;
        Ok(())
    }

    async fn handle_order_command(&self, env: &Envelope, fence: Fence) -> Result<(), HandlerError> {
        match &env.body {
            Event::ReserveStock(cmd) => self.reserve_batch(&[(env.clone(), cmd, fence)]).await?,
            Event::ReleaseStock(cmd) => {
                self.end(&env.order_id, &cmd.skus, ReservationEnd::Released, fence).await?;
                publish_stock_alerts(&*self.inventory, &*self.bus, &cmd.skus, fence).await?;
            }
            Event::CommitStock(cmd) => self.end(&env.order_id, &cmd.skus, ReservationEnd::Committed, fence).await?,
            other => {
                return Err(HandlerError::Poison(format!("{} does not belong on the inventory topic", other.name())));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Handler for InventoryHandler {
    fn max_batch(&self) -> usize {
        MAX_RESERVATION_BATCH
    }

    /// Runs of consecutive reservations are reserved together; anything else in between is handled
    /// on its own, in order (a release must follow the reservation it releases, a staff change the
    /// reservations before it).
    async fn handle_batch(&self, deliveries: &[Delivery]) -> Result<(), HandlerError> {
        let commands = deliveries.iter().map(|d| decode_command(&d.payload)).collect::<Result<Vec<_>, _>>()?;
        let mut run: Vec<(Envelope, &ReserveStock, Fence)> = Vec::new();
        for (command, delivery) in commands.iter().zip(deliveries) {
            let fence = self.fences.fence(delivery).await?;
            if let Command::Order(env) = command
                && let Event::ReserveStock(cmd) = &env.body
            {
                run.push((env.clone(), cmd, fence));
                continue;
            }
            if !run.is_empty() {
                self.reserve_batch(&run).await?;
                run.clear();
            }
            match command {
                Command::Order(env) => self.handle_order_command(env, fence).await?,
                Command::Stock(cmd) => self.change_stock(cmd, fence).await?,
            }
        }
        if !run.is_empty() {
            self.reserve_batch(&run).await?;
        }
        Ok(())
    }

    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let command = decode_command(&delivery.payload)?;
        let fence = self.fences.fence(delivery).await?;
        match command {
            Command::Order(env) => self.handle_order_command(&env, fence).await,
            Command::Stock(cmd) => self.change_stock(&cmd, fence).await,
        }
    }
}

/// The record of a staff stock change: on the inventory topic, keyed by its SKU, so the processor that
/// owns the SKU's partition applies it after the reservations before it.
pub fn stock_command_record(cmd: &StockCommand) -> Result<BusRecord, orderflow_schemas::codec::CodecError> {
    Ok(BusRecord::new(topics::INVENTORY, cmd.sku.as_str(), stock_command::encode(cmd)?))
}
