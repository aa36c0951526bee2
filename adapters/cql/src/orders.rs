//! Orders: `orderflow_orders.orders_v2` (the order as placed, written once by intake; the order's state as
//! static columns and one clustering row per applied event with its outputs, written by the saga instance
//! that owns the order's partition, fenced by its epoch) and the read models `orders_by_bucket`, `orders_by_user`,
//! `orders_by_status`, `order_buckets`, `order_processing`. See orders.cql for why each key is what it is.

use std::collections::HashMap;

use async_trait::async_trait;
use futures::future::try_join_all;
use futures::{StreamExt, TryStreamExt, stream};
use orderflow_schemas::{EventId, Order, OrderId, OrderStatus, now_ms};
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use super::{CqlStore, Lwt, MAX_UNKNOWN_RETRIES, Scope, corrupt, prepare, serial, to_u64, unavailable};
use orderflow_platform::bus::BusRecord;
use orderflow_platform::store::{
    Applied, Fence, Inserted, OrderFilter, OrderStats, OrderStore, Page, Result, Stalled, StoreError, Transition,
};

/// Width of an index bucket: 7 days of placement time (see orders.cql).
const BUCKET_MS: i64 = 7 * 86_400_000;

/// The only shard of `order_buckets`.
const BUCKETS_SHARD: i32 = 0;

/// Rows fetched per page when walking an index.
const INDEX_PAGE_ROWS: i32 = 200;

/// Concurrent queries when stats() counts every (status, bucket) partition.
const STATS_CONCURRENCY: usize = 8;

fn bucket_of(placed_at_ms: i64) -> i64 {
    placed_at_ms.div_euclid(BUCKET_MS)
}

/// The saga state (order document and applied events) this process last wrote of each order as the owner
/// of its partition, by epoch, so that the next step of the same order skips the read of it.
///
/// Safe because of the fence (ADR 0001): an epoch is claimed by one process once per assignment, and
/// under it that process is the only writer of the order's state cells, processing its partition's
/// records in offset order. So what it wrote under epoch `e` is the current state for as long as it
/// handles the partition under `e`; an entry of another epoch (the partition was lost and taken again,
/// or belongs to an earlier run) is not used. A zombie (this process after it lost the partition) may use
/// its entries: its writes carry the older epoch and lose to the new owner's, as they would after a read.
/// Entries whose write failed or whose outcome is unknown are dropped. Bounded by `--owned-order-entries`.
/// (Partitions are found by key, so this relies on the orders topic's partition count not changing,
/// which the saga's per-order ordering needs anyway.)
pub(super) struct OwnerStates {
    cache: Option<moka::sync::Cache<String, std::sync::Arc<OwnerState>>>,
}

struct OwnerState {
    epoch: u64,
    order: Order,
    applied: Vec<uuid::Uuid>,
}

/// How long an entry stays without being used (an order that reached its end has no next step).
const OWNER_STATE_IDLE: std::time::Duration = std::time::Duration::from_secs(600);

impl OwnerStates {
    /// Holds at most `entries` orders; 0 turns it off (every step reads the store).
    pub(super) fn new(entries: u64) -> Self {
        let cache = (entries > 0)
            .then(|| moka::sync::Cache::builder().max_capacity(entries).time_to_idle(OWNER_STATE_IDLE).build());
        Self { cache }
    }

    fn get(&self, id: &str, epoch: u64) -> Option<(Order, Vec<uuid::Uuid>)> {
        let state = self.cache.as_ref()?.get(id)?;
        let hit = state.epoch == epoch;
        metrics::counter!("orderflow_cql_owner_state_reads_total", "outcome" => if hit { "hit" } else { "other_epoch" })
            .increment(1);
        hit.then(|| (state.order.clone(), state.applied.clone()))
    }

    fn put(&self, epoch: u64, order: &Order, applied: &[uuid::Uuid]) {
        if let Some(cache) = &self.cache {
            let state = OwnerState { epoch, order: order.clone(), applied: applied.to_vec() };
            cache.insert(order.id.as_str().to_owned(), std::sync::Arc::new(state));
        }
    }

    fn forget(&self, id: &str) {
        if let Some(cache) = &self.cache {
            cache.invalidate(id);
        }
    }

    /// Takes an order intake just inserted (nothing applied to it) as the state under `epoch`, the epoch
    /// this process's saga holds the order's partition under; never replaces an entry.
    fn placed(&self, epoch: u64, order: &Order) {
        if let Some(cache) = &self.cache {
            cache.entry(order.id.as_str().to_owned()).or_insert_with(|| {
                std::sync::Arc::new(OwnerState { epoch, order: order.clone(), applied: Vec::new() })
            });
        }
    }
}

/// An index walk: newest first from the start (`head`), or after a position: the rest of the same
/// millisecond (`tie`, `order_id > ?`), then older ones (`older`).
struct IndexQueries {
    head: PreparedStatement,
    tie: PreparedStatement,
    older: PreparedStatement,
}

impl IndexQueries {
    async fn prepare(s: &Scope<'_>, table: &str, partition: &str) -> Result<Self> {
        let base = format!("SELECT placed_at_ms, order_id FROM orderflow_orders.{table} WHERE {partition}");
        Ok(Self {
            head: paged(prepare(s, &base, true).await?),
            tie: paged(prepare(s, &format!("{base} AND placed_at_ms = ? AND order_id > ?"), true).await?),
            older: paged(prepare(s, &format!("{base} AND placed_at_ms < ?"), true).await?),
        })
    }
}

fn paged(mut stmt: PreparedStatement) -> PreparedStatement {
    stmt.set_page_size(INDEX_PAGE_ROWS);
    stmt
}

pub(super) struct Statements {
    insert: PreparedStatement,
    doc: PreparedStatement,
    doc_serial: PreparedStatement,
    /// The saga's step: the state cells and the event's row, written as one unlogged batch together with
    /// the read-model rows the step moves (the order's partition is applied as one mutation).
    set_state: PreparedStatement,
    event_insert: PreparedStatement,
    effect: PreparedStatement,
    idx_bucket: PreparedStatement,
    idx_all: PreparedStatement,
    idx_user: PreparedStatement,
    idx_status: PreparedStatement,
    idx_status_delete: PreparedStatement,
    idx_all_delete: PreparedStatement,
    idx_user_delete: PreparedStatement,
    idx_processing: PreparedStatement,
    buckets_newest_first: PreparedStatement,
    buckets_oldest_first: PreparedStatement,
    by_bucket: IndexQueries,
    by_user: IndexQueries,
    by_status: IndexQueries,
    stalled: PreparedStatement,
    count_status: PreparedStatement,
    processing: PreparedStatement,
    request_insert: PreparedStatement,
    request: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(s: &Scope<'_>) -> Result<Self> {
        let doc = prepare(
            s,
            // DISTINCT: only the partition's static cells (the order), not its first event row and outputs.
            "SELECT DISTINCT order_id, placed_doc, doc, applied FROM orderflow_orders.orders_v2 WHERE order_id = ?",
            true,
        )
        .await?;
        let set_state = prepare(
            s,
            "UPDATE orderflow_orders.orders_v2 USING TIMESTAMP ? SET status = ?, doc = ?, applied = ? \
             WHERE order_id = ?",
            true,
        )
        .await?;
        let event_insert = prepare(
            s,
            "INSERT INTO orderflow_orders.orders_v2 (order_id, event_id, outputs, applied_at_ms) VALUES (?, ?, ?, ?) \
             USING TIMESTAMP ?",
            true,
        )
        .await?;
        Ok(Self {
            insert: prepare(
                s,
                "INSERT INTO orderflow_orders.orders_v2 (order_id, placed_doc) VALUES (?, ?) IF NOT EXISTS",
                false,
            )
            .await?,
            doc_serial: serial(&doc),
            doc,
            // Plain writes at a fixed timestamp: applying the same batch twice changes nothing, so the driver
            // may retry it.
            set_state,
            event_insert,
            request_insert: prepare(
                s,
                "INSERT INTO orderflow_orders.order_requests (order_id, event_id, request) VALUES (?, ?, ?)",
                true,
            )
            .await?,
            request: prepare(
                s,
                "SELECT request FROM orderflow_orders.order_requests WHERE order_id = ? AND event_id = ?",
                true,
            )
            .await?,
            effect: prepare(
                s,
                "SELECT outputs, WRITETIME(outputs) FROM orderflow_orders.orders_v2 WHERE order_id = ? AND event_id = ?",
                true,
            )
            .await?,
            idx_bucket: prepare(s, "INSERT INTO orderflow_orders.order_buckets (shard, bucket) VALUES (?, ?)", true)
                .await?,
            idx_all: prepare(
                s,
                "INSERT INTO orderflow_orders.orders_by_bucket (bucket, placed_at_ms, order_id) VALUES (?, ?, ?)",
                true,
            )
            .await?,
            idx_user: prepare(
                s,
                "INSERT INTO orderflow_orders.orders_by_user (user_id, placed_at_ms, order_id) VALUES (?, ?, ?)",
                true,
            )
            .await?,
            idx_status: prepare(
                s,
                "INSERT INTO orderflow_orders.orders_by_status (status, bucket, placed_at_ms, order_id) \
                 VALUES (?, ?, ?, ?)",
                true,
            )
            .await?,
            idx_status_delete: prepare(
                s,
                "DELETE FROM orderflow_orders.orders_by_status \
                 WHERE status = ? AND bucket = ? AND placed_at_ms = ? AND order_id = ?",
                true,
            )
            .await?,
            idx_all_delete: prepare(
                s,
                "DELETE FROM orderflow_orders.orders_by_bucket WHERE bucket = ? AND placed_at_ms = ? AND order_id = ?",
                true,
            )
            .await?,
            idx_user_delete: prepare(
                s,
                "DELETE FROM orderflow_orders.orders_by_user WHERE user_id = ? AND placed_at_ms = ? AND order_id = ?",
                true,
            )
            .await?,
            idx_processing: prepare(
                s,
                "INSERT INTO orderflow_orders.order_processing (bucket, order_id, processing_ms) VALUES (?, ?, ?)",
                true,
            )
            .await?,
            buckets_newest_first: paged(
                prepare(s, "SELECT bucket FROM orderflow_orders.order_buckets WHERE shard = ?", true).await?,
            ),
            buckets_oldest_first: paged(
                prepare(
                    s,
                    "SELECT bucket FROM orderflow_orders.order_buckets WHERE shard = ? ORDER BY bucket ASC",
                    true,
                )
                .await?,
            ),
            by_bucket: IndexQueries::prepare(s, "orders_by_bucket", "bucket = ?").await?,
            by_user: IndexQueries::prepare(s, "orders_by_user", "user_id = ?").await?,
            by_status: IndexQueries::prepare(s, "orders_by_status", "status = ? AND bucket = ?").await?,
            stalled: paged(
                prepare(
                    s,
                    "SELECT placed_at_ms, order_id FROM orderflow_orders.orders_by_status \
                     WHERE status = ? AND bucket = ? AND placed_at_ms >= ? AND placed_at_ms < ? \
                     ORDER BY placed_at_ms ASC, order_id DESC",
                    true,
                )
                .await?,
            ),
            count_status: prepare(
                s,
                "SELECT COUNT(*) FROM orderflow_orders.orders_by_status WHERE status = ? AND bucket = ?",
                true,
            )
            .await?,
            processing: paged(
                prepare(s, "SELECT processing_ms FROM orderflow_orders.order_processing WHERE bucket = ?", true)
                    .await?,
            ),
        })
    }
}

// ---------------------------------------------------------------------------------------------------
// Rows

type StoredRecord = (String, String, Vec<u8>, Option<Vec<(String, String)>>);
type OutputsTuple = (Option<Vec<StoredRecord>>, Option<i64>);

/// The records a step published, as the `outputs` column's value.
fn outputs_value(outputs: &[BusRecord]) -> CqlValue {
    let text = |s: &str| Some(CqlValue::Text(s.to_owned()));
    CqlValue::List(
        outputs
            .iter()
            .map(|r| {
                let headers = r.headers.iter().map(|(k, v)| CqlValue::Tuple(vec![text(k), text(v)])).collect();
                CqlValue::Tuple(vec![
                    text(&r.topic),
                    text(&r.key),
                    Some(CqlValue::Blob(r.payload.clone())),
                    Some(CqlValue::List(headers)),
                ])
            })
            .collect(),
    )
}

/// The outputs stored with an applied event, if `fence` is for the record that applied it (its offset is
/// in the event row's write timestamp, see [`Fence::timestamp`]); none for a copy at another offset.
fn outputs_from_row((outputs, written): OutputsTuple, fence: Fence) -> Vec<BusRecord> {
    if !written.is_some_and(|ts| fence.is_at(Fence::offset_of_timestamp(ts))) {
        return Vec::new();
    }
    outputs
        .unwrap_or_default()
        .into_iter()
        .map(|(topic, key, payload, headers)| BusRecord { topic, key, payload, headers: headers.unwrap_or_default() })
        .collect()
}

fn doc_to_row(order: &Order) -> Result<String> {
    serde_json::to_string(order).map_err(|e| StoreError::Corrupt(format!("order {} does not encode: {e}", order.id)))
}

fn doc_from_row(id: &str, doc: &str) -> Result<Order> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt(format!("order {id}: {e}")))
}

/// An index position: the opaque page key "<placed_at_ms>:<order id>".
fn page_key(placed_at_ms: i64, id: &str) -> String {
    format!("{placed_at_ms}:{id}")
}

fn parse_page_key(key: &str) -> Option<(i64, String)> {
    let (at, id) = key.split_once(':')?;
    Some((at.parse().ok()?, id.to_owned()))
}

/// Which index a list walks.
enum Index<'a> {
    All,
    User(&'a str),
    Status(OrderStatus),
}

impl CqlStore {
    async fn order_read(&self, id: &str, serial: bool) -> Result<Option<Order>> {
        Ok(self.state_read(id, serial).await?.map(|(order, _)| order))
    }

    /// The order (the saga's document, else the one placed) and the events applied to it.
    async fn state_read(&self, id: &str, serial: bool) -> Result<Option<(Order, Vec<uuid::Uuid>)>> {
        let st = &self.orders;
        let stmt = if serial { &st.doc_serial } else { &st.doc };
        type Row = (String, Option<String>, Option<String>, Option<Vec<uuid::Uuid>>);
        match self.first_row::<Row>(stmt, (id,)).await? {
            Some((_, _, Some(doc), applied)) => Ok(Some((doc_from_row(id, &doc)?, applied.unwrap_or_default()))),
            Some((_, Some(placed), None, applied)) => {
                Ok(Some((doc_from_row(id, &placed)?, applied.unwrap_or_default())))
            }
            _ => Ok(None),
        }
    }

    /// The order's saga state as this process last read or wrote it under `fence`'s epoch, else as stored
    /// (remembered for the step that follows: read by the owner after it claimed the epoch, it is the state
    /// that step builds on, as a read at the step would be).
    async fn owner_state(&self, id: &str, fence: Fence) -> Result<Option<(Order, Vec<uuid::Uuid>)>> {
        if let Some(state) = self.owner_states.get(id, fence.epoch) {
            return Ok(Some(state));
        }
        let read = self.state_read(id, false).await?;
        if let Some((order, applied)) = &read {
            self.owner_states.put(fence.epoch, order, applied);
        }
        Ok(read)
    }

    /// What to publish again for a delivery (under `fence`) of an event already applied: see
    /// [`Applied::Duplicate`].
    async fn effect_read(&self, id: &OrderId, event: EventId, fence: Fence) -> Result<Vec<BusRecord>> {
        let row = self.first_row::<OutputsTuple>(&self.orders.effect, (id.as_str(), event.0)).await?;
        Ok(row.map(|r| outputs_from_row(r, fence)).unwrap_or_default())
    }

    /// Writes one saga step: the order's state cells (all of them, so they always come from one writer) and
    /// the event's row, stamped with the fence, and, when the step changed the order's status from `from`,
    /// the read-model rows that change moves (see [`Self::status_change_rows`]), all in one request.
    /// Remembers what was written for the order's next step under the same epoch, or forgets it when the
    /// write failed (it may or may not have been applied).
    async fn write_step(
        &self,
        order: &Order,
        applied: &[uuid::Uuid],
        event: EventId,
        outputs: &[BusRecord],
        fence: Fence,
        from: Option<OrderStatus>,
    ) -> Result<()> {
        let st = &self.orders;
        let id = order.id.as_str();
        let ts = fence.timestamp();
        let doc = doc_to_row(order)?;
        let mut b = Batch::new(BatchType::Unlogged);
        let mut values: Vec<Vec<CqlValue>> = Vec::new();
        b.append_statement(st.set_state.clone());
        values.push(vec![
            CqlValue::BigInt(ts),
            CqlValue::Text(order.status.as_str().to_owned()),
            CqlValue::Text(doc),
            CqlValue::List(applied.iter().map(|u| CqlValue::Uuid(*u)).collect()),
            CqlValue::Text(id.to_owned()),
        ]);
        b.append_statement(st.event_insert.clone());
        values.push(vec![
            CqlValue::Text(id.to_owned()),
            CqlValue::Uuid(event.0),
            outputs_value(outputs),
            CqlValue::BigInt(now_ms()),
            CqlValue::BigInt(ts),
        ]);
        if let Some(from) = from.filter(|f| *f != order.status) {
            self.status_change_rows(order, from, &mut b, &mut values);
        }
        b.set_is_idempotent(true);
        let written = self.write_batch(&b, values).await;
        match &written {
            Ok(()) => self.owner_states.put(fence.epoch, order, applied),
            Err(_) => self.owner_states.forget(id),
        }
        written
    }

    /// Writes the read-model rows of `order` in one unlogged batch (one write): the bucket, the all-orders
    /// and per-user rows, the row for its current status, the processing time once processed, and deletes the
    /// status rows of `stale` statuses (those it moved away from). Every write is idempotent.
    async fn write_indexes(&self, order: &Order, stale: &[OrderStatus]) -> Result<()> {
        self.write_index_rows(order, stale, true).await
    }

    /// The read-model rows a status change moves: the row for the new status, the old status's row
    /// deleted, the processing time once processed. The bucket, all-orders and per-user rows never change
    /// after intake wrote them ahead of the order (a redelivered step rewrites every row anyway).
    fn status_change_rows(&self, order: &Order, from: OrderStatus, b: &mut Batch, values: &mut Vec<Vec<CqlValue>>) {
        let st = &self.orders;
        let bucket = CqlValue::BigInt(bucket_of(order.placed_at_ms));
        let at = CqlValue::BigInt(order.placed_at_ms);
        let id = || CqlValue::Text(order.id.as_str().to_owned());
        let status = |s: OrderStatus| CqlValue::Text(s.as_str().to_owned());
        b.append_statement(st.idx_status.clone());
        values.push(vec![status(order.status), bucket.clone(), at.clone(), id()]);
        b.append_statement(st.idx_status_delete.clone());
        values.push(vec![status(from), bucket.clone(), at, id()]);
        if let Some(done) = order.processed_at_ms {
            b.append_statement(st.idx_processing.clone());
            values.push(vec![bucket, id(), CqlValue::BigInt((done - order.placed_at_ms).max(0))]);
        }
    }

    async fn write_index_rows(&self, order: &Order, stale: &[OrderStatus], processing: bool) -> Result<()> {
        let st = &self.orders;
        let bucket = bucket_of(order.placed_at_ms);
        let id = || CqlValue::Text(order.id.as_str().to_owned());
        let at = CqlValue::BigInt(order.placed_at_ms);
        let mut b = Batch::new(BatchType::Unlogged);
        let mut values: Vec<Vec<CqlValue>> = Vec::new();
        let mut add = |stmt: &PreparedStatement, v: Vec<CqlValue>| {
            b.append_statement(stmt.clone());
            values.push(v);
        };
        // The bucket's row in `order_buckets` (one partition every order would rewrite) once per process and
        // bucket: rows are never deleted, so once written it stays.
        let list_bucket = self.bucket_listed.load(std::sync::atomic::Ordering::Relaxed) != bucket;
        if list_bucket {
            add(&st.idx_bucket, vec![CqlValue::Int(BUCKETS_SHARD), CqlValue::BigInt(bucket)]);
        }
        add(&st.idx_all, vec![CqlValue::BigInt(bucket), at.clone(), id()]);
        add(&st.idx_user, vec![CqlValue::Text(order.user_id.as_str().to_owned()), at.clone(), id()]);
        add(
            &st.idx_status,
            vec![CqlValue::Text(order.status.as_str().to_owned()), CqlValue::BigInt(bucket), at.clone(), id()],
        );
        for s in stale.iter().filter(|s| **s != order.status) {
            add(
                &st.idx_status_delete,
                vec![CqlValue::Text(s.as_str().to_owned()), CqlValue::BigInt(bucket), at.clone(), id()],
            );
        }
        if let (true, Some(done)) = (processing, order.processed_at_ms) {
            let ms = (done - order.placed_at_ms).max(0);
            add(&st.idx_processing, vec![CqlValue::BigInt(bucket), id(), CqlValue::BigInt(ms)]);
        }
        b.set_is_idempotent(true);
        self.write_batch(&b, values).await?;
        if list_bucket {
            self.bucket_listed.fetch_max(bucket, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Removes the index rows that insert_new wrote ahead for `ours` when the order turned out to exist
    /// already as `stored`, keeping any row that `stored` has too.
    async fn drop_rows_written_ahead(&self, ours: &Order, stored: &Order) -> Result<()> {
        let st = &self.orders;
        let (at, bucket) = (ours.placed_at_ms, bucket_of(ours.placed_at_ms));
        let same_place = stored.placed_at_ms == at;
        let id = || CqlValue::Text(ours.id.as_str().to_owned());
        let mut b = Batch::new(BatchType::Logged);
        let mut values: Vec<Vec<CqlValue>> = Vec::new();
        if !same_place {
            b.append_statement(st.idx_all_delete.clone());
            values.push(vec![CqlValue::BigInt(bucket), CqlValue::BigInt(at), id()]);
        }
        if !(same_place && stored.user_id == ours.user_id) {
            b.append_statement(st.idx_user_delete.clone());
            values.push(vec![CqlValue::Text(ours.user_id.as_str().to_owned()), CqlValue::BigInt(at), id()]);
        }
        if !(same_place && stored.status == ours.status) {
            b.append_statement(st.idx_status_delete.clone());
            values.push(vec![
                CqlValue::Text(ours.status.as_str().to_owned()),
                CqlValue::BigInt(bucket),
                CqlValue::BigInt(at),
                id(),
            ]);
        }
        if values.is_empty() {
            return Ok(());
        }
        b.set_is_idempotent(true);
        self.write_batch(&b, values).await
    }

    /// Every bucket that has orders, newest (or oldest) first.
    async fn buckets(&self, newest_first: bool) -> Result<Vec<i64>> {
        let st = &self.orders;
        let stmt = if newest_first { &st.buckets_newest_first } else { &st.buckets_oldest_first };
        self.stream_rows::<(i64,)>(stmt, (BUCKETS_SHARD,)).await.map(|rows| rows.into_iter().map(|(b,)| b).collect())
    }

    /// Walks one index query lazily, resolving each position to its order and keeping those `keep` accepts,
    /// until `out` has `want` items. Returns true when it stopped because `out` is full.
    async fn walk(
        &self,
        stmt: &PreparedStatement,
        values: Vec<CqlValue>,
        want: usize,
        out: &mut Vec<(String, Order)>,
        keep: &(dyn Fn(&Order) -> bool + Sync),
    ) -> Result<bool> {
        let pager = self.session.execute_iter(stmt.clone(), values).await.map_err(unavailable)?;
        let mut rows = pager.rows_stream::<(i64, String)>().map_err(corrupt)?;
        loop {
            // Resolve in chunks of what is still missing, concurrently.
            let missing = want.saturating_sub(out.len());
            if missing == 0 {
                return Ok(true);
            }
            let mut chunk = Vec::with_capacity(missing);
            while chunk.len() < missing {
                match rows.next().await {
                    Some(row) => chunk.push(row.map_err(unavailable)?),
                    None => break,
                }
            }
            if chunk.is_empty() {
                return Ok(false);
            }
            let exhausted = chunk.len() < missing;
            let orders = try_join_all(chunk.iter().map(|(_, id)| self.order_read(id, false))).await?;
            for ((at, id), order) in chunk.into_iter().zip(orders) {
                // The index may lag the order (written after it): the document has the last word.
                if let Some(order) = order.filter(|o| o.placed_at_ms == at && keep(o)) {
                    out.push((page_key(at, &id), order));
                }
            }
            if exhausted {
                return Ok(out.len() >= want);
            }
        }
    }

    async fn status_count(&self, status: OrderStatus, bucket: i64) -> Result<u64> {
        let n: Option<(i64,)> = self.first_row(&self.orders.count_status, (status.as_str(), bucket)).await?;
        to_u64(n.map_or(0, |(n,)| n), "count")
    }

    async fn processing_totals(&self, bucket: i64) -> Result<(u64, u64)> {
        let rows: Vec<(Option<i64>,)> = self.stream_rows(&self.orders.processing, (bucket,)).await?;
        let mut total = 0u64;
        for (ms,) in &rows {
            total = total.saturating_add(to_u64(ms.unwrap_or(0), "processing_ms")?);
        }
        Ok((rows.len() as u64, total))
    }
}

#[async_trait]
impl OrderStore for CqlStore {
    async fn insert_new(&self, order: &Order) -> Result<Inserted> {
        let doc = doc_to_row(order)?;
        // The index rows go first: a crash right after the insert must not leave a PENDING order that no
        // index shows, since the stalled-order sweep finds PENDING orders through `orders_by_status`. Rows
        // written ahead for an order that then turns out to exist are removed below; rows left by a crash
        // before the insert point to no order and are skipped by every reader.
        self.write_index_rows(order, &[], false).await?;
        for _ in 0..MAX_UNKNOWN_RETRIES {
            let outcome = self.lwt(&self.orders.insert, (order.id.as_str(), &doc)).await?;
            if let Lwt::Unknown(e) = &outcome {
                tracing::warn!(order = %order.id, error = %e, "order insert outcome unknown; settling with a SERIAL read");
            }
            if matches!(outcome, Lwt::Applied) {
                if order.processed_at_ms.is_some() {
                    self.write_indexes(order, &[]).await?;
                }
                return Ok(Inserted::New);
            }
            match self.order_read(order.id.as_str(), true).await? {
                // Unknown outcome and the order is exactly ours: this call (or an identical one) wrote it.
                Some(stored) if matches!(outcome, Lwt::Unknown(_)) && stored == *order => {
                    if order.processed_at_ms.is_some() {
                        self.write_indexes(order, &[]).await?;
                    }
                    return Ok(Inserted::New);
                }
                Some(stored) => {
                    self.drop_rows_written_ahead(order, &stored).await?;
                    return Ok(Inserted::Existing(Box::new(stored)));
                }
                // Not there: only possible after an unknown outcome that did not apply; try again.
                None => continue,
            }
        }
        Err(StoreError::Unavailable(format!("inserting order {}: outcome stayed unknown", order.id)))
    }

    /// What a read of the order would give right after the insert: the document as placed, no event applied.
    fn placed_under(&self, order: &Order, epoch: u64) {
        self.owner_states.placed(epoch, order);
    }

    async fn order(&self, id: &OrderId) -> Result<Option<Order>> {
        self.order_read(id.as_str(), false).await
    }

    async fn order_for_step(&self, id: &OrderId, fence: Fence) -> Result<Option<Order>> {
        Ok(self.owner_state(id.as_str(), fence).await?.map(|(order, _)| order))
    }

    async fn apply(&self, t: Transition) -> Result<Applied> {
        let id = t.order.id.as_str();
        // The saga owns the order's partition: nobody else writes these cells, so a read then a write is
        // safe; a zombie's write carries an older epoch and loses to ours cell by cell. What this process
        // wrote last under the same epoch is the current state, and needs no read.
        let Some((current, mut applied)) = self.owner_state(id, t.fence).await? else {
            return Ok(Applied::Conflict);
        };
        if applied.contains(&t.event_id.0) {
            // A redelivery. Repair the read models for where the order is now: the crash that caused it may
            // have come between the step and its index batch.
            self.write_indexes(&current, &[t.expected, t.order.status]).await?;
            let outputs = self.effect_read(&t.order.id, t.event_id, t.fence).await?;
            return Ok(Applied::Duplicate(outputs));
        }
        if current.status != t.expected {
            self.owner_states.forget(id);
            return Ok(Applied::Conflict);
        }
        applied.push(t.event_id.0);
        self.write_step(&t.order, &applied, t.event_id, &t.outputs, t.fence, Some(t.expected)).await?;
        Ok(Applied::Applied)
    }

    /// Steps of different orders are different partitions: written side by side, not one after another.
    async fn apply_many(&self, transitions: Vec<Transition>) -> Result<Vec<Applied>> {
        futures::future::try_join_all(transitions.into_iter().map(|t| self.apply(t))).await
    }

    async fn seen(&self, id: &OrderId, event: EventId, fence: Fence) -> Result<Option<Vec<BusRecord>>> {
        let Some((current, mut applied)) = self.owner_state(id.as_str(), fence).await? else {
            return Err(StoreError::Corrupt(format!("no order {id}")));
        };
        if applied.contains(&event.0) {
            return Ok(Some(self.effect_read(id, event, fence).await?));
        }
        applied.push(event.0);
        self.write_step(&current, &applied, event, &[], fence, None).await?;
        Ok(None)
    }

    async fn list(&self, filter: &OrderFilter, after: Option<&str>, limit: usize) -> Result<Page<Order>> {
        let index = match (&filter.user, filter.status) {
            (Some(user), _) => Index::User(user.as_str()),
            (None, Some(status)) => Index::Status(status),
            (None, None) => Index::All,
        };
        let after = match after {
            None => None,
            Some(key) => match parse_page_key(key) {
                Some(pos) => Some(pos),
                // Not a key this adapter made: nothing comes after it.
                None => return Ok(Page { items: Vec::new(), has_next: false }),
            },
        };
        let keep = |o: &Order| {
            filter.status.is_none_or(|s| s == o.status) && filter.user.as_ref().is_none_or(|u| *u == o.user_id)
        };
        let want = limit.saturating_add(1);
        let mut items = Vec::with_capacity(want.min(1024));
        // (queries, partition key values) per partition walked, newest first.
        let partitions: Vec<(&IndexQueries, Vec<CqlValue>, Option<i64>)> = match index {
            Index::User(user) => vec![(&self.orders.by_user, vec![CqlValue::Text(user.to_owned())], None)],
            Index::All => self
                .buckets(true)
                .await?
                .into_iter()
                .map(|b| (&self.orders.by_bucket, vec![CqlValue::BigInt(b)], Some(b)))
                .collect(),
            Index::Status(s) => self
                .buckets(true)
                .await?
                .into_iter()
                .map(|b| {
                    (&self.orders.by_status, vec![CqlValue::Text(s.as_str().to_owned()), CqlValue::BigInt(b)], Some(b))
                })
                .collect(),
        };
        'walk: for (queries, key, bucket) in partitions {
            let mut steps: Vec<(&PreparedStatement, Vec<CqlValue>)> = Vec::with_capacity(2);
            match &after {
                None => steps.push((&queries.head, key)),
                Some((at, id)) => match bucket.map(|b| b.cmp(&bucket_of(*at))) {
                    // A bucket newer than the position: all of it was before.
                    Some(std::cmp::Ordering::Greater) => continue,
                    // An older bucket: all of it comes after.
                    Some(std::cmp::Ordering::Less) => steps.push((&queries.head, key)),
                    // The position's own partition: the rest of its millisecond, then older.
                    _ => {
                        let mut tie = key.clone();
                        tie.extend([CqlValue::BigInt(*at), CqlValue::Text(id.clone())]);
                        let mut older = key;
                        older.push(CqlValue::BigInt(*at));
                        steps.push((&queries.tie, tie));
                        steps.push((&queries.older, older));
                    }
                },
            }
            for (stmt, values) in steps {
                if self.walk(stmt, values, want, &mut items, &keep).await? {
                    break 'walk;
                }
            }
        }
        let has_next = items.len() > limit;
        items.truncate(limit);
        Ok(Page { items, has_next })
    }

    async fn stalled(&self, stalled: Stalled, placed_before_ms: i64, limit: usize) -> Result<Vec<Order>> {
        let mut out: Vec<(String, Order)> = Vec::new();
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Start where the oldest such order was last time (less a margin), not at the first order ever:
        // the rows before it are deletions of orders that moved on (tombstones that every read would
        // skip over again).
        let floor = self.sweep_floors.of(stalled);
        let from = floor.sweep_from_ms().unwrap_or(i64::MIN);
        let status = stalled.status();
        let keep = |o: &Order| o.status == status && o.placed_at_ms < placed_before_ms;
        let mut complete = true;
        for bucket in self.buckets(false).await? {
            if bucket > bucket_of(placed_before_ms) {
                break;
            }
            if from != i64::MIN && bucket < bucket_of(from) {
                continue;
            }
            let values = vec![
                CqlValue::Text(status.as_str().to_owned()),
                CqlValue::BigInt(bucket),
                CqlValue::BigInt(from),
                CqlValue::BigInt(placed_before_ms),
            ];
            if self.walk(&self.orders.stalled, values, limit, &mut out, &keep).await? {
                complete = false;
                break;
            }
        }
        floor.passed(out.first().map(|(_, o)| o.placed_at_ms), complete, placed_before_ms);
        Ok(out.into_iter().map(|(_, o)| o).collect())
    }

    async fn stats(&self) -> Result<OrderStats> {
        let buckets = self.buckets(true).await?;
        let pairs: Vec<(OrderStatus, i64)> =
            OrderStatus::ALL.iter().flat_map(|s| buckets.iter().map(move |b| (*s, *b))).collect();
        let counts: Vec<(OrderStatus, u64)> = stream::iter(pairs)
            .map(|(s, b)| async move { self.status_count(s, b).await.map(|n| (s, n)) })
            .buffer_unordered(STATS_CONCURRENCY)
            .try_collect()
            .await?;
        let mut by_status: HashMap<OrderStatus, u64> = HashMap::new();
        for (s, n) in counts {
            *by_status.entry(s).or_default() += n;
        }
        let totals: Vec<(u64, u64)> = stream::iter(buckets.iter().copied())
            .map(|b| self.processing_totals(b))
            .buffer_unordered(STATS_CONCURRENCY)
            .try_collect()
            .await?;
        let (processed, processing_ms_total) =
            totals.into_iter().fold((0u64, 0u64), |(n, ms), (bn, bms)| (n + bn, ms.saturating_add(bms)));
        Ok(OrderStats {
            by_status: OrderStatus::ALL.iter().map(|s| (*s, by_status.get(s).copied().unwrap_or(0))).collect(),
            processed,
            processing_ms_total,
        })
    }

    async fn record_request(&self, order: &OrderId, event: EventId, request: &str) -> Result<()> {
        self.session
            .execute_unpaged(&self.orders.request_insert, (order.as_str(), event.0, request))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn recorded_request(&self, order: &OrderId, event: EventId) -> Result<Option<String>> {
        let row = self.first_row::<(String,)>(&self.orders.request, (order.as_str(), event.0)).await?;
        Ok(row.map(|(request,)| request))
    }
}
