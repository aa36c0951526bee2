//! Crash safety of the embedded default: orders accepted before a `kill -9` are processed after the
//! restart, each charged once, and stock adds up. Runs the real binary as a child process.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Proc, free_port, gql, wait_status};
use serde_json::json;

const ORDERS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_accepted_before_kill_9_are_processed_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::new();

    // Slow payments keep most orders mid-pipeline when the process dies.
    let mut first = Proc::spawn(&data, free_port(), &[("ORDERFLOW_PAYMENT_LATENCY_MS", "400")]);
    first.wait_ready().await;
    let placed = futures::future::join_all((0..ORDERS).map(|i| {
        http.post(format!("{}/v1/orders", first.base))
            .json(&json!({"order_id": format!("crash-{i}"), "user_id": format!("u{i}"), "items": [{"sku": "SKU-COFFEE", "quantity": 1}]}))
            .send()
    }))
    .await;
    for r in placed {
        assert_eq!(r.unwrap().status(), 202);
    }
    let mut unfinished = 0;
    for i in 0..ORDERS {
        let o: serde_json::Value =
            http.get(format!("{}/v1/orders/crash-{i}", first.base)).send().await.unwrap().json().await.unwrap();
        if o["status"] != "CONFIRMED" {
            unfinished += 1;
        }
    }
    first.kill9();
    assert!(unfinished > 0, "the crash must interrupt work for this test to mean anything");

    // Crash once more while it catches up, then let it finish.
    let mut second = Proc::spawn(&data, free_port(), &[("ORDERFLOW_PAYMENT_LATENCY_MS", "30")]);
    second.wait_ready().await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    second.kill9();

    let mut third = Proc::spawn(&data, free_port(), &[("ORDERFLOW_PAYMENT_LATENCY_MS", "1")]);
    third.wait_ready().await;
    for i in 0..ORDERS {
        wait_status(&http, &third.base, &format!("crash-{i}"), &["CONFIRMED"], Duration::from_secs(30)).await;
    }
    let stock =
        gql(&http, &third.base, "{ product(sku: \"SKU-COFFEE\") { stock { available reserved } } }", json!({}), true)
            .await;
    assert_eq!(
        stock["data"]["product"]["stock"],
        json!({"available": 1000 - ORDERS, "reserved": ORDERS}),
        "no unit lost or held twice"
    );

    // SIGTERM: a graceful stop, exit code 0.
    assert!(
        third.terminate().success(),
        "graceful shutdown failed; log:\n{}",
        std::fs::read_to_string(&third.log).unwrap_or_default()
    );

    // The provider's own books: exactly one charge per order, no refunds.
    let backends = orderflow_embedded::open(&data, &Default::default()).unwrap();
    let entries = backends.ledger.entries().await.unwrap();
    let charges: Vec<_> = entries.iter().filter(|(_, e)| e.kind == "charge").collect();
    assert_eq!(charges.len(), ORDERS, "{entries:?}");
    let keys: HashSet<_> = charges.iter().map(|(k, _)| k.clone()).collect();
    let want: HashSet<_> = (0..ORDERS).map(|i| format!("crash-{i}:capture")).collect();
    assert_eq!(keys, want);
    assert!(charges.iter().all(|(_, e)| e.amount.cents() == 350));
}
