//! Staff stock changes reach the inventory processor as commands on the SKU's partition, between the
//! orders' reservations: a batch applies them in their place in the log, a redelivered batch changes
//! nothing, each adjustment's first answer is recorded under its request key (refusals too), and a
//! threshold change raises the alert the level already calls for. On the embedded store, and on the CQL
//! store (fenced writes) when `ORDERFLOW_TEST_CQL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, LazyLock};

use orderflow_embedded as embedded;
use orderflow_platform::backend::{BackendOptions, Backends};
use orderflow_platform::bus::{Assignment, Delivery, Handler};
use orderflow_platform::fencing::PartitionFences;
use orderflow_platform::store::{Adjustment, StockRefusal, Stores};
use orderflow_processors::inventory::{InventoryHandler, stock_command_record};
use orderflow_schemas::events::{ReserveLine, ReserveStock};
use orderflow_schemas::stock_command::{RequestKey, StockChange, StockCommand};
use orderflow_schemas::*;
use tokio_util::sync::CancellationToken;

/// One SKU per test process, so that runs against a shared Cassandra never meet.
static SKU: LazyLock<Sku> = LazyLock::new(|| Sku::parse(orderflow_platform::conformance::run_id("SKU")).unwrap());

fn sku() -> Sku {
    SKU.clone()
}

fn adjust(key: &str, delta: i64) -> Vec<u8> {
    command(key, StockChange::Adjust { delta, reason: "delivery".into() })
}

fn command(key: &str, change: StockChange) -> Vec<u8> {
    let cmd = StockCommand {
        request: RequestKey::parse("key", key).unwrap(),
        sku: sku(),
        requested_at_ms: now_ms(),
        requested_by: "staff".into(),
        change,
    };
    stock_command_record(&cmd).unwrap().payload
}

fn reserve(order: &str, units: i64) -> Vec<u8> {
    let id = OrderId::parse(order).unwrap();
    let body = ReserveStock { lines: vec![ReserveLine { sku: sku(), quantity: Quantity::new(units).unwrap() }] };
    let env = Envelope::new(EventId::derived(&id, &format!("reserve:{}", sku())), id, body);
    codec::encode(&env).unwrap()
}

fn deliveries(payloads: Vec<Vec<u8>>) -> Vec<Delivery> {
    let assignment = Assignment::new(CancellationToken::new());
    (payloads.into_iter().enumerate())
        .map(|(offset, payload)| Delivery {
            topic: topics::INVENTORY.name.to_owned(),
            partition: 0,
            offset: offset as u64,
            key: sku().as_str().into(),
            payload,
            headers: vec![],
            assignment: assignment.clone(),
        })
        .collect()
}

async fn inventory() -> (tempfile::TempDir, Stores, InventoryHandler) {
    let dir = tempfile::tempdir().unwrap();
    let backends = embedded::open(dir.path(), &BackendOptions::default()).unwrap();
    with_product(dir, backends).await
}

/// The same on the CQL store (the embedded log as the bus), or None without a Cassandra.
async fn inventory_on_cql() -> Option<(tempfile::TempDir, Stores, InventoryHandler)> {
    let cql = orderflow_platform::conformance::real_engine("ORDERFLOW_TEST_CQL")?;
    let points: Vec<String> = cql.split(',').map(|p| p.trim().to_owned()).collect();
    let cql = Arc::new(
        orderflow_cql::connect_and_migrate(&points, &orderflow_platform::conformance::test_cql_security())
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let embedded = embedded::open(dir.path(), &BackendOptions::default()).unwrap();
    let ledger = Arc::new(cql.ledger().await.unwrap());
    Some(with_product(dir, Backends { bus: embedded.bus, stores: cql.stores(), ledger }).await)
}

async fn with_product(dir: tempfile::TempDir, backends: Backends) -> (tempfile::TempDir, Stores, InventoryHandler) {
    let p = Product::new(sku(), "mug".into(), String::new(), Money::from_cents(100).unwrap(), now_ms());
    assert!(backends.stores.catalog.create_product(&p).await.unwrap());
    let handler = InventoryHandler {
        inventory: Arc::clone(&backends.stores.inventory),
        bus: Arc::clone(&backends.bus),
        fences: PartitionFences::new(Arc::clone(&backends.stores.epochs), "stock-commands"),
    };
    (dir, backends.stores, handler)
}

#[tokio::test]
async fn staff_changes_apply_in_their_place_among_reservations_and_once() {
    let (_dir, stores, handler) = inventory().await;
    staff_changes_in_their_place(stores, handler).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_cql_staff_changes_apply_in_their_place_among_reservations_and_once() {
    let Some((_dir, stores, handler)) = inventory_on_cql().await else { return };
    staff_changes_in_their_place(stores, handler).await;
}

async fn staff_changes_in_their_place(stores: Stores, handler: InventoryHandler) {
    let batch = deliveries(vec![
        command("t-0", StockChange::SetLowStockThreshold { threshold: 0 }),
        adjust("k-1", 3),
        reserve("o-1", 2),
        reserve("o-2", 2), // 1 left: refused
        adjust("k-2", -2), // 1 left: refused, and recorded as such
        adjust("k-3", 5),
        reserve("o-3", 2), // after the delivery of 5: held
        command("t-1", StockChange::SetLowStockThreshold { threshold: 4 }),
    ]);
    handler.handle_batch(&batch).await.unwrap();
    let inv = &stores.inventory;
    let level = inv.stock(&sku()).await.unwrap().unwrap();
    assert_eq!((level.available, level.reserved), (4, 4), "{level:?}");
    assert_eq!(inv.adjustment(&sku(), "k-1").await.unwrap(), Some(Adjustment { delta: 3, refused: None }));
    let refused = Some(StockRefusal::WouldGoNegative { available: 1 });
    assert_eq!(inv.adjustment(&sku(), "k-2").await.unwrap(), Some(Adjustment { delta: -2, refused }));
    assert_eq!(inv.low_stock(&sku()).await.unwrap().threshold, 4);
    let alerts = inv.stock_alerts(Some(&sku()), 10).await.unwrap();
    assert_eq!(alerts.len(), 1, "only 4 available at a threshold of 4 is low (none at 0): {alerts:?}");
    assert_eq!(alerts[0].kind, StockAlertKind::InventoryLow);

    // Redelivered (a crash before the offsets were committed), one by one this time: nothing changes.
    for d in &batch {
        handler.handle(d).await.unwrap();
    }
    let again = inv.stock(&sku()).await.unwrap().unwrap();
    assert_eq!(again, level);
    assert_eq!(inv.adjustment(&sku(), "k-2").await.unwrap(), Some(Adjustment { delta: -2, refused }));
    assert_eq!(inv.stock_alerts(Some(&sku()), 10).await.unwrap().len(), 1);
    let ledger = inv.movements(&sku(), 20).await.unwrap();
    let adjusts: Vec<i64> = ledger.iter().filter(|m| m.kind == "adjust").map(|m| m.available_delta).collect();
    assert_eq!(adjusts, vec![5, 3], "one ledger line per applied adjustment, newest first");
}

#[tokio::test]
async fn a_command_without_a_change_is_poison_not_a_panic() {
    let (_dir, _stores, handler) = inventory().await;
    let mut bad = adjust("k-1", 1);
    bad.truncate(bad.len() - 3);
    let err = handler.handle(&deliveries(vec![bad]).remove(0)).await.unwrap_err();
    assert!(err.to_string().contains("undecodable stock command"), "{err}");
}

/// Keeps what the handler publishes, and publishes nothing.
#[derive(Debug, Default)]
struct Published(std::sync::Mutex<Vec<orderflow_platform::bus::BusRecord>>);

#[async_trait::async_trait]
impl orderflow_platform::bus::Bus for Published {
    async fn publish(
        &self,
        records: Vec<orderflow_platform::bus::BusRecord>,
    ) -> Result<(), orderflow_platform::bus::BusError> {
        self.0.lock().unwrap().extend(records);
        Ok(())
    }
    async fn consume(
        &self,
        _: &str,
        _: topics::Topic,
        _: Arc<dyn Handler>,
        _: CancellationToken,
    ) -> Result<(), orderflow_platform::bus::BusError> {
        Ok(())
    }
    async fn ready(&self) -> Result<(), orderflow_platform::bus::BusError> {
        Ok(())
    }
    async fn progress(
        &self,
        _: &str,
        _: topics::Topic,
    ) -> Result<Vec<orderflow_platform::bus::PartitionProgress>, orderflow_platform::bus::BusError> {
        Ok(Vec::new())
    }
    fn partition_of(&self, _: topics::Topic, _: &str) -> Option<u32> {
        None
    }
}

/// A `ReserveStock` naming several SKUs was written before per-SKU reservations, keyed by its order: it is
/// on no SKU's partition, so the processor does not write their stock for it. It answers a refusal the saga
/// understands (the order is rejected), and a release naming several SKUs is dead-lettered.
#[tokio::test]
async fn a_reservation_of_several_skus_from_before_per_sku_commands_is_refused_not_applied() {
    let (_dir, stores, mut handler) = inventory().await;
    let published = Arc::new(Published::default());
    handler.bus = published.clone();
    handler.handle_batch(&deliveries(vec![adjust("k-1", 5)])).await.unwrap();
    let other = Sku::parse(orderflow_platform::conformance::run_id("OTHER")).unwrap();
    let id = OrderId::parse("o-legacy").unwrap();
    let lines = vec![
        ReserveLine { sku: sku(), quantity: Quantity::new(1).unwrap() },
        ReserveLine { sku: other.clone(), quantity: Quantity::new(1).unwrap() },
    ];
    let env = Envelope::new(EventId::derived(&id, "reserve"), id.clone(), ReserveStock { lines });
    handler.handle(&deliveries(vec![codec::encode(&env).unwrap()]).remove(0)).await.unwrap();
    let replies: Vec<Envelope> = (published.0.lock().unwrap().iter())
        .filter(|r| r.topic == topics::ORDERS.name)
        .map(|r| codec::decode(&r.payload).unwrap())
        .collect();
    assert_eq!(replies.len(), 1, "{replies:?}");
    match &replies[0].body {
        Event::StockRejected(r) => assert_eq!(r.reason, orderflow_processors::inventory::LEGACY_MULTI_SKU),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(stores.inventory.stock(&sku()).await.unwrap().unwrap().available, 5, "nothing held");

    let release = orderflow_schemas::events::ReleaseStock { release_reason: "x".into(), skus: vec![sku(), other] };
    let env = Envelope::new(EventId::derived(&id, "release"), id, release);
    let err = handler.handle(&deliveries(vec![codec::encode(&env).unwrap()]).remove(0)).await.unwrap_err();
    assert!(err.to_string().contains("several SKUs"), "{err}");
}
