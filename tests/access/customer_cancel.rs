//! A signed-in customer cancels their own order before it is out for delivery, over REST and GraphQL;
//! the saga releases its stock and pays the capture back once. Nobody else can (someone else's order
//! looks missing), anonymous callers cannot, and an order out for delivery cannot be cancelled.

use serde_json::json;

use crate::common::{TestApp, authz, scenarios};
use orderflow::AuthModeArg;

async fn place(app: &TestApp, token: &str, sku: &str) -> String {
    let (status, body) = app.post_as("/v1/orders", Some(token), json!({"items": [{"sku": sku, "quantity": 1}]})).await;
    assert_eq!(status, 202, "{body}");
    let id = body["order_id"].as_str().unwrap().to_owned();
    app.wait_status(&id, &["CONFIRMED"]).await;
    id
}

fn refunds(entries: &[(String, orderflow_platform::ledger::ProviderEntry)], id: &str) -> usize {
    entries.iter().filter(|(k, e)| k.starts_with(&format!("{id}:")) && e.kind == "refund").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_cancel_their_own_orders_until_they_are_out_for_delivery() {
    let keys = tempfile::tempdir().unwrap();
    let mut tokens = None;
    let app = TestApp::start_with(|s| tokens = Some(authz::with_jwt(s, keys.path(), AuthModeArg::Open))).await;
    let tokens = tokens.unwrap();
    let (alice, bob) = (tokens.customer("alice"), tokens.customer("bob"));
    let sku = scenarios::product(&app, 10).await;

    // REST: only alice, and with her reason in the timeline.
    let id = place(&app, &alice, &sku).await;
    let path = format!("/v1/orders/{id}/cancel");
    assert_eq!(app.post_as(&path, None, json!({})).await.0, 401, "anonymous");
    assert_eq!(app.post_as(&path, Some(&bob), json!({})).await.0, 404, "someone else's order looks missing");
    let long = "x".repeat(501);
    assert_eq!(app.post_as(&path, Some(&alice), json!({"reason": long})).await.1["code"], "invalid_reason");
    let (status, order) = app.post_as(&path, Some(&alice), json!({"reason": "changed my mind"})).await;
    assert_eq!((status, order["status"].as_str()), (200, Some("CANCELLED")), "{order}");
    let last = order["timeline"].as_array().unwrap().iter().rfind(|t| t["type"] == "cancelled").unwrap().clone();
    assert_eq!(last["detail"], "by customer:alice: changed my mind");
    let (status, again) = app.post_as(&path, Some(&alice), json!({})).await;
    assert_eq!((status, again["code"].as_str()), (409, Some("illegal_transition")), "{again}");

    // GraphQL: the same rule; an empty body is fine over REST too.
    let second = place(&app, &alice, &sku).await;
    let cancel = "mutation($id: ID!){ cancelOrder(id: $id){ status } }";
    let by_bob = app.gql_as(&bob, cancel, json!({"id": second})).await;
    assert_eq!(by_bob["errors"][0]["extensions"]["code"], "order_not_found", "{by_bob}");
    let by_alice = app.gql_as(&alice, cancel, json!({"id": second})).await;
    assert_eq!(by_alice["data"]["cancelOrder"]["status"], "CANCELLED", "{by_alice}");

    // Out for delivery: too late, for the customer as for anyone.
    let third = place(&app, &alice, &sku).await;
    for status in ["PREPARING", "OUT_FOR_DELIVERY"] {
        let v = app
            .gql(
                "mutation($id: ID!, $s: OrderStatus!){ updateOrderStatus(id: $id, status: $s){ status } }",
                json!({"id": third, "s": status}),
                true,
            )
            .await;
        assert_eq!(v["data"]["updateOrderStatus"]["status"], status, "{v}");
    }
    let (status, late) = app.post_as(&format!("/v1/orders/{third}/cancel"), Some(&alice), json!({})).await;
    assert_eq!((status, late["code"].as_str()), (409, Some("illegal_transition")), "{late}");

    // Money and stock: each cancelled order refunded exactly once; only the delivered one holds a unit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let entries = app.app().backends.ledger.entries().await.unwrap();
        let counts = [refunds(&entries, &id), refunds(&entries, &second), refunds(&entries, &third)];
        if counts == [1, 1, 0] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "refunds per order: {counts:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let level = app
        .gql("query($s: String!){ product(sku: $s){ stock { available reserved } } }", json!({"s": sku}), true)
        .await;
    assert_eq!(level["data"]["product"]["stock"]["available"], 9, "{level}");
}
