//! Partner intake: consumes [`topics::PARTNER_ORDERS`] (Avro `partner_order.avsc`) and places each valid
//! record exactly like an HTTP order, with the order id derived from (partner id, external order id) so
//! a partner's retry is one order. A record that can never become an order goes to the dead-letter
//! topic with `<code>: <message>` in the `orderflow.error` header, and the consumer moves on.

use async_trait::async_trait;
use orderflow_platform::bus::{Delivery, Handler, HandlerError};
use orderflow_schemas::partner::{self, PartnerOrder};
use orderflow_schemas::{Money, OrderId, Quantity, Sku, UserId, ValueError};

use crate::{Intake, IntakeError, PlaceOrder};

/// The partner-intake consumer.
#[derive(Debug)]
pub struct PartnerIntake {
    pub intake: Intake,
}

fn invalid(e: ValueError) -> HandlerError {
    HandlerError::Poison(format!("invalid_{}: {e}", e.field.to_ascii_lowercase().replace('-', "_")))
}

fn parse(order: PartnerOrder) -> Result<PlaceOrder, HandlerError> {
    // Validate the partner id the way order ids are validated: same alphabet, bounded.
    let partner = UserId::parse(order.partner_id.clone())
        .map_err(|e| HandlerError::Poison(format!("invalid_partner_id: {}", e.reason)))?;
    if order.external_order_id.is_empty() || order.external_order_id.len() > 128 {
        return Err(HandlerError::Poison("invalid_external_order_id: must be 1 to 128 bytes".into()));
    }
    Ok(PlaceOrder {
        order_id: Some(OrderId::from_partner(partner.as_str(), &order.external_order_id)),
        idempotency_key: None,
        user_id: UserId::parse(order.user_id).map_err(invalid)?,
        items: order
            .items
            .into_iter()
            .map(|i| Ok((Sku::parse(i.sku)?, Quantity::new(i.quantity)?)))
            .collect::<Result<_, ValueError>>()
            .map_err(invalid)?,
        total_amount: order
            .total_amount
            .as_deref()
            .map(|t| Money::parse("total_amount", t))
            .transpose()
            .map_err(invalid)?,
        channel: format!("partner:{partner}"),
    })
}

#[async_trait]
impl Handler for PartnerIntake {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let order =
            partner::decode(&delivery.payload).map_err(|e| HandlerError::Poison(format!("malformed_avro: {e}")))?;
        let external = order.external_order_id.clone();
        let req = parse(order)?;
        match self.intake.place(req).await {
            Ok(placed) => {
                tracing::info!(order = %placed.order.id, external, replayed = placed.replayed, "partner order accepted");
                Ok(())
            }
            Err(IntakeError::Unavailable(e)) => Err(HandlerError::Transient(e)),
            Err(e) => Err(HandlerError::Poison(format!("{}: {e}", e.code()))),
        }
    }
}
