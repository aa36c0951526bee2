//! Exactly once at the provider, across crashes: the payment role (one process per role, on real Kafka
//! and Cassandra) is killed with -9 after Stripe has acted on its call and before the role could store
//! the answer, once during an authorisation and once during a capture, then restarted. A recording proxy
//! in front of stripe-mock shows that the restarted role repeated the call under the same idempotency
//! key (which Stripe answers with its first answer), never under another, and both orders end CONFIRMED.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::stripe::{PAYS, StripeProxy, kind};
use common::{Proc, role_on_kafka_and_cql as role, wait_status};
use orderflow_platform::conformance::real_engine;
use serde_json::json;

fn payment_role(kafka: &str, cql: &str, dir: &std::path::Path, proxy: &StripeProxy) -> Proc {
    role(
        &["process", "payment"],
        kafka,
        cql,
        dir,
        &[
            ("ORDERFLOW_PAYMENT_PROVIDER", "stripe"),
            ("ORDERFLOW_STRIPE_API_BASE", &proxy.base),
            ("ORDERFLOW_STRIPE_SECRET_KEY", "sk_test_orderflow"),
        ],
    )
}

/// Per kind of call, the idempotency keys and how many calls carried them, for one order.
fn calls(proxy: &StripeProxy, order: &str) -> BTreeMap<String, (BTreeSet<String>, usize)> {
    let mut out: BTreeMap<String, (BTreeSet<String>, usize)> = BTreeMap::new();
    for call in proxy.calls_for(&format!("{order}:")) {
        let entry = out.entry(kind(&call.path).to_owned()).or_default();
        entry.0.insert(call.idempotency_key.unwrap());
        entry.1 += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_role_killed_after_stripe_acted_repeats_the_call_under_the_same_key() {
    let (Some(kafka), Some(cql)) = (real_engine("ORDERFLOW_TEST_KAFKA"), real_engine("ORDERFLOW_TEST_CQL")) else {
        return;
    };
    let Some(proxy) = StripeProxy::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    common::migrate_cql(&cql);
    let mut procs = vec![
        role(&["ingest"], &kafka, &cql, dir.path(), &[]),
        role(&["graphql"], &kafka, &cql, dir.path(), &[("ORDERFLOW_SEED_CATALOG", "none")]),
        role(&["process", "orders"], &kafka, &cql, dir.path(), &[]),
        role(&["process", "inventory"], &kafka, &cql, dir.path(), &[]),
        role(&["process", "catalog"], &kafka, &cql, dir.path(), &[]),
    ];
    let mut payment = payment_role(&kafka, &cql, dir.path(), &proxy);
    for p in procs.iter().chain([&payment]) {
        p.wait_ready().await;
    }
    let (ingest, graphql) = (procs[0].base.clone(), procs[1].base.clone());
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let sku = format!("CRASH-{run}").to_uppercase();
    common::create_product(&http, &graphql, &sku, 10).await;
    let place = async |id: &str| {
        let body = json!({"order_id": id, "user_id": "u-crash", "items": [{"sku": sku, "quantity": 1}], "payment_method": PAYS});
        let placed = http.post(format!("{ingest}/v1/orders")).json(&body).send().await.unwrap();
        assert_eq!(placed.status(), 202);
    };
    // A first order warms the groups up (fresh consumer groups take seconds to join).
    let warm = format!("crash-{run}-warm");
    place(&warm).await;
    wait_status(&http, &ingest, &warm, &["CONFIRMED"], Duration::from_secs(60)).await;

    for step in ["create", "capture"] {
        let id = format!("crash-{run}-{step}");
        proxy.hold_next(step);
        place(&id).await;
        tokio::time::timeout(Duration::from_secs(60), proxy.held()).await.expect("the call never reached Stripe");
        payment.kill9();
        payment = payment_role(&kafka, &cql, dir.path(), &proxy);
        payment.wait_ready().await;
        let order = wait_status(&http, &ingest, &id, &["CONFIRMED"], Duration::from_secs(60)).await;
        let kinds: Vec<&str> =
            order["timeline"].as_array().unwrap().iter().filter_map(|t| t["type"].as_str()).collect();
        assert_eq!(kinds.iter().filter(|k| **k == "payment_captured").count(), 1, "{order}");

        let seen = calls(&proxy, &id);
        let keys: BTreeMap<&str, &BTreeSet<String>> = seen.iter().map(|(k, (keys, _))| (k.as_str(), keys)).collect();
        let one = |step: &str| BTreeSet::from([format!("{id}:{step}")]);
        assert_eq!(keys, BTreeMap::from([("create", &one("authorise")), ("capture", &one("capture"))]), "{seen:?}");
        // The call the crash interrupted went again, under its first key; the other went once.
        let (again, once) = if step == "create" { ("create", "capture") } else { ("capture", "create") };
        assert!(seen[again].1 >= 2, "{step}: the interrupted call was not repeated: {seen:?}");
        assert_eq!(seen[once].1, 1, "{step}: {seen:?}");
    }
    procs.push(payment);
    let stock = common::stock_of(&http, &graphql, &sku).await;
    assert_eq!(stock, json!({"available": 7, "reserved": 3}), "three orders hold one unit each");
}
