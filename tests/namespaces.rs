//! Two deployments with different namespaces (`--namespace`) on one Kafka and one Cassandra (the README
//! test command's engines): each confirms all of its own orders, and neither sees anything of the
//! other's: orders, stock, consumer groups. Without namespaces the two would take each other's records.

#![allow(clippy::unwrap_used)]

mod common;

use common::TestApp;
use orderflow_platform::BackendUrl;
use orderflow_platform::backend::Namespace;
use orderflow_platform::conformance::real_engine;
use serde_json::json;

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
