//! Stripe: PaymentIntents (create and confirm with manual capture, capture, cancel) and Refunds over
//! Stripe's HTTP API. Every call that moves money carries the caller's idempotency key as Stripe's
//! `Idempotency-Key`, which Stripe answers with its first answer for 24 hours; the adapter never invents a
//! key of its own. Answers are mapped onto the port's types strictly: only `requires_capture` (or
//! `succeeded`) is an authorisation and only `succeeded` is a capture; anything else is never treated as
//! paid.

use std::time::Duration;

use async_trait::async_trait;
use orderflow_platform::secret::Secret;
use orderflow_schemas::{Currency, Money, OrderId};
use reqwest::StatusCode;
pub use reqwest::Url;
use serde::Deserialize;

use super::provider::{Authorisation, Capture, PaymentProvider, PaymentRequest, ProviderError};

/// Stripe's API, the default of `--stripe-api-base`.
pub const STRIPE_API: &str = "https://api.stripe.com";

/// The API version every request pins, so an account's default version cannot change the answers' shape.
pub const STRIPE_API_VERSION: &str = "2026-08-26.dahlia";

/// How long one call may take before its outcome counts as unknown (and is repeated with the same key).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the Stripe adapter needs.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    /// `https://api.stripe.com`, or a stand-in such as stripe-mock (`http://127.0.0.1:12111`).
    pub api_base: Url,
    /// `sk_test_...` or `sk_live_...` (or a restricted `rk_...` key with PaymentIntents and Refunds).
    pub secret_key: Secret,
}

#[derive(Debug)]
pub struct StripeProvider {
    config: StripeConfig,
    http: reqwest::Client,
}

/// The fields of a PaymentIntent orderflow reads.
#[derive(Debug, Deserialize)]
struct PaymentIntent {
    id: String,
    status: String,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    last_payment_error: Option<StripeError>,
    #[serde(default)]
    next_action: Option<NextAction>,
}

#[derive(Debug, Deserialize)]
struct NextAction {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct Refund {
    id: String,
    status: Option<String>,
}

/// Stripe's error object (`{"error": {...}}`), also a PaymentIntent's `last_payment_error`.
#[derive(Debug, Default, Deserialize)]
struct StripeError {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: StripeError,
}

impl StripeError {
    /// `code (decline_code): message`, as an order's rejection reason shows it.
    fn reason(&self) -> String {
        let code = self.code.as_deref().or(self.kind.as_deref()).unwrap_or("payment_failed");
        let mut out = code.to_owned();
        if let Some(decline) = self.decline_code.as_deref().filter(|d| *d != code) {
            out.push_str(&format!(" ({decline})"));
        }
        if let Some(message) = &self.message {
            out.push_str(&format!(": {message}"));
        }
        out
    }
}

/// One answer of Stripe's: the status and the body.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

impl Answer {
    fn error(&self) -> StripeError {
        serde_json::from_slice::<ErrorBody>(&self.body).map(|b| b.error).unwrap_or_default()
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ProviderError::UnknownOutcome(format!(
                "Stripe answered {} with a {what} that cannot be read: {e}",
                self.status
            ))
        })
    }

    /// The error of an answer that is not a success, by what it means for a retry: 429 and 5xx (and 409,
    /// a request with the same key still running) are answered again later; other 4xx mean the request
    /// itself is wrong and no retry can help.
    fn failure(&self, call: &str) -> ProviderError {
        let why = format!("{call}: Stripe answered {}: {}", self.status, self.error().reason());
        match self.status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::CONFLICT => ProviderError::Retryable(why),
            s if s.is_server_error() => ProviderError::Retryable(why),
            _ => ProviderError::Refused(why),
        }
    }
}

impl StripeProvider {
    pub fn new(config: StripeConfig) -> Result<Self, String> {
        let key = config.secret_key.expose();
        if !(key.starts_with("sk_") || key.starts_with("rk_")) {
            return Err("ORDERFLOW_STRIPE_SECRET_KEY must be a Stripe secret key (sk_test_..., sk_live_... or a \
                        restricted rk_... key)"
                .into());
        }
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client for Stripe: {e}"))?;
        Ok(Self { config, http })
    }

    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        self.config.api_base.join(path).map_err(|e| ProviderError::Refused(format!("Stripe URL {path}: {e}")))
    }

    /// A form POST with the idempotency key. A request that never left (no connection) is retryable; one
    /// that may have reached Stripe and got no readable answer has an unknown outcome.
    async fn post(&self, path: &str, key: &str, form: &[(&str, String)]) -> Result<Answer, ProviderError> {
        let response = self
            .http
            .post(self.url(path)?)
            .bearer_auth(self.config.secret_key.expose())
            .header("Idempotency-Key", key)
            .header("Stripe-Version", STRIPE_API_VERSION)
            .form(form)
            .send()
            .await;
        read(path, response).await
    }

    async fn get(&self, path: &str) -> Result<Answer, ProviderError> {
        let response = self
            .http
            .get(self.url(path)?)
            .bearer_auth(self.config.secret_key.expose())
            .header("Stripe-Version", STRIPE_API_VERSION)
            .send()
            .await;
        read(path, response).await
    }

    /// The PaymentIntent as Stripe holds it now (after a call whose answer said it was in another state).
    async fn intent(&self, id: &str) -> Result<PaymentIntent, ProviderError> {
        let answer = self.get(&format!("/v1/payment_intents/{id}")).await?;
        if !answer.status.is_success() {
            return Err(answer.failure("reading the PaymentIntent"));
        }
        answer.parse("PaymentIntent")
    }
}

async fn read(call: &str, response: reqwest::Result<reqwest::Response>) -> Result<Answer, ProviderError> {
    let response = response.map_err(|e| {
        if e.is_connect() {
            ProviderError::Retryable(format!("{call}: cannot reach Stripe: {e}"))
        } else {
            ProviderError::UnknownOutcome(format!("{call}: no answer from Stripe: {e}"))
        }
    })?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| ProviderError::UnknownOutcome(format!("{call}: Stripe's answer was cut off: {e}")))?;
    Ok(Answer { status, body: body.to_vec() })
}

/// Stripe's error code for a call that does not fit the PaymentIntent's state (e.g. capturing twice).
const UNEXPECTED_STATE: &str = "payment_intent_unexpected_state";

#[async_trait]
impl PaymentProvider for StripeProvider {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn authorise(&self, key: &str, request: PaymentRequest<'_>) -> Result<Authorisation, ProviderError> {
        let Some(method) = request.payment_method else {
            // Intake refuses such orders when the provider is Stripe; one from before that, or a partner's
            // (prepaid) order sent here, cannot be charged.
            return Ok(Authorisation::Declined {
                reason: "payment_method_required: the order names no payment method".into(),
            });
        };
        let amount = request
            .currency
            .minor_units(request.amount)
            .map_err(|e| ProviderError::Refused(format!("creating the PaymentIntent: {e}")))?;
        let form = [
            ("amount", amount.to_string()),
            ("currency", request.currency.as_str().to_ascii_lowercase()),
            ("capture_method", "manual".to_owned()),
            ("confirm", "true".to_owned()),
            ("payment_method", method.to_string()),
            ("payment_method_types[]", "card".to_owned()),
            ("description", format!("orderflow order {}", request.order)),
            ("metadata[order_id]", request.order.to_string()),
            ("metadata[user_id]", request.user.to_string()),
        ];
        let answer = self.post("/v1/payment_intents", key, &form).await?;
        if answer.status == StatusCode::PAYMENT_REQUIRED {
            // A card error: declined for good, with the bank's reason.
            return Ok(Authorisation::Declined { reason: answer.error().reason() });
        }
        if !answer.status.is_success() {
            return Err(answer.failure("creating the PaymentIntent"));
        }
        let intent: PaymentIntent = answer.parse("PaymentIntent")?;
        authorisation_of(intent)
    }

    async fn lookup(&self, _order: &OrderId, payment_id: &str) -> Result<Authorisation, ProviderError> {
        authorisation_of(self.intent(payment_id).await?)
    }

    async fn capture(&self, key: &str, payment_id: &str, _amount: Money) -> Result<Capture, ProviderError> {
        let path = format!("/v1/payment_intents/{payment_id}/capture");
        let answer = self.post(&path, key, &[]).await?;
        let intent: PaymentIntent = if answer.status.is_success() {
            answer.parse("PaymentIntent")?
        } else if answer.status == StatusCode::BAD_REQUEST && answer.error().code.as_deref() == Some(UNEXPECTED_STATE) {
            // Captured already (by an earlier call whose answer was lost), or cancelled: Stripe knows which.
            self.intent(payment_id).await?
        } else if answer.status == StatusCode::PAYMENT_REQUIRED {
            return Ok(Capture::Failed { reason: answer.error().reason() });
        } else {
            return Err(answer.failure("capturing the PaymentIntent"));
        };
        match intent.status.as_str() {
            "succeeded" => Ok(Capture::Captured { charge_id: intent.id }),
            // Stripe is still working on it: ask again with the same key.
            "processing" | "requires_capture" => Err(ProviderError::UnknownOutcome(format!(
                "capturing {}: the PaymentIntent is {}",
                intent.id, intent.status
            ))),
            other => Ok(Capture::Failed {
                reason: intent.last_payment_error.map_or_else(|| format!("payment_intent_{other}"), |e| e.reason()),
            }),
        }
    }

    async fn void(&self, key: &str, payment_id: &str) -> Result<(), ProviderError> {
        let path = format!("/v1/payment_intents/{payment_id}/cancel");
        let answer = self.post(&path, key, &[("cancellation_reason", "abandoned".to_owned())]).await?;
        if answer.status.is_success() {
            return Ok(());
        }
        if answer.status == StatusCode::BAD_REQUEST && answer.error().code.as_deref() == Some(UNEXPECTED_STATE) {
            // Cancelled already, or never held (declined): nothing is held either way. Captured: refuse,
            // loudly; a captured payment is paid back with a refund, never voided.
            let intent = self.intent(payment_id).await?;
            return match intent.status.as_str() {
                "succeeded" => Err(ProviderError::Refused(format!("voiding {payment_id}: it was captured"))),
                _ => Ok(()),
            };
        }
        Err(answer.failure("cancelling the PaymentIntent"))
    }

    async fn refund(
        &self,
        key: &str,
        payment_id: &str,
        amount: Money,
        currency: Currency,
    ) -> Result<String, ProviderError> {
        let minor =
            currency.minor_units(amount).map_err(|e| ProviderError::Refused(format!("refunding {payment_id}: {e}")))?;
        let form = [("payment_intent", payment_id.to_owned()), ("amount", minor.to_string())];
        let answer = self.post("/v1/refunds", key, &form).await?;
        if !answer.status.is_success() {
            return Err(answer.failure("creating the refund"));
        }
        let refund: Refund = answer.parse("refund")?;
        match refund.status.as_deref() {
            Some("failed" | "canceled") => Err(ProviderError::Refused(format!(
                "refund {} of {payment_id} is {}: see the Stripe dashboard",
                refund.id,
                refund.status.unwrap_or_default()
            ))),
            _ => Ok(refund.id),
        }
    }
}

/// What a PaymentIntent's status means for an authorisation. Only `requires_capture` (held) and
/// `succeeded` (taken since) count as authorised.
fn authorisation_of(intent: PaymentIntent) -> Result<Authorisation, ProviderError> {
    match intent.status.as_str() {
        "requires_capture" | "succeeded" => Ok(Authorisation::Authorised { payment_id: intent.id }),
        "requires_action" => Ok(Authorisation::ActionRequired {
            client_secret: intent.client_secret.unwrap_or_default(),
            next_action: intent.next_action.map_or_else(|| "use_stripe_sdk".to_owned(), |a| a.kind),
            payment_id: intent.id,
        }),
        "requires_payment_method" => Ok(Authorisation::Declined {
            reason: intent
                .last_payment_error
                .map_or_else(|| "requires_payment_method: the payment method was not accepted".into(), |e| e.reason()),
        }),
        "canceled" => {
            Ok(Authorisation::Declined { reason: format!("canceled: PaymentIntent {} was cancelled", intent.id) })
        }
        // `processing`, `requires_confirmation`: not final; the same call with the same key, later.
        other => Err(ProviderError::UnknownOutcome(format!("PaymentIntent {} is {other}", intent.id))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(status: &str, error: Option<StripeError>) -> PaymentIntent {
        PaymentIntent {
            id: "pi_1".into(),
            status: status.into(),
            client_secret: Some("pi_1_secret".into()),
            last_payment_error: error,
            next_action: None,
        }
    }

    #[test]
    fn only_a_held_or_taken_payment_is_authorised() {
        assert_eq!(
            authorisation_of(intent("requires_capture", None)).unwrap(),
            Authorisation::Authorised { payment_id: "pi_1".into() }
        );
        assert!(matches!(authorisation_of(intent("requires_action", None)), Ok(Authorisation::ActionRequired { .. })));
        let declined = StripeError {
            kind: Some("card_error".into()),
            code: Some("card_declined".into()),
            decline_code: Some("insufficient_funds".into()),
            message: Some("Your card has insufficient funds.".into()),
        };
        assert_eq!(
            authorisation_of(intent("requires_payment_method", Some(declined))).unwrap(),
            Authorisation::Declined {
                reason: "card_declined (insufficient_funds): Your card has insufficient funds.".into()
            }
        );
        assert!(matches!(authorisation_of(intent("canceled", None)), Ok(Authorisation::Declined { .. })));
        for pending in ["processing", "requires_confirmation", "something_new"] {
            assert!(
                matches!(authorisation_of(intent(pending, None)), Err(ProviderError::UnknownOutcome(_))),
                "{pending}"
            );
        }
    }

    #[test]
    fn only_secret_keys_are_accepted() {
        let config =
            |key: &str| StripeConfig { api_base: Url::parse(STRIPE_API).unwrap(), secret_key: Secret::new(key) };
        assert!(StripeProvider::new(config("pk_test_123")).is_err(), "a publishable key cannot charge");
        assert!(StripeProvider::new(config("sk_test_123")).is_ok());
    }
}
