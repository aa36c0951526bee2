//! The JSON order API over a real socket: placement, reads, idempotency, and every documented error.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestApp, stock};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placed_order_is_priced_from_the_catalog_and_reaches_confirmed() {
    let app = TestApp::start().await;
    let (status, body) = app
        .post_order(
            json!({"user_id": "alice", "items": [{"sku": "SKU-PIZZA", "quantity": 2}], "total_amount": "25.00"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "PENDING");
    let id = body["order_id"].as_str().unwrap().to_owned();

    let order = app.wait_status(&id, &["CONFIRMED"]).await;
    assert_eq!(order["user_id"], "alice");
    assert_eq!(order["total_amount"], "25.00");
    assert_eq!(order["items"], json!([{"sku": "SKU-PIZZA", "quantity": 2, "unit_price": "12.50"}]));
    let kinds: Vec<_> =
        order["timeline"].as_array().unwrap().iter().map(|t| t["type"].as_str().unwrap().to_owned()).collect();
    assert_eq!(
        &kinds[..6],
        ["placed", "processing", "stock_reserved", "payment_authorised", "payment_captured", "confirmed"]
    );
    assert_eq!(order["currency"], "EUR");
    let seqs: Vec<_> = order["timeline"].as_array().unwrap().iter().map(|t| t["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "1, 2, 3, ... without gaps");
    assert_eq!(stock(&app, "SKU-PIZZA").await, (198, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_order_is_404_with_a_code() {
    let app = TestApp::start().await;
    let (status, body) = app.get_order("no-such-order").await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "order_not_found");
    let r = app.http.get(format!("{}/v2/nothing", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_order_id_twice_is_one_order_and_the_same_answer() {
    let app = TestApp::start().await;
    let req = json!({"order_id": "shop-42", "user_id": "bob", "items": [{"sku": "SKU-MUG", "quantity": 1}]});
    let (s1, b1) = app.post_order(req.clone()).await;
    app.wait_status("shop-42", &["CONFIRMED"]).await;
    let (s2, b2) = app.post_order(req).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(b1, b2, "the second call answers with the first's result");
    // One unit sold once, not twice.
    assert_eq!(stock(&app, "SKU-MUG").await, (4, 1));

    // Same id, different contents: a client bug, refused.
    let (s3, b3) = app
        .post_order(json!({"order_id": "shop-42", "user_id": "bob", "items": [{"sku": "SKU-MUG", "quantity": 2}]}))
        .await;
    assert_eq!(s3, 409);
    assert_eq!(b3["code"], "idempotency_conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_header_makes_retries_safe_under_concurrency() {
    let app = TestApp::start().await;
    let send = || {
        app.http
            .post(format!("{}/v1/orders", app.base))
            .header("Idempotency-Key", "checkout-7f3a")
            .json(&json!({"user_id": "carol", "items": [{"sku": "SKU-SALAD", "quantity": 3}]}))
            .send()
    };
    let responses = futures::future::join_all([send(), send(), send(), send(), send()]).await;
    let mut ids = std::collections::HashSet::new();
    let mut replayed = 0;
    for r in responses {
        let r = r.unwrap();
        assert_eq!(r.status(), 202);
        if r.headers().get("idempotent-replayed").is_some() {
            replayed += 1;
        }
        ids.insert(r.json::<serde_json::Value>().await.unwrap()["order_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "five retries, one order");
    assert_eq!(replayed, 4);
    let id = ids.into_iter().next().unwrap();
    app.wait_status(&id, &["CONFIRMED"]).await;
    assert_eq!(stock(&app, "SKU-SALAD").await, (97, 3));
    let entries = app.app().backends.ledger.entries().await.unwrap();
    let kinds: Vec<&str> = entries.iter().map(|(_, e)| e.kind.as_str()).collect();
    assert_eq!(kinds, ["authorisation", "charge"], "authorised once, charged once: {entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_specific_error_and_creates_nothing() {
    let app = TestApp::start().await;
    let url = format!("{}/v1/orders", app.base);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("malformed JSON", app.http.post(&url).header("content-type", "application/json").body("{\"user_id\": \"a\", "), 400, "malformed_json"),
        ("no content type", app.http.post(&url).body("{}"), 415, "unsupported_media_type"),
        ("missing items", app.http.post(&url).json(&json!({"user_id": "a"})), 422, "invalid_request"),
        ("unknown field", app.http.post(&url).json(&json!({"user_id": "a", "items": [], "coupon": "x"})), 422, "invalid_request"),
        ("float quantity", app.http.post(&url).json(&json!({"user_id": "a", "items": [{"sku": "SKU-PIZZA", "quantity": 1.5}]})), 422, "invalid_request"),
        ("zero quantity", app.http.post(&url).json(&json!({"user_id": "a", "items": [{"sku": "SKU-PIZZA", "quantity": 0}]})), 422, "invalid_quantity"),
        ("negative quantity", app.http.post(&url).json(&json!({"user_id": "a", "items": [{"sku": "SKU-PIZZA", "quantity": -3}]})), 422, "invalid_quantity"),
        ("huge quantity", app.http.post(&url).json(&json!({"user_id": "a", "items": [{"sku": "SKU-PIZZA", "quantity": 1_000_000}]})), 422, "invalid_quantity"),
        ("unknown SKU", app.http.post(&url).json(&json!({"user_id": "a", "items": [{"sku": "SKU-NOPE", "quantity": 1}]})), 422, "unknown_sku"),
        ("bad SKU", app.http.post(&url).json(&json!({"user_id": "a", "items": [{"sku": "no spaces", "quantity": 1}]})), 422, "invalid_sku"),
        ("no items", app.http.post(&url).json(&json!({"user_id": "a", "items": []})), 422, "no_items"),
        ("duplicate SKU", app.http.post(&url).json(&json!({"user_id": "a", "items": [{"sku": "SKU-PIZZA", "quantity": 1}, {"sku": "SKU-PIZZA", "quantity": 1}]})), 422, "duplicate_sku"),
        ("empty user", app.http.post(&url).json(&json!({"user_id": "", "items": [{"sku": "SKU-PIZZA", "quantity": 1}]})), 422, "invalid_user_id"),
        ("mismatched total", app.http.post(&url).json(&json!({"user_id": "a", "items": [{"sku": "SKU-PIZZA", "quantity": 1}], "total_amount": "10.00"})), 422, "total_mismatch"),
        ("float total", app.http.post(&url).json(&json!({"user_id": "a", "items": [{"sku": "SKU-PIZZA", "quantity": 1}], "total_amount": 12.5})), 422, "invalid_total_amount"),
        ("three-decimal total", app.http.post(&url).json(&json!({"user_id": "a", "items": [{"sku": "SKU-PIZZA", "quantity": 1}], "total_amount": "12.5001"})), 422, "invalid_total_amount"),
        ("card number as payment method", app.http.post(&url).json(&json!({"user_id": "a", "items": [{"sku": "SKU-PIZZA", "quantity": 1}], "payment_method": "4242 4242 4242 4242"})), 422, "invalid_payment_method"),
        ("card number as payment method, no spaces", app.http.post(&url).json(&json!({"user_id": "a", "items": [{"sku": "SKU-PIZZA", "quantity": 1}], "payment_method": "4242424242424242"})), 422, "invalid_payment_method"),
        ("bad idempotency key", app.http.post(&url).header("Idempotency-Key", "has spaces").json(&json!({"user_id": "a", "items": [{"sku": "SKU-PIZZA", "quantity": 1}]})), 422, "invalid_idempotency_key"),
        ("oversized body", app.http.post(&url).header("content-type", "application/json").body(format!("{{\"user_id\": \"{}\"}}", "x".repeat(100_000))), 413, "payload_too_large"),
    ];
    for (name, req, want_status, want_code) in cases {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_else(|e| panic!("{name}: body is not JSON: {e}"));
        assert_eq!(status, want_status, "{name}: {body}");
        assert_eq!(body["code"], want_code, "{name}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: no message");
    }
    let stats = app.app().backends.stores.orders.stats().await.unwrap();
    assert_eq!(stats.by_status.iter().map(|(_, n)| n).sum::<u64>(), 0, "no bad request created an order");
    // The server is still fine.
    let (status, _) = app
        .post_order(json!({"user_id": "a", "items": [{"sku": "SKU-PIZZA", "quantity": 1}], "total_amount": "12.5"}))
        .await;
    assert_eq!(status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_units_than_available_ends_rejected_with_a_reason() {
    let app = TestApp::start().await;
    let (_, body) = app.post_order(json!({"user_id": "dan", "items": [{"sku": "SKU-MUG", "quantity": 6}, {"sku": "SKU-COFFEE", "quantity": 1}]})).await;
    let order = app.wait_status(body["order_id"].as_str().unwrap(), &["REJECTED"]).await;
    assert_eq!(order["reason"], "out_of_stock: SKU-MUG");
    assert_eq!(stock(&app, "SKU-MUG").await, (5, 0));
    // All or none: each SKU is held on its own partition, so the coffee may have been held meanwhile;
    // the rejection gives it back.
    for _ in 0..100 {
        if stock(&app, "SKU-COFFEE").await == (1000, 0) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the coffee was not given back: {:?}", stock(&app, "SKU-COFFEE").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_payment_rejects_and_gives_the_stock_back() {
    let app = TestApp::start_with(|s| {
        s.payment_decline_above = Some(orderflow_schemas::Money::parse("x", "100.00").unwrap())
    })
    .await;
    let (_, body) = app.post_order(json!({"user_id": "erin", "items": [{"sku": "SKU-PIZZA", "quantity": 9}]})).await;
    let order = app.wait_status(body["order_id"].as_str().unwrap(), &["REJECTED"]).await;
    assert!(order["reason"].as_str().unwrap().starts_with("payment_declined"), "{order}");
    // Reserved, then released when the payment failed.
    let kinds: Vec<_> =
        order["timeline"].as_array().unwrap().iter().map(|t| t["type"].as_str().unwrap().to_owned()).collect();
    assert!(kinds.contains(&"stock_reserved".to_owned()), "{kinds:?}");
    for _ in 0..100 {
        if stock(&app, "SKU-PIZZA").await == (200, 0) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("stock was not released: {:?}", stock(&app, "SKU-PIZZA").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sku_reaching_the_pipeline_ends_rejected() {
    // Intake refuses unknown SKUs, but a partner record or a product removed in between can still carry
    // one into the pipeline: inventory must reject it, not lose it.
    use orderflow_platform::bus::BusRecord;
    use orderflow_schemas::*;
    let app = TestApp::start().await;
    let stores = &app.app().backends.stores;
    let now = now_ms();
    let order = Order {
        id: OrderId::parse("ghost-1").unwrap(),
        user_id: UserId::parse("frank").unwrap(),
        lines: vec![OrderLine {
            sku: Sku::parse("SKU-GHOST").unwrap(),
            quantity: Quantity::new(1).unwrap(),
            unit_price: Money::from_cents(100).unwrap(),
        }],
        total: Money::from_cents(100).unwrap(),
        status: OrderStatus::Pending,
        reason: None,
        channel: "partner:test".into(),
        placed_at_ms: now,
        updated_at_ms: now,
        processed_at_ms: None,
        reserved_skus: vec![],
        payment_method: None,
        currency: None,
        capture_on: Default::default(),
        timeline: vec![],
    };
    stores.orders.insert_new(&order).await.unwrap();
    let payload = codec::encode(&events::OrderPlaced::envelope_of(&order)).unwrap();
    app.app().backends.bus.publish(vec![BusRecord::new(topics::ORDERS, "ghost-1", payload)]).await.unwrap();
    let order = app.wait_status("ghost-1", &["REJECTED"]).await;
    assert_eq!(order["reason"], "unknown_sku: SKU-GHOST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_prometheus_metrics() {
    let app = TestApp::start().await;
    let r = app.http.get(format!("{}/healthz", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["status"], "ok");
    let (_, body) = app.post_order(json!({"user_id": "gina", "items": [{"sku": "SKU-COFFEE", "quantity": 1}]})).await;
    app.wait_status(body["order_id"].as_str().unwrap(), &["CONFIRMED"]).await;
    let text = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("orderflow_orders_placed_total"), "{text}");
    assert!(text.contains("orderflow_records_processed_total"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_pending_orders_are_picked_up_again() {
    // An order stored by intake whose OrderPlaced never reached the bus (the process died in between).
    use orderflow_schemas::*;
    let app = TestApp::start_with(|s| s.stalled_after_ms = 200).await;
    let now = now_ms();
    let order = Order {
        id: OrderId::parse("lost-event-1").unwrap(),
        user_id: UserId::parse("hal").unwrap(),
        lines: vec![OrderLine {
            sku: Sku::parse("SKU-COFFEE").unwrap(),
            quantity: Quantity::new(2).unwrap(),
            unit_price: Money::from_cents(350).unwrap(),
        }],
        total: Money::from_cents(700).unwrap(),
        status: OrderStatus::Pending,
        reason: None,
        channel: "http".into(),
        placed_at_ms: now,
        updated_at_ms: now,
        processed_at_ms: None,
        reserved_skus: vec![],
        payment_method: None,
        currency: None,
        capture_on: Default::default(),
        timeline: vec![],
    };
    app.app().backends.stores.orders.insert_new(&order).await.unwrap();
    app.wait_status("lost-event-1", &["CONFIRMED"]).await;
}
