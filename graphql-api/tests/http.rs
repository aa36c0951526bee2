//! The HTTP transport: auth header, single requests only, body limit, GraphiQL.

use anyhow::Result;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use orderflow_graphql::{ApiState, HttpOptions, MAX_BODY_BYTES, router_with};
use orderflow_ingest::Intake;
use orderflow_platform::backend::BackendOptions;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "http-s3cret-0123456789abcdef0123456789";

fn app(dir: &std::path::Path) -> Result<axum::Router> {
    app_with(dir, HttpOptions::default())
}

/// The GraphQL routes over a fresh embedded store, with the catalog projector but no order saga: a staff
/// order change waits for a saga that never comes.
fn app_with(dir: &std::path::Path, options: HttpOptions) -> Result<axum::Router> {
    let backends = orderflow_embedded::open(dir, &BackendOptions::default())?;
    let intake = Intake::new(backends.stores.clone(), backends.bus.clone());
    let state = ApiState::new(backends.stores.clone(), backends.bus.clone(), intake, orderflow_graphql::AuthMode::Open);
    // The catalog projector, as `orderflow serve` runs it, so catalog reads follow staff writes. It stops
    // when the test's runtime does.
    let projector = std::sync::Arc::new(orderflow_processors::catalog::CatalogProjector {
        view: backends.stores.catalog_view.clone(),
        observer: Some(state.catalog.clone()),
    });
    let bus = backends.bus.clone();
    tokio::spawn(async move {
        let (group, topic) = (orderflow_schemas::topics::groups::CATALOG_PROJECTOR, orderflow_schemas::topics::CATALOG);
        bus.consume(group, topic, projector, tokio_util::sync::CancellationToken::new()).await
    });
    // Authenticated as the binary does it (see `orderflow_identity::http`).
    let auth = std::sync::Arc::new(orderflow_identity::http::Authenticator {
        admin: Some(orderflow_identity::AdminToken::parse(TOKEN)?),
        ..Default::default()
    });
    Ok(router_with(state, options)
        .layer(axum::middleware::from_fn_with_state(auth, orderflow_identity::http::authenticate)))
}

async fn post(app: &axum::Router, body: Vec<u8>, auth: Option<&str>) -> Result<(StatusCode, Value)> {
    let mut req = Request::post("/graphql").header(header::CONTENT_TYPE, "application/json");
    if let Some(auth) = auth {
        req = req.header(header::AUTHORIZATION, auth);
    }
    let resp = app.clone().oneshot(req.body(Body::from(body))?).await?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await?;
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

fn gql(query: &str) -> Vec<u8> {
    json!({ "query": query }).to_string().into_bytes()
}

const CREATE: &str = "mutation { createProduct(input: {sku: \"SKU-1\", name: \"Mug\", price: \"3.00\"}) { sku } }";

#[tokio::test]
async fn bearer_token_unlocks_staff_mutations() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let app = app(dir.path())?;
    // No credentials: a GraphQL error from the guard.
    let (status, body) = post(&app, gql(CREATE), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["errors"][0]["extensions"]["code"], "unauthorized", "{body}");
    // Bad credentials: 401 before the query runs, in the GraphQL error shape.
    for auth in ["Bearer wrong", "Basic http-s3cret", "http-s3cret"] {
        let (status, body) = post(&app, gql(CREATE), Some(auth)).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth}");
        assert_eq!(body["errors"][0]["extensions"]["code"], "unauthorized", "{auth:?}: {body}");
    }
    let (_, body) = post(&app, gql("{ product(sku: \"SKU-1\") { sku } }"), None).await?;
    assert_eq!(body["data"]["product"], Value::Null);

    let (status, body) = post(&app, gql(CREATE), Some(&format!("Bearer {TOKEN}"))).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["createProduct"]["sku"], "SKU-1", "{body}");
    // Reads come from the catalog read model, a few milliseconds behind the write.
    for _ in 0..500 {
        let (_, body) = post(&app, gql("{ product(sku: \"SKU-1\") { price } }"), None).await?;
        if body["data"]["product"]["price"] == "3.00" {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    anyhow::bail!("the created product never became readable")
}

#[tokio::test]
async fn batches_and_oversized_bodies_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let app = app(dir.path())?;
    let batch = json!([{ "query": "{ metrics { ordersProcessed } }" }, { "query": "{ metrics { ordersProcessed } }" }]);
    let (status, body) = post(&app, batch.to_string().into_bytes(), None).await?;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "bad_request", "{body}");

    let (status, body) = post(&app, b"not json".to_vec(), None).await?;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "bad_request", "{body}");

    let padding = " ".repeat(MAX_BODY_BYTES);
    let big = format!("{{\"query\": \"{{ metrics {{ ordersProcessed }} }}{padding}\"}}");
    // Streamed without a length, the limit trips while reading; announced, it is refused up front.
    let (status, body) = post(&app, big.clone().into_bytes(), None).await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["errors"][0]["extensions"]["code"], "payload_too_large", "{body}");
    let req = Request::post("/graphql")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, big.len())
        .body(Body::from(big))?;
    let resp = app.clone().oneshot(req).await?;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 20).await?)?;
    assert_eq!(body["errors"][0]["extensions"]["code"], "payload_too_large", "{body}");

    let (status, body) = post(&app, gql("{ metrics { ordersProcessed } }"), Some(&format!("Bearer {TOKEN}"))).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["metrics"]["ordersProcessed"], 0);
    Ok(())
}

#[tokio::test]
async fn get_serves_graphiql() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let app = app(dir.path())?;
    let resp = app.oneshot(Request::get("/graphql").body(Body::empty())?).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await?;
    let html = String::from_utf8_lossy(&bytes).to_lowercase();
    assert!(html.contains("graphiql") && html.contains("/graphql"), "{html}");
    Ok(())
}

/// The introspection query of current graphql-js, as stock clients send it.
const STOCK_INTROSPECTION: &str = include_str!("fixtures/introspection.graphql");

#[tokio::test]
async fn stock_introspection_passes_while_data_stays_depth_limited() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let app = app(dir.path())?;
    let (status, body) = post(&app, gql(STOCK_INTROSPECTION), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("errors").is_none(), "a stock client's introspection must work: {body}");
    let types = body["data"]["__schema"]["types"].as_array().cloned().unwrap_or_default();
    assert!(types.iter().any(|t| t["name"] == "Order"), "{body}");

    // A data query is still held to the depth limit, also when it asks for introspection beside it.
    let deep_data = format!("{{ __typename orders {{ {} id {} }} }}", "edges { node { ".repeat(7), "} } ".repeat(7));
    let (_, body) = post(&app, gql(&deep_data), None).await?;
    assert_eq!(body["errors"][0]["extensions"]["code"], "invalid_query", "{body}");
    let mixed = format!("{{ __schema {{ types {{ name }} }} {} }}", &deep_data[1..deep_data.len() - 1]);
    let (_, body) = post(&app, gql(&mixed), None).await?;
    assert_eq!(body["errors"][0]["extensions"]["code"], "invalid_query", "{body}");
    // Introspection that nests its lists (each level multiplies the answer) is not exempt from the depth
    // limit, also through fragments, and a fragment cycle is not followed forever.
    let fan_out =
        format!("{{ __schema {{ types {{ {} name {} }} }} }}", "fields { type { ".repeat(6), "} } ".repeat(6));
    let (_, body) = post(&app, gql(&fan_out), None).await?;
    assert_eq!(body["errors"][0]["extensions"]["code"], "invalid_query", "{body}");
    let via_fragments = "{ __schema { types { ...F } } } fragment F on __Type { fields { type { ...G } } } \
                         fragment G on __Type { fields { type { fields { type { fields { type { fields { type { fields { type { name } } } } } } } } } } }";
    let (_, body) = post(&app, gql(via_fragments), None).await?;
    assert_eq!(body["errors"][0]["extensions"]["code"], "invalid_query", "{body}");
    let cycle = "{ __schema { types { ...F } } } fragment F on __Type { ofType { ...F } }";
    let (status, body) = post(&app, gql(cycle), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("errors").is_some(), "{body}");
    Ok(())
}

#[tokio::test]
async fn a_request_past_the_time_limit_is_stopped_with_a_timeout_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let timeout = std::time::Duration::from_millis(300);
    let app = app_with(dir.path(), HttpOptions { timeout, ..HttpOptions::default() })?;
    let staff = format!("Bearer {TOKEN}");
    let (_, body) = post(&app, gql(CREATE), Some(&staff)).await?;
    assert_eq!(body["data"]["createProduct"]["sku"], "SKU-1", "{body}");
    let place = "mutation { placeOrder(input: {orderId: \"slow-1\", userId: \"u\", items: [{sku: \"SKU-1\", quantity: 1}]}) { order { id } } }";
    let (_, body) = post(&app, gql(place), None).await?;
    assert_eq!(body["data"]["placeOrder"]["order"]["id"], "slow-1", "{body}");

    // No order saga runs here, so cancelOrder would wait its full 5 s for the saga to apply the change.
    let started = std::time::Instant::now();
    let (status, body) = post(&app, gql("mutation { cancelOrder(id: \"slow-1\") { status } }"), Some(&staff)).await?;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "timeout", "{body}");
    assert!(took >= timeout && took < std::time::Duration::from_secs(4), "answered after {took:?}");
    Ok(())
}
