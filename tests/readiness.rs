//! Liveness and readiness over a real socket: `/healthz` answers while the process runs, `/readyz` only
//! while the bus and the store answer and every role still runs, and says which part is not ready.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::TestApp;
use orderflow::health::{self, Probes, RoleHealth, supervise};
use orderflow_platform::backend::BackendOptions;
use orderflow_platform::store::{Readiness, StoreError};
use orderflow_platform::{BackendUrl, Backends};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

async fn get(base: &str, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Serves only the probes of `probes` on a port of its own.
async fn serve_probes(probes: Probes) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, health::router(probes)).await.unwrap() });
    base
}

fn embedded(dir: &std::path::Path) -> Backends {
    orderflow_platform::embedded::open(dir, &BackendOptions::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_process_is_live_and_ready() {
    let app = TestApp::start().await;
    assert_eq!(get(&app.base, "/healthz").await, (200, json!({"status": "ok"})));
    assert_eq!(
        get(&app.base, "/readyz").await,
        (200, json!({"status": "ready", "bus": "ok", "store": "ok", "roles": "ok", "ended_roles": []}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_and_cql_a_running_process_is_ready() {
    let (Some(kafka), Some(cql)) = (
        orderflow_platform::conformance::real_engine("ORDERFLOW_TEST_KAFKA"),
        orderflow_platform::conformance::real_engine("ORDERFLOW_TEST_CQL"),
    ) else {
        return;
    };
    let app = TestApp::start_with(|s| {
        s.bus = BackendUrl::Kafka(vec![kafka]);
        s.store = BackendUrl::Scylla(vec![cql]);
    })
    .await;
    let (status, body) = get(&app.base, "/readyz").await;
    assert_eq!((status, &body["status"]), (200, &json!("ready")), "{body}");
    assert_eq!(get(&app.base, "/healthz").await.0, 200);
}

/// A store whose engine does not answer.
struct Unreachable;

#[async_trait]
impl Readiness for Unreachable {
    async fn ping(&self) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_makes_the_process_unready_but_still_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut backends = embedded(dir.path());
    backends.stores.readiness = Arc::new(Unreachable);
    let base = serve_probes(Probes { backends, health: RoleHealth::new() }).await;
    let (status, body) = get(&base, "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "not_ready");
    assert_eq!((&body["store"], &body["bus"], &body["roles"]), (&json!("unreachable"), &json!("ok"), &json!("ok")));
    assert!(!body.to_string().contains("connection refused"), "causes are logged, not returned: {body}");
    assert_eq!(get(&base, "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_ends_or_panics_makes_readyz_fail_at_once_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let health = RoleHealth::new();
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let base = serve_probes(Probes { backends: embedded(dir.path()), health: health.clone() }).await;

    // A role of two tasks: one runs until shutdown, like a consumer; the other is started later.
    let (end_it, ended) = tokio::sync::oneshot::channel::<()>();
    let until_shutdown = shutdown.clone();
    supervise(&mut tasks, &health, &shutdown, "process payment", |t| {
        t.spawn(async move { until_shutdown.cancelled().await });
        t.spawn(async move {
            let _ = ended.await;
        });
    });
    let until_shutdown = shutdown.clone();
    supervise(&mut tasks, &health, &shutdown, "process orders", |t| {
        t.spawn(async move { until_shutdown.cancelled().await });
    });
    assert_eq!(get(&base, "/readyz").await.0, 200, "every role runs");

    // One task of the payment role returns while the process is not shutting down.
    end_it.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(2), health.failed().cancelled()).await.expect("failure signalled");
    let (status, body) = get(&base, "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["roles"], "ended");
    assert_eq!(body["ended_roles"], json!(["process payment"]));

    // A panicking role is caught the same way (the panic does not take the process down by itself).
    supervise(&mut tasks, &health, &shutdown, "process fulfillment", |t| {
        t.spawn(async { panic!("a bug in a role") });
    });
    // (Printing the panic's backtrace can take a while in a debug build.)
    let started = std::time::Instant::now();
    while health.ended().len() < 2 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = get(&base, "/readyz").await;
    assert_eq!(body["ended_roles"], json!(["process payment", "process fulfillment"]));
    assert_eq!(get(&base, "/healthz").await.0, 200, "still live: the supervisor decides to restart");

    // Roles that end because the process is shutting down are not failures.
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    assert_eq!(health.ended(), ["process payment", "process fulfillment"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_that_end_on_shutdown_are_not_failures() {
    let health = RoleHealth::new();
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let until_shutdown = shutdown.clone();
    supervise(&mut tasks, &health, &shutdown, "process inventory", |t| {
        t.spawn(async move { until_shutdown.cancelled().await });
    });
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    assert!(health.ended().is_empty());
    assert!(!health.failed().is_cancelled());
}
