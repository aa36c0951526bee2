//! Shipments.

use async_trait::async_trait;
use orderflow_schemas::OrderId;

use super::super::to_row;
use super::{EmbeddedStore, get_latest, get_row};
use orderflow_platform::store::*;

// Fulfillment: shipments[order] = Shipment.

#[async_trait]
impl ShipmentStore for EmbeddedStore {
    async fn create_once(&self, shipment: &Shipment, _fence: Fence) -> Result<Shipment> {
        let shipment = shipment.clone();
        self.db
            .write(move |db, tx| {
                if let Some(first) = get_row(tx, &db.shipments, shipment.order_id.as_str())? {
                    return Ok(first);
                }
                tx.insert(&db.shipments, shipment.order_id.as_str(), to_row(&shipment)?);
                Ok(shipment)
            })
            .await
    }

    async fn shipment(&self, order: &OrderId) -> Result<Option<Shipment>> {
        get_latest(&self.db.shipments, order.as_str())
    }
}
