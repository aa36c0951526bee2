//! Stripe's webhooks: the `Stripe-Signature` check and the events orderflow acts on.
//!
//! Stripe signs each delivery with every webhook secret the endpoint has (two while a secret is rolled):
//! `Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">[,v1=...]`. A delivery is
//! accepted when one `v1` matches one configured secret (compared in constant time) and `t` is within
//! [`TOLERANCE_SECS`] of now, so a captured delivery cannot be replayed later.

use hmac::{Hmac, KeyInit, Mac};
use orderflow_platform::secret::Secret;
use orderflow_schemas::{Currency, Money, OrderId};
use serde::Deserialize;
use sha2::Sha256;

/// How far a delivery's timestamp may be from now, either way (Stripe's libraries use the same).
pub const TOLERANCE_SECS: i64 = 300;

/// Why a delivery was refused. Each is a 400 and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no Stripe-Signature header")]
    Missing,
    #[error("the Stripe-Signature header has no timestamp (t=) or no v1 signature")]
    Malformed,
    #[error("the delivery's timestamp is {0} s from now, more than the {TOLERANCE_SECS} s allowed")]
    Stale(i64),
    #[error("no v1 signature matches a configured webhook secret")]
    Mismatch,
}

impl SignatureError {
    /// The stable code of the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing | Self::Malformed => "invalid_signature_header",
            Self::Stale(_) => "stale_timestamp",
            Self::Mismatch => "invalid_signature",
        }
    }
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Checks a delivery's `Stripe-Signature` header against the body as received (before any parsing) and
/// every configured secret, at `now` (Unix seconds).
pub fn verify(secrets: &[Secret], header: Option<&str>, body: &[u8], now: i64) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", sig)) => signatures.extend(hex(sig)),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let skew = now - timestamp;
    if skew.abs() > TOLERANCE_SECS {
        return Err(SignatureError::Stale(skew));
    }
    let signed = |secret: &Secret| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).ok()?;
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        Some(mac)
    };
    let matches = secrets.iter().filter_map(signed).any(|mac| {
        // `verify_slice` compares in constant time.
        signatures.iter().any(|sig| mac.clone().verify_slice(sig).is_ok())
    });
    if matches { Ok(()) } else { Err(SignatureError::Mismatch) }
}

/// The `Stripe-Signature` header Stripe would send for `body` at `timestamp` with `secret` (for tests and
/// for trying the endpoint by hand).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let sig: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={sig}")
}

/// The parts of an event orderflow reads.
#[derive(Debug, Deserialize)]
struct EventBody {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Debug, Deserialize)]
struct EventData {
    object: EventObject,
}

#[derive(Debug, Default, Deserialize)]
struct EventObject {
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    metadata: std::collections::HashMap<String, String>,
    /// A Charge's PaymentIntent.
    #[serde(default)]
    payment_intent: Option<String>,
    /// A Charge's refunded total, in the currency's minor units.
    #[serde(default)]
    amount_refunded: Option<i64>,
    #[serde(default)]
    currency: Option<String>,
    /// A Charge's refunds, newest first; Stripe includes them only in API versions before 2022-11-15.
    #[serde(default)]
    refunds: Option<RefundList>,
}

#[derive(Debug, Default, Deserialize)]
struct RefundList {
    #[serde(default)]
    data: Vec<RefundItem>,
}

#[derive(Debug, Default, Deserialize)]
struct RefundItem {
    id: String,
}

/// What a `charge.refunded` event reports: refunds made by orderflow, or outside it (the Stripe
/// dashboard, another integration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundedAtProvider {
    /// The PaymentIntent the charge belongs to.
    pub payment_id: String,
    /// Everything refunded of the charge so far.
    pub total: Money,
    /// The newest refund's id, when the event lists them.
    pub latest_refund_id: Option<String>,
}

/// A verified event, as orderflow acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    /// Stripe's event id (`evt_...`): a delivery repeated by Stripe carries the same.
    pub id: String,
    /// `payment_intent.succeeded`, `payment_intent.amount_capturable_updated`, ...
    pub kind: String,
    /// The order the PaymentIntent was created for (its `metadata.order_id`), when the event is about one
    /// of orderflow's PaymentIntents.
    pub order: Option<OrderId>,
    /// The PaymentIntent's id.
    pub payment_id: Option<String>,
    /// A `charge.refunded` event about one of orderflow's payments (its `order` is set too).
    pub refunded: Option<RefundedAtProvider>,
}

impl WebhookEvent {
    /// Parses a verified body. `Err` for a body that is not a Stripe event.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let event: EventBody = serde_json::from_slice(body).map_err(|e| format!("not a Stripe event: {e}"))?;
        let object = event.data.object;
        let is_intent = object.object.as_deref() == Some("payment_intent");
        // Stripe copies a PaymentIntent's metadata (`order_id`) to the charge it creates.
        let is_refunded_charge = object.object.as_deref() == Some("charge") && event.kind == "charge.refunded";
        let order = match object.metadata.get("order_id") {
            Some(id) if is_intent || is_refunded_charge => {
                Some(OrderId::parse(id.clone()).map_err(|e| format!("metadata.order_id: {e}"))?)
            }
            _ => None,
        };
        // Only about one of orderflow's payments (another integration's charges are acknowledged and left).
        let ours = is_refunded_charge && order.is_some();
        let refunded = match (ours, &object.payment_intent, object.amount_refunded, &object.currency) {
            (true, Some(payment_id), Some(units), Some(currency)) => {
                let currency = Currency::parse("currency", currency).map_err(|e| format!("currency: {e}"))?;
                Some(RefundedAtProvider {
                    payment_id: payment_id.clone(),
                    total: currency.from_minor_units(units).map_err(|e| format!("amount_refunded: {e}"))?,
                    latest_refund_id: object.refunds.and_then(|r| r.data.into_iter().next()).map(|r| r.id),
                })
            }
            (true, ..) => {
                return Err("a charge.refunded event without payment_intent, amount_refunded or currency".into());
            }
            _ => None,
        };
        let payment_id = if is_intent { object.id } else { None };
        Ok(Self {
            id: event.id,
            kind: event.kind,
            order: order.filter(|_| is_intent || refunded.is_some()),
            payment_id,
            refunded,
        })
    }

    /// Whether the event may change the payment of its order: a PaymentIntent that was waiting for the
    /// customer (3-D Secure) has been authorised, paid, or has failed.
    pub fn moves_payment(&self) -> bool {
        self.order.is_some()
            && self.refunded.is_none()
            && matches!(
                self.kind.as_str(),
                "payment_intent.amount_capturable_updated"
                    | "payment_intent.succeeded"
                    | "payment_intent.payment_failed"
                    | "payment_intent.canceled"
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","type":"payment_intent.succeeded","data":{"object":{"object":"payment_intent","id":"pi_1","metadata":{"order_id":"o-1"}}}}"#;

    fn secrets(s: &[&str]) -> Vec<Secret> {
        s.iter().map(|s| Secret::new(*s)).collect()
    }

    #[test]
    fn a_signed_delivery_verifies_and_anything_else_does_not() {
        let header = sign("whsec_a", NOW, BODY);
        assert_eq!(verify(&secrets(&["whsec_a"]), Some(&header), BODY, NOW + 10), Ok(()));
        assert_eq!(verify(&secrets(&["whsec_b"]), Some(&header), BODY, NOW), Err(SignatureError::Mismatch));
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 1;
        assert_eq!(verify(&secrets(&["whsec_a"]), Some(&header), &tampered, NOW), Err(SignatureError::Mismatch));
        assert_eq!(verify(&secrets(&["whsec_a"]), Some(&header), BODY, NOW + 301), Err(SignatureError::Stale(301)));
        assert_eq!(verify(&secrets(&["whsec_a"]), Some(&header), BODY, NOW - 301), Err(SignatureError::Stale(-301)));
        assert_eq!(verify(&secrets(&["whsec_a"]), None, BODY, NOW), Err(SignatureError::Missing));
        for bad in
            ["", "v1=00", "t=abc,v1=00", &format!("t={NOW}"), &format!("t={NOW},v1=zz"), &format!("t={NOW},v0=00")]
        {
            assert_eq!(verify(&secrets(&["whsec_a"]), Some(bad), BODY, NOW), Err(SignatureError::Malformed), "{bad}");
        }
    }

    #[test]
    fn during_a_secret_rotation_either_signature_and_either_secret_verify() {
        let old = sign("whsec_old", NOW, BODY);
        let new = sign("whsec_new", NOW, BODY);
        let sig = |h: &str| h.split_once(",v1=").unwrap().1.to_owned();
        // Stripe sends one v1 per active secret; orderflow may still hold only one of them.
        let both = format!("t={NOW},v1={},v1={}", sig(&old), sig(&new));
        assert_eq!(verify(&secrets(&["whsec_new"]), Some(&both), BODY, NOW), Ok(()));
        assert_eq!(verify(&secrets(&["whsec_old"]), Some(&both), BODY, NOW), Ok(()));
        // orderflow configured with both while it rolls its own configuration.
        assert_eq!(verify(&secrets(&["whsec_old", "whsec_new"]), Some(&new), BODY, NOW), Ok(()));
    }

    #[test]
    fn events_name_their_order_only_for_payment_intents() {
        let event = WebhookEvent::parse(BODY).unwrap();
        assert_eq!(event.order, Some(OrderId::parse("o-1").unwrap()));
        assert_eq!(event.payment_id.as_deref(), Some("pi_1"));
        assert!(event.moves_payment());
        let charge = br#"{"id":"evt_2","type":"charge.succeeded","data":{"object":{"object":"charge","id":"ch_1","metadata":{"order_id":"o-1"}}}}"#;
        let event = WebhookEvent::parse(charge).unwrap();
        assert_eq!((event.order.clone(), event.moves_payment()), (None, false));
        assert!(WebhookEvent::parse(b"{}").is_err());
    }

    #[test]
    fn a_refunded_charge_reports_its_total_in_the_charges_currency() {
        let body = br#"{"id":"evt_3","type":"charge.refunded","data":{"object":{"object":"charge","id":"ch_1",
            "payment_intent":"pi_1","amount_refunded":1500,"currency":"jpy","metadata":{"order_id":"o-1"},
            "refunds":{"object":"list","data":[{"id":"re_2"},{"id":"re_1"}]}}}}"#;
        let event = WebhookEvent::parse(body).unwrap();
        assert_eq!(event.order, Some(OrderId::parse("o-1").unwrap()));
        assert!(!event.moves_payment());
        let refunded = event.refunded.unwrap();
        assert_eq!(refunded.payment_id, "pi_1");
        assert_eq!(refunded.total, Money::from_cents(150_000).unwrap(), "1500 yen");
        assert_eq!(refunded.latest_refund_id.as_deref(), Some("re_2"));
        // Since API version 2022-11-15 the refunds are not listed: the total is enough.
        let bare = br#"{"id":"evt_4","type":"charge.refunded","data":{"object":{"object":"charge","id":"ch_1",
            "payment_intent":"pi_1","amount_refunded":250,"currency":"eur","metadata":{"order_id":"o-1"}}}}"#;
        let refunded = WebhookEvent::parse(bare).unwrap().refunded.unwrap();
        assert_eq!((refunded.total.cents(), refunded.latest_refund_id), (250, None));
        let broken = br#"{"id":"evt_5","type":"charge.refunded","data":{"object":{"object":"charge","id":"ch_1","metadata":{"order_id":"o-1"}}}}"#;
        assert!(WebhookEvent::parse(broken).is_err());
        assert!(WebhookEvent::parse(b"not json").is_err());
    }
}
