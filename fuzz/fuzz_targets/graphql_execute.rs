//! GraphQL requests executed, not only parsed: each input is the body of a `POST /graphql` (a JSON
//! object with `query`, `variables`, `operationName`), sent through the real GraphQL routes of
//! `orderflow-graphql` (`router_with`: body limit, JSON extraction, introspection routing, the schema's
//! depth, complexity and recursion limits, the caps and order rate limit of `limits.rs`, the time
//! limit) over an embedded store in a temporary directory, built once per fuzzing process.
//!
//! Every request carries the staff token, so the staff mutations run instead of stopping at the
//! guard (customers' operations are a subset). The store keeps what earlier inputs wrote (products,
//! orders, stock), as a running server does. The inventory processor runs beside the routes (on the
//! same single-threaded runtime, so it applies stock changes while a request waits for them); nothing
//! else consumes the bus, so mutations that wait for the order saga end at the time limit, which is
//! short here to keep executions fast.
//!
//! Property: no panic, no 500, and every answer is a JSON object with `data` or a non-empty `errors`.
#![no_main]

use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use orderflow_graphql::{ApiState, HttpOptions, MAX_BODY_BYTES};
use orderflow_ingest::Intake;
use orderflow_ingest::rate_limit::{OrderRateLimit, OrderRateLimiter, RateLimitKey};
use orderflow_platform::backend::BackendOptions;
use orderflow_schemas::topics;
use tower::ServiceExt as _;

const TOKEN: &str = "fuzz-staff-token-0123456789abcdef0123";

/// The runtime, the routes and the directory the store lives in (kept for the life of the process).
struct Server {
    runtime: tokio::runtime::Runtime,
    routes: Router,
    _dir: tempfile::TempDir,
}

static SERVER: LazyLock<Server> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let backends = orderflow_embedded::open(dir.path(), &BackendOptions::default()).expect("the store");
    let intake = Intake::new(backends.stores.clone(), Arc::clone(&backends.bus));
    let inventory = Arc::new(orderflow_processors::inventory::InventoryHandler {
        inventory: Arc::clone(&backends.stores.inventory),
        bus: Arc::clone(&backends.bus),
        fences: orderflow_platform::fencing::PartitionFences::new(
            Arc::clone(&backends.stores.epochs),
            topics::groups::INVENTORY,
        ),
    });
    let bus = Arc::clone(&backends.bus);
    runtime.spawn(async move {
        let never = tokio_util::sync::CancellationToken::new();
        bus.consume(topics::groups::INVENTORY, topics::INVENTORY, inventory, never).await
    });
    let state = ApiState::new(backends.stores, backends.bus, intake, orderflow_graphql::AuthMode::Open);
    // Generous, so that it is exercised (`placeOrder` counts against it) without refusing most inputs.
    let per_second = NonZeroU32::new(1_000).expect("non-zero");
    let limiter = OrderRateLimiter::new(OrderRateLimit { per_second, burst: per_second, key: RateLimitKey::User });
    let options =
        HttpOptions { timeout: Duration::from_millis(200), rate_limit: Some(Arc::new(limiter)), introspection: true };
    // Authenticated as the binary does it: the token is the admin's.
    let auth = Arc::new(orderflow_identity::http::Authenticator {
        admin: Some(orderflow_identity::AdminToken::parse(TOKEN).expect("a valid admin token")),
        ..Default::default()
    });
    let routes = runtime.block_on(async {
        orderflow_graphql::router_with(state, options)
            .layer(axum::middleware::from_fn_with_state(auth, orderflow_identity::http::authenticate))
    });
    Server { runtime, routes, _dir: dir }
});

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_BODY_BYTES + 1 {
        return;
    }
    let server = &*SERVER;
    let request = Request::post("/graphql")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::from(data.to_vec()))
        .expect("a request");
    let (status, body) = server.runtime.block_on(async {
        let response = server.routes.clone().oneshot(request).await.expect("the router is infallible");
        let status = response.status();
        (status, axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024).await.expect("a body"))
    });
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "500: {}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{status}: the answer is not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    let has_data = answer.get("data").is_some();
    let has_errors = answer.get("errors").and_then(|e| e.as_array()).is_some_and(|e| !e.is_empty());
    assert!(has_data || has_errors, "{status}: neither data nor errors: {answer}");
    if !status.is_success() {
        assert!(has_errors, "{status} without errors: {answer}");
    }
});
