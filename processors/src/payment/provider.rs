//! The payment provider port: what orderflow asks of a payment service provider, and the typed answers
//! and errors every adapter maps its provider's onto. An adapter must honour the idempotency key: the
//! same key twice is one movement of money, whenever and from whichever process it is sent.

use async_trait::async_trait;
use orderflow_platform::bus::HandlerError;
use orderflow_platform::store::StoreError;
use orderflow_schemas::{Money, UserId};

/// What a provider answered to a capture: a final answer (a call that ended in neither is an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureResult {
    Captured {
        charge_id: String,
    },
    /// Declined for good (the provider's code and message, e.g. `card_declined: insufficient funds`).
    Declined {
        reason: String,
    },
}

/// Why a provider call gave no final answer.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Nothing happened at the provider, or it asks to be called again (the network, 429, 5xx): the same
    /// call with the same key, later.
    #[error("payment provider unavailable: {0}")]
    Retryable(String),
    /// The call may or may not have acted (a timeout after the request was sent, an answer that cannot be
    /// read): resolved only by repeating it with the same key, never by a call under a new one.
    #[error("payment provider outcome unknown: {0}")]
    UnknownOutcome(String),
    /// The provider's own books could not be reached (the simulated provider keeps them in the store).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Both kinds of error leave the command where it is: it is retried in place, with the same key.
impl From<ProviderError> for HandlerError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Store(e) => e.into(),
            other => HandlerError::Transient(other.to_string()),
        }
    }
}

/// A payment service provider. Implementations must honour the idempotency key: the same key twice is
/// one charge.
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    async fn capture(
        &self,
        idempotency_key: &str,
        user: &UserId,
        amount: Money,
    ) -> Result<CaptureResult, ProviderError>;
    async fn refund(&self, idempotency_key: &str, charge_id: &str, amount: Money) -> Result<String, ProviderError>;
}
