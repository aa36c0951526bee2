//! Operators scale a processor by starting more instances. Three `orderflow process payment`
//! processes share one consumer group over the payments topic's partitions (real Kafka, CQL store on
//! real Cassandra); one is killed with SIGKILL mid-stream. Every order must still end CONFIRMED,
//! charged exactly once, with stock that adds up.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Proc, wait_status};
use orderflow_platform::conformance::real_engine;
use serde_json::json;

const ORDERS: usize = 60;

use common::role_on_kafka_and_cql as role;

async fn processed(http: &reqwest::Client, p: &Proc) -> u64 {
    let text = http.get(format!("{}/metrics", p.base)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("orderflow_records_processed_total") && l.contains("orderflow-payment"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_payment_processors_one_killed_every_order_charged_once() {
    let (Some(kafka), Some(cql)) = (real_engine("ORDERFLOW_TEST_KAFKA"), real_engine("ORDERFLOW_TEST_CQL")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    common::migrate_cql(&cql);
    let slow = [("ORDERFLOW_PAYMENT_LATENCY_MS", "150")];
    let mut procs = [
        role(&["ingest"], &kafka, &cql, dir.path(), &[]),
        role(&["graphql"], &kafka, &cql, dir.path(), &[("ORDERFLOW_SEED_CATALOG", "none")]),
        role(&["process", "orders"], &kafka, &cql, dir.path(), &[]),
        role(&["process", "inventory"], &kafka, &cql, dir.path(), &[]),
        role(&["process", "fulfillment"], &kafka, &cql, dir.path(), &[]),
        role(&["process", "catalog"], &kafka, &cql, dir.path(), &[]),
        // Builds the catalog read model that `product(sku)` reads.
        role(&["process", "catalog"], &kafka, &cql, dir.path(), &[]),
    ];
    let mut payments: Vec<Proc> =
        (0..3).map(|i| role(&["process", "payment"], &kafka, &cql, &dir.path().join(format!("p{i}")), &slow)).collect();
    for p in procs.iter().chain(&payments) {
        p.wait_ready().await;
    }
    let (ingest, graphql) = (&procs[0], &procs[1]);

    let sku = format!("SCALE-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]).to_uppercase();
    common::create_product(&http, &graphql.base, &sku, 1000).await;

    let run = uuid::Uuid::new_v4().simple().to_string();
    let ids: Vec<String> = (0..ORDERS).map(|i| format!("scale-{}-{i}", &run[..8])).collect();
    for id in &ids {
        let r = http
            .post(format!("{}/v1/orders", ingest.base))
            .json(&json!({"order_id": id, "user_id": format!("u-{id}"), "items": [{"sku": sku, "quantity": 1}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }

    // Let the group spread the partitions and start charging, then kill one member.
    let mut counts = Vec::new();
    for _ in 0..300 {
        counts = futures::future::join_all(payments.iter().map(|p| processed(&http, p))).await;
        if counts.iter().filter(|c| **c > 0).count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(counts.iter().filter(|c| **c > 0).count() >= 2, "the work was not shared between instances: {counts:?}");
    let victim = counts.iter().enumerate().max_by_key(|(_, c)| **c).map(|(i, _)| i).unwrap();
    payments[victim].kill9();

    for id in &ids {
        wait_status(&http, &ingest.base, id, &["CONFIRMED"], Duration::from_secs(90)).await;
    }

    let stock = common::stock_of(&http, &graphql.base, &sku).await;
    assert_eq!(stock, json!({"available": 1000 - ORDERS, "reserved": ORDERS}));

    // The provider's books: one charge per order, none twice.
    let charges = common::charges_by_key(&cql, &format!("scale-{}", &run[..8])).await;
    assert_eq!(charges.len(), ORDERS, "every order charged");
    assert!(charges.values().all(|n| *n == 1));
    for p in procs.iter_mut().chain(payments.iter_mut()) {
        let _ = p.child.kill();
    }
}
