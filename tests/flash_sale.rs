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

/// Places `ids` (one unit of `sku` each) with up to 100 in flight. A request that fails (the server is
/// down or restarting) is retried with the same order id, which makes the retry the same order. `accepted`
/// counts the orders acknowledged so far.
async fn burst(
    http: &reqwest::Client,
    base: &str,
    sku: &str,
    ids: &[String],
    accepted: &std::sync::atomic::AtomicUsize,
) {
    futures::stream::iter(ids)
        .for_each_concurrent(100, |id| async move {
            let started = std::time::Instant::now();
            loop {
                let sent = http
                    .post(format!("{base}/v1/orders"))
                    .json(&json!({"order_id": id, "user_id": format!("fan-{id}"), "items": [{"sku": sku, "quantity": 1}]}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 202 || r.status() == 200 => break,
                    Ok(r) if r.status().is_client_error() => panic!("order {id} refused: {}", r.text().await.unwrap()),
                    _ => {
                        assert!(started.elapsed() < Duration::from_secs(120), "order {id} never accepted");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .await;
}

/// Waits until `accepted` reaches `n`.
async fn until_accepted(accepted: &std::sync::atomic::AtomicUsize, n: usize) {
    while accepted.load(std::sync::atomic::Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Counts (CONFIRMED, REJECTED as out of stock) once every order has ended; panics on any other ending.
async fn outcomes(http: &reqwest::Client, base: &str, sku: &str, ids: &[String]) -> (usize, usize) {
    let mut confirmed = 0;
    let mut rejected = 0;
    for id in ids {
        let order = common::wait_status(http, base, id, &["CONFIRMED", "REJECTED"], Duration::from_secs(120)).await;
        if order["status"] == "CONFIRMED" {
            confirmed += 1;
        } else {
            assert_eq!(order["reason"], format!("out_of_stock: {sku}"), "{order}");
            rejected += 1;
        }
    }
    (confirmed, rejected)
}

/// The same sale on the embedded default while the whole process (inventory processor included) is
/// killed with SIGKILL mid-burst and restarted on the same data directory; clients retry what failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_sale_survives_kill_9_mid_burst() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = common::free_port();
    let http = reqwest::Client::new();
    let mut server = common::Proc::spawn(&data, port, &[("ORDERFLOW_SEED_CATALOG", "none")]);
    server.wait_ready().await;
    let sku = format!("FLASH-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]).to_uppercase();
    let created = common::gql_stock_change(
        &http,
        &server.base,
        "mutation($s: String!, $n: Int!){ createProduct(input: {sku: $s, name: \"flash\", price: \"1.00\", stock: $n}){ sku } }",
        json!({"s": sku, "n": UNITS}),
    )
    .await;
    assert_eq!(created["data"]["createProduct"]["sku"], sku.as_str(), "{created}");

    let ids: Vec<String> = (0..ORDERS).map(|i| format!("flash-kill-{i}")).collect();
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    let base = server.base.clone();
    let restarted = async {
        until_accepted(&accepted, ORDERS / 4).await;
        server.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = common::Proc::spawn(&data, port, &[("ORDERFLOW_SEED_CATALOG", "none")]);
        again.wait_ready().await;
        again
    };
    let ((), mut server) = tokio::join!(burst(&http, &base, &sku, &ids, &accepted), restarted);

    assert_eq!(outcomes(&http, &server.base, &sku, &ids).await, (UNITS as usize, ORDERS - UNITS as usize));
    let stock = common::gql(
        &http,
        &server.base,
        "query($s: String!){ product(sku: $s){ stock { available reserved sold } } }",
        json!({"s": sku}),
        true,
    )
    .await;
    assert_eq!(stock["data"]["product"]["stock"], json!({"available": 0, "reserved": UNITS, "sold": 0}), "{stock}");
    assert!(server.terminate().success());
    let backends = orderflow_embedded::open(&data, &Default::default()).unwrap();
    let moves = backends.stores.inventory.movements(&sku.parse().unwrap(), 10_000).await.unwrap();
    let held: i64 = moves.iter().filter(|m| m.kind == "reserve").map(|m| -m.available_delta).sum();
    let released: i64 = moves.iter().filter(|m| m.kind == "release").map(|m| m.available_delta).sum();
    assert_eq!((held, released), (UNITS, 0), "the ledger agrees: every held unit once, none released");
}

/// The same sale on real Kafka and the CQL store on real Cassandra, one process per role, while the
/// inventory processor (the single writer of the SKU's partition) is killed with SIGKILL mid-burst and
/// a new one started: its replacement picks the partition up from the last committed position, and the
/// reservations it redoes are recognised per order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_sale_on_kafka_and_cql_survives_inventory_processor_kill() {
    use orderflow_platform::conformance::real_engine;
    let (Some(kafka), Some(cql)) = (real_engine("ORDERFLOW_TEST_KAFKA"), real_engine("ORDERFLOW_TEST_CQL")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    common::migrate_cql(&cql);
    let role = |args: &[&str], name: &str| {
        let no_seed = [("ORDERFLOW_SEED_CATALOG", "none")];
        common::role_on_kafka_and_cql(args, &kafka, &cql, &dir.path().join(name), &no_seed)
    };
    let procs = [
        role(&["ingest"], "ingest"),
        role(&["graphql"], "graphql"),
        role(&["process", "orders"], "orders"),
        role(&["process", "payment"], "payment"),
        role(&["process", "fulfillment"], "fulfillment"),
        role(&["process", "catalog"], "catalog"),
    ];
    let mut inventory = role(&["process", "inventory"], "inventory-1");
    for p in procs.iter().chain([&inventory]) {
        p.wait_ready().await;
    }
    let (ingest, graphql) = (&procs[0], &procs[1]);
    let sku = format!("FLASH-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]).to_uppercase();
    let created = common::gql_stock_change(
        &http,
        &graphql.base,
        "mutation($s: String!, $n: Int!){ createProduct(input: {sku: $s, name: \"flash\", price: \"1.00\", stock: $n}){ sku } }",
        json!({"s": sku, "n": UNITS}),
    )
    .await;
    assert_eq!(created["data"]["createProduct"]["sku"], sku.as_str(), "{created}");

    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let ids: Vec<String> = (0..ORDERS).map(|i| format!("flash-{run}-{i}")).collect();
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    let replaced = async {
        // Kill once the inventory processor is busy with the burst: some units are held already.
        let started = std::time::Instant::now();
        loop {
            let v = common::gql(
                &http,
                &graphql.base,
                "query($s: String!){ product(sku: $s){ stock { reserved } } }",
                json!({"s": sku}),
                true,
            )
            .await;
            if v["data"]["product"]["stock"]["reserved"].as_i64().unwrap_or(0) >= 10 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "no reservation happened: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        inventory.kill9();
        let again = role(&["process", "inventory"], "inventory-2");
        again.wait_ready().await;
        again
    };
    let ((), _inventory) = tokio::join!(burst(&http, &ingest.base, &sku, &ids, &accepted), replaced);

    assert_eq!(outcomes(&http, &ingest.base, &sku, &ids).await, (UNITS as usize, ORDERS - UNITS as usize));
    let stock = common::gql(
        &http,
        &graphql.base,
        "query($s: String!){ product(sku: $s){ stock { available reserved sold } } }",
        json!({"s": sku}),
        true,
    )
    .await;
    assert_eq!(stock["data"]["product"]["stock"], json!({"available": 0, "reserved": UNITS, "sold": 0}), "{stock}");
    let backends = orderflow::backend::open(
        &orderflow_platform::BackendUrl::Kafka(vec![kafka.clone()]),
        &orderflow_platform::BackendUrl::Scylla(vec![cql.clone()]),
        dir.path(),
        &orderflow_platform::backend::BackendOptions {
            kafka_security: orderflow_platform::conformance::test_kafka_security(),
            cql_security: orderflow_platform::conformance::test_cql_security(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let moves = backends.stores.inventory.movements(&sku.parse().unwrap(), 10_000).await.unwrap();
    let held: i64 = moves.iter().filter(|m| m.kind == "reserve").map(|m| -m.available_delta).sum();
    let released: i64 = moves.iter().filter(|m| m.kind == "release").map(|m| m.available_delta).sum();
    assert_eq!((held, released), (UNITS, 0), "the ledger agrees: every held unit once, none released");
}
