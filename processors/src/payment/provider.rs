//! The payment provider port: what orderflow asks of a payment service provider, and the typed answers
//! and errors every adapter maps its provider's onto. An adapter must honour the idempotency key: the
//! same key twice is one movement of money, whenever and from whichever process it is sent.
//!
//! A payment goes through two steps, as card payments do: [`PaymentProvider::authorise`] holds the amount
//! on the customer's payment method, [`PaymentProvider::capture`] takes it. An authorisation that will
//! not be captured is voided ([`PaymentProvider::void`]); a capture is paid back with
//! [`PaymentProvider::refund`]. Every adapter names the payment by one id across the steps (Stripe: the
//! PaymentIntent).

use async_trait::async_trait;
use orderflow_platform::bus::HandlerError;
use orderflow_platform::store::StoreError;
use orderflow_schemas::{Currency, Money, OrderId, PaymentMethod, UserId};

/// What a payment is for: the order, who pays, how much, and with what.
#[derive(Debug, Clone, Copy)]
pub struct PaymentRequest<'a> {
    pub order: &'a OrderId,
    pub user: &'a UserId,
    pub amount: Money,
    pub currency: Currency,
    /// The provider's reference to the customer's payment method; `None` where the provider needs none.
    pub payment_method: Option<&'a PaymentMethod>,
}

/// A provider's final answer to an authorisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorisation {
    /// The amount is held (or, answered again for a payment captured since, was taken).
    Authorised { payment_id: String },
    /// Refused for good: the provider's code and message (e.g. `card_declined (insufficient_funds): Your
    /// card has insufficient funds.`).
    Declined { reason: String },
    /// The customer must act first (3-D Secure): the payment waits for them. `next_action` is the
    /// provider's name for what they must do (Stripe: `use_stripe_sdk`, `redirect_to_url`).
    ActionRequired { payment_id: String, client_secret: String, next_action: String },
}

/// A provider's final answer to a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    Captured {
        charge_id: String,
    },
    /// The provider refused to take the held amount (e.g. the authorisation expired): the order cannot be
    /// paid and is rejected, its authorisation voided.
    Failed {
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
    /// The provider refuses the request itself (a bad key, a parameter it does not accept): no retry can
    /// succeed until an operator fixes the configuration, so the command waits where it is, loudly.
    #[error("payment provider refused the request: {0}")]
    Refused(String),
    /// The provider's own books could not be reached (the simulated provider keeps them in its ledger).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every kind of error leaves the command where it is: it is retried in place, with the same key.
impl From<ProviderError> for HandlerError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Store(e) => e.into(),
            other => HandlerError::Transient(other.to_string()),
        }
    }
}

/// A payment service provider. Implementations must honour the idempotency key: the same key twice is
/// one movement of money.
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    /// The provider's name in logs and metrics (`simulated`, `stripe`).
    fn name(&self) -> &'static str;
    async fn authorise(
        &self,
        idempotency_key: &str,
        request: PaymentRequest<'_>,
    ) -> Result<Authorisation, ProviderError>;
    async fn capture(&self, idempotency_key: &str, payment_id: &str, amount: Money) -> Result<Capture, ProviderError>;
    /// The payment of `order` as the provider holds it now, read back by its id (after the customer acted,
    /// or to settle an answer that was lost): authorised, declined, or still waiting for the customer.
    /// `order` is for providers that find a payment by the order's keys (the simulated one); others go by
    /// `payment_id` alone.
    async fn lookup(&self, order: &OrderId, payment_id: &str) -> Result<Authorisation, ProviderError>;
    /// Releases an authorisation that will not be captured.
    async fn void(&self, idempotency_key: &str, payment_id: &str) -> Result<(), ProviderError>;
    /// Pays `amount` (in `currency`, the payment's) of a captured payment back; returns the refund's id.
    async fn refund(
        &self,
        idempotency_key: &str,
        payment_id: &str,
        amount: Money,
        currency: Currency,
    ) -> Result<String, ProviderError>;
}
