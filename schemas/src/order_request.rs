//! The JSON body of `POST /v1/orders` and the partner order, parsed into domain values. These parsers
//! take untrusted bytes; they live here, apart from the HTTP server and the consumer, so the fuzz targets
//! (`fuzz/`) run exactly the code intake runs.

use serde::{Deserialize, Serialize};

use crate::partner::PartnerOrder;
use crate::values::{Currency, Money, OrderId, PaymentMethod, Quantity, Sku, UserId, ValueError};

/// A placement request in domain types, before intake prices it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    pub order_id: Option<OrderId>,
    pub user_id: UserId,
    pub items: Vec<(Sku, Quantity)>,
    /// The total the client expects to pay.
    pub total_amount: Option<Money>,
    /// The provider's reference to the customer's payment method (e.g. Stripe's `pm_card_visa`).
    pub payment_method: Option<PaymentMethod>,
    /// The currency the client expects to pay in; refused if the products are priced in another.
    pub currency: Option<Currency>,
}

/// `POST /v1/orders` as sent. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderBody {
    pub order_id: Option<String>,
    /// Required from anonymous and staff callers; a signed-in customer may leave it out (it is theirs).
    #[serde(default)]
    pub user_id: Option<String>,
    pub items: Vec<ItemBody>,
    /// A decimal string; any other JSON type is refused with a message saying so.
    pub total_amount: Option<serde_json::Value>,
    /// The payment service provider's reference to the customer's payment method (`pm_...`), never card
    /// data. Required when the provider is Stripe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<String>,
    /// The ISO 4217 currency the client expects to pay in (e.g. `"EUR"`); an order whose products are
    /// priced in another is refused with `currency_mismatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemBody {
    pub sku: String,
    pub quantity: i64,
}

impl PlaceOrderBody {
    /// Every field parsed into its domain type; the first refusal names its field.
    pub fn parse(self) -> Result<OrderRequest, ValueError> {
        let total_amount = match self.total_amount {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(Money::parse("total_amount", &s)?),
            Some(other) => {
                return Err(ValueError::new(
                    "total_amount",
                    format!("must be a decimal string such as \"12.50\", not {other}"),
                ));
            }
        };
        Ok(OrderRequest {
            order_id: self.order_id.map(OrderId::parse).transpose()?,
            user_id: UserId::parse(self.user_id.ok_or_else(|| ValueError::new("user_id", "is required"))?)?,
            items: self
                .items
                .into_iter()
                .map(|i| Ok((Sku::parse(i.sku)?, Quantity::new(i.quantity)?)))
                .collect::<Result<_, ValueError>>()?,
            total_amount,
            payment_method: self.payment_method.map(PaymentMethod::parse).transpose()?,
            currency: self.currency.map(|c| Currency::parse("currency", &c)).transpose()?,
        })
    }
}

impl OrderRequest {
    /// The body that parses back into this request.
    pub fn to_body(&self) -> PlaceOrderBody {
        PlaceOrderBody {
            order_id: self.order_id.as_ref().map(|id| id.to_string()),
            user_id: Some(self.user_id.to_string()),
            items: self
                .items
                .iter()
                .map(|(sku, q)| ItemBody { sku: sku.to_string(), quantity: i64::from(*q) })
                .collect(),
            total_amount: self.total_amount.map(|m| serde_json::Value::String(m.to_string())),
            payment_method: self.payment_method.as_ref().map(|m| m.to_string()),
            currency: self.currency.map(String::from),
        }
    }
}

/// Why a partner order can never become an order: `<code>: <message>`, the dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PartnerRefusal(pub String);

fn invalid(e: ValueError) -> PartnerRefusal {
    PartnerRefusal(format!("invalid_{}: {e}", e.field.to_ascii_lowercase().replace('-', "_")))
}

impl PartnerOrder {
    /// The request this partner order places, with its order id derived from (partner id, external
    /// order id) so a partner's retry is one order. Returns the channel (`partner:<id>`) alongside.
    pub fn parse(self) -> Result<(OrderRequest, String), PartnerRefusal> {
        // Validate the partner id the way user ids are validated: same alphabet, bounded.
        let partner = UserId::parse(self.partner_id.clone())
            .map_err(|e| PartnerRefusal(format!("invalid_partner_id: {}", e.reason)))?;
        if self.external_order_id.is_empty() || self.external_order_id.len() > 128 {
            return Err(PartnerRefusal("invalid_external_order_id: must be 1 to 128 bytes".into()));
        }
        let request = OrderRequest {
            order_id: Some(OrderId::from_partner(partner.as_str(), &self.external_order_id)),
            user_id: UserId::parse(self.user_id).map_err(invalid)?,
            items: self
                .items
                .into_iter()
                .map(|i| Ok((Sku::parse(i.sku)?, Quantity::new(i.quantity)?)))
                .collect::<Result<_, ValueError>>()
                .map_err(invalid)?,
            total_amount: self
                .total_amount
                .as_deref()
                .map(|t| Money::parse("total_amount", t))
                .transpose()
                .map_err(invalid)?,
            // Prepaid by the partner: its record carries no payment method.
            payment_method: None,
            currency: None,
        };
        Ok((request, format!("partner:{partner}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partner::PartnerItem;

    #[test]
    fn a_body_parses_and_its_canonical_form_round_trips() {
        let body: PlaceOrderBody = serde_json::from_str(
            r#"{"user_id": "alice", "items": [{"sku": "SKU-1", "quantity": 2}], "total_amount": "7.5",
                "payment_method": "pm_card_visa"}"#,
        )
        .unwrap();
        let request = body.parse().unwrap();
        assert_eq!(request.total_amount.map(Money::cents), Some(750));
        assert_eq!(request.to_body().parse(), Ok(request));
    }

    #[test]
    fn bad_fields_are_named() {
        let parse = |json: &str| serde_json::from_str::<PlaceOrderBody>(json).unwrap().parse().unwrap_err().field;
        assert_eq!(parse(r#"{"user_id": "a", "items": [], "total_amount": 7}"#), "total_amount");
        assert_eq!(parse(r#"{"user_id": "a", "items": [{"sku": "S", "quantity": 0}]}"#), "quantity");
        assert_eq!(parse(r#"{"user_id": "a b", "items": []}"#), "user_id");
        assert_eq!(parse(r#"{"user_id": "a", "items": [], "payment_method": "4242424242424242"}"#), "payment_method");
        assert!(serde_json::from_str::<PlaceOrderBody>(r#"{"user_id": "a", "items": [], "x": 1}"#).is_err());
    }

    #[test]
    fn partner_orders_parse_with_derived_ids_and_coded_refusals() {
        let order = PartnerOrder {
            partner_id: "acme".into(),
            external_order_id: "A-1".into(),
            user_id: "u1".into(),
            items: vec![PartnerItem { sku: "SKU-1".into(), quantity: 2 }],
            total_amount: Some("999999999999999999999999999".into()),
            placed_at_ms: None,
        };
        let refusal = order.clone().parse().unwrap_err();
        assert!(refusal.0.starts_with("invalid_total_amount: "), "{refusal}");
        let (request, channel) = PartnerOrder { total_amount: None, ..order.clone() }.parse().unwrap();
        assert_eq!(request.order_id, Some(OrderId::from_partner("acme", "A-1")));
        assert_eq!(channel, "partner:acme");
        let refusal = PartnerOrder { partner_id: "a b".into(), ..order }.parse().unwrap_err();
        assert!(refusal.0.starts_with("invalid_partner_id: "), "{refusal}");
    }
}
