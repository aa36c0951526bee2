//! Inventory: `orderflow_inventory.stock` (level + the rows that record each change, one partition per SKU),
//! `stock_movements` (the ledger), `reservations` (one per order). See inventory.cql for the layout.
//!
//! A one-SKU order (most orders) needs no reservation row: its hold row in the SKU's partition is its
//! reservation, written with one conditional batch (level `IF version` + hold row `IF NOT EXISTS`), or,
//! when refused, as a `refused:<reason>` hold row `IF NOT EXISTS`; ending it is one conditional batch on
//! the same row. A retry answers from the row. See `reserve_one`.
//!
//! How a multi-SKU reservation stays all-or-none and crash-safe without a cross-partition transaction:
//! 1. reserve() records the order's intent first (`reservations`, INSERT IF NOT EXISTS, state `pending`). A
//!    second call for the order finds the row and resumes it or returns its stored outcome.
//! 2. Each line is held with one conditional batch on the SKU's partition: the level update `IF version = v`
//!    and the order's hold row `IF NOT EXISTS`, so the per-line progress is written atomically with the
//!    stock change. A resumed call finds the hold row and skips the line; one whose LWT timed out settles it
//!    with a SERIAL read of that row.
//! 3. When every line is held, the reservation moves `pending -> reserved` (LWT on the state). If a line
//!    cannot be held, it moves `pending -> rejecting`, the lines already held are released and the lines not
//!    held are voided (a `void` hold row, so a zombie retry can never hold them later), then `rejected`.
//!
//! end_reservation() moves `reserved -> releasing|committing` and then ends each line the same way (one
//! conditional batch per line: level + hold row state), then `released|committed`. Whoever finds a
//! reservation in an `-ing` state finishes that pass, which is idempotent per line.

use async_trait::async_trait;
use futures::future::try_join_all;
use orderflow_schemas::{OrderId, Quantity, Sku, StockAlert, StockLevel, now_ms};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimeuuid;

use super::{
    CqlStore, Lwt, MAX_CAS_ROUNDS, MAX_UNKNOWN_RETRIES, backoff, batch, corrupt, prepare, serial, to_i64, to_u64,
};
use crate::store::{
    InventoryStore, LowStock, Reservation, ReservationEnd, Result, StockError, StockMovement, StoreError,
};

/// Bound on state-machine steps of one reserve/end call (each step is one decided LWT on the reservation).
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
    move_insert: PreparedStatement,
    moves: PreparedStatement,
    res_insert_pending: PreparedStatement,
    res_insert_closed: PreparedStatement,
    res_get_serial: PreparedStatement,
    res_decide: PreparedStatement,
    res_move: PreparedStatement,
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
        let res_get = prepare(
            s,
            "SELECT lines, state, outcome, units, reason, reject_sku FROM orderflow_inventory.reservations \
             WHERE order_id = ?",
            true,
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
            res_insert_pending: prepare(
                s,
                "INSERT INTO orderflow_inventory.reservations (order_id, lines, state, created_at_ms) \
                 VALUES (?, ?, 'pending', ?) IF NOT EXISTS",
                false,
            )
            .await?,
            res_insert_closed: prepare(
                s,
                "INSERT INTO orderflow_inventory.reservations \
                 (order_id, lines, state, outcome, units, reason, created_at_ms) \
                 VALUES (?, [], 'closed', 'rejected', 0, 'ended_before_reserved', ?) IF NOT EXISTS",
                false,
            )
            .await?,
            res_get_serial: serial(&res_get),
            res_decide: prepare(
                s,
                "UPDATE orderflow_inventory.reservations SET state = ?, outcome = ?, units = ?, reason = ?, \
                 reject_sku = ? WHERE order_id = ? IF state = ?",
                false,
            )
            .await?,
            res_move: prepare(
                s,
                "UPDATE orderflow_inventory.reservations SET state = ? WHERE order_id = ? IF state = ?",
                false,
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
const HELD: &str = "held";
const VOID: &str = "void";
const RELEASED: &str = "released";
const COMMITTED: &str = "committed";
/// State of a one-SKU order's hold row when the reservation was refused: `refused:<reason>`.
const REFUSED: &str = "refused:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResState {
    Pending,
    Reserved,
    Rejecting,
    Rejected,
    Closing,
    Closed,
    Releasing,
    Released,
    Committing,
    Committed,
}

impl ResState {
    const ALL: [ResState; 10] = [
        Self::Pending,
        Self::Reserved,
        Self::Rejecting,
        Self::Rejected,
        Self::Closing,
        Self::Closed,
        Self::Releasing,
        Self::Released,
        Self::Committing,
        Self::Committed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Reserved => "reserved",
            Self::Rejecting => "rejecting",
            Self::Rejected => "rejected",
            Self::Closing => "closing",
            Self::Closed => "closed",
            Self::Releasing => "releasing",
            Self::Released => "released",
            Self::Committing => "committing",
            Self::Committed => "committed",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown reservation state {s:?}")))
    }

    /// For a state with a pass over the lines under way: how each held line ends, and the state after.
    fn pass(self) -> Option<(LineEnd, ResState)> {
        match self {
            Self::Rejecting => Some((LineEnd::Release, Self::Rejected)),
            Self::Closing => Some((LineEnd::Release, Self::Closed)),
            Self::Releasing => Some((LineEnd::Release, Self::Released)),
            Self::Committing => Some((LineEnd::Commit, Self::Committed)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct ResRow {
    lines: Vec<(Sku, i64)>,
    state: ResState,
    outcome: Option<Reservation>,
}

type ResTuple =
    (Option<Vec<(String, i64)>>, Option<String>, Option<String>, Option<i64>, Option<String>, Option<String>);

fn res_from_row(row: ResTuple) -> Result<ResRow> {
    let (lines, state, outcome, units, reason, reject_sku) = row;
    let lines = lines
        .unwrap_or_default()
        .into_iter()
        .map(|(s, q)| Ok((Sku::parse(s).map_err(corrupt)?, q)))
        .collect::<Result<Vec<_>>>()?;
    let state = ResState::parse(state.as_deref().unwrap_or_default())?;
    let outcome = match outcome.as_deref() {
        None => None,
        Some("reserved") => Some(Reservation::Reserved { units: to_u64(units.unwrap_or(0), "units")? }),
        Some("rejected") => Some(Reservation::Rejected {
            reason: reason.unwrap_or_default(),
            sku: reject_sku.map(Sku::parse).transpose().map_err(corrupt)?,
        }),
        Some(other) => return Err(StoreError::Corrupt(format!("unknown reservation outcome {other:?}"))),
    };
    Ok(ResRow { lines, state, outcome })
}

/// The same SKU twice in one order is one line of the summed quantity (first position kept), so each SKU
/// partition holds at most one row per order.
fn merge_lines(lines: &[(Sku, Quantity)]) -> Vec<(Sku, i64)> {
    let mut merged: Vec<(Sku, i64)> = Vec::with_capacity(lines.len());
    for (sku, q) in lines {
        let q = i64::from(*q);
        match merged.iter_mut().find(|(s, _)| s == sku) {
            Some((_, total)) => *total += q,
            None => merged.push((sku.clone(), q)),
        }
    }
    merged
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineEnd {
    Release,
    Commit,
}

/// What trying to hold every line found.
#[derive(Debug)]
enum HoldAll {
    Held {
        units: u64,
    },
    Refused {
        reason: &'static str,
        sku: Sku,
    },
    /// A line was already ended or voided: another caller moved this reservation on; re-read it.
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
    async fn hold_line(&self, order: &OrderId, sku: &Sku, qty: i64, mut seen: Option<Seen>) -> Result<HoldAll> {
        let mut serial_read = false;
        for round in 0..MAX_CAS_ROUNDS {
            let s = match seen.take() {
                Some(s) => s,
                None => self.read_op(sku, HOLD, order.as_str(), serial_read).await?,
            };
            if let Some(op) = &s.op {
                if op.state != HELD {
                    return Ok(HoldAll::Interrupted);
                }
                // Held already (by an earlier attempt of this order): make sure its ledger line exists.
                if let Some(id) = op.move_id {
                    self.write_move(sku, id, "reserve", -op.qty, order.as_str()).await?;
                }
                return Ok(HoldAll::Held { units: to_u64(op.qty, "held quantity")? });
            }
            let Some(level) = s.level else {
                let reason = if self.product_exists(sku).await? { "out_of_stock" } else { "unknown_sku" };
                return Ok(HoldAll::Refused { reason, sku: sku.clone() });
            };
            if level.available < qty {
                return Ok(HoldAll::Refused { reason: "out_of_stock", sku: sku.clone() });
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
                    return Ok(HoldAll::Held { units: to_u64(qty, "quantity")? });
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

    /// Holds every line in order, after a first look at all of them (so a visibly short line refuses the
    /// order before anything is held).
    async fn hold_all(&self, order: &OrderId, lines: &[(Sku, i64)]) -> Result<HoldAll> {
        let seen = try_join_all(lines.iter().map(|(sku, _)| self.read_op(sku, HOLD, order.as_str(), false))).await?;
        for ((sku, qty), s) in lines.iter().zip(&seen) {
            match (&s.op, &s.level) {
                (Some(op), _) if op.state == HELD => {}
                (Some(_), _) => return Ok(HoldAll::Interrupted),
                (None, Some(level)) if level.available >= *qty => {}
                (None, Some(_)) => return Ok(HoldAll::Refused { reason: "out_of_stock", sku: sku.clone() }),
                (None, None) => {
                    let reason = if self.product_exists(sku).await? { "out_of_stock" } else { "unknown_sku" };
                    return Ok(HoldAll::Refused { reason, sku: sku.clone() });
                }
            }
        }
        let mut units = 0u64;
        for ((sku, qty), s) in lines.iter().zip(seen) {
            match self.hold_line(order, sku, *qty, Some(s)).await? {
                HoldAll::Held { units: n } => units += n,
                other => return Ok(other),
            }
        }
        Ok(HoldAll::Held { units })
    }

    /// Runs the pass of an `-ing` state over every line, then moves the reservation to the state after it.
    async fn finish_pass(&self, order: &OrderId, row: &ResRow) -> Result<ResState> {
        let Some((end, next)) = row.state.pass() else { return Ok(row.state) };
        try_join_all(row.lines.iter().map(|(sku, qty)| self.end_line(order, sku, *qty, end))).await?;
        // Not applied (or unknown) means another caller finished the same pass: the outcome is the same.
        match self.lwt(&self.inventory.res_move, (next.as_str(), order.as_str(), row.state.as_str())).await? {
            Lwt::Applied | Lwt::NotApplied => {}
            Lwt::Unknown(e) => {
                tracing::warn!(%order, error = %e, "reservation state outcome unknown; a retry settles it")
            }
        }
        Ok(next)
    }

    async fn read_reservation(&self, order: &OrderId) -> Result<Option<ResRow>> {
        self.first_row::<ResTuple>(&self.inventory.res_get_serial, (order.as_str(),))
            .await?
            .map(res_from_row)
            .transpose()
    }

    /// Moves the reservation from `from` to `to` recording `outcome`; the row as it now is.
    async fn decide(
        &self,
        order: &OrderId,
        from: ResState,
        to: ResState,
        outcome: &Reservation,
    ) -> Result<Option<ResRow>> {
        let (kind, units, reason, sku) = match outcome {
            Reservation::Reserved { units } => ("reserved", to_i64(*units, "units")?, None, None),
            Reservation::Rejected { reason, sku } => {
                ("rejected", 0, Some(reason.as_str()), sku.as_ref().map(Sku::as_str))
            }
        };
        let values = (to.as_str(), kind, units, reason, sku, order.as_str(), from.as_str());
        match self.lwt(&self.inventory.res_decide, values).await? {
            Lwt::Applied => Ok(None),
            Lwt::NotApplied => self.read_reservation(order).await,
            Lwt::Unknown(e) => {
                tracing::warn!(%order, error = %e, "reservation decision outcome unknown; settling with a SERIAL read");
                self.read_reservation(order).await
            }
        }
    }

    /// Records the intent to reserve `lines` for `order`, or returns the reservation already recorded.
    async fn reservation_intent(&self, order: &OrderId, lines: &[(Sku, i64)]) -> Result<ResRow> {
        let stored: Vec<(&str, i64)> = lines.iter().map(|(s, q)| (s.as_str(), *q)).collect();
        for _ in 0..MAX_UNKNOWN_RETRIES {
            match self.lwt(&self.inventory.res_insert_pending, (order.as_str(), &stored, now_ms())).await? {
                Lwt::Applied => return Ok(ResRow { lines: lines.to_vec(), state: ResState::Pending, outcome: None }),
                Lwt::NotApplied => {}
                Lwt::Unknown(e) => {
                    tracing::warn!(%order, error = %e, "reservation intent outcome unknown; settling with a SERIAL read");
                }
            }
            if let Some(row) = self.read_reservation(order).await? {
                return Ok(row);
            }
        }
        Err(StoreError::Unavailable(format!("recording the reservation of {order}: outcome stayed unknown")))
    }
}

impl CqlStore {
    /// Reserves a one-SKU order. Its hold row in the SKU's partition is its whole reservation: the hold is
    /// one conditional batch (level `IF version` + hold row `IF NOT EXISTS`), a refusal is recorded as the
    /// hold row in state `refused:<reason>` (`IF NOT EXISTS`, so the first answer stands and no later
    /// attempt can hold), and a retry answers from the row. One LWT where a multi-SKU order needs three.
    async fn reserve_one(&self, order: &OrderId, sku: &Sku, qty: i64) -> Result<Reservation> {
        for round in 0..MAX_STATE_STEPS {
            match self.hold_line(order, sku, qty, None).await? {
                HoldAll::Held { units } => return Ok(Reservation::Reserved { units }),
                HoldAll::Refused { reason, sku } => {
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
                HoldAll::Interrupted => {}
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

/// The first answer to a one-SKU order's reservation, from its hold row.
fn one_sku_outcome(order: &OrderId, sku: &Sku, op: &OpRow) -> Result<Reservation> {
    match op.state.as_str() {
        HELD | RELEASED | COMMITTED => Ok(Reservation::Reserved { units: to_u64(op.qty, "held quantity")? }),
        VOID => Ok(Reservation::Rejected { reason: "ended_before_reserved".into(), sku: None }),
        state => match state.strip_prefix(REFUSED) {
            Some(reason) => Ok(Reservation::Rejected { reason: reason.to_owned(), sku: Some(sku.clone()) }),
            None => Err(StoreError::Corrupt(format!("{sku}: hold of {order} in state {state:?}"))),
        },
    }
}

/// The distinct SKUs of `skus`, in order.
fn distinct(skus: &[Sku]) -> Vec<&Sku> {
    let mut out: Vec<&Sku> = Vec::with_capacity(skus.len());
    for sku in skus {
        if !out.contains(&sku) {
            out.push(sku);
        }
    }
    out
}

fn stored_outcome(order: &OrderId, row: &ResRow) -> Result<Reservation> {
    row.outcome.clone().ok_or_else(|| {
        StoreError::Corrupt(format!("reservation of {order} is {} without an outcome", row.state.as_str()))
    })
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
        if !self.product_exists(sku).await? {
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
            let Some(new_available) = available.checked_add(delta).filter(|a| *a >= 0) else {
                return Err(match delta {
                    0.. => StockError::WouldOverflow { sku: sku.clone() },
                    _ => StockError::WouldGoNegative { sku: sku.clone(), available: to_u64(available, "available")? },
                });
            };
            // Every other movement moves units between available, reserved and sold, so bounding their sum
            // here keeps each of them in range.
            if new_available.checked_add(reserved).and_then(|n| n.checked_add(sold)).is_none() {
                return Err(StockError::WouldOverflow { sku: sku.clone() });
            }
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

    async fn reserve(&self, order: &OrderId, lines: &[(Sku, Quantity)]) -> Result<Reservation> {
        let merged = merge_lines(lines);
        if let [(sku, qty)] = merged.as_slice() {
            return self.reserve_one(order, sku, *qty).await;
        }
        let mut row = self.reservation_intent(order, &merged).await?;
        for _ in 0..MAX_STATE_STEPS {
            let next = match row.state {
                ResState::Pending => match self.hold_all(order, &row.lines).await? {
                    HoldAll::Held { units } => {
                        let outcome = Reservation::Reserved { units };
                        match self.decide(order, ResState::Pending, ResState::Reserved, &outcome).await? {
                            None => return Ok(outcome),
                            Some(now) => now,
                        }
                    }
                    HoldAll::Refused { reason, sku } => {
                        let outcome = Reservation::Rejected { reason: reason.to_owned(), sku: Some(sku) };
                        match self.decide(order, ResState::Pending, ResState::Rejecting, &outcome).await? {
                            None => ResRow { state: ResState::Rejecting, outcome: Some(outcome), ..row },
                            Some(now) => now,
                        }
                    }
                    HoldAll::Interrupted => self.read_reservation(order).await?.ok_or_else(|| {
                        StoreError::Corrupt(format!("reservation of {order} vanished while it was being made"))
                    })?,
                },
                // A rejection or close under way: finish releasing what was held, then answer.
                ResState::Rejecting | ResState::Closing => {
                    self.finish_pass(order, &row).await?;
                    return stored_outcome(order, &row);
                }
                // Decided: the first answer, whatever happened to the units since.
                _ => return stored_outcome(order, &row),
            };
            row = next;
        }
        Err(StoreError::Unavailable(format!("reservation of {order} kept changing")))
    }

    async fn end_reservation(&self, order: &OrderId, skus: &[Sku], end: ReservationEnd) -> Result<ReservationEnd> {
        if let [sku] = distinct(skus).as_slice() {
            // A one-SKU order: its hold row is its reservation (see `reserve_one`).
            let line_end = match end {
                ReservationEnd::Released => LineEnd::Release,
                ReservationEnd::Committed => LineEnd::Commit,
                ReservationEnd::NothingHeld => return Ok(ReservationEnd::NothingHeld),
            };
            let ended = self.end_line(order, sku, 0, line_end).await?;
            return Ok(if ended { end } else { ReservationEnd::NothingHeld });
        }
        let mut row = self.read_reservation(order).await?;
        for _ in 0..MAX_STATE_STEPS {
            let Some(r) = row.take() else {
                // Nothing was reserved: record a closed reservation so that a late request is refused.
                match self.lwt(&self.inventory.res_insert_closed, (order.as_str(), now_ms())).await? {
                    Lwt::Applied => return Ok(ReservationEnd::NothingHeld),
                    Lwt::NotApplied => {}
                    Lwt::Unknown(e) => {
                        tracing::warn!(%order, error = %e, "closing outcome unknown; settling with a SERIAL read");
                    }
                }
                row = self.read_reservation(order).await?;
                continue;
            };
            let (from, to) = match (r.state, end) {
                (ResState::Reserved, ReservationEnd::Released) => (ResState::Reserved, ResState::Releasing),
                (ResState::Reserved, ReservationEnd::Committed) => (ResState::Reserved, ResState::Committing),
                (ResState::Reserved, ReservationEnd::NothingHeld) => return Ok(ReservationEnd::NothingHeld),
                // A reservation still being made is closed: whatever it held goes back.
                (ResState::Pending, _) => (ResState::Pending, ResState::Closing),
                // A pass under way (this request retried after a crash, or another one): finish it. It
                // answers `end` when it is the same end that was asked for.
                (s @ (ResState::Releasing | ResState::Committing), _) => {
                    self.finish_pass(order, &r).await?;
                    let same = matches!(
                        (s, end),
                        (ResState::Releasing, ReservationEnd::Released)
                            | (ResState::Committing, ReservationEnd::Committed)
                    );
                    return Ok(if same { end } else { ReservationEnd::NothingHeld });
                }
                (ResState::Rejecting | ResState::Closing, _) => {
                    self.finish_pass(order, &r).await?;
                    return Ok(ReservationEnd::NothingHeld);
                }
                (ResState::Rejected | ResState::Closed | ResState::Released | ResState::Committed, _) => {
                    return Ok(ReservationEnd::NothingHeld);
                }
            };
            let moved = if to == ResState::Closing {
                let outcome = Reservation::Rejected { reason: "ended_before_reserved".into(), sku: None };
                match self.decide(order, from, to, &outcome).await? {
                    None => Some(ResRow { state: to, outcome: Some(outcome), ..r }),
                    Some(now) => {
                        row = Some(now);
                        None
                    }
                }
            } else {
                match self.lwt(&self.inventory.res_move, (to.as_str(), order.as_str(), from.as_str())).await? {
                    Lwt::Applied => Some(ResRow { state: to, ..r }),
                    Lwt::NotApplied => {
                        row = self.read_reservation(order).await?;
                        None
                    }
                    Lwt::Unknown(e) => {
                        tracing::warn!(%order, error = %e, "reservation end outcome unknown; settling with a SERIAL read");
                        row = self.read_reservation(order).await?;
                        None
                    }
                }
            };
            if let Some(moved) = moved {
                self.finish_pass(order, &moved).await?;
                return Ok(if to == ResState::Closing { ReservationEnd::NothingHeld } else { end });
            }
        }
        Err(StoreError::Unavailable(format!("reservation of {order} kept changing")))
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

    async fn set_low_stock_threshold(&self, sku: &Sku, threshold: u64) -> Result<LowStock, StockError> {
        self.alerts_set_threshold(sku, threshold).await
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
