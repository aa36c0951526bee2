//! The catalog: its write model and its read model.

use async_trait::async_trait;
use fjall::Readable;
use orderflow_schemas::{Product, ProductSummary, Sku};

use super::super::{from_row, to_row, unavailable};
use super::{EmbeddedStore, get_latest, get_row};
use orderflow_platform::store::*;

// Catalog write model: products[sku] = Product.
// Catalog read model: product_view[sku] = Product (newest version seen); product_listing[sku] =
// ProductSummary, in SKU order, so the listing is one scan of small rows.

#[async_trait]
impl CatalogStore for EmbeddedStore {
    async fn create_product(&self, product: &Product) -> Result<bool> {
        let product = product.clone();
        self.db
            .write(move |db, tx| {
                if tx.contains_key(&db.products, product.sku.as_str()).map_err(unavailable)? {
                    return Ok(false);
                }
                tx.insert(&db.products, product.sku.as_str(), to_row(&product)?);
                Ok(true)
            })
            .await
    }

    async fn update_product(&self, product: &Product) -> Result<ProductWrite> {
        let product = product.clone();
        self.db
            .write(move |db, tx| {
                let Some(stored) = get_row::<Product>(tx, &db.products, product.sku.as_str())? else {
                    return Ok(ProductWrite::NotFound);
                };
                if stored.version.checked_add(1) != Some(product.version) {
                    return Ok(ProductWrite::Conflict(stored));
                }
                tx.insert(&db.products, product.sku.as_str(), to_row(&product)?);
                Ok(ProductWrite::Written)
            })
            .await
    }

    async fn product(&self, sku: &Sku) -> Result<Option<Product>> {
        get_latest(&self.db.products, sku.as_str())
    }

    async fn products(&self, after: Option<&str>, limit: usize) -> Result<Page<Product>> {
        let mut start = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
        if after.is_some() {
            start.push(0);
        }
        let mut items = Vec::with_capacity(limit + 1);
        for guard in self.db.products.inner().range(start..).take(limit + 1) {
            let (k, v) = guard.into_inner().map_err(unavailable)?;
            items.push((String::from_utf8_lossy(&k).into_owned(), from_row::<Product>(&v)?));
        }
        let has_next = items.len() > limit;
        items.truncate(limit);
        Ok(Page { items, has_next })
    }

    async fn product_versions(&self, after: Option<&str>, limit: usize) -> Result<Page<u64>> {
        let page = self.products(after, limit).await?;
        Ok(Page { items: page.items.into_iter().map(|(k, p)| (k, p.version)).collect(), has_next: page.has_next })
    }
}

#[async_trait]
impl CatalogViewStore for EmbeddedStore {
    async fn upsert_if_newer(&self, product: &Product) -> Result<Projected> {
        let product = product.clone();
        self.db
            .write(move |db, tx| {
                let stored = get_row::<Product>(tx, &db.product_view, product.sku.as_str())?;
                let outcome = match stored {
                    Some(s) if s.version > product.version => return Ok(Projected::Stale),
                    Some(s) if s.version == product.version => Projected::AlreadyCurrent,
                    _ => Projected::Applied,
                };
                tx.insert(&db.product_view, product.sku.as_str(), to_row(&product)?);
                tx.insert(&db.product_listing, product.sku.as_str(), to_row(&ProductSummary::from(&product))?);
                Ok(outcome)
            })
            .await
    }

    async fn view_product(&self, sku: &Sku) -> Result<Option<Product>> {
        get_latest(&self.db.product_view, sku.as_str())
    }

    async fn listing(&self, limit: usize) -> Result<Vec<ProductSummary>> {
        self.db.product_listing.inner().iter().take(limit).map(|g| from_row(&g.value().map_err(unavailable)?)).collect()
    }
}
