//! The end-to-end order scenarios (tests/common/scenarios.rs) on the embedded default and on real
//! Apache Kafka with the CQL store on real Cassandra (`ORDERFLOW_TEST_KAFKA`, `ORDERFLOW_TEST_CQL`; the
//! README test command starts both). Only one app per run uses Kafka at a time: apps on different
//! stores sharing one cluster's consumer groups would take each other's records.

#![allow(clippy::unwrap_used)]

mod common;

use common::TestApp;
use common::scenarios::{self, DECLINED_USER};
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
    let app = TestApp::start_with(|s| {
        s.payment_decline_users = vec![UserId::parse(DECLINED_USER).unwrap()];
        s.bus = BackendUrl::Kafka(vec![kafka]);
        s.store = BackendUrl::Scylla(vec![cql]);
    })
    .await;
    scenarios::run_all(&app).await;
}
