//! A zombie: a processor that lost its partitions without noticing (here: stopped with SIGSTOP past the
//! consumer group's session timeout) and then runs again, with records it had already fetched. Two
//! instances each of the order saga and of inventory share their groups on real Kafka and the CQL store on
//! real Cassandra; one of each is frozen mid-burst, the other takes over, then the frozen ones resume. Their
//! late writes must change nothing: every order CONFIRMED once, each step once in its timeline, stock and
//! charges exactly as a run without the zombie leaves them.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::{Proc, wait_status};
use orderflow_platform::conformance::real_engine;
use serde_json::json;

use common::role_on_kafka_and_cql as role;

/// Orders placed before the freeze, while frozen, and after the thaw.
const BURST: usize = 30;

/// How many partition epochs an instance has claimed so far (from its log).
fn claims(p: &Proc) -> usize {
    std::fs::read_to_string(&p.log).unwrap_or_default().matches("claimed partition epoch").count()
}

fn signal(p: &Proc, sig: &str) {
    let status = Command::new("kill").args([sig, &p.child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill {sig} failed");
}

/// Places each (order id, SKU) at once, one unit each, and notes the SKU.
async fn place(
    http: &reqwest::Client,
    ingest: &Proc,
    orders: &[(String, String)],
    placed: &mut HashMap<String, String>,
) {
    let posts = orders.iter().map(|(id, sku)| {
        http.post(format!("{}/v1/orders", ingest.base))
            .json(&json!({"order_id": id, "user_id": format!("u-{id}"), "items": [{"sku": sku, "quantity": 1}]}))
            .send()
    });
    for r in futures::future::join_all(posts).await {
        assert_eq!(r.unwrap().status(), 202);
    }
    placed.extend(orders.iter().cloned());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_then_resumed_processor_changes_nothing() {
    let (Some(kafka), Some(cql)) = (real_engine("ORDERFLOW_TEST_KAFKA"), real_engine("ORDERFLOW_TEST_CQL")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    common::migrate_cql(&cql);
    let mut procs = [
        role(&["ingest"], &kafka, &cql, dir.path(), &[]),
        role(&["graphql"], &kafka, &cql, dir.path(), &[("ORDERFLOW_SEED_CATALOG", "none")]),
        role(&["process", "payment"], &kafka, &cql, dir.path(), &[]),
        role(&["process", "fulfillment"], &kafka, &cql, dir.path(), &[]),
        role(&["process", "catalog"], &kafka, &cql, dir.path(), &[]),
    ];
    // Two instances of each role under test, the first of each to be frozen.
    let pair = |r: &str| -> Vec<Proc> {
        (0..2).map(|i| role(&["process", r], &kafka, &cql, &dir.path().join(format!("{r}{i}")), &[])).collect()
    };
    let orders = pair("orders");
    let inventory = pair("inventory");
    for p in procs.iter().chain(&orders).chain(&inventory) {
        p.wait_ready().await;
    }
    let (ingest, graphql) = (&procs[0], &procs[1]);

    let skus: Vec<String> = (0..4)
        .map(|i| format!("ZOMBIE-{}-{i}", &uuid::Uuid::new_v4().simple().to_string()[..8]).to_uppercase())
        .collect();
    for sku in &skus {
        common::create_product(&http, &graphql.base, sku, 1000).await;
    }

    let run = uuid::Uuid::new_v4().simple().to_string();
    let batch = |phase: &str| -> Vec<(String, String)> {
        (0..BURST).map(|i| (format!("zb-{}-{phase}-{i}", &run[..8]), skus[i % skus.len()].clone())).collect()
    };
    let mut placed: HashMap<String, String> = HashMap::new();
    let confirm_all = async |placed: &HashMap<String, String>| {
        for id in placed.keys() {
            wait_status(&http, &ingest.base, id, &["CONFIRMED"], Duration::from_secs(90)).await;
        }
    };

    // Before: both instances of each role work (the groups spread the partitions).
    place(&http, ingest, &batch("a"), &mut placed).await;
    // Mid-burst, freeze one instance of each role; orders keep arriving.
    let during = batch("b");
    let (first, rest) = during.split_at(BURST / 2);
    place(&http, ingest, first, &mut placed).await;
    let claims_before = claims(&orders[1]);
    signal(&orders[0], "-STOP");
    signal(&inventory[0], "-STOP");
    place(&http, ingest, rest, &mut placed).await;
    // Past the session timeout (6 s): the others take the frozen instances' partitions over and finish.
    tokio::time::sleep(Duration::from_secs(9)).await;
    place(&http, ingest, &batch("c"), &mut placed).await;
    confirm_all(&placed).await;
    assert!(
        claims(&orders[1]) > claims_before,
        "the second saga instance took partitions over (claimed their next epochs)"
    );
    // The zombies wake up with whatever they had in hand, and write late.
    signal(&orders[0], "-CONT");
    signal(&inventory[0], "-CONT");
    place(&http, ingest, &batch("d"), &mut placed).await;
    confirm_all(&placed).await;
    // Give late writes time to land before checking that they changed nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ids: Vec<&String> = placed.keys().collect();

    // Every order: CONFIRMED, each step once in its timeline.
    for id in &ids {
        let order = wait_status(&http, &ingest.base, id, &["CONFIRMED"], Duration::from_secs(5)).await;
        let mut kinds: HashMap<String, usize> = HashMap::new();
        for entry in order["timeline"].as_array().unwrap() {
            *kinds.entry(entry["type"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        for step in ["processing", "stock_reserved", "payment_authorised", "payment_captured", "confirmed"] {
            assert_eq!(kinds.get(step), Some(&1), "order {id}: {step} once: {order}");
        }
    }
    // Stock: exactly one unit held per order of the SKU, none twice, none lost.
    let mut per_sku: HashMap<&str, i64> = HashMap::new();
    for sku in placed.values() {
        *per_sku.entry(sku.as_str()).or_default() += 1;
    }
    for sku in &skus {
        let held = per_sku[sku.as_str()];
        let stock = common::stock_of(&http, &graphql.base, sku).await;
        assert_eq!(stock, json!({"available": 1000 - held, "reserved": held}), "{sku}");
    }
    // Money: one charge per order at the provider, none twice.
    let charges = common::charges_by_key(&cql, &format!("zb-{}", &run[..8])).await;
    assert_eq!(charges.len(), ids.len(), "every order charged");
    assert!(charges.values().all(|n| *n == 1), "none twice");
    // The frozen instances really did come back (and are still running, not crashed).
    for p in orders.iter().chain(&inventory) {
        p.wait_ready().await;
    }
    for p in procs.iter_mut() {
        let _ = p.child.kill();
    }
}
