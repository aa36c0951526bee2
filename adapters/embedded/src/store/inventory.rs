//! Inventory: stock levels, holds per (order, SKU), adjustments and the ledger.

use async_trait::async_trait;
use fjall::Readable;
use orderflow_schemas::{OrderId, Sku, StockAlert, StockLevel, now_ms};
use serde::{Deserialize, Serialize};

use super::super::{Db, from_row, to_row, unavailable};
use super::{EmbeddedStore, get_latest, get_row};
use orderflow_platform::store::*;

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

/// Where an applied idempotency key of a SKU's stock adjustments is kept, beside the levels in `stock`
/// (nothing scans that keyspace, and no SKU starts with a NUL byte): the delta it applied.
fn adjustment_key(sku: &Sku, key: &str) -> Vec<u8> {
    [b"\0adj\0".as_slice(), sku.as_str().as_bytes(), b"\0", key.as_bytes()].concat()
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
        fence: Fence,
    ) -> Result<LowStock, StockError> {
        self.alerts_set_threshold(sku, threshold, key, fence).await
    }

    async fn low_stock(&self, sku: &Sku) -> Result<LowStock> {
        self.alerts_state(sku).await
    }

    async fn settle_low_stock(&self, sku: &Sku, fence: Fence) -> Result<Vec<StockAlert>> {
        self.alerts_settle(sku, fence).await
    }

    async fn mark_alert_published(&self, sku: &Sku, seq: u64, fence: Fence) -> Result<()> {
        self.alerts_mark_published(sku, seq, fence).await
    }

    async fn stock_alerts(&self, sku: Option<&Sku>, limit: usize) -> Result<Vec<StockAlert>> {
        self.alerts_list(sku, limit).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use orderflow_schemas::Product;

    use super::*;
    use orderflow_platform::backend::BackendOptions;
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
