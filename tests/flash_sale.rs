//! Flash sale: 1,000 concurrent orders over HTTP for a SKU with 100 units. Exactly 100 are confirmed,
//! 900 rejected as out of stock, nothing oversold, nothing left pending.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::scenarios::product;
use common::{TestApp, stock};
use futures::StreamExt;
use serde_json::json;

const ORDERS: usize = 1_000;
const UNITS: i64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_orders_for_a_hundred_units() {
    let app = TestApp::start().await;
    let sku = product(&app, UNITS).await;
    let ids: Vec<String> = futures::stream::iter(0..ORDERS)
        .map(|i| {
            let (app, sku) = (&app, sku.clone());
            async move {
                let (status, body) = app
                    .post_order(json!({"user_id": format!("fan-{i}"), "items": [{"sku": sku, "quantity": 1}]}))
                    .await;
                assert_eq!(status, 202, "{body}");
                body["order_id"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(250)
        .collect()
        .await;

    let mut confirmed = 0;
    let mut rejected = 0;
    for id in &ids {
        let order =
            common::wait_status(&app.http, &app.base, id, &["CONFIRMED", "REJECTED"], Duration::from_secs(60)).await;
        if order["status"] == "CONFIRMED" {
            confirmed += 1;
        } else {
            assert_eq!(order["reason"], format!("out_of_stock: {sku}"));
            rejected += 1;
        }
    }
    assert_eq!((confirmed, rejected), (100, 900));
    assert_eq!(stock(&app, &sku).await, (0, UNITS));
    let movements = app.app().backends.stores.inventory.movements(&sku.parse().unwrap(), 1_000).await.unwrap();
    let held: i64 = movements.iter().filter(|m| m.kind == "reserve").map(|m| -m.available_delta).sum();
    assert_eq!(held, UNITS, "the ledger agrees with the stock row");
}
