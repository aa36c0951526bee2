//! End-to-end order scenarios that make no assumption about the backends: each creates its own
//! products (unique SKUs) through the staff API, so they run the same on the embedded default and on
//! Kafka + CQL, where one store is shared by every test of a run.

use std::time::Duration;

use orderflow_platform::bus::{BusRecord, Delivery, Handler, HandlerError, policy};
use orderflow_schemas::partner::{self, PartnerItem, PartnerOrder};
use orderflow_schemas::{OrderId, topics};
use serde_json::json;

use super::{TestApp, stock};

/// A user id the test apps' simulated provider always declines.
pub const DECLINED_USER: &str = "declined-user";

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]).to_uppercase()
}

/// Creates a product with `stock` units and price 4.00; returns its SKU.
pub async fn product(app: &TestApp, stock: i64) -> String {
    let sku = unique("SKU");
    let v = app
        .gql_stock_change(
            "mutation($i: CreateProductInput!){ createProduct(input: $i){ sku } }",
            json!({"i": {"sku": sku, "name": "test product", "price": "4.00", "stock": stock}}),
        )
        .await;
    assert_eq!(v["data"]["createProduct"]["sku"], sku.as_str(), "{v}");
    // The catalog is CQRS: reads show the product once the projector has stored it. On a fresh Kafka
    // consumer group that can take a few seconds; the freshness itself is measured in tests/catalog.rs.
    visible(app, &sku).await;
    sku
}

/// Waits until `product(sku)` shows the SKU (at most 30 s).
pub async fn visible(app: &TestApp, sku: &str) {
    let started = std::time::Instant::now();
    loop {
        let v = app.gql("query($s: String!){ product(sku: $s){ sku } }", json!({"s": sku}), false).await;
        if v["data"]["product"]["sku"] == sku {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "product {sku} never became readable: {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn eventually<T: PartialEq + std::fmt::Debug>(what: &str, want: T, mut get: impl AsyncFnMut() -> T) {
    let mut last = get().await;
    for _ in 0..500 {
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        last = get().await;
    }
    panic!("{what}: wanted {want:?}, still {last:?}");
}

pub async fn order_is_confirmed_and_stock_held(app: &TestApp) {
    let sku = product(app, 10).await;
    let (status, body) =
        app.post_order(json!({"user_id": "e2e", "items": [{"sku": sku, "quantity": 2}], "total_amount": "8.00"})).await;
    assert_eq!(status, 202, "{body}");
    let order = app.wait_status(body["order_id"].as_str().unwrap(), &["CONFIRMED"]).await;
    assert_eq!(order["total_amount"], "8.00");
    assert_eq!(stock(app, &sku).await, (8, 2));
}

pub async fn placement_is_idempotent(app: &TestApp) {
    let sku = product(app, 10).await;
    let id = unique("order").to_lowercase();
    let req = json!({"order_id": id, "user_id": "e2e", "items": [{"sku": sku, "quantity": 1}]});
    let first = app.post_order(req.clone()).await;
    app.wait_status(&id, &["CONFIRMED"]).await;
    assert_eq!(app.post_order(req).await, first);
    assert_eq!(stock(app, &sku).await, (9, 1));
    let conflict =
        app.post_order(json!({"order_id": id, "user_id": "e2e", "items": [{"sku": sku, "quantity": 3}]})).await;
    assert_eq!((conflict.0, conflict.1["code"].as_str()), (409, Some("idempotency_conflict")));
}

pub async fn out_of_stock_is_rejected_and_holds_nothing(app: &TestApp) {
    let scarce = product(app, 1).await;
    let plenty = product(app, 50).await;
    let (_, body) = app
        .post_order(
            json!({"user_id": "e2e", "items": [{"sku": plenty, "quantity": 5}, {"sku": scarce, "quantity": 2}]}),
        )
        .await;
    let order = app.wait_status(body["order_id"].as_str().unwrap(), &["REJECTED"]).await;
    assert_eq!(order["reason"], format!("out_of_stock: {scarce}"));
    // Each SKU is held on its own partition: the plentiful one may have been held meanwhile, and the
    // rejection gives it back.
    eventually("the other SKU given back", (50, 0), async || stock(app, &plenty).await).await;
    assert_eq!(stock(app, &scarce).await, (1, 0));
}

pub async fn declined_payment_is_rejected_and_stock_released(app: &TestApp) {
    let sku = product(app, 5).await;
    let (_, body) = app.post_order(json!({"user_id": DECLINED_USER, "items": [{"sku": sku, "quantity": 2}]})).await;
    let order = app.wait_status(body["order_id"].as_str().unwrap(), &["REJECTED"]).await;
    assert!(order["reason"].as_str().unwrap().starts_with("payment_declined"), "{order}");
    eventually("stock released", (5, 0), async || stock(app, &sku).await).await;
}

pub async fn cancel_refunds_and_restores_stock(app: &TestApp) {
    let sku = product(app, 5).await;
    let (_, body) = app.post_order(json!({"user_id": "e2e", "items": [{"sku": sku, "quantity": 3}]})).await;
    let id = body["order_id"].as_str().unwrap().to_owned();
    app.wait_status(&id, &["CONFIRMED"]).await;
    let v = app.gql("mutation($id: ID!){ cancelOrder(id: $id){ status } }", json!({"id": id}), true).await;
    assert_eq!(v["data"]["cancelOrder"]["status"], "CANCELLED", "{v}");
    eventually("stock restored", (5, 0), async || stock(app, &sku).await).await;
    eventually("refunded", true, async || {
        app.get_order(&id).await.1["timeline"].as_array().unwrap().iter().any(|t| t["type"] == "refunded")
    })
    .await;
}

pub async fn bad_input_is_refused_with_codes(app: &TestApp) {
    let sku = product(app, 5).await;
    for (body, code) in [
        (json!({"user_id": "e2e", "items": [{"sku": sku, "quantity": 0}]}), "invalid_quantity"),
        (json!({"user_id": "e2e", "items": [{"sku": "SKU-NOT-THERE", "quantity": 1}]}), "unknown_sku"),
        (json!({"user_id": "e2e", "items": [{"sku": sku, "quantity": 1}], "total_amount": "1.00"}), "total_mismatch"),
        // rust_decimal's `*` panicked on this (a 500); now it is refused like any other bad amount.
        (
            json!({"user_id": "e2e", "items": [{"sku": sku, "quantity": 1}], "total_amount": "999999999999999999999999999"}),
            "invalid_total_amount",
        ),
    ] {
        let (status, body) = app.post_order(body).await;
        assert_eq!((status, body["code"].as_str()), (422, Some(code)), "{body}");
    }
    assert_eq!(stock(app, &sku).await, (5, 0));
}

struct DeadLetters {
    key: String,
    found: std::sync::Mutex<Vec<Delivery>>,
}

#[async_trait::async_trait]
impl Handler for DeadLetters {
    async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
        if d.key == self.key {
            self.found.lock().unwrap().push(d.clone());
        }
        Ok(())
    }
}

pub async fn partner_orders_are_placed_once_and_bad_ones_dead_lettered(app: &TestApp) {
    let sku = product(app, 10).await;
    let bus = &app.app().backends.bus;
    let external = unique("EXT");
    let good = PartnerOrder {
        partner_id: "acme".into(),
        external_order_id: external.clone(),
        user_id: "partner-customer".into(),
        items: vec![PartnerItem { sku: sku.clone(), quantity: 2 }],
        total_amount: Some("8.00".into()),
        placed_at_ms: None,
    };
    let bad_key = unique("BAD");
    let unknown_sku = PartnerOrder {
        external_order_id: bad_key.clone(),
        items: vec![PartnerItem { sku: "NOPE-1".into(), quantity: 1 }],
        ..good.clone()
    };
    let overflow = PartnerOrder { total_amount: Some("999999999999999999999999999".into()), ..unknown_sku.clone() };
    let record = |key: &str, payload: Vec<u8>| BusRecord::new(topics::PARTNER_ORDERS, key, payload);
    // A record that claims 2^60 items (and one 2^28: under apache-avro's own cap, ~10 GiB of `Value`s)
    // in a few bytes: refused before anything is allocated for them.
    let claiming = |count: u64| {
        let fingerprint = &partner::encode(&good).unwrap()[..10];
        let mut bytes = [fingerprint, &[2, b'a', 2, b'b', 2, b'c']].concat();
        let mut z = count << 1;
        while z >= 0x80 {
            bytes.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
        bytes.push(z as u8);
        bytes
    };
    // All on one partition (one key), the bad ones first: the good ones behind them must still be handled.
    bus.publish(vec![
        record(&bad_key, b"not avro at all".to_vec()),
        record(&bad_key, claiming(1 << 60)),
        record(&bad_key, claiming(1 << 28)),
        record(&bad_key, partner::encode(&unknown_sku).unwrap()),
        record(&bad_key, partner::encode(&overflow).unwrap()),
        record(&bad_key, partner::encode(&good).unwrap()),
        record(&bad_key, partner::encode(&good).unwrap()),
    ])
    .await
    .unwrap();
    let id = OrderId::from_partner("acme", &external);
    let order = app.wait_status(id.as_str(), &["CONFIRMED"]).await;
    assert_eq!(order["user_id"], "partner-customer");
    assert_eq!(stock(app, &sku).await, (8, 2), "the repeated record was one order");

    let dead = std::sync::Arc::new(DeadLetters { key: bad_key, found: Default::default() });
    let token = tokio_util::sync::CancellationToken::new();
    let (b, t, h) = (bus.clone(), token.clone(), dead.clone());
    let group = unique("dlq-reader");
    let reader = tokio::spawn(async move { b.consume(&group, topics::DEAD_LETTER, h, t).await });
    eventually("five dead letters", 5, async || dead.found.lock().unwrap().len()).await;
    token.cancel();
    reader.await.unwrap().unwrap();
    let reasons: Vec<String> = dead
        .found
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.headers.iter().find(|(k, _)| k == policy::ERROR_HEADER).map(|(_, v)| v.clone()).unwrap_or_default())
        .collect();
    assert!(reasons[0].starts_with("malformed_avro"), "{reasons:?}");
    for (i, count) in [(1, "1152921504606846976"), (2, "268435456")] {
        assert!(reasons[i].starts_with("malformed_avro: refused before decoding"), "{reasons:?}");
        assert!(reasons[i].contains(&format!("an array item count at byte 6 claims {count}")), "{reasons:?}");
    }
    assert!(reasons[3].starts_with("unknown_sku"), "{reasons:?}");
    assert!(reasons[4].starts_with("invalid_total_amount"), "{reasons:?}");
}

/// Collects the stock alerts of one SKU from the bus.
struct AlertsOf {
    sku: String,
    found: std::sync::Mutex<Vec<orderflow_schemas::StockAlert>>,
}

#[async_trait::async_trait]
impl Handler for AlertsOf {
    async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
        if d.key == self.sku {
            let alert = orderflow_schemas::stock_alert::decode(&d.payload)
                .map_err(|e| HandlerError::Poison(format!("undecodable stock alert: {e}")))?;
            self.found.lock().unwrap().push(alert);
        }
        Ok(())
    }
}

/// Low-stock alerts: one `InventoryLow` when available units fall to the threshold, none for the orders
/// that follow while it stays low, one `InventoryRestocked` once cancellations bring it back above.
pub async fn low_stock_alerts_fire_once_per_crossing(app: &TestApp) {
    let sku = product(app, 12).await;
    let v = app
        .gql_stock_change(
            "mutation($s: String!){ setLowStockThreshold(sku: $s, threshold: 10){ threshold low crossings } }",
            json!({"s": sku}),
        )
        .await;
    assert_eq!(v["data"]["setLowStockThreshold"], json!({"threshold": 10, "low": false, "crossings": 0}), "{v}");

    let seen = std::sync::Arc::new(AlertsOf { sku: sku.clone(), found: Default::default() });
    let token = tokio_util::sync::CancellationToken::new();
    let (bus, t, h) = (app.app().backends.bus.clone(), token.clone(), seen.clone());
    let group = unique("alert-reader");
    let reader = tokio::spawn(async move { bus.consume(&group, topics::STOCK_ALERTS, h, t).await });

    let mut ids = Vec::new();
    for quantity in [3, 1, 2] {
        let (status, body) =
            app.post_order(json!({"user_id": "e2e", "items": [{"sku": sku, "quantity": quantity}]})).await;
        assert_eq!(status, 202, "{body}");
        let id = body["order_id"].as_str().unwrap().to_owned();
        app.wait_status(&id, &["CONFIRMED"]).await;
        ids.push(id);
    }
    assert_eq!(stock(app, &sku).await, (6, 6));
    let alerts = "query($s: String!){ product(sku: $s){ lowStock { low crossings } stockAlerts { seq kind available threshold } } }";
    let v = app.gql(alerts, json!({"s": sku}), true).await;
    assert_eq!(v["data"]["product"]["lowStock"], json!({"low": true, "crossings": 1}), "{v}");
    assert_eq!(
        v["data"]["product"]["stockAlerts"],
        json!([{"seq": 1, "kind": "INVENTORY_LOW", "available": 9, "threshold": 10}]),
        "one alert for three orders below the threshold: {v}"
    );

    for id in &ids {
        let v = app.gql("mutation($id: ID!){ cancelOrder(id: $id){ status } }", json!({"id": id}), true).await;
        assert_eq!(v["data"]["cancelOrder"]["status"], "CANCELLED", "{v}");
    }
    eventually("stock restored", (12, 0), async || stock(app, &sku).await).await;
    eventually("restocked once", 2, async || {
        let v = app.gql(alerts, json!({"s": sku}), true).await;
        v["data"]["product"]["stockAlerts"].as_array().map_or(0, |a| a.len())
    })
    .await;
    let v = app.gql(alerts, json!({"s": sku}), true).await;
    assert_eq!(v["data"]["product"]["stockAlerts"][0]["kind"], "INVENTORY_RESTOCKED", "{v}");
    assert!(v["data"]["product"]["stockAlerts"][0]["available"].as_i64().unwrap() > 10, "{v}");
    let feed = app.gql("{ stockAlerts(first: 100){ sku seq } }", json!({}), true).await;
    let in_feed = feed["data"]["stockAlerts"].as_array().unwrap().iter().filter(|a| a["sku"] == sku.as_str()).count();
    assert_eq!(in_feed, 2, "the staff feed lists both: {feed}");

    // On the bus: the same two, each once (a redelivered record would carry the same event id).
    eventually("two alert events", 2, async || {
        let found = seen.found.lock().unwrap();
        found.iter().map(|a| a.event_id()).collect::<std::collections::BTreeSet<_>>().len()
    })
    .await;
    token.cancel();
    reader.await.unwrap().unwrap();
    let found = seen.found.lock().unwrap();
    let kinds: std::collections::BTreeSet<_> = found.iter().map(|a| (a.seq, a.kind.as_str())).collect();
    assert_eq!(kinds, [(1, "InventoryLow"), (2, "InventoryRestocked")].into_iter().collect());
}

/// Every scenario, one after the other.
pub async fn run_all(app: &TestApp) {
    order_is_confirmed_and_stock_held(app).await;
    placement_is_idempotent(app).await;
    out_of_stock_is_rejected_and_holds_nothing(app).await;
    declined_payment_is_rejected_and_stock_released(app).await;
    cancel_refunds_and_restores_stock(app).await;
    low_stock_alerts_fire_once_per_crossing(app).await;
    bad_input_is_refused_with_codes(app).await;
    partner_orders_are_placed_once_and_bad_ones_dead_lettered(app).await;
}
