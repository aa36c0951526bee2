//! HTTP transport: `POST /graphql` executes one request, `GET /graphql` serves GraphiQL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::GraphiQLSource;
use async_graphql_axum::GraphQLResponse;
use axum::Extension;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::map_response;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tower_http::limit::RequestBodyLimitLayer;

use orderflow_identity::Caller;
use orderflow_ingest::rate_limit::OrderRateLimiter;

use crate::error::codes;
use crate::limits::Peer;
use crate::{ApiState, OrderflowSchema};

/// The largest request body accepted on `/graphql` (256 KiB). A GraphQL request is a query string and
/// its variables; even an order with the maximum 100 items is a few KiB, so this leaves ample room
/// while bounding what a client can make the server buffer and parse.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// How long one request may run when [`HttpOptions::timeout`] is not set otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the GraphQL routes are served.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Longest time one request may run (parsing, validation and every resolver); past it the request is
    /// stopped and answered 503 with a GraphQL error of code `timeout`.
    pub timeout: Duration,
    /// The order rate limit `placeOrder` counts against (see [`crate::limits`]); `None`: off.
    pub rate_limit: Option<Arc<OrderRateLimiter>>,
    /// Introspection and the GraphiQL explorer on `GET /graphql` (off in production).
    pub introspection: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self { timeout: DEFAULT_TIMEOUT, rate_limit: None, introspection: true }
    }
}

#[derive(Clone)]
struct HttpState {
    schema: OrderflowSchema,
    /// Serves requests that ask for nothing but introspection (see [`crate::introspection_schema`]);
    /// `None` with introspection off (they go to `schema`, which refuses them).
    introspection: Option<OrderflowSchema>,
    timeout: Duration,
}

/// The GraphQL routes. `POST /graphql` takes exactly one request as a JSON object
/// (`Content-Type: application/json`); batches (a JSON array) and multipart uploads are refused with
/// `bad_request`, and bodies over [`MAX_BODY_BYTES`] with 413 `payload_too_large`. Who the
/// caller is comes from the request's [`orderflow_identity::Caller`] extension (anonymous without one),
/// which the `orderflow_identity::http::authenticate` middleware puts there. `GET /graphql` serves the GraphiQL explorer. Served with the default [`HttpOptions`].
pub fn router(state: ApiState) -> Router {
    router_with(state, HttpOptions::default())
}

/// [`router`] with `options`.
pub fn router_with(state: ApiState, options: HttpOptions) -> Router {
    let introspection = if options.introspection { Some(crate::introspection_schema(state.clone())) } else { None };
    let schema = crate::schema_with(state, options.rate_limit, options.introspection);
    let routes = if options.introspection {
        Router::new().route("/graphql", post(execute).get(graphiql))
    } else {
        Router::new().route("/graphql", post(execute))
    };
    let routes = routes
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        // Outside the limit layer, so its plain-text 413 (sent when Content-Length is too large) is
        // seen and reshaped too.
        .layer(map_response(too_large_in_graphql_shape))
        .with_state(HttpState { schema, introspection, timeout: options.timeout });
    // Outermost: reads (and discards) the rest of an oversized body before answering, so a client that
    // sends its whole body before reading sees the 413 instead of a reset connection.
    orderflow_ingest::body_limit::limit_body(routes, MAX_BODY_BYTES, too_large)
}

async fn execute(
    State(st): State<HttpState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<async_graphql::Request>, JsonRejection>,
) -> Response {
    let mut request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return refused(&rejection),
    };
    request = request.data(caller.map(|Extension(c)| c).unwrap_or_default());
    if let Some(Extension(ConnectInfo(addr))) = peer {
        request = request.data(Peer(addr));
    }
    let schema = match &st.introspection {
        Some(introspection) if crate::is_introspection_only(&request.query) => introspection,
        _ => &st.schema,
    };
    // Dropping the execution at the deadline stops it at its next await; a mutation stopped that way may
    // or may not have taken effect, as with any lost response, and every mutation is safe to retry.
    let Ok(response) = tokio::time::timeout(st.timeout, schema.execute(request)).await else {
        metrics::counter!("orderflow_graphql_requests_timed_out_total").increment(1);
        let message = format!(
            "the request ran longer than {} and was stopped; retry, or ask for less",
            humantime::format_duration(st.timeout)
        );
        return error_response(StatusCode::SERVICE_UNAVAILABLE, codes::TIMEOUT, &message);
    };
    let retry_after = rate_limited(&response);
    let mut answer = GraphQLResponse::from(response).into_response();
    if let Some(secs) = retry_after {
        *answer.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        answer.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    answer
}

/// `Retry-After` (seconds) if the request was refused by the order rate limit.
fn rate_limited(response: &async_graphql::Response) -> Option<u64> {
    use async_graphql::Value;
    let extensions = response.errors.first()?.extensions.as_ref()?;
    if extensions.get("code") != Some(&Value::from(codes::RATE_LIMITED)) {
        return None;
    }
    match extensions.get("retryAfterSeconds") {
        Some(Value::Number(n)) => n.as_u64(),
        _ => Some(1),
    }
}

/// A body that is not one GraphQL request, answered in the GraphQL error shape so clients parse it the
/// same way.
fn refused(rejection: &JsonRejection) -> Response {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large();
    }
    let message = format!(
        "expected one GraphQL request as a JSON object with Content-Type: application/json \
         (batches are not accepted): {}",
        rejection.body_text()
    );
    error_response(status, codes::BAD_REQUEST, &message)
}

fn too_large() -> Response {
    let message = format!("the request body is larger than {MAX_BODY_BYTES} bytes");
    error_response(StatusCode::PAYLOAD_TOO_LARGE, codes::PAYLOAD_TOO_LARGE, &message)
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, Json(body)).into_response()
}

async fn too_large_in_graphql_shape(response: Response) -> Response {
    let is_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json { too_large() } else { response }
}

async fn graphiql() -> Html<String> {
    Html(GraphiQLSource::build().endpoint("/graphql").finish())
}
