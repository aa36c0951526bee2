//! The built-in simulated provider: takes no real money, keeps its own ledger (a [`ProviderLedger`], apart
//! from the store).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_platform::ledger::{ProviderEntry, ProviderLedger};
use orderflow_schemas::{Currency, Money, OrderId, UserId, now_ms};

use super::idempotency_key;
use super::provider::{Authorisation, Capture, PaymentProvider, PaymentRequest, ProviderError};

/// Rules of the built-in simulated provider.
#[derive(Debug, Clone, Default)]
pub struct SimulatedRules {
    /// Time each call takes, like a network round trip to a real provider.
    pub latency: Duration,
    /// Decline charges above this amount.
    pub decline_above: Option<Money>,
    /// Decline every charge of these customers.
    pub decline_users: HashSet<UserId>,
}

/// Stripe's test payment methods that decline, which the simulated provider declines the same way, so a
/// storefront can try its decline path on the quick start.
const DECLINING_METHODS: [(&str, &str); 3] = [
    ("pm_card_visa_chargeDeclined", "card_declined (generic_decline): Your card was declined."),
    (
        "pm_card_chargeDeclinedInsufficientFunds",
        "card_declined (insufficient_funds): Your card has insufficient funds.",
    ),
    ("pm_card_chargeDeclinedExpiredCard", "expired_card: Your card has expired."),
];

/// A provider that takes no real money. It keeps its own ledger (as an external provider would), one entry
/// per idempotency key, shared by every payment process of the deployment. Its ids are derived from the order
/// and the key, so two calls with one key (a redelivered command, or an owner and its zombie at the same
/// moment) name the same movement of money.
pub struct SimulatedProvider {
    pub rules: SimulatedRules,
    pub ledger: Arc<dyn ProviderLedger>,
}

impl std::fmt::Debug for SimulatedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedProvider").field("rules", &self.rules).finish_non_exhaustive()
    }
}

/// Namespace of the simulated provider's ids (name-based UUIDs).
const ENTRY_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f72_6465_7266_6c6f_7700_0000_0000_0002);

fn derived(name: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&ENTRY_ID_NAMESPACE, name.as_bytes())
}

/// The payment's id across its steps (what Stripe's PaymentIntent id is).
fn payment_id(order: &OrderId) -> String {
    format!("pay_{}", derived(order.as_str()).simple())
}

impl SimulatedProvider {
    async fn entry(&self, key: &str, kind: &str, id: String, amount: Money) -> Result<ProviderEntry, ProviderError> {
        let entry = ProviderEntry { kind: kind.into(), id, amount, at_ms: now_ms() };
        Ok(self.ledger.record_once(key, &entry).await?)
    }

    fn decline(&self, request: &PaymentRequest<'_>) -> Option<String> {
        if self.rules.decline_users.contains(request.user) {
            return Some("card_declined: card declined".into());
        }
        if let Some(limit) = self.rules.decline_above.filter(|limit| request.amount > *limit) {
            return Some(format!("amount_too_large: amount over the {limit} limit"));
        }
        let method = request.payment_method?.as_str();
        DECLINING_METHODS.iter().find(|(m, _)| *m == method).map(|(_, reason)| (*reason).to_owned())
    }
}

#[async_trait]
impl PaymentProvider for SimulatedProvider {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn authorise(&self, key: &str, request: PaymentRequest<'_>) -> Result<Authorisation, ProviderError> {
        tokio::time::sleep(self.rules.latency).await;
        if let Some(reason) = self.decline(&request) {
            return Ok(Authorisation::Declined { reason });
        }
        let entry = self.entry(key, "authorisation", payment_id(request.order), request.amount).await?;
        Ok(Authorisation::Authorised { payment_id: entry.id })
    }

    /// The simulated provider never waits for a customer; a payment it authorised is in its books under
    /// the order's `authorise` key: one keyed read.
    async fn lookup(&self, order: &OrderId, payment_id: &str) -> Result<Authorisation, ProviderError> {
        let entry = self.ledger.entry(&idempotency_key(order, "authorise")).await?;
        if entry.is_some_and(|e| e.kind == "authorisation" && e.id == payment_id) {
            Ok(Authorisation::Authorised { payment_id: payment_id.to_owned() })
        } else {
            Err(ProviderError::Refused(format!("the simulated provider has no payment {payment_id}")))
        }
    }

    async fn capture(&self, key: &str, payment_id: &str, amount: Money) -> Result<Capture, ProviderError> {
        tokio::time::sleep(self.rules.latency).await;
        let entry = self.entry(key, "charge", payment_id.to_owned(), amount).await?;
        Ok(Capture::Captured { charge_id: entry.id })
    }

    async fn void(&self, key: &str, payment_id: &str) -> Result<(), ProviderError> {
        tokio::time::sleep(self.rules.latency).await;
        self.entry(key, "void", payment_id.to_owned(), Money::ZERO).await?;
        Ok(())
    }

    async fn refund(
        &self,
        key: &str,
        _payment_id: &str,
        amount: Money,
        _currency: Currency,
    ) -> Result<String, ProviderError> {
        tokio::time::sleep(self.rules.latency).await;
        Ok(self.entry(key, "refund", format!("re_{}", derived(key).simple()), amount).await?.id)
    }
}
