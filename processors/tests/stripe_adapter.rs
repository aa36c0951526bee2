//! The Stripe adapter against stripe-mock, Stripe's official mock server, which checks every request
//! against Stripe's OpenAPI specification (`ORDERFLOW_TEST_STRIPE`, `_DECLINE`, `_ACTION`: one instance per
//! fixture set, started by scripts/test-env/up). stripe-mock keeps no state, so each outcome has its own
//! instance: a PaymentIntent there is whatever its fixture says.

#![allow(clippy::unwrap_used)]

use orderflow_platform::conformance::real_engine;
use orderflow_platform::secret::Secret;
use orderflow_processors::payment::stripe::{StripeConfig, StripeProvider, Url};
use orderflow_processors::payment::{Authorisation, Capture, PaymentProvider, PaymentRequest, ProviderError};
use orderflow_schemas::{Currency, Money, OrderId, PaymentMethod, UserId};

fn stripe(base: &str, key: &str) -> StripeProvider {
    let config = StripeConfig { api_base: Url::parse(base).unwrap(), secret_key: Secret::new(key) };
    StripeProvider::new(config).unwrap()
}

struct Payment {
    order: OrderId,
    user: UserId,
    method: PaymentMethod,
}

impl Payment {
    fn new() -> Self {
        Self {
            order: OrderId::parse(format!("o-{}", uuid::Uuid::new_v4().simple())).unwrap(),
            user: UserId::parse("stripe-test-user").unwrap(),
            method: PaymentMethod::parse("pm_card_visa").unwrap(),
        }
    }

    fn request(&self, cents: i64, currency: Currency) -> PaymentRequest<'_> {
        PaymentRequest {
            order: &self.order,
            user: &self.user,
            amount: Money::from_cents(cents).unwrap(),
            currency,
            payment_method: Some(&self.method),
        }
    }

    fn key(&self, step: &str) -> String {
        orderflow_processors::payment::idempotency_key(&self.order, step)
    }
}

#[tokio::test]
async fn authorise_capture_void_and_refund_are_requests_stripe_accepts() {
    let Some(base) = real_engine("ORDERFLOW_TEST_STRIPE") else { return };
    let provider = stripe(&base, "sk_test_orderflow");
    let p = Payment::new();
    let Authorisation::Authorised { payment_id } =
        provider.authorise(&p.key("authorise"), p.request(2_500, Currency::EUR)).await.unwrap()
    else {
        panic!("the success fixture authorises")
    };
    assert!(payment_id.starts_with("pi_"), "{payment_id}");
    let captured = provider.capture(&p.key("capture"), &payment_id, Money::from_cents(2_500).unwrap()).await.unwrap();
    assert_eq!(captured, Capture::Captured { charge_id: payment_id.clone() });
    provider.void(&p.key("void"), &payment_id).await.unwrap();
    let refund =
        provider.refund(&p.key("refund"), &payment_id, Money::from_cents(1_000).unwrap(), Currency::EUR).await.unwrap();
    assert!(refund.starts_with("re_"), "{refund}");
    // A currency without minor units: whole yen go to Stripe; yen with cents cannot.
    let jpy: Currency = "JPY".parse().unwrap();
    let p = Payment::new();
    assert!(matches!(
        provider.authorise(&p.key("authorise"), p.request(150_000, jpy)).await.unwrap(),
        Authorisation::Authorised { .. }
    ));
    assert!(matches!(
        provider.authorise(&p.key("authorise"), p.request(150_050, jpy)).await,
        Err(ProviderError::Refused(_))
    ));
}

#[tokio::test]
async fn a_declined_card_is_declined_with_the_banks_code() {
    let Some(base) = real_engine("ORDERFLOW_TEST_STRIPE_DECLINE") else { return };
    let provider = stripe(&base, "sk_test_orderflow");
    let p = Payment::new();
    let answer = provider.authorise(&p.key("authorise"), p.request(2_500, Currency::EUR)).await.unwrap();
    assert_eq!(
        answer,
        Authorisation::Declined {
            reason: "card_declined (insufficient_funds): Your card has insufficient funds.".into()
        }
    );
    // Never a capture of a payment that is not held: the fixture's status is not `succeeded`.
    let capture = provider.capture(&p.key("capture"), "pi_declined", Money::from_cents(2_500).unwrap()).await.unwrap();
    assert!(matches!(capture, Capture::Failed { .. }), "{capture:?}");
}

#[tokio::test]
async fn authentication_required_is_neither_paid_nor_declined() {
    let Some(base) = real_engine("ORDERFLOW_TEST_STRIPE_ACTION") else { return };
    let provider = stripe(&base, "sk_test_orderflow");
    let p = Payment::new();
    match provider.authorise(&p.key("authorise"), p.request(2_500, Currency::EUR)).await.unwrap() {
        Authorisation::ActionRequired { payment_id, client_secret, next_action } => {
            assert!(payment_id.starts_with("pi_"), "{payment_id}");
            assert!(!client_secret.is_empty());
            assert_eq!(next_action, "use_stripe_sdk");
            // Read back by its id, it is still waiting.
            assert!(matches!(
                provider.lookup(&p.order, &payment_id).await.unwrap(),
                Authorisation::ActionRequired { .. }
            ));
        }
        other => panic!("expected an action, got {other:?}"),
    }
    // A capture answered with `requires_action` is not a capture: it failed, and is never counted as paid.
    let capture = provider.capture(&p.key("capture"), "pi_action", Money::from_cents(2_500).unwrap()).await;
    assert!(matches!(capture, Ok(Capture::Failed { .. })), "{capture:?}");
}

#[tokio::test]
async fn configuration_errors_are_refused_and_an_unreachable_stripe_is_retried() {
    let Some(base) = real_engine("ORDERFLOW_TEST_STRIPE") else { return };
    let p = Payment::new();
    // stripe-mock refuses live keys, as Stripe refuses a wrong one: 401.
    let live = stripe(&base, "rk_live_not_a_real_key");
    let refused = live.authorise(&p.key("authorise"), p.request(2_500, Currency::EUR)).await;
    assert!(matches!(refused, Err(ProviderError::Refused(ref why)) if why.contains("401")), "{refused:?}");
    // Nothing listens on a port just released: the call never left, so it is retried.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down = stripe(&format!("http://{free}"), "sk_test_orderflow");
    let retried = down.authorise(&p.key("authorise"), p.request(2_500, Currency::EUR)).await;
    assert!(matches!(retried, Err(ProviderError::Retryable(_))), "{retried:?}");
}
