//! The embedded store: every port of [`crate::store`] on fjall keyspaces. Rows are JSON; keys are laid out
//! so each query is one prefix or range scan (see the key notes on each method).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use fjall::Readable;
use orderflow_schemas::{
    EventId, Order, OrderId, OrderStatus, Product, ProductSummary, Sku, StockAlert, StockLevel, now_ms,
};
use serde::{Deserialize, Serialize};

use super::{Db, from_row, to_row, unavailable};
use crate::bus::BusRecord;
use crate::store::*;

/// The embedded adapter of every store port.
pub struct EmbeddedStore {
    db: Arc<Db>,
    /// No order placed before this time (ms) was PENDING at the last stalled-order sweep, so the next
    /// sweep starts there (see [`OrderStore::stalled`]).
    sweep_floors: SweepFloors,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db, sweep_floors: SweepFloors::default() }
    }
}

fn get_row<T: serde::de::DeserializeOwned>(
    r: &impl Readable,
    ks: &fjall::SingleWriterTxKeyspace,
    key: impl AsRef<[u8]>,
) -> Result<Option<T>> {
    match r.get(ks, key).map_err(unavailable)? {
        Some(v) => Ok(Some(from_row(&v)?)),
        None => Ok(None),
    }
}

fn get_latest<T: serde::de::DeserializeOwned>(
    ks: &fjall::SingleWriterTxKeyspace,
    key: impl AsRef<[u8]>,
) -> Result<Option<T>> {
    match ks.get(key).map_err(unavailable)? {
        Some(v) => Ok(Some(from_row(&v)?)),
        None => Ok(None),
    }
}

/// Keyset page over the keys `prefix + suffix`, in key order (or reversed), starting after `after`.
fn page_keys(
    ks: &fjall::SingleWriterTxKeyspace,
    prefix: &[u8],
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<String>, bool)> {
    let mut start = prefix.to_vec();
    if let Some(after) = after {
        start.extend_from_slice(after.as_bytes());
        start.push(0);
    }
    let mut end = prefix.to_vec();
    end.push(0xFF);
    let mut out = Vec::with_capacity(limit + 1);
    for guard in ks.inner().range(start..end).take(limit + 1) {
        let key = guard.key().map_err(unavailable)?;
        let suffix = key.get(prefix.len()..).unwrap_or_default();
        out.push(String::from_utf8_lossy(suffix).into_owned());
    }
    let has_next = out.len() > limit;
    out.truncate(limit);
    Ok((out, has_next))
}

// ---------------------------------------------------------------------------------------------------
// Catalog write model: products[sku] = Product.
// Catalog read model: product_view[sku] = Product (newest version seen); product_listing[sku] =
// ProductSummary, in SKU order, so the listing is one scan of small rows.

#[async_trait]
impl CatalogStore for EmbeddedStore {
    async fn create_product(&self, product: &Product) -> Result<bool> {
        let product = product.clone();
        self.db
            .write(move |db, tx| {
                if tx.contains_key(&db.products, product.sku.as_str()).map_err(unavailable)? {
                    return Ok(false);
                }
                tx.insert(&db.products, product.sku.as_str(), to_row(&product)?);
                Ok(true)
            })
            .await
    }

    async fn update_product(&self, product: &Product) -> Result<ProductWrite> {
        let product = product.clone();
        self.db
            .write(move |db, tx| {
                let Some(stored) = get_row::<Product>(tx, &db.products, product.sku.as_str())? else {
                    return Ok(ProductWrite::NotFound);
                };
                if stored.version.checked_add(1) != Some(product.version) {
                    return Ok(ProductWrite::Conflict(stored));
                }
                tx.insert(&db.products, product.sku.as_str(), to_row(&product)?);
                Ok(ProductWrite::Written)
            })
            .await
    }

    async fn product(&self, sku: &Sku) -> Result<Option<Product>> {
        get_latest(&self.db.products, sku.as_str())
    }

    async fn products(&self, after: Option<&str>, limit: usize) -> Result<Page<Product>> {
        let mut start = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
        if after.is_some() {
            start.push(0);
        }
        let mut items = Vec::with_capacity(limit + 1);
        for guard in self.db.products.inner().range(start..).take(limit + 1) {
            let (k, v) = guard.into_inner().map_err(unavailable)?;
            items.push((String::from_utf8_lossy(&k).into_owned(), from_row::<Product>(&v)?));
        }
        let has_next = items.len() > limit;
        items.truncate(limit);
        Ok(Page { items, has_next })
    }

    async fn product_versions(&self, after: Option<&str>, limit: usize) -> Result<Page<u64>> {
        let page = self.products(after, limit).await?;
        Ok(Page { items: page.items.into_iter().map(|(k, p)| (k, p.version)).collect(), has_next: page.has_next })
    }
}

#[async_trait]
impl CatalogViewStore for EmbeddedStore {
    async fn upsert_if_newer(&self, product: &Product) -> Result<Projected> {
        let product = product.clone();
        self.db
            .write(move |db, tx| {
                let stored = get_row::<Product>(tx, &db.product_view, product.sku.as_str())?;
                let outcome = match stored {
                    Some(s) if s.version > product.version => return Ok(Projected::Stale),
                    Some(s) if s.version == product.version => Projected::AlreadyCurrent,
                    _ => Projected::Applied,
                };
                tx.insert(&db.product_view, product.sku.as_str(), to_row(&product)?);
                tx.insert(&db.product_listing, product.sku.as_str(), to_row(&ProductSummary::from(&product))?);
                Ok(outcome)
            })
            .await
    }

    async fn view_product(&self, sku: &Sku) -> Result<Option<Product>> {
        get_latest(&self.db.product_view, sku.as_str())
    }

    async fn listing(&self, limit: usize) -> Result<Vec<ProductSummary>> {
        self.db.product_listing.inner().iter().take(limit).map(|g| from_row(&g.value().map_err(unavailable)?)).collect()
    }
}

// ---------------------------------------------------------------------------------------------------
// Inventory: stock[sku] = StockLevel; reservations[order 0x00 sku] = ReservationRow (one order's hold of
// one SKU); stock_moves[sku 0x00 seq(BE)] = StockMovement (newest last, read in reverse).

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReservationRow {
    /// The SKU and the units held: one line since per-SKU reservations; rows from before them, keyed by
    /// the order alone, had one per SKU of the order (see [`upgrade_reservations`]). Stored as numbers,
    /// so rows written when these were `Quantity` read back unchanged.
    lines: Vec<(Sku, u64)>,
    outcome: Reservation,
    ended: Option<ReservationEnd>,
}

/// Key of an order's reservation of one SKU: `order 0x00 sku`.
fn hold_key(order: &OrderId, sku: &Sku) -> Vec<u8> {
    [order.as_str().as_bytes(), b"\0", sku.as_str().as_bytes()].concat()
}

/// Present in `reservations` once its rows are all keyed by (order, SKU). Sorts before every order id.
const PER_SKU_RESERVATIONS: &[u8] = b"\0format:per-sku";

/// Rows written before per-SKU reservations are keyed by the order alone and may hold several SKUs. The
/// first open by this version splits each into one row per SKU (the outcome of a reserved one becomes
/// each SKU's own units; a refusal refuses every SKU, which is what it did) and marks the keyspace done,
/// so later opens read one key. A row with no lines (a reservation closed before it was made) names no
/// SKU and is dropped: per-SKU commands never look for it. Returns how many rows were split.
pub(crate) fn upgrade_reservations(db: &Db) -> Result<usize> {
    if db.reservations.get(PER_SKU_RESERVATIONS).map_err(unavailable)?.is_some() {
        return Ok(0);
    }
    let mut legacy = Vec::new();
    for guard in db.reservations.inner().iter() {
        let (key, value) = guard.into_inner().map_err(unavailable)?;
        if !key.contains(&0) {
            legacy.push((key, from_row::<ReservationRow>(&value)?));
        }
    }
    let mut tx = db.db.write_tx().durability(db.durability);
    for (key, row) in &legacy {
        let order = OrderId::parse(String::from_utf8_lossy(key).into_owned())
            .map_err(|e| StoreError::Corrupt(format!("a reservation keyed {key:?}: {e}")))?;
        for (sku, units) in &row.lines {
            let outcome = match &row.outcome {
                Reservation::Reserved { .. } => Reservation::Reserved { units: *units },
                refused => refused.clone(),
            };
            let split = ReservationRow { lines: vec![(sku.clone(), *units)], outcome, ended: row.ended };
            tx.insert(&db.reservations, hold_key(&order, sku), to_row(&split)?);
        }
        tx.remove(&db.reservations, key.as_ref());
    }
    tx.insert(&db.reservations, PER_SKU_RESERVATIONS, b"1".as_slice());
    tx.commit().map_err(unavailable)?;
    if !legacy.is_empty() {
        tracing::info!(rows = legacy.len(), "reservations from an earlier version split into one per SKU");
    }
    Ok(legacy.len())
}

fn movement_key(sku: &Sku, seq: u64) -> Vec<u8> {
    let mut k = sku.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn record_movement(
    db: &Db,
    tx: &mut fjall::SingleWriterWriteTx<'_>,
    sku: &Sku,
    kind: &str,
    delta: i64,
    reference: &str,
) -> Result<()> {
    let at_ms = now_ms();
    let m = StockMovement { at_ms, kind: kind.to_owned(), available_delta: delta, reference: reference.to_owned() };
    tx.insert(&db.stock_moves, movement_key(sku, db.next_seq()), to_row(&m)?);
    Ok(())
}

/// A count of units as a ledger delta: never more than the SKU's units, which `adjust_stock` keeps within
/// `i64`; a larger one is a corrupt row.
fn delta(units: u64) -> Result<i64> {
    i64::try_from(units).map_err(|_| StoreError::Corrupt(format!("a movement of {units} units")))
}

/// Holds the units of one SKU for an order, or nothing, inside the caller's write transaction; a second
/// call for the pair returns the stored outcome.
fn reserve_in_tx(db: &Db, tx: &mut fjall::SingleWriterWriteTx<'_>, hold: &Hold) -> Result<Reservation> {
    let (order, sku, q) = (&hold.order, &hold.sku, hold.units());
    let key = hold_key(order, sku);
    if let Some(row) = get_row::<ReservationRow>(tx, &db.reservations, &key)? {
        return Ok(row.outcome);
    }
    let outcome = if !tx.contains_key(&db.products, sku.as_str()).map_err(unavailable)? {
        Reservation::Rejected { reason: "unknown_sku".into(), sku: Some(sku.clone()) }
    } else {
        let mut level: StockLevel = get_row(tx, &db.stock, sku.as_str())?.unwrap_or_default();
        if level.available < q {
            Reservation::Rejected { reason: "out_of_stock".into(), sku: Some(sku.clone()) }
        } else {
            // `q <= available` was checked just above, under the same write lock, and available +
            // reserved + sold stays within i64 (adjust_stock), so none of this can overflow.
            level.available -= q;
            level.reserved += q;
            tx.insert(&db.stock, sku.as_str(), to_row(&level)?);
            record_movement(db, tx, sku, "reserve", -delta(q)?, order.as_str())?;
            Reservation::Reserved { units: q }
        }
    };
    let row = ReservationRow { lines: vec![(sku.clone(), q)], outcome: outcome.clone(), ended: None };
    tx.insert(&db.reservations, key, to_row(&row)?);
    Ok(outcome)
}

#[async_trait]
impl InventoryStore for EmbeddedStore {
    async fn stock(&self, sku: &Sku) -> Result<Option<StockLevel>> {
        get_latest(&self.db.stock, sku.as_str())
    }

    async fn adjust_stock(
        &self,
        sku: &Sku,
        delta: i64,
        reason: &str,
        key: Option<&str>,
        _fence: Fence,
    ) -> Result<StockLevel, StockError> {
        let (sku, reason, key) = (sku.clone(), reason.to_owned(), key.map(str::to_owned));
        self.db
            .write(move |db, tx| {
                let known = tx.contains_key(&db.products, sku.as_str()).map_err(unavailable)?;
                if !known && key.is_none() {
                    return Ok(Err(StockError::UnknownSku(sku)));
                }
                let mut level: StockLevel = get_row(tx, &db.stock, sku.as_str())?.unwrap_or_default();
                let key_row = key.as_deref().map(|k| adjustment_key(&sku, k));
                if let Some(row) = &key_row
                    && let Some(first) = get_row::<StoredAdjustment>(tx, &db.stock, row)?
                {
                    let first = first.adjustment();
                    if first.delta != delta {
                        let key = key.unwrap_or_default();
                        return Ok(Err(StockError::KeyReused { sku, key, applied: first.delta, asked: delta }));
                    }
                    return Ok(match first.refused {
                        Some(refusal) => Err(refusal.into_error(&sku)),
                        None => Ok(level),
                    });
                }
                let refusal = if !known {
                    Some(StockRefusal::UnknownSku)
                } else {
                    match u64::try_from(i128::from(level.available) + i128::from(delta)) {
                        Err(_) => Some(StockRefusal::WouldGoNegative { available: level.available }),
                        Ok(available)
                            if i128::from(available) + i128::from(level.reserved) + i128::from(level.sold)
                                > i128::from(i64::MAX) =>
                        {
                            Some(StockRefusal::WouldOverflow)
                        }
                        Ok(available) => {
                            level.available = available;
                            None
                        }
                    }
                };
                if let Some(row) = key_row {
                    tx.insert(
                        &db.stock,
                        row,
                        to_row(&StoredAdjustment::Answer(Adjustment { delta, refused: refusal }))?,
                    );
                }
                if let Some(refusal) = refusal {
                    return Ok(Err(refusal.into_error(&sku)));
                }
                tx.insert(&db.stock, sku.as_str(), to_row(&level)?);
                record_movement(db, tx, &sku, "adjust", delta, &reason)?;
                Ok(Ok(level))
            })
            .await?
    }

    async fn adjustment(&self, sku: &Sku, key: &str) -> Result<Option<Adjustment>> {
        Ok(get_latest::<StoredAdjustment>(&self.db.stock, adjustment_key(sku, key))?.map(StoredAdjustment::adjustment))
    }

    async fn reserve(&self, hold: &Hold, fence: Fence) -> Result<Reservation> {
        let mut out = self.reserve_many(&[(hold.clone(), fence)]).await?;
        out.pop().ok_or_else(|| StoreError::Corrupt("no reservation outcome".into()))
    }

    async fn reserve_many(&self, holds: &[(Hold, Fence)]) -> Result<Vec<Reservation>> {
        let holds: Vec<Hold> = holds.iter().map(|(hold, _)| hold.clone()).collect();
        // One transaction for all of them: later holds see the stock earlier ones took.
        self.db.write(move |db, tx| holds.iter().map(|hold| reserve_in_tx(db, tx, hold)).collect()).await
    }

    async fn end_reservation(
        &self,
        order: &OrderId,
        sku: &Sku,
        end: ReservationEnd,
        _fence: Fence,
    ) -> Result<ReservationEnd> {
        let (order, sku) = (order.clone(), sku.clone());
        self.db
            .write(move |db, tx| {
                let key = hold_key(&order, &sku);
                let Some(mut row) = get_row::<ReservationRow>(tx, &db.reservations, &key)? else {
                    // Nothing was reserved: leave a closed row so a late reservation request is refused.
                    let row = ReservationRow {
                        lines: Vec::new(),
                        outcome: Reservation::Rejected { reason: "ended_before_reserved".into(), sku: Some(sku) },
                        ended: Some(end),
                    };
                    tx.insert(&db.reservations, key, to_row(&row)?);
                    return Ok(ReservationEnd::NothingHeld);
                };
                if row.ended.is_some()
                    || !matches!(row.outcome, Reservation::Reserved { .. })
                    || end == ReservationEnd::NothingHeld
                {
                    return Ok(ReservationEnd::NothingHeld);
                }
                for (sku, q) in &row.lines {
                    let mut level: StockLevel = get_row(tx, &db.stock, sku.as_str())?.unwrap_or_default();
                    if level.reserved < *q {
                        return Err(StoreError::Corrupt(format!("{sku}: {} reserved, releasing {q}", level.reserved)));
                    }
                    // Units move from reserved to available or sold: their sum does not change.
                    level.reserved -= *q;
                    match end {
                        ReservationEnd::Released => {
                            level.available += *q;
                            record_movement(db, tx, sku, "release", delta(*q)?, order.as_str())?;
                        }
                        _ => {
                            level.sold += *q;
                            record_movement(db, tx, sku, "commit", 0, order.as_str())?;
                        }
                    }
                    tx.insert(&db.stock, sku.as_str(), to_row(&level)?);
                }
                row.ended = Some(end);
                tx.insert(&db.reservations, key, to_row(&row)?);
                Ok(end)
            })
            .await
    }

    async fn movements(&self, sku: &Sku, limit: usize) -> Result<Vec<StockMovement>> {
        let mut prefix = sku.as_str().as_bytes().to_vec();
        prefix.push(0);
        self.db
            .stock_moves
            .inner()
            .prefix(prefix)
            .rev()
            .take(limit)
            .map(|g| from_row(&g.value().map_err(unavailable)?))
            .collect()
    }

    async fn set_low_stock_threshold(
        &self,
        sku: &Sku,
        threshold: u64,
        key: Option<&str>,
        _fence: Fence,
    ) -> Result<LowStock, StockError> {
        let (sku, key_row) = (sku.clone(), key.map(|k| threshold_request_key(sku, k)));
        self.db
            .write(move |db, tx| {
                if !tx.contains_key(&db.products, sku.as_str()).map_err(unavailable)? {
                    return Ok(Err(StockError::UnknownSku(sku)));
                }
                let mut state: LowStock = get_row(tx, &db.stock_alerts, alert_state_key(&sku))?.unwrap_or_default();
                if let Some(row) = &key_row {
                    if tx.contains_key(&db.stock, row).map_err(unavailable)? {
                        return Ok(Ok(state));
                    }
                    tx.insert(&db.stock, row, to_row(&threshold)?);
                }
                state.threshold = threshold;
                tx.insert(&db.stock_alerts, alert_state_key(&sku), to_row(&state)?);
                Ok(Ok(state))
            })
            .await?
    }

    async fn low_stock(&self, sku: &Sku) -> Result<LowStock> {
        Ok(get_latest(&self.db.stock_alerts, alert_state_key(sku))?.unwrap_or_default())
    }

    async fn settle_low_stock(&self, sku: &Sku, _fence: Fence) -> Result<Vec<StockAlert>> {
        // The common case (no crossing, nothing unpublished) needs no write transaction: a look at the
        // latest committed rows settles it. A crossing is re-checked and recorded under the write lock.
        let level: Option<StockLevel> = get_latest(&self.db.stock, sku.as_str())?;
        let state: LowStock = get_latest(&self.db.stock_alerts, alert_state_key(sku))?.unwrap_or_default();
        if level.is_none_or(|l| state.crossing(sku, l.available, 0).is_none()) {
            let from: u64 = get_latest(&self.db.stock_alerts, published_below_key(sku))?.unwrap_or(1);
            let mut unpublished = Vec::new();
            for g in self.db.stock_alerts.inner().range(alert_key(sku, from)..alert_end(sku)) {
                let row: AlertRow = from_row(&g.value().map_err(unavailable)?)?;
                if !row.published {
                    unpublished.push(row.alert);
                }
            }
            if unpublished.is_empty() {
                return Ok(unpublished);
            }
        }
        let sku = sku.clone();
        self.db
            .write(move |db, tx| {
                // Read and flip in one serialisable transaction: no other writer can interleave.
                if let Some(level) = get_row::<StockLevel>(tx, &db.stock, sku.as_str())? {
                    let state: LowStock = get_row(tx, &db.stock_alerts, alert_state_key(&sku))?.unwrap_or_default();
                    if let Some(alert) = state.crossing(&sku, level.available, now_ms()) {
                        tx.insert(&db.stock_alerts, alert_state_key(&sku), to_row(&state.after(&alert))?);
                        tx.insert(&db.stock_alerts, alert_time_key(&alert), []);
                        let row = AlertRow { alert, published: false };
                        tx.insert(&db.stock_alerts, alert_key(&sku, row.alert.seq), to_row(&row)?);
                    }
                }
                let from: u64 = get_row(tx, &db.stock_alerts, published_below_key(&sku))?.unwrap_or(1);
                let mut unpublished = Vec::new();
                for g in tx.range(&db.stock_alerts, alert_key(&sku, from)..alert_end(&sku)) {
                    let row: AlertRow = from_row(&g.value().map_err(unavailable)?)?;
                    if !row.published {
                        unpublished.push(row.alert);
                    }
                }
                Ok(unpublished)
            })
            .await
    }

    async fn mark_alert_published(&self, sku: &Sku, seq: u64, _fence: Fence) -> Result<()> {
        let sku = sku.clone();
        self.db
            .write(move |db, tx| {
                if let Some(mut row) = get_row::<AlertRow>(tx, &db.stock_alerts, alert_key(&sku, seq))?
                    && !row.published
                {
                    row.published = true;
                    tx.insert(&db.stock_alerts, alert_key(&sku, seq), to_row(&row)?);
                }
                // Move the SKU's watermark past every published alert, so settling reads only what follows.
                let mut below: u64 = get_row(tx, &db.stock_alerts, published_below_key(&sku))?.unwrap_or(1);
                let start = below;
                while get_row::<AlertRow>(tx, &db.stock_alerts, alert_key(&sku, below))?.is_some_and(|r| r.published) {
                    below += 1;
                }
                if below != start {
                    tx.insert(&db.stock_alerts, published_below_key(&sku), to_row(&below)?);
                }
                Ok(())
            })
            .await
    }

    async fn stock_alerts(&self, sku: Option<&Sku>, limit: usize) -> Result<Vec<StockAlert>> {
        let ks = &self.db.stock_alerts;
        match sku {
            Some(sku) => ks
                .inner()
                .prefix(alert_prefix(sku))
                .rev()
                .take(limit)
                .map(|g| Ok(from_row::<AlertRow>(&g.value().map_err(unavailable)?)?.alert))
                .collect(),
            None => {
                let since = now_ms().saturating_sub(ALERT_LISTING_DAYS * 86_400_000);
                let mut out = Vec::new();
                for g in ks.inner().prefix(b"t\0").rev() {
                    if out.len() >= limit {
                        break;
                    }
                    let key = g.key().map_err(unavailable)?;
                    let (at_ms, sku, seq) = parse_alert_time_key(&key)?;
                    if at_ms < since {
                        break;
                    }
                    if let Some(row) = get_latest::<AlertRow>(ks, alert_key(&sku, seq))? {
                        out.push(row.alert);
                    }
                }
                Ok(out)
            }
        }
    }
}

// Low-stock alerts: stock_alerts holds
//   "s" 0x00 sku                          LowStock (threshold, flag, crossings)
//   "p" 0x00 sku                          u64: every alert of the SKU below this seq is published
//   "a" 0x00 sku 0x00 seq(u64 BE)         AlertRow, one per crossing
//   "t" 0x00 at_ms(u64 BE) sku 0x00 seq   empty: every SKU's alerts in time order

#[derive(Debug, Serialize, Deserialize)]
struct AlertRow {
    alert: StockAlert,
    published: bool,
}

/// The row of a keyed adjustment: its first answer (earlier versions kept only the delta of an applied one).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum StoredAdjustment {
    Applied(i64),
    Answer(Adjustment),
}

impl StoredAdjustment {
    fn adjustment(self) -> Adjustment {
        match self {
            StoredAdjustment::Applied(delta) => Adjustment { delta, refused: None },
            StoredAdjustment::Answer(a) => a,
        }
    }
}

fn alert_state_key(sku: &Sku) -> Vec<u8> {
    [b"s\0".as_slice(), sku.as_str().as_bytes()].concat()
}

/// Where an applied idempotency key of a SKU's stock adjustments is kept, beside the levels in `stock`
/// (nothing scans that keyspace, and no SKU starts with a NUL byte): the delta it applied.
fn adjustment_key(sku: &Sku, key: &str) -> Vec<u8> {
    [b"\0adj\0".as_slice(), sku.as_str().as_bytes(), b"\0", key.as_bytes()].concat()
}

fn threshold_request_key(sku: &Sku, key: &str) -> Vec<u8> {
    [b"\0thr\0".as_slice(), sku.as_str().as_bytes(), b"\0", key.as_bytes()].concat()
}

fn alert_prefix(sku: &Sku) -> Vec<u8> {
    [b"a\0".as_slice(), sku.as_str().as_bytes(), b"\0"].concat()
}

/// The end (exclusive) of a SKU's alert rows.
fn alert_end(sku: &Sku) -> Vec<u8> {
    [b"a\0".as_slice(), sku.as_str().as_bytes(), b"\x01"].concat()
}

/// Every alert of the SKU with a smaller seq than the value stored here is published.
fn published_below_key(sku: &Sku) -> Vec<u8> {
    [b"p\0".as_slice(), sku.as_str().as_bytes()].concat()
}

fn alert_key(sku: &Sku, seq: u64) -> Vec<u8> {
    [alert_prefix(sku).as_slice(), &seq.to_be_bytes()].concat()
}

fn alert_time_key(alert: &StockAlert) -> Vec<u8> {
    let at = u64::try_from(alert.at_ms).unwrap_or(0);
    [b"t\0".as_slice(), &at.to_be_bytes(), alert.sku.as_str().as_bytes(), b"\0", &alert.seq.to_be_bytes()].concat()
}

fn parse_alert_time_key(key: &[u8]) -> Result<(i64, Sku, u64)> {
    let bad = || StoreError::Corrupt("malformed stock alert time key".into());
    let rest = key.get(2..).ok_or_else(bad)?;
    let (at, rest) = rest.split_at_checked(8).ok_or_else(bad)?;
    let (sku, seq) = rest.split_at_checked(rest.len().checked_sub(9).ok_or_else(bad)?).ok_or_else(bad)?;
    let at = i64::try_from(u64::from_be_bytes(at.try_into().map_err(|_| bad())?)).map_err(|_| bad())?;
    let seq = u64::from_be_bytes(seq.get(1..).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let sku = Sku::parse(String::from_utf8_lossy(sku).into_owned()).map_err(|_| bad())?;
    Ok((at, sku, seq))
}

// ---------------------------------------------------------------------------------------------------
// Orders: orders[id] = Order; order_index holds, with empty values,
//   "a" 0x00 pos            every order, newest first
//   "u" 0x00 user 0x00 pos  one customer's orders, newest first
//   "s" 0x00 STATUS 0x00 pos orders in a status, newest first
// where pos = hex(u64::MAX - placed_at_ms) ":" id. saga_effects[id 0x00 event_id] = Effect (the offset of
// the record that applied the event, and its outputs).
// stats["orders"] = StatsRow, updated in the same transaction as every status change.

fn position(order: &Order) -> String {
    format!("{:016x}:{}", u64::MAX - order.placed_at_ms.max(0) as u64, order.id)
}

fn index_prefix(kind: &str, part: Option<&str>) -> Vec<u8> {
    let mut k = kind.as_bytes().to_vec();
    k.push(0);
    if let Some(p) = part {
        k.extend_from_slice(p.as_bytes());
        k.push(0);
    }
    k
}

fn index_key(prefix: Vec<u8>, pos: &str) -> Vec<u8> {
    let mut k = prefix;
    k.extend_from_slice(pos.as_bytes());
    k
}

fn effects_key(id: &OrderId, event: EventId) -> Vec<u8> {
    let mut k = id.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(event.0.as_bytes());
    k
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StatsRow {
    counts: BTreeMap<OrderStatus, u64>,
    processed: u64,
    processing_ms_total: u64,
}

const STATS_KEY: &str = "orders";

fn bump_stats(db: &Db, tx: &mut fjall::SingleWriterWriteTx<'_>, before: Option<&Order>, after: &Order) -> Result<()> {
    let mut stats: StatsRow = get_row(tx, &db.stats, STATS_KEY)?.unwrap_or_default();
    if let Some(before) = before {
        let c = stats.counts.entry(before.status).or_default();
        *c = c.saturating_sub(1);
    }
    *stats.counts.entry(after.status).or_default() += 1;
    let newly_processed = after.processed_at_ms.is_some() && before.is_none_or(|b| b.processed_at_ms.is_none());
    if let (true, Some(at)) = (newly_processed, after.processed_at_ms) {
        stats.processed += 1;
        stats.processing_ms_total += (at - after.placed_at_ms).max(0) as u64;
    }
    tx.insert(&db.stats, STATS_KEY, to_row(&stats)?);
    Ok(())
}

/// What `saga_effects` holds per applied (or seen) event.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Effect {
    /// The offset of the record that applied the event, and the outputs it published.
    Applied { offset: u64, outputs: Vec<BusRecord> },
    /// Written by versions before the offset was kept: the outputs alone.
    OutputsOnly(Vec<BusRecord>),
}

impl Effect {
    /// What a delivery under `fence` of the event publishes again (see [`Applied::Duplicate`]); rows
    /// from before the offset was kept answer as they did then, with their outputs.
    fn into_republished(self, fence: Fence) -> Vec<BusRecord> {
        match self {
            Effect::Applied { offset, outputs } if fence.is_at(offset) => outputs,
            Effect::Applied { .. } => Vec::new(),
            Effect::OutputsOnly(outputs) => outputs,
        }
    }
}

/// Applies one saga step inside the caller's write transaction (see [`OrderStore::apply`]).
fn apply_in_tx(db: &Db, tx: &mut fjall::SingleWriterWriteTx<'_>, t: Transition) -> Result<Applied> {
    let ek = effects_key(&t.order.id, t.event_id);
    if let Some(effect) = get_row::<Effect>(tx, &db.saga_effects, &ek)? {
        return Ok(Applied::Duplicate(effect.into_republished(t.fence)));
    }
    let Some(before) = get_row::<Order>(tx, &db.orders, t.order.id.as_str())? else {
        return Ok(Applied::Conflict);
    };
    if before.status != t.expected {
        return Ok(Applied::Conflict);
    }
    if before.status != t.order.status {
        let pos = position(&before);
        tx.remove(&db.order_index, index_key(index_prefix("s", Some(before.status.as_str())), &pos));
        tx.insert(&db.order_index, index_key(index_prefix("s", Some(t.order.status.as_str())), &pos), b"");
        bump_stats(db, tx, Some(&before), &t.order)?;
    }
    tx.insert(&db.orders, t.order.id.as_str(), to_row(&t.order)?);
    let effect = Effect::Applied { offset: t.fence.offset, outputs: t.outputs };
    tx.insert(&db.saga_effects, ek, to_row(&effect)?);
    Ok(Applied::Applied)
}

#[async_trait]
impl OrderStore for EmbeddedStore {
    async fn insert_new(&self, order: &Order) -> Result<Inserted> {
        let order = order.clone();
        self.db
            .write(move |db, tx| {
                if let Some(existing) = get_row::<Order>(tx, &db.orders, order.id.as_str())? {
                    return Ok(Inserted::Existing(Box::new(existing)));
                }
                tx.insert(&db.orders, order.id.as_str(), to_row(&order)?);
                let pos = position(&order);
                tx.insert(&db.order_index, index_key(index_prefix("a", None), &pos), b"");
                tx.insert(&db.order_index, index_key(index_prefix("u", Some(order.user_id.as_str())), &pos), b"");
                tx.insert(&db.order_index, index_key(index_prefix("s", Some(order.status.as_str())), &pos), b"");
                bump_stats(db, tx, None, &order)?;
                Ok(Inserted::New)
            })
            .await
    }

    async fn order(&self, id: &OrderId) -> Result<Option<Order>> {
        get_latest(&self.db.orders, id.as_str())
    }

    async fn apply(&self, t: Transition) -> Result<Applied> {
        self.db.write(move |db, tx| apply_in_tx(db, tx, t)).await
    }

    /// One transaction (one commit) for every step.
    async fn apply_many(&self, transitions: Vec<Transition>) -> Result<Vec<Applied>> {
        self.db.write(move |db, tx| transitions.into_iter().map(|t| apply_in_tx(db, tx, t)).collect()).await
    }

    async fn seen(&self, id: &OrderId, event: EventId, fence: Fence) -> Result<Option<Vec<BusRecord>>> {
        let ek = effects_key(id, event);
        self.db
            .write(move |db, tx| {
                if let Some(effect) = get_row::<Effect>(tx, &db.saga_effects, &ek)? {
                    return Ok(Some(effect.into_republished(fence)));
                }
                tx.insert(&db.saga_effects, ek, to_row(&Effect::Applied { offset: fence.offset, outputs: vec![] })?);
                Ok(None)
            })
            .await
    }

    async fn list(&self, filter: &OrderFilter, after: Option<&str>, limit: usize) -> Result<Page<Order>> {
        // Pick the narrowest index; a second filter is checked on the rows.
        let (prefix, recheck_status) = match (&filter.user, filter.status) {
            (Some(user), status) => (index_prefix("u", Some(user.as_str())), status),
            (None, Some(status)) => (index_prefix("s", Some(status.as_str())), None),
            (None, None) => (index_prefix("a", None), None),
        };
        let mut items = Vec::with_capacity(limit + 1);
        let mut cursor = after.map(str::to_owned);
        loop {
            let (keys, more) = page_keys(&self.db.order_index, &prefix, cursor.as_deref(), limit + 1)?;
            for pos in &keys {
                let Some((_, id)) = pos.split_once(':') else { continue };
                if let Some(order) = get_latest::<Order>(&self.db.orders, id)?
                    && recheck_status.is_none_or(|s| s == order.status)
                {
                    items.push((pos.clone(), order));
                }
                if items.len() > limit {
                    break;
                }
            }
            if items.len() > limit || !more {
                break;
            }
            cursor = keys.last().cloned();
        }
        let has_next = items.len() > limit;
        items.truncate(limit);
        Ok(Page { items, has_next })
    }

    async fn stalled(&self, stalled: Stalled, placed_before_ms: i64, limit: usize) -> Result<Vec<Order>> {
        let status = stalled.status();
        let floor = self.sweep_floors.of(stalled);
        let prefix = index_prefix("s", Some(status.as_str()));
        // Positions sort newest first, so [placed_before, floor - margin] in time is this key range.
        let at = |ms: i64| index_key(prefix.clone(), &format!("{:016x}", u64::MAX - ms.max(0) as u64));
        let start = at(placed_before_ms.saturating_sub(1));
        let end = match floor.sweep_from_ms() {
            Some(from) => at(from),
            None => {
                let mut end = prefix.clone();
                end.push(0xFF);
                end
            }
        };
        let mut out = Vec::new();
        let mut complete = true;
        // Read backwards for oldest first.
        for guard in self.db.order_index.inner().range(start..end).rev() {
            if out.len() >= limit {
                complete = false;
                break;
            }
            let key = guard.key().map_err(unavailable)?;
            let pos = String::from_utf8_lossy(key.get(prefix.len()..).unwrap_or_default()).into_owned();
            let Some((_, id)) = pos.split_once(':') else { continue };
            let Some(order) = get_latest::<Order>(&self.db.orders, id)? else { continue };
            if order.placed_at_ms >= placed_before_ms {
                continue;
            }
            if order.status == status {
                out.push(order);
            }
        }
        // The oldest order still in that status holds the floor; with none left, everything placed before
        // the cutoff has moved on.
        floor.passed(out.first().map(|o| o.placed_at_ms), complete, placed_before_ms);
        Ok(out)
    }

    async fn stats(&self) -> Result<OrderStats> {
        let row: StatsRow = get_latest(&self.db.stats, STATS_KEY)?.unwrap_or_default();
        Ok(OrderStats {
            by_status: OrderStatus::ALL.iter().map(|s| (*s, row.counts.get(s).copied().unwrap_or(0))).collect(),
            processed: row.processed,
            processing_ms_total: row.processing_ms_total,
        })
    }
}

// ---------------------------------------------------------------------------------------------------
// Payments: payments[order] = PaymentRecord; provider[idempotency key] = ProviderEntry.

#[async_trait]
impl PaymentStore for EmbeddedStore {
    async fn payment(&self, order: &OrderId) -> Result<Option<PaymentRecord>> {
        get_latest(&self.db.payments, order.as_str())
    }

    async fn record_new(&self, order: &OrderId, record: &PaymentRecord, _fence: Fence) -> Result<()> {
        let (order, row) = (order.clone(), to_row(record)?);
        self.db
            .write(move |db, tx| {
                tx.insert(&db.payments, order.as_str(), row);
                Ok(())
            })
            .await
    }

    async fn replace(
        &self,
        order: &OrderId,
        from: &PaymentRecord,
        to: &PaymentRecord,
        _fence: Fence,
    ) -> Result<PaymentRecord> {
        let (order, from, to) = (order.clone(), from.clone(), to.clone());
        self.db
            .write(move |db, tx| {
                let current: Option<PaymentRecord> = get_row(tx, &db.payments, order.as_str())?;
                match current {
                    Some(c) if c == from => {
                        tx.insert(&db.payments, order.as_str(), to_row(&to)?);
                        Ok(to)
                    }
                    Some(c) => Ok(c),
                    None => Err(StoreError::Corrupt(format!("no payment to replace for order {order}"))),
                }
            })
            .await
    }

    async fn provider_entry_once(&self, idempotency_key: &str, entry: &ProviderEntry) -> Result<ProviderEntry> {
        let (key, entry) = (idempotency_key.to_owned(), entry.clone());
        self.db
            .write(move |db, tx| {
                if let Some(first) = get_row(tx, &db.provider, key.as_bytes())? {
                    return Ok(first);
                }
                tx.insert(&db.provider, key.as_bytes(), to_row(&entry)?);
                Ok(entry)
            })
            .await
    }

    async fn provider_entries(&self) -> Result<Vec<(String, ProviderEntry)>> {
        self.db
            .provider
            .inner()
            .iter()
            .map(|g| {
                let (k, v) = g.into_inner().map_err(unavailable)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), from_row(&v)?))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------------
// Fulfillment: shipments[order] = Shipment.

#[async_trait]
impl ShipmentStore for EmbeddedStore {
    async fn create_once(&self, shipment: &Shipment, _fence: Fence) -> Result<Shipment> {
        let shipment = shipment.clone();
        self.db
            .write(move |db, tx| {
                if let Some(first) = get_row(tx, &db.shipments, shipment.order_id.as_str())? {
                    return Ok(first);
                }
                tx.insert(&db.shipments, shipment.order_id.as_str(), to_row(&shipment)?);
                Ok(shipment)
            })
            .await
    }

    async fn shipment(&self, order: &OrderId) -> Result<Option<Shipment>> {
        get_latest(&self.db.shipments, order.as_str())
    }
}

// ---------------------------------------------------------------------------------------------------
// Partition epochs: epochs[group 0x00 topic 0x00 partition(u32 BE)] = last epoch claimed (u64 BE). One
// process holds the data directory, so there are no zombies to fence here; the epochs still increase
// across restarts, as the port promises.

/// The embedded engine lives in this process: it is ready as long as the process runs (a failing disk
/// shows up as errors of the writes themselves).
#[async_trait]
impl Readiness for EmbeddedStore {
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl EpochStore for EmbeddedStore {
    async fn claim(&self, group: &str, topic: &str, partition: u32, _owner: &str) -> Result<u64> {
        let key = [group.as_bytes(), b"\0", topic.as_bytes(), b"\0", &partition.to_be_bytes()].concat();
        self.db
            .write(move |db, tx| {
                let last = match tx.get(&db.epochs, &key).map_err(unavailable)? {
                    Some(v) => u64::from_be_bytes(
                        v.as_ref().try_into().map_err(|_| StoreError::Corrupt("partition epoch".into()))?,
                    ),
                    None => 0,
                };
                let next = last + 1;
                tx.insert(&db.epochs, key, next.to_be_bytes());
                Ok(next)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::backend::BackendOptions;
    use orderflow_schemas::Quantity;

    fn q(n: i64) -> Quantity {
        Quantity::new(n).unwrap()
    }

    /// A data directory written before per-SKU reservations: one row per order, several SKUs in it.
    #[tokio::test]
    async fn reservations_from_before_per_sku_holds_are_split_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path(), &BackendOptions::default()).unwrap());
        let store = EmbeddedStore::new(Arc::clone(&db));
        let (a, b) = (Sku::parse("A").unwrap(), Sku::parse("B").unwrap());
        for sku in [&a, &b] {
            let p = Product::new(
                sku.clone(),
                "p".into(),
                String::new(),
                orderflow_schemas::Money::from_cents(1).unwrap(),
                0,
            );
            assert!(store.create_product(&p).await.unwrap());
            store.adjust_stock(sku, 5, "initial", None, Fence::new(1, 0)).await.unwrap();
        }
        // What the earlier version left: order o holds 2 A + 3 B; order r was refused for B.
        let (o, r) = (OrderId::parse("o").unwrap(), OrderId::parse("r").unwrap());
        let (a2, b2) = (a.clone(), b.clone());
        db.write(move |db, tx| {
            tx.insert(&db.stock, "A", to_row(&StockLevel { available: 3, reserved: 2, sold: 0 })?);
            tx.insert(&db.stock, "B", to_row(&StockLevel { available: 2, reserved: 3, sold: 0 })?);
            let held = ReservationRow {
                lines: vec![(a2.clone(), 2), (b2.clone(), 3)],
                outcome: Reservation::Reserved { units: 5 },
                ended: None,
            };
            tx.insert(&db.reservations, "o", to_row(&held)?);
            let refused = ReservationRow {
                lines: vec![(a2, 1), (b2.clone(), 9)],
                outcome: Reservation::Rejected { reason: "out_of_stock".into(), sku: Some(b2) },
                ended: None,
            };
            tx.insert(&db.reservations, "r", to_row(&refused)?);
            tx.remove(&db.reservations, PER_SKU_RESERVATIONS);
            Ok(())
        })
        .await
        .unwrap();

        assert_eq!(upgrade_reservations(&db).unwrap(), 2);
        assert_eq!(upgrade_reservations(&db).unwrap(), 0, "split once");
        let hold = |order: &OrderId, sku: &Sku, n: i64| Hold::new(order.clone(), sku.clone(), [q(n)]).unwrap();
        let f = |offset| Fence::new(1, offset);
        assert_eq!(
            store.reserve(&hold(&o, &a, 2), f(1)).await.unwrap(),
            Reservation::Reserved { units: 2 },
            "first answer"
        );
        assert_eq!(
            store.end_reservation(&o, &b, ReservationEnd::Released, f(2)).await.unwrap(),
            ReservationEnd::Released
        );
        assert_eq!(
            store.end_reservation(&o, &a, ReservationEnd::Committed, f(3)).await.unwrap(),
            ReservationEnd::Committed
        );
        assert_eq!(store.stock(&a).await.unwrap().unwrap(), StockLevel { available: 3, reserved: 0, sold: 2 });
        assert_eq!(store.stock(&b).await.unwrap().unwrap(), StockLevel { available: 5, reserved: 0, sold: 0 });
        assert!(
            matches!(store.reserve(&hold(&r, &a, 1), f(4)).await.unwrap(), Reservation::Rejected { .. }),
            "a refusal refused every SKU it named"
        );
        assert_eq!(store.stock(&a).await.unwrap().unwrap().available, 3);
    }
}
