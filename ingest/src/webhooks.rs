//! `POST /v1/webhooks/stripe`: Stripe's events about orderflow's PaymentIntents.
//!
//! A delivery is checked before anything else ([`stripe_webhook::verify`]: the `Stripe-Signature` header,
//! 300 s tolerance, every configured secret): a bad or stale one is a 400 and changes nothing. An event
//! about an order's payment that waited for the customer (3-D Secure completed, failed, or cancelled) is
//! recorded under its Stripe event id in the order's requests (a repeated delivery is then a 200 that
//! changes nothing) and sends the order's payment command to the payment role again, which reads the
//! PaymentIntent back and goes on from its last stored step under the same idempotency keys. The command
//! is the same whether it arrives before, during or after the payment role's own call, so the order ends
//! in the same state in every order of arrival. A `charge.refunded` event about an order's payment
//! (a refund orderflow made, or one made in the Stripe dashboard) goes to the payment role with the total
//! Stripe reports refunded; the role records what its books lack, moving no money, and the order's
//! timeline shows it. Other events are acknowledged and ignored.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use orderflow_platform::bus::{Bus, BusRecord};
use orderflow_platform::secret::Secret;
use orderflow_platform::store::Stores;
use orderflow_processors::payment::stripe_webhook::{self, WebhookEvent};
use orderflow_processors::requests;
use orderflow_schemas::events::RefundPayment;
use orderflow_schemas::{Envelope, EventId, codec, topics};
use serde_json::json;

use crate::http::ApiError;

/// Stripe's events are small; anything larger is not one.
const MAX_EVENT_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct StripeWebhooks {
    pub stores: Stores,
    pub bus: Arc<dyn Bus>,
    /// `ORDERFLOW_STRIPE_WEBHOOK_SECRET`: one or more `whsec_...` (comma-separated while rolling).
    pub secrets: Arc<[Secret]>,
}

impl std::fmt::Debug for StripeWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeWebhooks").field("secrets", &self.secrets.len()).finish_non_exhaustive()
    }
}

pub fn router(api: StripeWebhooks) -> Router {
    Router::new()
        .route("/v1/webhooks/stripe", post(stripe))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_EVENT_BYTES))
        .with_state(api)
}

fn counted(outcome: &'static str) {
    metrics::counter!("orderflow_webhooks_total", "provider" => "stripe", "outcome" => outcome).increment(1);
}

fn received(outcome: &'static str) -> Response {
    counted(outcome);
    (StatusCode::OK, Json(json!({"received": true, "outcome": outcome}))).into_response()
}

async fn stripe(State(api): State<StripeWebhooks>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let header = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    let now = orderflow_schemas::now_ms() / 1000;
    if let Err(e) = stripe_webhook::verify(&api.secrets, header, &body, now) {
        counted("refused");
        tracing::warn!(error = %e, "a Stripe webhook delivery was refused");
        return Err(ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()));
    }
    let event = WebhookEvent::parse(&body).map_err(|why| {
        counted("refused");
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_event", why)
    })?;
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, event = %event.id, "{what} failed for a Stripe webhook");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "temporarily unavailable; Stripe retries")
    };
    let Some(order_id) = event.order.as_ref().filter(|_| event.moves_payment() || event.refunded.is_some()) else {
        return Ok(received("ignored"));
    };
    let Some(order) = api.stores.orders.order(order_id).await.map_err(|e| unavailable("reading the order", &e))? else {
        // A PaymentIntent of another deployment on the same Stripe account, or of an order never stored.
        tracing::warn!(event = %event.id, order = %order_id, "a Stripe webhook names an order this deployment does not have");
        return Ok(received("unknown_order"));
    };
    let event_id = EventId::for_key(&event.id, "stripe-webhook");
    let orders = &api.stores.orders;
    if let Some(refunded) = &event.refunded {
        // Recorded before it is published (the payment role acts only on a recorded request), and
        // published again on a repeated delivery: the payment role records one refund per event id.
        let seen =
            orders.recorded_request(&order.id, event_id).await.map_err(|e| unavailable("reading the requests", &e))?;
        let body = RefundPayment {
            refund_reason: "refunded at Stripe".into(),
            refund_key: Some(format!("stripe:{}", event.id)),
            currency: order.currency,
            provider_refunded_cents: Some(refunded.total.cents()),
            provider_refund_id: refunded.latest_refund_id.clone(),
            ..Default::default()
        };
        let envelope = Envelope::new(event_id, order.id.clone(), body);
        requests::record_and_publish(&**orders, &*api.bus, topics::PAYMENTS, &envelope)
            .await
            .map_err(|e| unavailable("recording and publishing", &e))?;
        tracing::info!(event = %event.id, order = %order.id, total = %refunded.total, "Stripe reports a refund");
        return Ok(received(if seen.is_some() { "duplicate" } else { "refund_recorded" }));
    }
    if orders
        .recorded_request(&order.id, event_id)
        .await
        .map_err(|e| unavailable("reading the requests", &e))?
        .is_some()
    {
        return Ok(received("duplicate"));
    }
    let envelope = Envelope::new(event_id, order.id.clone(), orderflow_processors::saga::capture_command(&order));
    let payload = codec::encode(&envelope).map_err(|e| unavailable("encoding", &e))?;
    api.bus
        .publish(vec![BusRecord::new(topics::PAYMENTS, order.id.as_str(), payload)])
        .await
        .map_err(|e| unavailable("publishing", &e))?;
    // Recorded once published: a delivery that failed before this point is retried by Stripe and acts then.
    let request = format!("stripe:{}", event.kind);
    orders.record_request(&order.id, event_id, &request).await.map_err(|e| unavailable("recording", &e))?;
    tracing::info!(event = %event.id, kind = %event.kind, order = %order.id, "a Stripe webhook resumed a payment");
    Ok(received("payment_resumed"))
}
