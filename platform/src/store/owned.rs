//! Orders as their partition's owner last wrote them, served from memory to readers in the same process.
//!
//! The order saga is the only writer of an order's state after intake (fenced per partition, see
//! [`super::Fence`]). While this process holds the partition, the state it last wrote *is* the current
//! state, so reads of that order (the saga's own next step, a customer polling `GET /v1/orders/{id}`,
//! GraphQL `order(id)`) need not go to the database: the Kafka Streams "interactive query" and Restate
//! partition-processor idea, reduced to a bounded cache. An entry is only used while the assignment it
//! was written under stands: once the partition is revoked (its token cancelled), reads go to the store
//! again, since the new owner may have moved the order on. A process that owns no partition of the
//! orders topic (an ingest-only or GraphQL-only process) never fills it and always reads the store.
//!
//! Seeded at placement: intake puts a new order here (never over an entry) before it publishes the
//! order's `OrderPlaced`, when the saga of this process holds the order's partition (see
//! [`OwnedOrders::holding`], [`OwnedOrders::placed`]), so that customers polling the order before the
//! saga's first step, and that step itself, skip the store.
//!
//! Staleness: between the moment a partition is taken away and the moment this process hears of it (at
//! most the consumer's session timeout for a frozen process), an entry may be older than the store. A
//! reader sees the order as its previous owner left it, never a state that was not written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use orderflow_schemas::{EventId, Order, OrderId};
use tokio_util::sync::CancellationToken;

use super::{Applied, Fence, OrderFilter, OrderStats, OrderStore, Page, Result, Stalled, Transition};
use crate::bus::{Assignment, BusRecord};

/// How long an entry stays without being read or written before it is dropped (an order that reached
/// its end is rarely read again).
const IDLE: Duration = Duration::from_secs(600);

/// The bounded map of orders this process wrote as their partition's owner.
pub struct OwnedOrders {
    cache: Option<moka::sync::Cache<OrderId, Arc<Owned>>>,
    /// Per partition of the orders topic, the assignment this process's saga last handled it under and
    /// the epoch it claimed for it.
    holders: Mutex<HashMap<u32, (Assignment, u64)>>,
}

struct Owned {
    order: Order,
    revoked: CancellationToken,
}

impl std::fmt::Debug for OwnedOrders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedOrders").field("entries", &self.cache.as_ref().map(|c| c.entry_count())).finish()
    }
}

impl OwnedOrders {
    /// Holds at most `entries` orders; 0 turns it off (every read goes to the store).
    pub fn new(entries: u64) -> Self {
        let cache =
            (entries > 0).then(|| moka::sync::Cache::builder().max_capacity(entries).time_to_idle(IDLE).build());
        Self { cache, holders: Mutex::default() }
    }

    /// Never holds anything.
    pub fn off() -> Self {
        Self { cache: None, holders: Mutex::default() }
    }

    /// Notes that this process's saga handles `partition` of the orders topic under `assignment`, with
    /// `epoch` claimed for it (called per record; cheap when nothing changed).
    pub fn holding(&self, partition: u32, assignment: &Assignment, epoch: u64) {
        if self.cache.is_none() {
            return;
        }
        if let Ok(mut holders) = self.holders.lock()
            && holders.get(&partition).is_none_or(|(a, e)| a.id != assignment.id || *e != epoch)
        {
            holders.insert(partition, (assignment.clone(), epoch));
        }
    }

    /// Takes `order`, just inserted by intake and not yet published, as the state its owner holds, if this
    /// process's saga holds `partition` (the order's partition of the orders topic) now and nothing is held
    /// of the order yet. Returns the epoch it is held under, for the store's own view
    /// ([`OrderStore::placed_under`]); `None` when another process (or none yet) owns the partition.
    pub fn placed(&self, order: &Order, partition: u32) -> Option<u64> {
        let cache = self.cache.as_ref()?;
        let (assignment, epoch) = self.holders.lock().ok()?.get(&partition).cloned()?;
        if assignment.revoked.is_cancelled() {
            return None;
        }
        cache
            .entry(order.id.clone())
            .or_insert_with(|| Arc::new(Owned { order: order.clone(), revoked: assignment.revoked.clone() }));
        Some(epoch)
    }

    /// Records `order` as just written by the owner of its partition under `assignment`.
    pub fn remember(&self, order: &Order, assignment: &Assignment) {
        if let Some(cache) = &self.cache
            && !assignment.revoked.is_cancelled()
        {
            cache.insert(
                order.id.clone(),
                Arc::new(Owned { order: order.clone(), revoked: assignment.revoked.clone() }),
            );
        }
    }

    /// Drops what is held of `id` (its write failed or lost a race: the store knows better).
    pub fn forget(&self, id: &OrderId) {
        if let Some(cache) = &self.cache {
            cache.invalidate(id);
        }
    }

    /// The order as this process last wrote it, if it still owns the order's partition.
    pub fn get(&self, id: &OrderId) -> Option<Order> {
        let cache = self.cache.as_ref()?;
        let owned = cache.get(id)?;
        if owned.revoked.is_cancelled() {
            cache.invalidate(id);
            metrics::counter!("orderflow_owned_order_reads_total", "outcome" => "revoked").increment(1);
            return None;
        }
        metrics::counter!("orderflow_owned_order_reads_total", "outcome" => "hit").increment(1);
        Some(owned.order.clone())
    }

    /// An [`OrderStore`] that answers [`OrderStore::order`] from here when it can and from `store` otherwise.
    pub fn reading(self: &Arc<Self>, store: Arc<dyn OrderStore>) -> Arc<dyn OrderStore> {
        if self.cache.is_none() {
            return store;
        }
        Arc::new(OwnerReadOrders { owned: Arc::clone(self), store })
    }
}

/// The store of record behind the owner's own view of its orders.
struct OwnerReadOrders {
    owned: Arc<OwnedOrders>,
    store: Arc<dyn OrderStore>,
}

impl OwnerReadOrders {
    /// Keeps the owner's view of `id` only after a step that applied: anything else (a conflict, a
    /// duplicate, a failed write that may or may not have landed) sends the next read to the store.
    fn keep_if_applied(&self, id: &OrderId, outcome: Option<&Applied>) {
        if !matches!(outcome, Some(Applied::Applied)) {
            self.owned.forget(id);
        }
    }
}

#[async_trait]
impl OrderStore for OwnerReadOrders {
    async fn insert_new(&self, order: &Order) -> Result<super::Inserted> {
        self.store.insert_new(order).await
    }

    fn placed_under(&self, order: &Order, epoch: u64) {
        self.store.placed_under(order, epoch);
    }

    async fn order(&self, id: &OrderId) -> Result<Option<Order>> {
        if let Some(order) = self.owned.get(id) {
            return Ok(Some(order));
        }
        self.store.order(id).await
    }

    async fn order_for_step(&self, id: &OrderId, fence: Fence) -> Result<Option<Order>> {
        if let Some(order) = self.owned.get(id) {
            return Ok(Some(order));
        }
        self.store.order_for_step(id, fence).await
    }

    async fn apply(&self, transition: Transition) -> Result<Applied> {
        let id = transition.order.id.clone();
        let applied = self.store.apply(transition).await;
        self.keep_if_applied(&id, applied.as_ref().ok());
        applied
    }

    async fn apply_many(&self, transitions: Vec<Transition>) -> Result<Vec<Applied>> {
        let ids: Vec<OrderId> = transitions.iter().map(|t| t.order.id.clone()).collect();
        let applied = self.store.apply_many(transitions).await;
        for (i, id) in ids.iter().enumerate() {
            self.keep_if_applied(id, applied.as_ref().ok().and_then(|results| results.get(i)));
        }
        applied
    }

    async fn seen(&self, id: &OrderId, event: EventId, fence: Fence) -> Result<Option<Vec<BusRecord>>> {
        self.store.seen(id, event, fence).await
    }

    async fn list(&self, filter: &OrderFilter, after: Option<&str>, limit: usize) -> Result<Page<Order>> {
        self.store.list(filter, after, limit).await
    }

    async fn stalled(&self, stalled: Stalled, placed_before_ms: i64, limit: usize) -> Result<Vec<Order>> {
        self.store.stalled(stalled, placed_before_ms, limit).await
    }

    async fn stats(&self) -> Result<OrderStats> {
        self.store.stats().await
    }

    async fn record_request(&self, order: &OrderId, event: orderflow_schemas::EventId, request: &str) -> Result<()> {
        self.store.record_request(order, event, request).await
    }

    async fn recorded_request(&self, order: &OrderId, event: orderflow_schemas::EventId) -> Result<Option<String>> {
        self.store.recorded_request(order, event).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderflow_schemas::{Money, OrderLine, OrderStatus, Quantity, Sku, UserId};

    fn order(status: OrderStatus) -> Order {
        Order {
            id: OrderId::parse("o-1").unwrap(),
            user_id: UserId::parse("u-1").unwrap(),
            lines: vec![OrderLine {
                sku: Sku::parse("S1").unwrap(),
                quantity: Quantity::new(1).unwrap(),
                unit_price: Money::from_cents(100).unwrap(),
            }],
            total: Money::from_cents(100).unwrap(),
            status,
            reason: None,
            channel: "http".into(),
            placed_at_ms: 1,
            updated_at_ms: 1,
            processed_at_ms: None,
            reserved_skus: vec![],
            payment_method: None,
            currency: None,
            capture_on: Default::default(),
            timeline: vec![],
        }
    }

    #[test]
    fn an_entry_is_served_only_while_its_assignment_stands() {
        let owned = OwnedOrders::new(16);
        let assignment = Assignment::new(CancellationToken::new());
        let o = order(OrderStatus::Processing);
        owned.remember(&o, &assignment);
        assert_eq!(owned.get(&o.id), Some(o.clone()));
        assignment.revoked.cancel();
        assert_eq!(owned.get(&o.id), None, "a revoked partition's orders are read from the store");
        owned.remember(&o, &assignment);
        assert_eq!(owned.get(&o.id), None, "nothing is remembered under a revoked assignment");
    }

    #[test]
    fn a_placed_order_is_held_only_where_its_partition_is_held_and_never_over_an_entry() {
        let owned = OwnedOrders::new(16);
        let pending = order(OrderStatus::Pending);
        assert_eq!(owned.placed(&pending, 3), None, "partition 3 is held by nobody here yet");
        assert_eq!(owned.get(&pending.id), None);
        let assignment = Assignment::new(CancellationToken::new());
        owned.holding(3, &assignment, 7);
        assert_eq!(owned.placed(&pending, 4), None, "another partition");
        assert_eq!(owned.placed(&pending, 3), Some(7));
        assert_eq!(owned.get(&pending.id), Some(pending.clone()));
        let moved = order(OrderStatus::Processing);
        owned.remember(&moved, &assignment);
        assert_eq!(owned.placed(&pending, 3), Some(7));
        assert_eq!(owned.get(&pending.id), Some(moved), "what the saga wrote stays");
        assignment.revoked.cancel();
        let other = Order { id: OrderId::parse("o-2").unwrap(), ..pending };
        assert_eq!(owned.placed(&other, 3), None, "the partition was revoked");
        assert_eq!(owned.get(&other.id), None);
        assert_eq!(OwnedOrders::off().placed(&other, 3), None);
    }

    #[test]
    fn forget_and_off() {
        let owned = OwnedOrders::new(16);
        let assignment = Assignment::new(CancellationToken::new());
        let o = order(OrderStatus::Confirmed);
        owned.remember(&o, &assignment);
        owned.forget(&o.id);
        assert_eq!(owned.get(&o.id), None);
        let off = OwnedOrders::off();
        off.remember(&o, &assignment);
        assert_eq!(off.get(&o.id), None);
    }
}
