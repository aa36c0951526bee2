//! The order as every service sees it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::values::{Currency, Money, OrderId, PaymentMethod, Quantity, Sku, UserId, ValueError};

/// Where an order is in its life. The edges of the state machine are [`OrderStatus::can_move_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Accepted at intake; not yet picked up by the order saga.
    Pending,
    /// The saga is reserving stock and taking payment.
    Processing,
    /// Stock reserved and payment captured: processing is complete.
    Confirmed,
    Preparing,
    OutForDelivery,
    Delivered,
    Cancelled,
    /// Refused with a reason (unknown SKU, out of stock, payment declined).
    Rejected,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 8] = [
        Self::Pending,
        Self::Processing,
        Self::Confirmed,
        Self::Preparing,
        Self::OutForDelivery,
        Self::Delivered,
        Self::Cancelled,
        Self::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Processing => "PROCESSING",
            Self::Confirmed => "CONFIRMED",
            Self::Preparing => "PREPARING",
            Self::OutForDelivery => "OUT_FOR_DELIVERY",
            Self::Delivered => "DELIVERED",
            Self::Cancelled => "CANCELLED",
            Self::Rejected => "REJECTED",
        }
    }

    /// No transition leaves a terminal status.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Delivered | Self::Cancelled | Self::Rejected)
    }

    /// Processing is complete: the order was confirmed or rejected (or went on from confirmed).
    pub fn is_processed(self) -> bool {
        !matches!(self, Self::Pending | Self::Processing | Self::Cancelled)
    }

    /// Whether the order may be cancelled from here (before it leaves the store).
    pub fn is_cancellable(self) -> bool {
        matches!(self, Self::Pending | Self::Processing | Self::Confirmed | Self::Preparing)
    }

    /// The edges of the order state machine.
    pub fn can_move_to(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        match (self, next) {
            (Pending, Processing) => true,
            (Processing, Confirmed | Rejected) => true,
            (Confirmed, Preparing) => true,
            (Preparing, OutForDelivery) => true,
            (OutForDelivery, Delivered) => true,
            (from, Cancelled) => from.is_cancellable(),
            _ => false,
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ValueError::new("status", format!("unknown order status {s:?}")))
    }
}

/// When an order's payment is captured (`--capture-on`). It is fixed for each order when it is placed,
/// so a change of the setting applies to orders placed after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureOn {
    /// Authorised and captured before the order is CONFIRMED (CONFIRMED: stock held, payment taken).
    #[default]
    Confirmation,
    /// Authorised before the order is CONFIRMED (the money held on the card), captured when it goes out
    /// for delivery; a capture that fails then cancels the order, its stock released and the
    /// authorisation voided.
    Dispatch,
}

impl CaptureOn {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// One line of an order, priced from the catalog at intake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price: Money,
}

/// One step in an order's life, shown to customers and staff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at_ms: i64,
    /// Machine-readable step, such as `placed`, `stock_reserved`, `payment_captured`, `confirmed`.
    pub kind: String,
    pub detail: String,
}

/// An order and everything the read side shows about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub user_id: UserId,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    /// The currency of the total and of every line (ISO 4217), fixed at intake from the products';
    /// `None` in documents from before orders had one, which were in the shop's (`--currency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
    pub status: OrderStatus,
    /// Why the order was rejected or cancelled.
    pub reason: Option<String>,
    pub channel: String,
    pub placed_at_ms: i64,
    pub updated_at_ms: i64,
    /// When the order reached CONFIRMED or REJECTED.
    pub processed_at_ms: Option<i64>,
    pub timeline: Vec<TimelineEntry>,
    /// The SKUs whose units are held for the order so far: inventory holds each SKU of an order on its
    /// own (one command per SKU, on that SKU's partition), and the order goes on to payment once every
    /// SKU of its lines is held. Empty before the first hold and in documents from before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved_skus: Vec<Sku>,
    /// The provider's reference to the payment method the customer chose; `None` for an order the
    /// simulated provider charges, or that a partner prepaid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<PaymentMethod>,
    /// When the payment is captured; [`CaptureOn::Confirmation`] in documents from before it existed.
    #[serde(default, skip_serializing_if = "CaptureOn::is_default")]
    pub capture_on: CaptureOn,
}

impl Order {
    /// The distinct SKUs of the order's lines, in line order: one inventory command each.
    pub fn skus(&self) -> Vec<Sku> {
        let mut out: Vec<Sku> = Vec::with_capacity(self.lines.len());
        for line in &self.lines {
            if !out.contains(&line.sku) {
                out.push(line.sku.clone());
            }
        }
        out
    }

    /// The currency of the order's amounts, `shop`'s for an order from before orders had one.
    pub fn currency_or(&self, shop: Currency) -> Currency {
        self.currency.unwrap_or(shop)
    }

    /// Whether every SKU of the order's lines is held.
    pub fn fully_reserved(&self) -> bool {
        self.lines.iter().all(|l| self.reserved_skus.contains(&l.sku))
    }

    /// Same customer, same lines: a retried placement, not a different order under a reused id.
    pub fn same_request_as(&self, other: &Order) -> bool {
        self.user_id == other.user_id
            && self.payment_method == other.payment_method
            && self.lines.len() == other.lines.len()
            && self.lines.iter().zip(&other.lines).all(|(a, b)| a.sku == b.sku && a.quantity == b.quantity)
    }
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::{self, *};

    #[test]
    fn status_names_round_trip() {
        for s in OrderStatus::ALL {
            assert_eq!(s.as_str().parse::<OrderStatus>(), Ok(s));
        }
        assert!("SHIPPED".parse::<OrderStatus>().is_err());
    }

    #[test]
    fn terminal_statuses_have_no_way_out() {
        for from in [Delivered, Cancelled, Rejected] {
            for to in OrderStatus::ALL {
                assert!(!from.can_move_to(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn fulfillment_moves_one_step_at_a_time() {
        assert!(Confirmed.can_move_to(Preparing));
        assert!(!Confirmed.can_move_to(Delivered));
        assert!(!Pending.can_move_to(Confirmed));
        assert!(Preparing.can_move_to(Cancelled));
        assert!(!OutForDelivery.can_move_to(Cancelled));
    }
}
