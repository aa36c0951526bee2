//! The store conformance suite against the CQL adapter on a real Cassandra or ScyllaDB, plus what only this
//! adapter has to prove: a reservation or a saga step interrupted half-way (a crash between its writes) is
//! completed by the retry, never applied twice.
//!
//! Needs `ORDERFLOW_TEST_CQL=host:port` (`scripts/test-env/up` starts a Cassandra and prints it). Without it
//! the test prints a SKIPPED line and passes, unless `ORDERFLOW_REQUIRE_REAL_ENGINES=1`, when it fails.
//!
//! Every check runs in ONE test, in sequence: the driver session belongs to the runtime that made it (each
//! `#[tokio::test]` has its own), and `order_stats_follow_transitions` compares global counts, which other
//! checks running at the same time would move. The checks use random id prefixes, so they share one keyspace
//! with earlier runs.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use orderflow_cql::{self as cql, CqlStore};
use orderflow_platform::conformance::ledger;
use orderflow_platform::conformance::store::{self, product};
use orderflow_platform::conformance::{real_engine, run_id, test_cql_security};
use orderflow_platform::ledger::{ProviderEntry, ProviderLedger};
use orderflow_platform::store::{
    Applied, Fence, Inserted, OrderFilter, PaymentRecord, Reservation, ReservationEnd, Stalled, Stores, Transition,
};
use orderflow_schemas::{EventId, Order, OrderId, OrderStatus, Sku, StockLevel, UserId, now_ms};

/// The CQL contact points, or None when the test should be skipped (see [`real_engine`]).
fn cql_contact_points() -> Option<Vec<String>> {
    let Some(addr) = real_engine("ORDERFLOW_TEST_CQL") else {
        // real_engine's SKIPPED line goes through eprintln!, which libtest captures for a passing test:
        // say it where it is seen, straight on the process's stderr.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: the CQL conformance suite needs a real Cassandra/ScyllaDB: set ORDERFLOW_TEST_CQL=host:port \
             (scripts/test-env/up prints it) ***\n"
        );
        return None;
    };
    Some(addr.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect())
}

macro_rules! checks {
    ($stores:expr; $($name:ident),* $(,)?) => {
        $(
            let started = Instant::now();
            store::$name($stores.clone()).await;
            println!("ok  {:<55} {:>6} ms", stringify!($name), started.elapsed().as_millis());
        )*
    };
}

macro_rules! ledger_checks {
    ($ledger:expr; $($name:ident),* $(,)?) => {
        $(
            let started = Instant::now();
            ledger::$name(Arc::clone(&$ledger)).await;
            println!("ok  {:<55} {:>6} ms", stringify!($name), started.elapsed().as_millis());
        )*
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_store_passes_every_conformance_check_in_sequence() {
    let Some(contact_points) = cql_contact_points() else { return };
    let started = Instant::now();
    let security = test_cql_security();
    let store =
        Arc::new(cql::connect_and_migrate(&contact_points, &security).await.expect("connect, migrate and prepare"));
    println!("connected to {contact_points:?}, migrated and prepared in {} ms", started.elapsed().as_millis());
    let stores = Arc::clone(&store).stores();
    let provider_ledger: Arc<dyn ProviderLedger> = Arc::new(store.ledger().await.expect("prepare the ledger"));

    // The same list as adapters/embedded/tests/conformance.rs.
    checks!(stores;
        catalog_creates_once_updates_existing_and_paginates,
        catalog_view_keeps_the_newest_version,
        catalog_listing_is_in_sku_order,
        reservations_hold_each_sku_once,
        concurrent_reservations_never_oversell,
        batched_reservations_take_stock_in_order,
    stock_adjustments_are_checked,
        low_stock_alerts_fire_once_per_crossing,
        orders_insert_once_and_apply_each_event_once,
        orders_list_by_user_and_status_newest_first,
        order_stats_follow_transitions,
        payments_record_then_replace,
        shipments_are_created_once,
    order_requests_are_recorded_per_order_and_event,
        partition_epochs_only_grow,
        answers_readiness_pings,
    );

    // The simulated provider's ledger: the same list as adapters/embedded/tests/conformance.rs.
    ledger_checks!(provider_ledger;
        ledger_keeps_the_first_entry_per_key,
        ledger_lists_every_entry_in_key_order,
        ledger_records_many_keys_at_once,
    );
    let t = Instant::now();
    the_ledger_is_its_own_keyspace_shared_by_every_process(&store, &contact_points, &provider_ledger).await;
    println!("ok  {:<55} {:>6} ms", "the_ledger_is_its_own_keyspace_shared_by_every_process", t.elapsed().as_millis());

    // What only this adapter has to prove.
    let t = Instant::now();
    a_zombies_late_writes_lose_to_its_successors(&store, &stores).await;
    println!("ok  {:<55} {:>6} ms", "a_zombies_late_writes_lose_to_its_successors", t.elapsed().as_millis());
    let t = Instant::now();
    an_owners_remembered_state_serves_only_its_epoch(&store, &stores).await;
    println!("ok  {:<55} {:>6} ms", "an_owners_remembered_state_serves_only_its_epoch", t.elapsed().as_millis());
    let t = Instant::now();
    a_placed_order_given_to_its_owner_is_its_state_under_that_epoch_only(&stores).await;
    println!(
        "ok  {:<55} {:>6} ms",
        "a_placed_order_given_to_its_owner_is_its_state_under_that_epoch_only",
        t.elapsed().as_millis()
    );
    let t = Instant::now();
    a_zombie_owners_stock_writes_lose_to_its_successors(&stores).await;
    println!("ok  {:<55} {:>6} ms", "a_zombie_owners_stock_writes_lose_to_its_successors", t.elapsed().as_millis());
    let t = Instant::now();
    redelivered_step_repairs_the_read_models(&store, &stores).await;
    println!("ok  {:<55} {:>6} ms", "redelivered_step_repairs_the_read_models", t.elapsed().as_millis());
    let t = Instant::now();
    retried_insert_leaves_no_stray_index_rows(&stores).await;
    println!("ok  {:<55} {:>6} ms", "retried_insert_leaves_no_stray_index_rows", t.elapsed().as_millis());
    let t = Instant::now();
    product_rows_from_before_versions_update_once(&store, &stores).await;
    println!("ok  {:<55} {:>6} ms", "product_rows_from_before_versions_update_once", t.elapsed().as_millis());
    let t = Instant::now();
    writes_made_together_go_out_in_few_requests(&store, &stores).await;
    println!("ok  {:<55} {:>6} ms", "writes_made_together_go_out_in_few_requests", t.elapsed().as_millis());
    println!("cql conformance: all checks passed in {} ms", started.elapsed().as_millis());
}

/// Plain writes made at the same time go to the database grouped (`writes.rs`): every one of them lands
/// and reads back, in far fewer requests than writes; a group of large rows stays under Cassandra's batch
/// size limit (50 KiB by default: 64 of these 1.5 KB records in one batch would be refused); a write made
/// alone goes out alone.
async fn writes_made_together_go_out_in_few_requests(store: &CqlStore, stores: &Stores) {
    use futures::future::join_all;
    use orderflow_schemas::Money;
    const WRITES: u64 = 300;
    let id = run_id("grouped");
    let fence = Fence::new(1, 1);
    let order = |i: u64| OrderId::parse(format!("{id}-{i}")).expect("order id");
    let small = |i: u64| PaymentRecord::Captured {
        charge_id: format!("ch_{i}"),
        amount: Money::from_cents(100).expect("amount"),
    };
    let large = |i: u64| PaymentRecord::Declined { reason: format!("{i}:{}", "x".repeat(1500)) };
    for (what, records) in
        [("small", (0..WRITES).map(small).collect::<Vec<_>>()), ("large", (0..WRITES).map(large).collect())]
    {
        let first = if what == "small" { 0 } else { WRITES };
        let before = store.write_counts();
        let written = join_all(records.iter().enumerate().map(|(i, r)| {
            let o = order(first + i as u64);
            async move { stores.payments.record_new(&o, r, fence).await }
        }))
        .await;
        assert!(
            written.iter().all(Result::is_ok),
            "every {what} write succeeded: {:?}",
            written.iter().find(|r| r.is_err())
        );
        let after = store.write_counts();
        let (writes, requests) = (after.writes - before.writes, after.requests - before.requests);
        assert_eq!(writes, WRITES, "each {what} payment record is one write");
        assert!(requests * 4 <= writes, "{writes} {what} writes made together went out in {requests} requests");
        for (i, r) in records.iter().enumerate().step_by(37) {
            assert_eq!(stores.payments.payment(&order(first + i as u64)).await.expect("read").as_ref(), Some(r));
        }
    }
    let alone = store.write_counts();
    let record = PaymentRecord::Declined { reason: "alone".into() };
    stores.payments.record_new(&order(2 * WRITES), &record, fence).await.expect("write");
    let after = store.write_counts();
    assert_eq!((after.writes - alone.writes, after.requests - alone.requests), (1, 1), "a lone write goes alone");
}

/// A product row written by a release before categories and versions (those columns null) reads as
/// version 0 with the defaults, takes exactly one update from version 0, and a second edit from version 0
/// conflicts.
async fn product_rows_from_before_versions_update_once(store: &CqlStore, stores: &Stores) {
    use orderflow_platform::store::ProductWrite;
    let sku = Sku::parse(run_id("legacy")).expect("sku");
    store
        .session()
        .query_unpaged(
            "INSERT INTO orderflow_catalog.products (sku, name, description, price_cents, created_at_ms, updated_at_ms) \
             VALUES (?, 'old', '', 100, 1, 1) IF NOT EXISTS",
            (sku.as_str(),),
        )
        .await
        .expect("legacy row");
    let old = stores.catalog.product(&sku).await.expect("read").expect("the row");
    assert_eq!((old.version, old.category.as_str(), old.archived), (0, "uncategorized", false));
    let mut next = old.clone();
    next.name = "new".into();
    next.version = 1;
    assert_eq!(stores.catalog.update_product(&next).await.expect("update"), ProductWrite::Written);
    assert_eq!(stores.catalog.product(&sku).await.expect("read"), Some(next.clone()));
    let mut late = old.clone();
    late.name = "late".into();
    late.version = 1;
    assert_eq!(stores.catalog.update_product(&late).await.expect("update"), ProductWrite::Conflict(next));
    let mut ghost = old;
    ghost.sku = Sku::parse(run_id("legacy-ghost")).expect("sku");
    ghost.version = 1;
    assert_eq!(stores.catalog.update_product(&ghost).await.expect("update"), ProductWrite::NotFound, "never creates");
}

/// Writes `cancelled` (a CANCELLED order) over its state cells as another owner of the order's partition
/// would, stamped with that owner's `fence`.
async fn cancel_as_another_owner(store: &CqlStore, cancelled: &Order, fence: Fence) {
    let doc = serde_json::to_string(cancelled).expect("json");
    store
        .session()
        .query_unpaged(
            "UPDATE orderflow_orders.orders_v2 USING TIMESTAMP ? SET status = 'CANCELLED', doc = ?, applied = [] \
             WHERE order_id = ?",
            (fence.timestamp(), &doc, cancelled.id.as_str()),
        )
        .await
        .expect("another owner's write");
}

/// The inventory of a SKU whose partition moved from a zombie (epoch 4) to its successor (epoch 5). A zombie
/// behind its successor changes nothing; one ahead of it (records its successor has not reached) leaves rows
/// that the successor ignores and writes over when it gets there, ledger lines included; in the end the level,
/// the holds and the ledger are what the successor alone would have made of the log.
async fn a_zombie_owners_stock_writes_lose_to_its_successors(stores: &Stores) {
    let id = run_id("zombie-stock");
    let inv = &stores.inventory;
    let sku = product(stores, &format!("{id}-s"), 0).await;
    let order = |n: u32| OrderId::parse(format!("{id}-o{n}")).expect("order id");
    let (zombie, owner) = (|offset| Fence::new(4, offset), |offset| Fence::new(5, offset));
    let level = || async { inv.stock(&sku).await.expect("stock").expect("level") };
    let held = |n: u32, units: i64| store::hold(&order(n), &sku, &[units]);

    // The successor: stock at offset 10, o1 holds 3 at 11.
    inv.adjust_stock(&sku, 10, "delivery", Some("k-10"), owner(10)).await.expect("adjust");
    assert_eq!(inv.reserve(&held(1, 3), owner(11)).await.expect("reserve"), Reservation::Reserved { units: 3 });

    // Behind: the zombie handles offset 9 again (a release of o1, an adjustment under another key): at or
    // below the offset the statics were written at, so applied before: answered, nothing written.
    assert_eq!(
        inv.end_reservation(&order(1), &sku, ReservationEnd::Released, zombie(9)).await.expect("zombie end"),
        ReservationEnd::NothingHeld,
    );
    let _ = inv.adjust_stock(&sku, 100, "zombie", Some("k-9"), zombie(9)).await.expect("zombie adjust");
    assert_eq!(level().await, StockLevel { available: 7, reserved: 3, sold: 0 }, "a zombie behind changes nothing");

    // Ahead: the zombie holds 5 for o2 at offset 20 (its statics lose; its row and ledger line stay for now).
    assert_eq!(inv.reserve(&held(2, 5), zombie(20)).await.expect("zombie reserve"), Reservation::Reserved { units: 5 });
    assert_eq!(level().await, StockLevel { available: 7, reserved: 3, sold: 0 }, "its level lost to epoch 5");

    // The successor reaches offset 20: o2 asks for 8 this time (a different record than the zombie saw), so it
    // is refused; the zombie's hold row is ignored and its "reserve" line at 20 deleted.
    let refused = Reservation::Rejected { reason: "out_of_stock".into(), sku: Some(sku.clone()) };
    assert_eq!(inv.reserve(&held(2, 8), owner(20)).await.expect("reserve"), refused);
    assert_eq!(inv.reserve(&held(2, 8), owner(21)).await.expect("repeat"), refused, "the successor's answer stands");
    assert_eq!(level().await, StockLevel { available: 7, reserved: 3, sold: 0 });
    assert_eq!(
        inv.end_reservation(&order(1), &sku, ReservationEnd::Committed, owner(22)).await.expect("commit"),
        ReservationEnd::Committed,
        "o1 is still held: the zombie's release lost"
    );
    assert_eq!(level().await, StockLevel { available: 7, reserved: 0, sold: 3 });

    let lines: Vec<(String, i64)> =
        (inv.movements(&sku, 10).await.expect("ledger").into_iter()).map(|m| (m.kind, m.available_delta)).collect();
    let line = |kind: &str, delta: i64| (kind.to_owned(), delta);
    assert_eq!(lines, [line("commit", 0), line("reserve", -3), line("adjust", 10)], "only the successor's lines");
    assert_eq!(inv.adjustment(&sku, "k-9").await.expect("read"), None, "the zombie's key is not recorded");

    // A hold the zombie made while it was the owner, ended by it again after the successor's first write:
    // the successor still finds the hold when it gets there (the end is a row of its own, which it ignores
    // as written ahead), so it releases the units its level counts, once.
    let t = product(stores, &format!("{id}-t"), 0).await;
    let level = || async { inv.stock(&t).await.expect("stock").expect("level") };
    let held = |n: u32, units: i64| store::hold(&order(n), &t, &[units]);
    inv.adjust_stock(&t, 10, "delivery", Some("k-1"), zombie(1)).await.expect("adjust as the owner");
    assert_eq!(inv.reserve(&held(3, 2), zombie(2)).await.expect("reserve"), Reservation::Reserved { units: 2 });
    assert_eq!(inv.reserve(&held(4, 1), owner(3)).await.expect("reserve"), Reservation::Reserved { units: 1 });
    let late = inv.reserve(&held(4, 1), zombie(3)).await.expect("zombie repeat");
    assert_eq!(late, Reservation::Reserved { units: 1 }, "applied before: answered from the row");
    let zombie_end = inv.end_reservation(&order(3), &t, ReservationEnd::Released, zombie(4)).await;
    assert_eq!(zombie_end.expect("zombie end"), ReservationEnd::Released, "the zombie believes it released");
    assert_eq!(level().await, StockLevel { available: 7, reserved: 3, sold: 0 }, "its level lost to epoch 5");
    assert_eq!(
        inv.end_reservation(&order(3), &t, ReservationEnd::Released, owner(4)).await.expect("end"),
        ReservationEnd::Released,
        "the successor still finds o3's hold"
    );
    assert_eq!(level().await, StockLevel { available: 9, reserved: 1, sold: 0 }, "released once, nothing stuck");
    let lines: Vec<(String, i64)> =
        (inv.movements(&t, 10).await.expect("ledger").into_iter()).map(|m| (m.kind, m.available_delta)).collect();
    assert_eq!(lines, [line("release", 2), line("reserve", -1), line("reserve", -2), line("adjust", 10)]);
}

/// insert_new writes the index rows ahead of the conditional insert: a retried placement that loses (same
/// id, another time and customer) must take its rows back, so lists and counts show the order once.
async fn retried_insert_leaves_no_stray_index_rows(stores: &Stores) {
    let id = run_id("retry-insert");
    let os = &stores.orders;
    let pending = |s: &orderflow_platform::store::OrderStats| {
        s.by_status.iter().find(|(st, _)| *st == OrderStatus::Pending).map(|(_, n)| *n).expect("pending count")
    };
    let before = os.stats().await.expect("stats");
    let first =
        store::order(&format!("{id}-1"), UserId::parse(format!("{id}-u1")).expect("user").as_str(), now_ms() - 5_000);
    assert_eq!(os.insert_new(&first).await.expect("insert"), Inserted::New);
    let other_user = UserId::parse(format!("{id}-u2")).expect("user");
    let retry = store::order(first.id.as_str(), other_user.as_str(), now_ms());
    assert_eq!(os.insert_new(&retry).await.expect("retry"), Inserted::Existing(Box::new(first.clone())));
    let of_other = OrderFilter { user: Some(other_user), status: None };
    assert!(os.list(&of_other, None, 10).await.expect("list").items.is_empty(), "no row left for the loser");
    let all = os.list(&OrderFilter::default(), None, 1000).await.expect("list");
    assert_eq!(all.items.iter().filter(|(_, o)| o.id == first.id).count(), 1, "listed once");
    assert_eq!(pending(&os.stats().await.expect("stats")), pending(&before) + 1, "counted once");
}

/// A saga step whose conditional write applied but whose read-model batch never ran (a crash in between):
/// its redelivery is a Duplicate with the stored outputs, and the order is then listed under its new status.
async fn redelivered_step_repairs_the_read_models(store: &CqlStore, stores: &Stores) {
    let id = run_id("crash-apply");
    let os = &stores.orders;
    let user = UserId::parse(format!("{id}-u")).expect("user");
    let order = store::order(&format!("{id}-1"), user.as_str(), now_ms());
    os.insert_new(&order).await.expect("insert");
    let mut next = order.clone();
    next.status = OrderStatus::Cancelled;
    let event = EventId::random();
    // Only the step itself (state cells and the event row), as a crash right after it would leave it.
    let doc = serde_json::to_string(&next).expect("json");
    let ts = Fence::new(1, 7).timestamp();
    store
        .session()
        .query_unpaged(
            "BEGIN UNLOGGED BATCH \
             UPDATE orderflow_orders.orders_v2 USING TIMESTAMP ? SET status = 'CANCELLED', doc = ?, applied = ? \
               WHERE order_id = ?; \
             INSERT INTO orderflow_orders.orders_v2 (order_id, event_id, outputs, applied_at_ms) VALUES (?, ?, [], 0) \
               USING TIMESTAMP ?; \
             APPLY BATCH",
            (ts, &doc, vec![event.0], order.id.as_str(), order.id.as_str(), event.0, ts),
        )
        .await
        .expect("step write");
    let by_status = |status| OrderFilter { user: None, status: Some(status) };
    let listed = |page: orderflow_platform::Page<Order>| page.items.iter().any(|(_, o)| o.id == order.id);

    let t = Transition {
        event_id: event,
        expected: OrderStatus::Pending,
        order: next.clone(),
        outputs: vec![],
        fence: Fence::new(1, 7),
    };
    match os.apply(t).await.expect("redelivery") {
        Applied::Duplicate(outputs) => assert!(outputs.is_empty()),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let mine = OrderFilter { user: Some(user), status: Some(OrderStatus::Cancelled) };
    assert!(listed(os.list(&mine, None, 10).await.expect("list")), "listed as cancelled for its customer");
    assert!(
        listed(os.list(&by_status(OrderStatus::Cancelled), None, 1000).await.expect("list")),
        "the status index was repaired"
    );
    let stalled = os.stalled(Stalled::Pending, now_ms() + 1, 10_000).await.expect("stalled");
    assert!(stalled.iter().all(|o| o.id != order.id), "no longer PENDING anywhere");
}

/// The saga state the owner wrote under an epoch answers its next step under that epoch without a read
/// (`cql::orders::OwnerStates`), and never a step under another epoch: once the partition moved away and
/// came back, the store is read again.
async fn an_owners_remembered_state_serves_only_its_epoch(store: &CqlStore, stores: &Stores) {
    let id = run_id("owner-epoch");
    let os = &stores.orders;
    let order = store::order(&format!("{id}-1"), &format!("{id}-u"), now_ms());
    os.insert_new(&order).await.expect("insert");
    let with_status = |status| {
        let mut o = order.clone();
        o.status = status;
        o
    };
    let step = |expected, to, fence| Transition {
        event_id: EventId::random(),
        expected,
        order: with_status(to),
        outputs: vec![],
        fence,
    };
    let placed = step(OrderStatus::Pending, OrderStatus::Processing, Fence::new(7, 1));
    assert!(matches!(os.apply(placed).await.expect("owner, epoch 7"), Applied::Applied));
    // The partition moves to another process (epoch 8), which cancels the order.
    cancel_as_another_owner(store, &with_status(OrderStatus::Cancelled), Fence::new(8, 1)).await;
    // Still under epoch 7 (now a zombie), this process builds on what it wrote, without reading: its step
    // applies, and loses to epoch 8 cell by cell.
    let late = step(OrderStatus::Processing, OrderStatus::Confirmed, Fence::new(7, 2));
    assert!(matches!(os.apply(late).await.expect("zombie"), Applied::Applied), "answered from what epoch 7 wrote");
    let now = os.order(&order.id).await.expect("read").expect("order");
    assert_eq!(now.status, OrderStatus::Cancelled, "the zombie's step lost");
    // The partition comes back (epoch 9): the store is read, and the step from PROCESSING is refused.
    let back = step(OrderStatus::Processing, OrderStatus::Confirmed, Fence::new(9, 5));
    assert!(matches!(os.apply(back).await.expect("owner, epoch 9"), Applied::Conflict), "read, not remembered");
    let seen = os.order_for_step(&order.id, Fence::new(9, 6)).await.expect("read").expect("order");
    assert_eq!(seen.status, OrderStatus::Cancelled);
}

/// An order intake gives the owner (`OrderStore::placed_under`, the saga of the same process holding the
/// order's partition under an epoch) is the owner's state under that epoch, without a read, and under no
/// other epoch; it never replaces what the owner already holds of the order.
async fn a_placed_order_given_to_its_owner_is_its_state_under_that_epoch_only(stores: &Stores) {
    let id = run_id("placed-under");
    let os = &stores.orders;
    let step = |order: &Order, expected, to, fence| {
        let mut next = order.clone();
        next.status = to;
        Transition { event_id: EventId::random(), expected, order: next, outputs: vec![], fence }
    };
    // Given, never inserted: a read would find nothing, so a step that applies was answered from memory.
    let given = store::order(&format!("{id}-1"), &format!("{id}-u"), now_ms());
    os.placed_under(&given, 11);
    let first = step(&given, OrderStatus::Pending, OrderStatus::Processing, Fence::new(11, 1));
    assert!(matches!(os.apply(first).await.expect("epoch 11"), Applied::Applied), "answered from what was given");
    // Under another epoch the store is read: no such order.
    let other = store::order(&format!("{id}-2"), &format!("{id}-u"), now_ms());
    os.placed_under(&other, 11);
    let moved = step(&other, OrderStatus::Pending, OrderStatus::Processing, Fence::new(12, 1));
    assert!(matches!(os.apply(moved).await.expect("epoch 12"), Applied::Conflict), "read, not given");
    // Given again after the owner moved it on: what the owner wrote stands.
    os.placed_under(&given, 11);
    let next = step(&given, OrderStatus::Processing, OrderStatus::Confirmed, Fence::new(11, 2));
    assert!(matches!(os.apply(next).await.expect("epoch 11"), Applied::Applied), "the owner's state was kept");
    let stale = step(&given, OrderStatus::Pending, OrderStatus::Processing, Fence::new(11, 3));
    assert!(matches!(os.apply(stale).await.expect("epoch 11"), Applied::Conflict));
}

/// A zombie (an instance that lost its partition but still runs) writes late, with its older epoch: whatever
/// it writes, and in whatever order it arrives, the current owner's state stands.
async fn a_zombies_late_writes_lose_to_its_successors(store: &CqlStore, stores: &Stores) {
    let id = run_id("zombie");
    let os = &stores.orders;
    let order = store::order(&format!("{id}-1"), &format!("{id}-u"), now_ms());
    os.insert_new(&order).await.expect("insert");
    // The owner of epoch 5 moves the order on.
    let mut processing = order.clone();
    processing.status = OrderStatus::Processing;
    let step = Transition {
        event_id: EventId::random(),
        expected: OrderStatus::Pending,
        order: processing.clone(),
        outputs: vec![],
        fence: Fence::new(5, 10),
    };
    assert!(matches!(os.apply(step).await.expect("owner"), Applied::Applied));
    // The zombie of epoch 4 read the order before that, and writes its own decision late, at a later offset.
    let mut cancelled = order.clone();
    cancelled.status = OrderStatus::Cancelled;
    cancel_as_another_owner(store, &cancelled, Fence::new(4, 900)).await;
    let now = os.order(&order.id).await.expect("read").expect("order");
    assert_eq!(now.status, OrderStatus::Processing, "the zombie's late write lost");

    // The same for a payment record.
    let ps = &stores.payments;
    let oid = OrderId::parse(format!("{id}-pay")).expect("id");
    let captured = PaymentRecord::Captured {
        charge_id: "ch_owner".into(),
        amount: orderflow_schemas::Money::from_cents(700).expect("money"),
    };
    ps.record_new(&oid, &captured, Fence::new(5, 3)).await.expect("owner");
    store
        .session()
        .query_unpaged(
            "INSERT INTO orderflow_payments.payments_v2 (order_id, kind, charge_id, refund_id, amount_cents, reason) \
             VALUES (?, 'declined', '', '', 0, 'zombie') USING TIMESTAMP ?",
            (oid.as_str(), Fence::new(4, 900).timestamp()),
        )
        .await
        .expect("zombie write");
    assert_eq!(ps.payment(&oid).await.expect("read"), Some(captured));
}

/// The test Cassandra (`scripts/test-env/up`) requires a password login, as a production cluster does: a
/// session without one, or with a wrong password, is refused; with the right one it is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_serves_only_clients_that_log_in() {
    let Some(contact_points) = cql_contact_points() else { return };
    let security = test_cql_security();
    let Some(login) = security.login.clone() else {
        eprintln!("SKIPPED: ORDERFLOW_TEST_CQL_USERNAME is not set: this database takes clients without a login");
        return;
    };
    let none = cql::session(&contact_points, &Default::default()).await;
    assert!(none.is_err(), "a session without a login was opened");
    let mut wrong = login;
    wrong.password = orderflow_platform::secret::Secret::new("not-the-password");
    let wrong = orderflow_platform::connection::CqlSecurity { login: Some(wrong), tls: None };
    let wrong = cql::session(&contact_points, &wrong).await;
    assert!(wrong.is_err(), "a session with a wrong password was opened");
    cql::session(&contact_points, &security).await.expect("the right login opens a session");
}

/// TLS to the test Cassandra (it offers TLS on its CQL port): a session that checks the node's
/// certificate against the test CA logs in and queries; one that trusts only the system's roots refuses
/// the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_check_the_nodes_certificate() {
    use orderflow_platform::connection::{CqlSecurity, Tls};
    let Some(contact_points) = cql_contact_points() else { return };
    let Some(ca) = orderflow_platform::conformance::test_tls_ca()
        .filter(|_| orderflow_platform::conformance::test_cql_offers_tls())
    else {
        eprintln!("SKIPPED: ORDERFLOW_TEST_CQL_TLS / ORDERFLOW_TEST_TLS_CA are not set: this database offers no TLS");
        return;
    };
    let login = test_cql_security().login;
    let checked = CqlSecurity { login: login.clone(), tls: Some(Tls { ca: Some(ca) }) };
    let session = cql::session(&contact_points, &checked).await.expect("a TLS session with the test CA");
    let rows = session
        .query_unpaged("SELECT release_version FROM system.local", ())
        .await
        .expect("a query over TLS")
        .into_rows_result()
        .expect("rows");
    assert_eq!(rows.rows_num(), 1);
    let untrusted = CqlSecurity { login, tls: Some(Tls { ca: None }) };
    assert!(cql::session(&contact_points, &untrusted).await.is_err(), "a node with an untrusted certificate was used");
}

/// The ledger is in a keyspace of its own (`orderflow_provider`), and a second process (another session, as
/// another payment instance has) shares it: it reads the first process's entry and records nothing over it.
async fn the_ledger_is_its_own_keyspace_shared_by_every_process(
    store: &CqlStore,
    contact_points: &[String],
    ledger: &Arc<dyn ProviderLedger>,
) {
    use orderflow_schemas::Money;
    let key = format!("{}:authorise", run_id("shared"));
    let first = ProviderEntry {
        kind: "authorisation".into(),
        id: "pay_1".into(),
        amount: Money::from_cents(900).expect("amount"),
        at_ms: 7,
    };
    assert_eq!(ledger.record_once(&key, &first).await.expect("record"), first);

    let rows = store
        .session()
        .query_unpaged(
            "SELECT entry_id, amount_cents FROM orderflow_provider.ledger WHERE idempotency_key = ?",
            (key.as_str(),),
        )
        .await
        .expect("read the ledger's table")
        .into_rows_result()
        .expect("rows")
        .rows::<(String, i64)>()
        .expect("typed rows")
        .collect::<Result<Vec<_>, _>>()
        .expect("decoded rows");
    assert_eq!(rows, vec![("pay_1".to_owned(), 900)], "the entry is in orderflow_provider.ledger");

    let other = cql::connect_ledger(contact_points, &test_cql_security()).await.expect("a second process's ledger");
    assert_eq!(other.entry(&key).await.expect("entry"), Some(first.clone()), "another process reads the entry");
    let late = ProviderEntry { id: "pay_2".into(), at_ms: 8, ..first.clone() };
    assert_eq!(other.record_once(&key, &late).await.expect("record"), first, "and keeps the first entry");
    assert_eq!(ledger.entry(&key).await.expect("entry"), Some(first));
}
