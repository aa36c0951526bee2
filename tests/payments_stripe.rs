//! Payments through Stripe's API, end to end, on each backend: orderflow with `--payment-provider
//! stripe` against stripe-mock (Stripe's official mock server) behind a recording proxy
//! (tests/common/stripe.rs), which picks the outcome by the test payment method as Stripe's test mode
//! does.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::stripe::{DECLINES, NEEDS_ACTION, PAYS, StripeProxy};
use common::{TestApp, scenarios, stock};
use orderflow::config::PaymentProviderName;
use orderflow_platform::BackendUrl;
use orderflow_platform::backend::Namespace;
use orderflow_platform::conformance::real_engine;
use orderflow_platform::store::PaymentRecord;
use orderflow_schemas::OrderId;
use serde_json::{Value, json};

async fn stripe_app(proxy: &StripeProxy, backends: Option<(String, String)>) -> TestApp {
    let base = proxy.base.clone();
    TestApp::start_with(move |s| {
        s.payment_provider = PaymentProviderName::Stripe;
        s.stripe_api_base = base.parse().unwrap();
        s.stripe_secret_key = Some("sk_test_orderflow".into());
        if let Some((kafka, cql)) = backends {
            s.bus = BackendUrl::Kafka(vec![kafka]);
            s.store = BackendUrl::Scylla(vec![cql]);
            // Topics, groups and keyspaces of its own: it runs beside the other apps on the cluster.
            s.namespace = Some(Namespace::parse("it_stripe").unwrap());
        }
    })
    .await
}

fn kinds(order: &Value) -> Vec<String> {
    order["timeline"].as_array().unwrap().iter().map(|t| t["type"].as_str().unwrap().to_owned()).collect()
}

async fn place(app: &TestApp, sku: &str, method: Option<&str>) -> String {
    let id = format!("{sku}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut body = json!({"order_id": id, "user_id": "stripe-customer", "items": [{"sku": sku, "quantity": 2}]});
    if let Some(method) = method {
        body["payment_method"] = json!(method);
    }
    let (status, answer) = app.post_order(body).await;
    assert_eq!(status, 202, "{answer}");
    id
}

/// Per order, the idempotency keys the proxy saw, by the call: exactly one key per step, the step's own.
fn keys_by_call(proxy: &StripeProxy, order: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for call in proxy.calls_for(&format!("{order}:")) {
        out.entry(common::stripe::kind(&call.path).to_owned()).or_default().insert(call.idempotency_key.unwrap());
    }
    out
}

fn keys(pairs: &[(&str, &str)], order: &str) -> BTreeMap<String, BTreeSet<String>> {
    pairs.iter().map(|(call, step)| ((*call).to_owned(), BTreeSet::from([format!("{order}:{step}")]))).collect()
}

async fn payment(app: &TestApp, id: &str) -> Option<PaymentRecord> {
    app.app().backends.stores.payments.payment(&OrderId::parse(id).unwrap()).await.unwrap()
}

async fn stripe_scenarios(app: &TestApp, proxy: &StripeProxy) {
    let sku = scenarios::product(app, 20).await;

    // Paid: authorised, captured, confirmed; one key per step at Stripe.
    let paid = place(app, &sku, Some(PAYS)).await;
    let order = app.wait_status(&paid, &["CONFIRMED"]).await;
    let steps = kinds(&order);
    let at = |k: &str| steps.iter().position(|s| s == k).unwrap_or_else(|| panic!("{k} missing: {steps:?}"));
    assert!(at("payment_authorised") < at("payment_captured") && at("payment_captured") < at("confirmed"));
    assert_eq!(order["payment_method"], PAYS);
    let Some(PaymentRecord::Captured { charge_id, amount }) = payment(app, &paid).await else { panic!("not captured") };
    assert!(charge_id.starts_with("pi_"), "{charge_id}");
    assert_eq!(amount.cents(), 800);
    assert_eq!(keys_by_call(proxy, &paid), keys(&[("create", "authorise"), ("capture", "capture")], &paid));
    assert_eq!(stock(app, &sku).await, (18, 2));

    // No payment method: Stripe cannot charge the order, so it is refused at the door.
    let (status, answer) =
        app.post_order(json!({"user_id": "stripe-customer", "items": [{"sku": sku, "quantity": 1}]})).await;
    assert_eq!((status, answer["code"].as_str()), (422, Some("payment_method_required")), "{answer}");

    // Declined: REJECTED with the bank's code, the stock back, nothing to void or refund.
    let declined = place(app, &sku, Some(DECLINES)).await;
    let order = app.wait_status(&declined, &["REJECTED"]).await;
    let reason = order["reason"].as_str().unwrap();
    assert!(reason.starts_with("payment_declined: card_declined (insufficient_funds)"), "{reason}");
    assert_eq!(keys_by_call(proxy, &declined), keys(&[("create", "authorise")], &declined));

    // 3-D Secure asked for: not paid, never treated as paid; the authorisation is voided and the order
    // rejected.
    let action = place(app, &sku, Some(NEEDS_ACTION)).await;
    let order = app.wait_status(&action, &["REJECTED"]).await;
    assert!(order["reason"].as_str().unwrap().contains("authentication_required"), "{order}");
    assert_eq!(keys_by_call(proxy, &action), keys(&[("create", "authorise"), ("cancel", "void")], &action));

    // The confirmed order cancelled by staff: one refund of the whole capture.
    let v = app
        .gql(
            "mutation($id: ID!){ cancelOrder(id: $id, reason: \"customer called\"){ status } }",
            json!({"id": paid}),
            true,
        )
        .await;
    assert_eq!(v["data"]["cancelOrder"]["status"], "CANCELLED", "{v}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !matches!(payment(app, &paid).await, Some(PaymentRecord::Refunded { .. })) {
        assert!(std::time::Instant::now() < deadline, "no refund recorded: {:?}", payment(app, &paid).await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        keys_by_call(proxy, &paid),
        keys(&[("create", "authorise"), ("capture", "capture"), ("refund", "refund")], &paid)
    );
    // Every unit is back: the paid order's two after its cancellation, the others' after their rejection.
    assert_eq!(stock(app, &sku).await, (20, 0));
    // Every call Stripe answered was accepted by its API specification.
    for call in proxy.calls() {
        assert!(call.status < 300, "stripe-mock refused a request: {call:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_payments_on_embedded() {
    let Some(proxy) = StripeProxy::start().await else { return };
    let app = stripe_app(&proxy, None).await;
    stripe_scenarios(&app, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_payments_on_kafka_and_cql() {
    let (Some(kafka), Some(cql)) = (real_engine("ORDERFLOW_TEST_KAFKA"), real_engine("ORDERFLOW_TEST_CQL")) else {
        return;
    };
    let Some(proxy) = StripeProxy::start().await else { return };
    let app = stripe_app(&proxy, Some((kafka, cql))).await;
    stripe_scenarios(&app, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_without_a_secret_key_stops_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = common::settings(dir.path());
    settings.payment_provider = PaymentProviderName::Stripe;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = orderflow::App::start(&settings, orderflow::Roles::all(), listener).await.err().unwrap();
    assert!(err.to_string().contains("ORDERFLOW_STRIPE_SECRET_KEY"), "{err}");
}
