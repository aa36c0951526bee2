//! Shared test harness: starts orderflow on port 0 with a fresh data directory, in process or as a
//! child process, and talks to it over real sockets.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod authz;
pub mod scenarios;
pub mod stripe;

use orderflow::{App, Roles, Seed, Settings};
use orderflow_platform::BackendUrl;
use serde_json::{Value, json};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123";

pub fn settings(data_dir: &Path) -> Settings {
    let memory = orderflow_platform::backend::EmbeddedMemory::default();
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        bus: BackendUrl::Embedded,
        store: BackendUrl::Embedded,
        admin_token: Some(ADMIN_TOKEN.into()),
        admin_token_file: None,
        connections: orderflow_platform::conformance::test_connections(),
        environment: orderflow::Environment::Development,
        auth: None,
        graphql_introspection: None,
        admin_listen: None,
        cql_replication: Default::default(),
        kafka_min_insync_replicas: None,
        allow_low_replication: false,
        namespace: None,
        auth_jwks: None,
        auth_issuer: None,
        auth_audience: None,
        auth_algorithms: "RS256".into(),
        auth_roles_claim: "roles".into(),
        payment_provider: orderflow::config::PaymentProviderName::Simulated,
        stripe_api_base: orderflow::config::STRIPE_API.parse().unwrap(),
        stripe_secret_key: None,
        stripe_webhook_secret: None,
        currency: orderflow_schemas::Currency::EUR,
        capture_on: orderflow::config::CaptureOnArg::Confirmation,
        payment_latency_ms: 1,
        payment_decline_above: None,
        payment_decline_users: vec![],
        seed_catalog: Seed::Demo,
        sync_writes: false,
        cache_mib: memory.cache_mib,
        memtable_mib: memory.memtable_mib,
        journal_mib: memory.journal_mib,
        owned_order_entries: 10_000,
        cql_write_group: 64,
        kafka_replication_factor: 1,
        stalled_after_ms: 3000,
        stuck_order_timeout: std::time::Duration::from_secs(300),
        startup_wait: std::time::Duration::ZERO,
        shutdown_grace: std::time::Duration::from_secs(10),
        max_concurrent_requests: 4096,
        request_timeout: std::time::Duration::from_secs(30),
        header_read_timeout: std::time::Duration::from_secs(10),
        max_record_bytes: orderflow_platform::bus::limits::DEFAULT_MAX_RECORD_BYTES,
        topic_max_record_bytes: vec![],
        order_rate_limit: None,
        order_rate_limit_burst: None,
        order_rate_limit_key: orderflow::config::OrderRateLimitKey::User,
        cors_allow_origin: vec![],
        graphql_timeout: std::time::Duration::from_secs(10),
        fault_end_role: None,
    }
}

/// An in-process orderflow with its own data directory.
pub struct TestApp {
    pub app: Option<App>,
    pub base: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn start() -> TestApp {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
        orderflow_platform::telemetry::init_logging("warn");
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        tweak(&mut s);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App::start(&s, Roles::all(), listener).await.unwrap();
        let base = format!("http://{}", app.addr);
        TestApp { app: Some(app), base, http: reqwest::Client::new(), dir }
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().unwrap()
    }

    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
    }

    pub async fn post_order(&self, body: Value) -> (u16, Value) {
        let r = self.http.post(format!("{}/v1/orders", self.base)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_order(&self, id: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}/v1/orders/{id}", self.base)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn gql(&self, query: &str, variables: Value, staff: bool) -> Value {
        gql(&self.http, &self.base, query, variables, staff).await
    }

    /// A GraphQL request with `token` as the bearer (a customer's or staff's JWT).
    pub async fn gql_as(&self, token: &str, query: &str, variables: Value) -> Value {
        let body = json!({"query": query, "variables": variables});
        let resp =
            self.http.post(format!("{}/graphql", self.base)).bearer_auth(token).json(&body).send().await.unwrap();
        resp.json().await.unwrap()
    }

    /// `POST <path>` with a JSON body, as `token`'s bearer when given: the status and the JSON answer.
    pub async fn post_as(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    /// [`gql_stock_change`] against this app.
    pub async fn gql_stock_change(&self, query: &str, variables: Value) -> Value {
        gql_stock_change(&self.http, &self.base, query, variables).await
    }

    /// Waits until the catalog's read model shows `sku` (the demo catalog is projected after start), up to
    /// 10 s.
    pub async fn wait_product(&self, sku: &str) {
        let query = format!("{{ product(sku: \"{sku}\") {{ sku }} }}");
        let started = Instant::now();
        loop {
            let v = self.gql(&query, json!({}), false).await;
            if v["data"]["product"]["sku"] == sku {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{sku} not in the catalog after 10 s: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the order has `status` (or any terminal/processed status if `None`), up to 10 s.
    pub async fn wait_status(&self, id: &str, want: &[&str]) -> Value {
        wait_status(&self.http, &self.base, id, want, Duration::from_secs(10)).await
    }
}

pub async fn gql(http: &reqwest::Client, base: &str, query: &str, variables: Value, staff: bool) -> Value {
    let mut req = http.post(format!("{base}/graphql")).json(&json!({"query": query, "variables": variables}));
    if staff {
        req = req.bearer_auth(ADMIN_TOKEN);
    }
    req.send().await.unwrap().json().await.unwrap()
}

/// Runs a staff stock mutation that is safe to repeat (`createProduct` with `stock`, whose initial stock
/// is keyed; `setLowStockThreshold`) as a client should: again while it answers `stock_change_pending`.
/// The inventory processor of a freshly started Kafka consumer group can take longer to apply the change
/// than the 5 s the API waits.
pub async fn gql_stock_change(http: &reqwest::Client, base: &str, query: &str, variables: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = gql(http, base, query, variables.clone(), true).await;
        if v["errors"][0]["extensions"]["code"] != "stock_change_pending" || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn wait_status(http: &reqwest::Client, base: &str, id: &str, want: &[&str], limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let r = http.get(format!("{base}/v1/orders/{id}")).send().await;
        if let Ok(r) = r
            && r.status().is_success()
        {
            let body: Value = r.json().await.unwrap();
            if want.iter().any(|w| body["status"] == *w) {
                return body;
            }
            if started.elapsed() > limit {
                panic!("order {id} did not reach {want:?} within {limit:?}: {body}");
            }
        }
        if started.elapsed() > limit {
            panic!("order {id} did not reach {want:?} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stock of a SKU as GraphQL shows it: (available, reserved).
/// The catalog's read model is projected asynchronously (a seeded product may not be in it yet on a
/// loaded machine), so this waits up to 10 s for the product to appear.
pub async fn stock(app: &TestApp, sku: &str) -> (i64, i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = app
            .gql("query($s: String!){ product(sku: $s){ stock { available reserved } } }", json!({"s": sku}), true)
            .await;
        let s = &v["data"]["product"]["stock"];
        if let (Some(available), Some(reserved)) = (s["available"].as_i64(), s["reserved"].as_i64()) {
            return (available, reserved);
        }
        assert!(std::time::Instant::now() < deadline, "{sku} never appeared in the catalog: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates a product with `stock` units through the GraphQL API at `graphql_base`, as staff.
pub async fn create_product(http: &reqwest::Client, graphql_base: &str, sku: &str, stock: i64) {
    let created = gql_stock_change(
        http,
        graphql_base,
        "mutation($s: String!, $n: Int!){ createProduct(input: {sku: $s, name: \"test\", price: \"1.00\", stock: $n}){ sku } }",
        json!({"s": sku, "n": stock}),
    )
    .await;
    assert_eq!(created["data"]["createProduct"]["sku"], sku, "{created}");
}

/// The stock of a SKU as GraphQL at `graphql_base` shows it to staff: `{available, reserved}`.
pub async fn stock_of(http: &reqwest::Client, graphql_base: &str, sku: &str) -> Value {
    let v = gql(
        http,
        graphql_base,
        "query($s: String!){ product(sku: $s){ stock { available reserved } } }",
        json!({"s": sku}),
        true,
    )
    .await;
    v["data"]["product"]["stock"].clone()
}

/// The simulated provider's own ledger (in its keyspace on the CQL cluster at `cql`): the entries under
/// idempotency keys that start with `prefix`, sorted by key.
pub async fn provider_entries(cql: &str, prefix: &str) -> Vec<(String, orderflow_platform::ledger::ProviderEntry)> {
    use orderflow_platform::ledger::ProviderLedger;
    let security = orderflow_platform::conformance::test_cql_security();
    let ledger = orderflow_cql::connect_ledger(&[cql.to_owned()], &security).await.unwrap();
    let mut entries: Vec<_> =
        ledger.entries().await.unwrap().into_iter().filter(|(k, _)| k.starts_with(prefix)).collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

/// How many charges the simulated provider's own books hold per idempotency key, for the keys that start
/// with `prefix`: the check that no order was charged twice.
pub async fn charges_by_key(cql: &str, prefix: &str) -> std::collections::HashMap<String, usize> {
    let mut charges = std::collections::HashMap::new();
    for (key, entry) in provider_entries(cql, prefix).await {
        if entry.kind == "charge" {
            *charges.entry(key).or_default() += 1;
        }
    }
    charges
}

/// orderflow as a child process (for crash tests), with its own port and data directory.
pub struct Proc {
    pub child: Child,
    pub base: String,
    pub log: PathBuf,
}

/// `orderflow migrate` on the CQL store at `cql`: what an operator does before starting separate roles
/// (idempotent, so it is fine if a test did already).
pub fn migrate_cql(cql: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["--store", &format!("scylla://{cql}"), "migrate"])
        .envs(orderflow_platform::conformance::test_engine_env())
        .output()
        .unwrap();
    assert!(out.status.success(), "orderflow migrate failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// `orderflow <args>` as one role on Kafka at `kafka` and the CQL store at `cql`, with its own port and a
/// data directory (for its log) named after the role under `dir`.
pub fn role_on_kafka_and_cql(args: &[&str], kafka: &str, cql: &str, dir: &Path, extra: &[(&str, &str)]) -> Proc {
    let mut env = vec![("ORDERFLOW_BUS", format!("kafka://{kafka}")), ("ORDERFLOW_STORE", format!("scylla://{cql}"))];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Proc::spawn_with_args(args, &dir.join(args.join("-")), free_port(), &env)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Proc {
    pub fn spawn(data_dir: &Path, port: u16, extra_env: &[(&str, &str)]) -> Proc {
        Self::spawn_with_args(&["serve"], data_dir, port, extra_env)
    }

    /// Runs `orderflow <args>` (a role) with its own port and data directory.
    pub fn spawn_with_args(args: &[&str], data_dir: &Path, port: u16, extra_env: &[(&str, &str)]) -> Proc {
        let log = data_dir.with_extension(format!("{port}.log"));
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orderflow"));
        cmd.args(args)
            .env("ORDERFLOW_LISTEN", format!("127.0.0.1:{port}"))
            .env("ORDERFLOW_DATA_DIR", data_dir)
            .env("ORDERFLOW_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("ORDERFLOW_LOG", "info")
            .envs(orderflow_platform::conformance::test_engine_env())
            .stdout(Stdio::null())
            .stderr(out.try_clone().unwrap());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Proc { child, base: format!("http://127.0.0.1:{port}"), log }
    }

    /// Waits until `/readyz` answers 200: the bus and store answer and every role runs.
    pub async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(r) = http.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("orderflow did not become ready; log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    /// `kill -9`: no shutdown hooks, no flushing.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
