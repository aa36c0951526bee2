//! The demo catalog put into an empty store on first start (`--seed-catalog demo`, the default), so
//! that a new user can place an order straight away.

use std::sync::Arc;

use orderflow_platform::Backends;
use orderflow_processors::catalog::{CatalogWriter, NewProduct};
use orderflow_schemas::stock_command::{RequestKey, StockChange, StockCommand};
use orderflow_schemas::{Attributes, Category, Money, Sku, now_ms};

/// (sku, name, description, price, stock, category, attributes)
pub type DemoProduct = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    i64,
    &'static str,
    &'static [(&'static str, &'static str)],
);

pub const DEMO_PRODUCTS: [DemoProduct; 5] = [
    ("SKU-COFFEE", "Flat white", "Double ristretto with steamed milk", "3.50", 1000, "drinks", &[("size", "8oz")]),
    ("SKU-CROISSANT", "Butter croissant", "Baked this morning", "2.75", 500, "bakery", &[]),
    ("SKU-PIZZA", "Margherita pizza", "Tomato, mozzarella, basil", "12.50", 200, "food", &[("diet", "vegetarian")]),
    ("SKU-SALAD", "Caesar salad", "Romaine, parmesan, croutons", "9.90", 100, "food", &[]),
    ("SKU-MUG", "Limited edition mug", "Only a few made", "25.00", 5, "merch", &[("color", "blue")]),
];

/// Seeds the demo products if the catalog is empty; returns how many were added. Goes through the
/// catalog's write side like a staff `createProduct`, so each product's `ProductUpdated` reaches the read
/// model.
pub async fn seed_if_empty(backends: &Backends) -> anyhow::Result<usize> {
    let stores = &backends.stores;
    if !stores.catalog.products(None, 1).await?.items.is_empty() {
        return Ok(0);
    }
    let writer = CatalogWriter::new(Arc::clone(&stores.catalog), Arc::clone(&backends.bus));
    for (sku, name, description, price, stock, category, attributes) in DEMO_PRODUCTS {
        let sku = Sku::parse(sku)?;
        writer
            .create(NewProduct {
                sku: sku.clone(),
                name: name.into(),
                description: description.into(),
                price: Money::parse("price", price)?,
                currency: None,
                category: Category::parse(category)?,
                attributes: Attributes::parse(attributes.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))?,
            })
            .await?;
        // A command to the SKU's inventory partition (the one writer of stock), keyed like
        // `createProduct`'s initial stock: applied once, also when an earlier start stopped between the
        // product and its stock. Not waited for: the inventory processor applies it once it runs.
        let cmd = StockCommand {
            request: RequestKey::parse("initial stock", orderflow_platform::store::INITIAL_STOCK_KEY)?,
            sku,
            requested_at_ms: now_ms(),
            requested_by: "demo catalog".into(),
            change: StockChange::Adjust { delta: stock, reason: "demo catalog".into() },
        };
        backends.bus.publish(vec![orderflow_processors::inventory::stock_command_record(&cmd)?]).await?;
    }
    Ok(DEMO_PRODUCTS.len())
}
