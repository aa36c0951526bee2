//! The simulated provider on its ledger (the embedded adapter's, in a fresh data directory): a payment it
//! authorised is found again by the order and its id, with one keyed read of the ledger; a payment it never
//! authorised is not.

#![allow(clippy::unwrap_used)]

use orderflow_platform::backend::BackendOptions;
use orderflow_processors::payment::{
    Authorisation, PaymentProvider, PaymentRequest, ProviderError, SimulatedProvider, SimulatedRules,
};
use orderflow_schemas::{Currency, Money, OrderId, UserId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_finds_an_authorised_payment_by_its_order() {
    let dir = tempfile::tempdir().unwrap();
    let backends = orderflow_embedded::open(dir.path(), &BackendOptions::default()).unwrap();
    let provider = SimulatedProvider { rules: SimulatedRules::default(), ledger: backends.ledger.clone() };
    let (order, other) = (OrderId::parse("o-sim-1").unwrap(), OrderId::parse("o-sim-2").unwrap());
    let user = UserId::parse("u-sim").unwrap();
    let request = PaymentRequest {
        order: &order,
        user: &user,
        amount: Money::from_cents(1_250).unwrap(),
        currency: Currency::EUR,
        payment_method: None,
    };
    let key = orderflow_processors::payment::idempotency_key(&order, "authorise");
    let Authorisation::Authorised { payment_id } = provider.authorise(&key, request).await.unwrap() else {
        panic!("the simulated provider authorises by default")
    };

    assert_eq!(
        provider.lookup(&order, &payment_id).await.unwrap(),
        Authorisation::Authorised { payment_id: payment_id.clone() }
    );
    // Not this order's payment, or no payment of that order: refused, never taken for authorised.
    assert!(matches!(provider.lookup(&order, "pay_other").await, Err(ProviderError::Refused(_))));
    assert!(matches!(provider.lookup(&other, &payment_id).await, Err(ProviderError::Refused(_))));
    // The authorisation is in the provider's ledger, under the order's `authorise` key.
    let entry = backends.ledger.entry(&key).await.unwrap().unwrap();
    assert_eq!(
        (entry.kind.as_str(), entry.id.as_str(), entry.amount.cents()),
        ("authorisation", payment_id.as_str(), 1_250)
    );
}
