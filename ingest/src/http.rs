//! `POST /v1/orders` and `GET /v1/orders/{order_id}`: the JSON front door for web and mobile clients.
//!
//! Every 4xx/5xx body is `{"code": "...", "message": "..."}` with a stable machine-readable `code`
//! (listed in the README). Internal causes are logged, never returned.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use orderflow_platform::store::Stores;
use orderflow_schemas::order_request::PlaceOrderBody;
use orderflow_schemas::{Currency, IdempotencyKey, Order, OrderId, OrderStatus, UserId, ValueError};
use serde::{Deserialize, Serialize};

use crate::rate_limit::{OrderRateLimiter, Placer, RateLimited};
use crate::{Intake, IntakeError, PlaceOrder};
use orderflow_identity::{AuthMode, Caller, PlaceAsError};
use orderflow_platform::bus::Bus;
use orderflow_processors::requests::ChangeError;

use crate::cancel::{self, CancelError, SIGN_IN_TO_CANCEL};

/// The largest request body accepted on the JSON API.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An API error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route; see the README for the API")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { code: self.code, message: &self.message };
        (self.status, Json(body)).into_response()
    }
}

impl From<ValueError> for ApiError {
    fn from(e: ValueError) -> Self {
        let code = match e.field {
            "order_id" => "invalid_order_id",
            "user_id" => "invalid_user_id",
            "sku" => "invalid_sku",
            "quantity" => "invalid_quantity",
            "total_amount" => "invalid_total_amount",
            "payment_method" => "invalid_payment_method",
            "currency" => "invalid_currency",
            "Idempotency-Key" => "invalid_idempotency_key",
            _ => "invalid_request",
        };
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
    }
}

impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        let status = match &e {
            IntakeError::IdempotencyConflict(_) => StatusCode::CONFLICT,
            IntakeError::Unavailable(cause) => {
                tracing::error!(%cause, "order intake unavailable");
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    e.code(),
                    "temporarily unavailable; retry with the same order_id",
                );
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl ApiError {
    /// 429 `rate_limited`, with `Retry-After`.
    pub fn rate_limited(limited: &RateLimited) -> Response {
        let mut response = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", limited.message()).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(limited.retry_after_secs()));
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonSyntaxError(e) => Self::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {}", source_text(&e)),
            ),
            JsonRejection::JsonDataError(e) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("the JSON does not match the request schema: {}", source_text(&e)),
            ),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body with `Content-Type: application/json`",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            ),
            other => Self::new(other.status(), "invalid_request", other.body_text()),
        }
    }
}

fn source_text(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}

/// `Json` whose rejections are [`ApiError`]s.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(Self(v))
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PlacedBody {
    pub order_id: String,
    pub status: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OrderBody {
    pub order_id: String,
    pub user_id: String,
    pub status: String,
    pub items: Vec<OrderItemBody>,
    pub total_amount: String,
    /// ISO 4217 code of `total_amount` and every `unit_price`.
    pub currency: String,
    /// The provider's reference to the payment method the order is paid with, if it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<String>,
    pub reason: Option<String>,
    pub placed_at_ms: i64,
    pub timeline: Vec<TimelineBody>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OrderItemBody {
    pub sku: String,
    pub quantity: u32,
    pub unit_price: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TimelineBody {
    /// The entry's place in its order's timeline: 1, 2, 3, ... with no gaps (a timeline only grows).
    pub seq: u32,
    pub at_ms: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub detail: String,
}

impl OrderBody {
    /// `o` as the API shows it; an order from before orders had a currency is in `shop`'s.
    pub fn of(o: &Order, shop: Currency) -> Self {
        Self {
            order_id: o.id.to_string(),
            user_id: o.user_id.to_string(),
            status: o.status.as_str().to_owned(),
            items: o
                .lines
                .iter()
                .map(|l| OrderItemBody {
                    sku: l.sku.to_string(),
                    quantity: l.quantity.get(),
                    unit_price: l.unit_price.to_string(),
                })
                .collect(),
            total_amount: o.total.to_string(),
            currency: o.currency_or(shop).to_string(),
            payment_method: o.payment_method.as_ref().map(ToString::to_string),
            reason: o.reason.clone(),
            placed_at_ms: o.placed_at_ms,
            timeline: o
                .timeline
                .iter()
                .zip(1..)
                .map(|(t, seq)| TimelineBody { seq, at_ms: t.at_ms, kind: t.kind.clone(), detail: t.detail.clone() })
                .collect(),
        }
    }
}

/// State of the order routes.
#[derive(Clone, Debug)]
pub struct OrdersApi {
    pub intake: Intake,
    pub stores: Stores,
    /// Where cancellations go to the order saga.
    pub bus: Arc<dyn Bus>,
    /// The order rate limit (see [`crate::rate_limit`]); `None`: off.
    pub rate_limit: Option<Arc<OrderRateLimiter>>,
    /// Whether anonymous callers may place and read orders.
    pub auth_mode: AuthMode,
}

impl From<PlaceAsError> for ApiError {
    fn from(e: PlaceAsError) -> Self {
        let (status, code) = match e {
            PlaceAsError::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthorized"),
            PlaceAsError::NotYou { .. } => (StatusCode::FORBIDDEN, "user_mismatch"),
            PlaceAsError::MissingUserId => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_user_id"),
        };
        Self::new(status, code, e.to_string())
    }
}

async fn place_order(
    State(api): State<OrdersApi>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Result<ApiJson<PlaceOrderBody>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = caller.map(|Extension(c)| c).unwrap_or_default();
    let ApiJson(mut body) = body?;
    let claimed = body.user_id.take().map(UserId::parse).transpose()?;
    body.user_id = Some(caller.place_as(claimed, api.auth_mode)?.to_string());
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(IdempotencyKey::parse(
            v.to_str().map_err(|_| ValueError::new("Idempotency-Key", "must be visible ASCII"))?,
        )?),
    };
    let request = body.parse()?;
    if let Some(limiter) = &api.rate_limit {
        let placer = Placer {
            authenticated: caller.customer(),
            claimed: &request.user_id,
            peer: peer.map(|Extension(ConnectInfo(addr))| addr.ip()),
        };
        if let Err(limited) = limiter.check(&placer) {
            return Ok(ApiError::rate_limited(&limited));
        }
    }
    let placed = api.intake.place(PlaceOrder::new(request, key, "http")).await?;
    let id = placed.order.id.to_string();
    // A repeated request answers with the first request's result, which was always PENDING.
    let mut response =
        (StatusCode::ACCEPTED, Json(PlacedBody { order_id: id.clone(), status: "PENDING".into() })).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/orders/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if placed.replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// `POST /v1/orders/{id}/cancel`: the body is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Why (at most 500 characters); `cancelled by the customer` when left out.
    pub reason: Option<String>,
}

/// The longest cancellation reason accepted.
pub const MAX_REASON_CHARS: usize = 500;

/// Cancels an order before it is out for delivery: its owner (a signed-in customer) or staff. The saga
/// releases the stock and voids the payment's authorisation or refunds its capture. Answers 200 with the
/// order once it is CANCELLED, or 202 with the order as it is if the saga has not applied the request
/// within 5 s (it will). Someone else's order answers as a missing one (404); an anonymous caller 401.
async fn cancel_order(
    State(api): State<OrdersApi>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = caller.map(|Extension(c)| c).unwrap_or_default();
    let body: CancelBody = if body.iter().all(u8::is_ascii_whitespace) {
        CancelBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("the JSON does not match: {e}"),
            ),
            _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not valid JSON: {e}")),
        })?
    };
    let reason = body.reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.chars().count() > MAX_REASON_CHARS) {
        let why = format!("reason: must be at most {MAX_REASON_CHARS} characters");
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_reason", why));
    }
    let order_id = OrderId::parse(id.clone()).ok();
    let now =
        cancel::cancel_order(&api.stores, &*api.bus, &caller, order_id.as_ref(), reason).await.map_err(
            |e| match e {
                CancelError::NotSignedIn => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", SIGN_IN_TO_CANCEL),
                CancelError::NotFound | CancelError::Change(ChangeError::NotFound(_)) => {
                    ApiError::new(StatusCode::NOT_FOUND, "order_not_found", format!("no order with id {id:?}"))
                }
                CancelError::Change(ChangeError::IllegalTransition { from, .. }) => ApiError::new(
                    StatusCode::CONFLICT,
                    "illegal_transition",
                    format!("an order that is {from} can no longer be cancelled"),
                ),
                CancelError::Change(ChangeError::Unavailable(why)) => {
                    tracing::error!(error = %why, "cancelling an order failed");
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "temporarily unavailable; retry")
                }
            },
        )?;
    let status = if now.status == OrderStatus::Cancelled { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(OrderBody::of(&now, api.intake.currency()))).into_response())
}

/// One order. Someone else's order answers exactly as a missing one (404), so ids cannot be probed; an
/// anonymous caller on a server that requires sign-in gets 401.
async fn get_order(
    State(api): State<OrdersApi>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let caller = caller.map(|Extension(c)| c).unwrap_or_default();
    if caller.signed_in_if_required(api.auth_mode).is_err() {
        let why = "reading an order needs a signed-in customer on this server: send `Authorization: Bearer <token>`";
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why));
    }
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "order_not_found", format!("no order with id {id:?}"));
    let Ok(order_id) = OrderId::parse(id.clone()) else { return Err(not_found()) };
    match api.stores.orders.order(&order_id).await {
        Ok(Some(order)) if caller.may_read_order(&order.user_id, api.auth_mode) => {
            Ok(Json(OrderBody::of(&order, api.intake.currency())))
        }
        Ok(Some(_)) => Err(not_found()),
        Ok(None) => Err(not_found()),
        Err(e) => {
            tracing::error!(error = %e, "reading order failed");
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "temporarily unavailable; retry"))
        }
    }
}

/// The order routes, with the body limit applied (see [`crate::body_limit`] for why an oversized body is
/// read before the 413).
pub fn router(api: OrdersApi) -> Router {
    let routes = Router::new()
        .route("/v1/orders", post(place_order))
        .route("/v1/orders/{order_id}", get(get_order))
        .route("/v1/orders/{order_id}/cancel", post(cancel_order))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api);
    crate::body_limit::limit_body(routes, MAX_BODY_BYTES, too_large)
}

fn too_large() -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body is larger than {MAX_BODY_BYTES} bytes"),
    )
    .into_response()
}
