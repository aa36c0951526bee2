//! The GraphQL API over a real socket: the shop queries, placement, and staff operations end to end
//! through the pipeline.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestApp, stock};
use serde_json::{Value, json};

async fn place(app: &TestApp, user: &str, sku: &str, quantity: i64) -> String {
    let v = app
        .gql(
            "mutation($i: PlaceOrderInput!){ placeOrder(input: $i){ order { id status totalAmount } replayed } }",
            json!({"i": {"userId": user, "items": [{"sku": sku, "quantity": quantity}]}}),
            false,
        )
        .await;
    assert_eq!(v["data"]["placeOrder"]["order"]["status"], "PENDING", "{v}");
    v["data"]["placeOrder"]["order"]["id"].as_str().unwrap().to_owned()
}

fn code(v: &Value) -> &str {
    v["errors"][0]["extensions"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_is_served_on_get() {
    let app = TestApp::start().await;
    let r = app.http.get(format!("{}/graphql", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().to_lowercase().contains("graphiql"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_places_and_tracks_an_order() {
    let app = TestApp::start().await;
    let id = place(&app, "ivy", "SKU-CROISSANT", 4).await;
    app.wait_status(&id, &["CONFIRMED"]).await;
    let v = app
        .gql(
            "query($id: ID!){ order(id: $id){ id status userId items { sku quantity } totalAmount currency timeline { seq at type detail } } }",
            json!({"id": id}),
            false,
        )
        .await;
    let o = &v["data"]["order"];
    assert_eq!(o["status"], "CONFIRMED", "{v}");
    assert_eq!(o["userId"], "ivy");
    assert_eq!(o["items"], json!([{"sku": "SKU-CROISSANT", "quantity": 4}]));
    assert_eq!(o["totalAmount"], "11.00");
    assert!(o["timeline"].as_array().unwrap().iter().any(|t| t["type"] == "confirmed"));
    assert!(o["timeline"][0]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(o["currency"], "EUR");
    let seqs: Vec<_> = o["timeline"].as_array().unwrap().iter().map(|t| t["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "1, 2, 3, ... without gaps");

    let v = app
        .gql(
            "{ orders(first: 10, userId: \"ivy\"){ edges { node { id } } pageInfo { hasNextPage } } }",
            json!({}),
            true,
        )
        .await;
    assert_eq!(v["data"]["orders"]["edges"][0]["node"]["id"], id.as_str());
    let v = app
        .gql("{ metrics { ordersProcessed averageProcessingTimeMs ordersByStatus { status count } } }", json!({}), true)
        .await;
    assert_eq!(v["data"]["metrics"]["ordersProcessed"], 1, "{v}");
    assert!(v["data"]["metrics"]["averageProcessingTimeMs"].as_f64().unwrap() > 0.0);
    let confirmed = v["data"]["metrics"]["ordersByStatus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["status"] == "CONFIRMED")
        .unwrap()
        .clone();
    assert_eq!(confirmed["count"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_operations_need_the_token() {
    let app = TestApp::start().await;
    let create = "mutation{ createProduct(input: {sku: \"SKU-TEA\", name: \"Green tea\", price: \"2.20\", stock: 10}){ sku price stock { available } } }";
    let v = app.gql(create, json!({}), false).await;
    assert_eq!(code(&v), "unauthorized", "{v}");
    assert_eq!(app.gql("{ product(sku: \"SKU-TEA\"){ sku } }", json!({}), false).await["data"]["product"], Value::Null);

    let v = app.gql(create, json!({}), true).await;
    assert_eq!(
        v["data"]["createProduct"],
        json!({"sku": "SKU-TEA", "price": "2.20", "stock": {"available": 10}}),
        "{v}"
    );
    let v = app
        .gql(
            "mutation{ adjustStock(sku: \"SKU-TEA\", delta: -25, reason: \"breakage\"){ available } }",
            json!({}),
            true,
        )
        .await;
    assert_eq!(code(&v), "stock_would_go_negative", "{v}");
    let v = app
        .gql("mutation{ adjustStock(sku: \"SKU-TEA\", delta: 5, reason: \"delivery\"){ available } }", json!({}), true)
        .await;
    assert_eq!(v["data"]["adjustStock"]["available"], 15);

    // A client that lost the response retries with its idempotency key: the change applies once.
    let keyed = "mutation($d: Int!){ adjustStock(sku: \"SKU-TEA\", delta: $d, reason: \"delivery\", idempotencyKey: \"d-42\"){ available } }";
    for _ in 0..2 {
        let v = app.gql(keyed, json!({"d": 7}), true).await;
        assert_eq!(v["data"]["adjustStock"]["available"], 22, "{v}");
    }
    let v = app.gql(keyed, json!({"d": 8}), true).await;
    assert_eq!(code(&v), "idempotency_conflict", "{v}");
    let long = format!(
        "mutation{{ adjustStock(sku: \"SKU-TEA\", delta: 1, idempotencyKey: \"{}\"){{ available }} }}",
        "k".repeat(129)
    );
    assert_eq!(code(&app.gql(&long, json!({}), true).await), "invalid_input");
    // The same create again (a retry) returns the product and does not add its initial stock twice.
    let v = app.gql(create, json!({}), true).await;
    assert_eq!(v["data"]["createProduct"]["stock"], json!({"available": 22}), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_confirmed_order_refunds_and_restores_stock() {
    let app = TestApp::start().await;
    let id = place(&app, "jack", "SKU-MUG", 2).await;
    app.wait_status(&id, &["CONFIRMED"]).await;
    assert_eq!(stock(&app, "SKU-MUG").await, (3, 2));
    let v = app
        .gql(
            "mutation($id: ID!){ cancelOrder(id: $id, reason: \"customer called\"){ status } }",
            json!({"id": id}),
            true,
        )
        .await;
    assert_eq!(v["data"]["cancelOrder"]["status"], "CANCELLED", "{v}");
    for _ in 0..200 {
        let order = app.get_order(&id).await.1;
        let refunded = order["timeline"].as_array().unwrap().iter().any(|t| t["type"] == "refunded");
        if stock(&app, "SKU-MUG").await == (5, 0) && refunded {
            let entries = app.app().backends.ledger.entries().await.unwrap();
            assert_eq!(entries.iter().filter(|(_, e)| e.kind == "refund").count(), 1);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("stock not restored or no refund: {:?} {}", stock(&app, "SKU-MUG").await, app.get_order(&id).await.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_moves_an_order_through_fulfillment_and_stock_leaves_when_it_ships() {
    let app = TestApp::start().await;
    let id = place(&app, "kim", "SKU-SALAD", 1).await;
    app.wait_status(&id, &["CONFIRMED"]).await;
    let m = "mutation($id: ID!, $s: OrderStatus!){ updateOrderStatus(id: $id, status: $s){ status } }";
    let v = app.gql(m, json!({"id": id, "s": "DELIVERED"}), true).await;
    assert_eq!(code(&v), "illegal_transition", "{v}");
    for s in ["PREPARING", "OUT_FOR_DELIVERY", "DELIVERED"] {
        let v = app.gql(m, json!({"id": id, "s": s}), true).await;
        assert_eq!(v["data"]["updateOrderStatus"]["status"], s, "{v}");
    }
    // Out for delivery: the reserved unit was taken off the shelf for good.
    for _ in 0..100 {
        if stock(&app, "SKU-SALAD").await == (99, 0) {
            let v = app.gql("mutation($id: ID!){ cancelOrder(id: $id){ status } }", json!({"id": id}), true).await;
            assert_eq!(code(&v), "illegal_transition", "a delivered order cannot be cancelled: {v}");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("stock not committed: {:?}", stock(&app, "SKU-SALAD").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queries_are_refused() {
    let app = TestApp::start().await;
    let deep = format!("{{ __schema {{ types {{ {} name {} }} }} }}", "fields { type { ".repeat(8), "} } ".repeat(8));
    let v = app.gql(&deep, json!({}), false).await;
    assert!(v["errors"].as_array().is_some_and(|e| !e.is_empty()), "{v}");
    let v = app.gql("{ products(first: 1000){ edges { node { sku } } } }", json!({}), false).await;
    assert!(v["errors"].as_array().is_some_and(|e| !e.is_empty()), "first is capped at 100: {v}");
    let v = app.gql("{ product(sku: ", json!({}), false).await;
    assert!(v["errors"].as_array().is_some_and(|e| !e.is_empty()), "malformed query: {v}");
    let r = app
        .http
        .post(format!("{}/graphql", app.base))
        .header("content-type", "application/json")
        .body("x".repeat(300_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_reads_the_stock_ledger_of_a_sku() {
    let app = TestApp::start().await;
    let id = place(&app, "lee", "SKU-PIZZA", 3).await;
    app.wait_status(&id, &["CONFIRMED"]).await;
    let v = app
        .gql(
            "mutation{ adjustStock(sku: \"SKU-PIZZA\", delta: 10, reason: \"delivery\"){ available } }",
            json!({}),
            true,
        )
        .await;
    assert_eq!(v["data"]["adjustStock"]["available"], 207, "{v}");
    let q = "{ product(sku: \"SKU-PIZZA\"){ stockMovements(first: 10){ at kind availableDelta reference } } }";
    let v = app.gql(q, json!({}), true).await;
    let moves = v["data"]["product"]["stockMovements"].as_array().unwrap_or_else(|| panic!("{v}")).clone();
    let summary: Vec<_> =
        moves.iter().map(|m| (m["kind"].clone(), m["availableDelta"].clone(), m["reference"].clone())).collect();
    assert_eq!(
        summary,
        [
            (json!("adjust"), json!(10), json!("delivery")),
            (json!("reserve"), json!(-3), json!(id)),
            (json!("adjust"), json!(200), json!("demo catalog")),
        ],
        "newest first"
    );
    assert!(moves[0]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(code(&app.gql(q, json!({}), false).await), "unauthorized", "the ledger is for staff");
}
