//! The HTTP server: hyper's HTTP/1 connection with a header-read timeout, the limits on the API
//! routes (a per-request timeout and a concurrency limit that sheds load instead of queueing it), and
//! the CORS allow-list for browser clients.

use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use orderflow_ingest::http::ApiError;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, ServiceBuilder, ServiceExt as _};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The limits of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Requests handled at once on the API routes; one more is refused with 503 `overloaded` at once.
    pub max_concurrent_requests: usize,
    /// Longest time from a request's arrival to its response (reading the body included).
    pub request_timeout: Duration,
    /// Longest time a connection may take to send a request's headers (also how long an idle keep-alive
    /// connection stays open); past it the connection is closed.
    pub header_read_timeout: Duration,
}

/// What an overloaded server tells clients to wait before retrying, in seconds. Short: the limit is on
/// requests in flight, which come and go in milliseconds.
const RETRY_AFTER_SECS: &str = "1";

/// Wraps the API routes in the request timeout and the concurrency limit. The limit is global (one
/// semaphore for every route: `GlobalConcurrencyLimitLayer`, since `Router::layer` applies a layer per
/// route) and sheds: a request that finds it full is answered 503 + `Retry-After` at once, so a burst
/// cannot queue without bound in memory while every queued client times out anyway.
pub fn limit_api(api: Router, limits: &HttpLimits) -> Router {
    api.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(limit_error))
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(limits.max_concurrent_requests.max(1)))
            .timeout(limits.request_timeout),
    )
}

/// How long browsers may cache a preflight answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS policy for the API routes, or `None` if no origin is allowed (then no CORS header is ever
/// sent and browsers refuse cross-origin calls). `origins` are validated by the configuration; `*`
/// allows any origin. Preflights (`OPTIONS` with `Access-Control-Request-Method`) are answered by the
/// layer itself; the headers a client needs to read (`Location`, `Retry-After`, `Idempotent-Replayed`)
/// are exposed. No credentials mode: staff send a bearer token, which needs none.
pub fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| match HeaderValue::from_str(o) {
                Ok(v) => Some(v),
                Err(_) => {
                    tracing::warn!(origin = %o, "ignoring a CORS origin that is not a valid header value");
                    None
                }
            })
            .collect();
        AllowOrigin::list(list)
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, HeaderName::from_static("idempotency-key")])
            .expose_headers([header::LOCATION, header::RETRY_AFTER, HeaderName::from_static("idempotent-replayed")])
            .max_age(CORS_MAX_AGE),
    )
}

/// The answer to a request the limits stopped, in the API's JSON error shape.
async fn limit_error(e: BoxError) -> Response {
    if e.is::<tower::load_shed::error::Overloaded>() {
        metrics::counter!("orderflow_http_requests_shed_total").increment(1);
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the server is handling as many requests as it is configured to; retry after a second",
        )
        .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        response
    } else if e.is::<tower::timeout::error::Elapsed>() {
        metrics::counter!("orderflow_http_requests_timed_out_total").increment(1);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request did not finish in time; retry (an order retried with the same order_id is placed once)",
        )
        .into_response()
    } else {
        tracing::error!(error = %e, "HTTP middleware failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; it has been logged")
            .into_response()
    }
}

/// How long to wait before accepting again after `accept` failed (e.g. out of file descriptors), so the
/// loop does not spin while the cause lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `shutdown`, then stops accepting and waits for open connections to
/// finish their requests (idle keep-alive connections are closed). axum's own `serve` offers no
/// header-read timeout, hence hyper's connection builder here. Each request carries its connection's
/// peer address as axum's `ConnectInfo<SocketAddr>` (the order rate limit may key by it).
pub async fn serve(listener: TcpListener, app: Router, header_read_timeout: Duration, shutdown: CancellationToken) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let service = app.clone().map_request(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        let connection = http1.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Clients that go away, send garbage or time out end up here; nothing to do but note it.
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
