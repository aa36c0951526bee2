//! The contracts of orderflow: what crosses a process boundary.
//!
//! - [`values`]: domain value types that parse, not validate (`OrderId`, `Sku`, `Quantity`, `Money`, ...).
//! - [`order`]: the order, its status and its timeline.
//! - [`events`]: the events on the bus, and [`codec`] that turns them into Avro single-object bytes.
//! - [`catalog`] and [`product_events`]: products, their categories and attributes, and the
//!   `ProductUpdated` event every catalog write publishes.
//! - [`avro_bounds`]: the check every Avro decoder runs first, so a record cannot claim more memory than
//!   its own size allows.
//! - [`stock_alert`] and [`stock_command`]: low-stock alerts out of inventory, staff stock changes into it.
//! - [`topics`]: every topic name and partition count. No other crate spells a topic name.

pub mod avro_bounds;
pub mod catalog;
pub mod codec;
pub mod events;
pub mod order;
pub mod order_request;
pub mod partner;
pub mod product_events;
pub mod stock_alert;
pub mod stock_command;
pub mod topics;
pub mod values;

pub use catalog::{Attributes, Category, Product, ProductSummary, StockLevel};
pub use events::{Envelope, Event, EventId};
pub use order::{CaptureOn, Order, OrderLine, OrderStatus, TimelineEntry};
pub use stock_alert::{StockAlert, StockAlertKind};
pub use values::{Currency, IdempotencyKey, Money, OrderId, PaymentMethod, Quantity, Sku, UserId, ValueError};

/// Milliseconds since the Unix epoch, the one clock unit used in events and tables.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
