//! Staff stock changes reach the inventory processor as commands on the SKU's partition, between the
//! orders' reservations: a batch applies them in their place in the log, a redelivered batch changes
//! nothing, each adjustment's first answer is recorded under its request key (refusals too), and a
//! threshold change raises the alert the level already calls for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use orderflow_platform::backend::BackendOptions;
use orderflow_platform::bus::{Assignment, Delivery, Handler};
use orderflow_platform::embedded;
use orderflow_platform::fencing::PartitionFences;
use orderflow_platform::store::{Adjustment, StockRefusal, Stores};
use orderflow_processors::inventory::{InventoryHandler, stock_command_record};
use orderflow_schemas::events::{ReserveLine, ReserveStock};
use orderflow_schemas::stock_command::{RequestKey, StockChange, StockCommand};
use orderflow_schemas::*;
use tokio_util::sync::CancellationToken;

fn sku() -> Sku {
    Sku::parse("SKU-1").unwrap()
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
    let env = Envelope::new(EventId::derived(&id, "reserve:SKU-1"), id, body);
    codec::encode(&env).unwrap()
}

fn deliveries(payloads: Vec<Vec<u8>>) -> Vec<Delivery> {
    let assignment = Assignment::new(CancellationToken::new());
    (payloads.into_iter().enumerate())
        .map(|(offset, payload)| Delivery {
            topic: topics::INVENTORY.name.to_owned(),
            partition: 0,
            offset: offset as u64,
            key: "SKU-1".into(),
            payload,
            headers: vec![],
            assignment: assignment.clone(),
        })
        .collect()
}

async fn inventory() -> (tempfile::TempDir, Stores, InventoryHandler) {
    let dir = tempfile::tempdir().unwrap();
    let backends = embedded::open(dir.path(), &BackendOptions::default()).unwrap();
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
