//! The end-to-end order scenarios (tests/common/scenarios.rs) on the embedded default and on real
//! Apache Kafka with the CQL store on real Cassandra (`ORDERFLOW_TEST_KAFKA`, `ORDERFLOW_TEST_CQL`; the
//! README test command starts both). Only one app per run uses Kafka at a time: apps on different
//! stores sharing one cluster's consumer groups would take each other's records.

#![allow(clippy::unwrap_used)]

mod common;

use common::scenarios::{self, DECLINED_USER};
use common::{TestApp, authz};
use orderflow::AuthModeArg;
use orderflow_platform::BackendUrl;
use orderflow_platform::conformance::real_engine;
use orderflow_schemas::UserId;

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
