//! Fulfillment: `orderflow_fulfillment.shipments_v2`, one shipment per order, written by the owner of the
//! order's fulfillment partition, fenced by its epoch.

use async_trait::async_trait;
use orderflow_schemas::{OrderId, Quantity, Sku, UserId};
use scylla::statement::prepared::PreparedStatement;

use super::{CqlStore, Scope, corrupt, prepare};
use orderflow_platform::store::{Fence, Result, Shipment, ShipmentStore};

pub(super) struct Statements {
    put: PreparedStatement,
    get: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(s: &Scope<'_>) -> Result<Self> {
        let get = prepare(
            s,
            "SELECT order_id, shipment_id, user_id, lines, created_at_ms FROM orderflow_fulfillment.shipments_v2 \
             WHERE order_id = ?",
            true,
        )
        .await?;
        Ok(Self {
            put: prepare(
                s,
                "INSERT INTO orderflow_fulfillment.shipments_v2 (order_id, shipment_id, user_id, lines, created_at_ms) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
                true,
            )
            .await?,
            get,
        })
    }
}

type ShipmentTuple = (String, Option<String>, Option<String>, Option<Vec<(String, i64)>>, Option<i64>);

fn from_row(row: ShipmentTuple) -> Result<Shipment> {
    let (order_id, shipment_id, user_id, lines, created_at_ms) = row;
    Ok(Shipment {
        shipment_id: shipment_id.unwrap_or_default(),
        order_id: OrderId::parse(order_id).map_err(corrupt)?,
        user_id: UserId::parse(user_id.unwrap_or_default()).map_err(corrupt)?,
        lines: lines
            .unwrap_or_default()
            .into_iter()
            .map(|(s, q)| Ok((Sku::parse(s).map_err(corrupt)?, Quantity::new(q).map_err(corrupt)?)))
            .collect::<Result<Vec<_>>>()?,
        created_at_ms: created_at_ms.unwrap_or(0),
    })
}

/// Only the owner of the order's fulfillment partition writes its shipment (a zombie's late write carries an
/// older epoch and loses), so reading and then writing is safe: no lightweight transaction needed.
#[async_trait]
impl ShipmentStore for CqlStore {
    async fn create_once(&self, s: &Shipment, fence: Fence) -> Result<Shipment> {
        if let Some(first) = self.shipment(&s.order_id).await? {
            return Ok(first);
        }
        let lines: Vec<(&str, i64)> = s.lines.iter().map(|(sku, q)| (sku.as_str(), i64::from(*q))).collect();
        let values =
            (s.order_id.as_str(), &s.shipment_id, s.user_id.as_str(), &lines, s.created_at_ms, fence.timestamp());
        self.write(&self.fulfillment.put, values).await?;
        Ok(s.clone())
    }

    async fn shipment(&self, order: &OrderId) -> Result<Option<Shipment>> {
        self.first_row::<ShipmentTuple>(&self.fulfillment.get, (order.as_str(),)).await?.map(from_row).transpose()
    }
}
