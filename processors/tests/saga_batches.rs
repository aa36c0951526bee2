//! The saga's batch path (`SagaHandler::handle_batch`, what both buses use when records are waiting):
//! steps of several orders are applied with one store call and published with one append, a second
//! record of an order in the same batch is decided on the state the first left, and a record that
//! changes nothing in between is handled on its own. A batch must end where the same records handled
//! one at a time end, and handling it again (a redelivery) must change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use orderflow_embedded as embedded;
use orderflow_platform::backend::BackendOptions;
use orderflow_platform::bus::{Assignment, Delivery, Handler};
use orderflow_platform::fencing::PartitionFences;
use orderflow_platform::store::{OwnedOrders, Stores};
use orderflow_processors::saga::SagaHandler;
use orderflow_schemas::events::*;
use orderflow_schemas::*;
use tokio_util::sync::CancellationToken;

fn order(id: &str, skus: &[&str]) -> Order {
    let lines: Vec<OrderLine> = skus
        .iter()
        .map(|s| OrderLine {
            sku: Sku::parse(*s).unwrap(),
            quantity: Quantity::new(1).unwrap(),
            unit_price: Money::from_cents(100).unwrap(),
        })
        .collect();
    Order {
        id: OrderId::parse(id).unwrap(),
        user_id: UserId::parse("u1").unwrap(),
        total: Money::from_cents(100 * lines.len() as i64).unwrap(),
        lines,
        status: OrderStatus::Pending,
        reason: None,
        channel: "http".into(),
        placed_at_ms: now_ms(),
        updated_at_ms: now_ms(),
        processed_at_ms: None,
        reserved_skus: vec![],
        payment_method: None,
        currency: None,
        capture_on: Default::default(),
        timeline: vec![],
    }
}

fn reply(order: &str, sku: &str) -> Envelope {
    let id = OrderId::parse(order).unwrap();
    let body = StockReserved { units_reserved: 1, sku: Some(Sku::parse(sku).unwrap()) };
    Envelope::new(EventId::derived(&id, &format!("reserve_reply:{sku}")), id, body)
}

fn cancel(order: &str) -> Envelope {
    let id = OrderId::parse(order).unwrap();
    let body = CancelRequested { cancel_reason: "changed mind".into(), requested_by: "staff".into() };
    Envelope::new(EventId::derived(&id, "cancel"), id, body)
}

/// A fresh embedded store holding the orders and the requests among `envs` (recorded as staff's are
/// before they are published), and a saga over it.
async fn saga(orders: &[Order], envs: &[Envelope]) -> (tempfile::TempDir, Stores, SagaHandler) {
    let dir = tempfile::tempdir().unwrap();
    let backends = embedded::open(dir.path(), &BackendOptions::default()).unwrap();
    for o in orders {
        backends.stores.orders.insert_new(o).await.unwrap();
    }
    orderflow_processors::saga::record_requests(&*backends.stores.orders, envs).await.unwrap();
    let handler = SagaHandler {
        orders: Arc::clone(&backends.stores.orders),
        bus: Arc::clone(&backends.bus),
        fences: PartitionFences::new(Arc::clone(&backends.stores.epochs), "saga-batches"),
        owned: Arc::new(OwnedOrders::off()),
        payments: Arc::clone(&backends.stores.payments),
    };
    (dir, backends.stores, handler)
}

fn deliveries(envs: &[Envelope]) -> Vec<Delivery> {
    let assignment = Assignment::new(CancellationToken::new());
    (envs.iter().enumerate())
        .map(|(offset, env)| Delivery {
            topic: topics::ORDERS.name.to_owned(),
            partition: 0,
            offset: offset as u64,
            key: env.order_id.to_string(),
            payload: codec::encode(env).unwrap(),
            headers: vec![],
            assignment: assignment.clone(),
        })
        .collect()
}

/// Each order's status, held SKUs and timeline steps.
async fn states(stores: &Stores, ids: &[&str]) -> Vec<(OrderStatus, Vec<Sku>, Vec<String>)> {
    let mut out = Vec::new();
    for id in ids {
        let o = stores.orders.order(&OrderId::parse(*id).unwrap()).await.unwrap().unwrap();
        out.push((o.status, o.reserved_skus, o.timeline.into_iter().map(|e| e.kind).collect()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ends_where_one_record_at_a_time_ends() {
    let orders = [order("b-1", &["A"]), order("b-2", &["A", "B"]), order("b-3", &["B"])];
    let ids = ["b-1", "b-2", "b-3"];
    let envs = vec![
        OrderPlaced::envelope_of(&orders[0]),
        OrderPlaced::envelope_of(&orders[1]),
        // Again for b-1 (changes nothing), then its reply: both decided on the state the first step left.
        OrderPlaced::envelope_of(&orders[0]),
        reply("b-1", "A"),
        OrderPlaced::envelope_of(&orders[2]),
        reply("b-2", "B"),
        cancel("b-2"),
        reply("b-2", "A"),
    ];
    let batch = deliveries(&envs);

    let (_one_dir, one_stores, one_at_a_time) = saga(&orders, &envs).await;
    for d in &batch {
        one_at_a_time.handle(d).await.unwrap();
    }
    let want = states(&one_stores, &ids).await;
    assert_eq!(want[0].0, OrderStatus::Processing);
    assert_eq!(want[0].2, ["processing", "stock_reserved"], "b-1 held its one SKU: capture requested");
    assert_eq!(want[1].0, OrderStatus::Cancelled);
    assert_eq!(want[1].2, ["processing", "cancelled", "stock_released"]);
    assert_eq!(want[2].0, OrderStatus::Processing);

    let (_dir, stores, batched) = saga(&orders, &envs).await;
    batched.handle_batch(&batch).await.unwrap();
    assert_eq!(states(&stores, &ids).await, want);
    // Redelivered, as after a crash before the offsets were committed: nothing changes.
    batched.handle_batch(&batch).await.unwrap();
    assert_eq!(states(&stores, &ids).await, want);
}
