//! A recording proxy in front of stripe-mock (Stripe's official mock server, started by
//! scripts/test-env/up), for end-to-end payment tests.
//!
//! stripe-mock validates every request against Stripe's OpenAPI specification but keeps no state: a
//! PaymentIntent is whatever its fixture says, so the test environment runs one instance per outcome
//! (`ORDERFLOW_TEST_STRIPE`: authorised and captured; `_DECLINE`: declined for insufficient funds;
//! `_ACTION`: 3-D Secure required). Stripe's own test mode picks the outcome by the test payment method
//! (`pm_card_visa`, `pm_card_chargeDeclinedInsufficientFunds`, `pm_card_authenticationRequired`); this
//! proxy does the same by sending a PaymentIntent's creation to the instance of its payment method, and
//! every later call on it (capture, cancel, refund) to that same instance. Every request and answer is
//! forwarded unchanged and recorded: path, `Idempotency-Key` and status, for the tests' exactly-once
//! checks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use orderflow_platform::conformance::real_engine;

/// The test payment methods, by the outcome Stripe's test mode gives them.
pub const PAYS: &str = "pm_card_visa";
pub const DECLINES: &str = "pm_card_chargeDeclinedInsufficientFunds";
pub const NEEDS_ACTION: &str = "pm_card_authenticationRequired";

/// One request that went through the proxy.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    /// The form the call sent (`amount=800&currency=eur&...`).
    pub form: String,
    pub status: u16,
}

impl Call {
    /// The value of `name` in the call's form.
    pub fn field(&self, name: &str) -> Option<&str> {
        form_value(&self.form, name)
    }
}

struct Shared {
    success: String,
    decline: String,
    action: String,
    http: reqwest::Client,
    /// PaymentIntent id -> the instance that created it.
    owner: Mutex<HashMap<String, String>>,
    calls: Mutex<Vec<Call>>,
    /// The kind of call ([`kind`]) to hold once: forwarded (Stripe acts on it), then never answered.
    hold: Mutex<Option<(&'static str, Option<std::time::Duration>)>>,
    held: tokio::sync::Notify,
    /// The kind of call ([`kind`]) to answer once with a 402 decline.
    decline_next: Mutex<Option<&'static str>>,
}

/// What a call to Stripe's API does: `create` (a PaymentIntent), `capture`, `cancel`, `refund`, or its
/// path's last segment.
pub fn kind(path: &str) -> &str {
    match path {
        "/v1/payment_intents" => "create",
        "/v1/refunds" => "refund",
        other => other.rsplit('/').next().unwrap_or(other),
    }
}

pub struct StripeProxy {
    pub base: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StripeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn form_value<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

impl StripeProxy {
    /// `None` (the test skips) when the test environment has no stripe-mock, unless real engines are
    /// required.
    pub async fn start() -> Option<StripeProxy> {
        let success = real_engine("ORDERFLOW_TEST_STRIPE")?;
        let decline = real_engine("ORDERFLOW_TEST_STRIPE_DECLINE")?;
        let action = real_engine("ORDERFLOW_TEST_STRIPE_ACTION")?;
        let shared = Arc::new(Shared {
            success,
            decline,
            action,
            http: reqwest::Client::new(),
            owner: Mutex::default(),
            calls: Mutex::default(),
            hold: Mutex::default(),
            held: tokio::sync::Notify::new(),
            decline_next: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = axum::Router::new().fallback(forward).with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Some(StripeProxy { base, shared, task })
    }

    /// Holds the next call of `kind`: Stripe gets it and acts on it, its caller never gets the answer
    /// (a crash or a lost connection after the provider acted). [`StripeProxy::held`] waits for it.
    pub fn hold_next(&self, kind: &'static str) {
        *self.shared.hold.lock().unwrap() = Some((kind, None));
    }

    /// Answers the next call of `kind` only `delay` after Stripe answered it (a slow network);
    /// [`StripeProxy::held`] returns as soon as Stripe has it.
    pub fn delay_next(&self, kind: &'static str, delay: std::time::Duration) {
        *self.shared.hold.lock().unwrap() = Some((kind, Some(delay)));
    }

    /// Answers the next call of `kind` as Stripe answers a card its bank refuses at that step (402
    /// `card_declined`, Stripe's documented error object), without passing it on: a capture can fail so
    /// when the authorisation has expired or the bank withdraws it, which no stripe-mock fixture models.
    pub fn decline_next(&self, kind: &'static str) {
        *self.shared.decline_next.lock().unwrap() = Some(kind);
    }

    /// The customer completed the action their bank asked for (3-D Secure): from now on Stripe holds
    /// `payment_id` as paid (its calls go to the success instance).
    pub fn complete_action(&self, payment_id: &str) {
        self.shared.owner.lock().unwrap().insert(payment_id.to_owned(), self.shared.success.clone());
    }

    /// Returns once the call [`StripeProxy::hold_next`] asked for has reached Stripe.
    pub async fn held(&self) {
        self.shared.held.notified().await;
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// The calls that carried an idempotency key starting with `prefix` (an order's `<order>:`).
    pub fn calls_for(&self, prefix: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.idempotency_key.as_deref().is_some_and(|k| k.starts_with(prefix)))
            .collect()
    }
}

async fn forward(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let text = String::from_utf8_lossy(&body).into_owned();
    let declined = {
        let mut decline = shared.decline_next.lock().unwrap();
        let hit = *decline == Some(kind(&path));
        if hit {
            *decline = None;
        }
        hit
    };
    let idempotency_key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if declined {
        shared.calls.lock().unwrap().push(Call {
            method: method.to_string(),
            path,
            idempotency_key,
            form: text,
            status: 402,
        });
        let error = serde_json::json!({"error": {"type": "card_error", "code": "card_declined",
            "decline_code": "generic_decline", "message": "Your card was declined."}});
        return (StatusCode::PAYMENT_REQUIRED, axum::Json(error)).into_response();
    }
    let instance = {
        let owner = shared.owner.lock().unwrap();
        let intent = path.strip_prefix("/v1/payment_intents/").and_then(|rest| rest.split('/').next());
        let refunded = form_value(&text, "payment_intent");
        match intent.or(refunded).and_then(|id| owner.get(id)) {
            Some(instance) => instance.clone(),
            None => match form_value(&text, "payment_method") {
                Some(DECLINES) => shared.decline.clone(),
                Some(NEEDS_ACTION) => shared.action.clone(),
                _ => shared.success.clone(),
            },
        }
    };
    let mut request = shared.http.request(method.clone(), format!("{instance}{}", uri));
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let answer = match request.body(body).send().await {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = answer.status();
    let content_type = answer.headers().get("content-type").cloned();
    let bytes = answer.bytes().await.unwrap_or_default();
    if method == Method::POST && path == "/v1/payment_intents" && status.is_success() {
        let intent: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if let Some(id) = intent["id"].as_str() {
            shared.owner.lock().unwrap().insert(id.to_owned(), instance);
        }
    }
    let held = {
        let mut hold = shared.hold.lock().unwrap();
        match *hold {
            Some((k, delay)) if k == kind(&path) => {
                *hold = None;
                Some(delay)
            }
            _ => None,
        }
    };
    shared.calls.lock().unwrap().push(Call {
        method: method.to_string(),
        path,
        idempotency_key,
        form: text,
        status: status.as_u16(),
    });
    if let Some(delay) = held {
        shared.held.notify_one();
        match delay {
            Some(delay) => tokio::time::sleep(delay).await,
            None => std::future::pending::<()>().await,
        }
    }
    let mut response = (StatusCode::from_u16(status.as_u16()).unwrap(), bytes).into_response();
    if let Some(content_type) = content_type {
        response.headers_mut().insert("content-type", content_type.to_str().unwrap().parse().unwrap());
    }
    response
}
