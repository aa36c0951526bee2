//! The end-to-end order scenarios (tests/common/scenarios.rs) on the embedded default and on real
//! Apache Kafka with the CQL store on real Cassandra (`ORDERFLOW_TEST_KAFKA`, `ORDERFLOW_TEST_CQL`; the
//! README test command starts both). Only one app without a namespace uses Kafka at a time: apps on
//! different stores sharing one cluster's consumer groups would take each other's records. The namespace
//! test's two apps have topics, groups and keyspaces of their own, so they run beside it.

#![allow(clippy::unwrap_used)]

mod common;

use common::scenarios::{self, DECLINED_USER};
use common::{TestApp, authz};
use orderflow::AuthModeArg;
use orderflow_platform::BackendUrl;
use orderflow_platform::backend::Namespace;
use orderflow_platform::conformance::real_engine;
use orderflow_schemas::UserId;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_on_embedded() {
    let app = TestApp::start_with(|s| s.payment_decline_users = vec![UserId::parse(DECLINED_USER).unwrap()]).await;
    scenarios::run_all(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_on_kafka_and_cql() {
    let (Some(kafka), Some(cql)) = (real_engine("ORDERFLOW_TEST_KAFKA"), real_engine("ORDERFLOW_TEST_CQL")) else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let mut tokens = None;
    let app = TestApp::start_with(|s| {
        s.payment_decline_users = vec![UserId::parse(DECLINED_USER).unwrap()];
        s.bus = BackendUrl::Kafka(vec![kafka]);
        s.store = BackendUrl::Scylla(vec![cql]);
        tokens = Some(authz::with_jwt(s, keys.path(), AuthModeArg::Open));
    })
    .await;
    scenarios::run_all(&app).await;
    // The role table, on the same app (one app on Kafka at a time; see above).
    let tokens = tokens.unwrap();
    let prepared = authz::prepare(&app, &tokens).await;
    authz::walk(&app, &tokens, AuthModeArg::Open, &prepared).await;
}

// Two deployments with different namespaces (`--namespace`) on the same Kafka and Cassandra: each confirms
// all of its own orders, and neither sees anything of the other's: orders, stock, consumer groups. Without
// namespaces the two would take each other's records; with them they also leave the app above alone, so
// this runs beside it.
async fn deployment(namespace: &str, kafka: &str, cql: &str) -> TestApp {
    let (kafka, cql, namespace) = (kafka.to_owned(), cql.to_owned(), namespace.to_owned());
    TestApp::start_with(move |s| {
        s.bus = BackendUrl::Kafka(vec![kafka]);
        s.store = BackendUrl::Scylla(vec![cql]);
        s.namespace = Some(Namespace::parse(&namespace).unwrap());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_namespaces_share_one_cluster_and_nothing_else() {
    let (Some(kafka), Some(cql)) = (real_engine("ORDERFLOW_TEST_KAFKA"), real_engine("ORDERFLOW_TEST_CQL")) else {
        return;
    };
    // Fixed namespaces (a rerun reuses their topics and keyspaces); names of this run inside them.
    let a = deployment("it_ns_a", &kafka, &cql).await;
    let b = deployment("it_ns_b", &kafka, &cql).await;
    let sku = format!("SKU-NS-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    for (app, stock) in [(&a, 10), (&b, 20)] {
        common::create_product(&app.http, &app.base, &sku, stock).await;
        app.wait_product(&sku).await;
    }

    let mut placed = Vec::new();
    for (app, name, orders) in [(&a, "a", 3), (&b, "b", 2)] {
        for i in 0..orders {
            let id = format!("{sku}-{name}-{i}");
            let (status, body) = app
                .post_order(json!({"order_id": id, "user_id": "ns-user", "items": [{"sku": sku, "quantity": 1}]}))
                .await;
            assert_eq!(status, 202, "{body}");
            placed.push((name, id));
        }
    }
    for (name, id) in &placed {
        let (mine, theirs) = if *name == "a" { (&a, &b) } else { (&b, &a) };
        mine.wait_status(id, &["CONFIRMED"]).await;
        assert_eq!(theirs.get_order(id).await.0, 404, "{id} of {name} is visible in the other deployment");
    }
    // Each deployment's stock moved by its own orders only (confirmed orders hold their units until
    // they ship).
    assert_eq!(common::stock(&a, &sku).await, (7, 3));
    assert_eq!(common::stock(&b, &sku).await, (18, 2));
}
