//! Liveness and readiness over a real socket: `/healthz` answers while the process runs, `/readyz` only
//! while the bus and the store answer and every role still runs, and says which part is not ready.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::{Proc, TestApp};
use orderflow::config::EndRoleFault;
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
    orderflow_embedded::open(dir, &BackendOptions::default()).unwrap()
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

/// The hidden fault setting (`ORDERFLOW_FAULT_END_ROLE`) ends a task of the payment role: no role ends by
/// itself today (consumers restart after errors, a handler's panic is caught per record), so this is how
/// the tests make one end in the real process wiring.
fn end_payment_after(after: Duration) -> EndRoleFault {
    EndRoleFault { role: "process payment".into(), after }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_whose_role_ended_is_unready_and_names_the_role() {
    let app = TestApp::start_with(|s| s.fault_end_role = Some(end_payment_after(Duration::from_millis(300)))).await;
    let started = Instant::now();
    let (status, body) = loop {
        let (status, body) = get(&app.base, "/readyz").await;
        if status != 200 || started.elapsed() > Duration::from_secs(10) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert_eq!((&body["roles"], &body["ended_roles"]), (&json!("ended"), &json!(["process payment"])));
    assert!(app.app().health().failed().is_cancelled(), "the process is told to stop");
    assert_eq!(get(&app.base, "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_naming_no_role_of_the_process_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = common::settings(dir.path());
    settings.fault_end_role = Some(EndRoleFault { role: "process nothing".into(), after: Duration::ZERO });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = orderflow::App::start(&settings, orderflow::Roles::all(), listener).await.unwrap_err();
    assert!(err.to_string().contains("process nothing"), "{err}");
}

/// The `orderflow` binary as a supervisor sees it: ready, then a role ends; from then on `/readyz` never
/// answers 200 again (503 naming the role while the HTTP server still runs, then no answer), and the
/// process exits with status 1 so that the supervisor restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_whose_role_ends_fails_readiness_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("ORDERFLOW_FAULT_END_ROLE", "process payment@3s"), ("ORDERFLOW_SHUTDOWN_GRACE", "5s")];
    let mut proc = Proc::spawn(&dir.path().join("data"), common::free_port(), &env);
    let launched = Instant::now();
    proc.wait_ready().await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
    let readyz = format!("{}/readyz", proc.base);
    // Every answer of /readyz from ready to exit: Some((status, body)), or None when nothing answered.
    let mut answers: Vec<Option<(u16, Value)>> = Vec::new();
    let exit = loop {
        if let Some(exit) = proc.child.try_wait().unwrap() {
            break exit;
        }
        let log = || std::fs::read_to_string(&proc.log).unwrap_or_default();
        assert!(launched.elapsed() < Duration::from_secs(30), "still running 30 s after start; log:\n{}", log());
        answers.push(match http.get(&readyz).send().await {
            Ok(r) => Some((r.status().as_u16(), r.json().await.unwrap_or(Value::Null))),
            Err(_) => None,
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
    assert_eq!(exit.code(), Some(1), "exit status {exit}; log:\n{log}");
    assert!(log.contains("roles ended unexpectedly: process payment"), "log:\n{log}");
    assert!(answers.first().is_some_and(|a| matches!(a, Some((200, _)))), "ready at first: {answers:?}");
    let unready_from = answers.iter().position(|a| !matches!(a, Some((200, _)))).unwrap_or(answers.len());
    for (status, body) in answers[unready_from..].iter().flatten() {
        assert_eq!(*status, 503, "ready again after a role ended: {body}");
        assert_eq!(body["ended_roles"], json!(["process payment"]), "{body}");
    }
    let refused = answers[unready_from..].iter().filter(|a| a.is_some()).count();
    eprintln!("/readyz: {unready_from} ready answers, then {refused} answers 503 before the exit");
    assert!(http.get(&readyz).send().await.is_err(), "something still answers after the exit");
}

/// A store that does not answer at start-up: the process waits `--startup-wait` for it, warning on each
/// attempt, then exits 1 naming what did not answer (instead of a misleading schema hint).
#[tokio::test]
async fn start_up_waits_for_an_unreachable_store_then_exits_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on (bound, then released).
    let dead = common::free_port();
    let started = Instant::now();
    let mut p = Proc::spawn(
        &dir.path().join("data"),
        common::free_port(),
        &[("ORDERFLOW_STORE", &format!("scylla://127.0.0.1:{dead}")), ("ORDERFLOW_STARTUP_WAIT", "3s")],
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = p.child.wait().unwrap();
        (status, std::fs::read_to_string(&p.log).unwrap_or_default())
    });
    let (status, log) = tokio::time::timeout(Duration::from_secs(60), status).await.unwrap().unwrap();
    let took = started.elapsed();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(took >= Duration::from_secs(3), "gave up after {took:?}, before the 3 s wait: {log}");
    assert!(log.contains("waiting for the bus and store to answer"), "{log}");
    assert!(log.contains(&format!("the CQL store at 127.0.0.1:{dead} does not answer")), "{log}");
    assert!(!log.contains("has the schema been applied"), "{log}");
}
