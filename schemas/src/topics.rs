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
/// Commands for the inventory processor, the one writer of stock: an order's reservation, release and
/// commit of one SKU (order envelopes, one per SKU of the order), and staff stock changes
/// (`schemas/avro/stock_command.avsc`). Key: the SKU, so every change of a SKU's stock lands on one
/// partition, in order, and has one writer.
pub const INVENTORY: Topic = Topic { name: "orderflow.inventory.v1", partitions: 32, key: "sku" };
/// Capture and refund commands for the payment processor. Key: order id.
pub const PAYMENTS: Topic = Topic { name: "orderflow.payments.v1", partitions: 32, key: "order_id" };
/// Shipment commands for the fulfillment processor. Key: order id.
pub const FULFILLMENT: Topic = Topic { name: "orderflow.fulfillment.v1", partitions: 32, key: "order_id" };
/// Orders from partner systems (Avro `schemas/avro/partner_order.avsc`). Key: the partner's order id.
pub const PARTNER_ORDERS: Topic =
    Topic { name: "orderflow.partner-orders.v1", partitions: 8, key: "external_order_id" };
/// Catalog changes (`schemas/avro/product_updated.avsc`), one `ProductUpdated` per staff write: the
/// catalog projector builds the read tables from it, and caches and other systems invalidate on it.
/// Key: SKU.
pub const CATALOG: Topic = Topic { name: "orderflow.catalog.v1", partitions: 8, key: "sku" };
/// Low-stock alerts (`schemas/avro/stock_alert.avsc`): one `InventoryLow` when a SKU's available units
/// fall to its threshold or below, one `InventoryRestocked` when they rise above it again. For
/// notification consumers. Key: SKU.
pub const STOCK_ALERTS: Topic = Topic { name: "orderflow.stock-alerts.v1", partitions: 8, key: "sku" };
/// Records a processor could not handle at all (undecodable, or refused for good), with the reason in
/// the `orderflow.error` header. Nothing consumes it automatically: it is for operators.
pub const DEAD_LETTER: Topic = Topic { name: "orderflow.deadletter.v1", partitions: 1, key: "original key" };

pub const ALL: [Topic; 8] =
    [ORDERS, INVENTORY, PAYMENTS, FULFILLMENT, PARTNER_ORDERS, CATALOG, STOCK_ALERTS, DEAD_LETTER];

/// Consumer group names, one per processor role.
pub mod groups {
    pub const ORDER_SAGA: &str = "orderflow-order-saga";
    pub const INVENTORY: &str = "orderflow-inventory";
    pub const PAYMENT: &str = "orderflow-payment";
    pub const FULFILLMENT: &str = "orderflow-fulfillment";
    pub const PARTNER_INTAKE: &str = "orderflow-partner-intake";
    pub const CATALOG_PROJECTOR: &str = "orderflow-catalog-projector";
}
