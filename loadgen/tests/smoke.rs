//! CI smoke of the load generator: a tiny load against an in-process orderflow and the bare baseline.
//! It checks that every figure is produced, never how fast they are, so a slow machine cannot fail it.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::time::Duration;

use orderflow::{App, Roles, Seed, Settings};
use orderflow_loadgen::{Comparison, Load, RunConfig, Scenario, baseline, chart, run};
use orderflow_platform::BackendUrl;

const TOKEN: &str = "smoke-admin-token-0123456789abcdef0123";

async fn start(dir: &std::path::Path) -> App {
    orderflow_platform::telemetry::init_logging("warn");
    let settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        bus: BackendUrl::Embedded,
        store: BackendUrl::Embedded,
        admin_token: Some(TOKEN.into()),
        admin_token_file: None,
        connections: Default::default(),
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
        seed_catalog: Seed::None,
        sync_writes: false,
        cache_mib: 64,
        memtable_mib: 8,
        journal_mib: 128,
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
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    App::start(&settings, Roles::all(), listener).await.unwrap()
}

fn tiny(target: String, scenario: Scenario, load: Load) -> RunConfig {
    let mut cfg = RunConfig::new(target);
    cfg.admin_token = Some(TOKEN.into());
    cfg.scenario = scenario;
    cfg.load = load;
    cfg.duration = Duration::from_secs(2);
    cfg.seed_products = 5;
    cfg.flash_stock = 3;
    cfg.sample_orders = 20;
    // Generous: only a broken pipeline leaves orders unfinished for a minute.
    cfg.e2e_wait = Duration::from_secs(60);
    cfg.request_timeout = Duration::from_secs(30);
    cfg.progress = false;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_produces_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path()).await;
    let target = format!("http://{}", app.addr);

    let closed = Load::Closed { users: 4, iterations: None, think_ms: 0 };
    let mixed = run(&tiny(target.clone(), Scenario::Mixed, closed)).await.unwrap();
    for op in ["place_order", "product", "products", "track_order"] {
        let o = mixed.op(op).unwrap_or_else(|| panic!("no {op} in {mixed:?}"));
        assert!(o.requests > 0 && o.latency_ms.max > 0.0 && o.throughput_per_s > 0.0, "{o:?}");
    }
    assert_eq!(mixed.stats.total.errors, 0, "{:?}", mixed.stats.error_samples);
    let e2e = mixed.e2e.as_ref().expect("orders were sampled");
    assert!(e2e.sampled > 0);
    assert_eq!(e2e.not_terminal, 0, "every sampled order finishes: {e2e:?}");
    assert!(e2e.latency_ms.p50 > 0.0);
    assert!(!mixed.stats.timeline.is_empty());

    // A think time spaces each user's requests: 4 users pausing at least 250 ms (500 ms +-50 %) cannot
    // send more than 4 x (2 s / 250 ms + 1) requests in 2 s, however fast the machine is.
    let thinking = Load::Closed { users: 4, iterations: None, think_ms: 500 };
    let paced = run(&tiny(target.clone(), Scenario::Place, thinking)).await.unwrap();
    let requests = paced.stats.total.requests;
    assert!(requests > 0 && requests <= 4 * 9, "{requests} requests");
    assert_eq!(paced.think_jitter, 0.5);

    // Open loop, flash sale: a few units for everybody; rejections are outcomes, not errors.
    let open = Load::Open { rate_per_s: 20.0, max_in_flight: 64 };
    let flash = run(&tiny(target.clone(), Scenario::Flash, open)).await.unwrap();
    let place = flash.op("place_order").unwrap();
    assert!(place.requests > 0);
    assert_eq!(place.errors, 0, "{:?}", flash.stats.error_samples);
    let e2e = flash.e2e.as_ref().unwrap();
    assert_eq!(e2e.confirmed + e2e.rejected, e2e.sampled, "{e2e:?}");
    assert!(e2e.confirmed <= 3, "no oversell: {e2e:?}");

    // Checkout: every user waits for its order's verdict; --max-orders ends the run (the duration is only a
    // bound); the CPU of a watched process (this one) is reported per completed checkout.
    let mut cfg = tiny(target.clone(), Scenario::Checkout, Load::Closed { users: 4, iterations: None, think_ms: 0 });
    cfg.max_orders = Some(12);
    cfg.duration = Duration::from_secs(60);
    cfg.cpu_pids = vec![("loadgen".into(), std::process::id())];
    let checkout = run(&cfg).await.unwrap();
    let c = checkout.checkout.as_ref().expect("checkout figures");
    assert_eq!((c.started, c.completed, c.errors, c.unfinished_at_end), (12, 12, 0, 0), "{c:?}");
    assert_eq!(c.confirmed, 12, "{c:?}");
    assert!(c.completed_per_s > 0.0 && c.latency_ms.p50 > 0.0 && c.polls_per_checkout >= 1.0, "{c:?}");
    assert!(checkout.op("get_order").is_some_and(|o| o.requests >= 12 && o.errors == 0));
    assert_eq!(checkout.op("place_order").map(|o| o.requests), Some(12));
    assert_eq!(checkout.placement_progress.last().map(|p| p.orders), Some(12));
    assert_eq!(checkout.cpu.len(), 1);
    assert!(checkout.cpu[0].cpu_ms_per_order.is_some(), "{:?}", checkout.cpu);

    let chart_path = dir.path().join("chart.svg");
    chart::write_svg(&mixed, &chart_path).unwrap();
    assert!(std::fs::read_to_string(&chart_path).unwrap().contains("<svg"));
    serde_json::to_string(&mixed).unwrap();

    // The bare baseline with the same client and load, and the ratio.
    let (addr, stop) = baseline::spawn_bare().await.unwrap();
    let mut cfg = tiny(format!("http://{addr}"), Scenario::Place, closed);
    cfg.seed = false;
    let bare = run(&cfg).await.unwrap();
    stop.send(()).unwrap();
    let product = run(&tiny(target, Scenario::Place, closed)).await.unwrap();
    let cmp = Comparison::place(&product, &bare).unwrap();
    assert!(cmp.throughput_ratio > 0.0 && cmp.bare_per_s > 0.0, "{cmp:?}");

    app.stop().await;
}

#[test]
fn raw_fjall_baseline_produces_figures() {
    let dir = tempfile::tempdir().unwrap();
    let r = baseline::run_fjall(dir.path(), 2, Duration::from_millis(500), false).unwrap();
    assert!(r.orders > 0 && r.commits_per_s > 0.0, "{r:?}");
}
