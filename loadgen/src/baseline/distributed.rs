//! What one order costs the pipeline on Kafka + CQL, and the baseline figure made from the raw rates.
//!
//! The plan was counted by reading the adapters (`platform/src/kafka/mod.rs`, `platform/src/cql/*.rs`), the
//! intake (`ingest/src/lib.rs`) and the handlers (`processors/src/{saga,inventory,payment,fulfillment}.rs`)
//! for a one-line order on the happy path: placed -> CONFIRMED -> shipment noted, no retry, no conflict.

use orderflow_schemas::topics;
use serde::Serialize;

/// The bus and store work of one step of the pipeline.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Step {
    /// Who does it: the intake, or the consumer group and the record it handles.
    pub step: &'static str,
    /// Records produced (idempotent producer, `acks=all`, each awaited), by topic.
    pub produced: &'static [&'static str],
    /// Plain CQL write requests, as the rows each writes: `1` is one INSERT, `4` one LOGGED batch of 4
    /// statements (index rows in several partitions).
    pub plain_writes: &'static [u32],
    /// Lightweight transactions: one Paxos round each. A conditional batch inside one partition (the saga's
    /// `status IF` + `event row IF NOT EXISTS`, the inventory hold) counts once.
    pub lwts: u32,
    /// Reads at LOCAL_QUORUM. Listed for completeness; the raw baselines only write.
    pub reads: u32,
}

/// One order through the pipeline on Kafka + CQL (happy path, one line), as `orderflow serve` runs it (every
/// role in one process). Totals: 7 records produced, 9 plain writes holding 22 rows, 1 LWT, 6 reads. A plain write is counted as a request of its own, as
/// it goes out when nothing else is being written; under load the adapter sends the plain writes made at
/// the same time as one request (`adapters/cql/src/writes.rs`), so fewer go out. Offsets are committed
/// by librdkafka once a second per consumer, not per record, so they are not counted. Not counted either: the claim of a
/// partition's epoch (one LWT per assignment, not per order) and customers' reads of their order.
pub const DISTRIBUTED_ORDER_PLAN: &[Step] = &[
    // ingest/src/lib.rs `place` + cql/orders.rs `insert_new`: the product's price (1 read); the index rows
    // written ahead (all orders, by user, by status PENDING: one unlogged batch; the week's `order_buckets`
    // row only once per process and week); the order `INSERT ... IF NOT EXISTS`; the order handed to the saga
    // of this process that holds its partition (`Intake::hand_to_owner`, memory only); then OrderPlaced.
    Step { step: "intake: POST /v1/orders", produced: &[topics::ORDERS.name], plain_writes: &[3], lwts: 1, reads: 1 },
    // saga on OrderPlaced: the order and its applied events as intake handed them over (no read; where
    // intake runs in another process than the partition's saga, one read); the fenced step (state cells +
    // event row) with the status change of the read model (PROCESSING row, PENDING row deleted) in one
    // unlogged batch; then ReserveStock.
    Step {
        step: "order saga: OrderPlaced",
        produced: &[topics::INVENTORY.name],
        plain_writes: &[4],
        lwts: 0,
        reads: 0,
    },
    // inventory `reserve` (cql/inventory.rs `apply_run`, the owner of the SKU's partition): one read of the
    // SKU's statics and the order's hold row (`ref IN ('', 'hold:<order>')`); one fenced single-partition
    // batch of the statics (with the '' row), the hold row and the ledger line (a crossing of the low-stock
    // threshold adds its alert row); then StockReserved; the low-stock settle reads nothing while this
    // process knows the SKU's alerts are published (`alerts::CleanSkus`). A batch's holds of one SKU share the
    // read and the batch: per order this is the most.
    Step { step: "inventory: ReserveStock", produced: &[topics::ORDERS.name], plain_writes: &[3], lwts: 0, reads: 1 },
    // saga on StockReserved: the order and its applied events from this process's own last write under
    // the partition's epoch (`store::OwnedOrders`, `cql::orders::OwnerStates`: no read); the fenced step
    // (2 rows); no status change; then CapturePayment.
    Step {
        step: "order saga: StockReserved",
        produced: &[topics::PAYMENTS.name],
        plain_writes: &[2],
        lwts: 0,
        reads: 0,
    },
    // payment: read the payment (none yet); the simulated provider's ledger: read the key (none yet), then
    // its entry (a plain INSERT; the entry id derives from the key); the fenced payment row (`record_new`, no
    // second read); then PaymentCaptured.
    Step {
        step: "payment: CapturePayment",
        produced: &[topics::ORDERS.name],
        plain_writes: &[1, 1],
        lwts: 0,
        reads: 2,
    },
    // saga on PaymentCaptured: state from its own last write; the capture checked against the payments
    // store of record (1 read: a record on the topic is not trusted, `SagaHandler::vouched`); the fenced
    // step with the status change CONFIRMED (row, PROCESSING deleted, processing time) in one batch of 5
    // rows; then CreateShipment.
    Step {
        step: "order saga: PaymentCaptured",
        produced: &[topics::FULFILLMENT.name],
        plain_writes: &[5],
        lwts: 0,
        reads: 1,
    },
    // fulfillment: read the shipment (none yet); the fenced shipment row; then ShipmentCreated.
    Step {
        step: "fulfillment: CreateShipment",
        produced: &[topics::ORDERS.name],
        plain_writes: &[1],
        lwts: 0,
        reads: 1,
    },
    // saga on ShipmentCreated: state from its own last write (no read); the fenced step (no outputs, so
    // nothing is produced); no status change.
    Step { step: "order saga: ShipmentCreated", produced: &[], plain_writes: &[2], lwts: 0, reads: 0 },
];

/// The plan's totals per order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlanTotals {
    pub messages: u32,
    pub plain_requests: u32,
    pub plain_rows: u32,
    pub lwts: u32,
    pub reads: u32,
}

/// Sums a plan.
pub fn totals(plan: &[Step]) -> PlanTotals {
    let mut t = PlanTotals { messages: 0, plain_requests: 0, plain_rows: 0, lwts: 0, reads: 0 };
    for s in plan {
        t.messages += s.produced.len() as u32;
        t.plain_requests += s.plain_writes.len() as u32;
        t.plain_rows += s.plain_writes.iter().sum::<u32>();
        t.lwts += s.lwts;
        t.reads += s.reads;
    }
    t
}

/// Orders/s the bus allows: the raw produce rate divided by the records one order produces.
pub fn kafka_orders_per_s(messages_per_s: f64, plan: &PlanTotals) -> f64 {
    if plan.messages == 0 {
        return f64::INFINITY;
    }
    messages_per_s.max(0.0) / f64::from(plan.messages)
}

/// Orders/s the store allows: one order needs `plain_rows / plain_rows_per_s + lwts / lwts_per_s` seconds of
/// the store's capacity (plain rows at the raw single-row INSERT rate, LWTs at the raw LWT rate), so the
/// rate is the inverse of that sum. A rate of zero for work the plan needs gives zero.
pub fn cql_orders_per_s(plain_rows_per_s: f64, lwts_per_s: f64, plan: &PlanTotals) -> f64 {
    let part = |n: u32, rate: f64| {
        if n == 0 {
            0.0
        } else if rate > 0.0 {
            f64::from(n) / rate
        } else {
            f64::INFINITY
        }
    };
    let seconds = part(plan.plain_rows, plain_rows_per_s) + part(plan.lwts, lwts_per_s);
    if seconds == 0.0 { f64::INFINITY } else { 1.0 / seconds }
}

/// The Kafka + CQL baseline: `min(kafka_orders_per_s, cql_orders_per_s)`, each measured alone. It assumes
/// the broker and the database do not slow each other down; on shared cores they do, so it is an upper bound.
pub fn orders_per_s(kafka_orders_per_s: f64, cql_orders_per_s: f64) -> f64 {
    kafka_orders_per_s.min(cql_orders_per_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_order_is_7_records_22_plain_rows_in_9_writes_1_lwt_and_6_reads() {
        let t = totals(DISTRIBUTED_ORDER_PLAN);
        assert_eq!(t, PlanTotals { messages: 7, plain_requests: 9, plain_rows: 22, lwts: 1, reads: 6 });
        // Four of the seven records are replies to the order saga; one goes to each command topic.
        let to_orders = DISTRIBUTED_ORDER_PLAN.iter().flat_map(|s| s.produced).filter(|t| **t == topics::ORDERS.name);
        assert_eq!(to_orders.count(), 4);
    }

    #[test]
    fn the_baseline_is_the_slower_of_bus_and_store() {
        let t = totals(DISTRIBUTED_ORDER_PLAN);
        assert!((kafka_orders_per_s(7000.0, &t) - 1000.0).abs() < 1e-9);
        // 22 rows at 22,000/s = 1 ms, 1 LWT at 1,000/s = 1 ms: 2 ms per order.
        let cql = cql_orders_per_s(22_000.0, 1_000.0, &t);
        assert!((cql - 1000.0 / 2.0).abs() < 1e-9, "{cql}");
        assert!((orders_per_s(1000.0, cql) - cql).abs() < 1e-12);
        assert_eq!(orders_per_s(50.0, cql), 50.0);
    }

    #[test]
    fn a_missing_rate_gives_zero_not_infinity() {
        let t = totals(DISTRIBUTED_ORDER_PLAN);
        assert_eq!(cql_orders_per_s(20_000.0, 0.0, &t), 0.0);
        assert_eq!(kafka_orders_per_s(0.0, &t), 0.0);
        let none = PlanTotals { messages: 0, plain_requests: 0, plain_rows: 0, lwts: 0, reads: 0 };
        assert!(cql_orders_per_s(0.0, 0.0, &none).is_infinite());
    }
}
