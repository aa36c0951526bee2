//! `--env production`: sign-in required for orders, no GraphiQL, introspection or suggestions, metrics
//! only on the operators' listener, and no under-replicated Kafka topics or CQL keyspaces.

use crate::common::{TestApp, free_port};
use orderflow::{App, AuthModeArg, Environment, Roles};
use orderflow_platform::BackendUrl;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_closes_what_development_leaves_open() {
    let admin_port = free_port();
    let app = TestApp::start_with(|s| {
        s.environment = Environment::Production;
        s.admin_listen = Some(format!("127.0.0.1:{admin_port}").parse().unwrap());
    })
    .await;
    let http = &app.http;

    // Orders need a signed-in customer.
    let (status, body) =
        app.post_order(json!({"user_id": "alice", "items": [{"sku": "SKU-PIZZA", "quantity": 1}]})).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")), "{body}");

    // No GraphiQL, no introspection, no "did you mean" hints; data queries still work.
    assert!(!http.get(format!("{}/graphql", app.base)).send().await.unwrap().status().is_success());
    let v = app.gql("{ __schema { types { name } } }", json!({}), false).await;
    assert!(v["data"]["__schema"].is_null(), "introspection answered: {v}");
    let v = app.gql("{ prodcts { edges { cursor } } }", json!({}), false).await;
    let message = v["errors"][0]["message"].as_str().unwrap_or_default().to_owned();
    assert!(!message.is_empty() && !message.contains("Did you mean"), "{v}");
    app.wait_product("SKU-PIZZA").await;

    // Metrics only on the operators' listener, with the probes.
    assert_eq!(http.get(format!("{}/metrics", app.base)).send().await.unwrap().status().as_u16(), 404);
    let admin = format!("http://127.0.0.1:{admin_port}");
    let metrics = http.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    assert!(metrics.text().await.unwrap().contains("orderflow_"));
    assert_eq!(http.get(format!("{admin}/healthz")).send().await.unwrap().status().as_u16(), 200);
    assert_eq!(http.get(format!("{admin}/graphql")).send().await.unwrap().status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_keeps_the_quick_start_open() {
    let app = TestApp::start().await;
    let v = app.gql("{ __schema { queryType { name } } }", json!({}), false).await;
    assert_eq!(v["data"]["__schema"]["queryType"]["name"], "Query", "{v}");
    let v = app.gql("{ prodcts { edges { cursor } } }", json!({}), false).await;
    assert!(v["errors"][0]["message"].as_str().unwrap_or_default().contains("Did you mean"), "{v}");
    assert_eq!(app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().status().as_u16(), 200);
}

/// A change to the test settings.
type Tweak = Box<dyn Fn(&mut orderflow::Settings)>;

/// The settings a production server refuses, and what it says.
#[tokio::test]
async fn production_refuses_open_access_and_low_replication() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Tweak)> = vec![
        ("--auth open", Box::new(|s| s.auth = Some(AuthModeArg::Open))),
        ("kafka-replication-factor", Box::new(|s| s.bus = BackendUrl::Kafka(vec!["127.0.0.1:1".into()]))),
        ("cql-replication", Box::new(|s| s.store = BackendUrl::Scylla(vec!["127.0.0.1:1".into()]))),
    ];
    for (expected, tweak) in cases {
        let mut s = crate::common::settings(dir.path());
        s.environment = Environment::Production;
        tweak(&mut s);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = match App::start(&s, Roles::all(), listener).await {
            Ok(_) => panic!("{expected}: a production server started"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(expected), "{expected}: {err}");
        // The escape hatch for replication (a lab cluster), not for open access.
        if expected != "--auth open" {
            s.allow_low_replication = true;
            assert!(s.check_replication().is_ok());
        }
    }
}
