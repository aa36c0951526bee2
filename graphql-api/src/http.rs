//! HTTP transport: `POST /graphql` executes one request, `GET /graphql` serves GraphiQL.

use std::sync::Arc;

use async_graphql::http::GraphiQLSource;
use async_graphql_axum::GraphQLResponse;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::map_response;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tower_http::limit::RequestBodyLimitLayer;

use crate::auth::Staff;
use crate::error::codes;
use crate::{ApiState, OrderflowSchema};

/// The largest request body accepted on `/graphql` (256 KiB). A GraphQL request is a query string and
/// its variables; even an order with the maximum 100 items is a few KiB, so this leaves ample room
/// while bounding what a client can make the server buffer and parse.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Clone)]
struct HttpState {
    schema: OrderflowSchema,
    /// Serves requests that ask for nothing but introspection (see [`crate::introspection_schema`]).
    introspection: OrderflowSchema,
    admin_token: Option<Arc<str>>,
}

/// The GraphQL routes. `POST /graphql` takes exactly one request as a JSON object
/// (`Content-Type: application/json`); batches (a JSON array) and multipart uploads are refused with
/// `bad_request`, and bodies over [`MAX_BODY_BYTES`] with 413 `payload_too_large`. An
/// `Authorization: Bearer <token>` header equal to [`ApiState::admin_token`] unlocks staff
/// operations. `GET /graphql` serves the GraphiQL explorer.
pub fn router(state: ApiState) -> Router {
    let admin_token = state.staff_token().map(Arc::from);
    let introspection = crate::introspection_schema(state.clone());
    let schema = crate::schema(state);
    let routes = Router::new()
        .route("/graphql", post(execute).get(graphiql))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        // Outside the limit layer, so its plain-text 413 (sent when Content-Length is too large) is
        // seen and reshaped too.
        .layer(map_response(too_large_in_graphql_shape))
        .with_state(HttpState { schema, introspection, admin_token });
    // Outermost: reads (and discards) the rest of an oversized body before answering, so a client that
    // sends its whole body before reading sees the 413 instead of a reset connection.
    orderflow_ingest::body_limit::limit_body(routes, MAX_BODY_BYTES, too_large)
}

async fn execute(
    State(st): State<HttpState>,
    headers: HeaderMap,
    body: Result<Json<async_graphql::Request>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return refused(&rejection),
    };
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let staff = Staff::from_authorization(authorization, st.admin_token.as_deref());
    let schema = if crate::is_introspection_only(&request.query) { &st.introspection } else { &st.schema };
    GraphQLResponse::from(schema.execute(request.data(staff)).await).into_response()
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
