//! Group commit for plain writes: the writes that callers make at the same time go to the database as one
//! unlogged batch, several orders' rows in one request.
//!
//! On Cassandra and ScyllaDB most of a small write's cost is the request itself (decoding it, scheduling
//! it, acknowledging it), not the rows it carries; one request of 40 rows costs a fraction of 40 requests
//! of one row (measured in ADR 0001). Every role writes a few rows per record, and many records are in
//! hand at once (a batch per partition, several partitions per process), so the adapter's plain writes
//! are combined here, the way a log or an LSM tree commits a group of writers with one sync:
//!
//! - A write is queued with its values already serialized against its prepared statement (a type error
//!   is reported to its caller, never to the others of its group).
//! - At most [`GroupedWrites::in_flight`] combined requests are outstanding. A caller that gets a slot
//!   takes what is queued (its own write and whatever came before or beside it, up to the statement and
//!   byte bounds) and sends it; the others wait for their result. When the database keeps up, a write
//!   goes out at once, alone; when it falls behind, the queue grows and so do the requests, so the cost
//!   per row falls as the load rises, with no timer and no added wait.
//! - A write's statements stay together in one request. Statements of one partition key in one batch
//!   are applied as one mutation (atomic and isolated), whichever callers they came from, so a caller's
//!   single-partition batch keeps those guarantees inside a combined one. Across partitions an unlogged
//!   batch promises nothing more than separate writes did.
//! - Each statement keeps its own `USING TIMESTAMP` (the fence); statements without one take the batch's
//!   time, as they took their own request's before.
//! - A failed request fails every write in it with the same error: all of them are idempotent plain
//!   writes, so their callers retry them as they retried a failed write of their own.
//!
//! Only plain writes come here: lightweight transactions and logged batches go out on their own.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use scylla::client::session::Session;
use scylla::serialize::SerializationError;
use scylla::serialize::batch::{BatchValues, BatchValuesIterator};
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::{Semaphore, oneshot};

use orderflow_platform::store::{Result, StoreError};

/// Bound on the serialized values of one combined request. Cassandra refuses a batch whose mutations exceed
/// `batch_size_fail_threshold` (50 KiB by default; ScyllaDB 1 MiB), so a group stays well below it; one
/// write larger than this still goes out, alone, as it did before.
const MAX_GROUP_BYTES: usize = 24 * 1024;

/// Requests outstanding at once. Groups form only while all of them are out, so this is the concurrency a
/// process keeps before it starts grouping: measured on the checkout benchmark (ADR 0001), 2 made every
/// write wait for the one before it and cut the checkout rate by a third; 8 leaves a lightly loaded
/// pipeline's writes alone (as fast as without grouping) and groups the bursts (a batch of records
/// handled side by side, a flash sale): 2.4 writes per request at 50 checkout customers, and the
/// flash-sale drain a quarter faster.
const IN_FLIGHT: usize = 8;

/// One statement with its values, serialized when it was queued.
struct Bound {
    statement: PreparedStatement,
    cells: Cells,
}

/// A row's values as the driver writes them: each cell `[i32 length][bytes]`, length -1 for null and -2
/// for unset.
struct Cells {
    bytes: Vec<u8>,
    count: usize,
}

impl Cells {
    /// Runs `write` with a writer of a row for `statement`'s bind markers; returns what it returned and the
    /// row it wrote.
    fn writing<R>(
        statement: &PreparedStatement,
        write: impl FnOnce(&RowSerializationContext<'_>, &mut RowWriter) -> R,
    ) -> (R, Self) {
        let specs = statement.get_variable_col_specs();
        let ctx = RowSerializationContext::from_specs(specs.as_slice());
        let mut bytes = Vec::new();
        let mut writer = RowWriter::new(&mut bytes);
        let written = write(&ctx, &mut writer);
        let count = writer.value_count();
        (written, Self { bytes, count })
    }

    fn of(statement: &PreparedStatement, values: &impl SerializeRow) -> std::result::Result<Self, SerializationError> {
        let (written, cells) = Self::writing(statement, |ctx, writer| values.serialize(ctx, writer));
        written.map(|()| cells)
    }

    fn next_of<'v>(
        statement: &PreparedStatement,
        values: &mut impl BatchValuesIterator<'v>,
    ) -> Option<std::result::Result<Self, SerializationError>> {
        let (written, cells) = Self::writing(statement, |ctx, writer| values.serialize_next(ctx, writer));
        Some(written?.map(|()| cells))
    }
}

impl SerializeRow for Cells {
    /// Copies the cells as they were serialized against the same statement.
    fn serialize(
        &self,
        _ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> std::result::Result<(), SerializationError> {
        let malformed = || SerializationError::new(MalformedCells);
        let mut rest = self.bytes.as_slice();
        for _ in 0..self.count {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(malformed)?;
            let cell = writer.make_cell_writer();
            rest = match i32::from_be_bytes(*len) {
                -1 => {
                    cell.set_null();
                    tail
                }
                -2 => {
                    cell.set_unset();
                    tail
                }
                n => {
                    let n = usize::try_from(n).map_err(|_| malformed())?;
                    let (value, tail) = tail.split_at_checked(n).ok_or_else(malformed)?;
                    cell.set_value(value).map_err(SerializationError::new)?;
                    tail
                }
            };
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Cells that do not parse as the driver wrote them (never expected: they come from [`RowWriter`]).
#[derive(Debug)]
struct MalformedCells;

impl std::fmt::Display for MalformedCells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("serialized cells do not parse")
    }
}

impl std::error::Error for MalformedCells {}

/// One caller's write: its statements (one partition's batch, or one statement) and where its result goes.
struct Queued {
    statements: Vec<Bound>,
    bytes: usize,
    idempotent: bool,
    done: oneshot::Sender<std::result::Result<(), String>>,
}

/// The plain writes waiting to go out, and the slots for requests in flight.
pub(crate) struct GroupedWrites {
    queue: Mutex<VecDeque<Queued>>,
    slots: Semaphore,
    max_statements: usize,
    counts: Counts,
}

/// Writes taken and requests sent so far.
#[derive(Default)]
struct Counts {
    writes: AtomicU64,
    requests: AtomicU64,
}

impl Counts {
    /// Counts `writes` callers' writes going out as one request of `statements` statements, in
    /// [`GroupedWrites::counts`] and in the metrics alike (every path that sends comes through here).
    fn sent(&self, writes: usize, statements: usize) {
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("orderflow_cql_write_group_statements").record(statements as f64);
        metrics::counter!("orderflow_cql_write_requests_total").increment(1);
        metrics::counter!("orderflow_cql_writes_total").increment(writes as u64);
    }
}

/// How many plain writes the adapter took and in how many requests it sent them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteCounts {
    /// Callers' writes (a statement, or a single-partition batch kept together).
    pub writes: u64,
    /// Requests sent for them.
    pub requests: u64,
}

impl GroupedWrites {
    /// Groups of at most `max_statements` statements; 1 turns grouping off: every write is sent on its own
    /// as soon as it is made, with no bound on those in flight.
    pub(crate) fn new(max_statements: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            slots: Semaphore::new(IN_FLIGHT),
            max_statements: max_statements.max(1),
            counts: Counts::default(),
        }
    }

    pub(crate) fn counts(&self) -> WriteCounts {
        WriteCounts {
            writes: self.counts.writes.load(Ordering::Relaxed),
            requests: self.counts.requests.load(Ordering::Relaxed),
        }
    }

    /// One plain statement, possibly sent together with other callers' writes.
    pub(crate) async fn write(
        &self,
        session: &Session,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<()> {
        let cells = Cells::of(statement, &values).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        drop(values);
        let idempotent = statement.get_is_idempotent();
        self.submit(session, vec![Bound { statement: statement.clone(), cells }], idempotent).await
    }

    /// A caller's unlogged batch (its statements stay together), possibly sent with other callers' writes.
    /// A logged batch, or one with unprepared statements, is sent on its own.
    pub(crate) async fn write_batch(&self, session: &Session, batch: &Batch, values: impl BatchValues) -> Result<()> {
        match bind(batch, &values)? {
            Some(statements) => {
                drop(values);
                self.submit(session, statements, batch.get_is_idempotent()).await
            }
            None => {
                self.counts.sent(1, batch.statements.len());
                session.batch(batch, values).await.map_err(super::unavailable)?;
                Ok(())
            }
        }
    }

    async fn submit(&self, session: &Session, statements: Vec<Bound>, idempotent: bool) -> Result<()> {
        if self.max_statements == 1 {
            // Grouping off: every write is its own request, as many in flight as callers make.
            let (done, result) = oneshot::channel();
            self.counts.sent(1, statements.len());
            send(session, vec![Queued { statements, bytes: 0, idempotent, done }]).await;
            return settle(result.await);
        }
        let bytes = statements.iter().map(|s| s.cells.bytes.len()).sum();
        let (done, mut result) = oneshot::channel();
        self.lock().push_back(Queued { statements, bytes, idempotent, done });
        loop {
            tokio::select! {
                biased;
                r = &mut result => return settle(r),
                slot = self.slots.acquire() => {
                    let Ok(permit) = slot else { return Err(StoreError::Unavailable("write queue closed".into())) };
                    let group = self.take();
                    if group.is_empty() {
                        // Ours was taken by a caller that is sending it now: its result comes from there.
                        drop(permit);
                        return settle(result.await);
                    }
                    self.counts.sent(group.len(), group.iter().map(|q| q.statements.len()).sum());
                    send(session, group).await;
                    drop(permit);
                }
            }
        }
    }

    /// The queued writes that fit one request, oldest first; at least one if any is queued.
    fn take(&self) -> Vec<Queued> {
        let mut queue = self.lock();
        let mut group: Vec<Queued> = Vec::new();
        let (mut statements, mut bytes) = (0usize, 0usize);
        while let Some(next) = queue.front() {
            let fits =
                statements + next.statements.len() <= self.max_statements && bytes + next.bytes <= MAX_GROUP_BYTES;
            if !group.is_empty() && !fits {
                break;
            }
            statements += next.statements.len();
            bytes += next.bytes;
            group.extend(queue.pop_front());
        }
        group
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        // The queue is only pushed to and popped from; a panic elsewhere cannot leave it half-changed.
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An unlogged batch of prepared statements with its values serialized; None for a batch that must go out
/// as built (logged, or with an unprepared statement).
fn bind(batch: &Batch, values: &impl BatchValues) -> Result<Option<Vec<Bound>>> {
    if batch.get_type() != BatchType::Unlogged {
        return Ok(None);
    }
    let mut iter = values.batch_values_iter();
    let mut statements = Vec::with_capacity(batch.statements.len());
    for s in &batch.statements {
        // Unprepared (or a kind a later driver adds): sent as the caller built it.
        let BatchStatement::PreparedStatement(p) = s else { return Ok(None) };
        let cells = match Cells::next_of(p, &mut iter) {
            Some(Ok(cells)) => cells,
            Some(Err(e)) => return Err(StoreError::Corrupt(e.to_string())),
            None => return Err(StoreError::Corrupt("a batch has fewer value rows than statements".into())),
        };
        statements.push(Bound { statement: p.clone(), cells });
    }
    Ok(Some(statements))
}

fn settle(r: std::result::Result<std::result::Result<(), String>, oneshot::error::RecvError>) -> Result<()> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(StoreError::Unavailable(e)),
        // The caller sending it was cancelled mid-request: the write may or may not have been applied.
        Err(_) => Err(StoreError::Unavailable("a grouped write was abandoned; its outcome is unknown".into())),
    }
}

/// Sends a group as one unlogged batch (or a lone statement as itself) and hands each caller the outcome.
async fn send(session: &Session, group: Vec<Queued>) {
    let statements: usize = group.iter().map(|q| q.statements.len()).sum();
    let outcome = if let [Queued { statements: only, .. }] = group.as_slice()
        && let [one] = only.as_slice()
    {
        session.execute_unpaged(&one.statement, &one.cells).await.map(drop)
    } else {
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values: Vec<&Cells> = Vec::with_capacity(statements);
        for q in &group {
            for s in &q.statements {
                batch.append_statement(s.statement.clone());
                values.push(&s.cells);
            }
        }
        batch.set_is_idempotent(group.iter().all(|q| q.idempotent));
        session.batch(&batch, values).await.map(drop)
    };
    let outcome = outcome.map_err(|e| e.to_string());
    for q in group {
        // A caller that went away no longer wants its result.
        let _ = q.done.send(outcome.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cells serialized once (a value, a null, an unset, an empty value) are written back byte for byte.
    #[test]
    fn cells_are_copied_as_serialized() {
        let mut bytes = Vec::new();
        let mut w = RowWriter::new(&mut bytes);
        w.make_cell_writer().set_value(b"order-1").expect("small");
        w.make_cell_writer().set_null();
        w.make_cell_writer().set_unset();
        w.make_cell_writer().set_value(b"").expect("small");
        let count = w.value_count();
        let cells = Cells { bytes: bytes.clone(), count };
        let mut copy = Vec::new();
        let mut writer = RowWriter::new(&mut copy);
        cells.serialize(&RowSerializationContext::empty(), &mut writer).expect("copies");
        assert_eq!((writer.value_count(), copy), (4, bytes));
        assert!(!cells.is_empty());
        assert!(Cells { bytes: Vec::new(), count: 0 }.is_empty());
    }
}
