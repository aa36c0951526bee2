//! Payments through Stripe's API, end to end, on each backend: orderflow with `--payment-provider
//! stripe` against stripe-mock (Stripe's official mock server) behind a recording proxy
//! (tests/common/stripe.rs), which picks the outcome by the test payment method as Stripe's test mode
//! does.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::stripe::{DECLINES, NEEDS_ACTION, PAYS, StripeProxy};
use common::{TestApp, scenarios, stock};
use orderflow::config::{CaptureOnArg, PaymentProviderName};
use orderflow_platform::BackendUrl;
use orderflow_platform::backend::Namespace;
use orderflow_platform::conformance::real_engine;
use orderflow_platform::store::PaymentRecord;
use orderflow_processors::payment::stripe_webhook;
use orderflow_schemas::OrderId;
use serde_json::{Value, json};

async fn stripe_app(proxy: &StripeProxy, backends: Option<(String, String)>) -> TestApp {
    stripe_app_capturing_on(proxy, backends, CaptureOnArg::Confirmation).await
}

async fn stripe_app_capturing_on(
    proxy: &StripeProxy,
    backends: Option<(String, String)>,
    capture_on: CaptureOnArg,
) -> TestApp {
    let base = proxy.base.clone();
    TestApp::start_with(move |s| {
        s.capture_on = capture_on;
        s.payment_provider = PaymentProviderName::Stripe;
        s.stripe_api_base = base.parse().unwrap();
        s.stripe_secret_key = Some("sk_test_orderflow".into());
        s.stripe_webhook_secret = Some(format!("whsec_rolled_out,{WEBHOOK_SECRET}").as_str().into());
        if let Some((kafka, cql)) = backends {
            s.bus = BackendUrl::Kafka(vec![kafka]);
            s.store = BackendUrl::Scylla(vec![cql]);
            // Topics, groups and keyspaces of its own: it runs beside the other apps on the cluster.
            let namespace = if capture_on == CaptureOnArg::Dispatch { "it_stripe_disp" } else { "it_stripe" };
            s.namespace = Some(Namespace::parse(namespace).unwrap());
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

const WEBHOOK_SECRET: &str = "whsec_orderflow_test";

fn webhook_event(kind: &str, payment_id: &str, order: &str) -> String {
    json!({
        "id": format!("evt_{}", uuid::Uuid::new_v4().simple()),
        "object": "event",
        "type": kind,
        "data": {"object": {"id": payment_id, "object": "payment_intent", "metadata": {"order_id": order}}},
    })
    .to_string()
}

/// Stripe's `charge.refunded` for `order`'s payment with `refunded` cents refunded in all (the refunds
/// are not listed, as in API versions since 2022-11-15).
fn charge_refunded_event(payment_id: &str, order: &str, refunded: i64) -> String {
    json!({
        "id": format!("evt_{}", uuid::Uuid::new_v4().simple()),
        "object": "event",
        "type": "charge.refunded",
        "data": {"object": {"id": format!("ch_{}", uuid::Uuid::new_v4().simple()), "object": "charge",
            "payment_intent": payment_id, "amount": 800, "amount_refunded": refunded, "currency": "eur",
            "refunded": false, "metadata": {"order_id": order}}},
    })
    .to_string()
}

/// The `Stripe-Signature` Stripe would send, `skew` seconds from now.
fn sign(body: &str, skew: i64) -> String {
    stripe_webhook::sign(WEBHOOK_SECRET, orderflow_schemas::now_ms() / 1000 + skew, body.as_bytes())
}

async fn deliver(app: &TestApp, body: &str, signature: &str) -> (u16, Value) {
    let resp = app
        .http
        .post(format!("{}/v1/webhooks/stripe", app.base))
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

/// Waits until the order's payment waits for the customer, as its customer sees it over GraphQL; the
/// PaymentIntent's id.
async fn wait_for_action(app: &TestApp, id: &str) -> String {
    let query = "query($id: ID!){ order(id: $id){ status payment { status paymentId clientSecret nextAction } } }";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let v = app.gql(query, json!({"id": id}), false).await;
        let payment = &v["data"]["order"]["payment"];
        if payment["status"] == "ACTION_REQUIRED" {
            assert_eq!(v["data"]["order"]["status"], "PROCESSING", "{v}");
            assert_eq!(payment["nextAction"], "use_stripe_sdk", "{v}");
            // Anonymous callers (open mode) see the payment but not its secret: that is the customer's.
            assert_eq!(payment["clientSecret"], Value::Null, "{v}");
            return payment["paymentId"].as_str().unwrap().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "the payment never waited for the customer: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
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

    // A product priced in yen, a currency without minor units: Stripe gets whole yen in that currency.
    // Ordered with a product in the shop's currency (EUR), it is refused: one order, one currency.
    let yen = scenarios::unique("SKU-JPY");
    let v = app
        .gql_stock_change(
            "mutation($i: CreateProductInput!){ createProduct(input: $i){ currency } }",
            json!({"i": {"sku": yen, "name": "matcha", "price": "1500", "currency": "jpy", "stock": 5}}),
        )
        .await;
    assert_eq!(v["data"]["createProduct"]["currency"], "JPY", "{v}");
    scenarios::visible(app, &yen).await;
    let mixed = json!({"user_id": "stripe-customer", "payment_method": PAYS,
                       "items": [{"sku": sku, "quantity": 1}, {"sku": yen, "quantity": 1}]});
    let (status, answer) = app.post_order(mixed).await;
    assert_eq!((status, answer["code"].as_str()), (422, Some("currency_mismatch")), "{answer}");
    let (status, answer) = app
        .post_order(json!({"user_id": "stripe-customer", "payment_method": PAYS, "currency": "EUR",
                           "items": [{"sku": yen, "quantity": 1}]}))
        .await;
    assert_eq!((status, answer["code"].as_str()), (422, Some("currency_mismatch")), "{answer}");
    let in_yen = place(app, &yen, Some(PAYS)).await;
    let order = app.wait_status(&in_yen, &["CONFIRMED"]).await;
    assert_eq!((order["currency"].as_str(), order["total_amount"].as_str()), (Some("JPY"), Some("3000.00")));
    let create = proxy.calls_for(&format!("{in_yen}:authorise")).pop().unwrap();
    assert_eq!((create.field("currency"), create.field("amount")), (Some("jpy"), Some("3000")), "{create:?}");

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

    // 3-D Secure asked for: the order waits, PROCESSING, never treated as paid; its customer sees what to
    // do. Stripe's webhook says they did: the payment goes on under the same keys, the order is confirmed.
    let action = place(app, &sku, Some(NEEDS_ACTION)).await;
    let payment_id = wait_for_action(app, &action).await;
    assert_eq!(app.get_order(&action).await.1["status"], "PROCESSING");
    proxy.complete_action(&payment_id);
    let completed = webhook_event("payment_intent.amount_capturable_updated", &payment_id, &action);
    let (status, answer) = deliver(app, &completed, &sign(&completed, 0)).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("payment_resumed")), "{answer}");
    let order = app.wait_status(&action, &["CONFIRMED"]).await;
    assert!(kinds(&order).contains(&"payment_captured".to_owned()), "{order}");
    // The same delivery again (Stripe retries): acknowledged, nothing changes.
    let (status, answer) = deliver(app, &completed, &sign(&completed, 0)).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("duplicate")), "{answer}");
    // A forged or replayed-late delivery changes nothing either.
    let forged = webhook_event("payment_intent.amount_capturable_updated", &payment_id, &declined);
    let bad = stripe_webhook::sign("whsec_not_ours", orderflow_schemas::now_ms() / 1000, forged.as_bytes());
    assert_eq!(deliver(app, &forged, &bad).await.1["code"], "invalid_signature");
    assert_eq!(deliver(app, &forged, &sign(&forged, -301)).await.1["code"], "stale_timestamp");
    assert_eq!(app.get_order(&declined).await.1["status"], "REJECTED");
    assert_eq!(
        keys_by_call(proxy, &action),
        keys(&[("create", "authorise"), ("capture", "capture")], &action),
        "the same keys before and after the customer acted"
    );

    // A webhook that arrives while the payment role still waits for Stripe's answer (a slow network)
    // changes nothing: the order ends as it would have, one key per step.
    let early = format!("{sku}-early");
    proxy.delay_next("create", std::time::Duration::from_secs(2));
    let (status, answer) = app
        .post_order(json!({"order_id": early, "user_id": "stripe-customer", "items": [{"sku": sku, "quantity": 2}], "payment_method": PAYS}))
        .await;
    assert_eq!(status, 202, "{answer}");
    proxy.held().await;
    let before = webhook_event("payment_intent.amount_capturable_updated", "pi_early", &early);
    assert_eq!(deliver(app, &before, &sign(&before, 0)).await.0, 200);
    app.wait_status(&early, &["CONFIRMED"]).await;
    assert_eq!(keys_by_call(proxy, &early), keys(&[("create", "authorise"), ("capture", "capture")], &early));

    // Staff pay part of it back (a damaged item): once per key, never more than is left.
    let refund = "mutation($id: ID!, $a: Decimal!, $k: String){ refundOrder(id: $id, amount: $a, reason: \"damaged\", \
                  idempotencyKey: $k){ timeline { type detail } payment { status refundableAmount } } }";
    for _ in 0..2 {
        let v = app.gql(refund, json!({"id": paid, "a": "3.00", "k": "damaged-1"}), true).await;
        let order = &v["data"]["refundOrder"];
        assert_eq!(order["payment"]["status"], "PARTLY_REFUNDED", "{v}");
        assert_eq!(order["payment"]["refundableAmount"], "5.00", "{v}");
        let refunds = order["timeline"].as_array().unwrap().iter().filter(|t| t["type"] == "refunded").count();
        assert_eq!(refunds, 1, "{v}");
    }
    // Stripe reports the refund orderflow made: the books have it, nothing changes. Then one made in the
    // Stripe dashboard (1.50 more in all): the books gain it, the timeline shows it, once.
    let Some(PaymentRecord::PartlyRefunded { charge_id: intent, .. }) = payment(app, &paid).await else {
        panic!("not partly refunded")
    };
    let ours = charge_refunded_event(&intent, &paid, 300);
    assert_eq!(deliver(app, &ours, &sign(&ours, 0)).await.1["outcome"], "refund_recorded");
    let dashboard = charge_refunded_event(&intent, &paid, 450);
    assert_eq!(deliver(app, &dashboard, &sign(&dashboard, 0)).await.1["outcome"], "refund_recorded");
    assert_eq!(deliver(app, &dashboard, &sign(&dashboard, 0)).await.1["outcome"], "duplicate");
    let left = "query($id: ID!){ order(id: $id){ payment { refundableAmount } } }";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let v = app.gql(left, json!({"id": paid}), true).await;
        if v["data"]["order"]["payment"]["refundableAmount"] == "3.50" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the dashboard refund never reached the books: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let v = app.gql(left, json!({"id": paid}), true).await;
    assert_eq!(v["data"]["order"]["payment"]["refundableAmount"], "3.50", "counted once: {v}");

    let v = app.gql(refund, json!({"id": paid, "a": "5.01", "k": "too-much"}), true).await;
    assert_eq!(v["errors"][0]["extensions"]["code"], "refund_exceeds_payment", "{v}");
    let v = app.gql(refund, json!({"id": declined, "a": "1.00"}), true).await;
    assert_eq!(v["errors"][0]["extensions"]["code"], "nothing_to_refund", "{v}");

    // The confirmed order cancelled by staff: what is left of the capture goes back, once.
    let v = app
        .gql(
            "mutation($id: ID!){ cancelOrder(id: $id, reason: \"customer called\"){ status } }",
            json!({"id": paid}),
            true,
        )
        .await;
    assert_eq!(v["data"]["cancelOrder"]["status"], "CANCELLED", "{v}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !matches!(payment(app, &paid).await, Some(PaymentRecord::Refunded { amount, .. }) if amount.cents() == 350) {
        assert!(std::time::Instant::now() < deadline, "no refund recorded: {:?}", payment(app, &paid).await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut want = keys(&[("create", "authorise"), ("capture", "capture"), ("refund", "refund")], &paid);
    want.get_mut("refund").unwrap().insert(format!("{paid}:refund:damaged-1"));
    assert_eq!(keys_by_call(proxy, &paid), want);
    let refunds: Vec<i64> = app.get_order(&paid).await.1["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == "refunded")
        .map(|t| {
            t["detail"].as_str().unwrap().rsplit(" of ").next().unwrap().trim_end_matches(" cents").parse().unwrap()
        })
        .collect();
    assert_eq!(refunds, [300, 150, 350], "the partial refund, the dashboard's, then the rest");
    // Every unit is back but the confirmed orders': the paid order's two after its cancellation, the
    // declined order's after its rejection.
    assert_eq!(stock(app, &sku).await, (16, 4));
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

/// `--capture-on dispatch`: CONFIRMED on the authorisation, captured when staff send the order out for
/// delivery; a capture refused then cancels the order, voids the authorisation and gives the stock back.
/// Waits (at most 20 s) until the SKU's stock is `want` (available, reserved): releases and commits
/// reach inventory after the order's own step.
async fn settled_stock(app: &TestApp, sku: &str, want: (i64, i64)) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while stock(app, sku).await != want {
        assert!(
            std::time::Instant::now() < deadline,
            "stock of {sku} stayed {:?}, not {want:?}",
            stock(app, sku).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn capture_at_dispatch(app: &TestApp, proxy: &StripeProxy) {
    let sku = scenarios::product(app, 10).await;
    let move_to = |id: &str, status: &str| {
        let m = "mutation($id: ID!, $s: OrderStatus!){ updateOrderStatus(id: $id, status: $s){ status reason } }";
        let vars = json!({"id": id, "s": status});
        async move { app.gql(m, vars, true).await["data"]["updateOrderStatus"].clone() }
    };

    let shipped = place(app, &sku, Some(PAYS)).await;
    let order = app.wait_status(&shipped, &["CONFIRMED"]).await;
    assert!(!kinds(&order).contains(&"payment_captured".to_owned()), "{order}");
    assert!(matches!(payment(app, &shipped).await, Some(PaymentRecord::Authorised { .. })));
    assert_eq!(keys_by_call(proxy, &shipped), keys(&[("create", "authorise")], &shipped), "held, not taken");
    assert_eq!(move_to(&shipped, "PREPARING").await["status"], "PREPARING");
    assert_eq!(move_to(&shipped, "OUT_FOR_DELIVERY").await["status"], "OUT_FOR_DELIVERY");
    let order = app.get_order(&shipped).await.1;
    let steps = kinds(&order);
    let at = |k: &str| steps.iter().position(|s| s == k).unwrap_or_else(|| panic!("{k} missing: {steps:?}"));
    assert!(at("confirmed") < at("capture_requested") && at("capture_requested") < at("payment_captured"));
    assert!(at("payment_captured") < at("out_for_delivery"), "{steps:?}");
    assert!(
        matches!(payment(app, &shipped).await, Some(PaymentRecord::Captured { amount, .. }) if amount.cents() == 800)
    );
    assert_eq!(keys_by_call(proxy, &shipped), keys(&[("create", "authorise"), ("capture", "capture")], &shipped));
    settled_stock(app, &sku, (8, 0)).await; // its two units left as sold

    // The bank refuses the capture at dispatch: cancelled, the authorisation voided, the units back.
    let refused = place(app, &sku, Some(PAYS)).await;
    app.wait_status(&refused, &["CONFIRMED"]).await;
    assert_eq!(move_to(&refused, "PREPARING").await["status"], "PREPARING");
    proxy.decline_next("capture");
    let order = move_to(&refused, "OUT_FOR_DELIVERY").await;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    let reason = order["reason"].as_str().unwrap();
    assert!(reason.starts_with("payment_capture_failed: card_declined"), "{order}");
    assert!(reason.ends_with(" voided)") && reason.contains("(authorisation pi_"), "{order}");
    assert_eq!(
        keys_by_call(proxy, &refused),
        keys(&[("create", "authorise"), ("capture", "capture"), ("cancel", "void")], &refused)
    );
    assert!(matches!(payment(app, &refused).await, Some(PaymentRecord::Declined { .. })));
    settled_stock(app, &sku, (8, 0)).await;

    // Cancelled by staff before dispatch: nothing was taken, so the authorisation is voided, not refunded.
    let cancelled = place(app, &sku, Some(PAYS)).await;
    app.wait_status(&cancelled, &["CONFIRMED"]).await;
    assert_eq!(move_to(&cancelled, "CANCELLED").await["status"], "CANCELLED");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !kinds(&app.get_order(&cancelled).await.1).contains(&"payment_voided".to_owned()) {
        assert!(std::time::Instant::now() < deadline, "no payment_voided: {}", app.get_order(&cancelled).await.1);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(keys_by_call(proxy, &cancelled), keys(&[("create", "authorise"), ("cancel", "void")], &cancelled));
    settled_stock(app, &sku, (8, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_at_dispatch_on_embedded() {
    let Some(proxy) = StripeProxy::start().await else { return };
    let app = stripe_app_capturing_on(&proxy, None, CaptureOnArg::Dispatch).await;
    capture_at_dispatch(&app, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_at_dispatch_on_kafka_and_cql() {
    let (Some(kafka), Some(cql)) = (real_engine("ORDERFLOW_TEST_KAFKA"), real_engine("ORDERFLOW_TEST_CQL")) else {
        return;
    };
    let Some(proxy) = StripeProxy::start().await else { return };
    let app = stripe_app_capturing_on(&proxy, Some((kafka, cql)), CaptureOnArg::Dispatch).await;
    capture_at_dispatch(&app, &proxy).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_the_customer_never_completes_is_voided_and_the_order_rejected() {
    let Some(proxy) = StripeProxy::start().await else { return };
    let keys_dir = tempfile::tempdir().unwrap();
    let mut tokens = None;
    let base = proxy.base.clone();
    let app = TestApp::start_with(|s| {
        s.payment_provider = PaymentProviderName::Stripe;
        s.stripe_api_base = base.parse().unwrap();
        s.stripe_secret_key = Some("sk_test_orderflow".into());
        s.stuck_order_timeout = std::time::Duration::from_secs(3);
        tokens = Some(common::authz::with_jwt(s, keys_dir.path(), orderflow::AuthModeArg::Open));
    })
    .await;
    let alice = tokens.unwrap().customer("alice");
    let sku = scenarios::product(&app, 5).await;
    let body = json!({"items": [{"sku": sku, "quantity": 1}], "payment_method": NEEDS_ACTION});
    let (_, placed) = app.post_as("/v1/orders", Some(&alice), body).await;
    let id = placed["order_id"].as_str().unwrap().to_owned();
    wait_for_action(&app, &id).await;
    // Its customer gets the client secret their app completes the payment with.
    let mine =
        app.gql_as(&alice, "query($id: ID!){ order(id: $id){ payment { clientSecret } } }", json!({"id": id})).await;
    assert!(mine["data"]["order"]["payment"]["clientSecret"].as_str().is_some_and(|s| !s.is_empty()), "{mine}");
    assert_eq!(stock(&app, &sku).await, (4, 1), "the unit is held while the customer may still pay");

    // Not completed within the timeout: rejected, the authorisation voided under its key, the unit back.
    let order = common::wait_status(&app.http, &app.base, &id, &["REJECTED"], std::time::Duration::from_secs(30)).await;
    assert_eq!(order["reason"], "timed_out", "{order}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !matches!(payment(&app, &id).await, Some(PaymentRecord::Voided { .. })) {
        assert!(std::time::Instant::now() < deadline, "not voided: {:?}", payment(&app, &id).await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(keys_by_call(&proxy, &id), keys(&[("create", "authorise"), ("cancel", "void")], &id));
    assert_eq!(stock(&app, &sku).await, (5, 0));
    // The release is in the order's timeline with the provider's id, after the rejection.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let order = app.get_order(&id).await.1;
        let steps = kinds(&order);
        if let Some(voided) = steps.iter().position(|k| k == "payment_voided") {
            assert!(steps.iter().position(|k| k == "rejected").is_some_and(|r| r < voided), "{steps:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no payment_voided in the timeline: {order}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
