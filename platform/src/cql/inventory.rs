//! Inventory: `orderflow_inventory.stock` (level + the rows that record each change, one partition per SKU)
//! and `stock_movements` (the ledger). See inventory.cql for the layout.
//!
//! Every reservation is one order's hold of one SKU (the saga sends one command per SKU, on that SKU's
//! partition, and collects the answers): its hold row in the SKU's partition is the whole reservation,
//! written with one conditional batch (level `IF version` + hold row `IF NOT EXISTS`), or, when refused,
//! as a `refused:<reason>` hold row `IF NOT EXISTS`; ending it is one conditional batch on the same row,
//! and ending a hold that was never made leaves a `void` row, so that a late attempt cannot hold it. A
//! retry answers from the row. See `reserve_one` and `end_line`.
//!
//! (The `reservations` table of earlier versions, an all-or-none protocol for several SKUs, is no longer
//! written or read: a hold it made is a hold row like any other and ends the same way.)

use async_trait::async_trait;
use futures::future::try_join_all;
use orderflow_schemas::{OrderId, Sku, StockAlert, StockLevel};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimeuuid;

use super::{CqlStore, Lwt, MAX_CAS_ROUNDS, backoff, batch, corrupt, prepare, serial, to_i64, to_u64};
use crate::store::{
    Adjustment, Hold, InventoryStore, LowStock, Reservation, ReservationEnd, Result, StockError, StockMovement,
    StockRefusal, StoreError,
};

/// Bound on the rounds of one reservation (each ends with a SERIAL read of the hold row).
const MAX_STATE_STEPS: u32 = 16;

pub(super) struct Statements {
    level: PreparedStatement,
    level_serial: PreparedStatement,
    op: PreparedStatement,
    op_serial: PreparedStatement,
    adjust: Batch,
    hold: Batch,
    end: Batch,
    void: PreparedStatement,
    refuse: PreparedStatement,
    refuse_adjust: PreparedStatement,
    threshold_request: PreparedStatement,
    move_insert: PreparedStatement,
    moves: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(s: &Session) -> Result<Self> {
        let level = prepare(
            s,
            "SELECT available, reserved, sold, version FROM orderflow_inventory.stock WHERE sku = ? LIMIT 1",
            true,
        )
        .await?;
        let op = prepare(
            s,
            "SELECT available, reserved, sold, version, qty, state, move_id, end_move_id \
             FROM orderflow_inventory.stock WHERE sku = ? AND op_kind = ? AND op_ref = ?",
            true,
        )
        .await?;
        let set_level = prepare(
            s,
            "UPDATE orderflow_inventory.stock SET available = ?, reserved = ?, sold = ?, version = ? \
             WHERE sku = ? IF version = ?",
            false,
        )
        .await?;
        let adjust_row = prepare(
            s,
            "INSERT INTO orderflow_inventory.stock (sku, op_kind, op_ref, qty, state, move_id) \
             VALUES (?, 'adjust', ?, ?, 'applied', ?) IF NOT EXISTS",
            false,
        )
        .await?;
        let hold_row = prepare(
            s,
            "INSERT INTO orderflow_inventory.stock (sku, op_kind, op_ref, qty, state, move_id) \
             VALUES (?, 'hold', ?, ?, 'held', ?) IF NOT EXISTS",
            false,
        )
        .await?;
        let end_row = prepare(
            s,
            "UPDATE orderflow_inventory.stock SET state = ?, end_move_id = ? \
             WHERE sku = ? AND op_kind = 'hold' AND op_ref = ? IF state = 'held'",
            false,
        )
        .await?;
        Ok(Self {
            level_serial: serial(&level),
            level,
            op_serial: serial(&op),
            op,
            adjust: batch(BatchType::Logged, &[&set_level, &adjust_row], false),
            hold: batch(BatchType::Logged, &[&set_level, &hold_row], false),
            end: batch(BatchType::Logged, &[&set_level, &end_row], false),
            void: prepare(
                s,
                "INSERT INTO orderflow_inventory.stock (sku, op_kind, op_ref, qty, state) \
                 VALUES (?, 'hold', ?, ?, 'void') IF NOT EXISTS",
                false,
            )
            .await?,
            refuse: prepare(
                s,
                "INSERT INTO orderflow_inventory.stock (sku, op_kind, op_ref, qty, state) \
                 VALUES (?, 'hold', ?, ?, ?) IF NOT EXISTS",
                false,
            )
            .await?,
            refuse_adjust: prepare(
                s,
                "INSERT INTO orderflow_inventory.stock (sku, op_kind, op_ref, qty, state) \
                 VALUES (?, 'adjust', ?, ?, ?) IF NOT EXISTS",
                false,
            )
            .await?,
            threshold_request: prepare(
                s,
                "INSERT INTO orderflow_inventory.stock (sku, op_kind, op_ref, qty, state) \
                 VALUES (?, 'threshold', ?, ?, 'applied') IF NOT EXISTS",
                false,
            )
            .await?,
            move_insert: prepare(
                s,
                "INSERT INTO orderflow_inventory.stock_movements \
                 (sku, move_id, at_ms, kind, available_delta, reference) VALUES (?, ?, ?, ?, ?, ?)",
                true,
            )
            .await?,
            moves: prepare(
                s,
                "SELECT at_ms, kind, available_delta, reference FROM orderflow_inventory.stock_movements \
                 WHERE sku = ? LIMIT ?",
                true,
            )
            .await?,
        })
    }
}

// ---------------------------------------------------------------------------------------------------
// Rows

/// A SKU's level and the version that fences every change of it.
#[derive(Debug, Clone, Copy)]
struct Level {
    available: i64,
    reserved: i64,
    sold: i64,
    version: i64,
}

impl Level {
    fn from_statics(
        available: Option<i64>,
        reserved: Option<i64>,
        sold: Option<i64>,
        version: Option<i64>,
    ) -> Option<Self> {
        version.map(|version| Level {
            available: available.unwrap_or(0),
            reserved: reserved.unwrap_or(0),
            sold: sold.unwrap_or(0),
            version,
        })
    }

    fn to_stock_level(self) -> Result<StockLevel> {
        Ok(StockLevel {
            available: to_u64(self.available, "available")?,
            reserved: to_u64(self.reserved, "reserved")?,
            sold: to_u64(self.sold, "sold")?,
        })
    }
}

/// The row that records one change of a SKU's level (a hold of an order, or an adjustment).
#[derive(Debug, Clone)]
struct OpRow {
    qty: i64,
    state: String,
    move_id: Option<CqlTimeuuid>,
    end_move_id: Option<CqlTimeuuid>,
}

type LevelTuple = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);
type OpTuple = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<CqlTimeuuid>,
    Option<CqlTimeuuid>,
);

/// What one read of a SKU partition saw: the level (None: no stock row yet) and the op row asked for.
#[derive(Debug, Clone)]
struct Seen {
    level: Option<Level>,
    op: Option<OpRow>,
}

const HOLD: &str = "hold";
const ADJUST: &str = "adjust";
const THRESHOLD: &str = "threshold";
const HELD: &str = "held";
const VOID: &str = "void";
const RELEASED: &str = "released";
const COMMITTED: &str = "committed";
/// State of a hold row when the reservation was refused (`refused:<reason>`), and of a keyed adjustment's
/// row when it was refused (`refused:<StockRefusal code>`).
const REFUSED: &str = "refused:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineEnd {
    Release,
    Commit,
}

/// What trying to hold a SKU for an order found.
#[derive(Debug)]
enum HoldTry {
    Held {
        units: u64,
    },
    Refused {
        reason: &'static str,
        sku: Sku,
    },
    /// The hold row exists but is not held (refused, voided or ended): answer from the row.
    Interrupted,
}

fn timeuuid_ms(id: &CqlTimeuuid) -> i64 {
    uuid::Uuid::from(*id)
        .get_timestamp()
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000) + i64::from(nanos / 1_000_000)
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------------
// Per SKU partition

impl CqlStore {
    /// The SKU's level (None: no stock row yet), at SERIAL if asked.
    pub(super) async fn read_stock_level(&self, sku: &Sku, serial: bool) -> Result<Option<StockLevel>> {
        self.read_level(sku, serial).await?.map(Level::to_stock_level).transpose()
    }

    async fn read_level(&self, sku: &Sku, serial: bool) -> Result<Option<Level>> {
        let st = &self.inventory;
        let stmt = if serial { &st.level_serial } else { &st.level };
        Ok(self
            .first_row::<LevelTuple>(stmt, (sku.as_str(),))
            .await?
            .and_then(|(a, r, s, v)| Level::from_statics(a, r, s, v)))
    }

    /// Reads the level and the op row `(kind, reference)` of a SKU partition.
    async fn read_op(&self, sku: &Sku, kind: &str, reference: &str, serial: bool) -> Result<Seen> {
        let st = &self.inventory;
        let stmt = if serial { &st.op_serial } else { &st.op };
        match self.first_row::<OpTuple>(stmt, (sku.as_str(), kind, reference)).await? {
            Some((a, r, s, v, qty, state, move_id, end_move_id)) => Ok(Seen {
                level: Level::from_statics(a, r, s, v),
                op: Some(OpRow { qty: qty.unwrap_or(0), state: state.unwrap_or_default(), move_id, end_move_id }),
            }),
            // No op row: the level needs its own read (a clustering-key read returns no statics without a row).
            None => Ok(Seen { level: self.read_level(sku, serial).await?, op: None }),
        }
    }

    async fn write_move(&self, sku: &Sku, id: CqlTimeuuid, kind: &str, delta: i64, reference: &str) -> Result<()> {
        self.write(&self.inventory.move_insert, (sku.as_str(), id, timeuuid_ms(&id), kind, delta, reference)).await
    }

    /// Holds `qty` of `sku` for `order` unless already held. `seen` is a read made just before, if any.
    async fn hold_line(&self, order: &OrderId, sku: &Sku, qty: i64, mut seen: Option<Seen>) -> Result<HoldTry> {
        let mut serial_read = false;
        for round in 0..MAX_CAS_ROUNDS {
            let s = match seen.take() {
                Some(s) => s,
                None => self.read_op(sku, HOLD, order.as_str(), serial_read).await?,
            };
            if let Some(op) = &s.op {
                if op.state != HELD {
                    return Ok(HoldTry::Interrupted);
                }
                // Held already (by an earlier attempt of this order): make sure its ledger line exists.
                if let Some(id) = op.move_id {
                    self.write_move(sku, id, "reserve", -op.qty, order.as_str()).await?;
                }
                return Ok(HoldTry::Held { units: to_u64(op.qty, "held quantity")? });
            }
            let Some(level) = s.level else {
                let reason = if self.product_exists(sku).await? { "out_of_stock" } else { "unknown_sku" };
                return Ok(HoldTry::Refused { reason, sku: sku.clone() });
            };
            if level.available < qty {
                return Ok(HoldTry::Refused { reason: "out_of_stock", sku: sku.clone() });
            }
            let (move_id, _) = self.clock.next();
            let values = (
                (
                    level.available - qty,
                    level.reserved + qty,
                    level.sold,
                    level.version + 1,
                    sku.as_str(),
                    level.version,
                ),
                (sku.as_str(), order.as_str(), qty, move_id),
            );
            match self.lwt_batch(&self.inventory.hold, values).await? {
                Lwt::Applied => {
                    self.write_move(sku, move_id, "reserve", -qty, order.as_str()).await?;
                    return Ok(HoldTry::Held { units: to_u64(qty, "quantity")? });
                }
                Lwt::NotApplied => {}
                Lwt::Unknown(e) => {
                    tracing::warn!(%order, %sku, error = %e, "hold outcome unknown; settling with a SERIAL read");
                }
            }
            // Someone else changed the SKU (or the outcome is unknown): read again at SERIAL, which sees every
            // change accepted so far (ours included, if it applied), and decide again. A lost attempt that
            // still arrives later was conditioned on the version read before it, so it cannot apply on top.
            serial_read = true;
            backoff(round).await;
        }
        Err(StoreError::Unavailable(format!("holding {sku} for {order}: too much contention")))
    }

    /// Ends the order's hold of `sku` (release or commit), or voids it if it was never held. Idempotent:
    /// `true` if this call ended a hold, `false` if there was none left to end.
    async fn end_line(&self, order: &OrderId, sku: &Sku, qty: i64, end: LineEnd) -> Result<bool> {
        let mut serial_read = false;
        for round in 0..MAX_CAS_ROUNDS {
            let s = self.read_op(sku, HOLD, order.as_str(), serial_read).await?;
            serial_read = true;
            let Some(op) = s.op else {
                // Never held: void it, so a zombie attempt of this order can never hold it later.
                match self.lwt(&self.inventory.void, (sku.as_str(), order.as_str(), qty)).await? {
                    Lwt::Applied => return Ok(false),
                    Lwt::NotApplied => continue, // it was held meanwhile: end that hold
                    Lwt::Unknown(e) => {
                        tracing::warn!(%order, %sku, error = %e, "void outcome unknown; settling with a SERIAL read");
                        backoff(round).await;
                        continue;
                    }
                }
            };
            match op.state.as_str() {
                VOID => return Ok(false),
                refused if refused.starts_with(REFUSED) => return Ok(false),
                RELEASED | COMMITTED => {
                    if let Some(id) = op.end_move_id {
                        let (kind, delta) = if op.state == RELEASED { ("release", op.qty) } else { ("commit", 0) };
                        self.write_move(sku, id, kind, delta, order.as_str()).await?;
                    }
                    return Ok(false);
                }
                HELD => {}
                other => return Err(StoreError::Corrupt(format!("{sku}: hold of {order} in state {other:?}"))),
            }
            let Some(level) = s.level else {
                return Err(StoreError::Corrupt(format!("{sku}: {order} holds units but the SKU has no level")));
            };
            if level.reserved < op.qty {
                return Err(StoreError::Corrupt(format!(
                    "{sku}: {} reserved, {order} holds {}",
                    level.reserved, op.qty
                )));
            }
            // The hold's own ledger line may have been lost to a crash right after the hold (a retry that
            // then decides to reject does not re-hold the line): write it before the line that ends it.
            if let Some(id) = op.move_id {
                self.write_move(sku, id, "reserve", -op.qty, order.as_str()).await?;
            }
            let (move_id, _) = self.clock.next();
            let (available, sold, state, kind, delta) = match end {
                LineEnd::Release => (level.available + op.qty, level.sold, RELEASED, "release", op.qty),
                LineEnd::Commit => (level.available, level.sold + op.qty, COMMITTED, "commit", 0),
            };
            let values = (
                (available, level.reserved - op.qty, sold, level.version + 1, sku.as_str(), level.version),
                (state, move_id, sku.as_str(), order.as_str()),
            );
            match self.lwt_batch(&self.inventory.end, values).await? {
                Lwt::Applied => {
                    self.write_move(sku, move_id, kind, delta, order.as_str()).await?;
                    return Ok(true);
                }
                Lwt::NotApplied => {}
                Lwt::Unknown(e) => {
                    tracing::warn!(%order, %sku, error = %e, "release/commit outcome unknown; settling with a SERIAL read");
                }
            }
            backoff(round).await;
        }
        Err(StoreError::Unavailable(format!("ending the hold of {sku} for {order}: too much contention")))
    }
}

impl CqlStore {
    /// Reserves a one-SKU order. Its hold row in the SKU's partition is its whole reservation: the hold is
    /// one conditional batch (level `IF version` + hold row `IF NOT EXISTS`), a refusal is recorded as the
    /// hold row in state `refused:<reason>` (`IF NOT EXISTS`, so the first answer stands and no later
    /// attempt can hold), and a retry answers from the row.
    async fn reserve_one(&self, order: &OrderId, sku: &Sku, qty: i64) -> Result<Reservation> {
        for round in 0..MAX_STATE_STEPS {
            match self.hold_line(order, sku, qty, None).await? {
                HoldTry::Held { units } => return Ok(Reservation::Reserved { units }),
                HoldTry::Refused { reason, sku } => {
                    let state = format!("{REFUSED}{reason}");
                    match self.lwt(&self.inventory.refuse, (sku.as_str(), order.as_str(), qty, state.as_str())).await? {
                        Lwt::Applied => {
                            return Ok(Reservation::Rejected { reason: reason.to_owned(), sku: Some(sku) });
                        }
                        // Someone else wrote the row meanwhile (or the outcome is unknown): answer from it.
                        Lwt::NotApplied => {}
                        Lwt::Unknown(e) => {
                            tracing::warn!(%order, %sku, error = %e, "refusal outcome unknown; settling with a SERIAL read");
                        }
                    }
                }
                HoldTry::Interrupted => {}
            }
            let seen = self.read_op(sku, HOLD, order.as_str(), true).await?;
            if let Some(op) = seen.op {
                return one_sku_outcome(order, sku, &op);
            }
            backoff(round).await;
        }
        Err(StoreError::Unavailable(format!("reservation of {order} kept changing")))
    }
}

/// The first answer to an order's reservation of a SKU, from its hold row.
fn one_sku_outcome(order: &OrderId, sku: &Sku, op: &OpRow) -> Result<Reservation> {
    match op.state.as_str() {
        HELD | RELEASED | COMMITTED => Ok(Reservation::Reserved { units: to_u64(op.qty, "held quantity")? }),
        VOID => Ok(Reservation::Rejected { reason: "ended_before_reserved".into(), sku: Some(sku.clone()) }),
        state => match state.strip_prefix(REFUSED) {
            Some(reason) => Ok(Reservation::Rejected { reason: reason.to_owned(), sku: Some(sku.clone()) }),
            None => Err(StoreError::Corrupt(format!("{sku}: hold of {order} in state {state:?}"))),
        },
    }
}

#[async_trait]
impl InventoryStore for CqlStore {
    async fn stock(&self, sku: &Sku) -> Result<Option<StockLevel>> {
        self.read_level(sku, false).await?.map(Level::to_stock_level).transpose()
    }

    async fn adjust_stock(
        &self,
        sku: &Sku,
        delta: i64,
        reason: &str,
        key: Option<&str>,
    ) -> Result<StockLevel, StockError> {
        if key.is_none() && !self.product_exists(sku).await? {
            return Err(StockError::UnknownSku(sku.clone()));
        }
        // With a client's key the adjustment row is named after it, so its `IF NOT EXISTS` lets one attempt
        // of that key apply, ever: each round first looks for the row (SERIAL after the first round).
        let keyed = key.map(|k| format!("key:{k}"));
        // Attempts whose outcome was unknown. Their request may still be on its way and apply later, but only
        // on the version it was conditioned on: so before each new attempt every one of them is looked up
        // (SERIAL) by its own row, and a new attempt on the same version competes with it for that version.
        let mut unsettled: Vec<(String, CqlTimeuuid)> = Vec::new();
        let mut serial_read = false;
        for round in 0..MAX_CAS_ROUNDS {
            if let Some(op_ref) = &keyed {
                let seen = self.read_op(sku, ADJUST, op_ref, serial_read).await?;
                if let Some(op) = seen.op {
                    if op.qty != delta {
                        let key = key.unwrap_or_default().to_owned();
                        return Err(StockError::KeyReused { sku: sku.clone(), key, applied: op.qty, asked: delta });
                    }
                    if let Some(code) = op.state.strip_prefix(REFUSED) {
                        let refusal = StockRefusal::from_code(code)
                            .ok_or_else(|| corrupt(format!("{sku}: adjustment {op_ref} in state {:?}", op.state)))?;
                        return Err(refusal.into_error(sku));
                    }
                    if let Some(id) = op.move_id {
                        self.write_move(sku, id, "adjust", delta, reason).await?;
                    }
                    let level = seen.level.ok_or_else(|| corrupt(format!("{sku}: adjusted without a level")))?;
                    return Ok(level.to_stock_level()?);
                }
            }
            for (op_ref, move_id) in &unsettled {
                let seen = self.read_op(sku, ADJUST, op_ref, true).await?;
                if seen.op.is_some() {
                    self.write_move(sku, *move_id, "adjust", delta, reason).await?;
                    let level = seen.level.ok_or_else(|| corrupt(format!("{sku}: adjusted without a level")))?;
                    return Ok(level.to_stock_level()?);
                }
            }
            let level = self.read_level(sku, serial_read).await?;
            serial_read = true;
            let (available, reserved, sold, version) =
                level.map(|l| (l.available, l.reserved, l.sold, Some(l.version))).unwrap_or((0, 0, 0, None));
            let new_available = available.checked_add(delta).filter(|a| *a >= 0);
            let refusal = match new_available {
                // A keyed adjustment checked the product only now (one read less when it was a repeat).
                _ if level.is_none() && keyed.is_some() && !self.product_exists(sku).await? => {
                    Some(StockRefusal::UnknownSku)
                }
                None if delta >= 0 => Some(StockRefusal::WouldOverflow),
                None => Some(StockRefusal::WouldGoNegative { available: to_u64(available, "available")? }),
                // Every other movement moves units between available, reserved and sold, so bounding their
                // sum here keeps each of them in range.
                Some(n) if n.checked_add(reserved).and_then(|n| n.checked_add(sold)).is_none() => {
                    Some(StockRefusal::WouldOverflow)
                }
                Some(_) => None,
            };
            if let Some(refusal) = refusal {
                let Some(op_ref) = &keyed else { return Err(refusal.into_error(sku)) };
                // The refusal is the key's first answer, unless another answer got there first.
                let state = format!("{REFUSED}{}", refusal.to_code());
                match self
                    .lwt(&self.inventory.refuse_adjust, (sku.as_str(), op_ref.as_str(), delta, state.as_str()))
                    .await?
                {
                    Lwt::Applied => return Err(refusal.into_error(sku)),
                    Lwt::NotApplied => {}
                    Lwt::Unknown(e) => {
                        tracing::warn!(%sku, error = %e, "refusal outcome unknown; settling with a SERIAL read");
                    }
                }
                backoff(round).await;
                continue;
            }
            let new_available = new_available.unwrap_or(available);
            let new_version = version.map_or(1, |v| v + 1);
            let (move_id, _) = self.clock.next();
            let op_ref = keyed.clone().unwrap_or_else(|| move_id.to_string());
            let values = (
                (new_available, reserved, sold, new_version, sku.as_str(), version),
                (sku.as_str(), op_ref.as_str(), delta, move_id),
            );
            match self.lwt_batch(&self.inventory.adjust, values).await? {
                Lwt::Applied => {
                    self.write_move(sku, move_id, "adjust", delta, reason).await?;
                    let level = Level { available: new_available, reserved, sold, version: new_version };
                    return Ok(level.to_stock_level()?);
                }
                Lwt::NotApplied => {}
                Lwt::Unknown(e) => {
                    tracing::warn!(%sku, error = %e, "adjustment outcome unknown; settling with a SERIAL read");
                    // Only this attempt could write its own adjustment row: the next round looks it up.
                    unsettled.push((op_ref, move_id));
                    continue;
                }
            }
            backoff(round).await;
        }
        Err(StoreError::Unavailable(format!("adjusting {sku}: too much contention")).into())
    }

    async fn adjustment(&self, sku: &Sku, key: &str) -> Result<Option<Adjustment>> {
        let Some(op) = self.read_op(sku, ADJUST, &format!("key:{key}"), false).await?.op else { return Ok(None) };
        let refused = match op.state.strip_prefix(REFUSED) {
            None => None,
            Some(code) => Some(
                StockRefusal::from_code(code)
                    .ok_or_else(|| corrupt(format!("{sku}: adjustment key:{key} in state {:?}", op.state)))?,
            ),
        };
        Ok(Some(Adjustment { delta: op.qty, refused }))
    }

    async fn reserve(&self, hold: &Hold) -> Result<Reservation> {
        self.reserve_one(&hold.order, &hold.sku, to_i64(hold.units(), "units")?).await
    }

    /// The holds of different SKUs are different partitions (and conditional writes on different
    /// versions), so they go side by side; the holds of one SKU go one after the other, in batch order, so
    /// the earlier ones take stock first, as one at a time would.
    async fn reserve_many(&self, holds: &[Hold]) -> Result<Vec<Reservation>> {
        let mut runs: Vec<(&Sku, Vec<usize>)> = Vec::new();
        for (i, hold) in holds.iter().enumerate() {
            match runs.iter_mut().find(|(sku, _)| *sku == &hold.sku) {
                Some((_, run)) => run.push(i),
                None => runs.push((&hold.sku, vec![i])),
            }
        }
        let answered = try_join_all(runs.iter().map(|(_, run)| async move {
            let mut answers = Vec::with_capacity(run.len());
            for &i in run {
                answers.push((i, self.reserve(&holds[i]).await?));
            }
            Ok::<_, StoreError>(answers)
        }))
        .await?;
        let mut out: Vec<Option<Reservation>> = vec![None; holds.len()];
        for (i, answer) in answered.into_iter().flatten() {
            out[i] = Some(answer);
        }
        out.into_iter().map(|a| a.ok_or_else(|| corrupt("a hold of the batch went unanswered"))).collect()
    }

    async fn end_reservation(&self, order: &OrderId, sku: &Sku, end: ReservationEnd) -> Result<ReservationEnd> {
        let line_end = match end {
            ReservationEnd::Released => LineEnd::Release,
            ReservationEnd::Committed => LineEnd::Commit,
            ReservationEnd::NothingHeld => return Ok(ReservationEnd::NothingHeld),
        };
        let ended = self.end_line(order, sku, 0, line_end).await?;
        Ok(if ended { end } else { ReservationEnd::NothingHeld })
    }

    async fn movements(&self, sku: &Sku, limit: usize) -> Result<Vec<StockMovement>> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(Option<i64>, Option<String>, Option<i64>, Option<String>)> =
            self.rows(&self.inventory.moves, (sku.as_str(), limit)).await?;
        Ok(rows
            .into_iter()
            .map(|(at_ms, kind, delta, reference)| StockMovement {
                at_ms: at_ms.unwrap_or(0),
                kind: kind.unwrap_or_default(),
                available_delta: delta.unwrap_or(0),
                reference: reference.unwrap_or_default(),
            })
            .collect())
    }

    async fn set_low_stock_threshold(
        &self,
        sku: &Sku,
        threshold: u64,
        key: Option<&str>,
    ) -> Result<LowStock, StockError> {
        // A keyed change is recorded as a row of the SKU's stock partition once it is set: a repeat finds it.
        let Some(key) = key else { return self.alerts_set_threshold(sku, threshold).await };
        if self.read_op(sku, THRESHOLD, key, false).await?.op.is_some() {
            return Ok(self.alerts_state(sku).await?);
        }
        let state = self.alerts_set_threshold(sku, threshold).await?;
        let values = (sku.as_str(), key, to_i64(threshold, "threshold")?);
        match self.lwt(&self.inventory.threshold_request, values).await? {
            Lwt::Applied | Lwt::NotApplied => Ok(state),
            // Unknown: a repeat sets the same threshold again before recording it, which is harmless.
            Lwt::Unknown(e) => Err(StoreError::Unavailable(format!("recording threshold request {key}: {e}")).into()),
        }
    }

    async fn low_stock(&self, sku: &Sku) -> Result<LowStock> {
        self.alerts_state(sku).await
    }

    async fn settle_low_stock(&self, sku: &Sku) -> Result<Vec<StockAlert>> {
        self.alerts_settle(sku).await
    }

    async fn mark_alert_published(&self, sku: &Sku, seq: u64) -> Result<()> {
        self.alerts_mark_published(sku, seq).await
    }

    async fn stock_alerts(&self, sku: Option<&Sku>, limit: usize) -> Result<Vec<StockAlert>> {
        self.alerts_list(sku, limit).await
    }
}
