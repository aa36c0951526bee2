//! The schema executed against the real embedded adapters in a fresh data directory per test.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use async_graphql::{Request, Variables};
use async_trait::async_trait;
use orderflow_graphql::{ApiState, OrderflowSchema, schema};
use orderflow_platform::store::{Applied, Fence, Transition};
use orderflow_platform::{Backends, Delivery, Handler, HandlerError, Stores};
use orderflow_schemas::{Event, OrderStatus, TimelineEntry, codec, now_ms, topics};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

mod support;

struct Api {
    _dir: TempDir,
    backends: Backends,
    schema: OrderflowSchema,
    state: ApiState,
    _processors: tokio_util::sync::DropGuard,
}

fn api() -> Result<Api> {
    let e = support::embedded(true)?;
    Ok(Api {
        _dir: e.dir,
        schema: schema(e.state.clone()),
        state: e.state,
        backends: e.backends,
        _processors: e.processors,
    })
}

impl Api {
    async fn run(&self, query: &str, variables: Value, staff: bool) -> Result<Value> {
        let request = Request::new(query).variables(Variables::from_json(variables)).data(support::caller(staff));
        Ok(serde_json::to_value(self.schema.execute(request).await)?)
    }

    /// Runs as staff and fails the test on any error.
    async fn ok(&self, query: &str, variables: Value) -> Result<Value> {
        let resp = self.run(query, variables, true).await?;
        if resp.get("errors").is_some() {
            return Err(anyhow!("unexpected errors: {resp}"));
        }
        Ok(resp["data"].clone())
    }

    async fn create_product(&self, sku: &str, price: &str, stock: i32) -> Result<()> {
        self.ok(
            "mutation($i: CreateProductInput!) { createProduct(input: $i) { sku } }",
            json!({"i": {"sku": sku, "name": format!("Product {sku}"), "price": price, "stock": stock}}),
        )
        .await?;
        self.settle().await
    }

    /// Waits (up to 5 s) until the catalog reads, cache included, show every product at its written
    /// version: the read side follows the write side a few milliseconds behind.
    async fn settle(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        'wait: loop {
            let written = self.stores().catalog.products(None, 1000).await?;
            for (_, p) in &written.items {
                let read = self.state.catalog.product(&p.sku).await?;
                if read.is_none_or(|r| r.version < p.version) {
                    if tokio::time::Instant::now() > deadline {
                        return Err(anyhow!("the catalog read model did not catch up with {}", p.sku));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue 'wait;
                }
            }
            return Ok(());
        }
    }

    async fn place(&self, user: &str, sku: &str, quantity: i32) -> Result<Value> {
        let data = self
            .ok(
                "mutation($i: PlaceOrderInput!) { placeOrder(input: $i) { replayed order { id status userId } } }",
                json!({"i": {"userId": user, "items": [{"sku": sku, "quantity": quantity}]}}),
            )
            .await?;
        Ok(data["placeOrder"]["order"].clone())
    }

    fn stores(&self) -> &Stores {
        &self.backends.stores
    }
}

fn code(resp: &Value) -> &str {
    resp["errors"][0]["extensions"]["code"].as_str().unwrap_or("<no code>")
}

fn message(resp: &Value) -> &str {
    resp["errors"][0]["message"].as_str().unwrap_or("")
}

const PRODUCT: &str =
    "query($s: String!) { product(sku: $s) { sku name description price stock { available reserved } } }";

#[tokio::test]
async fn staff_create_read_and_update_a_product() -> Result<()> {
    let api = api()?;
    let data = api
        .ok(
            "mutation { createProduct(input: {sku: \"SKU-1\", name: \"Mug\", description: \"Blue\", price: \"12.5\", stock: 7}) \
             { sku name description price stock { available reserved } } }",
            json!({}),
        )
        .await?;
    assert_eq!(
        data["createProduct"],
        json!({"sku": "SKU-1", "name": "Mug", "description": "Blue", "price": "12.50", "stock": {"available": 7, "reserved": 0}})
    );

    api.settle().await?;
    let read = api.ok(PRODUCT, json!({"s": "SKU-1"})).await?;
    assert_eq!(read["product"], data["createProduct"]);

    let updated = api
        .ok(
            "mutation { updateProduct(sku: \"SKU-1\", input: {name: \"Big mug\", price: \"13.00\"}) { name description price } }",
            json!({}),
        )
        .await?;
    assert_eq!(updated["updateProduct"], json!({"name": "Big mug", "description": "Blue", "price": "13.00"}));
    api.settle().await?;
    let read = api.ok(PRODUCT, json!({"s": "SKU-1"})).await?;
    assert_eq!(read["product"]["price"], "13.00");
    assert_eq!(read["product"]["name"], "Big mug");

    let dup = api
        .run(
            "mutation { createProduct(input: {sku: \"SKU-1\", name: \"Other\", price: \"1\"}) { sku } }",
            json!({}),
            true,
        )
        .await?;
    assert_eq!(code(&dup), "sku_exists", "{dup}");
    let read = api.ok(PRODUCT, json!({"s": "SKU-1"})).await?;
    assert_eq!(read["product"]["name"], "Big mug", "a refused create must not overwrite");

    let unknown =
        api.run("mutation { updateProduct(sku: \"NOPE\", input: {name: \"x\"}) { sku } }", json!({}), true).await?;
    assert_eq!(code(&unknown), "unknown_sku", "{unknown}");

    // A product without a stock row shows 0/0.
    api.create_product("SKU-2", "1.00", 0).await?;
    let read = api.ok(PRODUCT, json!({"s": "SKU-2"})).await?;
    assert_eq!(read["product"]["stock"], json!({"available": 0, "reserved": 0}));
    assert_eq!(api.ok(PRODUCT, json!({"s": "SKU-404"})).await?["product"], Value::Null);
    Ok(())
}

#[tokio::test]
async fn invalid_product_input_names_the_field() -> Result<()> {
    let api = api()?;
    let bad_price = api
        .run("mutation { createProduct(input: {sku: \"S\", name: \"n\", price: \"1.234\"}) { sku } }", json!({}), true)
        .await?;
    assert_eq!(code(&bad_price), "invalid_input", "{bad_price}");
    assert!(message(&bad_price).contains("two decimals"), "{bad_price}");

    let float_price = api
        .run(
            "mutation($i: CreateProductInput!) { createProduct(input: $i) { sku } }",
            json!({"i": {"sku": "S", "name": "n", "price": 12.5}}),
            true,
        )
        .await?;
    assert_eq!(code(&float_price), "invalid_input", "{float_price}");
    assert!(message(&float_price).contains("string"), "{float_price}");

    let empty_name = api
        .run("mutation { createProduct(input: {sku: \"S\", name: \" \", price: \"1\"}) { sku } }", json!({}), true)
        .await?;
    assert_eq!(code(&empty_name), "invalid_input");
    assert_eq!(empty_name["errors"][0]["extensions"]["field"], "input.name");

    let bad_sku = api
        .run("mutation { createProduct(input: {sku: \"a b\", name: \"n\", price: \"1\"}) { sku } }", json!({}), true)
        .await?;
    assert_eq!(bad_sku["errors"][0]["extensions"]["field"], "input.sku", "{bad_sku}");
    assert_eq!(api.ok(PRODUCT, json!({"s": "S"})).await?["product"], Value::Null);
    Ok(())
}

#[tokio::test]
async fn staff_mutations_without_the_token_change_nothing() -> Result<()> {
    let api = api()?;
    api.create_product("SKU-1", "5.00", 3).await?;
    let before = api.ok(PRODUCT, json!({"s": "SKU-1"})).await?;

    let attempts = [
        "mutation { createProduct(input: {sku: \"SKU-9\", name: \"x\", price: \"1\"}) { sku } }",
        "mutation { updateProduct(sku: \"SKU-1\", input: {price: \"0.01\"}) { sku } }",
        "mutation { adjustStock(sku: \"SKU-1\", delta: 100) { available } }",
        "mutation { updateOrderStatus(id: \"o-1\", status: CANCELLED) { id } }",
    ];
    for query in attempts {
        let resp = api.run(query, json!({}), false).await?;
        assert_eq!(code(&resp), "unauthorized", "{query}: {resp}");
        assert!(message(&resp).contains("Bearer"), "{resp}");
    }
    assert_eq!(api.ok(PRODUCT, json!({"s": "SKU-1"})).await?, before);
    assert_eq!(api.ok(PRODUCT, json!({"s": "SKU-9"})).await?["product"], Value::Null);

    // A customer's identity is not staff's: refused as forbidden, and nothing changes either.
    let customer = orderflow_graphql::Caller::Customer(orderflow_schemas::UserId::parse("alice")?);
    for query in attempts {
        let request = async_graphql::Request::new(query).data(customer.clone());
        let resp = serde_json::to_value(api.schema.execute(request).await)?;
        assert_eq!(code(&resp), "forbidden", "{query}: {resp}");
    }
    assert_eq!(api.ok(PRODUCT, json!({"s": "SKU-1"})).await?, before);
    // Cancelling is the owner's or staff's: anonymous callers need to sign in, and a customer's request
    // for an order that is not theirs (here: none) finds nothing.
    let cancel = "mutation { cancelOrder(id: \"o-1\") { id } }";
    assert_eq!(code(&api.run(cancel, json!({}), false).await?), "unauthorized");
    let resp = serde_json::to_value(api.schema.execute(async_graphql::Request::new(cancel).data(customer)).await)?;
    assert_eq!(code(&resp), "order_not_found", "{resp}");
    Ok(())
}

#[tokio::test]
async fn adjust_stock_refuses_to_go_below_zero() -> Result<()> {
    let api = api()?;
    api.create_product("SKU-1", "5.00", 3).await?;
    let resp = api
        .run("mutation { adjustStock(sku: \"SKU-1\", delta: -5, reason: \"breakage\") { available } }", json!({}), true)
        .await?;
    assert_eq!(code(&resp), "stock_would_go_negative", "{resp}");
    assert_eq!(api.ok(PRODUCT, json!({"s": "SKU-1"})).await?["product"]["stock"]["available"], 3);

    let ok = api.ok("mutation { adjustStock(sku: \"SKU-1\", delta: -2) { available reserved } }", json!({})).await?;
    assert_eq!(ok["adjustStock"], json!({"available": 1, "reserved": 0}));
    let ok = api.ok("mutation { adjustStock(sku: \"SKU-1\", delta: 10) { available } }", json!({})).await?;
    assert_eq!(ok["adjustStock"]["available"], 11);

    let unknown = api.run("mutation { adjustStock(sku: \"NOPE\", delta: 1) { available } }", json!({}), true).await?;
    assert_eq!(code(&unknown), "unknown_sku", "{unknown}");
    Ok(())
}

#[tokio::test]
async fn a_keyed_adjustment_answers_its_first_answer_again() -> Result<()> {
    let api = api()?;
    api.create_product("SKU-1", "5.00", 3).await?;
    let take =
        "mutation($d: Int!, $k: String) { adjustStock(sku: \"SKU-1\", delta: $d, idempotencyKey: $k) { available } }";
    let refused = api.run(take, json!({"d": -5, "k": "k-1"}), true).await?;
    assert_eq!(code(&refused), "stock_would_go_negative", "{refused}");
    api.ok(take, json!({"d": 10, "k": "k-2"})).await?;
    let again = api.run(take, json!({"d": -5, "k": "k-1"}), true).await?;
    assert_eq!(
        code(&again),
        "stock_would_go_negative",
        "a refused key stays refused, though 13 are available: {again}"
    );
    let reused = api.run(take, json!({"d": -4, "k": "k-1"}), true).await?;
    assert_eq!(code(&reused), "idempotency_conflict", "{reused}");
    assert_eq!(api.ok(take, json!({"d": 10, "k": "k-2"})).await?["adjustStock"]["available"], 13, "applied once");
    Ok(())
}

#[tokio::test]
async fn a_stock_change_nobody_applies_is_pending_with_its_key() -> Result<()> {
    // The API alone, without the inventory processor (as when it is down or far behind).
    let support::Embedded { backends, state, dir: _dir, processors: _processors } = support::embedded(false)?;
    let p = orderflow_schemas::Product::new(
        orderflow_schemas::Sku::parse("SKU-1")?,
        "x".into(),
        String::new(),
        orderflow_schemas::Money::from_cents(100)?,
        0,
    );
    assert!(backends.stores.catalog.create_product(&p).await?);
    let request =
        Request::new("mutation { adjustStock(sku: \"SKU-1\", delta: 2, idempotencyKey: \"k-9\") { available } }")
            .data(support::caller(true));
    let resp = serde_json::to_value(schema(state).execute(request).await)?;
    assert_eq!(code(&resp), "stock_change_pending", "{resp}");
    assert_eq!(resp["errors"][0]["extensions"]["idempotencyKey"], "k-9", "{resp}");
    assert_eq!(backends.stores.inventory.stock(&p.sku).await?, None, "nothing applied it");
    Ok(())
}

#[tokio::test]
async fn staff_threshold_and_adjustments_raise_one_alert_per_crossing() -> Result<()> {
    let api = api()?;
    api.create_product("SKU-1", "5.00", 20).await?;
    let bad = api
        .run("mutation { setLowStockThreshold(sku: \"SKU-1\", threshold: -1) { threshold } }", json!({}), true)
        .await?;
    assert_eq!(code(&bad), "invalid_input", "{bad}");
    let guest = api
        .run("mutation { setLowStockThreshold(sku: \"SKU-1\", threshold: 8) { threshold } }", json!({}), false)
        .await?;
    assert_eq!(code(&guest), "unauthorized", "{guest}");
    let unknown = api
        .run("mutation { setLowStockThreshold(sku: \"NOPE\", threshold: 8) { threshold } }", json!({}), true)
        .await?;
    assert_eq!(code(&unknown), "unknown_sku", "{unknown}");

    let set = api
        .ok("mutation { setLowStockThreshold(sku: \"SKU-1\", threshold: 8) { threshold low crossings } }", json!({}))
        .await?;
    assert_eq!(set["setLowStockThreshold"], json!({"threshold": 8, "low": false, "crossings": 0}));
    for delta in [-12, -3, 2, 5] {
        // 20 -> 8 (low), 5 (still low), 7 (still low), 12 (restocked)
        api.ok("mutation($d: Int!) { adjustStock(sku: \"SKU-1\", delta: $d) { available } }", json!({"d": delta}))
            .await?;
    }
    // The inventory processor settles alerts right after it applies a change, moments after its answer.
    let mut alerts = Value::Null;
    for _ in 0..250 {
        alerts = api.ok("{ stockAlerts { sku seq kind available threshold } }", json!({})).await?;
        if alerts["stockAlerts"].as_array().is_some_and(|a| a.len() >= 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        alerts["stockAlerts"],
        json!([
            {"sku": "SKU-1", "seq": 2, "kind": "INVENTORY_RESTOCKED", "available": 12, "threshold": 8},
            {"sku": "SKU-1", "seq": 1, "kind": "INVENTORY_LOW", "available": 8, "threshold": 8}
        ])
    );
    let guest = api.run("{ stockAlerts { seq } }", json!({}), false).await?;
    assert_eq!(code(&guest), "unauthorized", "{guest}");

    // And on the bus, as Avro records keyed by SKU.
    let found = Arc::new(std::sync::Mutex::new(Vec::new()));
    struct Collect(Arc<std::sync::Mutex<Vec<orderflow_schemas::StockAlert>>>);
    #[async_trait]
    impl Handler for Collect {
        async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
            let alert =
                orderflow_schemas::stock_alert::decode(&d.payload).map_err(|e| HandlerError::Poison(e.to_string()))?;
            self.0.lock().map_err(|_| HandlerError::Poison("lock".into()))?.push(alert);
            Ok(())
        }
    }
    let token = CancellationToken::new();
    let consumer = {
        let (bus, h, t) = (api.backends.bus.clone(), Arc::new(Collect(found.clone())), token.clone());
        tokio::spawn(async move { bus.consume("test-alerts", topics::STOCK_ALERTS, h, t).await })
    };
    for _ in 0..200 {
        if found.lock().map_err(|_| anyhow!("lock"))?.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel();
    consumer.await??;
    let kinds: Vec<_> = found.lock().map_err(|_| anyhow!("lock"))?.iter().map(|a| (a.seq, a.kind.as_str())).collect();
    assert_eq!(kinds, vec![(1, "InventoryLow"), (2, "InventoryRestocked")]);
    Ok(())
}

const PRODUCTS: &str = "query($first: Int, $after: String) { products(first: $first, after: $after) { \
    edges { cursor node { sku } } pageInfo { hasNextPage endCursor } } }";

#[tokio::test]
async fn products_paginate_with_opaque_cursors() -> Result<()> {
    let api = api()?;
    for i in 1..=5 {
        api.create_product(&format!("SKU-{i}"), "1.00", 1).await?;
    }
    let mut seen = Vec::new();
    let mut after = Value::Null;
    let mut pages = 0;
    loop {
        let data = api.ok(PRODUCTS, json!({"first": 2, "after": after})).await?;
        let page = &data["products"];
        let edges = page["edges"].as_array().context("edges")?;
        assert!(edges.len() <= 2);
        for edge in edges {
            let cursor = edge["cursor"].as_str().context("cursor")?;
            assert!(!cursor.contains("SKU"), "cursors are opaque: {cursor}");
            seen.push(edge["node"]["sku"].as_str().context("sku")?.to_owned());
        }
        pages += 1;
        if page["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = page["pageInfo"]["endCursor"].clone();
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["SKU-1", "SKU-2", "SKU-3", "SKU-4", "SKU-5"]);

    let default = api.ok("{ products { edges { node { sku } } } }", json!({})).await?;
    assert_eq!(default["products"]["edges"].as_array().map(Vec::len), Some(5));

    for first in [101, 0, -1] {
        let resp = api.run(PRODUCTS, json!({"first": first}), false).await?;
        assert_eq!(code(&resp), "invalid_input", "{first}: {resp}");
        assert!(message(&resp).contains("between 1 and 100"), "{resp}");
    }
    let resp = api.run(PRODUCTS, json!({"after": "definitely-not-a-cursor"}), false).await?;
    assert_eq!(code(&resp), "invalid_cursor", "{resp}");
    Ok(())
}

const PLACE: &str = "mutation($i: PlaceOrderInput!) { placeOrder(input: $i) { replayed order { \
    id status userId totalAmount reason placedAt items { sku quantity unitPrice } timeline { at type detail } } } }";

fn is_rfc3339_millis(s: &str) -> bool {
    // 2025-01-31T09:15:00.123Z
    s.len() == 24 && s.ends_with('Z') && s.as_bytes()[10] == b'T' && s.as_bytes()[19] == b'.'
}

#[tokio::test]
async fn place_order_returns_a_pending_priced_order() -> Result<()> {
    let api = api()?;
    api.create_product("SKU-1", "12.50", 10).await?;
    let input =
        json!({"orderId": "ord-1", "userId": "u1", "items": [{"sku": "SKU-1", "quantity": 2}], "totalAmount": "25.00"});
    let data = api.ok(PLACE, json!({"i": input})).await?;
    let placed = &data["placeOrder"];
    assert_eq!(placed["replayed"], false);
    let order = &placed["order"];
    assert_eq!(order["id"], "ord-1");
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["userId"], "u1");
    assert_eq!(order["totalAmount"], "25.00");
    assert_eq!(order["reason"], Value::Null);
    assert_eq!(order["items"], json!([{"sku": "SKU-1", "quantity": 2, "unitPrice": "12.50"}]));
    assert!(is_rfc3339_millis(order["placedAt"].as_str().unwrap_or_default()), "{order}");
    assert_eq!(order["timeline"][0]["type"], "placed");
    assert!(is_rfc3339_millis(order["timeline"][0]["at"].as_str().unwrap_or_default()), "{order}");

    // The same order id again is a replay, not a second order.
    let again = api.ok(PLACE, json!({"i": input})).await?;
    assert_eq!(again["placeOrder"]["replayed"], true);
    assert_eq!(again["placeOrder"]["order"]["id"], "ord-1");

    // The order query sees it; an unknown id is null; a malformed id is an input error.
    let read = api
        .ok("query($id: ID!) { order(id: $id) { id status totalAmount items { sku } } }", json!({"id": "ord-1"}))
        .await?;
    assert_eq!(
        read["order"],
        json!({"id": "ord-1", "status": "PENDING", "totalAmount": "25.00", "items": [{"sku": "SKU-1"}]})
    );
    assert_eq!(api.ok("{ order(id: \"ord-404\") { id } }", json!({})).await?["order"], Value::Null);
    let bad = api.run("{ order(id: \"has space\") { id } }", json!({}), false).await?;
    assert_eq!(code(&bad), "invalid_input", "{bad}");
    Ok(())
}

#[tokio::test]
async fn place_order_errors_carry_intake_codes() -> Result<()> {
    let api = api()?;
    api.create_product("SKU-1", "12.50", 10).await?;
    let cases = [
        (json!({"userId": "u1", "items": [{"sku": "NOPE", "quantity": 1}]}), "unknown_sku"),
        (json!({"userId": "u1", "items": [{"sku": "SKU-1", "quantity": 2}], "totalAmount": "24.99"}), "total_mismatch"),
        (json!({"userId": "u1", "items": []}), "no_items"),
        (
            json!({"userId": "u1", "items": [{"sku": "SKU-1", "quantity": 1}, {"sku": "SKU-1", "quantity": 1}]}),
            "duplicate_sku",
        ),
        (json!({"userId": "u1", "items": [{"sku": "SKU-1", "quantity": 0}]}), "invalid_input"),
        (json!({"userId": "", "items": [{"sku": "SKU-1", "quantity": 1}]}), "invalid_input"),
    ];
    for (input, expected) in cases {
        let resp = api.run(PLACE, json!({"i": input}), false).await?;
        assert_eq!(code(&resp), expected, "{input}: {resp}");
    }
    let qty = api.run(PLACE, json!({"i": {"userId": "u1", "items": [{"sku": "SKU-1", "quantity": 0}]}}), false).await?;
    assert_eq!(qty["errors"][0]["extensions"]["field"], "input.items[0].quantity", "{qty}");
    let mismatch = api
        .run(
            PLACE,
            json!({"i": {"userId": "u1", "items": [{"sku": "SKU-1", "quantity": 2}], "totalAmount": "24.99"}}),
            false,
        )
        .await?;
    assert!(message(&mismatch).contains("25.00"), "{mismatch}");

    let none = api.ok("{ orders { edges { node { id } } } }", json!({})).await?;
    assert_eq!(none["orders"]["edges"], json!([]), "refused placements store nothing");
    Ok(())
}

const ORDERS: &str = "query($user: ID, $status: OrderStatus, $first: Int, $after: String) { \
    orders(userId: $user, status: $status, first: $first, after: $after) { \
    edges { cursor node { id userId status } } pageInfo { hasNextPage endCursor } } }";

#[tokio::test]
async fn orders_filter_by_user_and_status_and_paginate() -> Result<()> {
    let api = api()?;
    api.create_product("SKU-1", "1.00", 100).await?;
    let a = api.place("u1", "SKU-1", 1).await?;
    let _ = api.place("u2", "SKU-1", 1).await?;
    let b = api.place("u1", "SKU-1", 2).await?;

    let data = api.ok(ORDERS, json!({"user": "u1"})).await?;
    let edges = data["orders"]["edges"].as_array().context("edges")?;
    let ids: Vec<&Value> = edges.iter().map(|e| &e["node"]["id"]).collect();
    assert_eq!(edges.len(), 2, "{data}");
    assert!(edges.iter().all(|e| e["node"]["userId"] == "u1"));
    assert!(ids.contains(&&a["id"]) && ids.contains(&&b["id"]));

    let first_page = api.ok(ORDERS, json!({"user": "u1", "first": 1})).await?;
    assert_eq!(first_page["orders"]["pageInfo"]["hasNextPage"], true);
    let after = first_page["orders"]["pageInfo"]["endCursor"].clone();
    let second_page = api.ok(ORDERS, json!({"user": "u1", "first": 1, "after": after})).await?;
    assert_eq!(second_page["orders"]["edges"].as_array().map(Vec::len), Some(1));
    assert_ne!(second_page["orders"]["edges"][0]["node"]["id"], first_page["orders"]["edges"][0]["node"]["id"]);

    let pending = api.ok(ORDERS, json!({"status": "PENDING"})).await?;
    assert_eq!(pending["orders"]["edges"].as_array().map(Vec::len), Some(3));
    let confirmed = api.ok(ORDERS, json!({"status": "CONFIRMED"})).await?;
    assert_eq!(confirmed["orders"]["edges"], json!([]));
    let nobody = api.ok(ORDERS, json!({"user": "u3"})).await?;
    assert_eq!(nobody["orders"]["edges"], json!([]));

    // A products cursor is not an orders cursor.
    let products = api.ok(PRODUCTS, json!({"first": 1})).await?;
    let foreign = products["products"]["edges"][0]["cursor"].clone();
    let resp = api.run(ORDERS, json!({"after": foreign}), false).await?;
    assert_eq!(code(&resp), "invalid_cursor", "{resp}");
    let resp = api.run(ORDERS, json!({"first": 1000}), false).await?;
    assert_eq!(code(&resp), "invalid_input", "{resp}");
    Ok(())
}

#[tokio::test]
async fn metrics_count_every_status() -> Result<()> {
    let api = api()?;
    const METRICS: &str = "{ metrics { ordersProcessed averageProcessingTimeMs ordersByStatus { status count } } }";
    let empty = api.ok(METRICS, json!({})).await?;
    assert_eq!(empty["metrics"]["ordersProcessed"], 0);
    assert_eq!(empty["metrics"]["averageProcessingTimeMs"], 0.0);
    let statuses: Vec<&str> = empty["metrics"]["ordersByStatus"]
        .as_array()
        .context("list")?
        .iter()
        .filter_map(|s| s["status"].as_str())
        .collect();
    assert_eq!(
        statuses,
        ["PENDING", "PROCESSING", "CONFIRMED", "PREPARING", "OUT_FOR_DELIVERY", "DELIVERED", "CANCELLED", "REJECTED"]
    );

    api.create_product("SKU-1", "1.00", 100).await?;
    api.place("u1", "SKU-1", 1).await?;
    api.place("u2", "SKU-1", 1).await?;
    let data = api.ok(METRICS, json!({})).await?;
    let by_status = data["metrics"]["ordersByStatus"].as_array().context("list")?;
    assert_eq!(by_status.len(), 8);
    for entry in by_status {
        let expected = if entry["status"] == "PENDING" { 2 } else { 0 };
        assert_eq!(entry["count"], expected, "{entry}");
    }
    assert_eq!(data["metrics"]["ordersProcessed"], 0);
    Ok(())
}

#[tokio::test]
async fn depth_limit_refuses_deep_queries() -> Result<()> {
    let api = api()?;
    // `{ __schema { types { fields { type { ... name } } } } }` with `fields { type {` repeated.
    let nested = |repeats: usize| {
        let open = "fields { type { ".repeat(repeats);
        format!("{{ __schema {{ types {{ {open}name {} }} }} }}", "} } ".repeat(repeats))
    };
    // Depth counts every level including the leaf: 2 + 2 * 5 + 1 = 13, the limit.
    let resp = api.run(&nested(5), json!({}), false).await?;
    assert!(resp.get("errors").is_none(), "depth 13 is allowed: {resp}");
    let deep = nested(6);
    let resp = api.run(&deep, json!({}), false).await?;
    assert_eq!(resp["data"], Value::Null, "{resp}");
    assert_eq!(code(&resp), "invalid_query", "{resp}");
    assert!(message(&resp).to_lowercase().contains("nested too deep"), "{resp}");

    // Stock clients' introspection is deeper still: over HTTP it runs on the introspection-only schema
    // (tests/http.rs, `stock_introspection_passes_while_data_stays_depth_limited`).
    Ok(())
}

#[tokio::test]
async fn complexity_limit_refuses_aliased_full_pages() -> Result<()> {
    let api = api()?;
    let page = "orders(first: 100) { edges { cursor node { id status userId totalAmount reason placedAt \
                items { sku quantity unitPrice } timeline { at type detail } } } pageInfo { hasNextPage endCursor } }";
    let one = api.run(&format!("{{ a: {page} }}"), json!({}), true).await?;
    assert!(one.get("errors").is_none(), "one full page is allowed: {one}");
    let many: String = (0..10).map(|i| format!("a{i}: {page} ")).collect();
    let resp = api.run(&format!("{{ {many} }}"), json!({}), true).await?;
    assert_eq!(code(&resp), "invalid_query", "{resp}");
    assert!(message(&resp).to_lowercase().contains("complex"), "{resp}");

    let syntax = api.run("{ orders { ", json!({}), false).await?;
    assert_eq!(code(&syntax), "invalid_query", "{syntax}");
    Ok(())
}

/// Stands in for the order saga: applies staff requests from the orders topic.
struct FakeSaga {
    stores: Stores,
}

#[async_trait]
impl Handler for FakeSaga {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let env = codec::decode(&delivery.payload).map_err(|e| HandlerError::Poison(e.to_string()))?;
        let (to, reason, detail) = match &env.body {
            Event::CancelRequested(c) => {
                (OrderStatus::Cancelled, Some(c.cancel_reason.clone()), c.requested_by.clone())
            }
            Event::StatusChangeRequested(s) => (s.status, None, s.changed_by.clone()),
            _ => return Ok(()),
        };
        let Some(before) = self.stores.orders.order(&env.order_id).await? else {
            return Ok(());
        };
        if !before.status.can_move_to(to) {
            return Ok(());
        }
        let mut order = before.clone();
        order.status = to;
        order.reason = reason;
        order.timeline.push(TimelineEntry { at_ms: now_ms(), kind: to.as_str().to_lowercase(), detail });
        let fence = Fence::new(1, delivery.offset);
        let transition =
            Transition { event_id: env.event_id, expected: before.status, order, outputs: Vec::new(), fence };
        match self.stores.orders.apply(transition).await? {
            Applied::Conflict => Err(HandlerError::Transient("conflict".into())),
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn staff_order_changes_go_through_the_saga() -> Result<()> {
    let api = api()?;
    api.create_product("SKU-1", "1.00", 100).await?;
    let order = api.place("u1", "SKU-1", 1).await?;
    let id = order["id"].as_str().context("id")?.to_owned();

    // Checked before anything is published: unknown order, illegal move.
    let missing = api.run("mutation { cancelOrder(id: \"nope\") { id } }", json!({}), true).await?;
    assert_eq!(code(&missing), "order_not_found", "{missing}");
    let illegal = api
        .run("mutation($id: ID!) { updateOrderStatus(id: $id, status: DELIVERED) { id } }", json!({"id": id}), true)
        .await?;
    assert_eq!(code(&illegal), "illegal_transition", "{illegal}");
    assert!(message(&illegal).contains("PENDING") && message(&illegal).contains("DELIVERED"), "{illegal}");

    let shutdown = CancellationToken::new();
    let saga = Arc::new(FakeSaga { stores: api.stores().clone() });
    let bus = api.backends.bus.clone();
    let consumer = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { bus.consume("test-saga", topics::ORDERS, saga, shutdown).await })
    };

    let moved = api
        .ok("mutation($id: ID!) { updateOrderStatus(id: $id, status: PROCESSING) { status } }", json!({"id": id}))
        .await?;
    assert_eq!(moved["updateOrderStatus"]["status"], "PROCESSING");

    let cancelled = api
        .ok(
            "mutation($id: ID!) { cancelOrder(id: $id, reason: \"customer called\") { status reason } }",
            json!({"id": id}),
        )
        .await?;
    assert_eq!(cancelled["cancelOrder"], json!({"status": "CANCELLED", "reason": "customer called"}));

    let again = api.run("mutation($id: ID!) { cancelOrder(id: $id) { id } }", json!({"id": id}), true).await?;
    assert_eq!(code(&again), "illegal_transition", "{again}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), consumer).await???;
    Ok(())
}
