//! The built-in simulated provider: takes no real money, keeps its own ledger in the store.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_platform::store::{PaymentStore, ProviderEntry};
use orderflow_schemas::{Money, UserId, now_ms};

use super::provider::{CaptureResult, PaymentProvider, ProviderError};

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

/// A provider that takes no real money. It keeps its own ledger (as an external provider would) in the
/// store, one entry per idempotency key. Its charge and refund ids are derived from the key, so two calls
/// with one key (a redelivered command, or an owner and its zombie at the same moment) name the same
/// movement of money.
pub struct SimulatedProvider {
    pub rules: SimulatedRules,
    pub ledger: Arc<dyn PaymentStore>,
}

impl std::fmt::Debug for SimulatedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedProvider").field("rules", &self.rules).finish_non_exhaustive()
    }
}

/// Namespace of the simulated provider's entry ids (name-based UUIDs of the idempotency key).
const ENTRY_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f72_6465_7266_6c6f_7700_0000_0000_0002);

fn entry_id(idempotency_key: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&ENTRY_ID_NAMESPACE, idempotency_key.as_bytes())
}

#[async_trait]
impl PaymentProvider for SimulatedProvider {
    async fn capture(&self, key: &str, user: &UserId, amount: Money) -> Result<CaptureResult, ProviderError> {
        tokio::time::sleep(self.rules.latency).await;
        if self.rules.decline_users.contains(user) {
            return Ok(CaptureResult::Declined { reason: "card declined".into() });
        }
        if let Some(limit) = self.rules.decline_above.filter(|limit| amount > *limit) {
            return Ok(CaptureResult::Declined { reason: format!("amount over the {limit} limit") });
        }
        let entry = ProviderEntry {
            kind: "charge".into(),
            id: format!("ch_{}", entry_id(key).simple()),
            amount,
            at_ms: now_ms(),
        };
        let stored = self.ledger.provider_entry_once(key, &entry).await?;
        Ok(CaptureResult::Captured { charge_id: stored.id })
    }

    async fn refund(&self, key: &str, _charge_id: &str, amount: Money) -> Result<String, ProviderError> {
        tokio::time::sleep(self.rules.latency).await;
        let entry = ProviderEntry {
            kind: "refund".into(),
            id: format!("re_{}", entry_id(key).simple()),
            amount,
            at_ms: now_ms(),
        };
        Ok(self.ledger.provider_entry_once(key, &entry).await?.id)
    }
}
