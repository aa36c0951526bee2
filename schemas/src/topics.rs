//! Every topic orderflow uses, with its partition count and record key. Adapters create missing topics
//! from [`ALL`]; nothing else spells a topic name.

/// A topic and how it is partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Topic {
    pub name: &'static str,
    pub partitions: u16,
    /// What the record key is, for the docs and for `orderflow topics`.
    pub key: &'static str,
}

/// Order lifecycle events, the order saga's input. Key: order id.
pub const ORDERS: Topic = Topic { name: "orderflow.orders.v1", partitions: 32, key: "order_id" };
/// Reservation commands for the inventory processor. Key: order id.
pub const INVENTORY: Topic = Topic { name: "orderflow.inventory.v1", partitions: 32, key: "order_id" };
/// Capture and refund commands for the payment processor. Key: order id.
pub const PAYMENTS: Topic = Topic { name: "orderflow.payments.v1", partitions: 32, key: "order_id" };
/// Shipment commands for the fulfillment processor. Key: order id.
pub const FULFILLMENT: Topic = Topic { name: "orderflow.fulfillment.v1", partitions: 32, key: "order_id" };
/// Orders from partner systems (Avro `schemas/avro/partner_order.avsc`). Key: the partner's order id.
pub const PARTNER_ORDERS: Topic =
    Topic { name: "orderflow.partner-orders.v1", partitions: 8, key: "external_order_id" };
/// Records a processor could not handle at all (undecodable, or refused for good), with the reason in
/// the `orderflow.error` header. Nothing consumes it automatically: it is for operators.
pub const DEAD_LETTER: Topic = Topic { name: "orderflow.deadletter.v1", partitions: 1, key: "original key" };

pub const ALL: [Topic; 6] = [ORDERS, INVENTORY, PAYMENTS, FULFILLMENT, PARTNER_ORDERS, DEAD_LETTER];

/// Consumer group names, one per processor role.
pub mod groups {
    pub const ORDER_SAGA: &str = "orderflow-order-saga";
    pub const INVENTORY: &str = "orderflow-inventory";
    pub const PAYMENT: &str = "orderflow-payment";
    pub const FULFILLMENT: &str = "orderflow-fulfillment";
    pub const PARTNER_INTAKE: &str = "orderflow-partner-intake";
}
