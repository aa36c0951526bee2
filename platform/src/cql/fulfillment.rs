//! Fulfillment: `orderflow_fulfillment.shipments`, one shipment per order.

use async_trait::async_trait;
use orderflow_schemas::{OrderId, Quantity, Sku, UserId};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{CqlStore, Lwt, MAX_UNKNOWN_RETRIES, corrupt, prepare, serial};
use crate::store::{Result, Shipment, ShipmentStore, StoreError};

pub(super) struct Statements {
    insert: PreparedStatement,
    get: PreparedStatement,
    get_serial: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(s: &Session) -> Result<Self> {
        let get = prepare(
            s,
            "SELECT order_id, shipment_id, user_id, lines, created_at_ms FROM orderflow_fulfillment.shipments \
             WHERE order_id = ?",
            true,
        )
        .await?;
        Ok(Self {
            insert: prepare(
                s,
                "INSERT INTO orderflow_fulfillment.shipments (order_id, shipment_id, user_id, lines, created_at_ms) \
                 VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
                false,
            )
            .await?,
            get_serial: serial(&get),
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

impl CqlStore {
    async fn shipment_read(&self, order: &OrderId, serial: bool) -> Result<Option<Shipment>> {
        let st = &self.fulfillment;
        let stmt = if serial { &st.get_serial } else { &st.get };
        self.first_row::<ShipmentTuple>(stmt, (order.as_str(),)).await?.map(from_row).transpose()
    }
}

#[async_trait]
impl ShipmentStore for CqlStore {
    async fn create_once(&self, s: &Shipment) -> Result<Shipment> {
        let lines: Vec<(&str, i64)> = s.lines.iter().map(|(sku, q)| (sku.as_str(), i64::from(*q))).collect();
        let values = (s.order_id.as_str(), &s.shipment_id, s.user_id.as_str(), &lines, s.created_at_ms);
        for _ in 0..MAX_UNKNOWN_RETRIES {
            match self.lwt(&self.fulfillment.insert, values).await? {
                Lwt::Applied => return Ok(s.clone()),
                Lwt::NotApplied => {}
                Lwt::Unknown(e) => {
                    tracing::warn!(order = %s.order_id, error = %e, "shipment insert outcome unknown; settling with a SERIAL read");
                }
            }
            // The first shipment wins, whoever created it.
            if let Some(first) = self.shipment_read(&s.order_id, true).await? {
                return Ok(first);
            }
        }
        Err(StoreError::Unavailable(format!("creating the shipment of {}: outcome stayed unknown", s.order_id)))
    }

    async fn shipment(&self, order: &OrderId) -> Result<Option<Shipment>> {
        self.shipment_read(order, false).await
    }
}
