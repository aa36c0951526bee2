//! Partner intake: consumes [`topics::PARTNER_ORDERS`] (Avro `partner_order.avsc`) and places each valid
//! record exactly like an HTTP order, with the order id derived from (partner id, external order id) so
//! a partner's retry is one order. A record that can never become an order goes to the dead-letter
//! topic with `<code>: <message>` in the `orderflow.error` header, and the consumer moves on.

use async_trait::async_trait;
use orderflow_platform::bus::{Delivery, Handler, HandlerError};
use orderflow_schemas::partner;

use crate::{Intake, IntakeError, PlaceOrder};

/// The partner-intake consumer.
#[derive(Debug)]
pub struct PartnerIntake {
    pub intake: Intake,
}

#[async_trait]
impl Handler for PartnerIntake {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let order =
            partner::decode(&delivery.payload).map_err(|e| HandlerError::Poison(format!("malformed_avro: {e}")))?;
        let external = order.external_order_id.clone();
        let (request, channel) = order.parse().map_err(|refusal| HandlerError::Poison(refusal.0))?;
        let req = PlaceOrder::new(request, None, channel);
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
