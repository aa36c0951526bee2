//! The demo catalog put into an empty store on first start (`--seed-catalog demo`, the default), so
//! that a new user can place an order straight away.

use orderflow_platform::store::Stores;
use orderflow_schemas::{Money, Product, Sku, now_ms};

/// (sku, name, description, price, stock)
pub const DEMO_PRODUCTS: [(&str, &str, &str, &str, i64); 5] = [
    ("SKU-COFFEE", "Flat white", "Double ristretto with steamed milk", "3.50", 1000),
    ("SKU-CROISSANT", "Butter croissant", "Baked this morning", "2.75", 500),
    ("SKU-PIZZA", "Margherita pizza", "Tomato, mozzarella, basil", "12.50", 200),
    ("SKU-SALAD", "Caesar salad", "Romaine, parmesan, croutons", "9.90", 100),
    ("SKU-MUG", "Limited edition mug", "Only a few made", "25.00", 5),
];

/// Seeds the demo products if the catalog is empty; returns how many were added.
pub async fn seed_if_empty(stores: &Stores) -> anyhow::Result<usize> {
    if !stores.catalog.products(None, 1).await?.items.is_empty() {
        return Ok(0);
    }
    let now = now_ms();
    for (sku, name, description, price, stock) in DEMO_PRODUCTS {
        let sku = Sku::parse(sku)?;
        let product = Product {
            sku: sku.clone(),
            name: name.into(),
            description: description.into(),
            price: Money::parse("price", price)?,
            created_at_ms: now,
            updated_at_ms: now,
        };
        if stores.catalog.create_product(&product).await? {
            stores.inventory.adjust_stock(&sku, stock, "demo catalog").await?;
        }
    }
    Ok(DEMO_PRODUCTS.len())
}
