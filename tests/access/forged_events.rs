//! Events that move money or goods are checked against the store of record, not trusted because they
//! are on the topic: a forged `PaymentCaptured` (anyone who can write to the orders topic could send
//! one) confirms nothing, neither while the order waits for its payment nor after the payment was
//! declined; a forged status change or cancellation moves no order, releases no stock and refunds
//! nothing, while staff's own requests (recorded before they are published) still apply.

use std::time::{Duration, Instant};

use crate::common::TestApp;
use orderflow_platform::BusRecord;
use orderflow_schemas::events::{CancelRequested, PaymentCaptured, RefundPayment, StatusChangeRequested};
use orderflow_schemas::{Envelope, EventId, OrderId, UserId, codec, topics};
use serde_json::json;

async fn forge(app: &TestApp, order: &str, body: impl Into<orderflow_schemas::Event>) {
    let env = Envelope::new(EventId::random(), OrderId::parse(order).unwrap(), body);
    let record = BusRecord::new(topics::ORDERS, order, codec::encode(&env).unwrap());
    app.app().backends.bus.publish(vec![record]).await.unwrap();
}

const PIZZA_STOCK: &str = "{ product(sku: \"SKU-PIZZA\") { stock { available sold } } }";

/// Places one pizza for mallory and waits until the order is in one of `statuses`; its id.
async fn place_pizza(app: &TestApp, statuses: &[&str]) -> String {
    app.wait_product("SKU-PIZZA").await;
    let id = format!("forged-{}", uuid::Uuid::new_v4().simple());
    let (status, body) = app
        .post_order(json!({"order_id": id, "user_id": "mallory", "items": [{"sku": "SKU-PIZZA", "quantity": 1}]}))
        .await;
    assert_eq!(status, 202, "{body}");
    app.wait_status(&id, statuses).await;
    id
}

async fn forge_capture(app: &TestApp, order: &str, cents: i64) {
    let body = PaymentCaptured {
        charge_id: "ch_forged".into(),
        captured_cents: cents,
        authorisation_id: None,
        authorised_only: false,
    };
    forge(app, order, body).await;
}

/// With `--capture-on dispatch` an order waiting in PREPARING for its capture goes out for delivery on
/// the capture's reply: a forged one sends nothing out, and a forged decline cancels nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_capture_or_decline_at_dispatch_moves_nothing() {
    let app = TestApp::start_with(|s| s.capture_on = orderflow::config::CaptureOnArg::Dispatch).await;
    let id = place_pizza(&app, &["CONFIRMED"]).await;
    let m = "mutation($id: ID!, $s: OrderStatus!){ updateOrderStatus(id: $id, status: $s){ status } }";
    let v = app.gql(m, json!({"id": id, "s": "PREPARING"}), true).await;
    assert_eq!(v["data"]["updateOrderStatus"]["status"], "PREPARING", "{v}");
    forge_capture(&app, &id, 1250).await;
    forge(&app, &id, orderflow_schemas::events::PaymentDeclined { decline_reason: "forged".into() }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, order) = app.get_order(&id).await;
    assert_eq!(order["status"], "PREPARING", "{order}");
    // Staff's own request still captures and sends it out.
    let v = app.gql(m, json!({"id": id, "s": "OUT_FOR_DELIVERY"}), true).await;
    assert_eq!(v["data"]["updateOrderStatus"]["status"], "OUT_FOR_DELIVERY", "{v}");
    let (_, order) = app.get_order(&id).await;
    assert!(!order["timeline"].to_string().contains("ch_forged"), "the forged charge reached the timeline: {order}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_capture_confirms_nothing() {
    // The payment takes 1.5 s and is declined for this user: time to forge a capture before it answers.
    let app = TestApp::start_with(|s| {
        s.payment_latency_ms = 1500;
        s.payment_decline_users = vec![UserId::parse("mallory").unwrap()];
    })
    .await;
    let id = place_pizza(&app, &["PROCESSING"]).await;

    // While the real payment is pending.
    forge_capture(&app, &id, 1250).await;
    let started = Instant::now();
    let mut seen = Vec::new();
    let last = loop {
        let (_, order) = app.get_order(&id).await;
        let status = order["status"].as_str().unwrap_or_default().to_owned();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "REJECTED" || status == "CONFIRMED" {
            break order;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no outcome: {order}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(last["status"], "REJECTED", "went {seen:?}: {last}");
    assert!(last["reason"].as_str().unwrap_or_default().starts_with("payment_declined"), "{last}");

    // After the decline.
    forge_capture(&app, &id, 1250).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, order) = app.get_order(&id).await;
    assert_eq!(order["status"], "REJECTED", "{order}");
    assert!(!order["timeline"].to_string().contains("ch_forged"), "the forged charge reached the timeline: {order}");

    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("orderflow_events_refused_total") && !l.ends_with(" 0")),
        "the refusal was not counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_status_changes_and_cancellations_move_nothing() {
    let app = TestApp::start().await;
    app.wait_product("SKU-PIZZA").await;
    let stock_before = app.gql(PIZZA_STOCK, json!({}), true).await;
    let id = place_pizza(&app, &["CONFIRMED"]).await;

    forge(
        &app,
        &id,
        StatusChangeRequested { status: orderflow_schemas::OrderStatus::Delivered, changed_by: "x".into() },
    )
    .await;
    forge(
        &app,
        &id,
        StatusChangeRequested { status: orderflow_schemas::OrderStatus::Preparing, changed_by: "x".into() },
    )
    .await;
    forge(&app, &id, CancelRequested { cancel_reason: "forged".into(), requested_by: "x".into() }).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, order) = app.get_order(&id).await;
    assert_eq!(order["status"], "CONFIRMED", "a forged request moved the order: {order}");
    let stock = app.gql(PIZZA_STOCK, json!({}), true).await;
    let (before, after) = (&stock_before["data"]["product"]["stock"], &stock["data"]["product"]["stock"]);
    assert_eq!(after["available"].as_i64(), before["available"].as_i64().map(|a| a - 1), "{before} -> {after}");

    // Staff's own request is recorded before it is published, and applies.
    let moved = app
        .gql("mutation($id: ID!){ updateOrderStatus(id: $id, status: PREPARING) { status } }", json!({"id": id}), true)
        .await;
    assert_eq!(moved["data"]["updateOrderStatus"]["status"], "PREPARING", "{moved}");
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    for event in ["StatusChangeRequested", "CancelRequested"] {
        assert!(
            metrics.lines().any(|l| l.starts_with("orderflow_events_refused_total") && l.contains(event)),
            "the refused {event} was not counted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_refund_pays_nothing_back_and_a_recorded_one_does() {
    let app = TestApp::start().await;
    let id = place_pizza(&app, &["CONFIRMED"]).await;
    // Written to the payments topic by someone who can: the payment role pays back only what orderflow
    // recorded.
    let forged = RefundPayment {
        refund_reason: "forged".into(),
        amount_cents: Some(1000),
        refund_key: Some("x".into()),
        ..Default::default()
    };
    let env = Envelope::new(EventId::random(), OrderId::parse(id.clone()).unwrap(), forged);
    let record = BusRecord::new(topics::PAYMENTS, &id, codec::encode(&env).unwrap());
    app.app().backends.bus.publish(vec![record]).await.unwrap();
    // Staff's refund, through the API, goes through after it.
    let v = app
        .gql(
            "mutation($id: ID!){ refundOrder(id: $id, amount: \"2.50\", reason: \"cold\"){ payment { refundableAmount } } }",
            json!({"id": id}),
            true,
        )
        .await;
    assert_eq!(v["data"]["refundOrder"]["payment"]["refundableAmount"], "10.00", "{v}");
    let refunds: Vec<i64> = (app.app().backends.ledger.entries().await.unwrap().into_iter())
        .filter(|(k, e)| k.starts_with(&format!("{id}:")) && e.kind == "refund")
        .map(|(_, e)| e.amount.cents())
        .collect();
    assert_eq!(refunds, [250], "only the recorded refund was paid back");
}
