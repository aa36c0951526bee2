//! Products and their stock.

use serde::{Deserialize, Serialize};

use crate::values::{Money, Sku};

/// A product in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub sku: Sku,
    pub name: String,
    pub description: String,
    pub price: Money,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Product {
    /// The longest product name accepted.
    pub const MAX_NAME_LEN: usize = 200;
    /// The longest description accepted.
    pub const MAX_DESCRIPTION_LEN: usize = 5_000;
}

/// Units of one SKU. `available + reserved` are on the shelf; `sold` have left with an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StockLevel {
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
}
