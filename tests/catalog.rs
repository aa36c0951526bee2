//! How soon a staff catalog write is visible to reads, measured over real HTTP: `updateProduct`, then
//! `product(sku)` polled until it shows the change. Reads come from the catalog read model (through the
//! GraphQL cache), which the catalog projector builds from `ProductUpdated` events, so this is the CQRS
//! lag: publish, consume, project, invalidate. Run on the embedded default, on Kafka + Cassandra in one
//! process, and on Kafka + Cassandra with the GraphQL API and the catalog projector in different
//! apps (the API's cache then follows the catalog topic in a consumer group of its own).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestApp, settings};
use orderflow::{App, Roles};
use orderflow_platform::BackendUrl;
use orderflow_platform::conformance::real_engine;
use orderflow_processors::runtime::Role;
use serde_json::{Value, json};

/// The bound the tests assert: generous, so a slow machine does not fail them. Typical figures are in
/// the README ("How fresh catalog reads are").
const VISIBLE_WITHIN: Duration = Duration::from_secs(5);
const UPDATES: usize = 20;

fn unique_sku() -> String {
    format!("CAT-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]).to_uppercase()
}

async fn gql(http: &reqwest::Client, base: &str, query: &str, variables: Value, staff: bool) -> Value {
    common::gql(http, base, query, variables, staff).await
}

/// Polls `product(sku)` until `done` holds for it; returns how long that took.
async fn poll(
    http: &reqwest::Client,
    base: &str,
    sku: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let v =
            gql(http, base, "query($s: String!){ product(sku: $s){ price version } }", json!({"s": sku}), false).await;
        if done(&v["data"]["product"]) {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{sku} not visible within {limit:?}: {v}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Creates a product through `write_base`, waits for it to be readable through `read_base`, then makes
/// `UPDATES` price changes and measures each one's write-to-read time. Returns (median, max).
async fn measure(write_base: &str, read_base: &str, label: &str) -> (Duration, Duration) {
    let http = reqwest::Client::new();
    let sku = unique_sku();
    let created = gql(
        &http,
        write_base,
        "mutation($s: String!){ createProduct(input: {sku: $s, name: \"Timing\", price: \"1.00\", category: \"test\"}){ version } }",
        json!({"s": sku}),
        true,
    )
    .await;
    assert_eq!(created["data"]["createProduct"]["version"], 1, "{created}");
    // Setting up (a new Kafka consumer group joining) is not what is measured.
    poll(&http, read_base, &sku, Duration::from_secs(60), |p| p["version"] == 1).await;

    let mut times = Vec::with_capacity(UPDATES);
    for i in 0..UPDATES {
        let price = format!("{}.{:02}", 2 + i, i);
        let started = Instant::now();
        let v = gql(
            &http,
            write_base,
            "mutation($s: String!, $p: Decimal!){ updateProduct(sku: $s, input: {price: $p}){ version } }",
            json!({"s": sku, "p": price}),
            true,
        )
        .await;
        let version = v["data"]["updateProduct"]["version"].clone();
        assert_eq!(version, json!(i + 2), "{v}");
        poll(&http, read_base, &sku, VISIBLE_WITHIN + Duration::from_secs(1), |p| p["version"] == version).await;
        times.push(started.elapsed());
    }
    times.sort();
    let (median, max) = (times[UPDATES / 2], times[UPDATES - 1]);
    println!(
        "catalog write->read visibility ({label}, {UPDATES} staff updates over HTTP, from sending updateProduct to \
         the first product(sku) read that shows it): median {median:?}, max {max:?}"
    );
    assert!(max < VISIBLE_WITHIN, "{label}: a staff update took {max:?} to be visible (bound {VISIBLE_WITHIN:?})");

    // The listing follows too.
    let listed = poll_listing(&http, read_base, &sku).await;
    assert_eq!(listed, format!("{}.{:02}", UPDATES + 1, UPDATES - 1));
    (median, max)
}

async fn poll_listing(http: &reqwest::Client, base: &str, sku: &str) -> String {
    let want = format!("{}.{:02}", UPDATES + 1, UPDATES - 1);
    let started = Instant::now();
    loop {
        let v = gql(
            http,
            base,
            "{ products(first: 100, filter: {category: \"test\", search: \"timing\"}){ edges { node { sku price } } } }",
            json!({}),
            false,
        )
        .await;
        let price = v["data"]["products"]["edges"]
            .as_array()
            .and_then(|edges| edges.iter().find(|e| e["node"]["sku"] == sku))
            .map(|e| e["node"]["price"].as_str().unwrap_or_default().to_owned());
        if price.as_deref() == Some(want.as_str()) || started.elapsed() > VISIBLE_WITHIN {
            return price.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_update_is_visible_within_the_bound_on_embedded() {
    let app = TestApp::start().await;
    measure(&app.base, &app.base, "embedded, one process").await;
}

/// On Kafka + Cassandra, first with every role in one process, then with `orderflow graphql` and
/// `orderflow process catalog` as separate apps: the projector's process has no GraphQL cache, so the API
/// process learns of changes only through its own consumer of the catalog topic. One test, in sequence:
/// the apps share the catalog projector's consumer group, and an app joining or leaving it mid-measurement
/// would measure a rebalance (see the README), not the steady state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_update_is_visible_within_the_bound_on_kafka_and_cql() {
    let (Some(kafka), Some(cql)) = (real_engine("ORDERFLOW_TEST_KAFKA"), real_engine("ORDERFLOW_TEST_CQL")) else {
        return;
    };
    let mut app = TestApp::start_with(|s| {
        s.bus = BackendUrl::Kafka(vec![kafka.clone()]);
        s.store = BackendUrl::Scylla(vec![cql.clone()]);
    })
    .await;
    measure(&app.base, &app.base, "Kafka + Cassandra, one process").await;
    app.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.bus = BackendUrl::Kafka(vec![kafka]);
    s.store = BackendUrl::Scylla(vec![cql]);
    s.seed_catalog = orderflow::Seed::None;
    let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let api =
        App::start(&s, Roles { ingest: false, graphql: true, processors: vec![] }, listener().await).await.unwrap();
    let projector =
        App::start(&s, Roles { ingest: false, graphql: false, processors: vec![Role::Catalog] }, listener().await)
            .await
            .unwrap();
    let base = format!("http://{}", api.addr);
    measure(&base, &base, "Kafka + Cassandra, GraphQL and catalog projector in separate processes").await;
    projector.stop().await;
    api.stop().await;
}
