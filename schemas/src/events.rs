//! The events on the bus. Each body is an Avro record of `schemas/avro/envelope.avsc`; the Rust struct of
//! the same name mirrors it field for field (money in cents, quantities as longs).

use serde::{Deserialize, Serialize};

use crate::values::{OrderId, Quantity, Sku, UserId};

/// An event's id. Pipeline events derive theirs from the order and the step ([`EventId::derived`]), so
/// the same step for the same order always has the same id and a redelivered event is recognisable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventId(pub uuid::Uuid);

const EVENT_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f72_6465_7266_6c6f_7700_0000_0000_0002);

impl EventId {
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// The id of step `step` of order `order`.
    pub fn derived(order: &OrderId, step: &str) -> Self {
        Self::for_key(order.as_str(), step)
    }

    /// The id of step `step` of whatever `key` names (callers prefix non-order keys, e.g. `sku:`).
    pub fn for_key(key: &str, step: &str) -> Self {
        let name = format!("{key}\u{1f}{step}");
        Self(uuid::Uuid::new_v5(&EVENT_NAMESPACE, name.as_bytes()))
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What every record on every topic carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub event_id: EventId,
    pub order_id: OrderId,
    pub occurred_at_ms: i64,
    pub body: Event,
}

impl Envelope {
    pub fn new(event_id: EventId, order_id: OrderId, body: impl Into<Event>) -> Self {
        Self { event_id, order_id, occurred_at_ms: crate::now_ms(), body: body.into() }
    }
}

impl OrderPlaced {
    /// The `OrderPlaced` envelope of an accepted order. Its event id is derived from the order id, so
    /// publishing it again (a retried request, the stalled-order sweep) is recognised as the same event.
    pub fn envelope_of(order: &crate::Order) -> Envelope {
        let body = OrderPlaced {
            user_id: order.user_id.clone(),
            lines: order
                .lines
                .iter()
                .map(|l| PlacedLine {
                    sku: l.sku.clone(),
                    quantity: l.quantity,
                    unit_price_cents: l.unit_price.cents(),
                })
                .collect(),
            total_cents: order.total.cents(),
            channel: order.channel.clone(),
            payment_method: order.payment_method.clone(),
            currency: order.currency,
        };
        Envelope {
            event_id: EventId::derived(&order.id, "placed"),
            order_id: order.id.clone(),
            occurred_at_ms: order.placed_at_ms,
            body: body.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedLine {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub user_id: UserId,
    pub lines: Vec<PlacedLine>,
    pub total_cents: i64,
    pub channel: String,
    /// `None` from writers before envelope v4, and for orders without one.
    #[serde(default)]
    pub payment_method: Option<crate::PaymentMethod>,
    /// The currency of the amounts; `None` from writers before envelope v5 (the shop's currency).
    #[serde(default)]
    pub currency: Option<crate::Currency>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveLine {
    pub sku: Sku,
    pub quantity: Quantity,
}

/// Hold the order's lines of one SKU, or none of them. The saga sends one per SKU of the order, keyed by
/// that SKU, so one inventory partition owns each SKU's stock; writers before envelope v3 sent every
/// line of the order in one command (see [`ReserveStock::sku`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveStock {
    pub lines: Vec<ReserveLine>,
}

impl ReserveStock {
    /// The one SKU every line names, or `None` for a command from before v3 that spans several.
    pub fn sku(&self) -> Option<&Sku> {
        let first = &self.lines.first()?.sku;
        self.lines.iter().all(|l| &l.sku == first).then_some(first)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    pub units_reserved: i64,
    /// The SKU held. `None` from a writer before envelope v3, whose one reservation held every line.
    #[serde(default)]
    pub sku: Option<Sku>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockRejected {
    pub reason: String,
    pub sku: Option<Sku>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStock {
    pub release_reason: String,
    /// The SKU whose hold ends (one command per SKU, keyed by it). Writers before envelope v3 listed
    /// every SKU of the order in one command.
    #[serde(default)]
    pub skus: Vec<Sku>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStock {
    pub commit_reason: String,
    /// The SKU whose hold leaves as sold (see [`ReleaseStock::skus`]).
    #[serde(default)]
    pub skus: Vec<Sku>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturePayment {
    pub user_id: UserId,
    pub amount_cents: i64,
    pub idempotency_key: String,
    /// The order's payment method (see [`OrderPlaced::payment_method`]).
    #[serde(default)]
    pub payment_method: Option<crate::PaymentMethod>,
    /// The currency of `amount_cents` (see [`OrderPlaced::currency`]).
    #[serde(default)]
    pub currency: Option<crate::Currency>,
    /// Authorise and hold only; the capture follows as a second command without it (`--capture-on
    /// dispatch`). `false` from writers before envelope v5.
    #[serde(default)]
    pub authorise_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub charge_id: String,
    pub captured_cents: i64,
    /// The authorisation the capture took; `None` from writers before envelope v4 (one-step charges).
    #[serde(default)]
    pub authorisation_id: Option<String>,
    /// The reply to an `authorise_only` command: authorised and held, nothing captured (`captured_cents`
    /// is 0). `false` from writers before envelope v5.
    #[serde(default)]
    pub authorised_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    pub decline_reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundPayment {
    pub refund_reason: String,
    /// A partial refund by staff; `None`: everything not yet refunded (the compensation of a cancelled
    /// or rejected order).
    #[serde(default)]
    pub amount_cents: Option<i64>,
    /// A staff refund's own key: one refund per key. `None` for the order's compensation.
    #[serde(default)]
    pub refund_key: Option<String>,
    /// The currency of the order's payment; `None` from writers before envelope v5 (the shop's).
    #[serde(default)]
    pub currency: Option<crate::Currency>,
    /// Set by the provider's webhook (Stripe's `charge.refunded`): how much of the payment the provider
    /// reports refunded in all, refunds made outside orderflow included. The payment role records what
    /// its books lack and moves no money.
    #[serde(default)]
    pub provider_refunded_cents: Option<i64>,
    /// The provider's id of the latest refund, when its event names one.
    #[serde(default)]
    pub provider_refund_id: Option<String>,
}

impl RefundPayment {
    /// The compensation of `order`: everything captured and not yet refunded goes back.
    pub fn compensation(order: &crate::Order, reason: &str) -> Self {
        Self {
            refund_reason: reason.to_owned(),
            amount_cents: None,
            refund_key: None,
            currency: order.currency,
            provider_refunded_cents: None,
            provider_refund_id: None,
        }
    }
}

/// Money that went back to the customer, or an authorisation released before any capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub refund_id: String,
    pub refunded_cents: i64,
    /// The authorisation `refund_id` was voided: nothing was captured, nothing moved (envelope v5).
    #[serde(default)]
    pub voided: bool,
}

impl PaymentRefunded {
    /// `cents` went back under the provider's refund `refund_id`.
    pub fn refund(refund_id: impl Into<String>, cents: i64) -> Self {
        Self { refund_id: refund_id.into(), refunded_cents: cents, voided: false }
    }

    /// The authorisation `payment_id` was released before any capture.
    pub fn void(payment_id: impl Into<String>) -> Self {
        Self { refund_id: payment_id.into(), refunded_cents: 0, voided: true }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentLine {
    pub sku: Sku,
    pub quantity: Quantity,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateShipment {
    pub ship_to_user_id: UserId,
    pub lines: Vec<ShipmentLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentCreated {
    pub shipment_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequested {
    pub cancel_reason: String,
    pub requested_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChangeRequested {
    pub status: crate::OrderStatus,
    pub changed_by: String,
}

macro_rules! events {
    ($($name:ident),* $(,)?) => {
        /// Every event body. The variant, the struct and the Avro record share one name.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Event {
            $($name($name),)*
        }

        impl Event {
            /// The Avro record name of the body.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Event::$name(_) => stringify!($name),)*
                }
            }

            pub(crate) fn to_avro(&self) -> Result<apache_avro::types::Value, apache_avro::Error> {
                match self {
                    $(Event::$name(b) => apache_avro::to_value(b),)*
                }
            }

            /// `None` when the name is not a body this build knows.
            pub(crate) fn from_avro(
                name: &str,
                value: &apache_avro::types::Value,
            ) -> Option<Result<Event, apache_avro::Error>> {
                match name {
                    $(stringify!($name) => Some(apache_avro::from_value::<$name>(value).map(Event::$name)),)*
                    _ => None,
                }
            }
        }

        $(impl From<$name> for Event {
            fn from(b: $name) -> Event {
                Event::$name(b)
            }
        })*
    };
}

events!(
    OrderPlaced,
    ReserveStock,
    StockReserved,
    StockRejected,
    ReleaseStock,
    CommitStock,
    CapturePayment,
    PaymentCaptured,
    PaymentDeclined,
    RefundPayment,
    PaymentRefunded,
    CreateShipment,
    ShipmentCreated,
    CancelRequested,
    StatusChangeRequested,
);
