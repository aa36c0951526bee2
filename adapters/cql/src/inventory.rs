//! Inventory: `orderflow_inventory.stock_v2` (one partition per SKU: its level, its low-stock state, the rows
//! of the commands that changed them, and its alerts) and `stock_movements` (the ledger). See inventory.cql.
//!
//! The partition's one writer is the inventory processor that owns the SKU's partition of the inventory
//! topic (ADR 0001): a run of commands of one SKU (a batch's reservations, or one release, commit or staff
//! change) is one read of the statics and the commands' own rows, a decision per command in log order, and
//! one unlogged single-partition batch stamped with the commands' fences, which writes the new statics, each
//! command's row, its ledger line (keyed by the command's offset) and any low-stock crossing together. No
//! lightweight transactions: a zombie owner's late batch carries an older epoch and loses on every cell its
//! successor wrote, and a row it wrote ahead of its successor (`at` above the statics' `applied_at`) is
//! ignored and written over, its ledger line with it. A repeat of a command finds its row and answers from
//! it without writing.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use futures::future::try_join_all;
use orderflow_schemas::{OrderId, Sku, StockAlert, StockLevel, now_ms};
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use super::{CqlStore, Scope, corrupt, prepare, to_i64, to_u64};
use orderflow_platform::store::{
    Adjustment, Fence, Hold, InventoryStore, LowStock, Reservation, ReservationEnd, Result, StockError, StockMovement,
    StockRefusal, StoreError,
};

/// How long the row of an ended command (a released, committed, voided or refused hold, a staff change) is
/// kept: well past the log's retention plus the dead-letter topic's (7 + 7 days by default), so that a
/// redelivered or retried command still finds its first answer.
const ENDED_ROW_TTL_SECS: i32 = 30 * 86_400;

pub(super) struct Statements {
    read: PreparedStatement,
    statics: PreparedStatement,
    write_statics: PreparedStatement,
    write_row: PreparedStatement,
    write_alert: PreparedStatement,
    line_insert: PreparedStatement,
    line_delete: PreparedStatement,
    moves: PreparedStatement,
}

const STATICS: &str = "available, reserved, sold, threshold, low, crossings, applied_at";

impl Statements {
    pub(super) async fn prepare(s: &Scope<'_>) -> Result<Self> {
        Ok(Self {
            read: prepare(
                s,
                &format!(
                    "SELECT ref, {STATICS}, at, qty, state FROM orderflow_inventory.stock_v2 \
                     WHERE sku = ? AND ref IN ?"
                ),
                true,
            )
            .await?,
            statics: prepare(s, &format!("SELECT {STATICS} FROM orderflow_inventory.stock_v2 WHERE sku = ? LIMIT 1"), true)
                .await?,
            write_statics: prepare(
                s,
                &format!(
                    "INSERT INTO orderflow_inventory.stock_v2 (sku, ref, at, {STATICS}) \
                     VALUES (?, '', ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
                ),
                true,
            )
            .await?,
            write_row: prepare(
                s,
                "INSERT INTO orderflow_inventory.stock_v2 (sku, ref, at, qty, state) \
                 VALUES (?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?",
                true,
            )
            .await?,
            write_alert: prepare(
                s,
                "INSERT INTO orderflow_inventory.stock_v2 (sku, ref, at, kind, alert_available, alert_threshold, at_ms) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                true,
            )
            .await?,
            line_insert: prepare(
                s,
                "INSERT INTO orderflow_inventory.stock_ledger (sku, at, at_ms, kind, available_delta, reference) \
                 VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                true,
            )
            .await?,
            line_delete: prepare(
                s,
                "DELETE FROM orderflow_inventory.stock_ledger USING TIMESTAMP ? WHERE sku = ? AND at = ?",
                true,
            )
            .await?,
            moves: prepare(
                s,
                "SELECT at_ms, kind, available_delta, reference FROM orderflow_inventory.stock_ledger \
                 WHERE sku = ? LIMIT ?",
                true,
            )
            .await?,
        })
    }
}

// ---------------------------------------------------------------------------------------------------
// Rows

/// A SKU's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Level {
    available: i64,
    reserved: i64,
    sold: i64,
}

impl Level {
    fn to_stock_level(self) -> Result<StockLevel> {
        Ok(StockLevel {
            available: to_u64(self.available, "available")?,
            reserved: to_u64(self.reserved, "reserved")?,
            sold: to_u64(self.sold, "sold")?,
        })
    }
}

/// The static cells of a SKU's partition.
#[derive(Debug, Clone, Copy, Default)]
struct SkuState {
    /// None until the SKU is first stocked.
    level: Option<Level>,
    low: LowStock,
    /// The offset of the last command applied (None: nothing was ever written).
    applied_at: Option<u64>,
}

type StaticsTuple = (Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<bool>, Option<i64>, Option<i64>);
type ReadTuple = (
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<bool>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

fn to_state((available, reserved, sold, threshold, low, crossings, applied_at): StaticsTuple) -> Result<SkuState> {
    let default = LowStock::default();
    Ok(SkuState {
        level: available.map(|available| Level { available, reserved: reserved.unwrap_or(0), sold: sold.unwrap_or(0) }),
        low: LowStock {
            threshold: threshold.map(|t| to_u64(t, "threshold")).transpose()?.unwrap_or(default.threshold),
            low: low.unwrap_or(false),
            crossings: crossings.map(|c| to_u64(c, "crossings")).transpose()?.unwrap_or(0),
        },
        applied_at: applied_at.map(|a| to_u64(a, "applied_at")).transpose()?,
    })
}

/// The row of one command (a hold, a staff change).
#[derive(Debug, Clone)]
struct OpRow {
    /// The offset of the command that wrote it.
    at: u64,
    qty: i64,
    state: String,
}

const HELD: &str = "held";
const VOID: &str = "void";
const RELEASED: &str = "released";
const COMMITTED: &str = "committed";
const APPLIED: &str = "applied";
/// State of a hold row when the reservation was refused (`refused:<reason>`), and of a keyed adjustment's
/// row when it was refused (`refused:<StockRefusal code>`).
const REFUSED: &str = "refused:";

fn hold_ref(order: &OrderId) -> String {
    format!("hold:{order}")
}

fn end_ref(order: &OrderId) -> String {
    format!("end:{order}")
}

fn adjust_ref(key: &str) -> String {
    format!("adjust:key:{key}")
}

fn threshold_ref(key: &str) -> String {
    format!("threshold:{key}")
}

// ---------------------------------------------------------------------------------------------------
// Commands of one SKU

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineEnd {
    Release,
    Commit,
}

#[derive(Debug, Clone, Copy)]
enum Cmd<'a> {
    Reserve { order: &'a OrderId, qty: i64 },
    End { order: &'a OrderId, end: LineEnd },
    Adjust { delta: i64, reason: &'a str, key: Option<&'a str> },
    Threshold { threshold: u64, key: Option<&'a str> },
}

impl Cmd<'_> {
    /// The rows the command's decision reads: an order's hold of the SKU and the end of it for a reservation,
    /// release or commit; an adjustment's or a keyed threshold's own row.
    fn row_refs(&self, fence: Fence) -> Vec<String> {
        match self {
            Cmd::Reserve { order, .. } | Cmd::End { order, .. } => vec![hold_ref(order), end_ref(order)],
            Cmd::Adjust { key: Some(k), .. } => vec![adjust_ref(k)],
            Cmd::Adjust { key: None, .. } => vec![format!("adjust:at:{}", fence.offset)],
            Cmd::Threshold { key, .. } => key.map(threshold_ref).into_iter().collect(),
        }
    }
}

#[derive(Debug)]
enum Answer {
    Reserve(Reservation),
    /// Whether this command ended a hold.
    End(bool),
    Adjust(std::result::Result<StockLevel, StockError>),
    Threshold(std::result::Result<LowStock, StockError>),
}

/// The statements of one SKU's batch and their values.
struct Writes<'a> {
    st: &'a Statements,
    sku: &'a str,
    batch: Batch,
    values: Vec<Vec<Option<CqlValue>>>,
}

fn text(s: &str) -> Option<CqlValue> {
    Some(CqlValue::Text(s.to_owned()))
}

fn big(v: i64) -> Option<CqlValue> {
    Some(CqlValue::BigInt(v))
}

fn offset(v: u64) -> Result<Option<CqlValue>> {
    Ok(big(to_i64(v, "offset")?))
}

impl<'a> Writes<'a> {
    fn new(st: &'a Statements, sku: &'a str) -> Self {
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        Self { st, sku, batch, values: Vec::new() }
    }

    fn add(&mut self, stmt: &PreparedStatement, values: Vec<Option<CqlValue>>) {
        self.batch.append_statement(stmt.clone());
        self.values.push(values);
    }

    /// Writes `row` as `r`, expiring after [`ENDED_ROW_TTL_SECS`] unless it is a hold still held (`expire`
    /// says whether a held row expires too: when its hold ends).
    fn row(&mut self, r: &str, row: &OpRow, expire: bool, fence: Fence) -> Result<()> {
        let ended = expire || row.state != HELD;
        let values = vec![
            text(self.sku),
            text(r),
            offset(row.at)?,
            big(row.qty),
            text(&row.state),
            Some(CqlValue::Int(if ended { ENDED_ROW_TTL_SECS } else { 0 })),
            big(fence.timestamp()),
        ];
        let st = self.st;
        self.add(&st.write_row, values);
        Ok(())
    }

    /// The ledger line of the command at `fence`.
    fn line(&mut self, kind: &str, delta: i64, reference: &str, fence: Fence) -> Result<()> {
        let values = vec![
            text(self.sku),
            offset(fence.offset)?,
            big(now_ms()),
            text(kind),
            big(delta),
            text(reference),
            big(fence.timestamp()),
        ];
        let st = self.st;
        self.add(&st.line_insert, values);
        Ok(())
    }

    /// Deletes the ledger line at `at` (one a zombie owner wrote for a decision this run made otherwise).
    fn unline(&mut self, at: u64, fence: Fence) -> Result<()> {
        let values = vec![big(fence.timestamp()), text(self.sku), offset(at)?];
        let st = self.st;
        self.add(&st.line_delete, values);
        Ok(())
    }

    fn alert(&mut self, alert: &StockAlert, fence: Fence) -> Result<()> {
        let values = vec![
            text(self.sku),
            text(&super::alerts::alert_ref(alert.seq)),
            offset(fence.offset)?,
            text(alert.kind.as_str()),
            big(to_i64(alert.available, "available")?),
            big(to_i64(alert.threshold, "threshold")?),
            big(alert.at_ms),
            big(fence.timestamp()),
        ];
        let st = self.st;
        self.add(&st.write_alert, values);
        Ok(())
    }

    fn statics(&mut self, state: &SkuState, fence: Fence) -> Result<()> {
        let values = vec![
            text(self.sku),
            offset(fence.offset)?,
            state.level.map(|l| CqlValue::BigInt(l.available)),
            state.level.map(|l| CqlValue::BigInt(l.reserved)),
            state.level.map(|l| CqlValue::BigInt(l.sold)),
            big(to_i64(state.low.threshold, "threshold")?),
            Some(CqlValue::Boolean(state.low.low)),
            big(to_i64(state.low.crossings, "crossings")?),
            offset(fence.offset)?,
            big(fence.timestamp()),
        ];
        let st = self.st;
        self.add(&st.write_statics, values);
        Ok(())
    }
}

/// One run of commands of a SKU being decided: what the read found, and what the decisions write.
struct Run<'a> {
    store: &'a CqlStore,
    sku: &'a Sku,
    state: SkuState,
    rows: HashMap<String, OpRow>,
    writes: Writes<'a>,
    /// The fence of the last command that wrote.
    last: Option<Fence>,
    crossings: Vec<StockAlert>,
    product: Option<bool>,
    /// Offsets of the ledger lines this run writes.
    lined: HashSet<u64>,
}

impl<'a> Run<'a> {
    async fn product_exists(&mut self) -> Result<bool> {
        if let Some(known) = self.product {
            return Ok(known);
        }
        let known = self.store.product_exists(self.sku).await?;
        self.product = Some(known);
        Ok(known)
    }

    /// Records `row` as the command's (at its fence) and notes that the statics move to that fence.
    fn write_row(&mut self, r: String, mut row: OpRow, fence: Fence) -> Result<()> {
        row.at = fence.offset;
        self.writes.row(&r, &row, false, fence)?;
        self.rows.insert(r, row);
        self.applied(fence)
    }

    fn applied(&mut self, fence: Fence) -> Result<()> {
        self.state.applied_at = Some(fence.offset);
        self.last = Some(fence);
        // A level or threshold change that flips the low flag is recorded in the same write.
        if let Some(level) = self.state.level
            && let Some(alert) = self.state.low.crossing(self.sku, to_u64(level.available, "available")?, now_ms())
        {
            self.writes.alert(&alert, fence)?;
            self.state.low = self.state.low.after(&alert);
            self.crossings.push(alert);
        }
        Ok(())
    }

    fn line(&mut self, kind: &str, delta: i64, reference: &str, fence: Fence) -> Result<()> {
        self.lined.insert(fence.offset);
        self.writes.line(kind, delta, reference, fence)
    }

    fn level(&self) -> Result<Level> {
        self.state.level.ok_or_else(|| corrupt(format!("{}: a hold or adjustment without a level", self.sku)))
    }

    /// The answer to a command at or below the offset the statics were last written at: it was applied
    /// already (a redelivery to this owner, or a zombie behind the SKU's owner), so it is answered from its
    /// row and writes nothing. (Its row is gone only after [`ENDED_ROW_TTL_SECS`].)
    fn applied_before(&self, cmd: &Cmd<'_>, fence: Fence) -> Result<Answer> {
        let row = cmd.row_refs(fence).first().and_then(|r| self.rows.get(r));
        Ok(match (*cmd, row) {
            (Cmd::Reserve { order, .. }, _) => Answer::Reserve(
                self.first_answer(order)?
                    .unwrap_or_else(|| Reservation::Rejected { reason: "expired".into(), sku: Some(self.sku.clone()) }),
            ),
            (Cmd::End { .. }, _) => Answer::End(false),
            (Cmd::Adjust { key: Some(k), delta, .. }, Some(row)) => Answer::Adjust(self.adjust_answer(k, delta, row)?),
            (Cmd::Adjust { .. }, _) => Answer::Adjust(self.state.level.map_or_else(
                || Err(StockError::UnknownSku(self.sku.clone())),
                |l| l.to_stock_level().map_err(StockError::from),
            )),
            (Cmd::Threshold { .. }, _) => Answer::Threshold(Ok(self.state.low)),
        })
    }

    /// The first answer recorded under an adjustment's key.
    fn adjust_answer(&self, k: &str, delta: i64, row: &OpRow) -> Result<std::result::Result<StockLevel, StockError>> {
        let sku = self.sku;
        if row.qty != delta {
            let key = k.to_owned();
            return Ok(Err(StockError::KeyReused { sku: sku.clone(), key, applied: row.qty, asked: delta }));
        }
        if let Some(code) = row.state.strip_prefix(REFUSED) {
            let refusal = StockRefusal::from_code(code)
                .ok_or_else(|| corrupt(format!("{sku}: adjustment {k} in state {:?}", row.state)))?;
            return Ok(Err(refusal.into_error(sku)));
        }
        Ok(Ok(self.level()?.to_stock_level()?))
    }

    /// The first answer to the order's reservation of this SKU, if it has one: from its hold row, or a
    /// refusal when the order gave the SKU up before it was held.
    fn first_answer(&self, order: &OrderId) -> Result<Option<Reservation>> {
        if let Some(hold) = self.rows.get(&hold_ref(order)) {
            return hold_outcome(order, self.sku, hold).map(Some);
        }
        Ok(self
            .rows
            .contains_key(&end_ref(order))
            .then(|| Reservation::Rejected { reason: "ended_before_reserved".into(), sku: Some(self.sku.clone()) }))
    }

    async fn decide(&mut self, cmd: &Cmd<'_>, fence: Fence) -> Result<Answer> {
        let sku = self.sku;
        if self.state.applied_at.is_some_and(|applied| fence.offset <= applied) {
            return self.applied_before(cmd, fence);
        }
        Ok(match *cmd {
            Cmd::Reserve { order, qty } => {
                if let Some(answer) = self.first_answer(order)? {
                    return Ok(Answer::Reserve(answer));
                }
                let r = hold_ref(order);
                let product = if self.state.level.is_none() { self.product_exists().await? } else { true };
                let refusal = match self.state.level {
                    None if product => Some("out_of_stock"),
                    None => Some("unknown_sku"),
                    Some(l) if l.available < qty => Some("out_of_stock"),
                    Some(_) => None,
                };
                let row = match refusal {
                    Some(reason) => OpRow { at: 0, qty, state: format!("{REFUSED}{reason}") },
                    None => {
                        let mut level = self.level()?;
                        level.available -= qty;
                        level.reserved += qty;
                        self.state.level = Some(level);
                        self.line("reserve", -qty, order.as_str(), fence)?;
                        OpRow { at: 0, qty, state: HELD.into() }
                    }
                };
                let answer = hold_outcome(order, sku, &row)?;
                self.write_row(r, row, fence)?;
                Answer::Reserve(answer)
            }
            Cmd::End { order, end } => {
                // The end is a row of its own, so the hold row keeps what its reservation decided (a zombie's
                // end written ahead of its successor never hides a hold the successor's level counts).
                if self.rows.contains_key(&end_ref(order)) {
                    return Ok(Answer::End(false));
                }
                let Some(row) = self.rows.get(&hold_ref(order)).cloned() else {
                    // Never held: void it, so a late or zombie attempt of this order can never hold it later.
                    let void = OpRow { at: 0, qty: 0, state: VOID.into() };
                    self.write_row(end_ref(order), void, fence)?;
                    return Ok(Answer::End(false));
                };
                match row.state.as_str() {
                    HELD => {}
                    s if s.starts_with(REFUSED) => return Ok(Answer::End(false)),
                    other => return Err(corrupt(format!("{sku}: hold of {order} in state {other:?}"))),
                }
                let mut level = self.level()?;
                if level.reserved < row.qty {
                    return Err(corrupt(format!("{sku}: {} reserved, {order} holds {}", level.reserved, row.qty)));
                }
                level.reserved -= row.qty;
                let state = match end {
                    LineEnd::Release => {
                        level.available += row.qty;
                        self.line("release", row.qty, order.as_str(), fence)?;
                        RELEASED
                    }
                    LineEnd::Commit => {
                        level.sold += row.qty;
                        self.line("commit", 0, order.as_str(), fence)?;
                        COMMITTED
                    }
                };
                self.state.level = Some(level);
                // The hold row as it was (same offset), now expiring with its end.
                self.writes.row(&hold_ref(order), &row, true, fence)?;
                self.write_row(end_ref(order), OpRow { at: 0, qty: row.qty, state: state.into() }, fence)?;
                Answer::End(true)
            }
            Cmd::Adjust { delta, reason, key } => Answer::Adjust(self.adjust(delta, reason, key, fence).await?),
            Cmd::Threshold { threshold, key } => {
                if let Some(k) = key
                    && self.rows.contains_key(&threshold_ref(k))
                {
                    return Ok(Answer::Threshold(Ok(self.state.low)));
                }
                if self.state.level.is_none() && !self.product_exists().await? {
                    return Ok(Answer::Threshold(Err(StockError::UnknownSku(sku.clone()))));
                }
                self.state.low.threshold = threshold;
                match key {
                    Some(k) => {
                        let qty = to_i64(threshold, "threshold")?;
                        let row = OpRow { at: 0, qty, state: APPLIED.into() };
                        self.write_row(threshold_ref(k), row, fence)?;
                    }
                    None => self.applied(fence)?,
                }
                Answer::Threshold(Ok(self.state.low))
            }
        })
    }

    async fn adjust(
        &mut self,
        delta: i64,
        reason: &str,
        key: Option<&str>,
        fence: Fence,
    ) -> Result<std::result::Result<StockLevel, StockError>> {
        let sku = self.sku;
        if let Some(k) = key
            && let Some(row) = self.rows.get(&adjust_ref(k))
        {
            return self.adjust_answer(k, delta, row);
        }
        let level = self.state.level;
        let unknown = level.is_none() && !self.product_exists().await?;
        let Level { available, reserved, sold } = level.unwrap_or(Level { available: 0, reserved: 0, sold: 0 });
        let new_available = available.checked_add(delta).filter(|a| *a >= 0);
        let refusal = match new_available {
            _ if unknown => Some(StockRefusal::UnknownSku),
            None if delta >= 0 => Some(StockRefusal::WouldOverflow),
            None => Some(StockRefusal::WouldGoNegative { available: to_u64(available, "available")? }),
            // Every other movement moves units between available, reserved and sold, so bounding their sum
            // here keeps each of them in range.
            Some(n) if n.checked_add(reserved).and_then(|n| n.checked_add(sold)).is_none() => {
                Some(StockRefusal::WouldOverflow)
            }
            Some(_) => None,
        };
        if let Some(refusal) = refusal {
            // Without a key there is nothing to record; with one, the refusal is the key's first answer.
            if let Some(k) = key {
                let state = format!("{REFUSED}{}", refusal.to_code());
                let row = OpRow { at: 0, qty: delta, state };
                self.write_row(adjust_ref(k), row, fence)?;
            }
            return Ok(Err(refusal.into_error(sku)));
        }
        let new = Level { available: new_available.unwrap_or(available), reserved, sold };
        self.state.level = Some(new);
        self.line("adjust", delta, reason, fence)?;
        let r = key.map_or_else(|| format!("adjust:at:{}", fence.offset), adjust_ref);
        let row = OpRow { at: 0, qty: delta, state: APPLIED.into() };
        self.write_row(r, row, fence)?;
        Ok(Ok(new.to_stock_level()?))
    }
}

/// The first answer to an order's reservation of a SKU, from its hold row.
fn hold_outcome(order: &OrderId, sku: &Sku, row: &OpRow) -> Result<Reservation> {
    match row.state.as_str() {
        HELD => Ok(Reservation::Reserved { units: to_u64(row.qty, "held quantity")? }),
        state => match state.strip_prefix(REFUSED) {
            Some(reason) => Ok(Reservation::Rejected { reason: reason.to_owned(), sku: Some(sku.clone()) }),
            None => Err(StoreError::Corrupt(format!("{sku}: hold of {order} in state {state:?}"))),
        },
    }
}

impl CqlStore {
    /// The SKU's static cells (defaults for a SKU never written).
    async fn sku_state(&self, sku: &Sku) -> Result<SkuState> {
        match self.first_row::<StaticsTuple>(&self.inventory.statics, (sku.as_str(),)).await? {
            Some(statics) => to_state(statics),
            None => Ok(SkuState::default()),
        }
    }

    /// One read: the SKU's statics and the rows named `refs` that its statics vouch for.
    /// Also returns the offsets of the rows it ignored (see below).
    async fn read_sku(&self, sku: &Sku, refs: &[String]) -> Result<(SkuState, HashMap<String, OpRow>, Vec<u64>)> {
        let mut wanted: Vec<&str> = vec![""];
        for r in refs {
            if !wanted.contains(&r.as_str()) {
                wanted.push(r);
            }
        }
        let found: Vec<ReadTuple> = self.rows(&self.inventory.read, (sku.as_str(), wanted)).await?;
        let mut state = SkuState::default();
        let mut rows = HashMap::new();
        for (r, a, res, so, thr, low, cr, applied, at, qty, st) in found {
            state = to_state((a, res, so, thr, low, cr, applied))?;
            if r.is_empty() {
                continue;
            }
            let at = to_u64(at.ok_or_else(|| corrupt(format!("{sku}: row {r} without its offset")))?, "at")?;
            let row = OpRow { at, qty: qty.unwrap_or(0), state: st.unwrap_or_default() };
            rows.insert(r, row);
        }
        // A row written after the command the statics last saw was written by a zombie owner whose statics
        // lost: it is not part of this state, and the command it records is decided (and written) again.
        let mut ignored = Vec::new();
        rows.retain(|r, row| {
            let vouched = state.applied_at.is_some_and(|applied| row.at <= applied);
            if !vouched {
                tracing::warn!(%sku, row = %r, at = row.at, applied_at = ?state.applied_at, "ignoring a row a zombie owner wrote ahead");
                ignored.push(row.at);
            }
            vouched
        });
        Ok((state, rows, ignored))
    }

    /// Decides a run of commands of one SKU in order and writes every decision in one fenced batch.
    async fn apply_run(&self, sku: &Sku, cmds: &[(Cmd<'_>, Fence)]) -> Result<Vec<Answer>> {
        let refs: Vec<String> = cmds.iter().flat_map(|(c, fence)| c.row_refs(*fence)).collect();
        let (state, rows, ignored) = self.read_sku(sku, &refs).await?;
        let mut run = Run {
            store: self,
            sku,
            state,
            rows,
            writes: Writes::new(&self.inventory, sku.as_str()),
            last: None,
            crossings: Vec::new(),
            product: None,
            lined: HashSet::new(),
        };
        let mut answers = Vec::with_capacity(cmds.len());
        for (cmd, fence) in cmds {
            answers.push(run.decide(cmd, *fence).await?);
        }
        if let Some(last) = run.last {
            // A zombie's ledger line for a command decided here without one goes (a line written here at
            // the same offset replaces it anyway).
            for at in ignored.into_iter().filter(|at| !run.lined.contains(at)) {
                run.writes.unline(at, last)?;
            }
            let state = run.state;
            run.writes.statics(&state, last)?;
            let Writes { batch, values, .. } = run.writes;
            self.write_batch(&batch, values).await?;
            for alert in &run.crossings {
                self.alert_recorded(alert, last).await?;
            }
        }
        Ok(answers)
    }

    async fn apply_one(&self, sku: &Sku, cmd: Cmd<'_>, fence: Fence) -> Result<Answer> {
        self.apply_run(sku, &[(cmd, fence)])
            .await?
            .pop()
            .ok_or_else(|| corrupt(format!("{sku}: a command went unanswered")))
    }
}

fn unexpected(answer: Answer) -> StoreError {
    corrupt(format!("unexpected answer {answer:?}"))
}

#[async_trait]
impl InventoryStore for CqlStore {
    async fn stock(&self, sku: &Sku) -> Result<Option<StockLevel>> {
        self.sku_state(sku).await?.level.map(Level::to_stock_level).transpose()
    }

    async fn adjust_stock(
        &self,
        sku: &Sku,
        delta: i64,
        reason: &str,
        key: Option<&str>,
        fence: Fence,
    ) -> Result<StockLevel, StockError> {
        match self.apply_one(sku, Cmd::Adjust { delta, reason, key }, fence).await? {
            Answer::Adjust(answer) => answer,
            other => Err(unexpected(other).into()),
        }
    }

    async fn adjustment(&self, sku: &Sku, key: &str) -> Result<Option<Adjustment>> {
        let r = adjust_ref(key);
        let (_, rows, _) = self.read_sku(sku, std::slice::from_ref(&r)).await?;
        let Some(row) = rows.get(&r) else { return Ok(None) };
        let refused = match row.state.strip_prefix(REFUSED) {
            None => None,
            Some(code) => Some(
                StockRefusal::from_code(code)
                    .ok_or_else(|| corrupt(format!("{sku}: adjustment {r} in state {:?}", row.state)))?,
            ),
        };
        Ok(Some(Adjustment { delta: row.qty, refused }))
    }

    async fn reserve(&self, hold: &Hold, fence: Fence) -> Result<Reservation> {
        let qty = to_i64(hold.units(), "units")?;
        match self.apply_one(&hold.sku, Cmd::Reserve { order: &hold.order, qty }, fence).await? {
            Answer::Reserve(answer) => Ok(answer),
            other => Err(unexpected(other)),
        }
    }

    /// The holds of one SKU are one run (one read, one batch), in batch order, so the earlier ones take
    /// stock first, as one at a time would; different SKUs are different partitions, side by side.
    async fn reserve_many(&self, holds: &[(Hold, Fence)]) -> Result<Vec<Reservation>> {
        let mut runs: Vec<(&Sku, Vec<usize>)> = Vec::new();
        for (i, (hold, _)) in holds.iter().enumerate() {
            match runs.iter_mut().find(|(sku, _)| *sku == &hold.sku) {
                Some((_, run)) => run.push(i),
                None => runs.push((&hold.sku, vec![i])),
            }
        }
        let answered = try_join_all(runs.iter().map(|(sku, run)| async move {
            let mut cmds = Vec::with_capacity(run.len());
            for &i in run {
                let (hold, fence) = &holds[i];
                cmds.push((Cmd::Reserve { order: &hold.order, qty: to_i64(hold.units(), "units")? }, *fence));
            }
            let answers = self.apply_run(sku, &cmds).await?;
            Ok::<_, StoreError>(run.iter().copied().zip(answers).collect::<Vec<_>>())
        }))
        .await?;
        let mut out: Vec<Option<Reservation>> = vec![None; holds.len()];
        for (i, answer) in answered.into_iter().flatten() {
            match answer {
                Answer::Reserve(r) => out[i] = Some(r),
                other => return Err(unexpected(other)),
            }
        }
        out.into_iter().map(|a| a.ok_or_else(|| corrupt("a hold of the batch went unanswered"))).collect()
    }

    async fn end_reservation(
        &self,
        order: &OrderId,
        sku: &Sku,
        end: ReservationEnd,
        fence: Fence,
    ) -> Result<ReservationEnd> {
        let line_end = match end {
            ReservationEnd::Released => LineEnd::Release,
            ReservationEnd::Committed => LineEnd::Commit,
            ReservationEnd::NothingHeld => return Ok(ReservationEnd::NothingHeld),
        };
        match self.apply_one(sku, Cmd::End { order, end: line_end }, fence).await? {
            Answer::End(true) => Ok(end),
            Answer::End(false) => Ok(ReservationEnd::NothingHeld),
            other => Err(unexpected(other)),
        }
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
        fence: Fence,
    ) -> Result<LowStock, StockError> {
        match self.apply_one(sku, Cmd::Threshold { threshold, key }, fence).await? {
            Answer::Threshold(answer) => answer,
            other => Err(unexpected(other).into()),
        }
    }

    async fn low_stock(&self, sku: &Sku) -> Result<LowStock> {
        Ok(self.sku_state(sku).await?.low)
    }

    async fn settle_low_stock(&self, sku: &Sku, fence: Fence) -> Result<Vec<StockAlert>> {
        self.alerts_unpublished(sku, fence).await
    }

    async fn mark_alert_published(&self, sku: &Sku, seq: u64, fence: Fence) -> Result<()> {
        self.alerts_mark_published(sku, seq, fence).await
    }

    async fn stock_alerts(&self, sku: Option<&Sku>, limit: usize) -> Result<Vec<StockAlert>> {
        self.alerts_list(sku, limit).await
    }
}
