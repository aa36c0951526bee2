//! The store port: the tables each service owns, as traits whose methods are the queries the service
//! makes. Every adapter (embedded fjall today, CQL next) implements the same traits and passes the same
//! conformance tests, so processors never know which one they run on.
//!
//! Writes that must happen once are conditional (insert-if-absent, compare-and-set on a status), which is
//! what makes at-least-once delivery safe: a redelivered event finds its write already done.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use orderflow_schemas::{
    EventId, Money, Order, OrderId, OrderStatus, Product, ProductSummary, Quantity, Sku, StockAlert, StockAlertKind,
    StockLevel, UserId,
};
use serde::{Deserialize, Serialize};

use crate::bus::BusRecord;

mod owned;
pub use owned::OwnedOrders;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed (I/O, corruption, timeout). Callers retry or report 503; never a client error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be read back: a bug or a schema drift, never user input.
    #[error("stored row is unreadable: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One page of a keyset-paginated list; `next` is the opaque position after the last item.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<(String, T)>,
    pub has_next: bool,
}

/// The handles of every table group, each behind its port.
#[derive(Clone)]
pub struct Stores {
    pub catalog: Arc<dyn CatalogStore>,
    /// The catalog's read model (built by the catalog projector from `ProductUpdated` events).
    pub catalog_view: Arc<dyn CatalogViewStore>,
    pub inventory: Arc<dyn InventoryStore>,
    pub orders: Arc<dyn OrderStore>,
    pub payments: Arc<dyn PaymentStore>,
    pub shipments: Arc<dyn ShipmentStore>,
    /// Epochs of partition ownership, claimed once per assignment (see [`Fence`]).
    pub epochs: Arc<dyn EpochStore>,
    /// Whether the engine answers (for `/readyz`).
    pub readiness: Arc<dyn Readiness>,
    /// The orders this process's saga wrote as their partition's owner, which `orders` answers from
    /// while the partition stays here (see [`OwnedOrders`]).
    pub owned_orders: Arc<OwnedOrders>,
}

impl Stores {
    /// Serves order reads from the owner's own writes, holding at most `entries` orders (0: off).
    pub fn with_owned_orders(mut self, entries: u64) -> Self {
        let owned = Arc::new(OwnedOrders::new(entries));
        self.orders = owned.reading(self.orders);
        self.owned_orders = owned;
        self
    }
}

/// A cheap liveness probe of the store engine.
#[async_trait]
pub trait Readiness: Send + Sync {
    /// Succeeds if the engine answers now: one small request (never a scan), bounded by a short timeout.
    async fn ping(&self) -> Result<()>;
}

impl fmt::Debug for Stores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------------
// Partition ownership: epochs and fences

/// Who may write state owned by one partition of a topic, and in what order.
///
/// Each consumer that is assigned a partition claims the partition's next epoch once ([`EpochStore::claim`],
/// one conditional write per assignment), and stamps every write of state owned by that partition with
/// `(epoch, offset of the record being handled)`. The CQL adapter writes with `USING TIMESTAMP`
/// [`Fence::timestamp`], so that per cell a write of a later epoch always beats one of an earlier epoch,
/// whatever order they arrive in: a zombie (a consumer that lost the partition but has not noticed) can
/// still write, but never over its successor's writes. Within an epoch, offsets order the writes. The
/// embedded adapter cannot have zombies (one process holds the data directory's lock) and accepts any fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fence {
    pub epoch: u64,
    pub offset: u64,
}

impl Fence {
    /// Bits of the write timestamp that carry the offset (2^40 records per partition and epoch).
    pub const OFFSET_BITS: u32 = 40;
    /// The low [`Fence::OFFSET_BITS`] bits: where a write timestamp carries the offset.
    const OFFSET_MASK: u64 = (1u64 << Self::OFFSET_BITS) - 1;

    pub fn new(epoch: u64, offset: u64) -> Self {
        Self { epoch, offset }
    }

    /// The offset a write timestamp made by [`Fence::timestamp`] carries.
    pub fn offset_of_timestamp(timestamp: i64) -> u64 {
        (timestamp as u64) & Self::OFFSET_MASK
    }

    /// Whether this fence is for the record at `offset` (whatever the epoch: a redelivery of the same
    /// record to a new owner keeps its offset).
    pub fn is_at(&self, offset: u64) -> bool {
        self.offset & Self::OFFSET_MASK == offset
    }

    /// The write timestamp: the epoch in the high bits, the offset in the low ones, so a later epoch's
    /// writes win over an earlier one's and, within an epoch, a later record's over an earlier one's.
    /// Never written by anything but fenced writers (plain writes without a timestamp would use the clock).
    pub fn timestamp(&self) -> i64 {
        let offset = self.offset & Self::OFFSET_MASK;
        let epoch = self.epoch.min((1u64 << (63 - Self::OFFSET_BITS)) - 1);
        ((epoch << Self::OFFSET_BITS) | offset) as i64
    }
}

/// Claims of partition ownership, one per assignment.
#[async_trait]
pub trait EpochStore: Send + Sync {
    /// Claims the next epoch of (`group`, `topic`, `partition`) for `owner` (a process id for operators)
    /// and returns it: strictly greater than every epoch claimed before for the same partition.
    async fn claim(&self, group: &str, topic: &str, partition: u32, owner: &str) -> Result<u64>;
}

// ---------------------------------------------------------------------------------------------------
// Catalog

/// The outcome of [`CatalogStore::update_product`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductWrite {
    /// Stored.
    Written,
    /// There is no product with that SKU.
    NotFound,
    /// The stored version is not the one the update was made from; here is the product as stored.
    Conflict(Product),
}

/// The catalog's write model: the source of truth for products, written by staff operations through
/// conditional writes, read by intake (prices) and by the catalog projector's reconciliation. Queries
/// read the read model ([`CatalogViewStore`]) instead.
#[async_trait]
pub trait CatalogStore: Send + Sync {
    /// Creates the product (its `version` is 1); `false` if the SKU already exists (nothing changes then).
    async fn create_product(&self, product: &Product) -> Result<bool>;
    /// Replaces the product if the stored version is `product.version - 1` (compare-and-set): two staff
    /// edits made from the same version cannot both apply. Never creates.
    async fn update_product(&self, product: &Product) -> Result<ProductWrite>;
    async fn product(&self, sku: &Sku) -> Result<Option<Product>>;
    /// Products in SKU order, starting after the position `after` (a key from an earlier page).
    async fn products(&self, after: Option<&str>, limit: usize) -> Result<Page<Product>>;
    /// Every product's version, keyed by SKU, in an order of the adapter's choosing that is stable
    /// across pages (SKU order embedded, token order on CQL), starting after the key `after`. For the
    /// reconciliation that finds writes whose `ProductUpdated` never reached the read model.
    async fn product_versions(&self, after: Option<&str>, limit: usize) -> Result<Page<u64>>;
}

/// What [`CatalogViewStore::upsert_if_newer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projected {
    /// The snapshot was newer than the stored one (or the first): stored.
    Applied,
    /// The same version was stored already (a redelivery); written again, which changes nothing.
    AlreadyCurrent,
    /// A newer version is stored; nothing changed.
    Stale,
}

/// The catalog's read model: one row per product with the newest version seen, and the listing of
/// every product's summary that `products` filters and sorts on. Written only by the catalog projector;
/// read by the GraphQL catalog queries (through their cache).
#[async_trait]
pub trait CatalogViewStore: Send + Sync {
    /// Stores the snapshot unless a newer version of the SKU is stored. Idempotent and order-safe: the
    /// stored row is always the highest version ever given, whatever order they arrive in.
    async fn upsert_if_newer(&self, product: &Product) -> Result<Projected>;
    /// The newest stored snapshot of a SKU (archived ones included).
    async fn view_product(&self, sku: &Sku) -> Result<Option<Product>>;
    /// The listing: every product's summary in SKU order (archived ones included), at most `limit`.
    async fn listing(&self, limit: usize) -> Result<Vec<ProductSummary>>;
}

// ---------------------------------------------------------------------------------------------------
// Inventory

/// The result of a reservation, stored per order so a redelivered request gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reservation {
    /// Every line is held for the order.
    Reserved { units: u64 },
    /// Nothing is held; `reason` is `unknown_sku` or `out_of_stock`.
    Rejected { reason: String, sku: Option<Sku> },
}

/// One order's hold of one SKU: the units of every line of the order that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub order: OrderId,
    pub sku: Sku,
    /// At least 1 (a line asks for at least one unit); the sum of the order's lines of this SKU.
    units: u64,
}

impl Hold {
    /// The hold of `sku` for `order` of the given line quantities (`None` without any).
    pub fn new(order: OrderId, sku: Sku, quantities: impl IntoIterator<Item = Quantity>) -> Option<Self> {
        let units = quantities.into_iter().map(|q| u64::from(q.get())).fold(0u64, u64::saturating_add);
        (units > 0).then_some(Self { order, sku, units })
    }

    pub fn units(&self) -> u64 {
        self.units
    }
}

/// What happened to an order's held units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReservationEnd {
    /// Units went back to `available`.
    Released,
    /// Units left as `sold`.
    Committed,
    /// There was nothing held for the order (never reserved, rejected, or already ended).
    NothingHeld,
}

#[derive(Debug, thiserror::Error)]
pub enum StockError {
    #[error("no product with SKU {0}")]
    UnknownSku(Sku),
    #[error("the adjustment would leave {available} available units of {sku} below zero")]
    WouldGoNegative { sku: Sku, available: u64 },
    /// The adjustment would take the SKU's units (available + reserved + sold) past the largest count
    /// the stores keep (2^63 - 1); every other stock movement only moves units between those three.
    #[error("the adjustment would take the units of {sku} past {max}", max = i64::MAX)]
    WouldOverflow { sku: Sku },
    /// The idempotency key was used before on this SKU for a different change.
    #[error("idempotency key {key:?} was used on {sku} for an adjustment of {applied}, not {asked}")]
    KeyReused { sku: Sku, key: String, applied: i64, asked: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StockError {
    /// The refusal this error is, if it is one that is recorded under an adjustment's key (not a key
    /// reused for another change, not a store failure).
    pub fn refusal(&self) -> Option<StockRefusal> {
        match self {
            StockError::UnknownSku(_) => Some(StockRefusal::UnknownSku),
            StockError::WouldGoNegative { available, .. } => {
                Some(StockRefusal::WouldGoNegative { available: *available })
            }
            StockError::WouldOverflow { .. } => Some(StockRefusal::WouldOverflow),
            StockError::KeyReused { .. } | StockError::Store(_) => None,
        }
    }
}

/// Why a keyed stock adjustment was refused, as recorded under its key (see [`InventoryStore::adjustment`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StockRefusal {
    UnknownSku,
    WouldGoNegative { available: u64 },
    WouldOverflow,
}

impl StockRefusal {
    pub fn into_error(self, sku: &Sku) -> StockError {
        match self {
            StockRefusal::UnknownSku => StockError::UnknownSku(sku.clone()),
            StockRefusal::WouldGoNegative { available } => StockError::WouldGoNegative { sku: sku.clone(), available },
            StockRefusal::WouldOverflow => StockError::WouldOverflow { sku: sku.clone() },
        }
    }

    /// The refusal as one text cell: `unknown_sku`, `would_go_negative:<available>`, `would_overflow`.
    pub fn to_code(self) -> String {
        match self {
            StockRefusal::UnknownSku => "unknown_sku".into(),
            StockRefusal::WouldGoNegative { available } => format!("would_go_negative:{available}"),
            StockRefusal::WouldOverflow => "would_overflow".into(),
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "unknown_sku" => Some(StockRefusal::UnknownSku),
            "would_overflow" => Some(StockRefusal::WouldOverflow),
            other => {
                let available = other.strip_prefix("would_go_negative:")?.parse().ok()?;
                Some(StockRefusal::WouldGoNegative { available })
            }
        }
    }
}

/// The first answer to a keyed stock adjustment: the change asked for and whether it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    pub delta: i64,
    pub refused: Option<StockRefusal>,
}

/// The idempotency key of a product's initial stock (`createProduct(input: {stock})`, the demo catalog):
/// whichever attempt of a create gets there applies it, once.
pub const INITIAL_STOCK_KEY: &str = "initial-stock";

/// One movement of stock, for the per-SKU ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockMovement {
    pub at_ms: i64,
    /// `adjust`, `reserve`, `release`, `commit`.
    pub kind: String,
    /// Change in available units (negative when units are held or removed).
    pub available_delta: i64,
    pub reference: String,
}

/// The store of stock. Every call that writes takes the [`Fence`] of the command it applies: stock is owned
/// by the SKU's partition of the inventory topic, and only the consumer that owns that partition writes it,
/// one command at a time, in log order, with fences that grow. The CQL adapter writes a SKU's level, its
/// rows and its alerts in one fenced single-partition batch per run of commands, so that a zombie owner's
/// late writes lose (see [`Fence`]); the embedded adapter, which cannot have zombies, ignores the fence.
/// Two calls for one SKU must never share a fence (the second would tie with the first).
#[async_trait]
pub trait InventoryStore: Send + Sync {
    async fn stock(&self, sku: &Sku) -> Result<Option<StockLevel>>;
    /// Adds (or with a negative delta removes) available units of a known SKU. Creates the stock row
    /// for a product that has none. With an idempotency `key` (a staff stock command's request key), the
    /// first answer is recorded under (SKU, key) and stands: a repeat returns the level as it now is (or
    /// the same refusal) and changes nothing, and the same key with another delta is
    /// [`StockError::KeyReused`]. Keys are kept for at least the idempotency window (see the adapters).
    /// Only the inventory processor that owns the SKU's partition calls this (a staff change is a command on
    /// the inventory topic).
    async fn adjust_stock(
        &self,
        sku: &Sku,
        delta: i64,
        reason: &str,
        key: Option<&str>,
        fence: Fence,
    ) -> Result<StockLevel, StockError>;
    /// The first answer recorded under an adjustment's `key`, if it has been handled.
    async fn adjustment(&self, sku: &Sku, key: &str) -> Result<Option<Adjustment>>;
    /// Holds the units of one SKU for an order, or nothing. Idempotent per (order, SKU): a second call
    /// returns the first result and changes nothing. Never lets `available` go below zero. (An order of
    /// several SKUs is several holds, one per SKU, each made by that SKU's partition; the saga collects
    /// the answers and gives back the others when one is refused.)
    async fn reserve(&self, hold: &Hold, fence: Fence) -> Result<Reservation>;
    /// [`InventoryStore::reserve`] for several holds, each with the fence of its command, answered in
    /// order, as if one after the other. An adapter that can write them together (one transaction, or one
    /// batch per SKU) overrides this; the default reserves one by one.
    async fn reserve_many(&self, holds: &[(Hold, Fence)]) -> Result<Vec<Reservation>> {
        let mut out = Vec::with_capacity(holds.len());
        for (hold, fence) in holds {
            out.push(self.reserve(hold, *fence).await?);
        }
        Ok(out)
    }
    /// Ends the order's hold of `sku`: back to `available` (release) or out as `sold` (commit).
    /// Idempotent. The answer is `end` if this call ended the hold, `NothingHeld` if nothing was held
    /// any more (ended before, or never reserved: then the pair is closed, and a later reservation of
    /// that SKU for the order is refused).
    async fn end_reservation(
        &self,
        order: &OrderId,
        sku: &Sku,
        end: ReservationEnd,
        fence: Fence,
    ) -> Result<ReservationEnd>;
    /// The most recent movements of a SKU, newest first.
    async fn movements(&self, sku: &Sku, limit: usize) -> Result<Vec<StockMovement>>;

    /// Sets the low-stock threshold of a known SKU (see [`LowStock`]). Only the inventory processor calls
    /// this, for a staff stock command. With the command's request `key`, a repeat (a redelivery, which may
    /// come after later changes were applied) changes nothing and returns the state as it is.
    async fn set_low_stock_threshold(
        &self,
        sku: &Sku,
        threshold: u64,
        key: Option<&str>,
        fence: Fence,
    ) -> Result<LowStock, StockError>;
    /// The SKU's threshold and whether it is currently flagged low (defaults for a SKU never set up).
    async fn low_stock(&self, sku: &Sku) -> Result<LowStock>;
    /// Makes sure a flip of the SKU's low flag by its level is recorded as the SKU's next alert (the CQL
    /// adapter records it in the write that changed the level or the threshold; the embedded one compares
    /// here), and returns the SKU's alerts not yet marked published, oldest first (a new one included):
    /// the caller publishes them and marks them. Every change of a SKU's level is followed by a call, with
    /// the fence of the last command applied, so the flag follows the level; a crossing is one alert, not
    /// one per order.
    async fn settle_low_stock(&self, sku: &Sku, fence: Fence) -> Result<Vec<StockAlert>>;
    /// Marks the SKU's alert `seq` as published. Idempotent.
    async fn mark_alert_published(&self, sku: &Sku, seq: u64, fence: Fence) -> Result<()>;
    /// Alerts newest first: of one SKU, or of every SKU over the last [`ALERT_LISTING_DAYS`] days.
    async fn stock_alerts(&self, sku: Option<&Sku>, limit: usize) -> Result<Vec<StockAlert>>;
}

/// How far back the all-SKU alert listing looks.
pub const ALERT_LISTING_DAYS: i64 = 7;

/// A SKU's low-stock setting and state. `low` is a hysteresis flag: it turns on when available units
/// are at or below `threshold` and off when they are above it, each flip being one [`StockAlert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowStock {
    pub threshold: u64,
    pub low: bool,
    /// Crossings recorded so far (the seq of the latest alert).
    pub crossings: u64,
}

impl Default for LowStock {
    fn default() -> Self {
        Self { threshold: orderflow_schemas::stock_alert::DEFAULT_LOW_STOCK_THRESHOLD, low: false, crossings: 0 }
    }
}

impl LowStock {
    /// The alert to record if `available` units flip the flag, or `None`.
    pub fn crossing(&self, sku: &Sku, available: u64, at_ms: i64) -> Option<StockAlert> {
        let now_low = available <= self.threshold;
        (now_low != self.low).then(|| {
            let seq = self.crossings + 1;
            StockAlert {
                sku: sku.clone(),
                seq,
                kind: if now_low { StockAlertKind::InventoryLow } else { StockAlertKind::InventoryRestocked },
                available,
                threshold: self.threshold,
                at_ms,
            }
        })
    }

    /// The state after recording `alert`.
    pub fn after(&self, alert: &StockAlert) -> LowStock {
        LowStock { threshold: self.threshold, low: alert.kind == StockAlertKind::InventoryLow, crossings: alert.seq }
    }
}

// ---------------------------------------------------------------------------------------------------
// Orders

/// Filters for listing orders. Both set = both must match.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub user: Option<UserId>,
    pub status: Option<OrderStatus>,
}

/// Counts behind the `metrics` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStats {
    pub by_status: Vec<(OrderStatus, u64)>,
    /// Orders that reached CONFIRMED or REJECTED.
    pub processed: u64,
    /// Sum over processed orders of (processed_at - placed_at), for the average.
    pub processing_ms_total: u64,
}

/// How far before the oldest order still PENDING at its last pass a stalled-order sweep looks again:
/// covers an order whose insert finished a while after the `placed_at_ms` it carries.
pub const STALLED_SWEEP_MARGIN_MS: i64 = 60_000;

/// The statuses in which an order can stall, each swept by the order saga's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stalled {
    /// Accepted by intake; its `OrderPlaced` may never have reached the bus: published again.
    Pending,
    /// Being processed, with no end in sight: compensated after `--stuck-order-timeout`.
    Processing,
}

impl Stalled {
    pub fn status(self) -> OrderStatus {
        match self {
            Self::Pending => OrderStatus::Pending,
            Self::Processing => OrderStatus::Processing,
        }
    }
}

/// One [`SweepFloor`] per [`Stalled`] status.
#[derive(Debug, Default)]
pub struct SweepFloors {
    pending: SweepFloor,
    processing: SweepFloor,
}

impl SweepFloors {
    pub fn of(&self, stalled: Stalled) -> &SweepFloor {
        match stalled {
            Stalled::Pending => &self.pending,
            Stalled::Processing => &self.processing,
        }
    }
}

/// Where an adapter's next sweep of one stalled status starts (see [`OrderStore::stalled`]): the placement
/// time of the oldest order still in that status at the last pass, or, if none was, that pass's cut-off.
#[derive(Debug)]
pub struct SweepFloor(std::sync::atomic::AtomicI64);

impl Default for SweepFloor {
    fn default() -> Self {
        Self(std::sync::atomic::AtomicI64::new(i64::MIN))
    }
}

impl SweepFloor {
    /// The earliest placement time (ms) the next sweep must look at: the floor less
    /// [`STALLED_SWEEP_MARGIN_MS`], or `None` before the first pass (look at everything).
    pub fn sweep_from_ms(&self) -> Option<i64> {
        let floor = self.0.load(std::sync::atomic::Ordering::Relaxed);
        (floor != i64::MIN).then(|| floor.saturating_sub(STALLED_SWEEP_MARGIN_MS))
    }

    /// Records a pass over orders placed before `placed_before_ms` that found `oldest_pending` (the
    /// placement time of the oldest PENDING order it returned) and, if `complete`, saw every one of them.
    /// The floor only moves forward.
    pub fn passed(&self, oldest_pending: Option<i64>, complete: bool, placed_before_ms: i64) {
        let floor = match oldest_pending {
            Some(oldest) => oldest,
            None if complete => placed_before_ms,
            None => return,
        };
        self.0.fetch_max(floor.min(placed_before_ms), std::sync::atomic::Ordering::Relaxed);
    }
}

/// The outcome of [`OrderStore::insert_new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// An order with that id already exists; here it is.
    Existing(Box<Order>),
}

/// A saga step: the order's new state and the records it must publish, applied once per event.
#[derive(Debug, Clone)]
pub struct Transition {
    pub event_id: EventId,
    /// The status the order must still have for the step to apply.
    pub expected: OrderStatus,
    pub order: Order,
    pub outputs: Vec<BusRecord>,
    /// The saga's ownership of the order's partition and the offset of the event being applied.
    pub fence: Fence,
}

/// The outcome of [`OrderStore::apply`].
#[derive(Debug, Clone)]
pub enum Applied {
    /// Written now; publish `outputs`.
    Applied,
    /// This event was applied before. When this delivery is the very record that applied it (the same
    /// offset: a redelivery after a crash, which may have come before the outputs were published), the
    /// outputs stored with it, to publish again. When it is a copy of the event at another offset (a
    /// re-published `OrderPlaced`, a reply sent twice by a step that was itself redelivered), none: the
    /// record that applied it published them, or will on its own redelivery, so a copy never sets the
    /// rest of the pipeline going a second time.
    Duplicate(Vec<BusRecord>),
    /// The order moved on meanwhile; re-read it and decide again.
    Conflict,
}

#[async_trait]
pub trait OrderStore: Send + Sync {
    /// Inserts a new order if the id is free.
    async fn insert_new(&self, order: &Order) -> Result<Inserted>;
    /// Told by intake, right after [`OrderStore::insert_new`] inserted `order` (new, no event applied to
    /// it) and before its `OrderPlaced` is published, that this process's saga holds the order's partition
    /// under `epoch`: an adapter that keeps the owner's state in memory per epoch may take `order` as that
    /// state, so the saga's first step needs no read. Never replaces what the adapter already holds of the
    /// order. Nothing by default.
    fn placed_under(&self, order: &Order, epoch: u64) {
        let _ = (order, epoch);
    }
    async fn order(&self, id: &OrderId) -> Result<Option<Order>>;
    /// The order as the saga reads it before a step it will write under `fence`: [`OrderStore::order`],
    /// which an adapter may answer from what it read or wrote of the order under the same epoch (only the
    /// partition's owner writes it, see [`Fence`]), and remember for the step's write.
    async fn order_for_step(&self, id: &OrderId, fence: Fence) -> Result<Option<Order>> {
        let _ = fence;
        self.order(id).await
    }
    /// Applies a saga step atomically with a record of the event and its outputs, if the order still
    /// has `expected` status and the event was not applied before.
    async fn apply(&self, transition: Transition) -> Result<Applied>;
    /// [`OrderStore::apply`] for steps of different orders (never two of one order), answered in order.
    /// An adapter that can commit them together (one transaction on the embedded store) or overlap them
    /// (different CQL partitions) overrides this; the default applies them one by one.
    async fn apply_many(&self, transitions: Vec<Transition>) -> Result<Vec<Applied>> {
        let mut out = Vec::with_capacity(transitions.len());
        for t in transitions {
            out.push(self.apply(t).await?);
        }
        Ok(out)
    }
    /// Records an event that changes nothing (e.g. a late reply) so that its redelivery is recognised.
    /// `Some` when it was applied or seen before, with what to publish again as for [`Applied::Duplicate`].
    async fn seen(&self, id: &OrderId, event: EventId, fence: Fence) -> Result<Option<Vec<BusRecord>>>;
    /// Newest first, starting after the position `after` (a key from an earlier page).
    async fn list(&self, filter: &OrderFilter, after: Option<&str>, limit: usize) -> Result<Page<Order>>;
    /// Orders still in the `stalled` status placed before `placed_before_ms`, oldest first (see
    /// [`Stalled`] for what the saga's role does with them).
    /// An adapter may remember where the oldest such order was at its last call and start the next one
    /// there (less [`STALLED_SWEEP_MARGIN_MS`]): a status index is mostly deletions of orders that moved
    /// on, and reading all of them on every sweep would cost more the more orders were ever placed.
    async fn stalled(&self, stalled: Stalled, placed_before_ms: i64, limit: usize) -> Result<Vec<Order>>;
    async fn stats(&self) -> Result<OrderStats>;
    /// Records that orderflow itself asks for `request` on `order` under event id `event` (a staff status
    /// change or cancellation, the stuck-order sweep's rejection; `request` names what is asked, e.g.
    /// `StatusChangeRequested:DELIVERED`), before the record is published. The saga applies such a record
    /// only if [`OrderStore::recorded_request`] finds it here with the same `request`, so a record written
    /// to the topic by anyone else moves no order, stock or money.
    async fn record_request(&self, order: &OrderId, event: EventId, request: &str) -> Result<()>;
    /// What [`OrderStore::record_request`] recorded for `event` on `order`, if anything.
    async fn recorded_request(&self, order: &OrderId, event: EventId) -> Result<Option<String>>;
}

// ---------------------------------------------------------------------------------------------------
// Payments

/// The payment of one order as the payment processor recorded it, with the provider's id of the payment
/// (Stripe: the PaymentIntent). Each step of the payment replaces the record of the step before:
/// authorised, then captured (or voided, or declined), then refunded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentRecord {
    /// The customer must act before the amount can be held (3-D Secure): their app completes the
    /// payment with `client_secret` (`next_action` says how, e.g. `use_stripe_sdk`), the provider's webhook
    /// tells orderflow, and the payment goes on; or it times out and is voided.
    ActionRequired {
        payment_id: String,
        amount: Money,
        client_secret: String,
        next_action: String,
    },
    /// The amount is held on the customer's payment method, not yet taken.
    Authorised {
        payment_id: String,
        amount: Money,
    },
    Captured {
        charge_id: String,
        amount: Money,
    },
    /// Captured, and paid back in part by staff: one refund per staff request key.
    PartlyRefunded {
        charge_id: String,
        amount: Money,
        refunds: Vec<PartRefund>,
    },
    Declined {
        reason: String,
    },
    /// An authorisation released without a capture: no money moved.
    Voided {
        payment_id: String,
        amount: Money,
    },
    Refunded {
        charge_id: String,
        refund_id: String,
        amount: Money,
    },
}

#[async_trait]
pub trait PaymentStore: Send + Sync {
    async fn payment(&self, order: &OrderId) -> Result<Option<PaymentRecord>>;
    /// Stores an order's first record, once [`PaymentStore::payment`] found none. Written by the owner of
    /// the order's payments partition only, stamped with its `fence`, and without reading again: between
    /// that read and this write only a zombie (an earlier owner) can have written, and its write carries
    /// an older epoch and loses (its provider call used the same idempotency key, so it recorded the same
    /// outcome).
    async fn record_new(&self, order: &OrderId, record: &PaymentRecord, fence: Fence) -> Result<()>;
    /// Replaces `from` with `to` if `from` is stored; returns the record now stored.
    async fn replace(
        &self,
        order: &OrderId,
        from: &PaymentRecord,
        to: &PaymentRecord,
        fence: Fence,
    ) -> Result<PaymentRecord>;
}

/// One partial refund of a captured payment, under the staff request's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRefund {
    pub key: String,
    pub refund_id: String,
    pub amount: Money,
}

impl PaymentRecord {
    /// The provider's id of the payment (Stripe: the PaymentIntent); `None` for a decline.
    pub fn payment_id(&self) -> Option<&str> {
        match self {
            PaymentRecord::ActionRequired { payment_id, .. }
            | PaymentRecord::Authorised { payment_id, .. }
            | PaymentRecord::Voided { payment_id, .. } => Some(payment_id),
            PaymentRecord::Captured { charge_id, .. }
            | PaymentRecord::PartlyRefunded { charge_id, .. }
            | PaymentRecord::Refunded { charge_id, .. } => Some(charge_id),
            PaymentRecord::Declined { .. } => None,
        }
    }

    /// The staff refund made under `key`, if there is one.
    pub fn refund_under(&self, key: &str) -> Option<&PartRefund> {
        match self {
            PaymentRecord::PartlyRefunded { refunds, .. } => refunds.iter().find(|r| r.key == key),
            _ => None,
        }
    }

    /// What is left of a capture to pay back: `None` when nothing was captured, or all of it went back.
    pub fn refundable(&self) -> Option<Money> {
        match self {
            PaymentRecord::Captured { amount, .. } => Some(*amount),
            PaymentRecord::PartlyRefunded { amount, refunds, .. } => {
                let back: i64 = refunds.iter().map(|r| r.amount.cents()).sum();
                Money::from_cents(amount.cents() - back).ok().filter(|left| *left > Money::ZERO)
            }
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Fulfillment

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    pub shipment_id: String,
    pub order_id: OrderId,
    pub user_id: UserId,
    pub lines: Vec<(Sku, Quantity)>,
    pub created_at_ms: i64,
}

#[async_trait]
pub trait ShipmentStore: Send + Sync {
    /// Creates the order's shipment unless it has one; returns the stored shipment. Written by the owner of
    /// the order's fulfillment partition only, stamped with its `fence`.
    async fn create_once(&self, shipment: &Shipment, fence: Fence) -> Result<Shipment>;
    async fn shipment(&self, order: &OrderId) -> Result<Option<Shipment>>;
}
