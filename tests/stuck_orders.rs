//! Stuck work is compensated: an order that makes no progress within `--stuck-order-timeout` ends REJECTED
//! with reason `timed_out`, its stock goes back and a capture that happens after all is refunded. On real
//! Kafka and Cassandra with one process per role, the payment role left out at first so the order hangs
//! in PROCESSING with its stock held and its capture queued, then started late.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{role_on_kafka_and_cql as role, wait_status};
use orderflow_platform::conformance::real_engine;
use serde_json::{Value, json};

/// The kinds of the SKU's ledger movements for one order, newest first.
async fn movements(http: &reqwest::Client, graphql: &str, sku: &str, order: &str) -> Vec<String> {
    let ledger = common::gql(
        http,
        graphql,
        "query($s: String!){ product(sku: $s){ stockMovements(first: 50){ kind reference } } }",
        json!({"s": sku}),
        true,
    )
    .await;
    ledger["data"]["product"]["stockMovements"]
        .as_array()
        .map(|moves| {
            moves
                .iter()
                .filter(|m| m["reference"] == order)
                .filter_map(|m| m["kind"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the warm-up order has been rejected too, so that its release does not race ours.
async fn wait_warm_rejected(http: &reqwest::Client, ingest: &str, run: &str) {
    let warm = format!("stuck-{run}-warm");
    let order = wait_status(http, ingest, &warm, &["REJECTED"], Duration::from_secs(60)).await;
    assert_eq!(order["reason"], "timed_out", "{order}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_stuck_in_processing_is_rejected_and_compensated() {
    let (Some(kafka), Some(cql)) = (real_engine("ORDERFLOW_TEST_KAFKA"), real_engine("ORDERFLOW_TEST_CQL")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    common::migrate_cql(&cql);
    let mut procs = vec![
        role(&["ingest"], &kafka, &cql, dir.path(), &[]),
        role(&["graphql"], &kafka, &cql, dir.path(), &[("ORDERFLOW_SEED_CATALOG", "none")]),
        role(&["process", "orders"], &kafka, &cql, dir.path(), &[("ORDERFLOW_STUCK_ORDER_TIMEOUT", "5s")]),
        role(&["process", "inventory"], &kafka, &cql, dir.path(), &[]),
        role(&["process", "catalog"], &kafka, &cql, dir.path(), &[]),
    ];
    for p in &procs {
        p.wait_ready().await;
    }
    let (ingest, graphql) = (procs[0].base.clone(), procs[1].base.clone());
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let sku = format!("STUCK-{run}").to_uppercase();
    common::create_product(&http, &graphql, &sku, 10).await;

    // A first order warms the pipeline up (fresh groups take seconds to join): once its units are held,
    // the saga and inventory consumers run, and the order under test is held well within the timeout.
    let place = async |id: &str, quantity: u32| {
        let placed = http
            .post(format!("{ingest}/v1/orders"))
            .json(&json!({"order_id": id, "user_id": "u-stuck", "items": [{"sku": sku, "quantity": quantity}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(placed.status(), 202);
    };
    let wait_stock = async |want: Value, what: &str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let stock = common::stock_of(&http, &graphql, &sku).await;
            if stock == want {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: {stock}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let warm = format!("stuck-{run}-warm");
    place(&warm, 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !movements(&http, &graphql, &sku, &warm).await.contains(&"reserve".to_owned()) {
        assert!(tokio::time::Instant::now() < deadline, "the warm-up order's stock was never held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let id = format!("stuck-{run}");
    place(&id, 2).await;
    // Past the timeout the sweep asks the saga to reject it; the stock comes back.
    let order = wait_status(&http, &ingest, &id, &["REJECTED"], Duration::from_secs(60)).await;
    assert_eq!(order["reason"], "timed_out", "{order}");
    let kinds: Vec<&str> = order["timeline"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.last(), Some(&"rejected"), "{order}");
    wait_warm_rejected(&http, &ingest, &run).await;
    wait_stock(json!({"available": 10, "reserved": 0}), "the stock was never released").await;
    // Held, then released: the ledger has both for the order.
    // (Sorted: a hold and its release in the same millisecond may list either way round; and polled: the
    // ledger row may land just after the level.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut kinds = movements(&http, &graphql, &sku, &id).await;
        kinds.sort();
        if kinds == ["release", "reserve"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "held once, released once: {kinds:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A capture was requested only if the reservation's reply reached the saga before the timeout.
    let capture_requested = kinds.contains(&"stock_reserved");

    // The payment role comes back: the queued capture happens, and the refund queued behind it pays it back.
    let payment = role(&["process", "payment"], &kafka, &cql, dir.path(), &[]);
    payment.wait_ready().await;
    procs.push(payment);
    let total = order["total_amount"].as_str().unwrap().replace('.', "").parse::<i64>().unwrap();
    let want = if capture_requested {
        vec![("authorisation".to_owned(), total), ("charge".to_owned(), total), ("refund".to_owned(), total)]
    } else {
        Vec::new()
    };
    // The warm-up order, stuck the same way, settles too; then our order's entries must be exactly `want`.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut entries: Vec<(String, i64)> = common::provider_entries(&cql, &format!("{id}:"))
            .await
            .into_iter()
            .map(|(_, e)| (e.kind, e.amount.cents()))
            .collect();
        entries.sort();
        if entries == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {want:?} at the provider (charged once, refunded once, or neither): {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let order = wait_status(&http, &ingest, &id, &["REJECTED"], Duration::from_secs(5)).await;
    assert_eq!(order["reason"], "timed_out", "a late capture does not revive the order: {order}");
    for p in procs.iter_mut() {
        let _ = p.child.kill();
    }
}
